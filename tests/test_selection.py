"""The one selection rule, release candidates, the Pareto front and the matched gain (husai_core.selection)."""

import numpy as np
import pandas as pd
import pytest
import torch

from husai_core.errors import HusaiError
from husai_core.selection import (candidate, candidates_from_summary, matched_gain, pareto_front, select_adaptive_k,
                                  select_candidate, select_under_ev_drop)


def _summary(rows):
    """Candidates with the columns selection needs; permutation p defaults to 0.01."""
    return pd.DataFrame([{"permutation_p": 0.01, **r} for r in rows])


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


# ---------------------------------------------------------------- selection (phases 5-6: significant first)

SWEEP = {"against": "auto", "prefer_significant": True, "if_none_eligible": "all"}


def test_selection_is_against_the_gaussian_matched_null_when_present():
    summary = pd.DataFrame({"k": [4, 8], "lcb": [0.3, 0.1], "difference": [0.3, 0.1], "permutation_p": [0.001, 0.001],
                            "null_lcb": [-0.05, 0.02], "null_difference": [0.0, 0.05], "null_p": [0.3, 0.01],
                            "ev": [0.9, 0.9]})
    out, choice = select_candidate(summary, **SWEEP)
    assert choice["against"] == "gaussian_matched" and choice["row"]["k"] == 8  # isotropic LCB would pick 4
    assert out.p_holm.tolist() == pytest.approx([0.3, 0.02])
    _, iso = select_candidate(summary.drop(columns=["null_lcb"]), **SWEEP)
    assert iso["against"] == "isotropic" and iso["row"]["k"] == 4


def test_selection_prefers_significant_configurations_after_holm():
    summary = _summary([{"k": 4, "lcb": 0.05, "permutation_p": 0.001}, {"k": 8, "lcb": 0.30, "permutation_p": 0.2},
                        {"k": 16, "lcb": 0.10, "permutation_p": 0.004}]).assign(difference=0.1, ev=0.9)
    out, choice = select_candidate(summary, **SWEEP)
    assert out.p_holm.tolist() == pytest.approx([0.003, 0.2, 0.008])
    assert choice["row"]["k"] == 16 and choice["significant"] and choice["n_conditions"] == 3
    assert list(out["rank"]) == [2, 3, 1] and "significant after Holm first" in choice["rule"]
    _, choice = select_candidate(summary, [True, True, False], **SWEEP)
    assert choice["row"]["k"] == 4  # 16 is not eligible; 8 is not significant
    _, choice = select_candidate(summary.assign(permutation_p=0.5), **SWEEP)
    assert choice["row"]["k"] == 8 and not choice["significant"]
    _, choice = select_candidate(summary, [False, False, False], **SWEEP)  # none eligible: best of all, flagged
    assert choice["row"]["k"] == 16 and choice["status"] == "selected" and not choice["eligible"]
    _, none = select_candidate(summary, [False, False, False], against="auto")
    assert none["status"] == "none" and none["row"] is None
    with pytest.raises(HusaiError, match="eligible has 2 entries for 3 candidates"):
        select_candidate(summary, [True, False], **SWEEP)
    with pytest.raises(HusaiError, match="unknown null 'uniform'"):
        select_candidate(summary, against="uniform")


# ---------------------------------------------------------------- release candidates and the Pareto front

def test_candidate_record_computes_the_lcb():
    c = candidate("05_ablations", "05:k=4", {"k": 4}, [1, 2, 3], 0.5, (0.45, 0.55), "gaussian_matched", 0.4,
                  (0.35, 0.42), p=0.05, ev_heldout=0.9, p_holm=float("nan"))
    assert c["lcb"] == pytest.approx(0.45 - 0.42) and c["p_holm"] is None and c["loss_recovered"] is None
    with pytest.raises(HusaiError, match="must be \\[low, high\\]"):
        candidate("x", "x", {}, [1], 0.5, (0.4,), "g", 0.4, (0.3, 0.5), p=0.1, ev_heldout=0.9)


def test_candidates_from_a_sweep_summary_skip_rows_without_a_trained_null():
    summary = pd.DataFrame({"k": [4, 8], "n_seeds": [3, 3], "pwmcc": [0.5, 0.6], "pwmcc_ci_low": [0.45, 0.55],
                            "pwmcc_ci_high": [0.55, 0.65], "null": [0.4, np.nan], "null_ci_low": [0.38, np.nan],
                            "null_ci_high": [0.42, np.nan], "null_p": [0.05, np.nan], "p_holm": [0.1, np.nan],
                            "ev": [0.9, 0.95]})
    (c,) = candidates_from_summary(summary, "05_ablations", ["k"], {"d_sae": 32}, [1, 2, 3])
    assert c["name"] == "05_ablations:k=4" and c["config"] == {"d_sae": 32, "k": 4} and c["seeds"] == [1, 2, 3]
    assert c["lcb"] == pytest.approx(0.03) and c["p_holm"] == 0.1 and c["strongest_null"] == "gaussian_matched"


def test_pareto_front():
    x, y = [0.9, 0.8, 0.95, 0.7, float("nan")], [0.1, 0.2, 0.0, 0.1, 0.9]
    assert pareto_front(x, y) == [True, True, True, False, False]
    assert pareto_front([0.5, 0.5], [0.1, 0.1]) == [True, True]  # equal points do not dominate each other
