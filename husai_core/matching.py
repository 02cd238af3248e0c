"""One-to-one matching metrics between two SAEs, over all or only alive latents (DESIGN.md §5).

Definitions (one each; "unit rows" = rows divided by their L2 norm, a zero row stays zero and
has cosine 0 with everything; every cosine here is *signed*, except in ``pwmcc``):

- ``pwmcc`` — max-|cos| PWMCC: with ``C = |D̂_a D̂_bᵀ|`` (unit decoder rows),
  ``½(mean_i max_j C_ij + mean_j max_i C_ij)``. Same value as ``consistency.pwmcc``.
- ``pwmcc_signed`` — the same with signed ``C = D̂_a D̂_bᵀ`` (latents are non-negative, so a
  decoder direction's sign means something): in [-1, 1]; a feature's negation is no match.
- ``pw_mcc`` — PW-MCC (Song et al. 2025): optimal one-to-one (Hungarian) matching of the
  latents on cost ``1 - C_ij`` with signed ``C``; value = mean of the matched signed cosines over
  the ``min(d_sae_a, d_sae_b)`` matched pairs.
- ``shared_latent`` — shared-latent fraction (Paulo & Belrose 2025): the same Hungarian matching
  on decoder signed cosine (the paper treats matching on encoder or decoder vectors as a
  hyperparameter and finds both usually give the same pairs; we match on the decoder); a matched
  pair is *shared* when its decoder cosine AND its encoder cosine (unit encoder rows, W_enc
  transposed to (d_sae, d_in), signed) are both strictly greater than ``threshold`` (0.7; the
  authors' "cosine similarity greater than 0.7 according to both the encoder and decoder
  weights", as worded in their Dec 2024 EleutherAI post that became arXiv:2501.16615);
  value = shared pairs / ``min(d_sae_a, d_sae_b)``.
- ``activation_mcc`` — activation matching: Pearson correlation between every latent of A and
  every latent of B over the same rows (a latent constant on these rows, e.g. dead, correlates 0
  with everything), Hungarian matching on cost ``1 - corr``; value = mean matched correlation
  over ``min(d_sae_a, d_sae_b)`` pairs. Correlations are float64 (standardised columns, one
  matmul per block; or, for sparse latents, one sparse x dense product of the raw latents
  centred afterwards), computed in blocks of at most ~64 MiB besides the dense float64 cost
  matrix.

Scopes: ``"all"`` latents, or only ``"alive"`` ones (fired, > 0, on at least one held-out row of
the view; see ``view_of``/``restrict``). A view without alive latents makes the alive-scope
metrics raise ``HusaiError``. Restricting to alive latents equals computing on submatrices
(cosines and correlations are per latent), which ``pair_family`` uses to share one similarity
pass between the two scopes.
"""

from __future__ import annotations

import warnings
from typing import Any, Iterable, NamedTuple, Sequence

import numpy as np
import torch
from torch import Tensor

from . import assignment as _assignment
from .consistency import _as_matrix, _check_thresholds, _device_of, _unit_rows
from .errors import HusaiError

METRICS = ("pwmcc", "pwmcc_signed", "pw_mcc", "shared_latent", "activation_mcc")
SCOPES = ("all", "alive")
ENCODE_BATCH = 4096
# Bytes of float64 work held at once by the correlation pass (standardised column blocks of
# both SAEs and one correlation block), besides the dense cost matrix itself.
CORR_BYTES = 64 << 20
_MAX_CORR_COLS = 2048  # latents per correlation block (a 2048 x 2048 float64 block is 32 MiB)
# Latents with at most this fraction of non-zero entries take the sparse correlation path:
# a sparse x dense product costs nnz(z_b) * d_sae_a multiply-adds instead of n_rows * d_sae_b * d_sae_a.
SPARSE_DENSITY = 0.1

Matrix = Tensor | np.ndarray


# --------------------------------------------------------------------------- views
class SAEView(NamedTuple):
    """What the metrics need of one SAE. ``decoder``: (d_sae, d_in) decoder rows (W_dec);
    ``encoder``: (d_sae, d_in) encoder rows (W_enc transposed); ``latents``: (n_rows, d_sae)
    activations on held-out rows, or None (no activation matching then); ``alive``: (d_sae,)
    bool, latents that fired (> 0) on at least one of those rows."""

    decoder: Tensor
    encoder: Tensor
    latents: Tensor | None
    alive: Tensor


