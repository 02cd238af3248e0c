"""The sweep runner on a Dask cluster: a LocalCluster through the ``scheduler`` parameter, and
the dask-jobqueue SLURM example of docs/dask.md (its job script; no SLURM here)."""

import importlib.util
import os
from pathlib import Path

import pandas as pd
import pytest
from distributed import LocalCluster

from husai_core.errors import HusaiError
from husai_core.sweep import _call, expand_grid, run_sweep
from sweep_fns import record_call

REPO = Path(__file__).resolve().parents[1]


def calls(log):
    return sorted("-".join(p.name.split("-")[:2]) for p in log.iterdir() if p.name != "allow")


@pytest.fixture(scope="module")
def cluster():
    # One worker process with two threads: results cross a process boundary to come back, and
    # only one process starts (importing torch there dominates the test's time on 2 cores).
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=True, dashboard_address=None) as c:
        yield c


def test_dask_sweep_resumes_and_equals_the_process_pool(cluster, tmp_path):
    log = tmp_path / "log"
    points = expand_grid({"log": str(log)}, {"x": [1, 2, 3]}, seeds=[0, 1], data_id="d0")
    table = run_sweep(record_call, points, tmp_path / "dask", scheduler=cluster.scheduler_address, progress=False)
    assert calls(log) == ["1-0", "1-1", "2-0", "2-1", "3-0", "3-1"]
    assert len(list((tmp_path / "dask" / "points").glob("*.json"))) == 6  # written by the client
    again = run_sweep(record_call, points, tmp_path / "dask", scheduler=cluster.scheduler_address, progress=False)
    assert len(calls(log)) == 6  # resumed: every point's file exists, nothing computed
    pool = run_sweep(record_call, points, tmp_path / "pool", workers=2, progress=False)
    assert len(calls(log)) == 12
    pd.testing.assert_frame_equal(table, pool)
    pd.testing.assert_frame_equal(again, pool)


def test_dask_sweep_keeps_finished_points_when_one_fails(cluster, tmp_path):
    log = tmp_path / "log"
    points = expand_grid({"log": str(log), "fail_on": [2, 0]}, {"x": [1, 2]}, seeds=[0], data_id="d0")
    with pytest.raises(RuntimeError, match="planned failure at x=2 seed=0"):
        run_sweep(record_call, points, tmp_path / "out", scheduler=cluster.scheduler_address, progress=False)
    (log / "allow").touch()
    table = run_sweep(record_call, points, tmp_path / "out", scheduler=cluster.scheduler_address, progress=False)
    assert sorted(table.value) == [10, 20]
    assert calls(log).count("2-0") == 2  # only the failed point ran again
    assert calls(log).count("1-0") in (1, 2)  # 1-0 may still have been running when the failure arrived


def test_worker_without_the_clients_files_fails_naming_the_path(tmp_path):
    (point,) = expand_grid({"log": str(tmp_path / "log")}, {"x": [1]}, seeds=[0], data_id="d0")
    with pytest.raises(HusaiError, match="cannot see /nonexistent/artifacts, which the client has"):
        _call(record_call, point, ("/nonexistent/artifacts",))
    assert not (tmp_path / "log").exists()  # checked before the point ran
    assert _call(record_call, point, (str(tmp_path),))["result"] == {"value": 10}


@pytest.mark.filterwarnings("ignore:Port 8787 is already in use")  # the example keeps dask's dashboard
def test_slurm_example_prints_its_job_script(capsys):
    spec = importlib.util.spec_from_file_location("slurm_cluster", REPO / "docs" / "slurm_cluster.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    assert example.main(["--dry-run", "--cores", "4", "--memory", "16GB", "--walltime", "02:00:00",
                         "--queue", "cpu", "--account", "proj", "--host", "127.0.0.1"]) == 0
    script = capsys.readouterr().out
    for line in ("#SBATCH -p cpu", "#SBATCH -A proj", "#SBATCH --cpus-per-task=4", "#SBATCH -t 02:00:00",
                 "export OMP_NUM_THREADS=1"):
        assert line in script.splitlines()
    assert "#SBATCH --mem=" in script
    worker = next(line for line in script.splitlines() if "distributed.cli.dask_worker" in line)
    assert "tcp://127.0.0.1:" in worker and "--nthreads 1" in worker and "--nworkers 4" in worker
    assert example.main(["--dry-run", "--gpus", "1", "--host", "127.0.0.1"]) == 0
    gpu = capsys.readouterr().out
    assert "#SBATCH --gres=gpu:1" in gpu and "--nworkers" not in gpu and "export OMP_NUM_THREADS=8" in gpu


def test_results_travel_back_from_the_worker_process(cluster, tmp_path):
    """The points run in the worker's process; their results come back over the wire and the
    client writes the point files (workers are told no output folder)."""
    log = tmp_path / "log"
    points = expand_grid({"log": str(log)}, {"x": [4, 5]}, seeds=[0], data_id="d0")
    table = run_sweep(record_call, points, tmp_path / "out", scheduler=cluster.scheduler_address, progress=False)
    assert sorted(table.value) == [40, 50]
    ran_in = {int(p.name.split("-")[2]) for p in log.iterdir()}
    assert os.getpid() not in ran_in  # computed in the worker process
    assert len(list((tmp_path / "out" / "points").glob("*.json"))) == 2
