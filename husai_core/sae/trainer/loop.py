"""The training loop: the optimiser, one step (unit-norm decoder rows, per-seed clipping) and the fit
over all steps with its history.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import torch
from torch import Tensor

from ...metrics import batch_explained_variance
from ...progress import tqdm
from ..base import BaseSAE
from ..batchtopk import BatchTopKSAE
from ..config import TOPK_FAMILY, SAEConfig
from .data import _StreamRows, _sampler
from .schedule import ExtraLoss, LOG_COLUMNS, lr_multiplier


def make_optimizer(params: list[Tensor], cfg: SAEConfig) -> torch.optim.Optimizer:
    try:  # fused Adam: one kernel per step on CPU and CUDA; deterministic on CPU
        return torch.optim.Adam(params, lr=cfg.lr, betas=cfg.adam_betas, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(params, lr=cfg.lr, betas=cfg.adam_betas)


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
                ev = batch_explained_variance(tb if tb is not None else xb, out.x_hat.view(S, B, -1))
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
