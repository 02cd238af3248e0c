"""Phase 4: SAEs of one configuration under several seeds against trained nulls.

``run(params, art)`` is the whole analysis of ``notebooks/04_trained_vs_nulls.py``: the
conditions' rows (trained, each null, the reference backend), their SAEs (trained or loaded by
key), held-out reconstruction, the condition x metric table with seed-level CIs and tests, the
headline verdict against the strongest null, our trainer vs SAELens's at equal live latents,
Fourier ground-truth recovery and convergence. The notebook calls it and plots the returned
dict; ``husai verify`` calls it with ``load_only=True`` and compares with the run's results.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..comparison import (compare_conditions, condition_views, equal_live_comparison, ground_truth_recovery,
                          headline_verdict)
from ..conditions import ConditionData, condition_data, heldout_split, train_or_load_condition
from ..consistency import disjoint_seeds
from ..convergence import convergence_table, plateau
from ..experiments import config_id, load_snapshots, sae_config
from ..io import to_jsonable
from ..nulls import check_null
from ..sae.trainer import log_spaced_steps
from ..selection import candidate

NOTEBOOK = "04_trained_vs_nulls"
SAE_PARAMS = ("architecture", "d_sae", "k", "steps", "batch_size", "lr")
# Every notebook parameter the phase reads (the notebook passes these; verify reads params.yaml).
PARAMS = ("seeds", "activations", "layout", "hook", *SAE_PARAMS, "sae_params", "heldout_fraction", "split_seed",
          "nulls", "null_data_seed", "reference_backend", "snapshot_first", "convergence_seeds", "convergence_tol",
          "headline_metric", "shared_threshold", "n_resamples", "stats_seed", "alpha", "fourier_top", "gt_threshold")


def prepare(params: dict[str, Any], art: Path, *, progress: bool = False, load_only: bool = False) -> dict[str, Any]:
    """Rows and SAEs of every condition: ``{"data", "saes", "cfg", "nulls", "split", ...}``."""
    from ..activations import load_cache
    from ..model import load_checkpoint
    from ..conditions import source_condition_data
    from ..sources import open_source, storage_layout

    art, nulls, hook = Path(art), list(params["nulls"]), params["hook"]
    seeds = [int(s) for s in params["seeds"]]
    notes = []
    if params.get("activations") is None:  # this project's cache and transformer
        transformer = load_checkpoint(art / "transformer" / params["layout"])
        cache = load_cache(art / "activations" / params["layout"])
        x, source = cache.get(hook), None
    else:  # any supported activation source, streamed from disk; there is no transformer
        transformer = cache = None
        source = x = open_source(params["activations"], hook=hook)
        hook = x.hook
        notes.append(f"activations: {x.describe()}")
        if "random_transformer" in nulls:
            notes.append("note: the random_transformer null needs the transformer that made the activations, which "
                         "foreign activations do not have: dropped")
            nulls = [n for n in nulls if n != "random_transformer"]
    for null in nulls:
        check_null(null)
    store_layout = storage_layout(params["layout"], source)
    split = heldout_split(x.shape[0], params["heldout_fraction"], params["split_seed"])
    cfg = sae_config(x.shape[1], {**{k: params[k] for k in SAE_PARAMS}, **(params.get("sae_params") or {})})
    snapshot_steps = tuple(log_spaced_steps(cfg.steps, params["snapshot_first"]))
    null_seeds = disjoint_seeds(seeds, len(seeds))
    if source is None:
        data = {"trained": condition_data("trained", x, split)}
        for null in nulls:
            data[null] = condition_data(null, x, split, data_seed=params["null_data_seed"], checkpoint=transformer,
                                        hook=hook)
    else:
        data = {name: source_condition_data(name, source, split, data_seed=params["null_data_seed"])
                for name in ["trained", *nulls]}

    def saes_of(name: str, group_seeds: list[int], **kw: Any) -> list:
        return train_or_load_condition(art, store_layout, hook, cfg, data[name], group_seeds, progress=progress,
                                       load_only=load_only, **kw)

    saes = {"trained": saes_of("trained", seeds, snapshot_steps=snapshot_steps)}
    for null in nulls:
        saes[null] = saes_of(null, null_seeds, snapshot_steps=snapshot_steps)
    backend_name = None
    if params.get("reference_backend"):
        backend_name = f"trained ({params['reference_backend']})"
        data[backend_name] = data["trained"]
        if source is not None:  # SAELens's trainer takes its rows in memory
            data[backend_name] = ConditionData("trained", data["trained"].train.materialise(), data["trained"].heldout,
                                               data["trained"].description + " (read into memory for SAELens)")
        saes[backend_name] = saes_of(backend_name, seeds, backend=params["reference_backend"])
    return {"data": data, "saes": saes, "cfg": cfg, "nulls": nulls, "hook": hook, "split": split, "seeds": seeds,
            "null_seeds": null_seeds, "backend_name": backend_name, "transformer": transformer, "cache": cache,
            "x": x, "source": source, "store_layout": store_layout, "notes": notes}


def reconstruction(saes: dict[str, list]) -> pd.DataFrame:
    """Mean held-out EV / L0 / dead fraction per condition (training-row EV beside them)."""
    rows = []
    for name, group in saes.items():
        held = [s.metrics["heldout"] for s in group]
        train = [s.metrics for s in group if "ev" in s.metrics]
        row = {"condition": name, "held-out EV": np.mean([h["ev"] for h in held]),
               "held-out L0": np.mean([h["l0"] for h in held]),
               "held-out dead fraction": np.mean([h["dead_fraction"] for h in held])}
        if train:
            row |= {"training-row EV": np.mean([t["ev"] for t in train]),
                    "training-row dead fraction": np.mean([t["dead_fraction"] for t in train])}
        rows.append(row)
    return pd.DataFrame(rows).set_index("condition")


def analyse(params: dict[str, Any], prep: dict[str, Any], *, progress: bool = False) -> dict[str, Any]:
    """Every number of the phase from prepared conditions: the results dict the notebook records."""
    from ..fourier import answer_fourier_directions, fourier_summary
    from ..model import number_embedding

    data, saes, cfg, nulls = prep["data"], prep["saes"], prep["cfg"], prep["nulls"]
    backend_name, metric = prep["backend_name"], params["headline_metric"]
    stat = {"n_resamples": params["n_resamples"], "stats_seed": params["stats_seed"]}
    recon = reconstruction(saes)
    views = {name: condition_views(group, data[name].heldout) for name, group in saes.items()}
    comparison = compare_conditions(views, "trained", nulls, threshold=params["shared_threshold"],
                                    alpha=params["alpha"], progress=progress, **stat)
    headline = headline_verdict(comparison, metric)
    alive_headline = headline_verdict(comparison, metric.split("/")[0] + "/alive")
    backend_cmp = None
    if backend_name:
        backend_cmp = equal_live_comparison(views["trained"], views[backend_name], threshold=params["shared_threshold"],
                                            **stat)
    recovery, key_freqs = {}, None
    if prep["transformer"] is not None:
        p = prep["transformer"].task.p
        key_freqs = fourier_summary(number_embedding(prep["transformer"].model, p), top=params["fourier_top"]).key_frequencies
        gt = answer_fourier_directions(prep["x"], prep["cache"].labels["c"], p, key_freqs)
        recovery = ground_truth_recovery({name: [s.sae.W_dec.detach() for s in group] for name, group in saes.items()},
                                         gt, threshold=params["gt_threshold"], **stat)
    conv_names = ["trained"] + [n for n in nulls if n != "isotropic"]
    snaps = {name: [load_snapshots(s.path, cfg) for s in saes[name][:params["convergence_seeds"]]] for name in conv_names}
    conv = convergence_table(snaps, {name: data[name].heldout for name in conv_names}, threshold=params["shared_threshold"])
    plateaus = {name: plateau(conv, name, metric, params["convergence_tol"]) for name in conv_names}
    trained_ci = comparison["table"]["trained"][metric]
    null_ci = comparison["table"][headline["strongest_null"]][metric]
    source = prep["source"]
    return {
        "headline": {
            "verdict": headline["verdict"], "against (strongest null)": headline["strongest_null"],
            "metric": metric, "trained": headline["trained"], "strongest null": headline["null"],
            "LCB": headline["lcb"], "p": headline["p_value"],
            "alive-latent verdict": alive_headline["verdict"],
            "held-out EV": float(recon.loc["trained", "held-out EV"]),
            "held-out dead fraction": float(recon.loc["trained", "held-out dead fraction"]),
            "converged": plateaus["trained"]["converged"],
            **({f"SAELens {metric}": comparison["table"][backend_name][metric]["mean"]} if backend_name else {}),
            "Fourier directions recovered (trained)": recovery["trained"]["mean"] if recovery else None,
        },
        "verdict": headline["text"] + " Verdicts against each null: "
                   + ", ".join(f"{n}: {v}" for n, v in headline["by_null"].items()) + ".",
        "gate_inputs": {"trained_vs_strongest_null_lcb": {
            "value": headline["lcb"], "ci": None,
            "detail": f"{metric}: trained CI low - {headline['strongest_null']} CI high over {len(prep['seeds'])} seeds"}},
        "candidates": [candidate(NOTEBOOK, f"{NOTEBOOK}:{config_id(cfg)}", {**cfg.to_dict(), "hook": prep["hook"]},
                                 prep["seeds"], trained_ci["mean"], (trained_ci["ci_low"], trained_ci["ci_high"]),
                                 headline["strongest_null"], null_ci["mean"], (null_ci["ci_low"], null_ci["ci_high"]),
                                 headline["p_value"], float(recon.loc["trained", "held-out EV"]), metric)],
        "config": cfg.to_dict(), "seeds": prep["seeds"], "null_seeds": prep["null_seeds"], "hook": prep["hook"],
        "layout": params["layout"],
        "activations": None if source is None else {"path": str(params["activations"]), "source": source.describe(),
                                                    "storage_layout": prep["store_layout"], "nulls": nulls},
        "split": {"heldout_fraction": params["heldout_fraction"], "split_seed": params["split_seed"],
                  "n_train": len(prep["split"][0]), "n_heldout": len(prep["split"][1])},
        "conditions": {name: {"description": d.description,
                              "checkpoints": [str(s.path) if s.path else None for s in saes[name]],
                              "fingerprints": [s.metrics.get("data_fingerprint") for s in saes[name]]}
                       for name, d in data.items()},
        "reconstruction": recon.reset_index().to_dict(orient="records"),
        "comparison": comparison, "headline_verdict": headline, "alive_headline_verdict": alive_headline,
        "backend_comparison": backend_cmp, "ground_truth": recovery, "key_frequencies": key_freqs,
        "convergence": conv.to_dict(orient="records"), "plateau": plateaus,
    }


def run(params: dict[str, Any], art: Path, *, progress: bool = False, load_only: bool = False) -> dict[str, Any]:
    """The phase's results dict (see the module docstring); ``load_only`` trains nothing."""
    return to_jsonable(analyse(params, prepare(params, art, progress=progress, load_only=load_only), progress=progress))


__all__ = ["prepare", "reconstruction", "analyse", "run"]
