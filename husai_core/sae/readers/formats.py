"""Detect the on-disk format of a checkpoint and locate the checkpoint folder (or file) to read,
plus the small checks every reader shares.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor

from ...errors import HusaiError
from ...io import read_json


FORMATS = ("husai", "saelens", "sparsify", "dictionary_learning")

# husai / SAELens / sparsify / dictionary_learning file names
_HUSAI_CFG, _HUSAI_W = "config.json", "sae.safetensors"
_SL_CFG, _SL_W = "cfg.json", "sae_weights.safetensors"
_SP_CFG, _SP_W = "cfg.json", "sae.safetensors"
_DL_W, _DL_CFG = "ae.pt", "config.json"

_EXPECTED = (
    "config.json + sae.safetensors (husai), cfg.json + sae_weights.safetensors (saelens), "
    "cfg.json + sae.safetensors (sparsify) or ae.pt (dictionary_learning)"
)


# ====================================================================== detection
def detect_format(path: str | os.PathLike) -> str:
    """The format of the SAE checkpoint at ``path``: one of ``FORMATS``.

    ``path`` is a checkpoint folder, a folder holding exactly one checkpoint folder, or a
    dictionary_learning ``.pt`` file. Anything else is a one-line ``HusaiError`` naming the
    path and what was missing.
    """
    return _locate(path)[0]


def _locate(path: str | os.PathLike) -> tuple[str, Path]:
    """(format, the folder or file to read) for ``path``."""
    p = Path(path)
    if not p.exists():
        raise HusaiError(f"no SAE checkpoint at {p}: no such file or folder")
    if p.is_file():
        if p.suffix == ".pt":
            return "dictionary_learning", p
        if p.name in (_HUSAI_CFG, _HUSAI_W, _SL_CFG, _SL_W):
            p = p.parent
        else:
            raise HusaiError(f"{p} is not an SAE checkpoint file: give its folder ({_EXPECTED}) or an ae.pt file")
    if not p.is_dir():
        raise HusaiError(f"no SAE checkpoint at {p}: not a file or folder")
    fmt = _leaf_format(p)
    if fmt is not None:
        return fmt, p
    children = _checkpoint_children(p)
    if len(children) == 1:
        return children[0][1], children[0][0]
    if len(children) > 1:
        listing = ", ".join(f"{c.name} ({f})" for c, f in children)
        raise HusaiError(f"{p} holds {len(children)} SAE checkpoints: {listing}; give the path of one of them")
    raise HusaiError(_missing_message(p))


def _leaf_format(p: Path) -> str | None:
    """The format of the checkpoint directly in folder ``p``, or None if there is none.

    Raises only when a husai config.json is unreadable (it must be read to be recognised).
    """
    has = {n for n in (_HUSAI_CFG, _HUSAI_W, _SL_CFG, _SL_W, _DL_W) if (p / n).is_file()}
    if {_HUSAI_CFG, _HUSAI_W} <= has and _SL_CFG not in has:
        meta = read_json(p / _HUSAI_CFG, "SAE config")
        if isinstance(meta, dict) and meta.get("format") == "husai.sae":
            return "husai"
    if _SL_CFG in has and _SL_W in has:
        return "saelens"
    if _SP_CFG in has and _SP_W in has:
        return "sparsify"
    if _DL_W in has:
        return "dictionary_learning"
    return None


def _checkpoint_children(p: Path) -> list[tuple[Path, str]]:
    out = []
    try:
        entries = sorted(p.iterdir())
    except OSError as exc:
        raise HusaiError(f"cannot list SAE checkpoint folder {p}: {_one_line(exc)}") from None
    for child in entries:
        if not child.is_dir():
            continue
        try:
            fmt = _leaf_format(child)
        except HusaiError:
            fmt = None
        if fmt is not None:
            out.append((child, fmt))
    return out


def _missing_message(p: Path) -> str:
    has = lambda n: (p / n).is_file()  # noqa: E731
    if has(_SP_CFG):
        return (f"incomplete SAE checkpoint {p}: has cfg.json but neither sae_weights.safetensors (saelens) "
                f"nor sae.safetensors (sparsify)")
    if has(_HUSAI_CFG) and has(_HUSAI_W):
        return (f"unknown SAE checkpoint {p}: config.json is not a husai SAE config (no \"format\": "
                f"\"husai.sae\") and there is no cfg.json (sparsify) or ae.pt (dictionary_learning)")
    if has(_HUSAI_CFG):
        return (f"incomplete SAE checkpoint {p}: has config.json but neither sae.safetensors (husai) "
                f"nor ae.pt (dictionary_learning)")
    if has(_HUSAI_W):
        return (f"incomplete SAE checkpoint {p}: has sae.safetensors but neither config.json (husai) "
                f"nor cfg.json (sparsify)")
    if has(_SL_W):
        return f"incomplete SAE checkpoint {p}: has sae_weights.safetensors but no cfg.json (saelens)"
    return f"no SAE checkpoint in {p}: expected {_EXPECTED}, or one folder holding them"


def _torch_load(pt: Path) -> dict[str, Tensor]:
    if not pt.is_file():
        raise HusaiError(f"missing dictionary_learning weights: {pt}")
    try:
        state = torch.load(str(pt), map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and torch errors alike mean an unreadable file
        raise HusaiError(f"corrupt dictionary_learning weights: {pt} "
                         f"({type(exc).__name__}: {_one_line(exc)})") from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, Tensor)
                                              for k, v in state.items()):
        raise HusaiError(f"corrupt dictionary_learning weights: {pt} (not a state dict of tensors)")
    return state


# ====================================================================== small helpers
def _check_keys(w: dict[str, Tensor], need: set[str], optional: set[str], src: str, what: str) -> None:
    missing = sorted(need - set(w))
    if missing:
        raise HusaiError(f"corrupt {what} in {src}: missing tensor(s) {', '.join(missing)}")
    extra = sorted(set(w) - need - optional)
    if extra:
        raise HusaiError(f"corrupt {what} in {src}: unexpected tensor(s) {', '.join(extra)}")


def _check_shapes(src: str, what: str, items: dict[str, tuple[Tensor, tuple[int, ...]]]) -> None:
    for name, (t, shape) in items.items():
        if tuple(t.shape) != shape:
            raise HusaiError(f"corrupt {what} in {src}: {name} has shape {tuple(t.shape)}, expected {shape}")


def _int_field(raw: dict, name: str, path: Path, what: str, default: int | None = None) -> int:
    v = raw.get(name, default)
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise HusaiError(f"corrupt {what}: {path} has {name}={v!r}, expected a positive integer")
    return v


def _one_line(exc: BaseException | str) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 300 else text[:297] + "..."
