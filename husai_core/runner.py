"""Run the phase notebooks through papermill: profiles, parameter checks, manifests, reports.

``notebooks/<name>.py`` (jupytext percent format) is the source of truth. A run executes it
into ``runs/<name>/<run_id>/`` (executed ``notebook.ipynb``, ``params.yaml``,
``results.json`` written by the notebook, ``manifest.json``, ``report.html``). The run is
built in a ``.partial`` folder and renamed when complete, so a crash never leaves a
half-written run that looks finished.

Every manifest records what a run was made from: ``params_hash`` (notebook, profile and
parameters), ``code_version`` (every ``husai_core`` source plus the notebook's own ``.py``,
``store.run_code_version``) and ``upstream`` (the run ids of the main-job phases before it,
one per seed for the per-seed phase; notebooks outside the main job come after all of it).
``resume`` skips a run only when all three equal the current ones, so rerunning phase 01 or
editing the code reruns everything downstream.
"""

from __future__ import annotations

import ast
import os
import platform
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from .errors import HusaiError
from .io import atomic_write_text, config_hash, read_json, to_jsonable, write_json

# Injected by the runner into every notebook; each notebook declares them in its parameters cell.
RUNNER_PARAMS = ("profile", "run_dir", "artifacts_dir", "progress")
PACKAGES = ("husai", "torch", "transformer-lens", "sae-lens", "numpy", "scipy", "pandas", "plotly", "papermill")

# The main job (`make run`): notebook, and whether it runs once per seed.
MAIN_JOB: list[tuple[str, bool]] = [
    ("01_transformer", False),
    ("02_activations", False),
    ("03_sae_training", True),
    ("04_trained_vs_nulls", False),
]


# ---------------------------------------------------------------- locations

def repo_root() -> Path:
    """The checkout holding ``notebooks/`` (found from the package, then from the cwd)."""
    for start in (Path(__file__).resolve().parent, Path.cwd().resolve()):
        for folder in (start, *start.parents):
            if (folder / "notebooks").is_dir() and (folder / "husai_core").is_dir():
                return folder
    raise HusaiError("cannot find the HUSAI checkout (a folder with notebooks/ and husai_core/)")


def runs_dir() -> Path:
    return Path(os.environ.get("HUSAI_RUNS_DIR") or repo_root() / "runs")


def reports_dir() -> Path:
    return Path(os.environ.get("HUSAI_REPORTS_DIR") or repo_root() / "reports")


def artifacts_dir(profile: str, override: str | os.PathLike | None = None) -> Path:
    """Where phases leave checkpoints and caches for the next phase, per profile."""
    return Path(override) if override else runs_dir() / "artifacts" / profile


def list_notebooks() -> list[str]:
    return sorted(p.stem for p in (repo_root() / "notebooks").glob("[0-9][0-9]_*.py"))


def resolve_notebook(name: str) -> Path:
    """Accept ``01_transformer``, ``01``, ``transformer`` or a path to the .py/.ipynb."""
    path = Path(name)
    if path.suffix in (".py", ".ipynb") and path.is_file():
        return path.with_suffix(".py").resolve()
    names = list_notebooks()
    matches = [n for n in names if n == name or n.split("_", 1)[0] == name or n.split("_", 1)[1] == name]
    if len(matches) != 1:
        raise HusaiError(f"unknown notebook {name!r}; available: {', '.join(names)}")
    return repo_root() / "notebooks" / f"{matches[0]}.py"


# ---------------------------------------------------------------- parameters

def read_notebook(path: Path):
    import jupytext

    return jupytext.read(path)


def notebook_parameters(nb) -> dict[str, Any]:
    """Names and literal defaults assigned in the cell tagged ``parameters``."""
    cells = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    if not cells:
        raise HusaiError("notebook has no cell tagged 'parameters'")
    params: dict[str, Any] = {}
    for node in ast.parse(cells[0].source).body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Name):
                    try:
                        params[target.id] = ast.literal_eval(node.value) if node.value else None
                    except ValueError:
                        params[target.id] = ast.unparse(node.value)
    return params


