"""Max-|cos| PWMCC (signed or not) of one pair and of every pair of a set, in blocked products
whose chunk sizes are set here.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import numpy as np
import torch

from ..assignment import maxima_cpu, mm_into
from ..errors import HusaiError
from ..decoders import Decoder, _check_list, _prepare, _prepare_stacked


# Elements per similarity chunk (32 MiB of float32): big enough that the matmul runs near
# BLAS speed, small enough to stay far below memory limits for any realistic d_sae.
CHUNK_ELEMENTS = 1 << 23
# pwmcc_matrix multiplies one dictionary against several others at once (fewer, larger ops:
# each torch op costs a thread synchronisation, which dominates for small dictionaries) but
# keeps at least this many rows per chunk so the matmul stays efficient.
MIN_CHUNK_ROWS = 256


def _check_chunk(chunk_size: int | None, n_cols: int, n_rows: int) -> int:
    if chunk_size is None:
        return max(1, min(n_rows, CHUNK_ELEMENTS // max(n_cols, 1)))
    if int(chunk_size) != chunk_size or chunk_size < 1:
        raise HusaiError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    return int(chunk_size)


# --------------------------------------------------------------------------- core pass
class _PairMaxima(NamedTuple):
    row_max: torch.Tensor  # (n_a,) best |cos| (signed: best cos) of each row of A against B
    col_max: torch.Tensor  # (n_b,) best |cos| (signed: best cos) of each row of B against A
    row_arg: torch.Tensor | None
    col_arg: torch.Tensor | None


def _block_maxima(a: torch.Tensor, bs: torch.Tensor, chunk_size: int | None,
                  signed: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """|cos| maxima (``signed``: cos maxima) of ``a`` (n_a, d) against m stacked dictionaries
    ``bs`` (m, n_b, d) in one chunked pass: row maxima (n_a, m) and column maxima (m, n_b)."""
    m, n_b, _ = bs.shape
    n_a = a.shape[0]
    chunk = _check_chunk(chunk_size, m * n_b, n_a)
    if a.device.type == "cpu":  # cache-sized tiles, BLAS product, numpy reductions: same values
        pairs = [maxima_cpu(a.numpy(), b.numpy(), signed, rows=chunk_size and chunk) for b in bs]
        return (torch.from_numpy(np.stack([p[0] for p in pairs], axis=1)),
                torch.from_numpy(np.stack([p[1] for p in pairs])))
    row_max = torch.empty(n_a, m, device=a.device)
    if signed:  # signed cos can be negative: running maxima must start below -1
        col_max = torch.full((m, n_b), -math.inf, device=a.device)
    else:
        col_max = torch.zeros(m, n_b, device=a.device)  # |cos| >= 0, so 0 is a safe start
    flat_t = bs.reshape(m * n_b, -1).T
    buf = torch.empty(min(chunk, n_a), m * n_b, device=a.device)  # reused: fresh buffers cost page faults
    for start in range(0, n_a, chunk):
        stop = min(start + chunk, n_a)
        sim = mm_into(a[start:stop], flat_t, buf[: stop - start])
        if not signed:
            sim = sim.abs_()  # in place: no 2nd buffer
        sim = sim.view(stop - start, m, n_b)
        row_max[start:stop] = sim.amax(dim=2)
        torch.maximum(col_max, sim.amax(dim=0), out=col_max)
    return row_max, col_max


def _pair_maxima(a: torch.Tensor, b: torch.Tensor, chunk_size: int | None, with_index: bool = False,
                 signed: bool = False) -> _PairMaxima:
    """One chunked pass over |A B^T| (``signed``: A B^T) keeping row maxima and running column maxima."""
    if not with_index:
        if a.device.type == "cpu":  # the numpy kernel directly: _block_maxima's stacking for
            # several dictionaries costs ~0.25 ms, 4% of a 1,024 x 512 pair (one BLAS product)
            chunk = None if chunk_size is None else _check_chunk(chunk_size, b.shape[0], a.shape[0])
            rows, cols = maxima_cpu(a.numpy(), b.numpy(), signed, rows=chunk)
            return _PairMaxima(torch.from_numpy(rows), torch.from_numpy(cols), None, None)
        rows, cols = _block_maxima(a, b.unsqueeze(0), chunk_size, signed=signed)
        return _PairMaxima(rows[:, 0], cols[0], None, None)
    n_a, n_b = a.shape[0], b.shape[0]
    chunk = _check_chunk(chunk_size, n_b, n_a)
    row_max = torch.empty(n_a, device=a.device)
    if signed:  # signed cos can be negative: running maxima must start below -1
        col_max = torch.full((n_b,), -math.inf, device=a.device)
    else:
        col_max = torch.zeros(n_b, device=a.device)  # |cos| >= 0, so 0 is a safe start
    row_arg = torch.empty(n_a, dtype=torch.long, device=a.device)
    col_arg = torch.zeros(n_b, dtype=torch.long, device=a.device)
    bt = b.T
    buf = torch.empty(min(chunk, n_a), n_b, device=a.device)  # reused: a fresh 32 MiB per chunk costs page faults
    for start in range(0, n_a, chunk):
        stop = min(start + chunk, n_a)
        sim = mm_into(a[start:stop], bt, buf[: stop - start])
        if not signed:
            sim = sim.abs_()  # in place: no second buffer
        row_max[start:stop], row_arg[start:stop] = sim.max(dim=1)
        cvals, cidx = sim.max(dim=0)
        better = cvals > col_max  # strict: ties keep the earliest row, like argmax
        col_max = torch.where(better, cvals, col_max)
        col_arg = torch.where(better, cidx + start, col_arg)
    return _PairMaxima(row_max, col_max, row_arg, col_arg)


def _pwmcc_from(m: _PairMaxima) -> float:
    # float64 means: 16k float32 terms would otherwise lose ~1e-4 relative precision
    return 0.5 * (m.row_max.double().mean().item() + m.col_max.double().mean().item())


# --------------------------------------------------------------------------- PWMCC
def pwmcc(dec_a: Decoder, dec_b: Decoder, chunk_size: int | None = None,
          device: str | torch.device | None = None, *, signed: bool = False) -> float:
    """Pairwise mean max cosine similarity of two dictionaries.

    With unit rows and ``C = |D_a D_b^T|``: ``0.5 * (mean_i max_j C_ij + mean_j max_i C_ij)``.
    ``signed=True`` (signed PWMCC): the same with the signed cosines ``C = D_a D_b^T``, so the
    value lies in [-1, 1] and a feature's negation is no match (negating a one-feature
    dictionary gives -1 here, 1 with the default ``|cos|``).
    Exact (no sampling); memory is ``chunk_size x d_sae_b`` floats at a time
    (default: about 32 MiB). ``device`` defaults to the first tensor input's device.
    """
    a, b = _prepare([dec_a, dec_b], ["dec_a", "dec_b"], device)
    return _pwmcc_from(_pair_maxima(a, b, chunk_size, signed=signed))


def pwmcc_matrix(decoders: Sequence[Decoder], chunk_size: int | None = None,
                 device: str | torch.device | None = None, progress: bool = False, *,
                 signed: bool = False) -> np.ndarray:
    """Symmetric ``(n, n)`` PWMCC over all pairs (diagonal 1); each dictionary is normalised once.
    ``signed=True``: signed PWMCC (see ``pwmcc``).

    With equal d_sae, dictionary i is compared with a group of the following dictionaries in
    one pass (the group is sized so a chunk keeps >= MIN_CHUNK_ROWS rows); ``chunk_size``
    then counts rows of dictionary i per chunk. Results equal the pairwise ``pwmcc``.
    """
    decoders = _check_list(decoders, 2, "decoders")
    mats, stacked = _prepare_stacked(decoders, [f"decoders[{i}]" for i in range(len(decoders))], device)
    n, d_sae = len(mats), mats[0].shape[0]
    out = np.eye(n)
    if stacked is not None:
        group = max(1, CHUNK_ELEMENTS // (MIN_CHUNK_ROWS * d_sae))
        blocks = [(i, j, min(j + group, n)) for i in range(n) for j in range(i + 1, n, group)]
    else:  # unequal widths cannot share one stacked matmul: plain pairwise passes
        blocks = [(i, j, j + 1) for i in range(n) for j in range(i + 1, n)]
    for i, j0, j1 in _maybe_tqdm(blocks, progress, "PWMCC blocks"):
        others = stacked[j0:j1] if stacked is not None else mats[j0].unsqueeze(0)
        rows, cols = _block_maxima(mats[i], others, chunk_size, signed=signed)
        # float64 means: 16k float32 terms would otherwise lose ~1e-4 relative precision
        vals = 0.5 * (rows.double().mean(dim=0) + cols.double().mean(dim=1)).cpu().numpy()
        out[i, j0:j1] = out[j0:j1, i] = vals
    return out


def _maybe_tqdm(items, progress: bool, desc: str):
    if not progress:
        return items
    from ..progress import tqdm

    return tqdm(items, desc=desc)
