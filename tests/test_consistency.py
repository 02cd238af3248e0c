import math

import numpy as np
import pytest
import torch

from husai_core.consistency import (
    baseline_summary,
    consensus_features,
    disjoint_seeds,
    feature_stability,
    gaussian_decoders,
    ground_truth_alignment,
    hungarian_match,
    pwmcc,
    pwmcc_matrix,
    subspace_overlap,
)
from husai_core.errors import HusaiError


def dense_pwmcc(a: np.ndarray, b: np.ndarray) -> float:
    """Independent reference: float64 numpy, full matrix."""
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    c = np.abs(a @ b.T)
    return 0.5 * (c.max(axis=1).mean() + c.max(axis=0).mean())


@pytest.fixture
def rng():
    return np.random.default_rng(123)


# --------------------------------------------------------------------------- PWMCC
def test_pwmcc_self_is_one(rng):
    d = rng.normal(size=(50, 8))
    assert pwmcc(d, d) == pytest.approx(1.0, abs=1e-6)
    assert pwmcc(torch.tensor(d), torch.tensor(d)) == pytest.approx(1.0, abs=1e-6)


def test_pwmcc_invariant_to_permutation_sign_and_scale(rng):
    a, b = rng.normal(size=(40, 6)), rng.normal(size=(30, 6))
    ref = pwmcc(a, b)
    signs = rng.choice([-1.0, 1.0], size=(40, 1))
    scales = rng.uniform(0.1, 5.0, size=(40, 1))
    a2 = (a * signs * scales)[rng.permutation(40)]
    assert pwmcc(a2, b) == pytest.approx(ref, abs=1e-6)
    assert pwmcc(b, a) == pytest.approx(ref, abs=1e-6)  # symmetric, also for rectangular pairs


def test_pwmcc_hand_computed_2x2():
    a = np.array([[1.0, 0.0], [0.0, 1.0]])
    s = 1 / math.sqrt(2)
    b = np.array([[1.0, 0.0], [s, -s]])
    # C = [[1, s], [0, s]]: row maxima (1, s), column maxima (1, s)
    assert pwmcc(a, b) == pytest.approx(0.5 * ((1 + s) / 2 + (1 + s) / 2), abs=1e-6)
    b2 = np.array([[1.0, 0.0], [1.0, 0.0]])
    # C = [[1, 1], [0, 0]]: rows (1, 0) -> 0.5, columns (1, 1) -> 1
    assert pwmcc(a, b2) == pytest.approx(0.75, abs=1e-6)


@pytest.mark.parametrize("chunk", [1, 3, 7, 16, 64, 1000])
def test_chunked_equals_dense(rng, chunk):
    a, b = rng.normal(size=(37, 12)), rng.normal(size=(29, 12))
    assert pwmcc(a, b, chunk_size=chunk) == pytest.approx(dense_pwmcc(a, b), abs=1e-6)


def test_pwmcc_matrix_symmetric_diag_one(rng):
    decs = [rng.normal(size=(20, 5)) for _ in range(4)]
    m = pwmcc_matrix(decs, chunk_size=6)
    assert m.shape == (4, 4)
    np.testing.assert_allclose(np.diag(m), 1.0)
    np.testing.assert_allclose(m, m.T)
    assert m[1, 3] == pytest.approx(dense_pwmcc(decs[1], decs[3]), abs=1e-6)


def test_pwmcc_matrix_grouped_and_unequal_paths_match_pairwise(rng, monkeypatch):
    import husai_core.consistency.pairwise as cons

    decs = [rng.normal(size=(24, 6)) for _ in range(7)]
    ref = np.eye(7)
    for i in range(7):
        for j in range(i + 1, 7):
            ref[i, j] = ref[j, i] = dense_pwmcc(decs[i], decs[j])
    # tiny budgets force several groups of dictionaries and several row chunks per group
    monkeypatch.setattr(cons, "CHUNK_ELEMENTS", 24 * 3 * 5)
    monkeypatch.setattr(cons, "MIN_CHUNK_ROWS", 5)
    np.testing.assert_allclose(pwmcc_matrix(decs), ref, atol=1e-6)
    np.testing.assert_allclose(pwmcc_matrix(np.stack(decs), chunk_size=7), ref, atol=1e-6)
    uneven = decs[:3] + [rng.normal(size=(10, 6))]
    m = pwmcc_matrix(uneven)
    assert m[0, 3] == pytest.approx(dense_pwmcc(uneven[0], uneven[3]), abs=1e-6)
    np.testing.assert_allclose(m[:3, :3], ref[:3, :3], atol=1e-6)


def test_zero_rows_match_nothing():
    a = np.array([[1.0, 0.0], [0.0, 0.0]])
    assert pwmcc(a, a) == pytest.approx(0.5)  # the zero row scores 0 in both directions


# --------------------------------------------------------------------------- random baseline
def test_disjoint_seeds_skip_trained():
    s = disjoint_seeds([0, 1, 10_000, 10_002], 3)
    assert s == [10_001, 10_003, 10_004]
    assert not set(s) & {0, 1, 10_000, 10_002}


