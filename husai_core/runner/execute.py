"""``run_notebook``: execute one notebook with papermill into a ``.partial`` run folder, write its
manifest and report, rename it when complete.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from ..errors import HusaiError
from ..io import atomic_write_text, config_hash, read_json, to_jsonable, write_json
from .manifest import RunResult, current_upstream, device_name, git_commit, package_versions, resume_decision
from .params import RUNNER_PARAMS, read_notebook, resolve_notebook, resolve_params
from ..paths import artifacts_dir, repo_root, runs_dir, runs_relative


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
    from ..store import run_code_version

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
    ``log_output``: show the notebook's progress bars and printed lines on this terminal (the
    notebook's ``progress`` is then on); tests leave it off.
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
                  progress=log_output)
    # The notebook writes results.json into run_dir; point it at the partial folder while running.
    exec_params = {**params, "run_dir": str(work_dir)}
    recorded = {**params, "run_dir": runs_relative(final_dir), "artifacts_dir": runs_relative(params["artifacts_dir"])}
    atomic_write_text(work_dir / "params.yaml", yaml.safe_dump(to_jsonable(recorded), sort_keys=True))

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
        with _progress_env(log_output):
            # The kernel's stdout/stderr (progress bars, printed lines) go to this terminal when
            # asked; coalescing keeps only each bar's final state in the notebook.
            pm.execute_notebook(nb, str(work_dir / "notebook.ipynb"), parameters=exec_params, kernel_name="python3",
                                progress_bar=False, cwd=str(repo_root()), coalesce_streams=True,
                                kernel_manager_class=_kernel_manager_class(),
                                stdout_file=sys.stdout if log_output else None,
                                stderr_file=sys.stderr if log_output else None)
    except pm.PapermillExecutionError as exc:
        error = f"{exc.ename}: {exc.evalue}".strip()
    manifest.update(wall_seconds=round(time.perf_counter() - start, 2),
                    finished=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    status="failed" if error else "ok", error=error)
    if not error and not (work_dir / "results.json").is_file():
        manifest.update(status="failed", error="the notebook did not write results.json")
    if (work_dir / "notebook.ipynb").is_file():
        _drop_machine_paths(work_dir / "notebook.ipynb", work_dir, final_dir)
    if render and (work_dir / "notebook.ipynb").is_file():
        from ..report import render_html

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


def _drop_machine_paths(nb_path: Path, work_dir: Path, final_dir: Path) -> None:
    """The executed notebook names no machine's folders: the partial run folder becomes the final
    one, and paths in the runs folder (then in the checkout) become relative to it, as in
    params.yaml (the injected parameters, papermill's metadata and any printed path)."""
    text = nb_path.read_text()
    replaced = text.replace(str(work_dir), runs_relative(final_dir))
    for root in dict.fromkeys([runs_dir(), runs_dir().resolve(), repo_root(), repo_root().resolve()]):
        replaced = replaced.replace(f"{root}{os.sep}", "")
    if replaced != text:
        atomic_write_text(nb_path, replaced)


@contextmanager
def _progress_env(text: bool):
    """``HUSAI_PROGRESS=text`` for the kernel: its bars are plain text the runner can forward."""
    old = os.environ.get("HUSAI_PROGRESS")
    if text:
        os.environ["HUSAI_PROGRESS"] = "text"
    else:
        os.environ.pop("HUSAI_PROGRESS", None)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("HUSAI_PROGRESS", None)
        else:
            os.environ["HUSAI_PROGRESS"] = old


def _kernel_manager_class():
    """nbclient's kernel manager, provisioning CurveZMQ keys when pyzmq has them: the kernel's
    channels are encrypted and it no longer warns "running over TCP without encryption"."""
    import zmq
    from jupyter_client.manager import AsyncKernelManager

    if not zmq.has("curve"):
        return AsyncKernelManager

    class EncryptedKernelManager(AsyncKernelManager):
        def __init__(self, **kwargs: Any):
            super().__init__(**kwargs)
            self.transport_encryption = "auto"

    return EncryptedKernelManager
