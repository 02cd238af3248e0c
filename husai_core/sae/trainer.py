"""Step-based SAE training: one config, one or many seeds, sequential or seed-batched.

Each step draws ``batch_size`` rows from the in-memory activations (shuffled passes driven by
a generator derived from the seed, so the data order is part of the seed), runs the SAE,
and applies Adam with a linear warm-up over ``warmup_steps`` and a linear decay to 0 from
``decay_start_frac * steps`` on. Around the optimiser step the decoder rows are kept
unit-norm: the gradient component parallel to each row is removed before, and the rows are
renormalised after. A latent is *dead* once ``dead_tokens`` tokens passed without it firing;
the TopK family feeds the dead mask to its AuxK loss.

``train_saes`` trains one config for several seeds either one after another or as one
vectorised stack (parameters with a leading seed axis; each seed keeps its own data order
and optimiser state, so the results match sequential training up to float rounding).
``mode="auto"`` follows a fixed rule (batched on CUDA, sequential on CPU) and records it, so
results never depend on machine load; ``probe_modes`` measures both for benchmarks.

With ``cfg.normalize_activations="expected_average_only_in"`` the rows are scaled so their
mean squared norm is d_in before training and the trained SAE is folded back to raw units
(``BaseSAE.fold_input_scale``). ``snapshot_steps`` keeps the SAE's public tensors (in raw
units) after those steps, for convergence analyses.

Streaming: ``x`` (and ``x_target``) may be an activation *source* (``husai_core.sources``, or
any object with ``take(idx)``, ``shape`` and ``__len__``) instead of a tensor. Each step then
reads only its batch's rows from disk (``_StreamRows``; same shuffled-pass sampling and, up to
``PERM_MAX_ROWS`` rows, the very same data order as in memory, so a source trains exactly like
its rows held in memory on CPU). Data memory is then bounded, independent of the row count, by

    ~3 x S x batch_size x d_in x 4 bytes       the batch being read (gather, float32, scaled)
  + 8192 x d_in x ~32 bytes, before training   the b_dec init rows and geometric median (float64)
  + FINAL_EVAL_ROWS x d_in x 4 bytes, at the end  the final-metrics rows (8192, as in memory;
                                               fewer when over sources.EVAL_MAX_BYTES = 32 MiB)
  + BatchTopK only: min(65,536, 2^23 / d_in) x d_in x 4 bytes of calibration rows (<= 32 MiB)
  + 8 x min(n, PERM_MAX_ROWS) bytes per seed    the shuffled-pass permutation (<= 32 MiB)

plus the kernel page cache (reclaimable, not process memory): a batch's rows are read with
``preadv`` (or, when they fill >= 1/4 of the file span they cover, one mapping of that span),
and no file stays mapped between batches. Reads are synchronous (no prefetch) and, within a
batch, in file order. Input normalisation and the ``mean`` b_dec init read the source once in
``sources.CHUNK_BYTES`` (4 MiB) chunks.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import pandas as pd
import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..device import describe_device, pick_device, seed_everything
from ..errors import HusaiError
from ..metrics import evaluate_sae
from ..sources import INIT_MAX_ROWS, eval_rows, evenly_spaced, is_source, mean_rows, mean_sq_norm
from .base import BaseSAE, stack_saes
from .batchtopk import BatchTopKSAE
from .build import DATA_STREAM, build_sae, derived_seed
from .config import TOPK_FAMILY, SAEConfig

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
    """Doubling checkpoints first, 2*first, 4*first, ... below ``steps``, and ``steps`` itself."""
    out, s = [], max(1, int(first))
    while s < steps:
        out.append(s)
        s *= 2
    return out + [int(steps)]


def training_scale(cfg: SAEConfig, x: Any) -> float:
    """The factor ``cfg`` multiplies input rows by before training (1 without normalisation):
    thresholds, bandwidths and penalty scales must be given in these units."""
    return input_scale(x) if cfg.normalize_activations == "expected_average_only_in" else 1.0


def input_scale(x: Tensor) -> float:
    """SAELens ``expected_average_only_in``: the factor that makes mean ||x||^2 equal d_in.
    An activation source (``husai_core.sources``) is read in chunks."""
    ms = mean_sq_norm(x) if is_source(x) else float(x.double().pow(2).sum(-1).mean())
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
    from ..sources import as_source

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


def make_optimizer(params: list[Tensor], cfg: SAEConfig) -> torch.optim.Optimizer:
    try:  # fused Adam: one kernel per step on CPU and CUDA; deterministic on CPU
        return torch.optim.Adam(params, lr=cfg.lr, betas=cfg.adam_betas, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(params, lr=cfg.lr, betas=cfg.adam_betas)


def _batch_ev(t: Tensor, x_hat: Tensor) -> Tensor:
    """Per-seed explained variance on one (S, B, d) batch (the metrics.py definition)."""
    t, x_hat = t.double(), x_hat.detach().double()
    total = t.var(dim=1, unbiased=False).sum(-1)
    resid = (t - x_hat).var(dim=1, unbiased=False).sum(-1)
    return 1.0 - resid / total.clamp_min(1e-300)


@torch.no_grad()
def clip_per_seed(sae: BaseSAE, max_norm: float) -> None:
    """Clip each seed's gradient (over all its parameters) to ``max_norm``, as
    ``torch.nn.utils.clip_grad_norm_`` would for that seed trained alone."""
    grads = [p.grad for p in sae.parameters() if p.grad is not None]
    if not grads:
        return
    norms = torch.stack([g.reshape(g.shape[0], -1).pow(2).sum(1) for g in grads]).sum(0).sqrt()
    scale = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(scale.view(-1, *([1] * (g.dim() - 1))))


def train_step(sae: BaseSAE, opt: torch.optim.Optimizer, xb: Tensor, tb: Tensor | None,
               since: Tensor, extra: Tensor | None = None) -> Any:
    """One optimisation step on a batch ``xb`` (S, B, d_in); updates ``since`` (tokens since
    each latent last fired, (S, d_sae)) in place and returns the forward's ``SAEOutput``.
    ``extra`` (a scalar computed from the SAE's parameters) is added to the minimised loss."""
    cfg = sae.cfg
    dead = since >= cfg.dead_tokens if cfg.architecture in TOPK_FAMILY else None
    out = sae(xb, tb, dead, return_latents=False)
    (out.loss.sum() if extra is None else out.loss.sum() + extra).backward()
    if cfg.grad_clip is not None:
        clip_per_seed(sae, cfg.grad_clip / cfg.d_target)
    sae.remove_parallel_grad()
    opt.step()
    opt.zero_grad(set_to_none=True)
    sae.normalize_decoder()
    sae.after_step()
    since.add_(xb.shape[-2]).masked_fill_(out.fired.view(sae.n_stack, -1) > 0, 0)
    return out


def _fit(sae: BaseSAE, xd: Tensor, td: Tensor | None, seeds: list[int], progress: bool,
         desc: str, steps: int | None = None, log: bool = True,
         extra_loss: ExtraLoss | None = None,
         on_snapshot: Callable[[int, BaseSAE], None] | None = None,
         snapshot_steps: tuple[int, ...] = ()) -> tuple[list[dict], Tensor, float]:
    """Train a (possibly stacked) SAE in place; returns log rows, tokens-since-fired, seconds.
    ``on_snapshot(steps_done, sae)`` is called after each step count in ``snapshot_steps``."""
    cfg = sae.cfg
    S, B, n = sae.n_stack, cfg.batch_size, xd.shape[0]
    steps = cfg.steps if steps is None else steps
    samplers = [_sampler(n, s, isinstance(xd, _StreamRows)) for s in seeds]
    opt = make_optimizer(list(sae.parameters()), cfg)
    since = torch.zeros(S, cfg.d_sae, dtype=torch.long, device=xd.device)
    rows: list[dict] = []
    sae.train()
    t0 = time.perf_counter()
    bar = tqdm(range(steps), desc=desc, disable=not progress, leave=False)
    for step in bar:
        lr = cfg.lr * lr_multiplier(step, cfg)
        for group in opt.param_groups:
            group["lr"] = lr
        idx = torch.stack([s.take(B) for s in samplers]).to(xd.device)
        xb = xd[idx]
        tb = td[idx] if td is not None else None
        extra = extra_loss(sae, step) if extra_loss is not None else None
        out = train_step(sae, opt, xb, tb, since, extra)
        if log and (step % cfg.log_every == 0 or step == steps - 1):
            with torch.no_grad():
                ev = _batch_ev(tb if tb is not None else xb, out.x_hat.view(S, B, -1))
                dead_frac = (since >= cfg.dead_tokens).double().mean(1)
                cols = [out.loss, out.mse, out.l1, out.l0, out.aux, out.matryoshka, ev, dead_frac]
                table = torch.stack([c.detach().double().reshape(S) for c in cols], 1).cpu().tolist()
            for s, vals in zip(seeds, table):
                rows.append({"seed": s, "step": step, "tokens": (step + 1) * B, "lr": lr,
                             **dict(zip(LOG_COLUMNS[4:], vals))})
                if extra is not None:
                    rows[-1]["extra"] = float(extra.detach())
            if progress:
                bar.set_postfix(loss=f"{table[0][0]:.4g}", ev=f"{table[0][6]:.3f}", l0=f"{table[0][3]:.1f}")
        if on_snapshot is not None and step + 1 in snapshot_steps:
            on_snapshot(step + 1, sae)
    if xd.device.type == "cuda":
        torch.cuda.synchronize(xd.device)
    return rows, since, time.perf_counter() - t0


def _folded(sae: BaseSAE, xd: Tensor, scale: tuple[float, float]) -> list[BaseSAE]:
    """Eval-mode single SAEs in raw units (BatchTopK calibrated on the training rows first)."""
    sae.eval()
    if sae.cfg.decoder_norm == "free":  # unit rows from here on; selection by norm-scaled scores is unchanged
        sae.fold_decoder_norm()
    if isinstance(sae, BatchTopKSAE):
        with torch.no_grad():
            sae.calibrate(xd)
    singles = sae.unstack() if sae.n_stack > 1 else [sae]
    for single in singles:
        single.eval()
        if scale != (1.0, 1.0):
            single.fold_input_scale(*scale)
    return singles


# The final training-row metrics (``TrainResult.metrics``) of in-memory data are ``evaluate_sae``
# on all rows when there are at most this many, else on this many evenly spaced rows
# (round(linspace(0, n-1, m)), the rule of the b_dec init): the evaluation is a fixed cost per
# call that must stay small next to training. ``metrics["n_rows"]`` (= ``dead_window_tokens``)
# records how many rows were evaluated.
FINAL_EVAL_ROWS = 8192


def _metric_rows(x: Any, t: Any, device: torch.device) -> tuple[Tensor, Tensor | None]:
    """Rows for the final metrics, float32 on ``device``: in-memory data -> all rows up to
    ``FINAL_EVAL_ROWS``, else that many evenly spaced rows (selected before the device copy and
    dtype cast, so only they are copied); a streamed source -> ``_eval_rows``."""
    if is_source(x):
        return _eval_rows(x, t, device)
    n = x.shape[0]
    if n > FINAL_EVAL_ROWS:
        idx = evenly_spaced(n, FINAL_EVAL_ROWS)
        x = x[idx.to(x.device)]
        t = None if t is None else t[idx.to(t.device)]
    return _eval_rows(x, t, device)


# evaluate_sae's batch for the final metrics on CPU: 1024 rows keep its dense (rows x d_sae)
# temporaries in cache (measured 25% faster than 4096 at d_sae 1024 and 4096); on CUDA as before.
FINAL_EVAL_BATCH_CPU = 1024
# _input_scale_rows: rows per float64 chunk at least this many, at most this many bytes otherwise.
_SCALE_CHUNK_ROWS, _SCALE_CHUNK_BYTES = 1024, 4 * 2**20


def _input_scale_rows(x: Any) -> float:
    """``input_scale(x)``, the same float, without a float64 copy of all of ``x`` (2 x 8 bytes
    per element there): the float64 squares and row sums are taken chunk by chunk with the same
    kernels (each row is reduced alone, so its sum does not depend on the chunking), then the same
    mean. Only for contiguous CPU tensors of width <= 8192 with more than one chunk of rows (the
    cases checked to match bit for bit); anything else goes to ``input_scale``."""
    if is_source(x) or x.device.type != "cpu" or not x.is_contiguous() or x.shape[-1] > 8192:
        return input_scale(x)
    n, d = x.shape
    m = max(_SCALE_CHUNK_ROWS, _SCALE_CHUNK_BYTES // (8 * d))
    if n <= m:
        return input_scale(x)
    sums = torch.empty(n, dtype=torch.float64)
    buf = torch.empty(m, d, dtype=torch.float64)
    for lo in range(0, n, m):
        b = buf[: min(m, n - lo)]
        torch.sum(b.copy_(x[lo : lo + m]).pow_(2), -1, out=sums[lo : lo + m])
    ms = float(sums.mean())
    if not math.isfinite(ms):
        raise HusaiError("activations contain NaN or infinite values")
    if not ms > 0:
        raise HusaiError("cannot normalise activations whose mean squared norm is 0")
    return math.sqrt(d / ms)


def _train_group(cfg: SAEConfig, x: Tensor, t: Tensor | None, seeds: list[int], device: torch.device,
                 progress: bool, mode: str, extra_loss: ExtraLoss | None = None,
                 snapshot_steps: tuple[int, ...] = ()) -> list[TrainResult]:
    from .checkpoint import public_tensors

    seed_everything(seeds[0])
    scale = (1.0, 1.0)
    if cfg.normalize_activations == "expected_average_only_in":
        s_in = _input_scale_rows(x)
        scale = (s_in, _input_scale_rows(t) if t is not None else s_in)
    streamed = is_source(x)  # rows read from disk batch by batch (husai_core.sources)
    if streamed:
        xd = _StreamRows(x, device, scale[0])
        td = None if t is None else _StreamRows(t, device, scale[1])
        x_init = _init_rows(x, cfg, device, scale[0])
        t_init = None if t is None else _init_rows(t, cfg, device, scale[1])
        # BatchTopK calibrates on rows in memory: the evaluation subset, scaled like training rows
        x_fold = xd.subset(eval_rows(len(x), cfg.d_in)) if cfg.architecture == "batchtopk" else None
    else:
        xd = x.to(device=device, dtype=torch.float32) * scale[0] if scale[0] != 1.0 else x.to(device=device, dtype=torch.float32)
        td = None if t is None else t.to(device=device, dtype=torch.float32) * scale[1]
        x_init, t_init, x_fold = xd, td, xd
    singles = []
    for s in seeds:
        sae = build_sae(cfg, s, device=device)
        sae.init_biases_from_data(x_init, t_init)
        singles.append(sae)
    del x_init, t_init
    sae = singles[0] if len(singles) == 1 else stack_saes(singles)
    snaps: list[dict[int, dict[str, Tensor]]] = [{} for _ in seeds]

    def keep(step: int, model: BaseSAE) -> None:
        for i, single in enumerate(_folded(copy.deepcopy(model), x_fold, scale)):
            snaps[i][step] = public_tensors(single)

    desc = f"SAE {cfg.architecture} seed {seeds[0]}" if len(seeds) == 1 else f"SAE {cfg.architecture} x{len(seeds)} seeds"
    rows, since, seconds = _fit(sae, xd, td, seeds, progress, desc, extra_loss=extra_loss,
                                on_snapshot=keep if snapshot_steps else None, snapshot_steps=tuple(snapshot_steps))
    trained = _folded(sae, x_fold, scale)
    history = pd.DataFrame(rows, columns=LOG_COLUMNS + (["extra"] if extra_loss is not None else []))
    x_raw, t_raw = _metric_rows(x, t, device)  # <= FINAL_EVAL_ROWS evenly spaced rows (sources: _eval_rows)
    results = []
    for i, (s, single) in enumerate(zip(seeds, trained)):
        metrics = evaluate_sae(single, x_raw, t_raw, batch_size=FINAL_EVAL_BATCH_CPU if device.type == "cpu"
                               else max(cfg.batch_size, 4096))
        metrics["dead_fraction_train"] = float((since[i] >= cfg.dead_tokens).double().mean())
        metrics["dead_window_tokens_train"] = cfg.dead_tokens
        metrics["input_scale"] = list(scale)
        info = {"seed": s, "device": describe_device(device), "mode": mode, "n_stack": len(seeds),
                "train_seconds": seconds, "steps_per_second": cfg.steps / max(seconds, 1e-9)}
        results.append(TrainResult(single, history[history.seed == s].reset_index(drop=True), metrics, info,
                                   snaps[i]))
    return results


def train_sae(cfg: SAEConfig, x: Any, seed: int, x_target: Any = None, device: str | torch.device = "auto",
              progress: bool = False, extra_loss: ExtraLoss | None = None,
              snapshot_steps: tuple[int, ...] = ()) -> TrainResult:
    """Train one SAE of ``cfg`` on activations ``x`` (rows, d_in) under ``seed``.

    ``x_target`` (rows, d_out) is required for transcoders and refused otherwise. The whole
    activation tensor is moved to ``device`` once (``"auto"``: CUDA when present); an activation
    source (``husai_core.sources``) is instead streamed from disk batch by batch (module docstring). On CPU the
    result is bit-for-bit reproducible for a given seed. ``extra_loss(sae, step)`` (optional)
    is added to the minimised loss and logged as the history column ``extra``.
    """
    x, t = _check_data(cfg, x, x_target)
    return _train_group(cfg, x, t, [seed], pick_device(device), progress, "sequential", extra_loss,
                        tuple(snapshot_steps))[0]


def train_saes(cfg: SAEConfig, x: Any, seeds: list[int], x_target: Any = None,
               device: str | torch.device = "auto", progress: bool = False,
               mode: str = "auto", extra_loss: ExtraLoss | None = None,
               snapshot_steps: tuple[int, ...] = ()) -> list[TrainResult]:
    """Train ``cfg`` once per seed; returns one ``TrainResult`` per seed, in order.

    ``mode``: ``"sequential"`` (one SAE at a time), ``"batched"`` (all seeds as one
    vectorised stack, in memory-bounded groups) or ``"auto"`` (the measured rule: batched on
    CUDA, sequential on CPU — fixed, so results never depend on machine load).
    ``info["mode"]`` records the choice. ``snapshot_steps``: see ``train_sae``.
    ``extra_loss`` (see ``train_sae``) is called with one seed's SAE at a time, so it always
    trains sequentially.
    """
    if mode not in MODES:
        raise HusaiError(f"mode must be one of {MODES}, got {mode!r}")
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise HusaiError("train_saes needs at least one seed")
    if len(set(seeds)) != len(seeds):
        raise HusaiError(f"train_saes: seeds must be distinct, got {seeds}")
    x, t = _check_data(cfg, x, x_target)
    dev = pick_device(device)
    if extra_loss is not None:
        mode = "sequential"
    if mode == "auto":
        mode = choose_mode(cfg, len(seeds), dev)[0]
    if mode == "sequential" or len(seeds) == 1:
        return [_train_group(cfg, x, t, [s], dev, progress, "sequential", extra_loss, tuple(snapshot_steps))[0]
                for s in seeds]
    group = max_stack_size(cfg, dev)
    results: list[TrainResult] = []
    for lo in range(0, len(seeds), group):
        results += _train_group(cfg, x, t, seeds[lo : lo + group], dev, progress, "batched",
                                snapshot_steps=tuple(snapshot_steps))
    return results


def max_stack_size(cfg: SAEConfig, device: torch.device) -> int:
    """How many seeds fit in one stack: the activations (several B x d_sae tensors) and the
    parameters with Adam state must stay within a budget (2 GiB on CPU, 30% of free GPU memory)."""
    per_seed = 4 * (6 * cfg.batch_size * cfg.d_sae + 4 * cfg.d_sae * (cfg.d_in + cfg.d_target))
    if device.type == "cuda":
        budget = 0.3 * torch.cuda.mem_get_info(device)[0]
    else:
        budget = 2 * 1024**3
    return max(1, int(budget // per_seed))


def probe_modes(cfg: SAEConfig, n_seeds: int, device: torch.device | str = "auto", steps: int = 3) -> dict[str, float]:
    """Seconds per training step *per seed* for sequential vs batched execution, measured on
    synthetic data of the right shape after one warm-up step."""
    dev = pick_device(device)
    probe_cfg = cfg.replace(steps=steps + 1, warmup_steps=0, log_every=10**9)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(max(2 * cfg.batch_size, 16), cfg.d_in, generator=gen).to(dev)
    t = torch.randn(x.shape[0], cfg.d_target, generator=gen).to(dev) if cfg.transcoder else None
    n = max(1, min(n_seeds, max_stack_size(cfg, dev)))

    def timed(seeds: list[int]) -> float:
        saes = [build_sae(probe_cfg, s, device=dev) for s in seeds]
        sae = saes[0] if len(saes) == 1 else stack_saes(saes)
        _fit(sae, x, t, seeds, False, "", steps=1, log=False)  # warm-up (allocator, kernels)
        _, _, sec = _fit(sae, x, t, seeds, False, "", steps=steps, log=False)
        return sec / steps / len(seeds)

    return {"sequential": timed([0]), "batched": timed(list(range(n))), "n_stack": n}


def choose_mode(cfg: SAEConfig, n_seeds: int, device: torch.device | str = "auto") -> tuple[str, dict[str, Any]]:
    """``sequential`` or ``batched`` for ``n_seeds`` seeds on ``device``, by a fixed rule.

    Seed batching measured 0.83-1.06x of sequential on a 2-core CPU and is the faster path on
    CUDA; the two differ at float rounding, so the choice must not depend on a timing probe
    (machine load would then change results). ``probe_modes`` remains for benchmarks.
    """
    dev = pick_device(device)
    if n_seeds <= 1:
        return "sequential", {"reason": "one seed"}
    mode = "batched" if dev.type == "cuda" else "sequential"
    return mode, {"reason": "fixed rule: batched on CUDA, sequential on CPU"}


__all__ = ["TrainResult", "train_sae", "train_saes", "train_step", "make_optimizer", "choose_mode", "probe_modes", "lr_multiplier",
           "max_stack_size", "LOG_COLUMNS", "log_spaced_steps", "input_scale", "training_scale"]
