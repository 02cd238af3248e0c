"""Acceptance gates (husai_core.gates) and `husai gate`: required vs optional, missing inputs, exit codes."""

import math

import pytest

from husai_core.cli import main
from husai_core.errors import HusaiError
from husai_core.gates import (check_gate, consistency_gates, format_gates, gate_exit_code, gates_record, load_gates,
                              pass_all)
from husai_core.io import write_json

# ---------------------------------------------------------------- gates

def test_gate_directions_and_nan():
    assert check_gate("a", 0.0, 0.0, ">=").passed and not check_gate("a", -1e-9, 0.0, ">=").passed
    assert check_gate("b", 0.05, 0.05, "<=").passed and not check_gate("b", 0.051, 0.05, "<=").passed
    assert not check_gate("c", float("nan"), 0.0, ">=").passed and not check_gate("c", float("nan"), 0.0, "<=").passed
    with pytest.raises(HusaiError, match="op"):
        check_gate("d", 1.0, 0.0, ">")


def test_pass_all_needs_every_gate_and_at_least_one():
    ok, bad = check_gate("ok", 1, 0), check_gate("bad", -1, 0)
    assert pass_all([ok, ok]) and not pass_all([ok, bad])
    with pytest.raises(HusaiError, match="at least one required gate"):
        pass_all([])


def test_consistency_gates():
    gates = consistency_gates(difference=0.02, lcb=-0.01, ev_drop=0.03, ev_drop_limit=0.05)
    assert [g.passed for g in gates] == [True, False, True]
    gates = consistency_gates(0.02, 0.01, 0.06, 0.05, prefix="x: ", collapse=True)
    assert [g.passed for g in gates] == [True, True, False, False] and gates[0].name.startswith("x: ")
    assert all(g.passed for g in consistency_gates(0.0, 0.0, 0.05, 0.05, collapse=False))


def test_gates_record_round_trip_and_tampering(tmp_path):
    gates = consistency_gates(0.02, -0.01, 0.03)
    record = gates_record(gates)
    assert record["pass_all"] is False and record["failed"] == ["LCB >= 0"]
    path = write_json(tmp_path / "results.json", {"headline": {}, "gates": record})
    assert load_gates(path) == gates and load_gates(tmp_path) == gates  # the run folder works too
    record["gates"][1]["passed"] = True  # says it passed, but its own numbers say it did not
    write_json(path, {"headline": {}, "gates": record})
    with pytest.raises(HusaiError, match="LCB >= 0"):
        load_gates(path)


# ---------------------------------------------------------------- the command line

def _results(tmp_path, passing: bool):
    gates = consistency_gates(0.02, 0.01 if passing else -0.01, 0.03)
    return write_json(tmp_path / ("pass" if passing else "fail") / "results.json",
                      {"headline": {"x": 1}, "gates": gates_record(gates)})


def test_cli_exit_code_2_only_when_gates_fail_and_the_flag_asks(tmp_path, capsys):
    failing, passing = _results(tmp_path, False), _results(tmp_path, True)
    assert main(["gate", str(failing), "--fail-on-gate-fail"]) == 2
    out = capsys.readouterr().out
    assert "FAIL    LCB >= 0" in out and "pass_all: False" in out
    assert main(["gate", str(failing)]) == 0
    assert main(["gate", str(passing), "--fail-on-gate-fail"]) == 0
    assert main(["gate", str(passing.parent)]) == 0
    assert gate_exit_code(load_gates(failing), True) == 2 and gate_exit_code(load_gates(failing), False) == 0


def test_cli_without_gates_is_a_clear_error(tmp_path, capsys):
    path = write_json(tmp_path / "results.json", {"headline": {"x": 1}})
    assert main(["gate", str(path), "--fail-on-gate-fail"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("husai: error:") and "no acceptance gates" in err
    assert main(["gate", str(tmp_path / "missing.json")]) == 1




# ---------------------------------------------------------------- required vs optional, missing inputs

def test_optional_gates_are_reported_but_do_not_decide(tmp_path):
    req, opt_bad = check_gate("lcb", 0.1, 0.0), check_gate("ood", 0.3, 0.1, "<=", required=False)
    missing = check_gate("loss recovered", None, 0.9, detail="missing: no 12_evaluation run", required=False)
    assert missing.missing and not missing.passed and not opt_bad.passed
    assert pass_all([req, opt_bad, missing]) and not pass_all([check_gate("lcb", -0.1, 0.0), opt_bad])
    with pytest.raises(HusaiError, match="at least one required gate"):
        pass_all([opt_bad])
    record = gates_record([req, opt_bad, missing])
    assert record["pass_all"] and record["failed"] == [] and record["optional_failed"] == ["ood", "loss recovered"]
    path = write_json(tmp_path / "results.json", {"headline": {}, "gates": record})
    back = load_gates(path)
    assert [g.required for g in back] == [True, False, False] and math.isnan(back[2].value)
    assert gate_exit_code(back, True) == 0
    text = format_gates(back)
    assert "MISSING loss recovered [optional]" in text and "no 12_evaluation run" in text and "PASS    lcb:" in text
    old = {"name": "x", "value": 1.0, "op": ">=", "threshold": 0.0, "passed": True}  # records from before `required`
    assert load_gates(write_json(tmp_path / "old.json", {"gates": {"gates": [old]}}))[0].required
