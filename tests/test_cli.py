"""CLI consistency: one default profile, an example in every --help, run metadata without machine paths."""

import argparse
from pathlib import Path

import pytest

from husai_core import cli, runner
from husai_core.io import read_json
from husai_core.report import record_results


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = cli._parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_subcommand_help_has_an_example():
    subs = _subcommands()
    assert {"run", "pipeline", "index", "compare", "params"} <= set(subs)
    for name, sub in subs.items():
        text = sub.format_help()
        assert "example" in text.lower() and f"husai {name}" in text, name


def test_run_and_pipeline_default_to_the_same_profile_and_say_which():
    subs = _subcommands()
    defaults = {name: subs[name].get_default("profile") for name in ("run", "pipeline", "params", "compare")}
    assert set(defaults.values()) == {cli.PROFILE}
    for name in ("run", "pipeline"):
        assert f"default: {cli.PROFILE}" in subs[name].format_help()


def test_runs_relative_round_trips_inside_and_keeps_paths_outside(tmp_path, monkeypatch):
    monkeypatch.setenv("HUSAI_RUNS_DIR", str(tmp_path / "runs"))
    inside = tmp_path / "runs" / "artifacts" / "smoke" / "saes" / "seed42"
    assert runner.runs_relative(inside) == "artifacts/smoke/saes/seed42"
    assert runner.runs_path("artifacts/smoke/saes/seed42") == inside
    assert runner.runs_relative("/elsewhere/sae") == "/elsewhere/sae" == str(runner.runs_path("/elsewhere/sae"))
    assert runner.runs_relative("blocks.0.hook_resid_post") == "blocks.0.hook_resid_post"
    (tmp_path / "link").symlink_to(tmp_path / "runs", target_is_directory=True)
    assert runner.runs_relative(tmp_path / "link" / "01_x" / "run") == "01_x/run"  # same folder by another name


def test_results_store_paths_relative_to_the_runs_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("HUSAI_RUNS_DIR", str(tmp_path / "runs"))
    art = tmp_path / "runs" / "artifacts" / "smoke"
    results = {"headline": {"n": 1}, "checkpoint": str(art / "saes" / "seed1"),
               "conditions": {"trained": {"checkpoints": [str(art / "a"), None, "/outside/b"]}}}
    path = record_results(tmp_path / "runs" / "03_x" / "run", results)
    stored = read_json(path)
    assert stored["checkpoint"] == "artifacts/smoke/saes/seed1"
    assert stored["conditions"]["trained"]["checkpoints"] == ["artifacts/smoke/a", None, "/outside/b"]
    assert runner.runs_path(stored["checkpoint"]) == Path(results["checkpoint"])
    assert results["checkpoint"] == str(art / "saes" / "seed1")  # the caller's dict is untouched


@pytest.mark.parametrize("argv", [["run", "--help"], ["pipeline", "--help"]])
def test_help_exits_cleanly(argv, capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(argv)
    assert done.value.code == 0 and "examples:" in capsys.readouterr().out
