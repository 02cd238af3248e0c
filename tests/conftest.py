"""Shared fixtures: every test writes runs and reports into a temporary folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _isolated_runs(tmp_path_factory, monkeypatch):
    """Runs/reports of tests never touch the checkout's runs/ and reports/."""
    if "HUSAI_TEST_RUNS" not in os.environ:
        os.environ["HUSAI_TEST_RUNS"] = str(tmp_path_factory.getbasetemp() / "runs")
        os.environ["HUSAI_TEST_REPORTS"] = str(tmp_path_factory.getbasetemp() / "reports")
    monkeypatch.setenv("HUSAI_RUNS_DIR", os.environ["HUSAI_TEST_RUNS"])
    monkeypatch.setenv("HUSAI_REPORTS_DIR", os.environ["HUSAI_TEST_REPORTS"])
    monkeypatch.setenv("PLOTLY_RENDERER", "notebook")


@pytest.fixture(scope="session")
def smoke_runs(tmp_path_factory):
    """Execute the main-job notebooks once on the smoke profile, in order (papermill in pytest)."""
    from husai_core import runner

    base = tmp_path_factory.mktemp("smoke")
    old = {k: os.environ.get(k) for k in ("HUSAI_RUNS_DIR", "HUSAI_REPORTS_DIR", "PLOTLY_RENDERER", "OMP_NUM_THREADS")}
    # Smoke tensors are tiny: one thread per kernel beats two threads fighting over 2 cores.
    os.environ.update(HUSAI_RUNS_DIR=str(base / "runs"), HUSAI_REPORTS_DIR=str(base / "reports"),
                      PLOTLY_RENDERER="notebook", OMP_NUM_THREADS="1")
    try:
        results = {r.manifest["notebook"] + (f"-seed{r.manifest['seed']}" if r.manifest.get("seed") is not None else ""): r
                   for r in runner.run_main_job("smoke", echo=lambda *_: None)}
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return {"base": base, "runs": results}
