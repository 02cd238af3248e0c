"""Latent activations: per-latent statistics, correlations between two SAEs' latents (dense or
sparse, streamed in row and column blocks under ``CORR_BYTES``) and their Hungarian matching.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from .. import assignment as _assignment
from ..decoders import _as_matrix, _unit_rows
from ..errors import HusaiError
from .views import Matrix, SAEView, _alive_mask, _limits, _matched_mean


# Bytes of float64 work held at once by the correlation pass (standardised column blocks of
# both SAEs and one correlation block), besides the dense cost matrix itself.
CORR_BYTES = 64 << 20
_MAX_CORR_COLS = 2048  # latents per correlation block (a 2048 x 2048 float64 block is 32 MiB)
# Latents with at most this fraction of non-zero entries take the sparse correlation path:
# a sparse x dense product costs nnz(z_b) * d_sae_a multiply-adds instead of n_rows * d_sae_b * d_sae_a.
SPARSE_DENSITY = 0.1


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
