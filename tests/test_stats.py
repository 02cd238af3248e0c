import math

import numpy as np
import pytest
from scipy.stats import mannwhitneyu

from husai_core.errors import HusaiError
from husai_core.stats import (
    ABSENT,
    INCONCLUSIVE,
    PRESENT,
    BootstrapResult,
    bootstrap_over_seeds,
    conservative_lcb,
    holm,
    mann_whitney_greater,
    pair_values,
    seed_permutation_test,
    verdict,
)


def const_matrix(n, value, diag=1.0):
    m = np.full((n, n), value)
    np.fill_diagonal(m, diag)
    return m


def noisy_matrix(n, mean, sd, rng):
    """Symmetric pairwise matrix driven by per-seed effects (so pairs are dependent)."""
    e = rng.normal(0, sd, size=n)
    m = mean + (e[:, None] + e[None, :]) / 2
    np.fill_diagonal(m, 1.0)
    return m


# --------------------------------------------------------------------------- bootstrap
def test_bootstrap_constant_offdiagonal_collapses():
    # diagonal 1 would pull the mean up if self-pairs leaked into resamples
    res = bootstrap_over_seeds(const_matrix(6, 0.3), n_resamples=2000)
    assert res.mean == pytest.approx(0.3)
    assert res.ci_low == pytest.approx(0.3) and res.ci_high == pytest.approx(0.3)
    assert (res.n_seeds, res.n_resamples, res.seed, res.ci) == (6, 2000, 0, 0.95)


def test_bootstrap_excludes_same_seed_pairs_by_brute_force():
    rng = np.random.default_rng(1)
    m = noisy_matrix(5, 0.5, 0.1, rng)
    np.fill_diagonal(m, 100.0)  # any leak of a self-pair would be obvious
    res = bootstrap_over_seeds(m, n_resamples=500, seed=3)
    # reference: plain loops over the same resample indices
    idx = np.random.default_rng(3).integers(0, 5, size=(500, 5))
    stats = []
    for s in idx:
        vals = [m[s[a], s[b]] for a in range(5) for b in range(5) if a != b and s[a] != s[b]]
        if vals:
            stats.append(np.mean(vals))
    lo, hi = np.percentile(stats, [2.5, 97.5])
    assert res.ci_low == pytest.approx(lo) and res.ci_high == pytest.approx(hi)
    assert res.n_valid == len(stats) and res.ci_high < 1.0


def test_bootstrap_reproducible_and_covers_mean():
    m = noisy_matrix(10, 0.4, 0.05, np.random.default_rng(2))
    a, b = bootstrap_over_seeds(m, seed=5), bootstrap_over_seeds(m, seed=5)
    assert a == b
    assert a.ci_low < a.mean < a.ci_high and a.ci_high - a.ci_low < 0.1


def test_bootstrap_needs_two_seeds():
    with pytest.raises(HusaiError, match="need at least 2 seeds"):
        bootstrap_over_seeds(np.ones((1, 1)))
    with pytest.raises(HusaiError, match="not symmetric"):
        bootstrap_over_seeds(np.array([[1, 0.2], [0.3, 1]]))


# --------------------------------------------------------------------------- Mann-Whitney
def test_mann_whitney_matches_scipy():
    rng = np.random.default_rng(0)
    t, r = rng.normal(0.6, 0.05, 15), rng.normal(0.5, 0.05, 10)
    res = mann_whitney_greater(t, r)
    ref = mannwhitneyu(t, r, alternative="greater")
    assert res.u == pytest.approx(ref.statistic) and res.p_value == pytest.approx(ref.pvalue)
    assert "not independent" in res.caveat and "anti-conservative" in res.caveat
    m = noisy_matrix(4, 0.5, 0.1, rng)  # a square matrix means: use its pair values
    assert mann_whitney_greater(m, r).n_trained == 6
    np.testing.assert_allclose(pair_values(m), m[np.triu_indices(4, 1)])


