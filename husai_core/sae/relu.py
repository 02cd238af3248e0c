"""ReLU SAE with an L1 penalty (the "standard" SAE of Bricken et al. / SAELens)."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import BaseSAE, _Terms


class ReLUSAE(BaseSAE):
    """z = ReLU((x - b_dec) W_enc + b_enc); loss = mse + l1_coeff * mean_rows sum_j z_j.

    Decoder rows stay unit-norm, so the L1 needs no decoder-norm factor.
    """

    architecture = "relu"

    def _activate(self, pre: Tensor) -> Tensor:
        return torch.relu(pre)

    def _train_terms(self, xs: Tensor, ts: Tensor, dead: Tensor | None, want_latents: bool) -> _Terms:
        return self._dense_terms(torch.relu(self.pre_activations(xs)), want_latents)
