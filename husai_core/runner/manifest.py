"""What a run was made from (commit, package versions, device, upstream runs) and whether a
finished run can be reused (``resume_decision``).
"""

from __future__ import annotations

import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any, NamedTuple

from ..errors import HusaiError
from ..io import read_json
from .params import pipeline_seeds
from ..paths import repo_root, runs_dir


PACKAGES = ("husai", "torch", "transformer-lens", "sae-lens", "numpy", "scipy", "pandas", "plotly", "papermill")

# The main job (`make run`): notebook, and whether it runs once per seed.
MAIN_JOB: list[tuple[str, bool]] = [
    ("01_transformer", False),
    ("02_activations", False),
    ("03_sae_training", True),
    ("04_trained_vs_nulls", False),
]


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
