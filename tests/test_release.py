"""Acceptance gates, selection rules and the matched gain (husai_core.release), and `husai gate`."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from husai_core.cli import main
from husai_core.errors import HusaiError
from husai_core.io import write_json
from husai_core.release import (Gate, check_gate, consistency_gates, gate_exit_code, gates_record, load_gates,
                                matched_gain, pass_all, select_adaptive_k, select_candidate, select_under_ev_drop)


def _summary(rows):
    """Candidates with the columns selection needs; permutation p defaults to 0.01."""
    return pd.DataFrame([{"permutation_p": 0.01, **r} for r in rows])


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
    with pytest.raises(HusaiError, match="at least one gate"):
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
    assert "FAIL  LCB >= 0" in out and "pass_all: False" in out
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


# ---------------------------------------------------------------- selection (phase 7)

def test_ev_floor_excludes_the_best_lcb_candidate():
    s = _summary([{"k": 8, "lcb": 0.30, "difference": 0.4, "ev": 0.70},
                  {"k": 16, "lcb": 0.20, "difference": 0.3, "ev": 0.85},
                  {"k": 32, "lcb": 0.10, "difference": 0.2, "ev": 0.95}])
    table, choice = select_adaptive_k(s, ev_floor=0.8)
    assert choice["status"] == "selected" and choice["row"]["k"] == 16
    assert list(table.eligible) == [False, True, True] and list(table.selected) == [False, True, False]
    assert list(table["rank"]) == [None, 1, 2] and choice["n_eligible"] == 2 and choice["n_conditions"] == 3
    _, loose = select_adaptive_k(s, ev_floor=0.5)
    assert loose["row"]["k"] == 8


def test_ties_go_to_difference_then_ev():
    s = _summary([{"k": 8, "lcb": 0.2, "difference": 0.30, "ev": 0.90},
                  {"k": 16, "lcb": 0.2, "difference": 0.35, "ev": 0.85},
                  {"k": 32, "lcb": 0.1, "difference": 0.50, "ev": 0.99}])
    assert select_adaptive_k(s, 0.0)[1]["row"]["k"] == 16  # equal LCB: larger difference
    s.loc[1, "difference"] = 0.30
    assert select_adaptive_k(s, 0.0)[1]["row"]["k"] == 8  # equal LCB and difference: larger EV
    s.loc[0, "lcb"] = 0.2 - 1e-9
    assert select_candidate(s, tie_tol=1e-6)[1]["row"]["k"] == 8  # within the tolerance it is still a tie
    assert select_candidate(s, tie_tol=0.0)[1]["row"]["k"] == 16


def test_no_candidate_above_the_floor_is_a_none_result():
    s = _summary([{"k": 8, "lcb": 0.3, "difference": 0.4, "ev": 0.5}, {"k": 16, "lcb": 0.2, "difference": 0.3, "ev": 0.6}])
    table, choice = select_adaptive_k(s, ev_floor=0.9)
    assert choice["status"] == "none" and choice["row"] is None and not table.selected.any()
    assert "EV floor 0.9" in choice["reason"]


def test_holm_counts_every_candidate_and_does_not_filter():
    s = _summary([{"k": 8, "lcb": 0.3, "difference": 0.4, "ev": 0.9, "permutation_p": 0.06},
                  {"k": 16, "lcb": 0.2, "difference": 0.3, "ev": 0.9, "permutation_p": 0.001},
                  {"k": 32, "lcb": 0.1, "difference": 0.2, "ev": 0.3, "permutation_p": 0.02}])
    table, choice = select_adaptive_k(s, ev_floor=0.8)
    assert np.allclose(table.p_holm, [0.06 * 1, 0.001 * 3, 0.02 * 2])  # Holm over all 3, eligible or not
    assert choice["row"]["k"] == 8 and choice["significant"] is False and choice["correction"] == "Holm"


def test_selection_input_errors():
    with pytest.raises(HusaiError, match="missing"):
        select_candidate(pd.DataFrame([{"lcb": 0.1}]))
    with pytest.raises(HusaiError, match="empty"):
        select_candidate(_summary([]).assign(lcb=[], difference=[], ev=[]))
    with pytest.raises(HusaiError, match="ev_floor"):
        select_adaptive_k(_summary([{"lcb": 0.1, "difference": 0.1, "ev": 0.9}]), ev_floor=1.5)


# ---------------------------------------------------------------- selection (phase 8)

def test_select_under_ev_drop_skips_lambda_zero_and_large_drops():
    s = _summary([{"lam": 0.0, "lcb": 0.5, "difference": 0.5, "ev": 0.90, "ev_drop": 0.0},
                  {"lam": 0.1, "lcb": 0.4, "difference": 0.4, "ev": 0.80, "ev_drop": 0.10},
                  {"lam": 0.01, "lcb": 0.2, "difference": 0.2, "ev": 0.88, "ev_drop": 0.02}])
    table, choice = select_under_ev_drop(s, ev_drop_limit=0.05)
    assert choice["row"]["lam"] == 0.01 and len(table) == 2 and choice["n_conditions"] == 2
    _, none = select_under_ev_drop(s, ev_drop_limit=0.01)
    assert none["status"] == "none"
    with pytest.raises(HusaiError, match="lambda > 0"):
        select_under_ev_drop(s.iloc[:1], 0.05)


# ---------------------------------------------------------------- matched gain

def test_matched_gain_of_identical_arms_is_zero():
    decs = [torch.randn(16, 8, generator=torch.Generator().manual_seed(s)) for s in range(4)]
    g = matched_gain(decs, decs, [1, 2, 3, 4], n_resamples=200)
    assert g["gain"] == 0 and g["ci_low"] == 0 and g["ci_high"] == 0


def test_matched_gain_is_the_paired_bootstrap_of_the_difference():
    from husai_core.consistency import pwmcc_matrix
    from husai_core.stats import bootstrap_over_seeds

    g0 = torch.Generator().manual_seed(0)
    base = torch.randn(16, 8, generator=g0)
    winner = [base + 0.3 * torch.randn(16, 8, generator=g0) for _ in range(5)]  # share a dictionary: agree more
    control = [torch.randn(16, 8, generator=g0) for _ in range(5)]
    g = matched_gain(winner, control, list(range(5)), n_resamples=500, stats_seed=3)
    expect = bootstrap_over_seeds(np.asarray(pwmcc_matrix(winner)) - np.asarray(pwmcc_matrix(control)), 500, seed=3)
    assert g["gain"] == pytest.approx(g["winner_pwmcc"] - g["control_pwmcc"]) and g["gain"] > 0
    assert (g["ci_low"], g["ci_high"]) == pytest.approx((expect.ci_low, expect.ci_high))
    assert g["ci_low"] <= g["gain"] <= g["ci_high"] and len(g["pair_gains"]) == 10
    with pytest.raises(HusaiError, match="one winner and one control"):
        matched_gain(winner, control[:4], list(range(5)))
