"""``husai verify``: the smoke main job verifies clean; an edited number, a swapped decoder and a
stale activation cache each fail with the right lines. Every test works on a copy of the
session's smoke runs, so other tests never see the damage."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from husai_core import cli
from husai_core.io import load_tensors, save_tensors
from husai_core.verify import compare, index_rows, run_artifacts


@pytest.fixture
def smoke_copy(smoke_runs, tmp_path):
    base = tmp_path / "copy"
    shutil.copytree(smoke_runs["base"], base)
    return {"base": base, "orig": smoke_runs["base"], "runs": smoke_runs["runs"]}


def verify(base: Path, capsys) -> tuple[int, list[str]]:
    rc = cli.main(["verify", "--profile", "smoke", "--runs", str(base / "runs"), "--reports", str(base / "reports")])
    return rc, capsys.readouterr().out.strip().splitlines()


def in_copy(copy: dict, path: str) -> Path:
    """A path recorded in a run (relative to the runs folder, or absolute), in the copy."""
    path = Path(path)
    return copy["base"] / (path.relative_to(copy["orig"]) if path.is_absolute() else Path("runs") / path)


def test_untouched_smoke_runs_verify(smoke_copy, capsys):
    rc, lines = verify(smoke_copy["base"], capsys)
    assert rc == 0, "\n".join(lines)
    assert len(lines) == 1 and lines[0].startswith("husai verify: smoke profile OK")
    for phase in ("index", "01_transformer", "02_activations", "03_sae_training", "04_trained_vs_nulls"):
        assert f"{phase} " in lines[0]
    assert "(3 runs)" in lines[0]


def test_an_edited_results_json_is_caught(smoke_copy, capsys):
    path = in_copy(smoke_copy, str(smoke_copy["runs"]["01_transformer"].run_dir)) / "results.json"
    res = json.loads(path.read_text())
    reported = res["headline"]["held-out accuracy"]
    res["headline"]["held-out accuracy"] = reported + 0.01
    path.write_text(json.dumps(res))
    rc, lines = verify(smoke_copy["base"], capsys)
    assert rc == 1
    bad = lines[:-1]
    assert bad[0].startswith("husai verify: index: 01_transformer: held-out accuracy: reported ")  # the index shows the old number
    assert any(l.startswith("husai verify: 01_transformer: headline.held-out accuracy: reported "
                            f"{reported + 0.01}, recomputed {reported}") for l in bad), bad
    assert len(bad) == 2 and "2 mismatch(es)" in lines[-1]


def test_a_swapped_decoder_is_caught(smoke_copy, capsys):
    seeds = sorted(int(k.rsplit("seed", 1)[1]) for k in smoke_copy["runs"] if k.startswith("03_sae_training-seed"))
    victim, donor = (in_copy(smoke_copy, smoke_copy["runs"][f"03_sae_training-seed{s}"].results["checkpoint"])
                     for s in seeds[:2])
    shutil.copyfile(donor / "sae.safetensors", victim / "sae.safetensors")
    rc, lines = verify(smoke_copy["base"], capsys)
    assert rc == 1
    bad = lines[:-1]
    victim_lines = [l for l in bad if l.startswith(f"husai verify: 03_sae_training-seed{seeds[0]}: ")]
    assert any(": sae_sha256: reported " in l for l in victim_lines), bad
    assert any(": headline.held-out EV: reported " in l for l in victim_lines), bad
    assert any(l.startswith("husai verify: 04_trained_vs_nulls: headline.trained: reported ") for l in bad), bad
    assert not [l for l in bad if "seed" + str(seeds[1]) in l.split(":")[1] or "01_" in l or "02_" in l or "index" in l]


def test_a_stale_activation_cache_is_caught(smoke_copy, capsys):
    cache = in_copy(smoke_copy, smoke_copy["runs"]["02_activations"].results["caches"]["default"])
    tensors = load_tensors(cache / "activations.safetensors")
    hook = "blocks.0.hook_resid_post"
    tensors[hook] = tensors[hook] + 0.01 * torch.randn(tensors[hook].shape, generator=torch.Generator().manual_seed(0))
    save_tensors(cache / "activations.safetensors", tensors)
    rc, lines = verify(smoke_copy["base"], capsys)
    assert rc == 1
    bad = lines[:-1]
    assert any(l.startswith("husai verify: 02_activations: cannot re-derive: stale activation cache ")
               and hook in l for l in bad), bad
    for name in [k for k in smoke_copy["runs"] if k.startswith("03_")] + ["04_trained_vs_nulls"]:
        assert any(l.startswith(f"husai verify: {name}: cannot re-derive: SAE ") and "stale (input data changed)" in l
                   for l in bad), (name, bad)
    assert not [l for l in bad if l.startswith("husai verify: 01_")]


# ---------------------------------------------------------------- pieces, on tiny inputs

def test_compare_walks_every_leaf_with_a_relative_tolerance():
    reported = {"a": 1.0, "b": [1, 2.0, "x"], "c": {"d": True, "e": None}}
    assert compare(reported, {"a": 1.0 + 1e-9, "b": [1, 2.0, "x"], "c": {"d": True, "e": None}}, "h") == (3, [])
    n, diffs = compare(reported, {"a": 1.001, "b": [1, 2.0], "c": {"d": False, "e": None}, "z": 1}, "h")
    assert [d[0] for d in diffs] == ["h.a", "h.b (length)", "h.c.d", "h.z"]
    assert compare({"a": 1}, {"a": 1, "new": 2}, "s", extra_ok=True) == (1, [])
    assert compare({"v": float("nan")}, {"v": float("nan")}, "") == (1, [])
    assert compare({"v": 1}, {"v": True}, "")[1]  # a bool is not the number 1


def test_index_rows_read_what_build_index_writes(tmp_path):
    from husai_core import report
    from husai_core.io import write_json

    run = tmp_path / "runs" / "01_x" / "r1"
    write_json(run / "manifest.json", {"notebook": "01_x", "run_id": "r1", "profile": "smoke", "status": "ok",
                                       "finished": "2026-01-01T00:00:00+00:00", "seed": None})
    write_json(run / "results.json", {"headline": {"a <b>": 0.123456, "freqs": [1, 2], "v": "present & clear"}})
    index = report.build_index(tmp_path / "runs", tmp_path / "reports", "smoke")
    rows = index_rows(index.read_text())
    assert rows == {"01_x": {"finished": "2026-01-01T00:00:00+00:00",
                             "headline": {"a <b>": "0.1235", "freqs": "1, 2", "v": "present & clear"}}}


def test_artifacts_follow_a_moved_runs_folder(tmp_path):
    runs = tmp_path / "runs"
    assert run_artifacts({"run_dir": "01_x/r1", "artifacts_dir": "artifacts/smoke"}, runs, "smoke") == \
        runs / "artifacts" / "smoke"
    params = {"run_dir": "/old/runs/01_x/r1", "artifacts_dir": "/old/runs/artifacts/smoke"}  # older runs
    assert run_artifacts(params, runs, "smoke") == runs / "artifacts" / "smoke"
    params["artifacts_dir"] = "/elsewhere/art"
    assert run_artifacts(params, runs, "smoke") == Path("/elsewhere/art")


def test_verify_without_runs_is_one_clear_line(tmp_path, capsys):
    (tmp_path / "runs").mkdir()
    assert cli.main(["verify", "--profile", "smoke", "--runs", str(tmp_path / "runs")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("husai: error: no finished smoke-profile runs") and "\n" not in err
