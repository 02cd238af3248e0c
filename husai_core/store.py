"""The artifact store: keys, and the one train-or-load of SAEs (plain, regularised, transcoders).

An artifact is reused only when config, inputs and code all match.

Every cached artifact (transformer checkpoint, activation cache, null data, SAE, sweep point,
summary) records a *key* next to it:

    {"kind": ..., "config": <hash of its settings>, "inputs": {name: fingerprint, ...},
     "code": <version of the code that makes this kind of artifact>}

``code_version(kind)`` hashes the source files that produce that kind of artifact, so editing
the SAE trainer invalidates SAE checkpoints but not the transformer. ``tensor_fingerprint``
identifies data by content (shape + bytes), so a checkpoint trained on other rows is never
reused, wherever those rows came from.

``train_or_load_saes`` is the one train-or-load of SAEs: plain SAEs, transcoders (``x_target``)
and SAEs trained with a consistency regulariser (``objective``) are keyed by ``sae_key``
(settings + seed + backend, the training rows' fingerprint, the SAE code version); phases,
conditions, transcoders, objectives, ``husai compare`` and the explorer all call it.
"""

from __future__ import annotations

import dataclasses
import hashlib
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd
import torch

from .errors import HusaiError
from .io import config_hash, load_tensors, read_json, save_tensors, write_json
from .metrics import evaluate_sae
from .sae import BaseSAE, SAEConfig, load_sae, save_sae, train_saes

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



# ---------------------------------------------------------------- where SAEs live

SAE_FIELDS = {f.name for f in dataclasses.fields(SAEConfig)}


def sae_config(d_in: int, params: dict[str, Any], d_out: int | None = None) -> SAEConfig:
    """Build an SAEConfig from notebook parameters; names that are not SAEConfig fields are errors."""
    unknown = sorted(set(params) - SAE_FIELDS)
    if unknown:
        raise HusaiError(f"unknown SAE parameter(s) {', '.join(unknown)}; known: {', '.join(sorted(SAE_FIELDS))}")
    extra = {"d_out": d_out} if d_out is not None else {}
    return SAEConfig(**{**params, "d_in": d_in, **extra})


def config_id(cfg: SAEConfig) -> str:
    """Readable and unique: ``topk-d1024-k32-<hash of every setting>``."""
    sparsity = f"k{cfg.k}" if cfg.architecture in ("topk", "batchtopk", "matryoshka") else (
        f"l1{cfg.l1_coeff:g}" if cfg.architecture == "relu" else f"l0{cfg.l0_coeff:g}")
    kind = "transcoder-" if cfg.transcoder else ""
    return f"{kind}{cfg.architecture}-d{cfg.d_sae}-{sparsity}-{config_hash(cfg.to_dict())[:8]}"


def sae_dir(artifacts: str | Path, layout: str, hook: str, cfg: SAEConfig) -> Path:
    return Path(artifacts) / "saes" / layout / hook / config_id(cfg)


# ---------------------------------------------------------------- SAE checkpoints: train or load by key

class SeedSAE(NamedTuple):
    seed: int
    sae: BaseSAE
    history: pd.DataFrame
    metrics: dict[str, Any]
    path: Path | None


BACKENDS = ("husai", "sae_lens")
SNAPSHOTS_FILE = "snapshots.safetensors"


def data_fingerprint(x: torch.Tensor, x_target: torch.Tensor | None = None) -> str:
    """Hash of the training rows, so a checkpoint is never reused after the activations change.
    An activation source (``husai_core.sources``) is hashed in chunks, to the same digest."""
    from .sources import fingerprint, is_source

    if is_source(x) or is_source(x_target):
        return x.fingerprint() if x_target is None and hasattr(x, "fingerprint") else fingerprint(x, x_target)
    return tensor_fingerprint(x, x_target)


def sae_key(cfg: SAEConfig, seed: int, fingerprint: str, backend: str = "husai") -> dict[str, Any]:
    """The artifact key of one seed's SAE: settings + seed + backend, the training rows, the SAE code."""
    return artifact_key("sae", {"config": cfg.to_dict(), "seed": int(seed), "backend": backend},
                        {"train_rows": fingerprint})


