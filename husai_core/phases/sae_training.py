"""Phase 3: one SAE configuration, one seed per run, trained on the training share of a split.

``train`` trains or loads the seed's SAE (by key: config, seed, training rows, SAE code);
``summarise`` reports its held-out EV / L0 / dead fraction, evaluated afresh on the held-out
rows from the stored weights (``metrics.evaluate_sae``, as the store computes them), the
training-row EV recorded by the trainer, and the sha256 of the weights file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

from ..conditions import heldout_split
from ..experiments import SeedSAE, sae_config, sae_dir, train_or_load_saes
from ..io import file_sha256, to_jsonable
from ..metrics import evaluate_sae
from ..sae.checkpoint import WEIGHTS_FILE
from ..sae.trainer import log_spaced_steps

NOTEBOOK = "03_sae_training"
PARAMS = ("seed", "activations", "layout", "hook", "transcoder_target", "architecture", "d_sae", "k", "steps",
          "batch_size", "lr", "sae_params", "heldout_fraction", "split_seed", "snapshot_first", "reuse_checkpoint")
VERIFIED = ("sae_sha256",)


class Trained(NamedTuple):
    sae: SeedSAE
    folder: Path  # the configuration's folder (every seed)
    cfg: Any
    heldout: Any  # held-out rows (and target rows for a transcoder)
    heldout_target: Any
    source: Any  # the activation source, None for this project's cache
    hook: str
    store_layout: str


def train(params: dict[str, Any], art: Path, *, progress: bool = False, load_only: bool = False) -> Trained:
    """The seed's SAE of the configuration in ``params``, trained or loaded."""
    from ..activations import load_cache
    from ..sources import heldout_rows, open_source, storage_layout

    hook, tt = params["hook"], params.get("transcoder_target")
    if params.get("activations") is None:  # this project's cache (phase 2), in memory
        cache = load_cache(Path(art) / "activations" / params["layout"])
        x, source = cache.get(hook), None
        target = cache.get(tt) if tt else None
    else:  # any supported activation source, streamed from disk
        source = x = open_source(params["activations"], hook=hook)
        hook = x.hook
        target = open_source(params["activations"], hook=tt) if tt else None
    cfg = sae_config(x.shape[1], {"architecture": params["architecture"], "d_sae": params["d_sae"], "k": params["k"],
                                  "steps": params["steps"], "batch_size": params["batch_size"], "lr": params["lr"],
                                  "transcoder": target is not None, **(params.get("sae_params") or {})},
                     d_out=target.shape[1] if target is not None else None)
    train_idx, held_idx = heldout_split(x.shape[0], params["heldout_fraction"], params["split_seed"])
    store_layout = storage_layout(params["layout"], source)
    folder = sae_dir(art, store_layout, hook if target is None else f"{hook}->{tt}", cfg)
    held = heldout_rows(x, held_idx)
    held_t = None if target is None else heldout_rows(target, held_idx)
    (trained,) = train_or_load_saes(folder, cfg, x[train_idx], [params["seed"]],
                                    x_target=None if target is None else target[train_idx],
                                    reuse=params.get("reuse_checkpoint", True), progress=progress,
                                    snapshot_steps=tuple(log_spaced_steps(cfg.steps, params["snapshot_first"])),
                                    heldout=held, heldout_target=held_t, load_only=load_only)
    return Trained(trained, folder, cfg, held, held_t, source, hook, store_layout)


def summarise(params: dict[str, Any], t: Trained) -> dict[str, Any]:
    """The results dict of the seed's run (what the notebook records)."""
    metrics = {**t.sae.metrics, "heldout": evaluate_sae(t.sae.sae, t.heldout, t.heldout_target)}
    return {
        "headline": {"seed": params["seed"], "held-out EV": metrics["heldout"]["ev"],
                     "held-out L0": metrics["heldout"]["l0"],
                     "held-out dead fraction": metrics["heldout"]["dead_fraction"], "training-row EV": metrics["ev"]},
        "config": t.cfg.to_dict(), "config_id": t.folder.name, "checkpoint": str(t.sae.path),
        "sae_sha256": file_sha256(Path(t.sae.path) / WEIGHTS_FILE),
        "layout": params["layout"], "hook": t.hook, "transcoder_target": params.get("transcoder_target"),
        "metrics": metrics,
        "activations": None if t.source is None else {"path": str(params["activations"]), "source": t.source.describe(),
                                                      "storage_layout": t.store_layout},
    }


def run(params: dict[str, Any], art: Path, *, progress: bool = False, load_only: bool = False) -> dict[str, Any]:
    """The phase's results dict for ``params['seed']``; ``load_only`` trains nothing."""
    return to_jsonable(summarise(params, train(params, art, progress=progress, load_only=load_only)))


__all__ = ["Trained", "train", "summarise", "run"]
