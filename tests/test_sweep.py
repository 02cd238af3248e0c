import signal
import subprocess
import sys
import time

import pytest

from husai_core.errors import HusaiError
from husai_core.experiments import sae_config
from husai_core.sweep import expand_grid, run_sweep
from sweep_fns import record_call, write_checkpoint


def calls(log):
    return sorted(p.name.split("-")[0] + "-" + p.name.split("-")[1] for p in log.iterdir() if p.name != "allow")


def test_grid_expansion_and_validation():
    points = expand_grid({"d_sae": 128}, {"k": [4, 8]}, seeds=[1, 2], data_id="d0")
    assert [(p.config["k"], p.seed) for p in points] == [(4, 1), (4, 2), (8, 1), (8, 2)]
    assert len({p.key for p in points}) == 4
    with pytest.raises(HusaiError, match="grid entry 'k' is empty"):
        expand_grid({}, {"k": []}, seeds=[1], data_id="d0")
    with pytest.raises(HusaiError, match="no seeds"):
        expand_grid({}, {"k": [1]}, seeds=[], data_id="d0")
    check = lambda cfg: sae_config(16, {"d_sae": cfg["d_sae"], "k": cfg["k"]})  # noqa: E731
    with pytest.raises(HusaiError, match=r"invalid sweep point \{'k': 256\}.*k=256 must be <= d_sae=128"):
        expand_grid({"d_sae": 128}, {"k": [32, 256]}, seeds=[1], check=check, data_id="d0")


def test_sweep_table_and_resume_after_failure(tmp_path):
    log = tmp_path / "log"
    points = expand_grid({"log": str(log), "fail_on": [2, 1]}, {"x": [1, 2, 3]}, seeds=[0, 1], data_id="d0")
    with pytest.raises(RuntimeError, match="planned failure"):
        run_sweep(record_call, points, tmp_path / "out", workers=1, progress=False)
    assert calls(log) == ["1-0", "1-1", "2-0", "2-1"]  # sequential: stopped at the failing point
    (log / "allow").touch()
    table = run_sweep(record_call, points, tmp_path / "out", workers=1, progress=False)
    second = calls(log)
    redone = [c for c in set(second) if second.count(c) > 1]
    assert redone == ["2-1"]  # only the failed point ran again
    assert sorted(table.value) == sorted(x * 10 + s for x in (1, 2, 3) for s in (0, 1))
    assert (tmp_path / "out" / "table.csv").is_file() and (tmp_path / "out" / "table.json").is_file()


def test_process_pool_runs_every_point(tmp_path):
    log = tmp_path / "log"
    points = expand_grid({"log": str(log)}, {"x": [1, 2]}, seeds=[0, 1], data_id="d0")
    table = run_sweep(record_call, points, tmp_path / "out", workers=2, progress=False)
    assert len(table) == 4
    assert calls(log) == ["1-0", "1-1", "2-0", "2-1"]


def test_killed_sweep_resumes_without_redoing_finished_points(tmp_path):
    log, out = tmp_path / "log", tmp_path / "out"
    script = f"""
import sys; sys.path.insert(0, {str(__import__('pathlib').Path(__file__).parent)!r})
from husai_core.sweep import expand_grid, run_sweep
from sweep_fns import record_call, write_checkpoint
points = expand_grid({{"log": {str(log)!r}, "sleep": 0.4}}, {{"x": list(range(8))}}, seeds=[0], data_id="d0")
run_sweep(record_call, points, {str(out)!r}, workers=1, progress=False)
"""
    proc = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.time() + 120
    while time.time() < deadline and len(list((out / "points").glob("*.json"))) < 2:
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = {p.name for p in (out / "points").glob("*.json")}
    assert 2 <= len(finished) < 8
    before = calls(log)
    points = expand_grid({"log": str(log), "sleep": 0.4}, {"x": list(range(8))}, seeds=[0], data_id="d0")
    table = run_sweep(record_call, points, out, workers=1, progress=False)
    assert len(table) == 8
    after = calls(log)
    done_before = {f"{x}-0" for x in range(8) if any(p.key + ".json" in finished for p in points if p.config["x"] == x)}
    for c in done_before:
        assert after.count(c) == before.count(c), f"finished point {c} was run again"