def _load_seed(folder: Path, seed: int, cfg: SAEConfig, key: dict[str, Any]) -> SeedSAE | None:
    if not (folder / "metrics.json").is_file():
        return None
    metrics = read_json(folder / "metrics.json", "SAE metrics")
    if not key_matches(metrics.get("key"), key):
        return None  # other settings, other rows or older code: retrain
    sae = load_sae(folder)
    if sae.cfg != cfg:
        return None
    history = pd.DataFrame(read_json(folder / "history.json", "SAE training history"))
    return SeedSAE(seed, sae, history, metrics, folder)


def unusable_reason(folder: Path, cfg: SAEConfig, key: dict[str, Any], snapshot_steps: tuple[int, ...] = ()) -> str:
    """Why the seed checkpoint in ``folder`` cannot be loaded for ``cfg``/``key`` (one phrase)."""
    if not (folder / "metrics.json").is_file():
        return "missing (no metrics.json)"
    why = stale_reason(read_json(folder / "metrics.json", "SAE metrics").get("key"), key)
    if why:
        return f"stale ({why})"
    if load_sae(folder).cfg != cfg:
        return "stale (its config.json holds other settings)"
    if snapshot_steps and not (folder / SNAPSHOTS_FILE).is_file():
        return "missing its training snapshots"
    return "not loadable"


def _train(cfg: SAEConfig, x: torch.Tensor, seeds: list[int], x_target, device: str, progress: bool,
           backend: str, snapshot_steps: tuple[int, ...], objective: Any = None):
    if objective is not None:  # one fresh objective per seed, so cached matchings never leak between seeds
        from .sae import train_sae

        results = []
        for seed in seeds:
            obj = objective.fresh()
            res = train_sae(cfg, x, seed, x_target=x_target, device=device, progress=progress, extra_loss=obj,
                            snapshot_steps=snapshot_steps)
            with torch.no_grad():  # the unweighted penalty of the final decoder (a fresh matching)
                res.metrics["final_penalty"] = float(objective.fresh().penalty(res.sae.W_dec.detach()))
            res.metrics["n_solves"] = getattr(obj, "n_solves", None)
            results.append(res)
        return results
    if backend == "husai":
        return train_saes(cfg, x, seeds, x_target=x_target, device=device, progress=progress,
                          snapshot_steps=snapshot_steps)
    from .sae.saelens_backend import train_with_backend

    if x_target is not None:
        raise HusaiError("the sae_lens backend trains plain SAEs, not transcoders")
    return train_with_backend(cfg, x, seeds, backend=backend, device=device, progress=progress)