# --------------------------------------------------------------------------- permutation test
def _joint(n_t, n_r, t_val, r_val, cross, rng, sd=0.01):
    n = n_t + n_r
    m = np.full((n, n), cross) + rng.normal(0, sd, size=(n, n))
    m[:n_t, :n_t] = t_val + rng.normal(0, sd, size=(n_t, n_t))
    m[n_t:, n_t:] = r_val + rng.normal(0, sd, size=(n_r, n_r))
    m = (m + m.T) / 2
    np.fill_diagonal(m, 1.0)
    return m, ["trained"] * n_t + ["random"] * n_r


def test_permutation_separated_groups_exact():
    m, labels = _joint(5, 5, 0.8, 0.3, 0.3, np.random.default_rng(0))
    res = seed_permutation_test(m, labels)
    assert res.exact and res.n_permutations == math.comb(10, 5)
    assert res.p_value == pytest.approx(1 / 252)  # only the observed labelling is as extreme
    assert res.statistic == pytest.approx(0.5, abs=0.02)


def test_permutation_monte_carlo_and_identical_groups():
    rng = np.random.default_rng(1)
    m, labels = _joint(12, 12, 0.8, 0.3, 0.3, rng)
    res = seed_permutation_test(m, labels, n_permutations=2000, seed=4)
    assert not res.exact and res.p_value == pytest.approx(1 / 2001)
    same, labels = _joint(6, 6, 0.3, 0.3, 0.3, rng, sd=0.02)
    assert seed_permutation_test(same, labels).p_value > 0.1
    # all values equal: every labelling ties with the observed one, so p must be 1
    assert seed_permutation_test(const_matrix(6, 0.4), ["trained"] * 3 + ["random"] * 3).p_value == 1.0


def test_permutation_bad_labels():
    m = const_matrix(5, 0.4)
    with pytest.raises(HusaiError, match="at least 2 seeds in each group"):
        seed_permutation_test(m, ["trained"] * 4 + ["random"])
    with pytest.raises(HusaiError, match="exactly two groups"):
        seed_permutation_test(m, ["a", "b", "a", "b", "a"])
    with pytest.raises(HusaiError, match="labels has 3 entries"):
        seed_permutation_test(m, ["trained", "random", "random"])


# --------------------------------------------------------------------------- Holm, LCB, verdict
def test_holm_hand_worked():
    # sorted: .005*4=.02, .01*3=.03, .03*2=.06, .04*1=.04 -> running max .02 .03 .06 .06
    res = holm([0.01, 0.04, 0.03, 0.005], alpha=0.05)
    np.testing.assert_allclose(res.adjusted, [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_array_equal(res.reject, [True, False, False, True])
    np.testing.assert_allclose(holm([0.5, 0.9]).adjusted, [1.0, 1.0])  # capped at 1


def _boot(mean, lo, hi, n=5):
    return BootstrapResult(mean, lo, hi, n, 10_000, n, 0, 0.95)


def test_lcb_and_verdict_rules():
    t, r = _boot(0.7, 0.65, 0.75), _boot(0.3, 0.28, 0.33)
    assert conservative_lcb(t, r) == pytest.approx(0.32)
    v = verdict(t, r, 0.004)
    assert v.label == PRESENT and v.ratio == pytest.approx(0.7 / 0.3) and "LCB +0.3200" in v.explanation
    assert verdict(_boot(0.31, 0.29, 0.34), r, 0.4).label == ABSENT
    assert verdict(t, r, 0.1).label == INCONCLUSIVE  # separated CIs but p not below alpha
    assert verdict(_boot(0.36, 0.32, 0.4), r, 0.01).label == INCONCLUSIVE  # small p, overlapping CIs


def test_verdict_end_to_end_on_constructed_matrices():
    rng = np.random.default_rng(7)
    m, labels = _joint(6, 6, 0.7, 0.3, 0.3, rng)
    t, r = bootstrap_over_seeds(m[:6, :6]), bootstrap_over_seeds(m[6:, 6:])
    assert verdict(t, r, seed_permutation_test(m, labels)).label == PRESENT
    m, labels = _joint(6, 6, 0.3, 0.3, 0.3, rng, sd=0.02)
    t, r = bootstrap_over_seeds(m[:6, :6]), bootstrap_over_seeds(m[6:, 6:])
    assert verdict(t, r, seed_permutation_test(m, labels)).label == ABSENT
