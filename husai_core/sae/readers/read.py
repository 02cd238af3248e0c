"""``read_sae``: any supported checkpoint as one of our ``BaseSAE`` subclasses."""

from __future__ import annotations

import os

import torch

from ...device import pick_device
from ...errors import HusaiError
from ..base import BaseSAE
from .foreign import _read_dictionary_learning, _read_sparsify
from .formats import FORMATS, _locate, _one_line


# ====================================================================== reading
def read_sae(path: str | os.PathLike, format: str = "auto", device: str | torch.device = "cpu") -> BaseSAE:
    """Read the SAE at ``path`` (any of ``FORMATS``; ``"auto"`` detects it) as our ``BaseSAE``.

    The result is in ``eval()`` mode on ``device``. Its ``encode`` / ``decode`` match the
    source library's model (see the module docstring for each convention mapped, and for
    the decoder-norm folding that rescales latents when source decoder rows are not
    unit-norm). Anything missing, corrupt or not representable is a one-line ``HusaiError``.
    """
    if format != "auto" and format not in FORMATS:
        raise HusaiError(f"unknown SAE format {format!r}; choose 'auto' or one of {', '.join(FORMATS)}")
    try:
        fmt, target = _locate(path)
        if format != "auto" and fmt != format:
            raise HusaiError(f"{path} holds a {fmt} SAE checkpoint, not {format}")
        if fmt == "husai":
            from ..checkpoint import load_sae

            return load_sae(target, device=device)
        if fmt == "saelens":
            from ..saelens import import_saelens

            return import_saelens(target, device=device)
        sae = _read_sparsify(target) if fmt == "sparsify" else _read_dictionary_learning(target)
        return sae.to(pick_device(device)).eval()
    except HusaiError as exc:
        msg = str(exc)
        if "\n" in msg or "\r" in msg:
            raise HusaiError(_one_line(msg)) from None
        raise
