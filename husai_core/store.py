"""Artifact keys: an artifact is reused only when config, inputs and code all match.

Every cached artifact (transformer checkpoint, activation cache, null data, SAE, sweep point,
summary) records a *key* next to it:

    {"kind": ..., "config": <hash of its settings>, "inputs": {name: fingerprint, ...},
     "code": <version of the code that makes this kind of artifact>}

``code_version(kind)`` hashes the source files that produce that kind of artifact, so editing
the SAE trainer invalidates SAE checkpoints but not the transformer. ``tensor_fingerprint``
identifies data by content (shape + bytes), so a checkpoint trained on other rows is never
reused, wherever those rows came from.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from .errors import HusaiError
from .io import config_hash

PACKAGE = Path(__file__).resolve().parent
# Source files (relative to husai_core/) whose code makes each kind of artifact. A folder
# stands for every .py file below it.
CODE_SOURCES: dict[str, tuple[str, ...]] = {
    "transformer": ("task.py", "model.py", "device.py"),
    "activations": ("task.py", "model.py", "activations.py"),
    "null_data": ("nulls.py", "activations.py", "model.py", "task.py"),
    "sae": ("sae", "metrics.py", "device.py"),
    # Every husai_core source: the code version of a phase run (with its notebook, see
    # run_code_version) and of sweep points, whose results any library module may shape.
    "all": (".",),
}


@lru_cache(maxsize=None)
def code_version(kind: str) -> str:
    """Short hash of the source of the modules that produce artifacts of ``kind``."""
    if kind not in CODE_SOURCES:
        raise HusaiError(f"unknown artifact kind {kind!r}; known: {', '.join(sorted(CODE_SOURCES))}")
    h = hashlib.sha256()
    for rel in CODE_SOURCES[kind]:
        path = PACKAGE / rel
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
        for f in files:
            h.update(str(f.relative_to(PACKAGE)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:12]


def tensor_fingerprint(*tensors: torch.Tensor | None) -> str:
    """Content hash of one or more tensors (shape and float32 bytes); ``None`` entries are skipped."""
    h = hashlib.sha256()
    for t in tensors:
        if t is not None:
            h.update(str(tuple(t.shape)).encode())
            h.update(t.detach().cpu().float().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def artifact_key(kind: str, config: Any, inputs: dict[str, str] | None = None) -> dict[str, Any]:
    """The key stored with an artifact: config hash, input fingerprints and code version."""
    return {"kind": kind, "config": config_hash(config), "inputs": dict(sorted((inputs or {}).items())),
            "code": code_version(kind)}


def key_matches(stored: Any, expected: dict[str, Any]) -> bool:
    """True only when every part of the stored key equals the expected one."""
    return isinstance(stored, dict) and all(stored.get(k) == v for k, v in expected.items())


def stale_reason(stored: Any, expected: dict[str, Any]) -> str | None:
    """Why a stored artifact cannot be reused (None when it can): names the part that changed."""
    if not isinstance(stored, dict):
        return "no key recorded"
    for part in ("kind", "config", "inputs", "code"):
        if stored.get(part) != expected.get(part):
            return {"kind": "different artifact kind", "config": "settings changed",
                    "inputs": "input data changed", "code": "code changed"}[part]
    return None


def run_code_version(*files: str | Path) -> str:
    """Code version of a phase run: every husai_core source (``code_version("all")``) plus the
    given files (the notebook's own ``.py`` source), so editing either reruns the phase on resume."""
    h = hashlib.sha256(code_version("all").encode())
    for f in files:
        path = Path(f)
        h.update(path.name.encode())
        try:
            h.update(path.read_bytes())
        except OSError as exc:
            raise HusaiError(f"cannot read {path} for its code version ({exc.strerror})") from None
    return h.hexdigest()[:12]


__all__ = ["code_version", "run_code_version", "tensor_fingerprint", "artifact_key", "key_matches", "stale_reason",
           "CODE_SOURCES"]
