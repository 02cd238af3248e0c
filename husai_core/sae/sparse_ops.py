"""Sparse-aware autograd for the TopK family.

A TopK latent vector has only ``k`` non-zero entries per row, so the decoder product and
every gradient that flows through it touch only ``rows * k`` decoder/encoder rows. Dense
autograd would instead run three more ``batch x d_sae x d`` matmuls per step. The two
Functions here keep the one dense matmul that is unavoidable (the encoder forward, done by
the caller under ``no_grad``) and do the rest with ``embedding_bag``-style gathers:

* ``sparse_decode(values, W, pattern)``: ``out[r] = sum_s values[r, s] * W[idx[r, s]]``.
  Backward: grad of ``values`` is a gathered dot product; grad of ``W`` accumulates only
  into the active rows (a "transposed" embedding_bag over rows sorted by latent).
* ``sparse_encode(values, xc, W_enc, b_enc, b_in, pattern)``: returns ``values`` (the
  pre-activations the caller already selected) and routes their gradient to the encoder
  rows, encoder bias and input bias without materialising a dense ``rows x d_sae`` grad.

Parameters are stacked: ``W`` is ``(S, d_sae, d)`` for ``S`` seeds trained together, and the
pattern's indices are already offset by ``s * d_sae`` so one flat table serves all seeds.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor


class SparsePattern:
    """Active-latent indices ``(rows, k)`` into a flat table of ``n_latents`` rows.

    The sort by latent (needed by every weight gradient) is computed once, lazily, and
    shared between the encoder and decoder backward passes.
    """

    def __init__(self, idx: Tensor, n_latents: int):
        self.idx = idx.reshape(idx.shape[0], -1)
        self.n_rows, self.k = self.idx.shape
        self.n_latents = n_latents
        self._flat: Tensor | None = None
        self._by_latent: tuple[Tensor, Tensor, Tensor] | None = None
        self._bags: tuple[Tensor, Tensor] | None = None

    @property
    def flat(self) -> Tensor:
        if self._flat is None:
            self._flat = self.idx.reshape(-1)
        return self._flat

    def bags(self) -> tuple[Tensor, Tensor]:
        """(offsets, offset2bag) describing one bag of ``k`` entries per row."""
        if self._bags is None:
            dev = self.idx.device
            offsets = torch.arange(0, self.n_rows * self.k, self.k, device=dev)
            offset2bag = torch.arange(self.n_rows, device=dev).repeat_interleave(self.k)
            self._bags = (offsets, offset2bag)
        return self._bags

    def by_latent(self) -> tuple[Tensor, Tensor, Tensor]:
        """(perm, rows, offsets): entries grouped by latent, for transposed products."""
        if self._by_latent is None:
            flat = self.flat
            _, perm = torch.sort(flat, stable=True)
            if self.k & (self.k - 1) == 0:  # k a power of two: a shift beats int64 division
                rows = perm >> (self.k.bit_length() - 1)
            else:
                rows = torch.div(perm, self.k, rounding_mode="floor")
            counts = torch.bincount(flat, minlength=self.n_latents)
            offsets = torch.zeros_like(counts)
            offsets[1:] = torch.cumsum(counts[:-1], 0)
            self._by_latent = (perm, rows, offsets)
        return self._by_latent

    def transposed_product(self, weights: Tensor, dense: Tensor) -> Tensor:
        """``G^T @ dense`` where ``G[r, idx[r, s]] = weights[r, s]``: shape (n_latents, d).

        Each latent's row is the weighted sum of the ``dense`` rows it was active in, which
        is exactly an embedding_bag with one bag per latent.
        """
        perm, rows, offsets = self.by_latent()
        psw = weights.reshape(-1).index_select(0, perm).to(dense.dtype)
        return F.embedding_bag(rows, dense, offsets, mode="sum", per_sample_weights=psw)

    def gathered_dot(self, dense: Tensor, table: Tensor) -> Tensor:
        """``out[r, s] = <dense[r], table[idx[r, s]]>`` (a sampled dense-dense product)."""
        if dense.device.type == "cpu":
            try:  # on CPU the sampled-matmul kernel is about twice as fast as the bag kernel
                return self._dot_sampled(dense, table)
            except (RuntimeError, NotImplementedError):
                pass
        try:
            return self._dot_bags(dense, table)
        except (RuntimeError, AttributeError):  # private op gone or changed
            return self._dot_chunked(dense, table)

    def _dot_sampled(self, dense: Tensor, table: Tensor) -> Tensor:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
            crow = torch.arange(0, self.n_rows * self.k + 1, self.k, device=dense.device)
            pattern = torch.sparse_csr_tensor(crow, self.flat, dense.new_zeros(self.n_rows * self.k),
                                              size=(self.n_rows, table.shape[0]))
            out = torch.sparse.sampled_addmm(pattern, dense, table.t(), beta=0.0)
        return out.values().view(self.n_rows, self.k)

    def _dot_bags(self, dense: Tensor, table: Tensor) -> Tensor:
        # the kernel behind embedding_bag's per_sample_weights gradient (CPU and CUDA)
        offsets, offset2bag = self.bags()
        out = torch.ops.aten._embedding_bag_per_sample_weights_backward(
            dense.contiguous(), table, self.flat, offsets, offset2bag, 0, -1)
        return out.view(self.n_rows, self.k)

    def _dot_chunked(self, dense: Tensor, table: Tensor) -> Tensor:
        out = dense.new_empty(self.n_rows, self.k)
        step = max(1, (1 << 22) // max(1, self.k * table.shape[1]))
        for lo in range(0, self.n_rows, step):
            rows = table[self.idx[lo : lo + step]]
            out[lo : lo + step] = torch.bmm(rows, dense[lo : lo + step, :, None])[..., 0]
        return out


class _SparseDecode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, values: Tensor, weight: Tensor, pattern: SparsePattern) -> Tensor:
        table = weight.reshape(-1, weight.shape[-1])
        ctx.pattern = pattern
        ctx.save_for_backward(values, table)
        ctx.weight_shape = weight.shape
        return F.embedding_bag(pattern.idx, table, mode="sum", per_sample_weights=values)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        values, table = ctx.saved_tensors
        pattern: SparsePattern = ctx.pattern
        grad_values = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_values = pattern.gathered_dot(grad_out, table)
        if ctx.needs_input_grad[1]:
            grad_weight = pattern.transposed_product(values, grad_out.contiguous())
            grad_weight = grad_weight.view(ctx.weight_shape)
        return grad_values, grad_weight, None


class _SparseEncode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, values, xc, w_enc, b_enc, b_in, pattern: SparsePattern, n_stack: int):
        ctx.pattern = pattern
        ctx.n_stack = n_stack
        ctx.save_for_backward(xc, w_enc)
        ctx.b_enc_shape = b_enc.shape
        return values.view_as(values)  # same numbers; only the backward differs

    @staticmethod
    def backward(ctx, grad: Tensor):
        xc, w_enc = ctx.saved_tensors
        pattern: SparsePattern = ctx.pattern
        grad_w = grad_b_enc = grad_b_in = None
        if ctx.needs_input_grad[2]:
            grad_w = pattern.transposed_product(grad, xc).view(w_enc.shape)
        if ctx.needs_input_grad[3] or ctx.needs_input_grad[4]:
            flat = grad.new_zeros(pattern.n_latents)
            flat.index_add_(0, pattern.flat, grad.reshape(-1))
            grad_b_enc = flat.view(ctx.b_enc_shape)
            if ctx.needs_input_grad[4]:
                # pre = (x - b_in) @ W^T + b_enc, so d pre_j / d b_in = -W_j: only the summed
                # per-latent gradient is needed, one small (1 x d_sae) @ (d_sae x d_in) product.
                w = w_enc.view(ctx.n_stack, -1, w_enc.shape[-1])
                if ctx.n_stack == 1:
                    grad_b_in = -torch.mv(w[0].t(), flat).unsqueeze(0)
                else:
                    grad_b_in = -torch.bmm(flat.view(ctx.n_stack, 1, -1), w).squeeze(1)
        return None, None, grad_w, grad_b_enc, grad_b_in, None, None


def sparse_decode(values: Tensor, weight: Tensor, pattern: SparsePattern) -> Tensor:
    """``(rows, k)`` values at ``pattern`` times the stacked decoder ``(S, d_sae, d)`` → ``(rows, d)``."""
    return _SparseDecode.apply(values, weight, pattern)


def sparse_encode(
    values: Tensor, xc: Tensor, w_enc: Tensor, b_enc: Tensor, b_in: Tensor, pattern: SparsePattern
) -> Tensor:
    """Attach sparse encoder gradients to pre-activations selected under ``no_grad``.

    ``values[r, s]`` must equal ``xc[r] @ w_enc[idx[r, s]] + b_enc[idx[r, s]]`` with
    ``xc = x - b_in``; ``w_enc`` is ``(S, d_sae, d_in)``, ``b_enc`` ``(S, d_sae)``, ``b_in``
    ``(S, d_in)`` and ``xc`` ``(S * rows_per_seed, d_in)``.
    """
    return _SparseEncode.apply(values, xc, w_enc, b_enc, b_in, pattern, w_enc.shape[0])
