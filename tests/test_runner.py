import subprocess
import sys

import pytest

from husai_core import runner
from husai_core.errors import HusaiError


def husai(*args):
    return subprocess.run([sys.executable, "-m", "husai_core.cli", *args], capture_output=True, text=True, timeout=300)


def test_parameters_cell_is_parsed():
    params = runner.notebook_parameters(runner.read_notebook(runner.resolve_notebook("01")))
    assert params["p"] == 113 and params["train_frac"] == 0.3 and params["compare_legacy"] is False
    assert set(runner.RUNNER_PARAMS) <= set(params)


def test_overrides_are_yaml_values():
    assert runner.parse_overrides(["k=32", "hooks=[a, b]", "name=x=y"]) == {"k": 32, "hooks": ["a", "b"], "name": "x=y"}
    with pytest.raises(HusaiError, match="expected key=value"):
        runner.parse_overrides(["oops"])


def test_unknown_parameter_is_an_error_not_a_warning():
    nb = runner.read_notebook(runner.resolve_notebook("01_transformer"))
    with pytest.raises(HusaiError, match=r"unknown parameter 'learning_rate' for 01_transformer"):
        runner.resolve_params("01_transformer", nb, "smoke", {"learning_rate": 1})


def test_seed_lists():
    assert runner.parse_seeds("42, 123,456") == [42, 123, 456]
    for bad in ("1,1", "a,b", ""):
        with pytest.raises(HusaiError):
            runner.parse_seeds(bad)


@pytest.mark.parametrize("args,message", [
    (["run", "01_transformer", "-p", "learning_rate=1"], "unknown parameter 'learning_rate'"),
    (["run", "99_nothing"], "unknown notebook '99_nothing'"),
    (["run", "01", "--profile", "huge"], "unknown profile 'huge'"),
    (["run", "03", "--seeds", "1,1"], "repeats a seed"),
])
def test_cli_bad_input_is_one_clear_line(args, message):
    proc = husai(*args)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("husai: error:") and message in lines[0], proc.stderr


def test_cli_lists_parameters():
    proc = husai("params", "01", "--profile", "smoke")
    assert proc.returncode == 0 and "p = 113   [smoke: 23]" in proc.stdout
