"""An SAE as the matching metrics see it (decoder rows, optionally latents on data), the
alive-latent scope, and the Hungarian call every metric shares (limits, matched mean).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from .. import assignment as _assignment
from ..errors import HusaiError


SCOPES = ("all", "alive")
ENCODE_BATCH = 4096

Matrix = Tensor | np.ndarray


# --------------------------------------------------------------------------- views
class SAEView(NamedTuple):
    """What the metrics need of one SAE. ``decoder``: (d_sae, d_in) decoder rows (W_dec);
    ``encoder``: (d_sae, d_in) encoder rows (W_enc transposed); ``latents``: (n_rows, d_sae)
    activations on held-out rows, or None (no activation matching then); ``alive``: (d_sae,)
    bool, latents that fired (> 0) on at least one of those rows."""

    decoder: Tensor
    encoder: Tensor
    latents: Tensor | None
    alive: Tensor


def view_of(sae: Any, rows: Matrix, batch_size: int = ENCODE_BATCH) -> SAEView:
    """Latents of ``sae`` on ``rows`` (n_rows, d_in), under no_grad in batches of ``batch_size``.

    ``sae`` is anything with ``.W_dec`` (d_sae, d_out), ``.W_enc`` (d_in, d_sae) and
    ``.encode(x) -> (n, d_sae)`` (e.g. ``husai_core.sae.BaseSAE`` of one seed). Rows are moved
    to W_enc's device and dtype; latents stay on that device. ``alive`` = fired (> 0) on at
    least one row.
    """
    for attr in ("W_dec", "W_enc", "encode"):
        if not hasattr(sae, attr):
            raise HusaiError(f"view_of needs an SAE with W_dec, W_enc and encode(); {type(sae).__name__} has no {attr}")
    dec, enc_t = sae.W_dec.detach(), sae.W_enc.detach()
    if dec.ndim != 2 or enc_t.ndim != 2:
        raise HusaiError(f"view_of needs one SAE (2-D W_dec/W_enc), got W_dec {tuple(dec.shape)}, "
                         f"W_enc {tuple(enc_t.shape)} (a stack of seeds? take one seed)")
    d_sae = dec.shape[0]
    if enc_t.shape[1] != d_sae:
        raise HusaiError(f"W_enc {tuple(enc_t.shape)} is not (d_in, d_sae={d_sae})")
    if int(batch_size) != batch_size or batch_size < 1:
        raise HusaiError(f"batch_size must be a positive integer, got {batch_size!r}")
    x = torch.from_numpy(np.ascontiguousarray(rows)) if isinstance(rows, np.ndarray) else rows
    if not isinstance(x, Tensor) or x.ndim != 2 or x.shape[1] != enc_t.shape[0]:
        shape = tuple(x.shape) if hasattr(x, "shape") else type(x).__name__
        raise HusaiError(f"rows must be an (n_rows, d_in={enc_t.shape[0]}) tensor or array, got {shape}")
    if x.shape[0] == 0:
        raise HusaiError("rows is empty: need at least one held-out row to tell alive latents")
    dtype = enc_t.dtype if enc_t.is_floating_point() else torch.float32
    parts = []
    with torch.no_grad():
        for start in range(0, x.shape[0], int(batch_size)):
            z = sae.encode(x[start : start + int(batch_size)].to(device=enc_t.device, dtype=dtype))
            if z.ndim != 2 or z.shape[1] != d_sae:
                raise HusaiError(f"encode() returned shape {tuple(z.shape)}, expected (batch, d_sae={d_sae})")
            parts.append(z.detach())
    latents = torch.cat(parts)
    return SAEView(dec, enc_t.T, latents, (latents > 0).any(dim=0))


def restrict(view: SAEView) -> SAEView:
    """The view over its alive latents only (decoder rows, encoder rows, latent columns)."""
    alive = _alive_mask(view, "view")
    if not alive.any():
        raise HusaiError("view has no alive latent (none fired on the held-out rows): alive-scope metrics are undefined")
    idx = torch.from_numpy(np.flatnonzero(alive)).to(view.decoder.device)
    lat = None if view.latents is None else view.latents[:, idx.to(view.latents.device)]
    return SAEView(view.decoder[idx], view.encoder[idx.to(view.encoder.device)], lat,
                   torch.ones(len(idx), dtype=torch.bool, device=view.alive.device))


def _alive_mask(view: SAEView, name: str) -> np.ndarray:
    alive = view.alive
    alive = alive.detach().cpu().numpy() if isinstance(alive, Tensor) else np.asarray(alive)
    if alive.dtype != np.bool_ or alive.ndim != 1 or alive.shape[0] != view.decoder.shape[0]:
        raise HusaiError(f"{name}.alive must be a bool vector of length d_sae={view.decoder.shape[0]}, "
                         f"got dtype {alive.dtype} shape {alive.shape}")
    return alive


def _match(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return _assignment.solve_dense(cost)


def _limits(dense_limit, top_m) -> tuple[float, int]:
    """Defaults read at call time (``assignment.DENSE_LIMIT`` / ``TOP_M``)."""
    return (_assignment.DENSE_LIMIT if dense_limit is None else dense_limit,
            _assignment.TOP_M if top_m is None else top_m)


def _matched_mean(cost: np.ndarray) -> float:
    rows, cols = _match(cost)
    return float(1.0 - cost[rows, cols].mean())
