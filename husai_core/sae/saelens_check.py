"""The agreement check of the SAELens backend: our imported SAE must reproduce SAELens's own
objects (latents and reconstructions to ``AGREEMENT_TOL``, relative to the values' scale above 1)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..errors import HusaiError
from .base import BaseSAE

AGREEMENT_TOL = 1e-5


# ---------------------------------------------------------------------------- agreement
def _latent_scale(sl_sae: Any) -> Tensor:
    """Per-latent factor from SAELens's latents to ours: the decoder norms that
    ``import_saelens`` folds into the encoder, except for TopK, whose latents are already
    ours (with ``rescale_acts_by_decoder_norm`` they are in unit-decoder units; without it
    the import keeps the decoder norms, since a fold would change the top-k selection)."""
    if sl_sae.cfg.architecture() == "topk":
        return torch.ones(sl_sae.W_dec.shape[0], device=sl_sae.W_dec.device)
    return sl_sae.W_dec.detach().norm(dim=-1)


@torch.no_grad()
def _ambiguous_rows(ours: BaseSAE, x: Tensor, tol: float) -> Tensor:
    """Rows whose latent selection flips under float rounding of size ``tol`` (a top-k
    boundary tie, or a pre-activation at a JumpReLU / BatchTopK threshold)."""
    pre = ours.pre_activations(x.unsqueeze(0))[0]
    arch = ours.cfg.architecture
    if arch in ("topk", "matryoshka") and ours.cfg.k < pre.shape[-1]:
        v = pre.topk(ours.cfg.k + 1, dim=-1).values
        return (v[:, -2] - v[:, -1]) <= tol
    if arch in ("jumprelu", "batchtopk") and hasattr(ours, "threshold"):
        theta = ours.threshold.reshape(1, -1).to(pre.dtype) if arch == "jumprelu" else ours.threshold.to(pre.dtype)
        return ((pre - theta).abs() <= tol).any(-1)
    return torch.zeros(pre.shape[0], dtype=torch.bool, device=pre.device)


@torch.no_grad()
def compare_with_saelens(ours: BaseSAE, sl_sae: Any, x: Tensor, name: str = "SAELens", *,
                         tol: float = AGREEMENT_TOL) -> dict[str, float]:
    """Max abs differences of latents (in unit-decoder units), reconstructions and decodes of
    the same latents between our SAE and a SAELens SAE on rows ``x``; ``HusaiError`` when one
    exceeds ``tol`` times max(1, the reference values' largest magnitude). Rows whose
    selection is a float tie (see ``_ambiguous_rows``) are left out of the encode checks."""
    was_training = getattr(sl_sae, "training", False)
    sl_sae.eval()
    try:
        x = x.to(ours.device, torch.float32)
        scale = _latent_scale(sl_sae).to(ours.device)
        z_sl = sl_sae.encode(x.to(sl_sae.W_dec.device)).to(ours.device)
        z_sl = z_sl.to_dense() if z_sl.is_sparse else z_sl
        r_sl = sl_sae.decode(z_sl.to(sl_sae.W_dec.device)).to(ours.device)
        z = ours.encode(x)
        r = ours.decode(z)
        d_sl = sl_sae.decode((z / scale).to(sl_sae.W_dec.device)).to(ours.device)
    finally:
        sl_sae.train(was_training)
    pre_scale = float(ours.pre_activations(x.unsqueeze(0)).abs().max())
    amb = _ambiguous_rows(ours, x, tol * max(1.0, pre_scale))
    keep = ~amb
    z_ref = z_sl * scale
    diffs = {
        "encode": float((z - z_ref)[keep].abs().max()) if keep.any() else 0.0,
        "recon": float((r - r_sl)[keep].abs().max()) if keep.any() else 0.0,
        "decode": float((r - d_sl).abs().max()),
    }
    limits = {"encode": tol * max(1.0, float(z_ref.abs().max())),
              "recon": tol * max(1.0, float(r_sl.abs().max())),
              "decode": tol * max(1.0, float(d_sl.abs().max()))}
    bad = [f"{k} max |diff| {diffs[k]:.3g} > {limits[k]:.3g}" for k in diffs if not diffs[k] <= limits[k]]
    if bad or amb.double().mean() > 0.5:
        what = "; ".join(bad) or f"{int(amb.sum())} of {len(amb)} rows are selection ties"
        raise HusaiError(f"the imported SAE does not reproduce {name}: {what}")
    return {**diffs, "ambiguous_rows": int(amb.sum())}