def view_of(sae: Any, rows: Matrix, batch_size: int = ENCODE_BATCH) -> SAEView:
    """Latents of ``sae`` on ``rows`` (n_rows, d_in), under no_grad in batches of ``batch_size``.

    ``sae`` is anything with ``.W_dec`` (d_sae, d_out), ``.W_enc`` (d_in, d_sae) and
    ``.encode(x) -> (n, d_sae)`` (e.g. ``husai_core.sae.BaseSAE`` of one seed). Rows are moved
    to W_enc's device and dtype; latents stay on that device. ``alive`` = fired (> 0) on at
    least one row.
    """
    for attr in ("W_dec", "W_enc", "encode"):
        if not hasattr(sae, attr):
            raise HusaiError(f"view_of needs an SAE with W_dec, W_enc and encode(); {type(sae).__name__} has no {attr}")
    dec, enc_t = sae.W_dec.detach(), sae.W_enc.detach()
    if dec.ndim != 2 or enc_t.ndim != 2:
        raise HusaiError(f"view_of needs one SAE (2-D W_dec/W_enc), got W_dec {tuple(dec.shape)}, "
                         f"W_enc {tuple(enc_t.shape)} (a stack of seeds? take one seed)")
    d_sae = dec.shape[0]
    if enc_t.shape[1] != d_sae:
        raise HusaiError(f"W_enc {tuple(enc_t.shape)} is not (d_in, d_sae={d_sae})")
    if int(batch_size) != batch_size or batch_size < 1:
        raise HusaiError(f"batch_size must be a positive integer, got {batch_size!r}")
    x = torch.from_numpy(np.ascontiguousarray(rows)) if isinstance(rows, np.ndarray) else rows
    if not isinstance(x, Tensor) or x.ndim != 2 or x.shape[1] != enc_t.shape[0]:
        shape = tuple(x.shape) if hasattr(x, "shape") else type(x).__name__
        raise HusaiError(f"rows must be an (n_rows, d_in={enc_t.shape[0]}) tensor or array, got {shape}")
    if x.shape[0] == 0:
        raise HusaiError("rows is empty: need at least one held-out row to tell alive latents")
    dtype = enc_t.dtype if enc_t.is_floating_point() else torch.float32
    parts = []
    with torch.no_grad():
        for start in range(0, x.shape[0], int(batch_size)):
            z = sae.encode(x[start : start + int(batch_size)].to(device=enc_t.device, dtype=dtype))
            if z.ndim != 2 or z.shape[1] != d_sae:
                raise HusaiError(f"encode() returned shape {tuple(z.shape)}, expected (batch, d_sae={d_sae})")
            parts.append(z.detach())
    latents = torch.cat(parts)
    return SAEView(dec, enc_t.T, latents, (latents > 0).any(dim=0))


def restrict(view: SAEView) -> SAEView:
    """The view over its alive latents only (decoder rows, encoder rows, latent columns)."""
    alive = _alive_mask(view, "view")
    if not alive.any():
        raise HusaiError("view has no alive latent (none fired on the held-out rows): alive-scope metrics are undefined")
    idx = torch.from_numpy(np.flatnonzero(alive)).to(view.decoder.device)
    lat = None if view.latents is None else view.latents[:, idx.to(view.latents.device)]
    return SAEView(view.decoder[idx], view.encoder[idx.to(view.encoder.device)], lat,
                   torch.ones(len(idx), dtype=torch.bool, device=view.alive.device))


def _alive_mask(view: SAEView, name: str) -> np.ndarray:
    alive = view.alive
    alive = alive.detach().cpu().numpy() if isinstance(alive, Tensor) else np.asarray(alive)
    if alive.dtype != np.bool_ or alive.ndim != 1 or alive.shape[0] != view.decoder.shape[0]:
        raise HusaiError(f"{name}.alive must be a bool vector of length d_sae={view.decoder.shape[0]}, "
                         f"got dtype {alive.dtype} shape {alive.shape}")
    return alive


# --------------------------------------------------------------------------- prepared inputs
class _Latents(NamedTuple):
    z: Tensor  # (n_rows, d_sae) as given
    mean: Tensor  # (d_sae,) float64
    inv_std: Tensor  # (d_sae,) float64 population 1/std; 0 for a column constant on the rows
    sparse_t: Tensor | None  # z transposed, (d_sae, n_rows) float64 CSR, when z is sparse enough


