"""husai_core.matching (PW-MCC, shared latents, activation matching, alive scope, the family)
and the signed form of consistency.pwmcc. Expected values are derived by hand in comments."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from husai_core.consistency import _pair_maxima, normalise_rows, pwmcc, pwmcc_matrix
from husai_core.errors import HusaiError
from husai_core.matching import (
    METRICS,
    SCOPES,
    SAEView,
    activation_mcc,
    family_matrices,
    pair_family,
    pw_mcc,
    restrict,
    shared_latent_fraction,
    view_of,
)

R = 1 / math.sqrt(5)


def dense_pwmcc(a: np.ndarray, b: np.ndarray, signed: bool) -> float:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    c = a @ b.T
    c = c if signed else np.abs(c)
    return 0.5 * (c.max(axis=1).mean() + c.max(axis=0).mean())


def view(dec, enc=None, z=None, alive=None) -> SAEView:
    dec = torch.tensor(dec, dtype=torch.float32)
    enc = dec.clone() if enc is None else torch.tensor(enc, dtype=torch.float32)
    z = None if z is None else torch.tensor(z, dtype=torch.float32)
    if alive is None:
        alive = (z > 0).any(dim=0) if z is not None else torch.ones(dec.shape[0], dtype=torch.bool)
    return SAEView(dec, enc, z, torch.as_tensor(alive, dtype=torch.bool))


# --------------------------------------------------------------------------- signed PWMCC
# a1=(1,0), a2=(0,1); b1=(0.6,0.8), b2=(-1,0).  C = A B^T = [[0.6, -1], [0.8, 0]].
HAND_A = np.array([[1.0, 0.0], [0.0, 1.0]])
HAND_B = np.array([[0.6, 0.8], [-1.0, 0.0]])


def test_signed_pwmcc_hand_case():
    # signed: row maxima 0.6, 0.8 (mean 0.7); column maxima 0.8, 0 (mean 0.4) -> 0.55
    assert pwmcc(HAND_A, HAND_B, signed=True) == pytest.approx(0.55, abs=1e-6)
    # |cos|: |C| = [[0.6, 1], [0.8, 0]]: rows 1, 0.8 (0.9); columns 0.8, 1 (0.9) -> 0.9
    assert pwmcc(HAND_A, HAND_B) == pytest.approx(0.9, abs=1e-6)
    assert pwmcc(HAND_A, HAND_B, signed=False) == pytest.approx(0.9, abs=1e-6)


def test_signed_and_absolute_pwmcc_differ_on_a_negated_copy():
    a = np.array([[1.0, 2.0]])  # one latent: B = -A has cos -1 with it
    assert pwmcc(a, -a) == pytest.approx(1.0, abs=1e-6)
    assert pwmcc(a, -a, signed=True) == pytest.approx(-1.0, abs=1e-6)
    # orthogonal rows: C = -I, so each row's best signed match is another row's 0 -> 0
    assert pwmcc(HAND_A, -HAND_A) == pytest.approx(1.0, abs=1e-6)
    assert pwmcc(HAND_A, -HAND_A, signed=True) == pytest.approx(0.0, abs=1e-6)


def test_signed_running_column_maxima_start_below_zero():
    # every cosine is negative: a column max initialised at 0 would wrongly give 0
    a = np.array([[1.0, 0.0], [1.0, 0.1]])
    b = np.array([[-1.0, 0.0], [-1.0, -0.2], [-1.0, 0.3]])
    ref = dense_pwmcc(a, b, signed=True)
    assert ref < -0.9
    for chunk in (1, 2, None):
        assert pwmcc(a, b, chunk_size=chunk, signed=True) == pytest.approx(ref, abs=1e-6)
    ua, ub = normalise_rows(a), normalise_rows(b)
    m = _pair_maxima(ua, ub, chunk_size=1, with_index=True, signed=True)
    c = (ua @ ub.T).numpy()
    np.testing.assert_allclose(m.col_max.numpy(), c.max(axis=0), atol=1e-6)
    np.testing.assert_array_equal(m.col_arg.numpy(), c.argmax(axis=0))
    np.testing.assert_array_equal(m.row_arg.numpy(), c.argmax(axis=1))


@pytest.mark.parametrize("chunk", [1, 3, 5, None])
def test_signed_pwmcc_chunked_equals_dense(chunk):
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(13, 5)), rng.normal(size=(11, 5))
    assert pwmcc(a, b, chunk_size=chunk, signed=True) == pytest.approx(dense_pwmcc(a, b, True), abs=1e-6)
    # the default absolute form is unchanged
    assert pwmcc(a, b, chunk_size=chunk) == pytest.approx(dense_pwmcc(a, b, False), abs=1e-6)
    assert dense_pwmcc(a, b, True) < dense_pwmcc(a, b, False) - 1e-3  # the two forms really differ here


def test_signed_pwmcc_matrix_matches_pairwise():
    rng = np.random.default_rng(1)
    decs = [rng.normal(size=(9, 4)) for _ in range(4)]
    for signed in (False, True):
        m = pwmcc_matrix(decs, chunk_size=2, signed=signed)
        for i in range(4):
            for j in range(i + 1, 4):
                assert m[i, j] == m[j, i] == pytest.approx(dense_pwmcc(decs[i], decs[j], signed), abs=1e-6)
    uneven = decs[:2] + [rng.normal(size=(6, 4))]  # unequal widths take the pairwise path
    assert pwmcc_matrix(uneven, signed=True)[0, 2] == pytest.approx(dense_pwmcc(uneven[0], uneven[2], True), abs=1e-6)


# --------------------------------------------------------------------------- PW-MCC
def test_pw_mcc_hand_case():
    # C = [[0.6, -1], [0.8, 0]]: identity matching 0.6 + 0 = 0.6 beats the swap -1 + 0.8 = -0.2 -> 0.3
    assert pw_mcc(HAND_A, HAND_B) == pytest.approx(0.3, abs=1e-6)
    # 3 latents, d_in 3: A = I; B = [e2, (0.8, 0, 0.6), e3]; C rows a1 (0, .8, 0), a2 (1, 0, 0),
    # a3 (0, .6, 1). Best: a2-b1 1, a1-b2 0.8, a3-b3 1 -> 2.8 / 3
    b = np.array([[0, 1, 0], [0.8, 0, 0.6], [0, 0, 1]])
    assert pw_mcc(np.eye(3), b) == pytest.approx(2.8 / 3, abs=1e-6)


def test_pw_mcc_permuted_and_negated_copies():
    rng = np.random.default_rng(2)
    a = rng.normal(size=(7, 5))
    assert pw_mcc(a, a[rng.permutation(7)] * rng.uniform(0.5, 2, size=(7, 1))) == pytest.approx(1.0, abs=1e-6)
    one = np.array([[1.0, 2.0, -1.0]])
    assert pw_mcc(one, -one) == pytest.approx(-1.0, abs=1e-6)  # a single latent must match its negation
    # orthogonal latents: C = -I, and the off-diagonal matching scores 0 > -1
    assert pw_mcc(np.eye(2), -np.eye(2)) == pytest.approx(0.0, abs=1e-6)


def test_pw_mcc_rectangular_uses_min_pairs():
    # A = [e1]; B = [e2, 0.6 e1 + 0.8 e2]: the single A latent matches b2 (0.6), 1 pair -> 0.6
    assert pw_mcc(np.array([[1.0, 0.0]]), np.array([[0.0, 1.0], [0.6, 0.8]])) == pytest.approx(0.6, abs=1e-6)


# --------------------------------------------------------------------------- shared latents
def test_shared_latent_hand_case():
    # decoder matching as in test_pw_mcc_hand_case: pairs (a2,b1) dec 1, (a1,b2) dec 0.8, (a3,b3) dec 1
    dec_b = np.array([[0, 1, 0], [0.8, 0, 0.6], [0, 0, 1]])
    enc_b = np.array([[0, 1, 0], [1, 0, 0], [0, 0.6, 0.8]])  # encoder cosines of those pairs: 1, 1, 0.8
    eye = np.eye(3)
    # 0.7: every pair has both cosines > 0.7 -> 3/3
    assert shared_latent_fraction(eye, eye, dec_b, enc_b, threshold=0.7) == pytest.approx(1.0)
    # 0.9: (a2,b1) passes both; (a1,b2) fails the decoder (0.8); (a3,b3) fails the encoder (0.8) -> 1/3
    assert shared_latent_fraction(eye, eye, dec_b, enc_b, threshold=0.9) == pytest.approx(1 / 3)


def test_shared_latent_needs_both_encoder_and_decoder():
    eye = np.eye(2)
    swapped = eye[::-1].copy()
    # decoders agree (matching is the identity) but the encoders are swapped: encoder cos 0 -> none shared
    assert shared_latent_fraction(eye, eye, eye, swapped) == 0.0
    assert shared_latent_fraction(eye, eye, eye, eye) == 1.0
    # negated encoder: signed cosine -1 does not count as shared
    assert shared_latent_fraction(eye, eye, eye, -eye) == 0.0
    with pytest.raises(HusaiError, match="rows"):
        shared_latent_fraction(eye, np.eye(3)[:, :2], eye, eye)


# --------------------------------------------------------------------------- activation matching
# za1 = (0,1,2,3), za2 = (1,0,1,0); zb1 = 2 za1, zb2 = (0,0,1,1).
# centred: za1 (-1.5,-.5,.5,1.5) |.|=sqrt5; za2 (.5,-.5,.5,-.5) |.|=1; zb2 (-.5,-.5,.5,.5) |.|=1.
# corr(za1,zb1)=1, corr(za1,zb2)=2/sqrt5, corr(za2,zb1)=-1/sqrt5, corr(za2,zb2)=0.
ZA = np.array([[0, 1], [1, 0], [2, 1], [3, 0]], dtype=float)
ZB = np.array([[0, 0], [2, 0], [4, 1], [6, 1]], dtype=float)


def test_activation_mcc_hand_case():
    # identity 1 + 0 = 1 beats swap 2/sqrt5 - 1/sqrt5 = 0.447 -> mean 0.5
    za, zb = ZA.copy(), torch.tensor(ZB)
    assert activation_mcc(za, zb) == pytest.approx(0.5, abs=1e-12)
    np.testing.assert_array_equal(za, ZA)  # float64 inputs are not centred in place
    np.testing.assert_array_equal(zb.numpy(), ZB)
    # one latent each: za2 with zb1 -> -1/sqrt5
    assert activation_mcc(ZA[:, 1:], ZB[:, :1]) == pytest.approx(-R, abs=1e-12)


def test_activation_mcc_permutation_scaling_and_dead_columns():
    rng = np.random.default_rng(3)
    z = np.maximum(rng.normal(size=(40, 6)), 0)
    perm = rng.permutation(6)
    assert activation_mcc(z, z[:, perm] * rng.uniform(0.1, 10, size=6) + 2.0) == pytest.approx(1.0, abs=1e-12)
    # a dead (all-zero) or constant column correlates 0 with everything
    assert activation_mcc(np.zeros((4, 1)), ZB[:, :1]) == 0.0
    assert activation_mcc(np.full((4, 1), 5.0), ZB[:, :1]) == 0.0
    # za1 with [dead, zb2]: the dead column scores 0, zb2 scores 2/sqrt5 -> matched to zb2
    assert activation_mcc(ZA[:, :1], np.stack([np.zeros(4), ZB[:, 1]], axis=1)) == pytest.approx(2 * R, abs=1e-12)
    with pytest.raises(HusaiError, match="same held-out rows"):
        activation_mcc(ZA, ZB[:3])


def test_activation_mcc_blocks_equal_one_pass(monkeypatch):
    import husai_core.matching.correlation as m

    rng = np.random.default_rng(4)
    za, zb = np.maximum(rng.normal(size=(300, 9)), 0), np.maximum(rng.normal(size=(300, 7)), 0)
    ref = activation_mcc(za, zb)
    corr = np.corrcoef(za.T, zb.T)[:9, 9:]
    from scipy.optimize import linear_sum_assignment

    r, c = linear_sum_assignment(-corr)
    assert ref == pytest.approx(corr[r, c].mean(), abs=1e-12)
    monkeypatch.setattr(m, "_MAX_CORR_COLS", 4)  # column blocks of A and B
    monkeypatch.setattr(m, "CORR_BYTES", 4096)  # forces row blocks (256 rows) too
    assert activation_mcc(za, zb) == pytest.approx(ref, abs=1e-12)


@pytest.mark.parametrize("sparse_a, sparse_b", [(True, True), (True, False), (False, True)])
def test_activation_sparse_path_equals_dense_path(monkeypatch, sparse_a, sparse_b):
    import husai_core.matching.correlation as m

    rng = np.random.default_rng(7)
    n = 200
    z = [np.where(rng.uniform(size=(n, d)) < 0.05, rng.exponential(size=(n, d)), 0.0) for d in (12, 30)]
    z[0][:, 3] = 0  # dead
    z[1][:, 5] = 0.25  # constant: fires on every row, still correlates 0
    with np.errstate(invalid="ignore"):  # the dead and constant columns: 0/0, set to 0 below
        dense = np.corrcoef(z[0].T, z[1].T)[:12, 12:]
    dense[3], dense[:, 5] = 0, 0
    monkeypatch.setattr(m, "CORR_BYTES", 8 * (n + 30) * 5)  # blocks: rows/columns in stats, A's columns here
    la, lb = (m._latent_stats(torch.tensor(x), "z", torch.device("cpu")) for x in z)
    assert la.sparse_t is not None and lb.sparse_t is not None  # 5% dense: both take the sparse path
    la = la if sparse_a else la._replace(sparse_t=None)
    lb = lb if sparse_b else lb._replace(sparse_t=None)
    np.testing.assert_allclose(1 - m._correlation_cost(la, lb), dense, atol=1e-12)
    monkeypatch.setattr(m, "SPARSE_DENSITY", 0.0)
    assert m._latent_stats(torch.tensor(z[0]), "z", torch.device("cpu")).sparse_t is None


# --------------------------------------------------------------------------- alive scope
# A: a1=(1,0) alive, a2=(0,1) dead; B: b1=(1,0), b2=(-0.6,0.8) both alive; encoders = decoders.
# all:   C = [[1, -0.6], [0, 0.8]]
# alive: C = [[1, -0.6]]
ALIVE_ZA = [[1, 0], [0, 0], [2, 0], [0, 0]]
ALIVE_ZB = [[2, 0], [0, 1], [4, 0], [0, 3]]  # zb1 = 2 za1 (corr 1); corr(za1, zb2) < 0


def alive_pair():
    a = view([[1, 0], [0, 1]], z=ALIVE_ZA)
    b = view([[1, 0], [-0.6, 0.8]], z=ALIVE_ZB)
    return a, b


def test_alive_scope_hand_values():
    a, b = alive_pair()
    assert a.alive.tolist() == [True, False] and b.alive.tolist() == [True, True]
    f = pair_family(a, b, threshold=0.9)
    expected = {
        # all: |C| rows 1, .8; cols 1, .8 -> .9 | alive: rows 1; cols 1, .6 -> ½(1 + .8) = .9
        "pwmcc/all": 0.9, "pwmcc/alive": 0.9,
        # all: rows 1, .8; cols 1, .8 -> .9 | alive: rows 1; cols 1, -.6 -> ½(1 + .2) = .6
        "pwmcc_signed/all": 0.9, "pwmcc_signed/alive": 0.6,
        # all: identity 1 + .8 beats swap -.6 + 0 -> .9 | alive: a1-b1 -> 1
        "pw_mcc/all": 0.9, "pw_mcc/alive": 1.0,
        # threshold .9: all: (a1,b1) shared, (a2,b2) at .8 not -> 1/2 | alive: 1/1
        "shared_latent/all": 0.5, "shared_latent/alive": 1.0,
        # corr all = [[1, r], [0, 0]] with r < 0 (a2 dead): identity 1 + 0 -> .5 | alive: a1-b1 -> 1
        "activation_mcc/all": 0.5, "activation_mcc/alive": 1.0,
    }
    assert list(f) == list(expected)
    for k, v in expected.items():
        assert f[k] == pytest.approx(v, abs=1e-6), k


def test_alive_scope_equals_metrics_on_restricted_views():
    rng = np.random.default_rng(5)
    z = np.maximum(rng.normal(size=(50, 8)), 0)
    z[:, [1, 6]] = 0  # dead latents
    za, zb = z, np.maximum(z[:, rng.permutation(8)] + 0.3 * rng.normal(size=(50, 8)), 0)
    zb[:, 2] = 0
    a = view(rng.normal(size=(8, 5)), rng.normal(size=(8, 5)), za)
    b = view(rng.normal(size=(8, 5)), rng.normal(size=(8, 5)), zb)
    f = pair_family(a, b, threshold=0.2)
    for scope, (x, y) in (("all", (a, b)), ("alive", (restrict(a), restrict(b)))):
        assert f[f"pwmcc/{scope}"] == pytest.approx(pwmcc(x.decoder, y.decoder), abs=1e-6)
        assert f[f"pwmcc_signed/{scope}"] == pytest.approx(pwmcc(x.decoder, y.decoder, signed=True), abs=1e-6)
        assert f[f"pw_mcc/{scope}"] == pytest.approx(pw_mcc(x.decoder, y.decoder), abs=1e-6)
        assert f[f"shared_latent/{scope}"] == shared_latent_fraction(x.decoder, x.encoder, y.decoder, y.encoder, 0.2)
        assert f[f"activation_mcc/{scope}"] == pytest.approx(activation_mcc(x.latents, y.latents), abs=1e-9)
    assert restrict(a).decoder.shape == (6, 5) and restrict(b).latents.shape == (50, 7)
    assert f["activation_mcc/all"] != pytest.approx(f["activation_mcc/alive"], abs=1e-3)


def test_no_alive_latent_raises():
    dead = view([[1, 0], [0, 1]], z=[[0, 0], [0, 0]])
    alive = view([[1, 0], [0, 1]], z=[[1, 0], [0, 1]])
    with pytest.raises(HusaiError, match="no alive latent"):
        restrict(dead)
    with pytest.raises(HusaiError, match="no alive latent"):
        pair_family(alive, dead)
    with pytest.raises(HusaiError, match="no alive latent"):
        family_matrices([alive, alive, dead])


def test_activation_keys_skipped_without_latents():
    f = pair_family(view(HAND_A), view(HAND_B, z=None))
    assert set(f) == {f"{m}/{s}" for m in METRICS if m != "activation_mcc" for s in SCOPES}
    assert f["pw_mcc/all"] == pytest.approx(0.3, abs=1e-6)


# --------------------------------------------------------------------------- view_of
class TinySAE:
    """z = ReLU(x W_enc + b): the attributes view_of needs."""

    def __init__(self, w_enc, b, w_dec):
        self.W_enc, self.b, self.W_dec = w_enc, b, w_dec

    def encode(self, x):
        return torch.relu(x @ self.W_enc + self.b)


def test_view_of_batches_and_alive():
    w_enc = torch.tensor([[1.0, 0.0, 2.0], [0.0, 1.0, -1.0]])  # (d_in 2, d_sae 3)
    sae = TinySAE(w_enc, torch.tensor([0.0, 0.0, -100.0]), torch.randn(3, 2))  # latent 3 never fires
    rows = torch.randn(11, 2)
    v = view_of(sae, rows, batch_size=3)
    torch.testing.assert_close(v.latents, sae.encode(rows))
    assert v.alive.tolist() == [bool((rows[:, 0] > 0).any()), bool((rows[:, 1] > 0).any()), False]
    torch.testing.assert_close(v.encoder, w_enc.T)
    assert v.decoder is not None and v.decoder.shape == (3, 2)
    assert restrict(v).decoder.shape[0] == int(v.alive.sum())
    with pytest.raises(HusaiError, match="rows"):
        view_of(sae, torch.randn(4, 3))


def test_view_of_base_sae():
    from husai_core.sae import SAEConfig, build_sae

    sae = build_sae(SAEConfig(architecture="relu", d_in=6, d_sae=10), seed=0)
    rows = torch.randn(20, 6, generator=torch.Generator().manual_seed(0))
    v = view_of(sae, rows)
    assert v.latents.shape == (20, 10) and v.encoder.shape == (10, 6) and v.decoder.shape == (10, 6)
    assert not v.latents.requires_grad
    f = pair_family(v, v)
    assert f["pw_mcc/all"] == pytest.approx(1.0, abs=1e-6) and f["shared_latent/alive"] == 1.0
    assert f["activation_mcc/alive"] == pytest.approx(1.0, abs=1e-9)


# --------------------------------------------------------------------------- family_matrices
def test_family_matrices_shapes_symmetry_and_pairs():
    rng = np.random.default_rng(6)
    views = []
    for _ in range(3):
        z = np.maximum(rng.normal(size=(30, 5)), 0)
        z[:, 0] = 0
        views.append(view(rng.normal(size=(5, 4)), rng.normal(size=(5, 4)), z))
    fm = family_matrices(views, threshold=0.3)
    assert list(fm) == [f"{m}/{s}" for m in METRICS for s in SCOPES]
    for k, mat in fm.items():
        assert mat.shape == (3, 3) and mat.dtype == np.float64
        np.testing.assert_array_equal(np.diag(mat), 1.0)
        np.testing.assert_array_equal(mat, mat.T)
        assert np.isfinite(mat).all()
    ref = pair_family(views[0], views[2], threshold=0.3)
    for k, v in ref.items():
        assert fm[k][0, 2] == pytest.approx(v, abs=1e-12)
    sub = family_matrices(views, threshold=0.3, pairs=[(2, 0)])
    for k, mat in sub.items():
        assert mat[0, 2] == mat[2, 0] == pytest.approx(fm[k][0, 2], abs=1e-12)
        assert np.isnan(mat[0, 1]) and np.isnan(mat[1, 2]) and np.isnan(mat[2, 1])
        np.testing.assert_array_equal(np.diag(mat), 1.0)
    with pytest.raises(HusaiError, match="distinct"):
        family_matrices(views, pairs=[(1, 1)])
    with pytest.raises(HusaiError, match="distinct"):
        family_matrices(views, pairs=[(0, 3)])
    with pytest.raises(HusaiError, match="at least 2"):
        family_matrices(views[:1])