def train_or_load_saes(
    folder: str | Path,
    cfg: SAEConfig,
    x: torch.Tensor,
    seeds: list[int],
    x_target: torch.Tensor | None = None,
    reuse: bool = True,
    progress: bool = False,
    device: str = "auto",
    backend: str = "husai",
    snapshot_steps: tuple[int, ...] = (),
    heldout: torch.Tensor | None = None,
    heldout_target: torch.Tensor | None = None,
    objective: Any = None,
    load_only: bool = False,
) -> list[SeedSAE]:
    """One SAE per seed: a seed whose stored key (config, seed, backend, fingerprint of the
    training rows, SAE code version) matches is loaded, the rest trained and saved.
    ``load_only``: train nothing and write nothing; a missing or stale seed raises HusaiError
    naming it and why (``husai verify`` re-derives reports this way).

    ``backend``: ``husai`` (our trainer) or ``sae_lens`` (SAELens's own trainer on the same
    rows, imported). ``snapshot_steps`` keeps the SAE after those steps (``snapshots.safetensors``;
    husai backend). ``heldout`` rows (not used in training) are evaluated into
    ``metrics["heldout"]``; the training-row metrics stay at the top level. ``objective``
    (``objectives.DecoderAlignment``) adds a consistency regulariser to training; its identity
    must be part of ``cfg`` (``cfg.extra``) so regularised and plain SAEs never share a key.
    """
    if backend not in BACKENDS:
        raise HusaiError(f"unknown SAE training backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    folder = Path(folder)
    fingerprint = data_fingerprint(x, x_target)
    keys = {s: sae_key(cfg, s, fingerprint, backend) for s in seeds}
    done = {s: _load_seed(folder / f"seed{s}", s, cfg, keys[s]) for s in seeds} if reuse or load_only else {}
    if snapshot_steps:  # a checkpoint kept without the requested snapshots is retrained with them
        done = {s: d for s, d in done.items() if d is not None and (d.path / SNAPSHOTS_FILE).is_file()}
    for s, d in list(done.items()):
        if d is not None and heldout is not None and "heldout" not in d.metrics:
            metrics = {**d.metrics, "heldout": evaluate_sae(d.sae, heldout, heldout_target)}
            if not load_only:
                write_json(d.path / "metrics.json", metrics)
            done[s] = d._replace(metrics=metrics)
    todo = [s for s in seeds if done.get(s) is None]
    if todo and load_only:
        s = todo[0]
        raise HusaiError(f"SAE {folder / f'seed{s}'}: {unusable_reason(folder / f'seed{s}', cfg, keys[s], snapshot_steps)}"
                         + (f" (and {len(todo) - 1} more seed(s))" if len(todo) > 1 else ""))
    if todo:
        results = _train(cfg, x, todo, x_target, device, progress, backend, tuple(snapshot_steps), objective)
        for seed, res in zip(todo, results):
            out = folder / f"seed{seed}"
            save_sae(res.sae, out)
            write_json(out / "history.json", res.history.to_dict(orient="list"))
            if res.snapshots:
                save_tensors(out / SNAPSHOTS_FILE, {f"step{step}.{name}": t for step, tensors in res.snapshots.items()
                                                    for name, t in tensors.items()})
            metrics = {**res.metrics, "seed": seed, "data_fingerprint": fingerprint, "key": keys[seed],
                       "backend": backend, **{f"info_{k}": v for k, v in res.info.items()}}
            if heldout is not None:
                metrics["heldout"] = evaluate_sae(res.sae.cpu(), heldout, heldout_target)
            # metrics.json last: its presence (with the key) marks a complete checkpoint
            write_json(out / "metrics.json", metrics)
            done[seed] = SeedSAE(seed, res.sae.cpu(), res.history, read_json(out / "metrics.json"), out)
    return [done[s] for s in seeds]


def load_snapshots(folder: str | Path, cfg: SAEConfig) -> dict[int, BaseSAE]:
    """The SAEs kept during training of one seed (``snapshot_steps``), keyed by steps done."""
    from .sae.checkpoint import sae_from_public

    path = Path(folder) / SNAPSHOTS_FILE
    if not path.is_file():
        raise HusaiError(f"no training snapshots in {folder} (train with snapshot_steps)")
    grouped: dict[int, dict[str, torch.Tensor]] = {}
    for name, t in load_tensors(path, "SAE snapshots").items():
        step, public = name.split(".", 1)
        grouped.setdefault(int(step.removeprefix("step")), {})[public] = t
    return {step: sae_from_public(cfg, tensors, str(path)).eval() for step, tensors in sorted(grouped.items())}


def load_saes(folder: str | Path, seeds: list[int]) -> list[SeedSAE]:
    """Load finished SAEs of one configuration; a missing seed is a clear error."""
    folder = Path(folder)
    out = []
    for s in seeds:
        if not (folder / f"seed{s}" / "metrics.json").is_file():
            raise HusaiError(f"missing SAE checkpoint for seed {s} in {folder} (run 03_sae_training --seeds {s})")
        sae = load_sae(folder / f"seed{s}")
        out.append(SeedSAE(s, sae, pd.DataFrame(read_json(folder / f"seed{s}" / "history.json")),
                           read_json(folder / f"seed{s}" / "metrics.json"), folder / f"seed{s}"))
    return out


__all__ = ["code_version", "run_code_version", "tensor_fingerprint", "artifact_key", "key_matches", "stale_reason",
           "CODE_SOURCES",
           "SAE_FIELDS", "sae_config", "config_id", "sae_dir", "SeedSAE", "BACKENDS", "SNAPSHOTS_FILE", "data_fingerprint", "sae_key", "unusable_reason", "train_or_load_saes",
           "load_snapshots", "load_saes"]
