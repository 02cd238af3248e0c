"""Seed-level statistics for trained-vs-random consistency (DESIGN.md section 6).

Pairwise values (PWMCC of seed i vs seed j) share seeds, so they are not independent
observations: with n seeds there are n(n-1)/2 pairs but only n independent draws. The
bootstrap and the permutation test therefore resample / relabel *seeds* (whole
dictionaries), never pairs. Mann-Whitney on pair values is reported for continuity with
the literature, flagged as anti-conservative.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Hashable, NamedTuple, Sequence

import numpy as np
from scipy.stats import mannwhitneyu

from .decoders import off_diagonal
from .errors import HusaiError

# Bootstrap work is done in blocks of resamples so memory stays ~32 MiB for any seed count.
_BLOCK_ELEMENTS = 1 << 22


def _pairwise(matrix, name: str = "matrix") -> np.ndarray:
    """Validate a square, symmetric pairwise matrix (diagonal ignored) as float64."""
    m = np.asarray(matrix, dtype=float)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise HusaiError(f"{name} must be a square (n_seeds, n_seeds) pairwise matrix, got shape {m.shape}")
    n = m.shape[0]
    if n < 2:
        raise HusaiError(f"need at least 2 seeds for pairwise statistics, {name} has {n}")
    off = ~np.eye(n, dtype=bool)
    if not np.isfinite(m[off]).all():
        raise HusaiError(f"{name} has NaN or inf off the diagonal")
    if not np.allclose(m, m.T, rtol=1e-6, atol=1e-9, equal_nan=True):
        raise HusaiError(f"{name} is not symmetric (pairwise values must not depend on order)")
    return m


def pair_values(matrix) -> np.ndarray:
    """The n(n-1)/2 values above the diagonal of a pairwise matrix."""
    return off_diagonal(_pairwise(matrix))


# --------------------------------------------------------------------------- bootstrap
class BootstrapResult(NamedTuple):
    mean: float  # mean over distinct pairs of the original matrix
    ci_low: float
    ci_high: float
    n_seeds: int
    n_resamples: int  # requested resamples
    n_valid: int  # resamples with at least one pair of distinct seeds (others are dropped)
    seed: int  # RNG seed, so the interval can be reproduced
    ci: float


def bootstrap_over_seeds(matrix, n_resamples: int = 10_000, seed: int = 0, ci: float = 0.95) -> BootstrapResult:
    """Percentile CI of the mean pairwise value, resampling seeds with replacement.

    A resample draws n seed indices; its statistic is the mean of ``matrix[s_a, s_b]`` over
    all position pairs a != b whose seeds differ (a seed drawn twice is not compared with
    itself; duplicated seeds contribute their pairs with multiplicity, as the bootstrap
    requires). Resamples that drew a single distinct seed have no pair and are dropped
    (probability n^(1-n): half the time for 2 seeds, negligible from 4 on).
    """
    m = _pairwise(matrix)
    if int(n_resamples) != n_resamples or n_resamples < 1:
        raise HusaiError(f"n_resamples must be a positive integer, got {n_resamples!r}")
    if not 0.0 < ci < 1.0:
        raise HusaiError(f"ci must lie in (0, 1), got {ci}")
    n = m.shape[0]
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(int(n_resamples), n))
    stats = np.empty(int(n_resamples))
    block = max(1, _BLOCK_ELEMENTS // (n * n))
    for start in range(0, len(idx), block):
        s = idx[start : start + block]
        vals = m[s[:, :, None], s[:, None, :]]  # (block, n, n) values of the resampled pairs
        valid = s[:, :, None] != s[:, None, :]  # distinct seeds (also removes a == b positions)
        cnt = valid.sum(axis=(1, 2))
        tot = np.where(valid, vals, 0.0).sum(axis=(1, 2))
        with np.errstate(invalid="ignore", divide="ignore"):
            stats[start : start + len(s)] = tot / cnt  # 0/0 -> NaN for degenerate draws
    good = stats[np.isfinite(stats)]
    if good.size == 0:
        raise HusaiError(f"no bootstrap resample drew two distinct seeds; increase n_resamples (got {n_resamples})")
    alpha = (1.0 - ci) / 2.0
    lo, hi = np.percentile(good, [100 * alpha, 100 * (1 - alpha)])
    return BootstrapResult(float(pair_values(m).mean()), float(lo), float(hi), n, int(n_resamples),
                           int(good.size), int(seed), float(ci))


def bootstrap_seed_values(values, n_resamples: int = 10_000, seed: int = 0, ci: float = 0.95) -> BootstrapResult:
    """Percentile CI of the mean of one value per seed (EV, loss recovered, probe accuracy, ...),
    resampling seeds with replacement: the per-seed counterpart of ``bootstrap_over_seeds``."""
    v = np.asarray(values, dtype=float).reshape(-1)
    if v.size == 0 or not np.isfinite(v).all():
        raise HusaiError(f"per-seed values must be a non-empty list of finite numbers, got {np.asarray(values).tolist()}")
    if int(n_resamples) != n_resamples or n_resamples < 1:
        raise HusaiError(f"n_resamples must be a positive integer, got {n_resamples!r}")
    if not 0.0 < ci < 1.0:
        raise HusaiError(f"ci must lie in (0, 1), got {ci}")
    draws = v[np.random.default_rng(seed).integers(0, v.size, size=(int(n_resamples), v.size))].mean(1)
    lo, hi = np.percentile(draws, [50 * (1 - ci), 50 * (1 + ci)])
    return BootstrapResult(float(v.mean()), float(lo), float(hi), int(v.size), int(n_resamples), int(n_resamples),
                           int(seed), float(ci))


def seed_values_permutation_p(trained, null, n_permutations: int = 10_000, seed: int = 0) -> float:
    """One-sided p for "mean(trained) > mean(null)" with one value per seed: relabels whole
    seeds, exact (all C(n, n_trained) splits) when there are at most ``n_permutations``."""
    t, r = np.asarray(trained, dtype=float).reshape(-1), np.asarray(null, dtype=float).reshape(-1)
    if t.size < 1 or r.size < 1 or not (np.isfinite(t).all() and np.isfinite(r).all()):
        raise HusaiError("the permutation test needs finite per-seed values in both groups")
    pooled, n_t = np.concatenate([t, r]), t.size
    observed = t.mean() - r.mean()
    tol = 1e-12 * max(1.0, abs(observed))
    if math.comb(pooled.size, n_t) <= n_permutations:
        idx = np.array(list(itertools.combinations(range(pooled.size), n_t)))
        mask = np.zeros((len(idx), pooled.size), dtype=bool)
        mask[np.repeat(np.arange(len(idx)), n_t), idx.ravel()] = True
        stats = (pooled * mask).sum(1) / n_t - (pooled * ~mask).sum(1) / r.size
        return float((stats >= observed - tol).mean())
    rng = np.random.default_rng(seed)
    perm = rng.permuted(np.tile(np.arange(pooled.size), (int(n_permutations), 1)), axis=1)
    stats = pooled[perm[:, :n_t]].mean(1) - pooled[perm[:, n_t:]].mean(1)
    return float((1 + (stats >= observed - tol).sum()) / (1 + int(n_permutations)))


# --------------------------------------------------------------------------- tests
MW_CAVEAT = (
    "pair values share seeds and are not independent, so this p-value is anti-conservative "
    "(too small); rely on the seed-level permutation test and the bootstrap LCB"
)


class MannWhitneyResult(NamedTuple):
    u: float
    p_value: float
    n_trained: int
    n_random: int
    caveat: str


def _values(x, name: str) -> np.ndarray:
    """1-D pair values, or the upper triangle of a square pairwise matrix."""
    a = np.asarray(x, dtype=float)
    if a.ndim == 2:
        a = pair_values(a) if a.shape[0] == a.shape[1] else a
    if a.ndim != 1 or a.size == 0:
        raise HusaiError(f"{name} must be a non-empty 1-D array of pair values or a square matrix, got shape {np.shape(x)}")
    if not np.isfinite(a).all():
        raise HusaiError(f"{name} contains NaN or inf")
    return a


def mann_whitney_greater(trained_pairs, random_pairs) -> MannWhitneyResult:
    """One-sided Mann-Whitney U (trained > random) on pair values; see ``caveat``."""
    t, r = _values(trained_pairs, "trained_pairs"), _values(random_pairs, "random_pairs")
    res = mannwhitneyu(t, r, alternative="greater")
    return MannWhitneyResult(float(res.statistic), float(res.pvalue), t.size, r.size, MW_CAVEAT)


class PermutationResult(NamedTuple):
    statistic: float  # mean within-trained pairs - mean within-random pairs
    p_value: float  # one-sided: P(permuted statistic >= observed)
    n_permutations: int  # assignments evaluated (all of them when exact)
    exact: bool
    n_trained: int
    n_random: int


def _within_means(m0: np.ndarray, x: np.ndarray, n_t: int, n_r: int) -> np.ndarray:
    """Statistic for label assignments ``x`` (rows: 0/1 'is trained' indicators)."""
    # with a zero diagonal, x^T M x sums each within-group pair twice
    st = np.einsum("pi,ij,pj->p", x, m0, x) / (n_t * (n_t - 1))
    y = 1.0 - x
    sr = np.einsum("pi,ij,pj->p", y, m0, y) / (n_r * (n_r - 1))
    return st - sr


def seed_permutation_test(joint_matrix, labels: Sequence[Hashable], n_permutations: int = 10_000,
                          seed: int = 0, trained_label: Hashable = "trained") -> PermutationResult:
    """Seed-level permutation test on the pooled (trained + random) pairwise matrix.

    The statistic is mean(within-trained pairs) - mean(within-random pairs); the null
    shuffles the labels of whole dictionaries. When there are at most ``n_permutations``
    distinct assignments (C(n, n_trained)) all of them are enumerated and the p-value is
    exact; otherwise ``p = (1 + #{perm >= observed}) / (1 + n_permutations)``. Note the
    floor: with 3 + 3 seeds the smallest exact p is 1/20 = 0.05.
    """
    m = _pairwise(joint_matrix, "joint_matrix")
    labels = list(labels)
    n = m.shape[0]
    if len(labels) != n:
        raise HusaiError(f"labels has {len(labels)} entries but joint_matrix is {n}x{n}")
    groups = set(labels)
    if trained_label not in groups or len(groups) != 2:
        raise HusaiError(f"labels must hold exactly two groups, one of them {trained_label!r}; got {sorted(map(str, groups))}")
    is_t = np.array([lab == trained_label for lab in labels], dtype=float)
    n_t = int(is_t.sum())
    n_r = n - n_t
    if n_t < 2 or n_r < 2:
        raise HusaiError(f"need at least 2 seeds in each group, got {n_t} trained and {n_r} random")
    if int(n_permutations) != n_permutations or n_permutations < 1:
        raise HusaiError(f"n_permutations must be a positive integer, got {n_permutations!r}")
    m0 = m.copy()
    np.fill_diagonal(m0, 0.0)
    observed = float(_within_means(m0, is_t[None, :], n_t, n_r)[0])
    tol = 1e-12 * max(1.0, abs(observed))  # equal statistics must count as ">=" despite rounding
    total = math.comb(n, n_t)
    if total <= n_permutations:
        count = exceed = 0
        combos = itertools.combinations(range(n), n_t)
        while batch := list(itertools.islice(combos, 4096)):
            x = np.zeros((len(batch), n))
            x[np.repeat(np.arange(len(batch)), n_t), np.array(batch).ravel()] = 1.0
            exceed += int((_within_means(m0, x, n_t, n_r) >= observed - tol).sum())
            count += len(batch)
        return PermutationResult(observed, exceed / count, count, True, n_t, n_r)
    rng = np.random.default_rng(seed)
    exceed = 0
    block = max(1, _BLOCK_ELEMENTS // (n * n))
    for start in range(0, int(n_permutations), block):
        k = min(block, int(n_permutations) - start)
        x = is_t[rng.permuted(np.tile(np.arange(n), (k, 1)), axis=1)]
        exceed += int((_within_means(m0, x, n_t, n_r) >= observed - tol).sum())
    return PermutationResult(observed, (1 + exceed) / (1 + int(n_permutations)), int(n_permutations), False, n_t, n_r)


def bootstrap_difference_p(trained_matrix, null_matrix, n_resamples: int = 10_000, seed: int = 0) -> float:
    """One-sided p for "trained mean > null mean" when the two groups have no cross pairs.

    Used for metrics whose cross-condition values do not exist (activation matching needs
    both SAEs on the same rows; each condition has its own rows), so the seed permutation test
    cannot run. Seeds are resampled independently within each group (as in
    ``bootstrap_over_seeds``); p = (1 + #{resampled difference <= 0}) / (1 + n_valid), i.e.
    the share of the bootstrap distribution of the difference at or below zero.
    """
    def draws(matrix, rng_seed: int) -> np.ndarray:
        m = _pairwise(matrix)
        n = m.shape[0]
        idx = np.random.default_rng(rng_seed).integers(0, n, size=(int(n_resamples), n))
        vals = m[idx[:, :, None], idx[:, None, :]]
        valid = idx[:, :, None] != idx[:, None, :]
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(valid, vals, 0.0).sum(axis=(1, 2)) / valid.sum(axis=(1, 2))

    diff = draws(trained_matrix, seed) - draws(null_matrix, seed + 1)
    diff = diff[np.isfinite(diff)]
    if diff.size == 0:
        raise HusaiError("no valid bootstrap resample for the difference test")
    return float((1 + (diff <= 0).sum()) / (1 + diff.size))


def conservative_lcb(trained_boot: BootstrapResult, random_boot: BootstrapResult) -> float:
    """LCB = trained CI low - random CI high: > 0 only when the two intervals are separated."""
    return float(trained_boot.ci_low - random_boot.ci_high)


class HolmResult(NamedTuple):
    adjusted: np.ndarray  # Holm-adjusted p-values, in the input order
    reject: np.ndarray  # adjusted <= alpha
    alpha: float


def holm(pvalues: Sequence[float], alpha: float = 0.05) -> HolmResult:
    """Holm step-down correction: sorted p_(k) times (m - k + 1), running max, capped at 1."""
    p = np.asarray(pvalues, dtype=float)
    if p.ndim != 1 or p.size == 0:
        raise HusaiError(f"pvalues must be a non-empty 1-D sequence, got shape {p.shape}")
    if not ((p >= 0) & (p <= 1)).all():
        raise HusaiError("pvalues must lie in [0, 1]")
    order = np.argsort(p, kind="stable")
    m = p.size
    stepped = np.maximum.accumulate(p[order] * (m - np.arange(m)))  # monotone in the sorted order
    adjusted = np.empty(m)
    adjusted[order] = np.minimum(stepped, 1.0)
    return HolmResult(adjusted, adjusted <= alpha, float(alpha))


# --------------------------------------------------------------------------- verdict
PRESENT = "training signal present"
ABSENT = "no signal beyond random"
INCONCLUSIVE = "inconclusive"


@dataclass(frozen=True)
class Verdict:
    label: str  # PRESENT, ABSENT or INCONCLUSIVE
    trained_mean: float
    random_mean: float
    ratio: float
    difference: float
    lcb: float
    p_value: float
    alpha: float
    explanation: str


def verdict(trained_boot: BootstrapResult, random_boot: BootstrapResult,
            permutation: PermutationResult | float, alpha: float = 0.05, null_name: str = "random") -> Verdict:
    """Decide trained-vs-random from the seed-level evidence.

    Rule (both seed-level tests must agree before a claim is made):
    - PRESENT when LCB > 0 (trained CI entirely above the random CI) and permutation p < alpha;
    - ABSENT when p >= alpha and the trained mean does not exceed the random CI high
      (the trained point estimate is inside, or below, the random interval);
    - INCONCLUSIVE otherwise: the tests disagree (e.g. separated CIs but too few seeds for
      the permutation test to reach alpha, or a small p with overlapping CIs), or the
      trained mean sits above the random CI without significance.
    Pass a Holm-adjusted p-value (``permutation=float``) when several conditions compete.
    """
    p = float(permutation.p_value if isinstance(permutation, PermutationResult) else permutation)
    if not 0.0 <= p <= 1.0:
        raise HusaiError(f"permutation p-value must lie in [0, 1], got {p}")
    lcb = conservative_lcb(trained_boot, random_boot)
    tm, rm = trained_boot.mean, random_boot.mean
    ratio = tm / rm if rm != 0 else math.inf
    nums = (f"trained {tm:.4f} [{trained_boot.ci_low:.4f}, {trained_boot.ci_high:.4f}] vs {null_name} {rm:.4f} "
            f"[{random_boot.ci_low:.4f}, {random_boot.ci_high:.4f}], LCB {lcb:+.4f}, permutation p {p:.3g}")
    if lcb > 0 and p < alpha:
        label, why = PRESENT, f"trained dictionaries agree more than {null_name} ones ({nums})."
    elif p >= alpha and tm <= random_boot.ci_high:
        label, why = ABSENT, f"trained agreement is within the {null_name} range ({nums})."
    else:
        label, why = INCONCLUSIVE, f"the seed-level evidence is mixed at alpha {alpha} ({nums})."
    return Verdict(label, tm, rm, ratio, tm - rm, lcb, p, float(alpha), why)
