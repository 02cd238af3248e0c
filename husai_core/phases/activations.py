"""Phase 2: activation caches at standard hooks (answer position) and their diagnostics.

``caches`` extracts the transformer's activations per layout and saves them (or, with
``load_only``, loads the stored cache and checks that it still follows from the transformer
checkpoint: same source weights, same hooks, and activations equal to a fresh extraction);
``summarise`` computes the statistics, the PCA spectra, the effective ranks and each cache
file's sha256.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..activations import (ActivationCache, effective_rank, explained_variance_ratio, extract_activations, load_cache,
                           save_cache)
from ..errors import HusaiError
from ..io import file_sha256, to_jsonable
from ..model import load_checkpoint
from ..paths import runs_relative
from ..task import make_task

NOTEBOOK = "02_activations"
PARAMS = ("layouts", "hooks", "position", "batch_size", "spectrum_components")
VERIFIED = ("cache_sha256",)
# A stored cache must equal a fresh extraction to this tolerance (float32 sums in another order).
REEXTRACT_RTOL, REEXTRACT_ATOL = 1e-4, 1e-5
CACHE_FILE = "activations.safetensors"


def _extract(params: dict[str, Any], ckpt) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    data = make_task(ckpt.task)
    acts = extract_activations(ckpt.model, data.tokens, list(params["hooks"]), position=params["position"],
                               answer_pos=data.answer_pos, batch_size=params["batch_size"])
    split = np.zeros(len(data.labels), dtype=np.int64)
    split[data.test_idx.numpy()] = 1  # 0 = train pair, 1 = held-out pair
    return acts, {"a": data.a, "b": data.b, "c": data.labels, "split": torch.from_numpy(split)}


def check_cache(cache: ActivationCache, ckpt, acts: dict[str, torch.Tensor]) -> None:
    """Raise HusaiError unless ``cache`` was made from ``ckpt`` and holds ``acts`` (fresh extraction)."""
    sha = file_sha256(Path(ckpt.path) / "model.safetensors")
    if cache.meta.get("source_sha256") != sha:
        raise HusaiError(f"stale activation cache {cache.path}: made from transformer weights "
                         f"{str(cache.meta.get('source_sha256'))[:12]}, the checkpoint's are {sha[:12]}")
    for hook, x in acts.items():
        stored = cache.get(hook)
        if stored.shape != x.shape or not torch.allclose(stored, x, rtol=REEXTRACT_RTOL, atol=REEXTRACT_ATOL):
            diff = (stored - x).abs().max().item() if stored.shape == x.shape else f"shape {tuple(stored.shape)}"
            raise HusaiError(f"stale activation cache {cache.path}: {hook} differs from the transformer's activations "
                             f"(max |diff| {diff})")


def _reusable(folder: Path, ckpt, acts: dict[str, torch.Tensor], position: str) -> ActivationCache | None:
    """The stored cache when it holds exactly these hooks and follows from ``ckpt``: rewriting it
    with a re-extraction equal up to float rounding would only invalidate the SAEs keyed on it."""
    try:
        cache = load_cache(folder)
        check_cache(cache, ckpt, acts)
    except HusaiError:
        return None
    return cache if set(cache.acts) == set(acts) and cache.meta.get("position") == position else None


def caches(params: dict[str, Any], art: Path, *, git_commit: str | None = None,
           load_only: bool = False) -> dict[str, ActivationCache]:
    """One cache per layout: extracted and saved (read back = verified), or loaded and checked.
    An existing cache that equals the fresh extraction is kept as it is."""
    out = {}
    for layout in params["layouts"]:
        ckpt = load_checkpoint(Path(art) / "transformer" / layout)
        acts, labels = _extract(params, ckpt)
        folder = Path(art) / "activations" / layout
        if load_only:
            cache = load_cache(folder)
            check_cache(cache, ckpt, acts)
        elif (cache := _reusable(folder, ckpt, acts, params["position"])) is None:
            meta = {"source_checkpoint": runs_relative(ckpt.path), "source_sha256": ckpt.sha256, "layout": layout,
                    "position": params["position"], "answer_pos": make_task(ckpt.task).answer_pos,
                    "task": ckpt.task.to_dict(), "git_commit": git_commit}
            cache = load_cache(save_cache(folder, acts, labels, meta))
        out[layout] = cache
    return out


def summarise(params: dict[str, Any], caches: dict[str, ActivationCache]) -> dict[str, Any]:
    """Statistics per layout and hook, spectra, the headline effective ranks, cache sha256s."""
    rows = []
    for layout, cache in caches.items():
        for hook, x in cache.acts.items():
            rows.append({"layout": layout, "hook": hook, "rows": x.shape[0], "d": x.shape[1],
                         "mean": float(x.mean()), "std": float(x.std()), "mean ‖x‖": float(x.norm(dim=1).mean()),
                         "effective rank": effective_rank(x)})
    layouts, hooks = list(params["layouts"]), list(params["hooks"])
    main = caches[layouts[0]]
    headline = {f"effective rank ({h})": effective_rank(x) for h, x in main.acts.items()}
    headline["rows"] = int(next(iter(main.acts.values())).shape[0])
    for layout in layouts[1:]:
        headline[f"{layout} effective rank ({hooks[0]})"] = effective_rank(caches[layout].acts[hooks[0]])
    return {
        "headline": headline,
        "caches": {k: str(v.path) for k, v in caches.items()},
        "cache_sha256": {k: file_sha256(Path(v.path) / CACHE_FILE) for k, v in caches.items()},
        "stats": pd.DataFrame(rows).to_dict(orient="records"),
        "spectra": {f"{l}|{h}": explained_variance_ratio(x)[:params["spectrum_components"]].tolist()
                    for l, c in caches.items() for h, x in c.acts.items()},
    }


def run(params: dict[str, Any], art: Path, *, progress: bool = False, load_only: bool = False) -> dict[str, Any]:
    """The phase's results dict; ``load_only`` writes nothing and checks the stored caches."""
    return to_jsonable(summarise(params, caches(params, art, load_only=load_only)))


__all__ = ["caches", "check_cache", "summarise", "run"]