def test_gaussian_decoders_reproducible_and_checked():
    d1 = gaussian_decoders(2, 5, 3, [7, 8], trained_seeds=[0, 1])
    d2 = gaussian_decoders(2, 5, 3, [7, 8], trained_seeds=[0, 1])
    assert d1[0].shape == (5, 3) and torch.equal(d1[1], d2[1]) and not torch.equal(d1[0], d1[1])
    with pytest.raises(HusaiError, match="overlap the trained seeds"):
        gaussian_decoders(2, 5, 3, [1, 9], trained_seeds=[0, 1])
    with pytest.raises(HusaiError, match="seeds has 1 entries"):
        gaussian_decoders(2, 5, 3, [9], trained_seeds=[0])
    assert len(gaussian_decoders(3, 4, 2, trained_seeds=[0])) == 3


def test_gaussian_baseline_matches_independent_monte_carlo():
    d_sae, d_in = 64, 16
    ours = pwmcc_matrix(gaussian_decoders(6, d_sae, d_in, trained_seeds=range(5)))
    ours_mean = ours[np.triu_indices(6, 1)].mean()
    rng = np.random.default_rng(999)  # fresh samples, plain numpy
    mc = np.mean([dense_pwmcc(rng.normal(size=(d_sae, d_in)), rng.normal(size=(d_sae, d_in))) for _ in range(60)])
    assert abs(ours_mean - mc) < 0.015  # sd of one pair is ~0.01; both are means of many pairs
    assert 0.3 < mc < 0.8  # far from both 0 and 1 at this shape, so the check has teeth


def test_baseline_summary():
    t = np.array([[1, 0.8, 0.6], [0.8, 1, 0.7], [0.6, 0.7, 1]])
    r = np.array([[1, 0.35], [0.35, 1]])
    s = baseline_summary(t, r)
    assert s.trained_mean == pytest.approx(0.7) and s.random_mean == pytest.approx(0.35)
    assert s.ratio == pytest.approx(2.0) and s.difference == pytest.approx(0.35)
    assert (s.n_trained_pairs, s.n_random_pairs) == (3, 1)


# --------------------------------------------------------------------------- Hungarian
def test_hungarian_recovers_signed_permutation(rng):
    a = rng.normal(size=(25, 10))
    perm = rng.permutation(25)
    b = a[perm] * rng.choice([-1.0, 1.0], size=(25, 1)) * 3.0
    res = hungarian_match(a, b, chunk_size=4)
    # b[k] = ±a[perm[k]], so a's feature i must be matched to the k with perm[k] == i
    np.testing.assert_array_equal(perm[res.col_ind], res.row_ind)
    np.testing.assert_allclose(res.similarities, 1.0, atol=1e-6)
    assert res.mean_similarity == pytest.approx(1.0, abs=1e-6)
    assert all(v == 1.0 for v in res.fraction_above.values())


def test_hungarian_threshold_fractions_and_rectangular():
    c = lambda t: [math.cos(t), math.sin(t), 0.0]  # noqa: E731  unit vector at angle t in the xy-plane
    a = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    # b: one feature at |cos| 0.8 to a[0], one at |cos| 0.4 to a[1], one unrelated extra feature
    b = np.array([c(math.acos(0.8)), [0.0, math.sqrt(1 - 0.16), 0.4], [0.0, 1.0, 0.0]])
    res = hungarian_match(a, b)
    assert res.n_matched == 2
    np.testing.assert_array_equal(res.col_ind, [0, 1])
    np.testing.assert_allclose(res.similarities, [0.8, 0.4], atol=1e-6)
    assert res.fraction_above == {0.3: 1.0, 0.5: 0.5, 0.7: 0.5, 0.9: 0.0}
    res_t = hungarian_match(b, a)  # transposed problem: same matched similarities
    np.testing.assert_allclose(sorted(res_t.similarities), [0.4, 0.8], atol=1e-6)


# --------------------------------------------------------------------------- stability / consensus
def _seeds_with_shared(rng, n_dicts=4, shared=6, own=4, d_in=32):
    """Dictionaries that share `shared` (noisy, permuted, sign-flipped) features plus random ones."""
    base = rng.normal(size=(shared, d_in))
    out = []
    for _ in range(n_dicts):
        d = np.vstack([base + 0.05 * rng.normal(size=base.shape), rng.normal(size=(own, d_in))])
        out.append(d * rng.choice([-1.0, 1.0], size=(shared + own, 1)))
    return out, base


def test_feature_stability_counts(rng):
    decs, _ = _seeds_with_shared(rng)
    res = feature_stability(decs, reference="all", threshold=0.7)
    assert res.indices == [0, 1, 2, 3] and res.n_others == 3
    for counts, best in zip(res.counts, res.best):
        assert best.shape == (3, 10)
        np.testing.assert_array_equal(counts[:6], 3)  # shared features found everywhere
        assert (counts[6:] == 0).all()  # random 32-d directions never reach 0.7
    assert res.fraction_stable() == [0.6] * 4
    only = feature_stability(decs, reference=2, threshold=0.7)
    np.testing.assert_array_equal(only.best[0], res.best[2])


