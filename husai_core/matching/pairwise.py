"""The metrics of one pair of SAEs: PW-MCC, shared-latent fraction, activation MCC."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .. import assignment as _assignment
from ..decoders import _as_matrix, _check_thresholds, _device_of, _unit_rows
from ..errors import HusaiError
from .correlation import _activation_match, _latent_stats
from .views import Matrix, _limits


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


def _match_rows(a: Tensor, b: Tensor, dense_limit, top_m, exact: bool = False) -> _assignment.Matching:
    """Hungarian matching of unit rows on signed cosine (dense, or sparse above dense_limit)."""
    limit, m = _limits(dense_limit, top_m)
    return _assignment.match_units(a, b, "cos", dense_limit=limit, top_m=m, exact=exact)


def _pair_dots(a: Tensor, b: Tensor, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Float64 dot products of matched unit rows a[rows[k]] . b[cols[k]] (exact up to the unit rows)."""
    ra = a[torch.from_numpy(rows).to(a.device)].double()
    rb = b[torch.from_numpy(cols).to(b.device)].double()
    return (ra * rb).sum(dim=1).cpu().numpy()


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
