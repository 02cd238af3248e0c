"""Activation extraction by standard hook name, the safetensors cache, foreign caches, diagnostics.

Cache layout (one folder): ``activations.safetensors`` holds one tensor per hook plus the
row labels (a, b, c, split), and ``metadata.json`` records provenance and statistics.
The metadata is written last, so a folder without it is an incomplete cache.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from .errors import HusaiError
from .io import load_tensors, read_json, save_tensors, write_json
from .sources.layouts import _foreign_files, _read_rows

if TYPE_CHECKING:  # importing transformer_lens costs seconds; sweep workers only read caches
    from transformer_lens import HookedTransformer

POSITIONS = ("answer", "all")


def check_hooks(model: HookedTransformer, hooks: list[str]) -> None:
    for hook in hooks:
        if hook not in model.hook_dict:
            close = difflib.get_close_matches(hook, list(model.hook_dict), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise HusaiError(f"unknown hook {hook!r} for a {model.cfg.n_layers}-layer model{hint}")


def resolve_position(position: str | int, answer_pos: int, seq_len: int) -> slice | int:
    """'answer' (the '=' position), 'all', or a token index (negative counts from the end)."""
    if position == "answer":
        return answer_pos
    if position == "all":
        return slice(None)
    try:
        idx = int(position)
    except (TypeError, ValueError):
        raise HusaiError(f"unknown position {position!r}; use 'answer', 'all' or a token index") from None
    if not -seq_len <= idx < seq_len:
        raise HusaiError(f"position {idx} is outside a sequence of length {seq_len}")
    return idx


@torch.no_grad()
def extract_activations(
    model: HookedTransformer,
    tokens: torch.Tensor,
    hooks: list[str],
    position: str | int = "answer",
    answer_pos: int = -1,
    batch_size: int = 4096,
) -> dict[str, torch.Tensor]:
    """Run the model in batches and keep each hook's activations at ``position``.

    Returns ``{hook: (rows, d)}`` float32 on CPU; with ``position='all'`` rows are
    (example, position) pairs flattened example-major.
    """
    check_hooks(model, hooks)
    pos = resolve_position(position, answer_pos % tokens.shape[1], tokens.shape[1])
    out: dict[str, list[torch.Tensor]] = {h: [] for h in hooks}
    device = model.cfg.device
    for start in range(0, tokens.shape[0], batch_size):
        _, cache = model.run_with_cache(tokens[start : start + batch_size].to(device), names_filter=hooks)
        for h in hooks:
            act = cache[h][:, pos]
            out[h].append(act.reshape(-1, act.shape[-1]).float().cpu())
    return {h: torch.cat(v) for h, v in out.items()}


@dataclass
class ActivationCache:
    acts: dict[str, torch.Tensor]
    labels: dict[str, torch.Tensor]
    meta: dict = field(default_factory=dict)
    path: Path | None = None

    def get(self, hook: str) -> torch.Tensor:
        if hook not in self.acts:
            raise HusaiError(f"hook {hook!r} is not in the cache at {self.path}; cached: {sorted(self.acts)}")
        return self.acts[hook]


def tensor_stats(x: torch.Tensor) -> dict:
    return {"shape": list(x.shape), "dtype": str(x.dtype).removeprefix("torch."),
            "mean": float(x.mean()), "std": float(x.std()), "mean_norm": float(x.norm(dim=-1).mean())}


def save_cache(folder: str | Path, acts: dict[str, torch.Tensor], labels: dict[str, torch.Tensor], meta: dict) -> Path:
    folder = Path(folder)
    overlap = set(acts) & set(labels)
    if overlap:
        raise HusaiError(f"label names clash with hook names: {sorted(overlap)}")
    save_tensors(folder / "activations.safetensors", {**acts, **{f"label.{k}": v for k, v in labels.items()}})
    meta = {**meta, "hooks": {h: tensor_stats(x) for h, x in acts.items()}, "labels": sorted(labels)}
    write_json(folder / "metadata.json", meta)
    return folder


def load_cache(folder: str | Path) -> ActivationCache:
    folder = Path(folder)
    if not (folder / "metadata.json").is_file():
        raise HusaiError(f"missing activation cache: {folder} has no metadata.json (run 02_activations first)")
    meta = read_json(folder / "metadata.json", "activation metadata")
    tensors = load_tensors(folder / "activations.safetensors", "activation cache")
    acts = {k: v for k, v in tensors.items() if not k.startswith("label.")}
    labels = {k.removeprefix("label."): v for k, v in tensors.items() if k.startswith("label.")}
    for hook, stats in meta.get("hooks", {}).items():
        if hook not in acts or list(acts[hook].shape) != stats["shape"]:
            got = list(acts[hook].shape) if hook in acts else "missing"
            raise HusaiError(f"corrupt activation cache {folder}: hook {hook!r} has shape {got}, metadata says {stats['shape']}")
    return ActivationCache(acts, labels, meta, folder)


# ---------------------------------------------------------------- foreign caches
# (the file names and readers of a foreign folder live with the sources that stream them)

def iter_foreign_folder(
    folder: str | Path,
    hook: str | None = None,
    max_files: int | None = None,
    max_rows_per_file: int | None = None,
    max_rows: int | None = None,
    chunk_rows: int = 65_536,
) -> Iterator[tuple[str, torch.Tensor]]:
    """Stream ``(dataset, chunk)`` pairs without holding the whole folder in memory."""
    files = _foreign_files(Path(folder), hook)[:max_files]
    remaining, width = max_rows, None
    for dataset, _, path in files:
        rows = _read_rows(path)
        if width is not None and rows.shape[1] != width:
            raise HusaiError(f"shape mismatch: {path.name} has width {rows.shape[1]}, earlier files have {width}")
        width = rows.shape[1]
        n = rows.shape[0] if max_rows_per_file is None else min(rows.shape[0], max_rows_per_file)
        if remaining is not None:
            n = min(n, remaining)
        for start in range(0, n, chunk_rows):
            yield dataset, rows[start : min(n, start + chunk_rows)].float()
        if remaining is not None:
            remaining -= n
            if remaining <= 0:
                return


@dataclass
class ForeignActivations:
    x: torch.Tensor  # (rows, d)
    dataset: np.ndarray  # dataset name per row
    hook: str | None


def load_foreign_folder(folder: str | Path, hook: str | None = None, max_files: int | None = None,
                        max_rows_per_file: int | None = None, max_rows: int | None = None) -> ForeignActivations:
    """Load a folder of per-dataset activation files, keeping each row's dataset name."""
    chunks, names = [], []
    for dataset, chunk in iter_foreign_folder(folder, hook, max_files, max_rows_per_file, max_rows):
        chunks.append(chunk)
        names.append(np.full(chunk.shape[0], dataset, dtype=object))
    hooks = {h for _, h, _ in _foreign_files(Path(folder), hook)}
    return ForeignActivations(torch.cat(chunks), np.concatenate(names), hooks.pop())


# ---------------------------------------------------------------- diagnostics

def pca_spectrum(x: torch.Tensor) -> np.ndarray:
    """Singular values of the centred activations, largest first."""
    xc = x.double() - x.double().mean(0)
    return torch.linalg.svdvals(xc).numpy()


def effective_rank(x: torch.Tensor) -> float:
    """exp(entropy of the normalised singular values) of the centred data (Roy & Vetterli 2007).

    Convention: p_i = s_i / sum_j s_j over singular values s of the centred matrix (not
    their squares), entropy in nats. Rank-1 data gives 1; d orthogonal equal directions give d.
    """
    s = pca_spectrum(x)
    s = s[s > s.max() * 1e-12] if s.max() > 0 else s[:0]
    if s.size == 0:
        return 0.0
    p = s / s.sum()
    return float(np.exp(-(p * np.log(p)).sum()))


def explained_variance_ratio(x: torch.Tensor) -> np.ndarray:
    s2 = pca_spectrum(x) ** 2
    return s2 / s2.sum()
