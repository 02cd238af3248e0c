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

The package: ``params`` (notebooks, their parameters cells, profiles and overrides, seeds),
``manifest`` (what a run was made from, finished runs, the resume decision), ``execute``
(``run_notebook``: papermill in a ``.partial`` folder, then the report) and ``pipeline`` (the
main job with its progress lines). Locations (``runs_dir``, ``runs_path``, ...) live in
:mod:`husai_core.paths` and are re-exported here.
"""

from ..paths import repo_root, runs_dir, reports_dir, runs_relative, runs_path, artifacts_dir
from .params import (
    RUNNER_PARAMS, list_notebooks, resolve_notebook, read_notebook, notebook_parameters, load_profile, parse_overrides,
    resolve_params, parse_seeds, pipeline_seeds,
)
from .manifest import (
    PACKAGES, MAIN_JOB, git_commit, package_versions, device_name, RunResult, SKIPPED, finished_runs, current_upstream,
    resume_decision,
)
from .execute import plan_run, run_notebook
from .pipeline import run_seeds, phase_decision, phase_estimates, run_main_job
