"""Run the phase notebooks through papermill: profiles, parameter checks, manifests, reports.

``notebooks/<name>.py`` (jupytext percent format) is the source of truth. A run executes it
into ``runs/<name>/<run_id>/`` (executed ``notebook.ipynb``, ``params.yaml``,
``results.json`` written by the notebook, ``manifest.json``, ``report.html``). The run is
built in a ``.partial`` folder and renamed when complete, so a crash never leaves a
half-written run that looks finished.
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
    ("04_trained_vs_random", False),
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


def _find_complete_run(notebook: str, params_hash: str) -> Path | None:
    folder = runs_dir() / notebook
    done = [m.parent for m in folder.glob("*/manifest.json")
            if not m.parent.name.startswith(".") and _manifest_ok(m, params_hash)]
    return max(done, key=lambda p: p.stat().st_mtime) if done else None


def _manifest_ok(path: Path, params_hash: str) -> bool:
    try:
        m = read_json(path)
    except HusaiError:
        return False
    return m.get("status") == "ok" and m.get("params_hash") == params_hash and (path.parent / "results.json").is_file()


def run_notebook(
    notebook: str,
    profile: str = "smoke",
    overrides: dict[str, Any] | None = None,
    run_id: str | None = None,
    render: bool = True,
    resume: bool = False,
    log_output: bool = False,
) -> RunResult:
    """Execute one notebook with ``profile`` + ``overrides``; return its run folder and results."""
    import papermill as pm

    path = resolve_notebook(notebook)
    name = path.stem
    nb = read_notebook(path)
    overrides = dict(overrides or {})
    params = resolve_params(name, nb, profile, overrides)
    seed_tag = f"-seed{params['seed']}" if "seed" in overrides else ""
    params_for_hash = {k: v for k, v in params.items() if k not in RUNNER_PARAMS}
    params_hash = config_hash({"notebook": name, "profile": profile, "params": params_for_hash})
    if resume and (done := _find_complete_run(name, params_hash)):
        return RunResult(done, read_json(done / "results.json"), read_json(done / "manifest.json"))

    run_id = run_id or f"{profile}-{datetime.now().strftime('%Y%m%d-%H%M%S')}{seed_tag}"
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
    return RunResult(final_dir, read_json(final_dir / "results.json"), manifest)


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


def run_main_job(profile: str = "full", resume: bool = False, echo=print) -> list[RunResult]:
    from .report import build_index

    results, seeds = [], pipeline_seeds(profile)
    for name, per_seed in MAIN_JOB:
        start = time.perf_counter()
        if per_seed:
            results += run_seeds(name, profile, seeds, resume=resume)
        else:
            extra = {"seeds": seeds} if "seeds" in notebook_parameters(read_notebook(resolve_notebook(name))) else {}
            results.append(run_notebook(name, profile, extra, resume=resume))
        echo(f"[husai] {name}: done in {time.perf_counter() - start:.0f}s")
    index = build_index()
    echo(f"[husai] report index: {index}")
    return results
