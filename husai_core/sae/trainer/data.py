"""The rows a step trains on: shuffled-pass samplers (in memory, or a bijection for large sources),
streamed rows of an activation source, init / eval rows and the data checks.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ...errors import HusaiError
from ...sources import INIT_MAX_ROWS, eval_rows, evenly_spaced, is_source, mean_rows
from ..build import DATA_STREAM, derived_seed
from ..config import SAEConfig


class _RowSampler:
    """Shuffled passes over ``n`` rows from a seeded generator (no epochs in the API)."""

    def __init__(self, n: int, seed: int):
        self.n = n
        self.gen = torch.Generator().manual_seed(derived_seed(seed, DATA_STREAM))
        self.perm = torch.randperm(n, generator=self.gen)
        self.pos = 0

    def take(self, b: int) -> Tensor:
        parts = []
        while b > 0:
            if self.pos >= self.n:
                self.perm = torch.randperm(self.n, generator=self.gen)
                self.pos = 0
            part = self.perm[self.pos : self.pos + b]
            self.pos += len(part)
            b -= len(part)
            parts.append(part)
        return parts[0] if len(parts) == 1 else torch.cat(parts)


# Streamed sources (husai_core.sources): up to this many rows the shuffled passes use an explicit
# permutation (_RowSampler, 8 bytes per row: the in-memory path's data order, so a source trains
# exactly like its rows in memory); above it a seeded bijection (_BijectionSampler, O(1) memory).
PERM_MAX_ROWS = 2**22


class _BijectionSampler:
    """Shuffled passes over ``n`` rows without storing a permutation: pass p visits row
    F_p(i) at position i, with F_p a 4-round Feistel bijection of [0, 4^h) (4^h >= n) keyed
    from the seeded generator and cycle-walked into [0, n)."""

    ROUNDS = 4

    def __init__(self, n: int, seed: int):
        self.n = n
        self.half = max(1, math.ceil(math.log2(max(n, 2)) / 2))
        self.mask = (1 << self.half) - 1
        self.gen = torch.Generator().manual_seed(derived_seed(seed, DATA_STREAM))
        self.keys = self._new_keys()
        self.pos = 0

    def _new_keys(self) -> list[int]:
        return torch.randint(0, 2**31 - 1, (self.ROUNDS,), generator=self.gen).tolist()

    def _f(self, v: Tensor) -> Tensor:
        left, right = v >> self.half, v & self.mask
        for key in self.keys:
            h = ((right & 0xFFFFFFFF) * 0x5BD1E995 + key) & 0xFFFFFFFF
            h = h ^ (h >> 15)
            h = ((h & 0x7FFFFFFF) * 0x2C1B3C6D) & 0xFFFFFFFF
            left, right = right, left ^ ((h ^ (h >> 13)) & self.mask)
        return (left << self.half) | right

    def _perm(self, pos: Tensor) -> Tensor:
        out = self._f(pos)
        bad = out >= self.n
        while bool(bad.any()):  # cycle walking: a bijection of [0, 4^h) restricted to [0, n)
            out[bad] = self._f(out[bad])
            bad = out >= self.n
        return out

    def take(self, b: int) -> Tensor:
        parts = []
        while b > 0:
            if self.pos >= self.n:
                self.keys = self._new_keys()
                self.pos = 0
            m = min(b, self.n - self.pos)
            parts.append(self._perm(torch.arange(self.pos, self.pos + m)))
            self.pos += m
            b -= m
        return parts[0] if len(parts) == 1 else torch.cat(parts)


def _sampler(n: int, seed: int, streamed: bool) -> _RowSampler | _BijectionSampler:
    return _BijectionSampler(n, seed) if streamed and n > PERM_MAX_ROWS else _RowSampler(n, seed)


class _StreamRows:
    """Stands in for the in-memory activation tensor when training on a source: ``rows[idx]``
    reads rows ``idx`` (any shape) from the source (``take``), checks them, and returns float32
    on ``device`` times ``scale`` (the same float32 product the in-memory path makes).

    Memory per call: ~3 x idx.numel() x d_in x 4 bytes (source gather, float32 rows, scaled copy).
    """

    def __init__(self, source: Any, device: torch.device, scale: float = 1.0):
        self.source, self.device, self.scale = source, device, scale
        self.shape = (len(source), int(source.shape[1]))

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, idx: Tensor) -> Tensor:
        rows = torch.as_tensor(self.source.take(idx.reshape(-1).cpu()), dtype=torch.float32)
        if rows.shape != (idx.numel(), self.shape[1]):
            raise HusaiError(f"the activation source returned rows of shape {tuple(rows.shape)}, "
                             f"expected ({idx.numel()}, {self.shape[1]})")
        if not torch.isfinite(rows).all():
            raise HusaiError("activations contain NaN or infinite values (found while streaming rows from the source)")
        rows = rows.to(self.device)
        if self.scale != 1.0:
            rows = rows * self.scale
        return rows.view(*idx.shape, self.shape[1])

    def subset(self, m: int) -> Tensor:
        """``m`` evenly spaced rows (round(linspace(0, n-1, m))) in memory, as ``self[...]``."""
        return self[evenly_spaced(self.shape[0], m)]


def _check_source_data(cfg: SAEConfig, x: Any, x_target: Any) -> tuple[Any, Any]:
    """Checks for streamed training (``x`` and/or ``x_target`` a source); tensors are wrapped
    as sources. Finiteness is checked batch by batch while training (``_StreamRows``)."""
    from ...sources import as_source

    x = as_source(x)
    n, width = len(x), int(x.shape[1])
    if width != cfg.d_in:
        raise HusaiError(f"activations have width {width} but cfg.d_in is {cfg.d_in}")
    if n == 0:
        raise HusaiError("activations have no rows")
    t = None
    if cfg.transcoder:
        if x_target is None:
            raise HusaiError("cfg.transcoder is set: pass x_target (the activations to reconstruct)")
        t = as_source(x_target)
        if int(t.shape[1]) != cfg.d_target:
            raise HusaiError(f"x_target has width {int(t.shape[1])} but the transcoder's d_out is {cfg.d_target}")
        if len(t) != n:
            raise HusaiError(f"x_target has {len(t)} rows but x has {n}")
    elif x_target is not None:
        raise HusaiError("x_target was given but cfg.transcoder is False")
    return x, t


def _init_rows(x: Any, cfg: SAEConfig, device: torch.device, scale: float) -> Tensor | None:
    """Rows for ``init_biases_from_data`` from a source: ``geometric_median`` gets the <= 8192
    evenly spaced rows it would pick from the whole tensor (so the same b_dec), ``mean`` one
    row holding the exact streamed mean, ``zeros`` nothing."""
    if cfg.b_dec_init == "zeros":
        return None
    if cfg.b_dec_init == "mean":
        return mean_rows(x, scale).float().to(device).unsqueeze(0)
    return _StreamRows(x, device, scale).subset(INIT_MAX_ROWS)


def _eval_rows(x: Any, t: Any, device: torch.device) -> tuple[Tensor, Tensor | None]:
    """The rows the final training-row metrics use: all rows of an in-memory tensor; for a
    source the same ``FINAL_EVAL_ROWS`` evenly spaced rows as in memory (fewer when they would
    pass ``sources.EVAL_MAX_BYTES``), read from disk."""
    if not is_source(x):
        return (x.to(device=device, dtype=torch.float32),
                None if t is None else t.to(device=device, dtype=torch.float32))
    idx = evenly_spaced(len(x), min(FINAL_EVAL_ROWS, eval_rows(len(x), int(x.shape[1]))))
    return (_StreamRows(x, device)[idx], None if t is None else _StreamRows(t, device)[idx])


def _check_data(cfg: SAEConfig, x: Any, x_target: Any) -> tuple[Tensor, Tensor | None]:
    if not isinstance(cfg, SAEConfig):
        raise HusaiError(f"expected an SAEConfig, got {type(cfg).__name__}")
    if is_source(x) or is_source(x_target):
        return _check_source_data(cfg, x, x_target)
    x = torch.as_tensor(x)
    if x.dim() < 2:
        raise HusaiError(f"activations must have shape (rows, d_in), got {tuple(x.shape)}")
    if x.shape[-1] != cfg.d_in:
        raise HusaiError(f"activations have width {x.shape[-1]} but cfg.d_in is {cfg.d_in}")
    x = x.reshape(-1, x.shape[-1])
    if x.shape[0] == 0:
        raise HusaiError("activations have no rows")
    if not torch.is_floating_point(x):
        raise HusaiError(f"activations must be floating point, got {x.dtype}")
    t = None
    if cfg.transcoder:
        if x_target is None:
            raise HusaiError("cfg.transcoder is set: pass x_target (the activations to reconstruct)")
        t = torch.as_tensor(x_target)
        if t.dim() < 2 or t.shape[-1] != cfg.d_target:
            raise HusaiError(f"x_target has width {t.shape[-1] if t.dim() else 0} but the transcoder's d_out is {cfg.d_target}")
        t = t.reshape(-1, t.shape[-1])
        if t.shape[0] != x.shape[0]:
            raise HusaiError(f"x_target has {t.shape[0]} rows but x has {x.shape[0]}")
    elif x_target is not None:
        raise HusaiError("x_target was given but cfg.transcoder is False")
    if not torch.isfinite(x).all() or (t is not None and not torch.isfinite(t).all()):
        raise HusaiError("activations contain NaN or infinite values")
    return x, t


# The final training-row metrics (``TrainResult.metrics``) of in-memory data are ``evaluate_sae``
# on all rows when there are at most this many, else on this many evenly spaced rows
# (round(linspace(0, n-1, m)), the rule of the b_dec init): the evaluation is a fixed cost per
# call that must stay small next to training. ``metrics["n_rows"]`` (= ``dead_window_tokens``)
# records how many rows were evaluated.
FINAL_EVAL_ROWS = 8192
