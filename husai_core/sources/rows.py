"""Rows of a source: evaluation and held-out rows, the content fingerprint, row statistics and
phase 04's trained / null condition data.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from .source import evenly_spaced, is_source


# Evaluation subsets of streamed data (final training-row metrics, held-out rows of a streamed
# source, BatchTopK calibration): at most this many rows, evenly spaced ...
EVAL_MAX_ROWS = 65_536
# ... and at most this many bytes of float32 (rows = EVAL_MAX_BYTES // (4 * d_in) when smaller).
EVAL_MAX_BYTES = 32 * 2**20
# b_dec initialisation reads at most this many evenly spaced rows (geometric_median's own cap).
INIT_MAX_ROWS = 8192


def eval_rows(n: int, d_in: int) -> int:
    """Rows of an evaluation subset of streamed data: min(n, EVAL_MAX_ROWS, EVAL_MAX_BYTES / (4 d_in))."""
    return max(1, min(int(n), EVAL_MAX_ROWS, EVAL_MAX_BYTES // (4 * int(d_in))))


def heldout_rows(x: Any, idx: torch.Tensor) -> torch.Tensor:
    """Held-out rows to evaluate on, in memory: ``x[idx]`` for a tensor (as before); for a source,
    ``eval_rows`` evenly spaced rows of ``idx`` (all of them when they fit EVAL_MAX_BYTES)."""
    if not is_source(x):
        return x[idx]
    idx = torch.as_tensor(idx)
    return x.take(idx[evenly_spaced(len(idx), eval_rows(len(idx), x.shape[1]))])


def mean_rows(x: Any, scale: float = 1.0) -> torch.Tensor:
    """float64 mean of ``x * scale`` over all rows of a source, streamed."""
    total = torch.zeros(x.shape[1], dtype=torch.float64)
    for chunk in x.iter_chunks():
        total += (chunk * scale if scale != 1.0 else chunk).double().sum(0)
    return total / x.shape[0]


def mean_sq_norm(x: Any) -> float:
    """Mean squared row norm of a source, streamed (float64)."""
    total = 0.0
    for chunk in x.iter_chunks():
        total += float(chunk.double().pow(2).sum())
    return total / x.shape[0]


def _available_memory() -> int | None:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
