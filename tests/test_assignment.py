"""husai_core.assignment: dense and sparse (top-m candidate) one-to-one matching."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

import husai_core.assignment as asg
from husai_core.assignment import extrema, match, match_blocks, maxima_cpu, pwmcc_from_extrema
from husai_core.consistency import hungarian_match, pwmcc
from husai_core.errors import HusaiError
from husai_core.matching import SAEView, activation_mcc, pair_family, pw_mcc, shared_latent_fraction


def unit(x):
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def dense_optimum(a, b, signed=True):
    c = unit(a) @ unit(b).T
    s = c if signed else np.abs(c)
    r, k = linear_sum_assignment(-s)
    return s[r, k].sum(), r, k


def noisy_permuted(rng, n, d, noise=0.1):
    a = rng.normal(size=(n, d))
    perm = rng.permutation(n)
    return a, a[perm] + noise * rng.normal(size=(n, d)), perm


def candidate_set(n_a, n_b, s, m, chunk_rows, abs_=False):
    cand = asg.sparse._pass_candidates(n_a, n_b, lambda i0, i1, out: out.copy_(s[i0:i1]), m, abs_,
                                torch.device("cpu"), s.dtype, chunk_rows, False)
    r, c, v = cand.edges()
    return set(zip(r.tolist(), c.tolist())), v, r, c


def brute_top_m(s, m):
    n_a, n_b = s.shape
    want = set()
    for i, row in enumerate(s.topk(min(m, n_b), dim=1).indices.tolist()):
        want |= {(i, j) for j in row}
    cols = s.topk(min(m, n_a), dim=0).indices.T.tolist()
    for j, col in enumerate(cols):
        want |= {(i, j) for i in col}
    return want


# --------------------------------------------------------------------------- candidates
@pytest.mark.parametrize("n_a, n_b, m, chunk_rows", [(300, 1100, 2, 16), (700, 300, 3, 64), (40, 2000, 3, 7),
                                                      (257, 260, 1, 1000)])
def test_candidates_are_exact_top_m_of_rows_and_columns(monkeypatch, n_a, n_b, m, chunk_rows):
    trims = []
    orig = asg.sparse._Candidates._trim
    monkeypatch.setattr(asg.sparse._Candidates, "_trim", lambda self: (trims.append(self.pending), orig(self))[1])
    s = torch.from_numpy(np.random.default_rng(n_a).normal(size=(n_a, n_b)).astype(np.float32))
    for abs_ in (False, True):
        got, v, r, c = candidate_set(n_a, n_b, s, m, chunk_rows, abs_)
        ref = s.abs() if abs_ else s
        assert got == brute_top_m(ref, m)
        np.testing.assert_array_equal(v, ref.numpy()[r, c].astype(np.float64))  # values of the edges
    if (n_a, chunk_rows) == (300, 16):
        assert len(trims) > 2  # the column collection was trimmed along the way, not only at the end


def test_grouped_row_top_m_equals_topk():
    s = torch.from_numpy(np.random.default_rng(0).normal(size=(50, 32 * 40)).astype(np.float32))
    vals, idx = asg.sparse._row_topm(s, 5)
    ref = s.topk(5, dim=1)
    torch.testing.assert_close(vals, ref.values)
    torch.testing.assert_close(idx, ref.indices)


# --------------------------------------------------------------------------- sparse == dense
@pytest.mark.parametrize("similarity", ["cos", "abs_cos"])
def test_sparse_equals_dense_when_candidates_hold_the_optimum(similarity):
    rng = np.random.default_rng(1)
    a, b, _ = noisy_permuted(rng, 200, 16, noise=0.3)
    if similarity == "abs_cos":
        b[::3] *= -1  # sign flips: abs_cos still pairs them
    dense = match(a, b, similarity)
    sparse = match(a, b, similarity, dense_limit=0, top_m=8)
    assert dense.method == "dense" and sparse.method == "sparse" and sparse.top_m == 8
    np.testing.assert_array_equal(sparse.rows, dense.rows)
    np.testing.assert_array_equal(sparse.cols, dense.cols)
    np.testing.assert_allclose(sparse.sims, dense.sims, atol=1e-12)
    best, _, _ = dense_optimum(a, b, signed=similarity == "cos")
    assert dense.sims.sum() == pytest.approx(best, abs=1e-5)
    assert sparse.n_edges < 200 * 200 / 5  # really sparse


def test_sparse_with_complete_candidates_is_the_dense_optimum():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(60, 5)), rng.normal(size=(60, 5))  # random: hardest case for candidates
    sparse = match(a, b, dense_limit=0, top_m=64)  # m >= n: every edge is a candidate
    best, _, _ = dense_optimum(a, b)
    assert sparse.sims.sum() == pytest.approx(best, abs=1e-5)


def test_widening_m_when_first_candidates_have_no_full_matching():
    # every row of A has B[0] as its best match and A[0] is every other column's best match:
    # with m = 1 the candidate edges are {A_i - B_0} u {A_0 - B_j}, which has no full matching
    e = np.eye(4)
    a = np.array([e[0] + 0.1 * (e[1] + e[2] + e[3])] + [e[0] + 0.01 * e[i] for i in (1, 2, 3)])
    b = e
    got = match(a, b, dense_limit=0, top_m=1)
    assert got.method == "sparse" and got.top_m > 1
    best, r, k = dense_optimum(a, b)
    assert got.sims.sum() == pytest.approx(best, abs=1e-6)  # float32 unit rows
    assert sorted(got.cols.tolist()) == [0, 1, 2, 3]


@pytest.mark.parametrize("n_a, n_b", [(30, 80), (80, 30)])
def test_rectangular_matches_min_side(n_a, n_b):
    rng = np.random.default_rng(3)
    shared = rng.normal(size=(30, 12))
    extra = rng.normal(size=(50, 12))
    a = shared if n_a == 30 else np.vstack([shared, extra])
    b = np.vstack([shared + 0.05 * rng.normal(size=shared.shape), extra])[rng.permutation(80)] if n_b == 80 \
        else shared + 0.05 * rng.normal(size=shared.shape)
    dense, sparse = match(a, b), match(a, b, dense_limit=0, top_m=4)
    for res in (dense, sparse):
        assert len(res.rows) == len(res.cols) == 30
        assert len(set(res.rows.tolist())) == 30 and len(set(res.cols.tolist())) == 30
        assert np.all(np.diff(res.rows) > 0)  # rows ascending
    np.testing.assert_allclose(sparse.sims.sum(), dense.sims.sum(), atol=1e-9)
    assert dense.mean > 0.99


def test_permuted_signed_scaled_copies_recovered_exactly():
    rng = np.random.default_rng(4)
    a = rng.normal(size=(500, 32))
    perm = rng.permutation(500)
    signs = rng.choice([-1.0, 1.0], size=(500, 1))
    b = a[perm] * signs * rng.uniform(0.5, 3.0, size=(500, 1))
    for sim, bb in (("abs_cos", b), ("cos", np.abs(signs) * b * signs)):  # cos: signs undone
        res = match(a, bb, sim, dense_limit=0, top_m=2)
        np.testing.assert_array_equal(perm[res.cols], res.rows)
        np.testing.assert_allclose(res.sims, 1.0, atol=1e-6)


def test_progress_flag(capsys):
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(40, 6)), rng.normal(size=(40, 6))
    match(a, b, dense_limit=0, top_m=4, progress=False)
    assert capsys.readouterr().err == ""
    match(a, b, dense_limit=0, top_m=4, progress=True)
    assert "candidate pass" in capsys.readouterr().err
    match_blocks(40, 40, lambda i0, i1: np.zeros((i1 - i0, 40)), dense_limit=1e9, progress=True)
    assert "similarity blocks" in capsys.readouterr().err


# --------------------------------------------------------------------------- certificate (exact=True)
@pytest.mark.parametrize("similarity", ["cos", "abs_cos"])
@pytest.mark.parametrize("n_a, n_b", [(150, 150), (90, 200), (200, 90)])
def test_certified_sparse_is_the_dense_optimum(similarity, n_a, n_b):
    rng = np.random.default_rng(n_a + n_b)
    a, b = rng.normal(size=(n_a, 6)), rng.normal(size=(n_b, 6))  # random: top-1 candidates are not enough
    best, _, _ = dense_optimum(a, b, signed=similarity == "cos")
    plain = match(a, b, similarity, dense_limit=0, top_m=1)
    exact = match(a, b, similarity, dense_limit=0, top_m=1, exact=True)
    assert plain.certified is None and plain.sims.sum() <= best + 1e-6
    if n_a == n_b:  # here the candidates missed the optimum; violating pairs had to join them
        assert plain.sims.sum() < best - 1e-3 and exact.n_edges > plain.n_edges
    assert exact.method == "sparse" and exact.certified is True
    assert exact.sims.sum() == pytest.approx(best, abs=1e-5)


def test_dual_potentials_are_feasible_and_tight():
    rng = np.random.default_rng(11)
    n_a, n_b = 40, 60
    s = rng.uniform(-1, 1, size=(n_a, n_b))
    keep = rng.uniform(size=s.shape) < 0.3
    keep[np.arange(n_a), rng.permutation(n_b)[:n_a]] = True  # a full matching exists
    r, c = np.nonzero(keep)
    v = s[r, c]
    rows, cols, _ = asg.sparse._lapjvsp(n_a, n_b, r, c, v, 3.0)
    x, y = asg.sparse._dual_offsets(n_a, n_b, r, c, 3.0 - v, rows, cols)
    # the certificate's form of u + v <= w: S - x - y <= offset on candidates, = on matched pairs
    lhs = v - x[r] - y[c]
    assert np.all(lhs <= 3.0 + 1e-9)
    matched = np.isin(r * n_b + c, rows * n_b + cols)
    np.testing.assert_allclose(lhs[matched], 3.0, atol=1e-9)
    # the matching over the candidates is optimal: its weight equals the LP optimum on them
    masked = np.where(keep, 3.0 - s, 1e9)
    rr, cc = linear_sum_assignment(masked)
    assert (3.0 - v[matched]).sum() == pytest.approx(masked[rr, cc].sum(), abs=1e-9)


def test_certified_provider_and_metrics():
    rng = np.random.default_rng(12)
    corr = np.tanh(rng.normal(size=(80, 100)))
    r, c = linear_sum_assignment(-corr)
    got = match_blocks(80, 100, lambda i0, i1: corr[i0:i1], dense_limit=0, top_m=1, exact=True, block_rows=7)
    assert got.certified is True
    assert got.sims.sum() == pytest.approx(corr[r, c].sum(), abs=1e-9)
    a, b = rng.normal(size=(120, 5)), rng.normal(size=(120, 5))
    assert pw_mcc(a, b, dense_limit=0, top_m=1, exact=True) == pytest.approx(pw_mcc(a, b), abs=1e-7)
    res = hungarian_match(a, b, dense_limit=0, top_m=1, exact=True)
    assert res.certified is True
    assert res.mean_similarity == pytest.approx(hungarian_match(a, b).mean_similarity, abs=1e-7)


# --------------------------------------------------------------------------- provider variant
def test_match_blocks_dense_and_sparse_agree_with_linear_sum_assignment():
    rng = np.random.default_rng(6)
    za, zb = rng.normal(size=(400, 70)), rng.normal(size=(400, 90))
    zb[:, :70] += 2 * za  # 70 strongly correlated pairs
    corr = np.corrcoef(za.T, zb.T)[:70, 70:]
    r, c = linear_sum_assignment(-corr)
    calls = []

    def blocks(i0, i1):
        calls.append((i0, i1))
        return torch.from_numpy(corr[i0:i1])

    dense = match_blocks(70, 90, blocks, block_rows=16)
    sparse = match_blocks(70, 90, blocks, dense_limit=0, top_m=4, block_rows=16)
    assert dense.method == "dense" and sparse.method == "sparse"
    assert (0, 16) in calls and (64, 70) in calls
    for res in (dense, sparse):
        np.testing.assert_array_equal(res.cols, c)
        np.testing.assert_allclose(res.sims, corr[r, c], atol=1e-15)  # float64 values kept


def test_activation_and_decoder_metrics_scale_path_equals_dense_path():
    rng = np.random.default_rng(7)
    n, d, rows = 300, 24, 400
    base = rng.normal(size=(n, d)).astype(np.float32)
    perm = rng.permutation(n)
    za = np.where(rng.uniform(size=(rows, n)) < 0.08, rng.exponential(size=(rows, n)), 0).astype(np.float32)
    za[:, :5] = 0  # dead latents: the alive scope differs from all
    zb = (za[:, perm] * rng.uniform(0.8, 1.2, size=(rows, n))).astype(np.float32)
    dec_b = base[perm] + 0.2 * rng.normal(size=(n, d)).astype(np.float32)

    def view(dec, z):
        dec, z = torch.from_numpy(dec), torch.from_numpy(z)
        return SAEView(dec, dec + 0.05, z, (z > 0).any(0))

    a, b = view(base, za), view(dec_b, zb)
    dense, large = pair_family(a, b), pair_family(a, b, dense_limit=0, top_m=4)
    assert dense.keys() == large.keys() and "activation_mcc/alive" in dense
    for k in dense:
        assert large[k] == pytest.approx(dense[k], abs=1e-6), k
    assert pw_mcc(base, dec_b, dense_limit=0) == pytest.approx(pw_mcc(base, dec_b), abs=1e-12)
    shared = shared_latent_fraction(base, base, dec_b, dec_b)
    assert shared_latent_fraction(base, base, dec_b, dec_b, dense_limit=0) == shared
    zd_a, zd_b = rng.normal(size=(200, 30)), rng.normal(size=(200, 30))  # dense latents: standardised path
    zd_b[:, :30] += 3 * zd_a[:, rng.permutation(30)]
    assert activation_mcc(zd_a, zd_b, dense_limit=0, top_m=3) == pytest.approx(activation_mcc(zd_a, zd_b), abs=1e-12)


def test_hungarian_match_sparse_route():
    rng = np.random.default_rng(8)
    a, b, perm = noisy_permuted(rng, 300, 20, noise=0.2)
    dense, sparse = hungarian_match(a, b), hungarian_match(a, b, dense_limit=0, top_m=4)
    assert (dense.method, sparse.method, sparse.top_m) == ("dense", "sparse", 4)
    np.testing.assert_array_equal(sparse.col_ind, dense.col_ind)
    assert sparse.mean_similarity == pytest.approx(dense.mean_similarity, abs=1e-12)
    assert sparse.fraction_above == dense.fraction_above


# --------------------------------------------------------------------------- PWMCC kernels
def test_tiled_maxima_and_extrema_equal_dense():
    rng = np.random.default_rng(9)
    a, b = unit(rng.normal(size=(70, 9))).astype(np.float32), unit(rng.normal(size=(53, 9))).astype(np.float32)
    c = a.astype(np.float64) @ b.T.astype(np.float64)
    for signed in (False, True):
        s = c if signed else np.abs(c)
        for rows, cols in ((None, None), (8, 7), (1, 53)):
            rm, cm = maxima_cpu(a, b, signed, rows=rows, cols=cols)
            np.testing.assert_allclose(rm, s.max(axis=1), atol=1e-6)
            np.testing.assert_allclose(cm, s.max(axis=0), atol=1e-6)
    ext = extrema(torch.from_numpy(a), torch.from_numpy(b), rows=16, cols=10)
    for got, want in zip(ext, (c.max(1), c.min(1), c.max(0), c.min(0))):
        np.testing.assert_allclose(got.numpy(), want, atol=1e-6)
    assert pwmcc_from_extrema(*ext, signed=False) == pytest.approx(pwmcc(a, b), abs=1e-6)
    assert pwmcc_from_extrema(*ext, signed=True) == pytest.approx(pwmcc(a, b, signed=True), abs=1e-6)


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("kwargs, msg", [
    ({"similarity": "dot"}, "similarity must be one of"),
    ({"top_m": 0}, "top_m must be a positive integer"),
    ({"top_m": 2.5}, "top_m must be a positive integer"),
    ({"dense_limit": -1}, "dense_limit must be"),
    ({"exact": "yes"}, "exact must be True or False"),
])
def test_bad_options_raise_one_line(kwargs, msg):
    a = np.eye(3)
    with pytest.raises(HusaiError, match=msg) as err:
        match(a, a, **kwargs)
    assert "\n" not in str(err.value)


def test_bad_inputs_raise_one_line():
    cases = [
        (lambda: match(np.eye(3), np.eye(4)), "different d_in"),
        (lambda: match(np.array([[np.nan, 1.0]]), np.eye(2)), "NaN or inf"),
        (lambda: match(np.zeros((0, 2)), np.eye(2)), "empty"),
        (lambda: match(np.ones(3), np.eye(3)), "2-D"),
        (lambda: match_blocks(3, 4, lambda i0, i1: np.zeros((i1 - i0, 5))), "provider returned shape"),
        (lambda: match_blocks(3, 4, lambda i0, i1: np.full((i1 - i0, 4), np.nan)), "NaN or inf"),
        (lambda: match_blocks(3, 4, lambda i0, i1: np.full((i1 - i0, 4), np.nan), dense_limit=0), "NaN or inf"),
        (lambda: match_blocks(0, 4, lambda i0, i1: None), "n_a must be a positive integer"),
        (lambda: hungarian_match(np.eye(3), np.eye(3), top_m=-2), "top_m"),
    ]
    for fn, msg in cases:
        with pytest.raises(HusaiError, match=msg) as err:
            fn()
        assert "\n" not in str(err.value)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    rng = np.random.default_rng(10)
    a, b, _ = noisy_permuted(rng, 400, 32, noise=0.3)
    cpu = match(a, b, dense_limit=0, top_m=8)
    gpu = match(torch.from_numpy(a).cuda(), torch.from_numpy(b).cuda(), dense_limit=0, top_m=8)
    np.testing.assert_array_equal(gpu.cols, cpu.cols)
    np.testing.assert_allclose(gpu.sims, cpu.sims, atol=1e-6)
    ext = extrema(torch.from_numpy(a).float().cuda(), torch.from_numpy(b).float().cuda(), rows=64, cols=100)
    c = unit(a) @ unit(b).T
    np.testing.assert_allclose(ext[0].cpu().numpy(), c.max(1), atol=1e-5)
    np.testing.assert_allclose(ext[3].cpu().numpy(), c.min(0), atol=1e-5)