def test_point_keys_include_the_data_and_code(tmp_path):
    """The same configuration on changed data (or code) is a new point: computed again, never reused."""
    log, out = tmp_path / "log", tmp_path / "out"
    grid = ({"log": str(log)}, {"x": [1, 2]})
    old = expand_grid(*grid, seeds=[0], data_id="cache-A")
    run_sweep(record_call, old, out, workers=1, progress=False)
    assert calls(log) == ["1-0", "2-0"]
    again = run_sweep(record_call, expand_grid(*grid, seeds=[0], data_id="cache-A"), out, workers=1, progress=False)
    assert calls(log) == ["1-0", "2-0"]  # same data: reused
    new = expand_grid(*grid, seeds=[0], data_id="cache-B")
    assert {p.key for p in new}.isdisjoint(p.key for p in old)
    table = run_sweep(record_call, new, out, workers=1, progress=False)
    assert calls(log) == ["1-0", "1-0", "2-0", "2-0"]  # changed data: recomputed
    assert set(table.data_id) == {"cache-B"} and set(again.data_id) == {"cache-A"}
    newer_code = expand_grid(*grid, seeds=[0], data_id="cache-B", code_id="v2")
    run_sweep(record_call, newer_code, out, workers=1, progress=False)
    assert len(calls(log)) == 6  # changed code: recomputed too
    for bad in (None, "", 3):
        with pytest.raises(HusaiError, match="data_id must be a non-empty string"):
            expand_grid(*grid, seeds=[0], data_id=bad)
    with pytest.raises(TypeError):
        expand_grid(*grid, seeds=[0])  # data_id is required


def test_point_files_name_no_machine_folder_and_survive_a_moved_runs_folder(tmp_path, monkeypatch):
    import json
    import shutil

    monkeypatch.setenv("HUSAI_RUNS_DIR", str(tmp_path / "runs"))
    log = tmp_path / "runs" / "log"
    points = expand_grid({"log": str(log)}, {"x": [1, 2]}, seeds=[0], data_id="d")
    table = run_sweep(write_checkpoint, points, tmp_path / "runs" / "sweep", workers=1, progress=False)
    keys = [p.key for p in points]
    assert [open(p).read() for p in table.checkpoint] == ["weights", "weights"]  # absolute again, readable
    stored = [json.loads(p.read_text()) for p in sorted((tmp_path / "runs" / "sweep" / "points").iterdir())]
    assert {r["config"]["log"] for r in stored} == {"log"}
    assert {r["result"]["checkpoint"] for r in stored} == {"ckpt-1-0", "ckpt-2-0"}
    assert str(tmp_path) not in (tmp_path / "runs" / "sweep" / "table.json").read_text()
    assert str(tmp_path) not in (tmp_path / "runs" / "sweep" / "table.csv").read_text()

    shutil.move(tmp_path / "runs", tmp_path / "moved")  # another machine, another folder
    monkeypatch.setenv("HUSAI_RUNS_DIR", str(tmp_path / "moved"))
    moved = expand_grid({"log": str(tmp_path / "moved" / "log")}, {"x": [1, 2]}, seeds=[0], data_id="d")
    assert [p.key for p in moved] == keys
    again = run_sweep(write_checkpoint, moved, tmp_path / "moved" / "sweep", workers=1, progress=False)
    assert calls(tmp_path / "moved" / "log") == ["1-0", "2-0"]  # reused, not recomputed
    assert [str(p) for p in again.checkpoint] == [str(tmp_path / "moved" / f"ckpt-{x}-0") for x in (1, 2)]
