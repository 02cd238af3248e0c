"""The activations SAEs are compared on: detect and open a source, pick its hook, check it
against the SAEs.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from ..errors import HusaiError
from .groups import check_compatible, group_inputs
from .loading import LoadedSAE, load_inputs


# ====================================================================== activations
@dataclass
class Activations:
    x: torch.Tensor
    hook: str | None
    source: str
    kind: str  # "husai cache" | "foreign folder"
    datasets: dict[str, int] = field(default_factory=dict)
    n_total: int = 0


def activation_source_kind(source: str | os.PathLike) -> str:
    """``"husai cache"`` (a folder with metadata.json) or ``"foreign folder"`` (per-dataset
    ``<dataset>_<hook>.pt``/``.safetensors`` files); anything else is a one-line error."""
    from ..activations import _foreign_files

    p = Path(source)
    if not p.exists():
        raise HusaiError(f"unknown activation source {p}: no such file or folder")
    if not p.is_dir():
        raise HusaiError(f"unknown activation source {p}: expected a folder (a HUSAI activation cache with "
                         f"metadata.json, or a folder of <dataset>_<hook>.pt files)")
    if (p / "metadata.json").is_file():
        return "husai cache"
    try:
        _foreign_files(p, None)
    except HusaiError as exc:
        if "several hooks" in str(exc):
            return "foreign folder"
        raise HusaiError(f"unknown activation source {p}: not a HUSAI activation cache (no metadata.json) and no "
                         f"activation files named like <dataset>_blocks.0.hook_resid_pre.pt") from None
    return "foreign folder"


def peek_activations(source: str | os.PathLike, hook: str | None = None) -> tuple[str, str | None, int]:
    """(kind, hook, width) of an activation source without loading its rows (for the CLI check)."""
    from ..activations import _foreign_files, _read_rows
    from ..io import read_json

    kind = activation_source_kind(source)
    p = Path(source)
    if kind == "husai cache":
        meta = read_json(p / "metadata.json", "activation metadata")
        hooks = meta.get("hooks") if isinstance(meta, dict) else None
        if not isinstance(hooks, dict) or not hooks:
            raise HusaiError(f"corrupt activation cache {p}: metadata.json lists no hooks")
        hook = _pick_hook(hook, sorted(hooks), p)
        shape = hooks[hook].get("shape") if isinstance(hooks[hook], dict) else None
        if not isinstance(shape, list) or len(shape) != 2:
            raise HusaiError(f"corrupt activation cache {p}: no (rows, d) shape for hook {hook!r}")
        return kind, hook, int(shape[1])
    files = _foreign_files(p, hook)
    return kind, files[0][1], int(_read_rows(files[0][2]).shape[1])


def _pick_hook(hook: str | None, hooks: list[str], where: Path) -> str:
    if hook is None:
        if len(hooks) == 1:
            return hooks[0]
        raise HusaiError(f"activation cache {where} holds hooks {', '.join(hooks)}: pass --hook to choose one")
    if hook not in hooks:
        raise HusaiError(f"hook {hook!r} is not in the activation cache {where}; cached: {', '.join(hooks)}")
    return hook


def load_activations(source: str | os.PathLike, hook: str | None = None, max_rows: int | None = None,
                     max_rows_per_file: int | None = None, seed: int = 0) -> Activations:
    """Rows from a HUSAI cache (``activations.load_cache``) or a foreign folder
    (``activations.load_foreign_folder``); more than ``max_rows`` rows: a seeded random subset
    (not the first rows, which may all come from one dataset or operand range)."""
    from ..activations import load_cache, load_foreign_folder

    kind = activation_source_kind(source)
    datasets: dict[str, int] = {}
    if kind == "husai cache":
        cache = load_cache(source)
        hook = _pick_hook(hook, sorted(cache.acts), Path(source))
        x = cache.get(hook)
        names = None
    else:
        fa = load_foreign_folder(source, hook=hook, max_rows_per_file=max_rows_per_file)
        x, hook, names = fa.x, fa.hook, fa.dataset
    x = x.reshape(-1, x.shape[-1]).float()
    n_total = int(x.shape[0])
    if max_rows is not None and n_total > int(max_rows):
        idx = torch.randperm(n_total, generator=torch.Generator().manual_seed(int(seed)))[: int(max_rows)].sort().values
        x = x[idx]
        names = None if names is None else names[idx.numpy()]
    if names is not None:
        datasets = {str(k): int(v) for k, v in Counter(names.tolist()).items()}
    if not bool(torch.isfinite(x).all()):
        raise HusaiError(f"activations in {source} contain NaN or inf")
    return Activations(x.contiguous(), hook, str(source), kind, datasets, n_total)


# ====================================================================== checks (CLI pre-flight)
def check_inputs(paths: Sequence[str], labels: Sequence[str] | None = None, activations: str | None = None,
                 hook: str | None = None) -> dict[str, Any]:
    """Everything ``compare_saes`` checks before computing, cheaply: every PATH reads, groups
    have >= 2 SAEs of one configuration, SAEs are compatible, the activation source is known,
    holds the hook and has width d_in. Returns a short summary; bad input is one ``HusaiError``."""
    items = load_inputs(paths, labels)
    groups, how = group_inputs(items)
    compat = check_compatible(items)
    summary = {"groups": {k: [i.path for i in v] for k, v in groups.items()}, "grouping": how, **compat}
    if activations is not None:
        kind, act_hook, width = peek_activations(activations, hook)
        _check_against_activations(items, compat, act_hook, width, activations)
        summary["activations"] = {"source": str(activations), "kind": kind, "hook": act_hook, "d_in": width}
    elif hook is not None:
        raise HusaiError("--hook selects a hook of --activations; give --activations too")
    return summary


def _check_against_activations(items: list[LoadedSAE], compat: dict[str, Any], act_hook: str | None, width: int,
                               source: Any) -> None:
    if width != compat["d_in"]:
        raise HusaiError(f"incompatible activations: {source} has width {width} but the SAEs have d_in={compat['d_in']} "
                         f"(e.g. {items[0].path})")
    if act_hook and compat["hook"] and act_hook != compat["hook"]:
        who = next(i.path for i in items if i.hook)
        raise HusaiError(f"incompatible activations: {source} holds hook {act_hook!r} but {who} records hook "
                         f"{compat['hook']!r}")
