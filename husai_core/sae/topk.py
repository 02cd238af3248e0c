"""TopK SAE (Gao et al. 2024) with the AuxK loss, and its sparse-aware training step.

z = ReLU(TopK((x - b_dec) W_enc + b_enc)): the k largest pre-activations per row, ReLU'd so no
latent is negative. Training uses one dense encoder matmul (unavoidable: every latent must
be scored) and then only touches the k active latents per row: the decode, its gradients
and the encoder's weight gradient go through ``sparse_ops`` (``decode_impl="sparse"``).
``decode_impl="dense"`` runs the same maths with dense autograd, as a reference.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import BaseSAE, _global_idx, _Terms, seed_mse
from .topk_kernel import topk_last
from .sparse_ops import SparsePattern, sparse_decode, sparse_encode


class _Active:
    """The k active latents of a batch: local indices, differentiable values, pattern."""

    def __init__(self, idx: Tensor, values: Tensor, pattern: SparsePattern | None):
        self.idx = idx  # (S, B, k) local latent indices
        self.values = values  # (S*B, k) post-ReLU values (differentiable)
        self.pattern = pattern  # None on the dense path


class TopKSAE(BaseSAE):
    architecture = "topk"

    def _activate(self, pre: Tensor) -> Tensor:
        vals, idx = topk_last(pre, self.cfg.k)
        return torch.zeros_like(pre).scatter(-1, idx, torch.relu(vals))

    # -- the training path -------------------------------------------------------------
    def _select(self, xs: Tensor) -> tuple[Tensor, Tensor, _Active]:
        """Pre-activations, centred input and the active latents (sparse or dense autograd)."""
        S, B, _ = xs.shape
        k, d_sae = self.cfg.k, self.cfg.d_sae
        if self.cfg.decode_impl == "dense":
            pre = self.pre_activations(xs)
            idx = topk_last(self._scores(pre.detach()), k)[1]
            vals = pre.gather(-1, idx)
            return pre, xs - self.input_bias.unsqueeze(1), _Active(idx, torch.relu(vals).reshape(S * B, k), None)
        with torch.no_grad():
            # b_in's gradient is produced by sparse_encode, so the graph is not needed here.
            xc = xs - self.input_bias.detach().unsqueeze(1)
            pre = torch.baddbmm(self.enc_b.detach().unsqueeze(1), xc, self.enc_w.detach().transpose(1, 2))
            vals, idx = topk_last(self._scores(pre), k)
            if self.cfg.decoder_norm == "free":
                vals = pre.gather(-1, idx)
        pattern = SparsePattern(_global_idx(idx, d_sae), S * d_sae)
        v = sparse_encode(vals.reshape(S * B, k), xc.reshape(S * B, -1), self.enc_w, self.enc_b,
                          self.input_bias, pattern)
        return pre, xc, _Active(idx, torch.relu(v), pattern)

    def _decode_active(self, act: _Active, weights: Tensor | None = None) -> Tensor:
        """Reconstruction (S, B, d_out) from the active latents (optionally re-weighted)."""
        S, B, _ = act.idx.shape
        w = act.values if weights is None else weights
        if act.pattern is not None:
            out = sparse_decode(w, self.dec_w, act.pattern).view(S, B, -1)
        else:
            z = torch.zeros(S, B, self.cfg.d_sae, device=w.device, dtype=w.dtype)
            z = z.scatter(-1, act.idx, w.view(S, B, -1))
            out = torch.bmm(z, self.dec_w)
        return out + self.dec_b.unsqueeze(1)

    def _active_terms(self, act: _Active, x_hat: Tensor, aux: Tensor, want_latents: bool) -> _Terms:
        S, B, k = act.idx.shape
        vals = act.values.detach()
        on = (vals > 0).to(self.dtype)
        flat_idx = act.pattern.flat if act.pattern is not None else _global_idx(act.idx, self.cfg.d_sae).reshape(-1)
        fired = torch.bincount(flat_idx, weights=on.reshape(-1), minlength=S * self.cfg.d_sae)
        latents = None
        if want_latents:
            latents = torch.zeros(S, B, self.cfg.d_sae, device=vals.device, dtype=self.dtype)
            latents = latents.scatter(-1, act.idx, act.values.view(S, B, k))
        return _Terms(
            x_hat=x_hat,
            latents=latents,
            l1=vals.view(S, -1).sum(1) / B,
            l0=on.view(S, -1).sum(1) / B,
            aux=aux,
            matryoshka=self._zeros(),
            fired=fired.view(S, -1).round().long(),
        )

    def _train_terms(self, xs: Tensor, ts: Tensor, dead: Tensor | None, want_latents: bool) -> _Terms:
        pre, xc, act = self._select(xs)
        x_hat = self._decode_active(act)
        aux = self._aux_loss(pre, xc, ts, x_hat, dead, sparse_grad=act.pattern is not None)
        return self._active_terms(act, x_hat, aux, want_latents)


class MatryoshkaSAE(TopKSAE):
    """Matryoshka-TopK (Bussmann et al. 2025; Nabeshima 2024): every nested prefix of the
    dictionary, latents [0, m) for m in ``cfg.prefixes``, must reconstruct the input on its
    own using the row's active latents that fall inside it. The ``matryoshka`` term is the
    mean of the prefix mse values (the full dictionary is the last prefix) and replaces
    ``mse`` in the loss, so early latents learn general features. Inference is plain TopK.
    """

    architecture = "matryoshka"

    def _train_terms(self, xs: Tensor, ts: Tensor, dead: Tensor | None, want_latents: bool) -> _Terms:
        pre, xc, act = self._select(xs)
        S, B, k = act.idx.shape
        prefix_mse = []
        x_hat = None
        for m in self.cfg.prefixes:
            if m >= self.cfg.d_sae:
                x_hat = self._decode_active(act)
                prefix_mse.append(seed_mse(x_hat, ts))
            else:
                inside = (act.idx < m).reshape(S * B, k).to(act.values.dtype)
                part = self._decode_active(act, act.values * inside)
                prefix_mse.append(seed_mse(part, ts))
        aux = self._aux_loss(pre, xc, ts, x_hat, dead, sparse_grad=act.pattern is not None)
        terms = self._active_terms(act, x_hat, aux, want_latents)
        return terms._replace(matryoshka=torch.stack(prefix_mse, 0).mean(0))
