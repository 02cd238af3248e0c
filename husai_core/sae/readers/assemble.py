"""Build one of our SAEs from mapped parameters and check that it reproduces the source model."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ...errors import HusaiError
from ..base import BaseSAE
from ..config import SAEConfig


# log-threshold whose exp() is exactly 0 in every float dtype (a JumpReLU that is a ReLU)
_ZERO_LOG_THRESHOLD = -1000.0


# ====================================================================== shared conversion
def _assemble(arch: str, src: str, dtype: torch.dtype, *, enc_rows: Tensor, b_enc: Tensor, dec_rows: Tensor,
              b_dec: Tensor, pre_bias: Tensor | str | None, k: int | None = None, threshold: Tensor | None = None,
              transcoder: bool = False, extra: dict[str, Any]) -> BaseSAE:
    """Our SAE from source tensors: encoder rows (d_sae, d_in), decoder rows (d_sae, d_out).

    ``pre_bias`` is what the source subtracts before the encoder: ``"b_dec"`` (b_dec itself,
    our convention), a tensor, or None (nothing). For an SAE
    ours subtracts ``b_dec``, so a different pre-bias is folded into ``b_enc``; a transcoder
    keeps its own input bias ``b_in``. ``threshold`` (d_sae,) >= 0 for batchtopk/jumprelu.
    """
    from ..checkpoint import sae_from_public

    for name, t in (("encoder", enc_rows), ("encoder bias", b_enc), ("decoder", dec_rows), ("decoder bias", b_dec)):
        if not t.is_floating_point() or not bool(torch.isfinite(t).all()):
            raise HusaiError(f"corrupt SAE weights in {src}: the {name} has non-finite or non-float values")
    d_sae, d_in = enc_rows.shape
    d_out = dec_rows.shape[1]
    # Matrices stay float32 (an SAE with 10^5 latents is gigabytes); vectors are worked in float64.
    E, D = enc_rows.to(torch.float32), dec_rows.to(torch.float32)
    be, bd = b_enc.to(torch.float64), b_dec.to(torch.float64)
    th = None if threshold is None else threshold.to(torch.float64)
    tensors: dict[str, Tensor] = {}
    if isinstance(pre_bias, str) and pre_bias != "b_dec":
        raise ValueError(f"pre_bias must be 'b_dec', a tensor or None, got {pre_bias!r}")
    if transcoder:
        if isinstance(pre_bias, str):
            raise ValueError("a transcoder has its own input bias")
        tensors["b_in"] = torch.zeros(d_in, dtype=torch.float64) if pre_bias is None else pre_bias.to(torch.float64)
    elif not isinstance(pre_bias, str):
        pb = torch.zeros_like(bd) if pre_bias is None else pre_bias.to(torch.float64)
        # (x - pb) E^T + be == (x - bd) E^T + (be + E (bd - pb))
        be = be + _matvec64(enc_rows, bd - pb)

    norms = D.norm(dim=1)
    if not _unit(norms, dtype):
        worst = float((norms.double() - 1).abs().max())
        if arch == "topk":
            raise HusaiError(f"unsupported SAE in {src}: TopK with decoder rows that are not unit-norm "
                             f"(max |norm - 1| = {worst:.3g}); folding the norms into the encoder would "
                             f"change which latents are selected")
        n = torch.cat([r.to(torch.float64).norm(dim=1) for r in dec_rows.split(4096)])
        if bool((n == 0).any()):
            raise HusaiError(f"unsupported SAE in {src}: decoder row {int((n == 0).nonzero()[0])} is zero, "
                             f"so it cannot be normalised to unit norm")
        n32 = n.to(torch.float32)[:, None]
        E, D = E * n32, D / n32
        be = be * n
        if th is not None:
            th = th * n
        if arch == "batchtopk":
            arch = "jumprelu"  # one threshold per latent now
            extra = {**extra, "note": "BatchTopK with non-unit decoder rows: read as JumpReLU"}
    kw: dict[str, Any] = {"architecture": arch, "d_in": d_in, "d_sae": d_sae, "extra": extra}
    if arch in ("topk", "batchtopk"):
        kw["k"] = k
    if transcoder:
        kw.update(transcoder=True, d_out=d_out)
    try:
        cfg = SAEConfig(**kw)
    except HusaiError as exc:
        raise HusaiError(f"cannot represent the SAE in {src}: {exc}") from None
    tensors.update({"W_enc": E.transpose(0, 1), "b_enc": be, "W_dec": D, "b_dec": bd})
    if arch == "jumprelu":
        tensors["log_threshold"] = torch.where(th > 0, th.clamp_min(1e-300).log(),
                                               torch.full_like(th, _ZERO_LOG_THRESHOLD))
    elif arch == "batchtopk":
        tensors["batchtopk_threshold"] = th[0].reshape(())
        tensors["batchtopk_calibrated"] = torch.tensor(True)
    out = {n: (t.to(torch.float32) if t.is_floating_point() else t) for n, t in tensors.items()}
    return sae_from_public(cfg, out, src)


def _matvec64(rows: Tensor, v: Tensor, chunk: int = 4096) -> Tensor:
    """rows (m, d) @ v (d,) in float64, a block of rows at a time (no float64 copy of the matrix)."""
    return torch.cat([r.to(torch.float64) @ v for r in rows.split(chunk)])


def _unit(norms: Tensor, dtype: torch.dtype) -> bool:
    """Decoder rows count as unit-norm at float32 rounding (low-precision dtypes: their eps)."""
    rtol = 1e-5 if torch.finfo(dtype).bits >= 32 else float(torch.finfo(dtype).eps)
    return bool(torch.allclose(norms, torch.ones_like(norms), rtol=rtol, atol=1e-8))
