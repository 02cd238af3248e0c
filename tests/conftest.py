"""Shared fixtures: every test writes runs and reports into a temporary folder."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Test tensors are tiny: a second torch thread only adds waiting (badly so on a loaded 2-core machine)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def _isolated_runs(tmp_path_factory, monkeypatch):
    """Runs/reports of tests never touch the checkout's runs/ and reports/."""
    if "HUSAI_TEST_RUNS" not in os.environ:
        os.environ["HUSAI_TEST_RUNS"] = str(tmp_path_factory.getbasetemp() / "runs")
        os.environ["HUSAI_TEST_REPORTS"] = str(tmp_path_factory.getbasetemp() / "reports")
    monkeypatch.setenv("HUSAI_RUNS_DIR", os.environ["HUSAI_TEST_RUNS"])
    monkeypatch.setenv("HUSAI_REPORTS_DIR", os.environ["HUSAI_TEST_REPORTS"])
    monkeypatch.setenv("PLOTLY_RENDERER", "notebook")


@contextmanager
def runs_env(base: Path):
    """Point runs/reports at ``base`` for notebooks executed inside the block, then restore."""
    values = {"HUSAI_RUNS_DIR": str(base / "runs"), "HUSAI_REPORTS_DIR": str(base / "reports"),
              # smoke tensors are tiny: one thread per kernel beats two threads fighting over 2 cores
              "PLOTLY_RENDERER": "notebook", "OMP_NUM_THREADS": "1"}
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield base
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="session")
def smoke_runs(tmp_path_factory):
    """Execute the main-job notebooks once on the smoke profile, in order (papermill in pytest)."""
    from husai_core import runner

    with runs_env(tmp_path_factory.mktemp("smoke")) as base:
        results = {r.manifest["notebook"] + (f"-seed{r.manifest['seed']}" if r.manifest.get("seed") is not None else ""): r
                   for r in runner.run_main_job("smoke", echo=lambda *_: None)}
    return {"base": base, "runs": results}
