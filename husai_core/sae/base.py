"""What every SAE architecture shares: parameters, shapes, biases, loss (decoder-norm upkeep: :mod:`.decoder_norm`).

Parameters are *stacked*: every tensor has a leading seed axis ``S`` so that several seeds of
one configuration can train as one vectorised model (``stack_saes`` / ``unstack``). A normal
SAE has ``S == 1`` and its public views (``W_enc``, ``W_dec``, ...) drop that axis:

    W_enc (d_in, d_sae)   b_enc (d_sae,)   W_dec (d_sae, d_out)   b_dec (d_out,)

``d_out == d_in`` unless the SAE is a transcoder. For a plain SAE the bias subtracted before
the encoder is ``b_dec`` itself (the published tied pre-encoder bias); a transcoder has its
own input bias ``b_in`` because input and target live at different hooks.

Subclasses implement ``_activate`` (inference latents from pre-activations) and
``_train_terms`` (x_hat, latents, loss terms for one training batch).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn

from ..errors import HusaiError
from .config import TOPK_FAMILY, SAEConfig
from .decoder_norm import DecoderNorm
from .topk_kernel import topk_last
from .sparse_ops import SparsePattern, sparse_decode, sparse_encode


class SAEOutput(NamedTuple):
    """Everything one forward pass computes. Terms are per seed (scalars when S == 1).

    ``loss`` is what training minimises (see ``SAEConfig`` for its composition); for a stack
    it has one entry per seed and training backpropagates ``loss.sum()`` (seeds are
    independent, so each keeps exactly its own gradient). The other terms are unweighted
    and always present (zero when an architecture does not use them).
    ``fired[j]`` counts the rows in which latent ``j`` was non-zero.
    """

    x_hat: Tensor
    latents: Tensor | None
    loss: Tensor
    mse: Tensor
    l1: Tensor
    l0: Tensor
    aux: Tensor
    matryoshka: Tensor
    fired: Tensor


class _Terms(NamedTuple):
    x_hat: Tensor  # (S, B, d_out)
    latents: Tensor | None  # (S, B, d_sae) when asked for
    l1: Tensor  # (S,)
    l0: Tensor  # (S,)
    aux: Tensor  # (S,)
    matryoshka: Tensor  # (S,)
    fired: Tensor  # (S, d_sae)


class BaseSAE(DecoderNorm, nn.Module):
    """Shared machinery; use ``build_sae(cfg, seed)`` rather than the classes directly."""

    architecture: str = ""

    def __init__(self, cfg: SAEConfig, n_stack: int = 1):
        super().__init__()
        if cfg.architecture != self.architecture:
            raise HusaiError(f"{type(self).__name__} needs architecture {self.architecture!r}, got {cfg.architecture!r}")
        if not isinstance(n_stack, int) or n_stack < 1:
            raise HusaiError(f"n_stack must be a positive integer, got {n_stack!r}")
        self.cfg = cfg
        self.n_stack = n_stack
        S, d_in, d_sae, d_out = n_stack, cfg.d_in, cfg.d_sae, cfg.d_target
        # Encoder rows are stored (d_sae, d_in), one row per latent, so sparse gradient
        # accumulation writes contiguous rows; W_enc exposes the SAELens (d_in, d_sae) view.
        self.enc_w = nn.Parameter(torch.zeros(S, d_sae, d_in))
        self.enc_b = nn.Parameter(torch.zeros(S, d_sae))
        self.dec_w = nn.Parameter(torch.zeros(S, d_sae, d_out))
        self.dec_b = nn.Parameter(torch.zeros(S, d_out))
        self.in_b = nn.Parameter(torch.zeros(S, d_in)) if cfg.transcoder else None

    # ------------------------------------------------------------------ initialisation
    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator) -> None:
        """Random decoder rows of norm ``cfg.decoder_init_norm`` (1: unit); encoder initialised to
        the decoder's transpose (Gao et al., sparsify, SAELens) for SAEs, independently for
        transcoders; zero biases."""
        S, d_sae, d_in, d_out = self.n_stack, self.cfg.d_sae, self.cfg.d_in, self.cfg.d_target
        dec = torch.randn(S, d_sae, d_out, generator=generator)
        dec = dec / dec.norm(dim=-1, keepdim=True).clamp_min(1e-12) * self.cfg.decoder_init_norm
        if self.cfg.transcoder:
            enc = torch.randn(S, d_sae, d_in, generator=generator)
            enc = enc / enc.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        else:
            enc = dec.clone()
        self.dec_w.copy_(dec)
        self.enc_w.copy_(enc)
        self.enc_b.zero_()
        self.dec_b.zero_()
        if self.in_b is not None:
            self.in_b.zero_()

    @torch.no_grad()
    def init_biases_from_data(self, x: Tensor, x_target: Tensor | None = None) -> None:
        """Set the pre-encoder bias (and a transcoder's output bias) from the data.

        ``cfg.b_dec_init``: ``geometric_median`` (a few Weiszfeld iterations on up to 8192
        evenly spaced rows), ``mean``, or ``zeros``.
        """
        method = self.cfg.b_dec_init
        if method == "zeros":
            return
        stat = geometric_median if method == "geometric_median" else _mean_of_rows
        x = self._check_width(x, self.cfg.d_in, "activations")
        centre_in = stat(x.reshape(-1, x.shape[-1])).to(self.dec_b)
        if self.cfg.transcoder:
            if x_target is None:
                raise HusaiError("transcoder SAE needs x_target to initialise b_dec")
            t = self._check_width(x_target, self.cfg.d_target, "target activations")
            self.in_b.copy_(centre_in.expand_as(self.in_b))
            self.dec_b.copy_(stat(t.reshape(-1, t.shape[-1])).to(self.dec_b).expand_as(self.dec_b))
        else:
            self.dec_b.copy_(centre_in.expand_as(self.dec_b))

    # ------------------------------------------------------------------ public views
    def _view(self, t: Tensor) -> Tensor:
        return t[0] if self.n_stack == 1 else t

    @property
    def W_enc(self) -> Tensor:
        """Encoder, SAELens layout: (d_in, d_sae) [or (S, d_in, d_sae) for a stack]."""
        return self._view(self.enc_w.transpose(-1, -2))

    @property
    def b_enc(self) -> Tensor:
        return self._view(self.enc_b)

    @property
    def W_dec(self) -> Tensor:
        """Decoder, one unit-norm row per latent: (d_sae, d_out) [or (S, d_sae, d_out)]."""
        return self._view(self.dec_w)

    @property
    def b_dec(self) -> Tensor:
        return self._view(self.dec_b)

    @property
    def b_in(self) -> Tensor:
        """Bias subtracted before the encoder: b_dec for an SAE, its own for a transcoder."""
        return self._view(self.input_bias)

    @property
    def input_bias(self) -> Tensor:
        return self.in_b if self.in_b is not None else self.dec_b

    @property
    def device(self) -> torch.device:
        return self.enc_w.device

    @property
    def dtype(self) -> torch.dtype:
        return self.enc_w.dtype

    @property
    def d_sae(self) -> int:
        return self.cfg.d_sae

    def extra_repr(self) -> str:
        c = self.cfg
        tc = f", transcoder d_out={c.d_target}" if c.transcoder else ""
        return f"architecture={c.architecture}, d_in={c.d_in}, d_sae={c.d_sae}{tc}, n_stack={self.n_stack}"

    # ------------------------------------------------------------------ shapes
    def _check_width(self, x: Tensor, width: int, what: str) -> Tensor:
        if not isinstance(x, Tensor):
            x = torch.as_tensor(x)
        if x.dim() == 0 or x.shape[-1] != width:
            got = "a scalar" if x.dim() == 0 else f"width {x.shape[-1]} (shape {tuple(x.shape)})"
            raise HusaiError(f"{what} have {got} but the SAE expects width {width}")
        return x

    def _stack_in(self, x: Tensor, width: int, what: str) -> tuple[Tensor, tuple[int, ...] | None]:
        """(S, B, width) view of the input and the leading shape to restore (None: stacked)."""
        x = self._check_width(x, width, what).to(device=self.device, dtype=self.dtype)
        S = self.n_stack
        if S > 1 and x.dim() == 3 and x.shape[0] == S:
            return x, None
        lead = tuple(x.shape[:-1])
        flat = x.reshape(1, -1, width)
        return (flat.expand(S, -1, -1) if S > 1 else flat), lead

    def _stack_out(self, t: Tensor, lead: tuple[int, ...] | None) -> Tensor:
        if lead is None or self.n_stack > 1:
            return t
        return t.reshape(*lead, t.shape[-1])

    def _per_seed(self, t: Tensor) -> Tensor:
        return t[0] if self.n_stack == 1 else t

    # ------------------------------------------------------------------ inference
    def pre_activations(self, xs: Tensor) -> Tensor:
        """(S, B, d_in) → encoder pre-activations (S, B, d_sae), after subtracting b_in."""
        xc = xs - self.input_bias.unsqueeze(1)
        return torch.baddbmm(self.enc_b.unsqueeze(1), xc, self.enc_w.transpose(1, 2))

    def _activate(self, pre: Tensor) -> Tensor:
        raise NotImplementedError

    def encode(self, x: Tensor) -> Tensor:
        """Dense latents (..., d_sae) with inference semantics (no negative latents)."""
        xs, lead = self._stack_in(x, self.cfg.d_in, "activations")
        return self._stack_out(self._activate(self.pre_activations(xs)), lead)

    def decode(self, z: Tensor) -> Tensor:
        """Latents (..., d_sae) → reconstruction (..., d_out) = z @ W_dec + b_dec."""
        zs, lead = self._stack_in(z, self.cfg.d_sae, "latents")
        return self._stack_out(torch.baddbmm(self.dec_b.unsqueeze(1), zs, self.dec_w), lead)

    # ------------------------------------------------------------------ training forward
    def forward(
        self,
        x: Tensor,
        x_target: Tensor | None = None,
        dead_mask: Tensor | None = None,
        *,
        return_latents: bool = True,
    ) -> SAEOutput:
        """Reconstruct ``x`` (or, for a transcoder, ``x_target``) and compute every loss term.

        ``dead_mask`` (d_sae,) or (S, d_sae) marks dead latents for the AuxK loss. In
        ``eval()`` mode BatchTopK uses its calibrated threshold; in ``train()`` mode the batch
        top-k. Pass ``return_latents=False`` to skip building the dense latent matrix.
        """
        xs, lead = self._stack_in(x, self.cfg.d_in, "activations")
        if self.cfg.transcoder:
            if x_target is None:
                raise HusaiError("a transcoder needs x_target (the activations to reconstruct)")
            ts, _ = self._stack_in(x_target, self.cfg.d_target, "target activations")
            if ts.shape[1] != xs.shape[1]:
                raise HusaiError(f"x_target has {ts.shape[1]} rows but x has {xs.shape[1]}")
        else:
            ts = xs
        dead = self._dead_mask(dead_mask)
        terms = self._train_terms(xs, ts, dead, return_latents)
        mse = seed_mse(terms.x_hat, ts)
        cfg = self.cfg
        main = terms.matryoshka if cfg.architecture == "matryoshka" else mse
        loss = main
        if cfg.architecture == "relu":
            loss = loss + cfg.l1_coeff * terms.l1
        if cfg.architecture == "jumprelu":
            loss = loss + cfg.l0_coeff * terms.l0
        if cfg.architecture in TOPK_FAMILY:
            loss = loss + cfg.aux_coeff * terms.aux
        return SAEOutput(
            x_hat=self._stack_out(terms.x_hat, lead),
            latents=None if terms.latents is None else self._stack_out(terms.latents, lead),
            loss=self._per_seed(loss),
            mse=self._per_seed(mse),
            l1=self._per_seed(terms.l1),
            l0=self._per_seed(terms.l0),
            aux=self._per_seed(terms.aux),
            matryoshka=self._per_seed(terms.matryoshka),
            fired=self._per_seed(terms.fired),
        )

    def _dead_mask(self, dead_mask: Tensor | None) -> Tensor | None:
        if dead_mask is None:
            return None
        d = torch.as_tensor(dead_mask, device=self.device).bool()
        if d.shape == (self.cfg.d_sae,):
            d = d.expand(self.n_stack, -1)
        if d.shape != (self.n_stack, self.cfg.d_sae):
            raise HusaiError(f"dead_mask has shape {tuple(d.shape)}, expected ({self.n_stack}, {self.cfg.d_sae})")
        return d

    def _train_terms(self, xs: Tensor, ts: Tensor, dead: Tensor | None, want_latents: bool) -> _Terms:
        raise NotImplementedError

    # ------------------------------------------------------------------ shared pieces
    def _zeros(self) -> Tensor:
        return torch.zeros(self.n_stack, device=self.device, dtype=self.dtype)

    def _dense_terms(self, acts: Tensor, want_latents: bool, aux: Tensor | None = None,
                     x_hat: Tensor | None = None) -> _Terms:
        """Terms for architectures whose latents are a dense (S, B, d_sae) tensor."""
        if x_hat is None:
            x_hat = torch.baddbmm(self.dec_b.unsqueeze(1), acts, self.dec_w)
        active = (acts.detach() > 0).to(self.dtype)  # float sums are much faster than bool ones
        return _Terms(
            x_hat=x_hat,
            latents=acts if want_latents else None,
            l1=acts.sum(-1).mean(1),  # latents are non-negative, so this is the L1 norm
            l0=active.sum(-1).mean(1),
            aux=self._zeros() if aux is None else aux,
            matryoshka=self._zeros(),
            fired=active.sum(1).long(),
        )

    def _aux_loss(self, pre: Tensor, xc: Tensor, ts: Tensor, x_hat: Tensor, dead: Tensor | None,
                  sparse_grad: bool) -> Tensor:
        """AuxK (Gao et al.): the top-``k_aux`` dead latents re-predict the residual.

        The aux activations are the dead latents' raw pre-activations (no ReLU), so a latent
        pushed negative everywhere still gets a gradient and can revive. The reconstruction
        has no bias (b_dec is already in the residual) and the loss is scaled by
        min(n_dead / k_aux, 1). With ``sparse_grad`` the values get their encoder gradient
        through ``sparse_encode`` (``pre`` was computed without autograd).
        """
        if dead is None or self.cfg.aux_coeff == 0:
            return self._zeros()
        n_dead = dead.sum(1)
        most = int(n_dead.max())
        if most == 0:
            return self._zeros()
        S, B, d_sae = pre.shape
        k_aux = min(self.cfg.k_aux, most)
        with torch.no_grad():
            masked = self._scores(pre.detach()).masked_fill(~dead.unsqueeze(1), -math.inf)
            vals, idx = topk_last(masked, k_aux)
            if self.cfg.decoder_norm == "free":  # ranked by scaled scores, weighted by raw pre-activations
                vals = torch.where(torch.isfinite(vals), pre.detach().gather(-1, idx), vals)
            valid = torch.isfinite(vals)  # a seed with fewer dead latents than k_aux
            vals = torch.where(valid, vals, torch.zeros_like(vals))
        pattern = SparsePattern(_global_idx(idx, d_sae), S * d_sae)
        if sparse_grad:
            v = sparse_encode(vals.reshape(S * B, k_aux), xc.reshape(S * B, -1), self.enc_w,
                              self.enc_b, self.input_bias, pattern)
        else:
            v = pre.gather(-1, idx).reshape(S * B, k_aux)
        v = v * valid.reshape(S * B, k_aux)
        e_hat = sparse_decode(v, self.dec_w, pattern).view(S, B, -1)
        residual = (ts - x_hat).detach()
        scale = (n_dead.to(self.dtype) / self.cfg.k_aux).clamp(max=1.0)
        return scale * seed_mse(e_hat, residual)

    # ------------------------------------------------------------------ stacking
    def unstack(self) -> list["BaseSAE"]:
        """Split a stack of S seeds into S independent single SAEs (copies)."""
        out = []
        state = self.state_dict()
        for s in range(self.n_stack):
            single = type(self)(self.cfg, 1).to(device=self.device, dtype=self.dtype)
            single.load_state_dict({k: v[s : s + 1].clone() for k, v in state.items()})
            out.append(single)
        return out


def stack_saes(saes: list[BaseSAE]) -> BaseSAE:
    """One vectorised module holding several single SAEs of the same config (seed axis first)."""
    if not saes:
        raise HusaiError("stack_saes needs at least one SAE")
    first = saes[0]
    for s in saes[1:]:
        if type(s) is not type(first) or s.cfg != first.cfg:
            raise HusaiError("stack_saes: all SAEs must share one architecture and config")
    stacked = type(first)(first.cfg, sum(s.n_stack for s in saes)).to(device=first.device, dtype=first.dtype)
    states = [s.state_dict() for s in saes]
    stacked.load_state_dict({k: torch.cat([st[k] for st in states], 0) for k in states[0]})
    return stacked


def seed_mse(x_hat: Tensor, target: Tensor) -> Tensor:
    """Per-seed mean squared error over all elements of (S, B, d) tensors → (S,)."""
    if x_hat.shape[0] == 1:  # one fused op (forward and backward) in the common case
        return torch.nn.functional.mse_loss(x_hat, target).reshape(1)
    return torch.nn.functional.mse_loss(x_hat, target, reduction="none").mean(dim=(1, 2))


def _global_idx(idx: Tensor, d_sae: int) -> Tensor:
    """Local latent indices (S, B, k) → rows of the flat (S*d_sae) table, shape (S*B, k)."""
    S, B, k = idx.shape
    if S == 1:
        return idx.reshape(B, k)
    offs = torch.arange(S, device=idx.device).mul_(d_sae).view(S, 1, 1)
    return (idx + offs).reshape(S * B, k)


def _mean_of_rows(x: Tensor) -> Tensor:
    return x.double().mean(0).float()


def geometric_median(x: Tensor, iters: int = 20, max_rows: int = 8192, tol: float = 1e-7) -> Tensor:
    """Weiszfeld's algorithm for the point minimising the summed distance to the rows of x."""
    x = x.reshape(-1, x.shape[-1])
    if x.shape[0] == 0:
        raise HusaiError("cannot take the geometric median of zero rows")
    if x.shape[0] > max_rows:
        x = x[torch.linspace(0, x.shape[0] - 1, max_rows).round().long().to(x.device)]
    pts = x.double()
    y = pts.mean(0)
    for _ in range(iters):
        w = 1.0 / (pts - y).norm(dim=1).clamp_min(1e-12)
        y_new = (w[:, None] * pts).sum(0) / w.sum()
        done = (y_new - y).norm() <= tol * (1.0 + y.norm())
        y = y_new
        if done:
            break
    return y.float()