def test_consensus_features_and_random_expectation(rng):
    decs, base = _seeds_with_shared(rng)
    rand = gaussian_decoders(4, 10, 32, trained_seeds=[])
    res = consensus_features(decs, threshold=0.7, reference=1, random_decoders=rand)
    np.testing.assert_array_equal(res.indices, np.arange(6))
    assert res.fraction == pytest.approx(0.6) and res.random_fraction == 0.0
    assert res.required == 3 and (res.n_present == 3).all() and res.reference == 1
    # the mean direction is the (sign-aligned) shared base direction
    unit = base / np.linalg.norm(base, axis=1, keepdims=True)
    assert np.abs((res.directions * unit).sum(axis=1)).min() > 0.99


# --------------------------------------------------------------------------- subspaces / ground truth
def test_subspace_overlap_identical_and_orthogonal(rng):
    a = np.hstack([rng.normal(size=(30, 3)), np.zeros((30, 5))])
    same = subspace_overlap(a, a[rng.permutation(30)] * -2.0, r=3)
    assert same.mean_cos2 == pytest.approx(1.0, abs=1e-9)
    np.testing.assert_allclose(same.angles, 0.0, atol=1e-6)
    b = np.hstack([np.zeros((20, 3)), rng.normal(size=(20, 3)), np.zeros((20, 2))])
    orth = subspace_overlap(a, b, r=3)
    assert orth.mean_cos2 == pytest.approx(0.0, abs=1e-12)
    np.testing.assert_allclose(orth.angles, math.pi / 2, atol=1e-6)
    assert orth.random_expectation == pytest.approx(3 / 8)


def test_subspace_overlap_random_expectation(rng):
    # r / d_in = 0.25; the mean of 40 draws has sd ~0.003, so 0.015 is a 5-sigma band
    vals = [subspace_overlap(rng.normal(size=(10, 40)), rng.normal(size=(10, 40)), r=10).mean_cos2 for _ in range(40)]
    assert np.mean(vals) == pytest.approx(10 / 40, abs=0.015)


def test_ground_truth_alignment():
    gt = np.eye(4)[:3]  # three axis directions in R^4
    dec = np.array([[2.0, 0, 0, 0], [0, 0.6, 0.8, 0], [0, 0, 0, 1.0]])
    res = ground_truth_alignment(dec, gt, thresholds=(0.5, 0.7, 0.9))
    np.testing.assert_allclose(res.gt_best, [1.0, 0.6, 0.8], atol=1e-6)
    np.testing.assert_array_equal(res.gt_best_index, [0, 1, 1])
    assert res.mean_gt_best == pytest.approx(0.8, abs=1e-6)
    assert res.gt_fraction_above == pytest.approx({0.5: 1.0, 0.7: 2 / 3, 0.9: 1 / 3})
    np.testing.assert_allclose(res.feature_best, [1.0, 0.8, 0.0], atol=1e-6)
    assert res.feature_fraction_above == pytest.approx({0.5: 2 / 3, 0.7: 2 / 3, 0.9: 1 / 3})


# --------------------------------------------------------------------------- bad input
def test_bad_input_messages(rng):
    with pytest.raises(HusaiError, match="different d_in.*dec_a has d_in=8.*dec_b has d_in=6"):
        pwmcc(rng.normal(size=(5, 8)), rng.normal(size=(5, 6)))
    with pytest.raises(HusaiError, match=r"decoders\[1\] has d_in=3"):
        pwmcc_matrix([rng.normal(size=(5, 4)), rng.normal(size=(5, 3))])
    with pytest.raises(HusaiError, match="need at least 2 dictionaries"):
        pwmcc_matrix([rng.normal(size=(5, 4))])
    with pytest.raises(HusaiError, match="2-D"):
        pwmcc(rng.normal(size=5), rng.normal(size=(5, 5)))
    with pytest.raises(HusaiError, match="NaN or inf"):
        pwmcc(np.full((2, 2), np.nan), np.ones((2, 2)))
    with pytest.raises(HusaiError, match="chunk_size"):
        pwmcc(np.ones((2, 2)), np.ones((2, 2)), chunk_size=0)
    with pytest.raises(HusaiError, match="r must be"):
        subspace_overlap(np.ones((3, 4)), np.ones((3, 4)), r=5)
    if not torch.cuda.is_available():
        with pytest.raises(HusaiError, match="CUDA is not available"):
            pwmcc(np.ones((2, 2)), np.ones((2, 2)), device="cuda")
    with pytest.raises(HusaiError, match="reference 5"):
        feature_stability([np.ones((3, 4))] * 2, reference=5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(rng):
    a, b = rng.normal(size=(300, 16)), rng.normal(size=(200, 16))
    ta, tb = torch.tensor(a, device="cuda"), torch.tensor(b, device="cuda")
    assert pwmcc(ta, tb, chunk_size=64) == pytest.approx(pwmcc(a, b), abs=1e-5)
    assert hungarian_match(ta, tb).mean_similarity == pytest.approx(hungarian_match(a, b).mean_similarity, abs=1e-5)
