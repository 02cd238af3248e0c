"""JumpReLU SAE (Rajamanoharan et al. 2024) with learned thresholds and an L0 penalty.

z_j = pre_j * H(pre_j - theta_j), theta = exp(log_threshold) > 0. The step H has zero
gradient almost everywhere, so both the JumpReLU and the L0 count use a straight-through
estimator: the derivative of H(pre - theta) with respect to theta is replaced by
-(1/eps) * K((pre - theta)/eps), K the rectangle kernel on (-1/2, 1/2) and eps the
``bandwidth``. That gives the L0 penalty a real gradient to the thresholds (as published,
the estimator feeds the thresholds only, not the encoder).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .base import BaseSAE, _Terms


def _rectangle(u: Tensor) -> Tensor:
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


class _JumpReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pre: Tensor, theta: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(pre, theta)
        ctx.bandwidth = bandwidth
        return pre * (pre > theta).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):
        pre, theta = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_pre = grad * (pre > theta).to(grad.dtype)
        # d/dtheta [pre * H(pre - theta)] ~= -(theta / eps) K((pre - theta) / eps)
        pseudo = -(theta / eps) * _rectangle((pre - theta) / eps) * grad
        grad_theta = pseudo.sum(dim=1, keepdim=True)
        return grad_pre, grad_theta, None


class _Step(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pre: Tensor, theta: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(pre, theta)
        ctx.bandwidth = bandwidth
        return (pre > theta).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):
        pre, theta = ctx.saved_tensors
        eps = ctx.bandwidth
        pseudo = -(1.0 / eps) * _rectangle((pre - theta) / eps) * grad
        return None, pseudo.sum(dim=1, keepdim=True), None


class JumpReLUSAE(BaseSAE):
    architecture = "jumprelu"

    def __init__(self, cfg, n_stack: int = 1):
        super().__init__(cfg, n_stack)
        self.log_threshold = nn.Parameter(
            torch.full((n_stack, cfg.d_sae), math.log(cfg.jumprelu_init_threshold))
        )

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator) -> None:
        super().reset_parameters(generator)
        self.log_threshold.fill_(math.log(self.cfg.jumprelu_init_threshold))

    @property
    def threshold(self) -> Tensor:
        """Per-latent thresholds theta = exp(log_threshold): (d_sae,) [or (S, d_sae)]."""
        return self._view(self.log_threshold.exp())

    @torch.no_grad()
    def _fold_threshold(self, s_out: float) -> None:
        self.log_threshold.sub_(math.log(s_out))

    def _activate(self, pre: Tensor) -> Tensor:
        theta = self.log_threshold.exp().unsqueeze(1)
        return pre * (pre > theta).to(pre.dtype)

    def _train_terms(self, xs: Tensor, ts: Tensor, dead: Tensor | None, want_latents: bool) -> _Terms:
        pre = self.pre_activations(xs)
        theta = self.log_threshold.exp().unsqueeze(1)
        acts = _JumpReLU.apply(pre, theta, self.cfg.bandwidth)
        l0 = _Step.apply(pre, theta, self.cfg.bandwidth).sum(-1).mean(1)
        return self._dense_terms(acts, want_latents)._replace(l0=l0)
