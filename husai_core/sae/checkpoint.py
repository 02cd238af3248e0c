"""SAE checkpoints: ``dir/sae.safetensors`` (weights) + ``dir/config.json`` (SAEConfig).

Tensors are stored under their public names and shapes (``W_enc`` (d_in, d_sae), ``b_enc``,
``W_dec`` (d_sae, d_out), ``b_dec``, plus ``b_in`` / ``log_threshold`` /
``batchtopk_threshold`` / ``batchtopk_calibrated`` where the architecture has them), so other
tools can read them without this package. Both files are written atomically.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .. import __version__
from ..device import pick_device
from ..errors import HusaiError
from ..io import load_tensors, read_json, save_tensors, write_json
from .base import BaseSAE
from .build import SAE_CLASSES
from .config import SAEConfig

WEIGHTS_FILE = "sae.safetensors"
CONFIG_FILE = "config.json"
FORMAT = "husai.sae"
FORMAT_VERSION = 1

# internal parameter/buffer name -> (public name, stored transposed?)
_PUBLIC = {
    "enc_w": ("W_enc", True),
    "enc_b": ("b_enc", False),
    "dec_w": ("W_dec", False),
    "dec_b": ("b_dec", False),
    "in_b": ("b_in", False),
    "log_threshold": ("log_threshold", False),
    "bt_threshold": ("batchtopk_threshold", False),
    "calibrated": ("batchtopk_calibrated", False),
}


def public_tensors(sae: BaseSAE) -> dict[str, torch.Tensor]:
    """The SAE's tensors under their public names and shapes (seed axis dropped)."""
    if sae.n_stack != 1:
        raise HusaiError("save a single SAE; call .unstack() on a stacked one first")
    out = {}
    for name, t in sae.state_dict().items():
        public, transpose = _PUBLIC[name]
        t = t[0]
        out[public] = (t.transpose(-1, -2) if transpose else t).detach().cpu().contiguous()
    return out


def sae_from_public(cfg: SAEConfig, tensors: dict[str, torch.Tensor], source: str) -> BaseSAE:
    """Build an SAE of ``cfg`` and fill it from public-name tensors, checking names and shapes."""
    sae = SAE_CLASSES[cfg.architecture](cfg, 1)
    state = {}
    for name, ref in sae.state_dict().items():
        public, transpose = _PUBLIC[name]
        if public not in tensors:
            raise HusaiError(f"corrupt SAE checkpoint {source}: missing tensor {public!r}")
        t = tensors[public]
        t = t.transpose(-1, -2) if transpose else t
        if tuple(t.shape) != tuple(ref.shape[1:]):
            raise HusaiError(
                f"corrupt SAE checkpoint {source}: tensor {public!r} has shape {tuple(tensors[public].shape)}, "
                f"expected {tuple(ref.shape[1:][::-1] if transpose else ref.shape[1:])}"
            )
        state[name] = t.unsqueeze(0).to(ref.dtype).clone()
    extra = sorted(set(tensors) - {_PUBLIC[n][0] for n in state})
    if extra:
        raise HusaiError(f"corrupt SAE checkpoint {source}: unexpected tensor(s) {', '.join(extra)}")
    sae.load_state_dict(state)
    return sae


def save_sae(sae: BaseSAE, directory: str | os.PathLike) -> Path:
    """Write ``directory/sae.safetensors`` and ``directory/config.json``; returns the folder."""
    directory = Path(directory)
    tensors = public_tensors(sae)
    save_tensors(directory / WEIGHTS_FILE, tensors)
    write_json(directory / CONFIG_FILE, {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "husai_version": __version__,
        "architecture": sae.cfg.architecture,
        "config": sae.cfg.to_dict(),
    })
    return directory


def load_sae(directory: str | os.PathLike, device: str | torch.device = "cpu") -> BaseSAE:
    """Load a checkpoint written by ``save_sae``; a missing or corrupt file is a HusaiError."""
    directory = Path(directory)
    if not directory.is_dir():
        raise HusaiError(f"missing SAE checkpoint folder: {directory}")
    meta = read_json(directory / CONFIG_FILE, "SAE config")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or "config" not in meta:
        raise HusaiError(f"corrupt SAE config: {directory / CONFIG_FILE} (not a {FORMAT} checkpoint)")
    if meta.get("format_version") != FORMAT_VERSION:
        raise HusaiError(f"unsupported SAE checkpoint version {meta.get('format_version')!r} in {directory}")
    try:
        cfg = SAEConfig.from_dict(meta["config"])
    except HusaiError as exc:
        raise HusaiError(f"corrupt SAE config: {directory / CONFIG_FILE} ({exc})") from None
    except TypeError as exc:
        raise HusaiError(f"corrupt SAE config: {directory / CONFIG_FILE} ({exc})") from None
    tensors = load_tensors(directory / WEIGHTS_FILE, "SAE weights")
    sae = sae_from_public(cfg, tensors, str(directory / WEIGHTS_FILE))
    return sae.to(pick_device(device)).eval()
