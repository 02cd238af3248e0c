"""What training returns (``TrainResult``, ``LOG_COLUMNS``) and its schedules: log-spaced history
steps, the input scale and the learning-rate multiplier.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import pandas as pd
import torch
from torch import Tensor

from ...errors import HusaiError
from ...sources import is_source, mean_sq_norm
from ..base import BaseSAE
from ..config import SAEConfig


LOG_COLUMNS = ["seed", "step", "tokens", "lr", "loss", "mse", "l1", "l0", "aux", "matryoshka", "ev", "dead_fraction"]
MODES = ("auto", "sequential", "batched")
# Optional extra training term ``extra_loss(sae, step) -> scalar tensor`` (e.g. a consistency
# regulariser of husai_core.objectives). It is added to the loss that is minimised and logged
# in its own history column ``extra``; the ``loss`` column stays the SAE's own loss.
ExtraLoss = Callable[[BaseSAE, int], Tensor]


@dataclass
class TrainResult:
    """A trained SAE (eval mode), its per-step log and its final metrics on the training rows.

    ``history`` has one row per logged step (columns ``LOG_COLUMNS``; ``ev`` is on that
    step's batch, ``dead_fraction`` uses the ``dead_tokens`` window). ``metrics`` is
    ``evaluate_sae`` on the training rows (all of them up to ``FINAL_EVAL_ROWS`` = 8192, else
    8192 evenly spaced ones; a streamed source: ``sources.eval_rows`` evenly spaced rows;
    ``n_rows`` = ``dead_window_tokens`` says how many) plus ``dead_fraction_train`` (latents idle for
    ``dead_tokens`` tokens at the end of training). ``info`` records seed, device, mode and
    time (for seeds trained as one batched stack: the whole stack's time).
    """

    sae: BaseSAE
    history: pd.DataFrame
    metrics: dict[str, Any]
    info: dict[str, Any] = field(default_factory=dict)
    snapshots: dict[int, dict[str, Tensor]] = field(default_factory=dict)  # steps done -> public tensors


def log_spaced_steps(steps: int, first: int = 25) -> list[int]:
    """Halving checkpoints ``steps``, ``steps // 2``, ``steps // 4``, ... down to ``first``
    (ascending): the last doubling (``steps // 2`` to ``steps``) is always kept, which is what
    the convergence criterion (``convergence.plateau``) compares."""
    out, s = [], int(steps)
    while s >= max(1, int(first)):
        out.append(s)
        s //= 2
    return sorted(out) or [int(steps)]


def training_scale(cfg: SAEConfig, x: Any) -> float:
    """The factor ``cfg`` multiplies input rows by before training (1 without normalisation):
    thresholds, bandwidths and penalty scales must be given in these units."""
    return input_scale(x) if cfg.normalize_activations == "expected_average_only_in" else 1.0


# _mean_sq_norm_rows: rows per float64 chunk at least this many, at most this many bytes otherwise.
_SCALE_CHUNK_ROWS, _SCALE_CHUNK_BYTES = 1024, 4 * 2**20


def _mean_sq_norm_rows(x: Tensor) -> float:
    """``float(x.double().pow(2).sum(-1).mean())``, the same float, without a float64 copy of
    all of ``x`` when that is large: the float64 squares and row sums are taken chunk by chunk
    with the same kernels (each row is reduced alone, so its sum does not depend on the
    chunking), then the same mean. Chunked only for contiguous CPU tensors of width <= 8192 with
    more than one chunk of rows (the cases checked to match bit for bit)."""
    n, d = x.shape[0], x.shape[-1]
    m = max(_SCALE_CHUNK_ROWS, _SCALE_CHUNK_BYTES // (8 * d))
    if x.ndim != 2 or x.device.type != "cpu" or not x.is_contiguous() or d > 8192 or n <= m:
        return float(x.double().pow(2).sum(-1).mean())
    sums = torch.empty(n, dtype=torch.float64)
    buf = torch.empty(m, d, dtype=torch.float64)
    for lo in range(0, n, m):
        b = buf[: min(m, n - lo)]
        torch.sum(b.copy_(x[lo : lo + m]).pow_(2), -1, out=sums[lo : lo + m])
    return float(sums.mean())


def input_scale(x: Tensor) -> float:
    """SAELens ``expected_average_only_in``: the factor that makes mean ||x||^2 equal d_in.
    An activation source (``husai_core.sources``) is read in chunks; a large CPU tensor is
    summed in float64 chunks (``_mean_sq_norm_rows``)."""
    ms = mean_sq_norm(x) if is_source(x) else _mean_sq_norm_rows(x)
    if not math.isfinite(ms):
        raise HusaiError("activations contain NaN or infinite values")
    if not ms > 0:
        raise HusaiError("cannot normalise activations whose mean squared norm is 0")
    return math.sqrt(x.shape[-1] / ms)


def lr_multiplier(step: int, cfg: SAEConfig) -> float:
    """Linear warm-up to 1 over ``warmup_steps``, then linear decay to 0 over the last
    ``(1 - decay_start_frac)`` of the steps (0-based ``step``)."""
    warm = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps > 0 else 1.0
    start = int(cfg.decay_start_frac * cfg.steps)
    decay = 1.0
    if step >= start and cfg.steps > start:
        decay = (cfg.steps - step) / (cfg.steps - start)
    return warm * decay
