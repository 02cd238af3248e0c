"""Blocked kernels shared by the matching paths: similarity products into a buffer, row and column
extrema (PWMCC) in one pass, block shapes and BLAS thread control.
"""

from __future__ import annotations

import math
import threading

import numpy as np
import torch


# Bytes of one similarity chunk on the sparse path, and the fewest rows of A per chunk (the
# per-column bound on the m-th best value is tighter with more rows: at 131,072 columns 512
# rows are 256 MiB).
CHUNK_BYTES = 64 << 20
MIN_CHUNK_ROWS = 512
# Elements of one float32 similarity chunk of the PWMCC passes (32 MiB): few, large BLAS calls
# (each call of a multi-threaded BLAS waits for its threads, which is slow on a loaded machine),
# and a buffer within glibc's dynamic mmap threshold (32 MiB), so repeated calls reuse heap
# pages instead of faulting in fresh ones.
BLOCK_ELEMENTS = 1 << 23
_GROUP = 32  # group width of the two-stage exact top-m along rows
_WORKSPACE = threading.local()


def _workspace(rows: int, cols: int) -> np.ndarray:
    """A float32 ``rows x cols`` block buffer kept per thread between calls (at most
    BLOCK_ELEMENTS, 32 MiB; larger requests get a fresh array). A fresh multi-MiB buffer on
    every call costs a page fault per 4 KiB when first written: at 1,024 x 1,024 that was ~1 ms
    of a ~3 ms PWMCC, as much as the dense peer's extra copies."""
    need = rows * cols
    if need > BLOCK_ELEMENTS:
        return np.empty((rows, cols), dtype=np.float32)
    flat = getattr(_WORKSPACE, "buf", None)
    if flat is None or flat.size < need:
        flat = _WORKSPACE.buf = np.empty(need, dtype=np.float32)
    return flat[:need].reshape(rows, cols)


def mm_into(a: torch.Tensor, bt: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``out = a @ bt`` (float32). On CPU through numpy's BLAS (OpenBLAS; ``out`` may have a
    row stride larger than its width); elsewhere ``torch.mm``."""
    if out.device.type == "cpu" and out.dtype == torch.float32 and a.dtype == torch.float32:
        np.matmul(a.numpy(), bt.numpy(), out=out.numpy())
        return out
    return torch.mm(a, bt, out=out)


def _block_shape(n_a: int, n_b: int, rows: int | None, cols: int | None) -> tuple[int, int]:
    cols = min(cols or n_b, n_b)
    return min(rows or max(1, BLOCK_ELEMENTS // cols), n_a), cols


def maxima_cpu(a: np.ndarray, b: np.ndarray, signed: bool = False, rows: int | None = None,
               cols: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Row and column maxima of ``|a @ b.T|`` (``signed``: of ``a @ b.T``) for float32 numpy
    rows, one ``rows x cols`` block at a time (default: all columns and
    ``BLOCK_ELEMENTS // n_b`` rows, i.e. 32 MiB): each block is one BLAS product into a reused
    buffer, then reduced in place (no ``abs`` copy) by single-threaded numpy reductions."""
    n_a, n_b = a.shape[0], b.shape[0]
    rows, cols = _block_shape(n_a, n_b, rows, cols)
    init = -np.inf if signed else 0.0  # |cos| >= 0; signed maxima must start below -1
    row_max = np.full(n_a, init, dtype=np.float32)
    col_max = np.full(n_b, init, dtype=np.float32)
    buf = _workspace(rows, cols)
    bt = b.T
    for i0 in range(0, n_a, rows):
        i1 = min(i0 + rows, n_a)
        r = row_max[i0:i1]
        for j0 in range(0, n_b, cols):
            j1 = min(j0 + cols, n_b)
            c = np.matmul(a[i0:i1], bt[:, j0:j1], out=buf[: i1 - i0, : j1 - j0])
            if not signed:
                np.abs(c, out=c)
            np.maximum(r, c.max(axis=1), out=r)
            q = col_max[j0:j1]
            np.maximum(q, c.max(axis=0), out=q)
    return row_max, col_max


def extrema(a: torch.Tensor, b: torch.Tensor, rows: int | None = None,
            cols: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Row max, row min, column max and column min of ``a @ b.T`` (float32 tensors on one
    device) in one tiled pass: the signed and the absolute PWMCC both follow
    (``max|c| = max(max c, -min c)``) without holding an ``n_a x n_b`` matrix."""
    n_a, n_b = a.shape[0], b.shape[0]
    rows, cols = _block_shape(n_a, n_b, rows, cols)
    dev = a.device
    r_max = torch.full((n_a,), -math.inf, device=dev)
    r_min = torch.full((n_a,), math.inf, device=dev)
    c_max = torch.full((n_b,), -math.inf, device=dev)
    c_min = torch.full((n_b,), math.inf, device=dev)
    cpu = dev.type == "cpu"
    buf = torch.empty(rows, cols, device=dev)
    bt = b.T
    for i0 in range(0, n_a, rows):
        i1 = min(i0 + rows, n_a)
        for j0 in range(0, n_b, cols):
            j1 = min(j0 + cols, n_b)
            c = buf[: i1 - i0, : j1 - j0]
            if cpu:  # numpy BLAS and single-threaded numpy reductions on the cache-resident tile
                x = np.matmul(a[i0:i1].numpy(), bt[:, j0:j1].numpy(), out=c.numpy())
                for out, red, axis in ((r_max[i0:i1], np.maximum, 1), (r_min[i0:i1], np.minimum, 1),
                                       (c_max[j0:j1], np.maximum, 0), (c_min[j0:j1], np.minimum, 0)):
                    o = out.numpy()
                    red(o, red.reduce(x, axis=axis), out=o)
            else:
                torch.mm(a[i0:i1], bt[:, j0:j1], out=c)
                lo, hi = torch.aminmax(c, dim=1)
                torch.maximum(r_max[i0:i1], hi, out=r_max[i0:i1])
                torch.minimum(r_min[i0:i1], lo, out=r_min[i0:i1])
                lo, hi = torch.aminmax(c, dim=0)
                torch.maximum(c_max[j0:j1], hi, out=c_max[j0:j1])
                torch.minimum(c_min[j0:j1], lo, out=c_min[j0:j1])
    return r_max, r_min, c_max, c_min


def pwmcc_from_extrema(r_max, r_min, c_max, c_min, signed: bool) -> float:
    """PWMCC (``signed``: signed PWMCC) from ``extrema``; float64 means."""
    if not signed:
        r_max, c_max = torch.maximum(r_max, -r_min), torch.maximum(c_max, -c_min)
    return 0.5 * (r_max.double().mean().item() + c_max.double().mean().item())


def _tqdm(total: int, progress: bool, desc: str):
    from ..progress import tqdm

    return tqdm(total=total, disable=not progress, desc=desc, leave=False)