class _Prep(NamedTuple):
    dec: Tensor | None  # unit rows, float32
    enc: Tensor | None  # unit rows, float32
    lat: _Latents | None
    alive: np.ndarray | None  # indices of alive latents


def _latent_stats(z: Matrix, name: str, device: torch.device) -> _Latents:
    """Validate latents and compute float64 column means and inverse std (column blocks)."""
    t = torch.from_numpy(np.ascontiguousarray(z)) if isinstance(z, np.ndarray) else z
    if not isinstance(t, Tensor):
        raise HusaiError(f"{name} must be a torch tensor or numpy array, got {type(z).__name__}")
    if t.ndim != 2 or t.shape[0] == 0 or t.shape[1] == 0:
        raise HusaiError(f"{name} must be a non-empty 2-D (n_rows, d_sae) latent matrix, got shape {tuple(t.shape)}")
    if t.dtype == torch.bool or t.is_complex():
        raise HusaiError(f"{name} must hold real numbers, got dtype {t.dtype}")
    # float64 stays float64; anything else is held as float32 (statistics are float64 anyway)
    z = t.detach().to(device=device, dtype=torch.float64 if t.dtype == torch.float64 else torch.float32)
    n, d = z.shape
    mean = torch.empty(d, dtype=torch.float64, device=device)
    inv_std = torch.empty(d, dtype=torch.float64, device=device)
    step = max(1, CORR_BYTES // (8 * n))
    for c0 in range(0, d, step):
        raw = z[:, c0 : c0 + step]
        block = raw.to(torch.float64, copy=True)  # a copy even for float64 input: centred in place below
        m = block.mean(dim=0)
        std = block.sub_(m).square_().mean(dim=0).sqrt_()
        # constant columns (max == min, exact) have no correlation with anything: weight 0
        constant = raw.amax(dim=0) == raw.amin(dim=0)
        mean[c0 : c0 + step] = m
        inv_std[c0 : c0 + step] = torch.where(constant | (std == 0), torch.zeros_like(std), 1.0 / std)
    if not bool(torch.isfinite(mean).all() & torch.isfinite(inv_std).all()):
        raise HusaiError(f"{name} contains NaN or inf")
    return _Latents(z, mean, inv_std, _sparse_transpose(z))


def _sparse_transpose(z: Tensor) -> Tensor | None:
    """``z`` transposed as a float64 CSR matrix (d_sae, n_rows), or None if z is not sparse."""
    n, d = z.shape
    step = max(1, CORR_BYTES // (4 * d))
    nnz = sum(int(torch.count_nonzero(z[r : r + step])) for r in range(0, n, step))
    if nnz > SPARSE_DENSITY * n * d:
        return None
    idx, vals = [], []
    for r in range(0, n, step):
        block = z[r : r + step]
        rr, cc = block.nonzero(as_tuple=True)
        idx.append(torch.stack([cc, rr + r]))
        vals.append(block[rr, cc].double())
    coo = torch.sparse_coo_tensor(torch.cat(idx, dim=1), torch.cat(vals), (d, n), check_invariants=False).coalesce()
    with warnings.catch_warnings():  # "sparse CSR support is in beta" (CSR matmul is stable in practice)
        warnings.simplefilter("ignore", UserWarning)
        return coo.to_sparse_csr()


def _prepare_view(view: SAEView, name: str, device: torch.device) -> _Prep:
    if not isinstance(view, SAEView):
        raise HusaiError(f"{name} must be an SAEView (see view_of), got {type(view).__name__}")
    dec = _unit_rows(_as_matrix(view.decoder, f"{name}.decoder", device), f"{name}.decoder")
    enc = _unit_rows(_as_matrix(view.encoder, f"{name}.encoder", device), f"{name}.encoder")
    if enc.shape[0] != dec.shape[0]:
        raise HusaiError(f"{name}: encoder has {enc.shape[0]} rows but decoder has {dec.shape[0]} (both (d_sae, d))")
    lat = None
    if view.latents is not None:
        if view.latents.ndim != 2 or view.latents.shape[1] != dec.shape[0]:
            raise HusaiError(f"{name}.latents must be (n_rows, d_sae={dec.shape[0]}), got {tuple(view.latents.shape)}")
        lat = _latent_stats(view.latents, f"{name}.latents", device)
    return _Prep(dec, enc, lat, np.flatnonzero(_alive_mask(view, name)))


def _check_same(a: Tensor, b: Tensor, what: str) -> None:
    if a.shape[1] != b.shape[1]:
        raise HusaiError(f"{what} have different widths: {a.shape[1]} vs {b.shape[1]} (must be (d_sae, d) with the same d)")


def _unit(x: Matrix, name: str, device: torch.device) -> Tensor:
    return _unit_rows(_as_matrix(x, name, device), name)


# --------------------------------------------------------------------------- core computations
def _cosines(a: Tensor, b: Tensor) -> np.ndarray:
    """Dense signed cosine matrix (n_a, n_b) float32 of unit rows, filled in row chunks."""
    n_a, n_b = a.shape[0], b.shape[0]
    out = np.empty((n_a, n_b), dtype=np.float32)
    chunk = max(1, (32 << 20) // (4 * n_b))
    bt = b.T
    for start in range(0, n_a, chunk):
        if a.device.type == "cpu":  # numpy's BLAS straight into the output (see assignment.mm_into)
            _assignment.mm_into(a[start : start + chunk], bt, torch.from_numpy(out[start : start + chunk]))
        else:
            out[start : start + chunk] = torch.mm(a[start : start + chunk], bt).cpu().numpy()
    return out


def _pwmcc_of(c: np.ndarray, signed: bool) -> float:
    s = c if signed else np.abs(c)
    return 0.5 * (float(s.max(axis=1).mean(dtype=np.float64)) + float(s.max(axis=0).mean(dtype=np.float64)))


def _match(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return _assignment.solve_dense(cost)


def _limits(dense_limit, top_m) -> tuple[float, int]:
    """Defaults read at call time (``assignment.DENSE_LIMIT`` / ``TOP_M``)."""
    return (_assignment.DENSE_LIMIT if dense_limit is None else dense_limit,
            _assignment.TOP_M if top_m is None else top_m)


def _match_rows(a: Tensor, b: Tensor, dense_limit, top_m, exact: bool = False) -> _assignment.Matching:
    """Hungarian matching of unit rows on signed cosine (dense, or sparse above dense_limit)."""
    limit, m = _limits(dense_limit, top_m)
    return _assignment.match_units(a, b, "cos", dense_limit=limit, top_m=m, exact=exact)


def _pair_dots(a: Tensor, b: Tensor, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Float64 dot products of matched unit rows a[rows[k]] . b[cols[k]] (exact up to the unit rows)."""
    ra = a[torch.from_numpy(rows).to(a.device)].double()
    rb = b[torch.from_numpy(cols).to(b.device)].double()
    return (ra * rb).sum(dim=1).cpu().numpy()


def _standardised(lat: _Latents, r0: int, r1: int, c0: int, c1: int) -> Tensor:
    return (lat.z[r0:r1, c0:c1].double() - lat.mean[c0:c1]).mul_(lat.inv_std[c0:c1])


def _correlation_cost(la: _Latents, lb: _Latents) -> np.ndarray:
    """Dense float64 ``1 - corr`` (n_a, n_b): Pearson correlations of every latent of A with
    every latent of B, from standardised float64 column blocks (at most ~CORR_BYTES of work).

    When one side's latents are sparse (SPARSE_DENSITY) the cross products come from one
    sparse x dense float64 product instead, ``corr = (z_a^T z_b / n - mean_a mean_b^T) / (std_a
    std_b)``: the same quantity, centred after the product. Its float64 rounding error is about
    1e-16 * sqrt((1 + mean_a²/std_a²)(1 + mean_b²/std_b²)), i.e. ~1e-16 for a latent that fires
    on a minority of rows (mean < std); only a latent that fires on nearly every row with a
    nearly constant value (mean/std ~ 1e4 and more) would lose digits (~1e-8)."""
    n = la.z.shape[0]
    if lb.z.shape[0] != n:
        raise HusaiError(f"latents are on different rows: {n} rows vs {lb.z.shape[0]} (activation matching "
                         "needs both SAEs' latents on the same held-out rows)")
    if lb.sparse_t is not None:
        return _sparse_correlation_cost(la, lb)
    if la.sparse_t is not None:
        return np.ascontiguousarray(_sparse_correlation_cost(lb, la).T)
    n_a, n_b = la.z.shape[1], lb.z.shape[1]
    ca, cb = min(n_a, _MAX_CORR_COLS), min(n_b, _MAX_CORR_COLS)
    rows = min(n, max(256, (CORR_BYTES - 8 * ca * cb) // (8 * (ca + cb))))
    cost = np.empty((n_a, n_b), dtype=np.float64)
    for j0 in range(0, n_b, cb):
        j1 = min(j0 + cb, n_b)
        for i0 in range(0, n_a, ca):
            i1 = min(i0 + ca, n_a)
            if rows >= n:
                block = _standardised(la, 0, n, i0, i1).T @ _standardised(lb, 0, n, j0, j1)
            else:
                block = torch.zeros(i1 - i0, j1 - j0, dtype=torch.float64, device=la.z.device)
                for r0 in range(0, n, rows):
                    r1 = min(r0 + rows, n)
                    block.addmm_(_standardised(la, r0, r1, i0, i1).T, _standardised(lb, r0, r1, j0, j1))
            corr = block.div_(n).clamp_(-1.0, 1.0).cpu().numpy()
            np.subtract(1.0, corr, out=cost[i0:i1, j0:j1])
    return cost


def _sparse_correlation_cost(la: _Latents, lb: _Latents) -> np.ndarray:
    """As ``_correlation_cost`` with ``lb.sparse_t`` set: cross products ``z_b^T z_a`` from a
    sparse (d_b, n) x dense (n, ca) product per block of A's columns."""
    n, n_a, n_b = la.z.shape[0], la.z.shape[1], lb.z.shape[1]
    ca = max(1, min(n_a, CORR_BYTES // (8 * (n + n_b))))
    cost = np.empty((n_a, n_b), dtype=np.float64)
    for i0 in range(0, n_a, ca):
        i1 = min(i0 + ca, n_a)
        cross = torch.mm(lb.sparse_t, la.z[:, i0:i1].double()).T  # (ca, n_b): sum_r z_a[r, i] z_b[r, j]
        cov = cross.div_(n).sub_(torch.outer(la.mean[i0:i1], lb.mean))
        corr = cov.mul_(la.inv_std[i0:i1, None]).mul_(lb.inv_std[None, :]).clamp_(-1.0, 1.0).cpu().numpy()
        np.subtract(1.0, corr, out=cost[i0:i1])
    return cost


def _matched_mean(cost: np.ndarray) -> float:
    rows, cols = _match(cost)
    return float(1.0 - cost[rows, cols].mean())


def _correlation_blocks(la: _Latents, lb: _Latents, ia: np.ndarray | None = None, ib: np.ndarray | None = None):
    """Similarity provider for ``assignment.match_blocks``: ``block(i0, i1)`` = float64
    correlations of A's latents ``ia[i0:i1]`` (all: ``i0:i1``) with B's latents ``ib`` (all:
    every one), computed as in ``_correlation_cost`` (sparse x dense product of raw latents
    when B is sparse, else standardised float64 row blocks), ~CORR_BYTES at a time."""
    n = la.z.shape[0]
    if lb.z.shape[0] != n:
        raise HusaiError(f"latents are on different rows: {n} rows vs {lb.z.shape[0]} (activation matching "
                         "needs both SAEs' latents on the same held-out rows)")
    dev, n_b = la.z.device, lb.z.shape[1]
    ib_t = None if ib is None else torch.from_numpy(ib).to(dev)

    def block(i0: int, i1: int) -> Tensor:
        idx = torch.arange(i0, i1, device=dev) if ia is None else torch.from_numpy(ia[i0:i1]).to(dev)
        mean, inv = la.mean[idx], la.inv_std[idx]
        if lb.sparse_t is not None:
            cross = torch.mm(lb.sparse_t, la.z[:, idx].double()).T  # (ca, n_b)
            corr = cross.div_(n).sub_(torch.outer(mean, lb.mean)).mul_(inv[:, None]).mul_(lb.inv_std[None, :])
        else:
            rows = min(n, max(256, CORR_BYTES // (8 * (len(idx) + n_b))))
            corr = torch.zeros(len(idx), n_b, dtype=torch.float64, device=dev)
            for r0 in range(0, n, rows):
                r1 = min(r0 + rows, n)
                za = (la.z[r0:r1, idx].double() - mean).mul_(inv)
                corr.addmm_(za.T, _standardised(lb, r0, r1, 0, n_b))
            corr.div_(n)
        corr.clamp_(-1.0, 1.0)
        return corr if ib_t is None else corr[:, ib_t]

    return block


def _activation_match(la: _Latents, lb: _Latents, dense_limit, top_m, ia=None, ib=None, exact: bool = False) -> float:
    """Mean matched correlation: the dense cost while it fits ``dense_limit``, else the sparse
    candidate matching streaming correlation blocks (assignment.match_blocks)."""
    limit, m = _limits(dense_limit, top_m)
    if la.z.shape[1] * lb.z.shape[1] <= limit:
        cost = _correlation_cost(la, lb)
        return _matched_mean(cost if ia is None else cost[np.ix_(ia, ib)])
    n_a = la.z.shape[1] if ia is None else len(ia)
    n_b = lb.z.shape[1] if ib is None else len(ib)
    rows = max(1, min(n_a, CORR_BYTES // (8 * lb.z.shape[1])))
    return _assignment.match_blocks(n_a, n_b, _correlation_blocks(la, lb, ia, ib), dense_limit=limit, top_m=m,
                                    exact=exact, block_rows=rows).mean


# --------------------------------------------------------------------------- single metrics
def pw_mcc(dec_a: Matrix, dec_b: Matrix, *, dense_limit: float | None = None, top_m: int | None = None,
           exact: bool = False) -> float:
    """PW-MCC (Song et al. 2025): Hungarian one-to-one matching of unit decoder rows on cost
    ``1 - cos`` (signed cosine); the mean matched signed cosine over ``min(d_sae_a, d_sae_b)`` pairs.
    Exact while ``d_sae_a * d_sae_b <= dense_limit`` (default ``assignment.DENSE_LIMIT``), else
    the sparse top-``top_m`` candidate matching (``husai_core.assignment``), certified optimal
    when ``exact=True`` (extra similarity passes)."""
    dev = _device_of(dec_a, dec_b, device=None)
    a, b = _unit(dec_a, "dec_a", dev), _unit(dec_b, "dec_b", dev)
    _check_same(a, b, "dec_a and dec_b")
    return _match_rows(a, b, dense_limit, top_m, exact).mean


def shared_latent_fraction(dec_a: Matrix, enc_a: Matrix, dec_b: Matrix, enc_b: Matrix, threshold: float = 0.7, *,
                           dense_limit: float | None = None, top_m: int | None = None, exact: bool = False) -> float:
    """Shared-latent fraction (Paulo & Belrose 2025).

    Hungarian one-to-one matching of the latents on cost ``1 - cos`` of the unit decoder rows
    (signed cosine; the paper allows matching on encoder or decoder vectors); a matched pair is
    shared when its decoder cosine and its encoder cosine (encoder rows ``(d_sae, d_in)``, i.e.
    W_enc transposed, unit-normalised, signed) are both strictly greater than ``threshold``,
    as in the paper ("greater than 0.7 according to both the encoder and decoder weights").
    Value = shared pairs / ``min(d_sae_a, d_sae_b)``. ``dense_limit``/``top_m``/``exact``: as in ``pw_mcc``.
    """
    thr = _check_thresholds([threshold])[0]
    dev = _device_of(dec_a, enc_a, dec_b, enc_b, device=None)
    da, db = _unit(dec_a, "dec_a", dev), _unit(dec_b, "dec_b", dev)
    ea, eb = _unit(enc_a, "enc_a", dev), _unit(enc_b, "enc_b", dev)
    _check_same(da, db, "dec_a and dec_b")
    _check_same(ea, eb, "enc_a and enc_b")
    for d, e, s in ((da, ea, "a"), (db, eb, "b")):
        if d.shape[0] != e.shape[0]:
            raise HusaiError(f"dec_{s} has {d.shape[0]} rows but enc_{s} has {e.shape[0]} (both must be (d_sae, d))")
    m = _match_rows(da, db, dense_limit, top_m, exact)
    return _shared(da, db, ea, eb, m.rows, m.cols, thr)


def _shared(da, db, ea, eb, rows, cols, thr) -> float:
    shared = (_pair_dots(da, db, rows, cols) > thr) & (_pair_dots(ea, eb, rows, cols) > thr)
    return float(shared.sum() / len(rows))


def activation_mcc(z_a: Matrix, z_b: Matrix, *, dense_limit: float | None = None, top_m: int | None = None,
                   exact: bool = False) -> float:
    """Activation matching: Pearson correlation (float64) between every latent (column) of
    ``z_a`` and of ``z_b`` (both (n_rows, d_sae), the SAEs' latents on the same rows; a column
    constant on these rows correlates 0 with everything), Hungarian one-to-one matching on cost
    ``1 - corr``; the mean matched correlation over ``min(d_sae_a, d_sae_b)`` pairs. Above
    ``dense_limit`` the correlation blocks are streamed and only the top-``top_m`` per latent
    kept (sparse candidate matching, ``husai_core.assignment.match_blocks``; ``exact=True``
    certifies it optimal, streaming the blocks again)."""
    dev = _device_of(z_a, z_b, device=None)
    return _activation_match(_latent_stats(z_a, "z_a", dev), _latent_stats(z_b, "z_b", dev), dense_limit, top_m,
                             exact=exact)


# --------------------------------------------------------------------------- the family
def _keys(with_activation: bool) -> list[str]:
    return [f"{m}/{s}" for m in METRICS for s in SCOPES if with_activation or m != "activation_mcc"]


def _scope_values(c: np.ndarray, pa: _Prep, pb: _Prep, ia, ib, thr: float, act_cost) -> dict[str, float]:
    """All metrics of one scope; ``ia``/``ib`` index the latents in scope (None: all)."""
    da, ea, db, eb = pa.dec, pa.enc, pb.dec, pb.enc
    if ia is not None:
        c = c[np.ix_(ia, ib)]
        ta, tb = torch.from_numpy(ia).to(da.device), torch.from_numpy(ib).to(db.device)
        da, ea, db, eb = da[ta], ea[ta], db[tb], eb[tb]
    out = {"pwmcc": _pwmcc_of(c, signed=False), "pwmcc_signed": _pwmcc_of(c, signed=True)}
    rows, cols = _match(np.subtract(1.0, c, dtype=np.float64))  # one solve for pw_mcc and shared
    out["pw_mcc"] = float(_pair_dots(da, db, rows, cols).mean())
    out["shared_latent"] = _shared(da, db, ea, eb, rows, cols, thr)
    if act_cost is not None:
        out["activation_mcc"] = _matched_mean(act_cost if ia is None else act_cost[np.ix_(ia, ib)])
    return out


def _scope_values_large(pa: _Prep, pb: _Prep, ia, ib, thr: float, limit: float, top_m: int,
                        exact: bool = False) -> dict[str, float]:
    """``_scope_values`` without any d_sae x d_sae matrix: PWMCC (both forms) from one tiled
    extrema pass, one (sparse above ``limit``) matching for pw_mcc and shared, and activation
    matching on streamed correlation blocks."""
    da, ea, db, eb = pa.dec, pa.enc, pb.dec, pb.enc
    if ia is not None:
        ta, tb = torch.from_numpy(ia).to(da.device), torch.from_numpy(ib).to(db.device)
        da, ea, db, eb = da[ta], ea[ta], db[tb], eb[tb]
    ext = _assignment.extrema(da, db)
    out = {"pwmcc": _assignment.pwmcc_from_extrema(*ext, signed=False),
           "pwmcc_signed": _assignment.pwmcc_from_extrema(*ext, signed=True)}
    m = _assignment.match_units(da, db, "cos", dense_limit=limit, top_m=top_m, exact=exact)  # pw_mcc and shared
    out["pw_mcc"] = m.mean
    out["shared_latent"] = _shared(da, db, ea, eb, m.rows, m.cols, thr)
    if pa.lat is not None and pb.lat is not None:
        out["activation_mcc"] = _activation_match(pa.lat, pb.lat, limit, top_m, ia, ib, exact)
    return out


def _pair_values(pa: _Prep, pb: _Prep, thr: float, names: tuple[str, str] = ("a", "b"),
                 dense_limit: float | None = None, top_m: int | None = None, exact: bool = False) -> dict[str, float]:
    _check_same(pa.dec, pb.dec, f"{names[0]}.decoder and {names[1]}.decoder")
    _check_same(pa.enc, pb.enc, f"{names[0]}.encoder and {names[1]}.encoder")
    for p, nm in zip((pa, pb), names):
        if len(p.alive) == 0:
            raise HusaiError(f"{nm} has no alive latent (none fired on the held-out rows): alive-scope metrics are undefined")
    limit, m = _limits(dense_limit, top_m)
    if pa.dec.shape[0] * pb.dec.shape[0] <= limit:  # small: one dense cosine matrix serves every metric
        c = _cosines(pa.dec, pb.dec)
        act_cost = None if pa.lat is None or pb.lat is None else _correlation_cost(pa.lat, pb.lat)
        scope = lambda ia, ib: _scope_values(c, pa, pb, ia, ib, thr, act_cost)  # noqa: E731
    else:
        scope = lambda ia, ib: _scope_values_large(pa, pb, ia, ib, thr, limit, m, exact)  # noqa: E731
    everything = scope(None, None)
    if len(pa.alive) == pa.dec.shape[0] and len(pb.alive) == pb.dec.shape[0]:
        alive = everything  # nothing dead: the alive scope is the same computation
    else:
        alive = scope(pa.alive, pb.alive)
    return {f"{m}/{s}": vals[m] for m in METRICS for s, vals in (("all", everything), ("alive", alive)) if m in vals}


def pair_family(a: SAEView, b: SAEView, threshold: float = 0.7, *, dense_limit: float | None = None,
                top_m: int | None = None, exact: bool = False) -> dict[str, float]:
    """Every metric of ``METRICS`` in every scope of ``SCOPES`` for one pair of SAEs.

    Keys ``"<metric>/<scope>"`` (e.g. ``"pw_mcc/alive"``); ``activation_mcc/*`` only when both
    views carry latents. One Hungarian solve per scope serves pw_mcc and shared_latent (both
    match on decoder signed cosine). Raises ``HusaiError`` if a view has no alive latent.
    Above ``d_sae_a * d_sae_b > dense_limit`` (default ``assignment.DENSE_LIMIT``) no
    d_sae x d_sae matrix is built: chunked PWMCC extrema, sparse top-``top_m`` matchings
    (certified optimal with ``exact=True``).
    """
    thr = _check_thresholds([threshold])[0]
    dev = _device_of(a.decoder, device=None) if isinstance(a, SAEView) else torch.device("cpu")
    return _pair_values(_prepare_view(a, "a", dev), _prepare_view(b, "b", dev), thr,
                        dense_limit=dense_limit, top_m=top_m, exact=exact)


def _check_pairs(pairs: Iterable[Sequence[int]] | None, n: int) -> list[tuple[int, int]]:
    if pairs is None:
        return [(i, j) for i in range(n) for j in range(i + 1, n)]
    out = []
    for p in pairs:
        try:
            i, j = (int(v) for v in p)
        except (TypeError, ValueError):
            raise HusaiError(f"pairs must hold (i, j) index pairs, got {p!r}") from None
        if not (0 <= i < n and 0 <= j < n) or i == j:
            raise HusaiError(f"pair {p!r} is not two distinct indices into {n} views")
        out.append((min(i, j), max(i, j)))
    return sorted(set(out))


def family_matrices(views: Sequence[SAEView], threshold: float = 0.7, progress: bool = False,
                    pairs: Iterable[Sequence[int]] | None = None, *, dense_limit: float | None = None,
                    top_m: int | None = None, exact: bool = False) -> dict[str, np.ndarray]:
    """For each key of ``pair_family`` an ``(n, n)`` symmetric float64 matrix, 1.0 on the
    diagonal and NaN for pairs not computed. ``pairs``: the (i, j) pairs to compute (default
    all i < j). Each view is validated and row-normalised once. Activation keys are present
    when at least two views carry latents (NaN for pairs where one does not).
    ``dense_limit``/``top_m``/``exact``: as in ``pair_family``."""
    from tqdm.auto import tqdm

    if isinstance(views, SAEView):
        raise HusaiError("views must be a sequence of SAEView, got a single SAEView")
    views = list(views)
    if len(views) < 2:
        raise HusaiError(f"need at least 2 views, got {len(views)}")
    thr = _check_thresholds([threshold])[0]
    todo = _check_pairs(pairs, len(views))
    dev = _device_of(*(v.decoder for v in views if isinstance(v, SAEView)), device=None)
    preps = [_prepare_view(v, f"views[{i}]", dev) for i, v in enumerate(views)]
    n = len(views)
    out = {k: np.full((n, n), np.nan) for k in _keys(sum(p.lat is not None for p in preps) >= 2)}
    for m in out.values():
        np.fill_diagonal(m, 1.0)
    for i, j in tqdm(todo, disable=not progress, desc="SAE pairs"):
        for k, v in _pair_values(preps[i], preps[j], thr, (f"views[{i}]", f"views[{j}]"),
                                 dense_limit=dense_limit, top_m=top_m, exact=exact).items():
            out[k][i, j] = out[k][j, i] = v
    return out
