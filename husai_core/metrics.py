"""Reconstruction metrics, one definition each, used by every notebook and report.

- ``explained_variance(x, x_hat)`` = 1 - sum_d Var_d(x - x_hat) / sum_d Var_d(x), variances
  per dimension over the rows (population variance; the ratio does not depend on the ddof).
- ``mse(x, x_hat)`` = mean of (x - x_hat)^2 over *all elements* (rows x dims).
- ``l0(latents)`` = mean over rows of the number of non-zero latents.
- ``dead_fraction(activity, window_tokens=...)`` = fraction of latents that did not fire
  within a stated window of tokens (the window is a required argument and is reported).

Inputs may be torch tensors or numpy arrays of shape (rows, dims) (extra leading axes are
flattened into rows); results are Python floats. Sums are taken in float64.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from .errors import HusaiError


def _tensor(a: Any, name: str) -> Tensor:
    if isinstance(a, Tensor):
        t = a.detach()
    else:
        try:
            t = torch.as_tensor(np.asarray(a))
        except (TypeError, ValueError) as exc:
            raise HusaiError(f"{name} must be an array or tensor ({exc})") from None
    if t.dim() == 0:
        raise HusaiError(f"{name} must have at least one dimension, got a scalar")
    return t


def _rows(a: Any, name: str) -> Tensor:
    t = _tensor(a, name)
    return (t.reshape(-1, t.shape[-1]) if t.dim() > 1 else t.reshape(-1, 1)).double()


def _pair(x: Any, x_hat: Any) -> tuple[Tensor, Tensor]:
    a, b = _rows(x, "x"), _rows(x_hat, "x_hat")
    if a.shape != b.shape:
        raise HusaiError(f"x has shape {tuple(a.shape)} but x_hat has shape {tuple(b.shape)}")
    if a.shape[0] == 0:
        raise HusaiError("x has no rows")
    return a, b.to(a.device)


def ev_from_variances(resid: Tensor, total: Tensor) -> Tensor:
    """The one EV formula: 1 - (summed residual variance) / (summed variance of x)."""
    return 1.0 - resid / total.clamp_min(1e-300)


def batch_explained_variance(x: Tensor, x_hat: Tensor) -> Tensor:
    """Explained variance over the rows (dim -2) of ``(..., rows, d)`` tensors, one per leading
    index, float64 (the trainer's per-seed EV of a stacked batch). No zero-variance check."""
    t, x_hat = x.double(), x_hat.detach().double()
    total = t.var(dim=-2, unbiased=False).sum(-1)
    return ev_from_variances((t - x_hat).var(dim=-2, unbiased=False).sum(-1), total)


def explained_variance(x: Any, x_hat: Any) -> float:
    """1 - sum_d Var_d(x - x_hat) / sum_d Var_d(x), per-dimension variance over rows.

    Raises ``HusaiError`` when x has zero total variance (EV is undefined there).
    """
    a, b = _pair(x, x_hat)
    if float(a.var(dim=0, unbiased=False).sum()) == 0.0:
        raise HusaiError("explained_variance: x has zero variance, EV is undefined")
    return float(batch_explained_variance(a, b))


def mse(x: Any, x_hat: Any) -> float:
    """Mean squared error over all elements (rows x dims)."""
    a, b = _pair(x, x_hat)
    return float((a - b).pow(2).mean())


def l0(latents: Any) -> float:
    """Mean number of non-zero latents per row."""
    z = _tensor(latents, "latents")
    z = z.reshape(-1, z.shape[-1])
    if z.shape[0] == 0:
        raise HusaiError("latents has no rows")
    return float((z != 0).sum(dim=-1).double().mean())


def fire_counts(latents: Any) -> Tensor:
    """Number of rows in which each latent is non-zero: shape (d_sae,), int64."""
    z = _tensor(latents, "latents")
    return (z.reshape(-1, z.shape[-1]) != 0).sum(dim=0)


def dead_fraction(
    activity: Any,
    *,
    window_tokens: int,
    kind: Literal["fire_counts", "tokens_since_fired"] = "fire_counts",
) -> float:
    """Fraction of latents that did not fire within the last ``window_tokens`` tokens.

    ``kind="fire_counts"``: ``activity[j]`` is how often latent j fired over a window of
    exactly ``window_tokens`` tokens (e.g. ``fire_counts`` of that many rows); dead = 0 fires.
    ``kind="tokens_since_fired"``: ``activity[j]`` is the number of tokens since latent j
    last fired (as the trainer tracks it); dead = at least ``window_tokens``.
    """
    if isinstance(window_tokens, bool) or not isinstance(window_tokens, (int, np.integer)) or window_tokens <= 0:
        raise HusaiError(f"window_tokens must be a positive integer, got {window_tokens!r}")
    a = _tensor(activity, "activity").reshape(-1)
    if a.numel() == 0:
        raise HusaiError("activity has no latents")
    if kind == "fire_counts":
        dead = a == 0
    elif kind == "tokens_since_fired":
        dead = a >= window_tokens
    else:
        raise HusaiError(f"dead_fraction kind must be 'fire_counts' or 'tokens_since_fired', got {kind!r}")
    return float(dead.double().mean())


@torch.no_grad()
def evaluate_sae(sae: Any, x: Any, x_target: Any = None, batch_size: int = 4096) -> dict[str, Any]:
    """EV, L0, MSE and dead fraction of a (single) SAE on activations ``x``, in batches.

    For a transcoder the reconstruction is compared with ``x_target`` (required). The dead
    fraction counts latents that never fired on the evaluated rows, so its window is
    ``dead_window_tokens = n_rows`` (reported). Latents use the SAE's inference semantics.
    """
    if getattr(sae, "n_stack", 1) != 1:
        raise HusaiError("evaluate_sae takes a single SAE; call .unstack() on a stacked one")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise HusaiError(f"batch_size must be a positive integer, got {batch_size!r}")
    cfg = sae.cfg
    xs = _tensor(x, "x")
    xs = xs.reshape(-1, xs.shape[-1])
    if xs.shape[-1] != cfg.d_in:
        raise HusaiError(f"x has width {xs.shape[-1]} but the SAE expects d_in={cfg.d_in}")
    if cfg.transcoder:
        if x_target is None:
            raise HusaiError("evaluate_sae: a transcoder needs x_target")
        ts = _tensor(x_target, "x_target")
        ts = ts.reshape(-1, ts.shape[-1])
        if ts.shape != (xs.shape[0], cfg.d_target):
            raise HusaiError(f"x_target has shape {tuple(ts.shape)}, expected ({xs.shape[0]}, {cfg.d_target})")
    else:
        ts = xs
    n = xs.shape[0]
    if n == 0:
        raise HusaiError("x has no rows")
    dev = sae.device
    d = ts.shape[-1]
    s_t = torch.zeros(d, dtype=torch.float64, device=dev)
    s_tt = torch.zeros(d, dtype=torch.float64, device=dev)
    s_r = torch.zeros(d, dtype=torch.float64, device=dev)
    s_rr = torch.zeros(d, dtype=torch.float64, device=dev)
    active = torch.zeros((), dtype=torch.float64, device=dev)
    fires = torch.zeros(cfg.d_sae, dtype=torch.long, device=dev)
    for lo in range(0, n, batch_size):
        xb = xs[lo : lo + batch_size].to(dev, sae.dtype)
        tb = ts[lo : lo + batch_size].to(dev, torch.float64)
        z = sae.encode(xb)
        r = tb - sae.decode(z).double()
        nz = z != 0
        active += nz.sum()
        fires += nz.sum(0)
        s_t += tb.sum(0)
        s_tt += tb.pow(2).sum(0)
        s_r += r.sum(0)
        s_rr += r.pow(2).sum(0)
    var_t = (s_tt / n - (s_t / n) ** 2).sum()
    var_r = (s_rr / n - (s_r / n) ** 2).sum()
    return {
        "ev": float(ev_from_variances(var_r, var_t)) if float(var_t) > 0 else float("nan"),
        "l0": float(active / n),
        "mse": float(s_rr.sum() / (n * d)),
        "dead_fraction": float((fires == 0).double().mean()),
        "dead_window_tokens": int(n),
        "n_rows": int(n),
        "target": "x_target" if cfg.transcoder else "x",
    }