def load_profile(notebook: str, profile: str) -> dict[str, Any]:
    folder = repo_root() / "params" / profile
    if not folder.is_dir():
        known = sorted(p.name for p in (repo_root() / "params").iterdir() if p.is_dir())
        raise HusaiError(f"unknown profile {profile!r}; available: {', '.join(known)}")
    path = folder / f"{notebook}.yaml"
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise HusaiError(f"corrupt parameter file {path}: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise HusaiError(f"parameter file {path} must hold a mapping of name: value")
    return data


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """``["k=32", "seeds=[1,2]"]`` -> ``{"k": 32, "seeds": [1, 2]}`` (values parsed as YAML)."""
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise HusaiError(f"bad parameter {item!r}; expected key=value")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            out[key.strip()] = value
    return out


def resolve_params(notebook: str, nb, profile: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """Notebook defaults <- profile file <- command-line overrides; unknown names are errors
    (papermill itself only warns and silently runs with the defaults)."""
    declared = notebook_parameters(nb)
    for source, values in ((f"params/{profile}/{notebook}.yaml", load_profile(notebook, profile)),
                           ("the command line", overrides)):
        unknown = sorted(set(values) - set(declared))
        if unknown:
            raise HusaiError(f"unknown parameter {', '.join(map(repr, unknown))} for {notebook} (from {source}); "
                             f"known: {', '.join(sorted(set(declared) - set(RUNNER_PARAMS)))}")
    missing = [p for p in RUNNER_PARAMS if p not in declared]
    if missing:
        raise HusaiError(f"notebook {notebook} does not declare the runner parameters {missing}")
    return {**declared, **load_profile(notebook, profile), **overrides}


# ---------------------------------------------------------------- provenance

def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo_root(), capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo_root(),
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def package_versions() -> dict[str, str | None]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def device_name() -> str:
    import torch

    return f"cuda:{torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else f"cpu:{platform.processor() or platform.machine()}"


# ---------------------------------------------------------------- running

class RunResult(NamedTuple):
    run_dir: Path
    results: dict
    manifest: dict
    # with resume=True: "skipped (unchanged)" or "rerun: <reason>"; None otherwise
    resume: str | None = None


SKIPPED = "skipped (unchanged)"


def finished_runs(notebook: str, profile: str, seed: int | None = None,
                  per_seed: bool = False) -> list[tuple[Path, dict]]:
    """Successful runs of ``notebook`` on ``profile`` (folder, manifest), newest first.

    ``per_seed``: only the runs of ``seed`` (the per-seed batch mode); otherwise every run of
    the profile, whatever its seed.
    """
    found = []
    for path in (runs_dir() / notebook).glob("*/manifest.json"):
        if path.parent.name.startswith(".") or path.parent.name.endswith(".failed"):
            continue
        try:
            m = read_json(path)
        except HusaiError:
            continue  # a damaged manifest is not a finished run
        if (m.get("status") != "ok" or m.get("profile") != profile or not (path.parent / "results.json").is_file()
                or (per_seed and m.get("seed") != seed)):
            continue
        found.append((str(m.get("finished") or ""), path.stat().st_mtime_ns, path.parent, m))
    found.sort(key=lambda t: t[:2], reverse=True)
    return [(folder, m) for _, _, folder, m in found]


def _main_job_before(notebook: str) -> list[tuple[str, bool]]:
    names = [n for n, _ in MAIN_JOB]
    return MAIN_JOB[:names.index(notebook)] if notebook in names else list(MAIN_JOB)


def current_upstream(notebook: str, profile: str, params: dict[str, Any] | None = None) -> dict[str, list[str]]:
    """Run ids of the latest finished runs of the main-job phases before ``notebook`` on ``profile``.

    The per-seed phase contributes one id per seed: the seeds in ``params['seeds']`` for a
    main-job phase that declares them (phase 04), else the profile's pipeline seeds. A notebook
    outside the main job reads the main job's artifacts, so every main-job phase is upstream.
    """
    params = params or {}
    in_main = notebook in {n for n, _ in MAIN_JOB}
    seeds = params.get("seeds") if in_main and isinstance(params.get("seeds"), list) else pipeline_seeds(profile)
    upstream: dict[str, list[str]] = {}
    for name, per_seed in _main_job_before(notebook):
        if per_seed:
            runs = [finished_runs(name, profile, int(s), per_seed=True)[:1] for s in seeds]
            upstream[name] = [r[0][1]["run_id"] for r in runs if r]
        else:
            upstream[name] = [m["run_id"] for _, m in finished_runs(name, profile)[:1]]
    return upstream


def resume_decision(notebook: str, profile: str, seed: int | None, params_hash: str, code_version: str,
                    upstream: dict[str, list[str]]) -> tuple[Path | None, str]:
    """(run folder to reuse, ``SKIPPED``) or (None, ``"rerun: <reason>"``).

    The candidate is the newest finished run of the notebook on the profile (of ``seed`` for a
    per-seed run), the one whose artifacts later phases see; it is reused only when its params
    hash, code version and upstream run ids all equal the current ones.
    """
    runs = finished_runs(notebook, profile, seed, per_seed=seed is not None)
    if not runs:
        return None, "rerun: no finished run"
    folder, m = runs[0]
    if m.get("params_hash") != params_hash:
        return None, "rerun: parameters changed"
    if m.get("code_version") != code_version:
        return None, "rerun: code changed" if m.get("code_version") else "rerun: no code version recorded"
    stored = m.get("upstream")
    if stored != upstream:
        if not isinstance(stored, dict):
            return None, "rerun: no upstream runs recorded"
        order = [n for n, _ in MAIN_JOB]
        changed = sorted({n for n in {*stored, *upstream} if stored.get(n) != upstream.get(n)},
                         key=lambda n: (order.index(n) if n in order else len(order), n))
        return None, f"rerun: upstream changed ({', '.join(changed)})"
    return folder, SKIPPED


class _Prepared(NamedTuple):
    path: Path
    name: str
    nb: Any
    params: dict[str, Any]
    params_hash: str
    seed: int | None  # set for a per-seed run (``seed`` given as an override)
    code_version: str
    upstream: dict[str, list[str]]


def _prepare(notebook: str, profile: str, overrides: dict[str, Any],
             upstream: dict[str, list[str]] | None) -> _Prepared:
    from .store import run_code_version

    path = resolve_notebook(notebook)
    name = path.stem
    nb = read_notebook(path)
    params = resolve_params(name, nb, profile, overrides)
    seed = params["seed"] if "seed" in overrides else None
    params_for_hash = {k: v for k, v in params.items() if k not in RUNNER_PARAMS}
    params_hash = config_hash({"notebook": name, "profile": profile, "params": params_for_hash})
    upstream = to_jsonable(upstream if upstream is not None else current_upstream(name, profile, params))
    return _Prepared(path, name, nb, params, params_hash, seed, run_code_version(path), upstream)


def plan_run(notebook: str, profile: str = "smoke", overrides: dict[str, Any] | None = None,
             upstream: dict[str, list[str]] | None = None) -> tuple[Path | None, str]:
    """What ``run_notebook(..., resume=True)`` would do: (finished run to reuse, ``SKIPPED``) or
    (None, ``"rerun: <reason>"``). ``upstream`` defaults to ``current_upstream``."""
    prep = _prepare(notebook, profile, dict(overrides or {}), upstream)
    return resume_decision(prep.name, profile, prep.seed, prep.params_hash, prep.code_version, prep.upstream)


def run_notebook(
    notebook: str,
    profile: str = "smoke",
    overrides: dict[str, Any] | None = None,
    run_id: str | None = None,
    render: bool = True,
    resume: bool = False,
    log_output: bool = False,
    upstream: dict[str, list[str]] | None = None,
) -> RunResult:
    """Execute one notebook with ``profile`` + ``overrides``; return its run folder and results.

    ``resume``: return the newest finished run instead when its params hash, code version and
    upstream run ids equal the current ones (``RunResult.resume`` says which happened and why).
    ``upstream``: the run ids of the phases this run builds on (``run_main_job`` passes the
    ones it just ran); default: the latest finished ones (``current_upstream``).
    """
    import papermill as pm

    overrides = dict(overrides or {})
    prep = _prepare(notebook, profile, overrides, upstream)
    name, nb, params, params_hash = prep.name, prep.nb, prep.params, prep.params_hash
    seed_tag = f"-seed{params['seed']}" if "seed" in overrides else ""
    decision = None
    if resume:
        done, decision = resume_decision(name, profile, prep.seed, params_hash, prep.code_version, prep.upstream)
        if done is not None:
            return RunResult(done, read_json(done / "results.json"), read_json(done / "manifest.json"), decision)

    if run_id is None:  # unique, so an upstream run id always names one run
        run_id = base_id = f"{profile}-{datetime.now().strftime('%Y%m%d-%H%M%S')}{seed_tag}"
        n = 1
        while any((runs_dir() / name / f"{prefix}{run_id}{suffix}").exists()
                  for prefix, suffix in (("", ""), ("", ".failed"), (".", ".partial"))):
            n += 1
            run_id = f"{base_id}-{n}"
    final_dir = runs_dir() / name / run_id
    work_dir = final_dir.with_name(f".{run_id}.partial")
    shutil.rmtree(work_dir, ignore_errors=True)
    work_dir.mkdir(parents=True)
    params.update(profile=profile, run_dir=str(final_dir), artifacts_dir=str(artifacts_dir(profile, params.get("artifacts_dir"))),
                  progress=False)
    # The notebook writes results.json into run_dir; point it at the partial folder while running.
    exec_params = {**params, "run_dir": str(work_dir)}
    atomic_write_text(work_dir / "params.yaml", yaml.safe_dump(to_jsonable(params), sort_keys=True))

    manifest = {
        "notebook": name, "run_id": run_id, "profile": profile, "params_hash": params_hash,
        "code_version": prep.code_version, "upstream": prep.upstream,
        "seed": params.get("seed") if seed_tag else None, "seeds": params.get("seeds"),
        "git_commit": git_commit(), "packages": package_versions(), "python": sys.version.split()[0],
        "device": device_name(), "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    os.environ.setdefault("PLOTLY_RENDERER", "notebook")  # blank figures in HTML otherwise
    # OpenMP threads that spin while waiting make torch ~10x slower whenever another process
    # holds a core (measured on a shared 2-core machine); passive waiting costs little when idle.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    start = time.perf_counter()
    error = None
    try:
        pm.execute_notebook(nb, str(work_dir / "notebook.ipynb"), parameters=exec_params, kernel_name="python3",
                            progress_bar=False, log_output=log_output, cwd=str(repo_root()))
    except pm.PapermillExecutionError as exc:
        error = f"{exc.ename}: {exc.evalue}".strip()
    manifest.update(wall_seconds=round(time.perf_counter() - start, 2),
                    finished=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    status="failed" if error else "ok", error=error)
    if not error and not (work_dir / "results.json").is_file():
        manifest.update(status="failed", error="the notebook did not write results.json")
    if render and (work_dir / "notebook.ipynb").is_file():
        from .report import render_html

        render_html(work_dir / "notebook.ipynb", work_dir / "report.html", title=f"{name} · {run_id}")
    write_json(work_dir / "manifest.json", manifest)

    if manifest["status"] != "ok":
        failed_dir = final_dir.with_name(f"{run_id}.failed")
        shutil.rmtree(failed_dir, ignore_errors=True)
        work_dir.rename(failed_dir)
        raise HusaiError(f"{name} failed ({manifest['error']}); executed notebook kept in {failed_dir}")
    if final_dir.exists():  # same run id given again: replace it only now that the new run is complete
        shutil.rmtree(final_dir)
    work_dir.rename(final_dir)
    return RunResult(final_dir, read_json(final_dir / "results.json"), manifest, decision)


def run_seeds(notebook: str, profile: str, seeds: list[int], overrides: dict[str, Any] | None = None,
              **kwargs: Any) -> list[RunResult]:
    """One papermill run per seed (the per-seed batch mode of a phase)."""
    return [run_notebook(notebook, profile, {**(overrides or {}), "seed": int(s)}, **kwargs) for s in seeds]


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.replace(" ", "").split(",") if s]
    except ValueError:
        raise HusaiError(f"bad seed list {text!r}; expected comma-separated integers like 42,123,456") from None
    if len(set(seeds)) != len(seeds) or not seeds:
        raise HusaiError(f"seed list {text!r} is empty or repeats a seed")
    return seeds


def pipeline_seeds(profile: str) -> list[int]:
    """The SAE seeds of the main job, shared by the per-seed and the analysis phases."""
    return [int(s) for s in load_profile("pipeline", profile).get("seeds", [42, 123, 456, 789, 1011])]


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


def run_main_job(profile: str = "full", resume: bool = False, echo=print) -> list[RunResult]:
    """Phases 01-04 in order, each recording the run ids it builds on (``upstream``); with
    ``resume`` a phase is skipped only when its parameters, code and upstream runs are unchanged,
    and one line per phase says ``skipped (unchanged)`` or ``rerun: <reason>``."""
    from .report import build_index

    results, seeds = [], pipeline_seeds(profile)
    upstream: dict[str, list[str]] = {}
    for name, per_seed in MAIN_JOB:
        start = time.perf_counter()
        if per_seed:  # one papermill run per seed
            runs = [{"seed": int(s)} for s in seeds]
        else:
            extra = {"seeds": seeds} if "seeds" in notebook_parameters(read_notebook(resolve_notebook(name))) else {}
            runs = [extra]
        if resume:
            decisions = [plan_run(name, profile, overrides, upstream)[1] for overrides in runs]
            echo(f"[husai] {name}: {phase_decision(decisions, seeds if per_seed else None)}")
        phase = [run_notebook(name, profile, overrides, resume=resume, upstream=dict(upstream)) for overrides in runs]
        results += phase
        upstream[name] = [r.manifest["run_id"] for r in phase]
        if not resume or any(r.resume != SKIPPED for r in phase):
            echo(f"[husai] {name}: done in {time.perf_counter() - start:.0f}s")
    index = build_index(profile=profile)
    echo(f"[husai] report index: {index}")
    return results
