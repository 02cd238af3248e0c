"""BatchTopK SAE (Bussmann et al. 2024).

Training keeps the top ``k * batch`` ReLU'd pre-activations over the whole batch (so L0
averages k but varies per row). Inference cannot depend on the batch, so after training a
single threshold theta is calibrated on data and latents fire when pre > theta:
``quantile`` sets theta to the (k * rows)-th largest value over the calibration rows (so the
mean L0 on them is k), ``batch_min`` to the mean over batches of the smallest kept value
(the published estimate). Before calibration, inference falls back to batch top-k.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import HusaiError
from .base import BaseSAE, _Terms
from .topk_kernel import topk_last


class BatchTopKSAE(BaseSAE):
    architecture = "batchtopk"

    def __init__(self, cfg, n_stack: int = 1):
        super().__init__(cfg, n_stack)
        self.register_buffer("bt_threshold", torch.zeros(n_stack))
        self.register_buffer("calibrated", torch.zeros(n_stack, dtype=torch.bool))

    @property
    def threshold(self) -> Tensor:
        """Calibrated global threshold per seed (scalar, or (S,) for a stack)."""
        return self._view(self.bt_threshold)

    @torch.no_grad()
    def _fold_threshold(self, s_out: float) -> None:
        self.bt_threshold.div_(s_out)

    def _batch_topk(self, pre: Tensor) -> Tensor:
        S, B, d_sae = pre.shape
        flat = torch.relu(pre).reshape(S, B * d_sae)
        n_keep = min(self.cfg.k * B, B * d_sae)
        idx = topk_last(flat.detach(), n_keep)[1]
        keep = torch.zeros_like(flat, dtype=torch.bool).scatter_(1, idx, True)
        return (flat * keep).view(S, B, d_sae)

    def _activate(self, pre: Tensor) -> Tensor:
        if not bool(self.calibrated.all()):
            return self._batch_topk(pre)
        theta = self.bt_threshold.view(-1, 1, 1).to(pre.dtype)
        return pre * (pre > theta).to(pre.dtype)

    def _train_terms(self, xs: Tensor, ts: Tensor, dead: Tensor | None, want_latents: bool) -> _Terms:
        pre = self.pre_activations(xs)
        acts = self._batch_topk(pre) if self.training else self._activate(pre)
        x_hat = torch.baddbmm(self.dec_b.unsqueeze(1), acts, self.dec_w)
        xc = xs - self.input_bias.unsqueeze(1)
        aux = self._aux_loss(pre, xc, ts, x_hat, dead, sparse_grad=False)
        return self._dense_terms(acts, want_latents, aux=aux, x_hat=x_hat)

    @torch.no_grad()
    def calibrate(self, x: Tensor, method: str | None = None, batch_size: int | None = None,
                  max_rows: int = 65536) -> Tensor:
        """Set the inference threshold from activations ``x`` (see module docstring)."""
        method = method or self.cfg.batchtopk_calibration
        if method not in ("quantile", "batch_min"):
            raise HusaiError(f"unknown BatchTopK calibration {method!r}; use 'quantile' or 'batch_min'")
        xs, _ = self._stack_in(x, self.cfg.d_in, "activations")
        n = xs.shape[1]
        if n == 0:
            raise HusaiError("BatchTopK calibration needs at least one row")
        if n > max_rows:  # evenly spaced rows keep it deterministic and bounded
            xs = xs[:, torch.linspace(0, n - 1, max_rows).round().long().to(xs.device)]
            n = max_rows
        bs = batch_size or self.cfg.batch_size
        d_sae = self.cfg.d_sae
        if method == "quantile":
            # Keep the k*n largest positive pre-activations: a running top list per seed.
            keep = min(self.cfg.k * n, n * d_sae)
            best = None
            for lo in range(0, n, bs):
                chunk = torch.relu(self.pre_activations(xs[:, lo : lo + bs])).flatten(1)
                cand = chunk if best is None else torch.cat([best, chunk], 1)
                best = topk_last(cand, min(keep, cand.shape[1]))[0]
            theta = best.min(dim=1).values
        else:
            mins = []
            for lo in range(0, n, bs):
                pre = self.pre_activations(xs[:, lo : lo + bs])
                b = pre.shape[1]
                flat = torch.relu(pre).flatten(1)
                kept = topk_last(flat, min(self.cfg.k * b, flat.shape[1]))[0]
                mins.append(kept.min(dim=1).values * b)
            theta = torch.stack(mins, 0).sum(0) / n
        self.bt_threshold.copy_(theta.to(self.bt_threshold))
        self.calibrated.fill_(True)
        return self.threshold
