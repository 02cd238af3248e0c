"""Decoder-norm upkeep of every SAE: unit-norm decoder rows around each optimiser step, and folding
the decoder norms or an input scale into the parameters (a mixin of :class:`~.base.BaseSAE`)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import HusaiError


class DecoderNorm:
    """Decoder rows kept unit-norm during training, and norms / input scales folded into the parameters."""

    @torch.no_grad()
    def remove_parallel_grad(self) -> None:
        """Drop the part of each decoder row's gradient along the row (call before the step).

        With unit-norm rows that component only changes the row's norm, which the
        renormalisation after the step would undo anyway.
        """
        g, w = self.dec_w.grad, self.dec_w
        if g is None or self.cfg.decoder_norm == "free":
            return
        coef = torch.linalg.vecdot(g, w) / torch.linalg.vecdot(w, w).clamp_min(1e-24)
        g.addcmul_(w, coef.unsqueeze(-1), value=-1.0)

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Rescale every decoder row to unit norm (call after each optimiser step; a no-op while
        training with ``decoder_norm="free"``, see ``fold_decoder_norm``)."""
        if self.cfg.decoder_norm == "free":
            return
        self.dec_w.div_(torch.linalg.vector_norm(self.dec_w, dim=-1, keepdim=True).clamp_min_(1e-12))

    def after_step(self) -> None:
        """Per-step parameter upkeep beyond the decoder norm (subclasses override)."""

    def decoder_norms(self) -> Tensor:
        """(S, d_sae) decoder row norms (1 under ``decoder_norm="unit"``)."""
        return torch.linalg.vector_norm(self.dec_w.detach(), dim=-1)

    def _scores(self, pre: Tensor) -> Tensor:
        """What latent selection ranks: the pre-activations, times the decoder row norm when the
        norms are free (each latent then counts as if its decoder row were unit-norm)."""
        if self.cfg.decoder_norm == "free":
            return pre * self.decoder_norms().unsqueeze(1)
        return pre

    @torch.no_grad()
    def fold_decoder_norm(self) -> None:
        """Turn free-norm training weights into unit decoder rows with identical outputs: row i
        is divided by its norm n_i and encoder row i and b_enc[i] multiplied by it, so the latent
        becomes n_i * pre_i (what training selected on) and decodes to the same vector."""
        n = self.decoder_norms().clamp_min(1e-12)
        self.dec_w.div_(n.unsqueeze(-1))
        self.enc_w.mul_(n.unsqueeze(-1))
        self.enc_b.mul_(n)

    @torch.no_grad()
    def fold_input_scale(self, s_in: float, s_out: float) -> None:
        """Rewrite an SAE trained on ``s_in * x`` (reconstructing ``s_out * target``) so it
        maps raw ``x`` to raw targets with identical latent supports.

        Latents are divided by ``s_out`` (decoder rows stay unit-norm): the encoder weights
        scale by s_in / s_out, b_enc, b_dec and thresholds by 1 / s_out, a transcoder's input
        bias by 1 / s_in. Exact for every architecture here, whose activations are positively
        homogeneous (TopK/BatchTopK selection and JumpReLU gates are unchanged by the scale).
        """
        if s_in <= 0 or s_out <= 0:
            raise HusaiError(f"input scales must be positive, got {s_in}, {s_out}")
        self.enc_w.mul_(s_in / s_out)
        self.enc_b.div_(s_out)
        self.dec_b.div_(s_out)
        if self.in_b is not None:
            self.in_b.div_(s_in)
        self._fold_threshold(s_out)

    def _fold_threshold(self, s_out: float) -> None:
        """Thresholds in latent units follow the latents (subclasses with thresholds override)."""
