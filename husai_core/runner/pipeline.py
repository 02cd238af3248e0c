"""The main job (``make run`` / ``husai pipeline``): every phase in order, skipped when unchanged,
with one progress line per phase start and finish.
"""

from __future__ import annotations

import time
from typing import Any

from .execute import plan_run, run_notebook
from .manifest import MAIN_JOB, RunResult, SKIPPED, finished_runs
from .params import notebook_parameters, pipeline_seeds, read_notebook, resolve_notebook


def run_seeds(notebook: str, profile: str, seeds: list[int], overrides: dict[str, Any] | None = None,
              **kwargs: Any) -> list[RunResult]:
    """One papermill run per seed (the per-seed batch mode of a phase)."""
    return [run_notebook(notebook, profile, {**(overrides or {}), "seed": int(s)}, **kwargs) for s in seeds]


def phase_decision(decisions: list[str], seeds: list[int] | None = None) -> str:
    """One line for a phase from its runs' resume decisions (one per seed for a per-seed phase)."""
    if all(d == SKIPPED for d in decisions):
        return SKIPPED
    if seeds is None or len(set(decisions)) == 1:
        return decisions[0]
    groups: dict[str, list[int]] = {}
    for seed, d in zip(seeds, decisions):
        groups.setdefault(d, []).append(seed)

    def who(ss: list[int]) -> str:
        return f"seed{'s' if len(ss) > 1 else ''} {', '.join(map(str, ss))}"

    parts = [f"{who(ss)}: {d.removeprefix('rerun: ')}" for d, ss in groups.items() if d != SKIPPED]
    if SKIPPED in groups:
        parts.append(f"{who(groups[SKIPPED])} {SKIPPED}")
    return "rerun: " + "; ".join(parts)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def phase_estimates(profile: str, seeds: list[int]) -> dict[str, float | None]:
    """Seconds each main-job phase took in its latest finished run on ``profile`` (the per-seed
    phase: summed over ``seeds``, scaled up for seeds that never ran); None if it never ran."""
    out: dict[str, float | None] = {}
    for name, per_seed in MAIN_JOB:
        if per_seed:
            walls = [runs[0][1].get("wall_seconds") for s in seeds if (runs := finished_runs(name, profile, s, True))]
            walls = [w for w in walls if w is not None]
            out[name] = sum(walls) * len(seeds) / len(walls) if walls else None
        else:
            runs = finished_runs(name, profile)
            out[name] = runs[0][1].get("wall_seconds") if runs else None
    return out


def _left(estimates: dict[str, float | None], names: list[str], profile: str) -> str:
    unknown = [n for n in names if estimates.get(n) is None]
    if unknown:
        return f"time left unknown: no earlier {profile} run of {', '.join(unknown)}"
    return f"~{_duration(sum(estimates[n] for n in names))} left, from the last {profile} run's times"


def run_main_job(profile: str = "full", resume: bool = False, echo=print, log_output: bool = False) -> list[RunResult]:
    """Phases 01-04 in order, each recording the run ids it builds on (``upstream``); with
    ``resume`` a phase is skipped only when its parameters, code and upstream runs are unchanged,
    and one line per phase says ``skipped (unchanged)`` or ``rerun: <reason>``.

    ``echo`` gets one line when a phase starts and one when it ends, with the elapsed time and
    an estimate of what remains (each phase's ``wall_seconds`` in its latest finished run on this
    profile). ``log_output``: also show the notebooks' progress bars (``run_notebook``).
    """
    from ..report import build_index

    results, seeds = [], pipeline_seeds(profile)
    upstream: dict[str, list[str]] = {}
    estimates, names = phase_estimates(profile, seeds), [n for n, _ in MAIN_JOB]
    job_start = time.perf_counter()
    for i, (name, per_seed) in enumerate(MAIN_JOB):
        start = time.perf_counter()
        if per_seed:  # one papermill run per seed
            runs = [{"seed": int(s)} for s in seeds]
        else:
            extra = {"seeds": seeds} if "seeds" in notebook_parameters(read_notebook(resolve_notebook(name))) else {}
            runs = [extra]
        echo(f"[husai] {name}: start (phase {i + 1}/{len(MAIN_JOB)}; {_left(estimates, names[i:], profile)})")
        if resume:
            decisions = [plan_run(name, profile, overrides, upstream)[1] for overrides in runs]
            echo(f"[husai] {name}: {phase_decision(decisions, seeds if per_seed else None)}")
        phase = []
        for overrides in runs:
            run_start = time.perf_counter()
            phase.append(run_notebook(name, profile, overrides, resume=resume, upstream=dict(upstream),
                                      log_output=log_output))
            if per_seed and phase[-1].resume != SKIPPED:
                echo(f"[husai] {name}: seed {overrides['seed']} done in {_duration(time.perf_counter() - run_start)}")
        results += phase
        upstream[name] = [r.manifest["run_id"] for r in phase]
        if resume and all(r.resume == SKIPPED for r in phase):
            estimates[name] = 0.0
        else:
            echo(f"[husai] {name}: done in {_duration(time.perf_counter() - start)} (job elapsed "
                 f"{_duration(time.perf_counter() - job_start)}; {_left(estimates, names[i + 1:], profile)})")
    index = build_index(profile=profile)
    echo(f"[husai] report index: {index} (main job took {_duration(time.perf_counter() - job_start)})")
    return results
