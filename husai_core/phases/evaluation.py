"""Phase 12: the offline equivalents of SAEBench's core and sparse-probing evaluations on this task.

``run(params, art)`` is the analysis of ``notebooks/12_evaluation.py``. The SAEs are phase 4's
(``trained_vs_nulls.prepare`` with the same parameters: trained seeds and each trained null, loaded
by key or trained when absent). For every SAE:

- *faithfulness* (``husai_core.faithfulness``): its reconstruction spliced into the transformer
  at its hook on the answer position, loss recovered against zero and mean ablation and the
  answer accuracy, on each row set of ``eval_rows`` (the first one is the headline and the gate):
  ``sae_heldout`` (rows no SAE trained on), ``task_test`` (pairs the transformer never trained on)
  or ``sae_heldout_task_test`` (both). Under the default seeds the last is empty: the task split
  and the SAE split draw the same seeded permutation (seed 0), so every SAE held-out row is a
  transformer training pair and every transformer held-out pair an SAE training row;
- *sparse probing* (``husai_core.probing``): logistic probes on its top-k latents (SAEBench's
  mean-difference rule) for binary predicates of a, b and c, against probes on the raw activations.

Per condition the per-seed values get a bootstrap-over-seeds CI; trained vs the strongest null
(highest mean) gets LCB = trained CI low - null CI high and a seed-level permutation p.
Null SAEs encode the *real* activations here: a ``random_transformer`` SAE was trained on an
untrained model's activations, so splicing it into the trained model asks whether a dictionary
fit to other data still reconstructs what this model needs - a different question from its
consistency null.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import HusaiError
from ..experiments import config_id
from ..faithfulness import ABLATIONS, splice_saes
from ..io import to_jsonable
from ..metrics import evaluate_sae
from ..probing import probe_features, task_splits
from ..stats import bootstrap_seed_values, holm, seed_values_permutation_p
from .trained_vs_nulls import SAE_PARAMS, prepare

NOTEBOOK = "12_evaluation"
ROW_SETS = ("sae_heldout", "task_test", "sae_heldout_task_test")
SATURATED = 1e-3  # loss recovered within this of 1 for trained and null SAEs: the ratio cannot separate them
PARAMS = ("seeds", "layout", "hook", *SAE_PARAMS, "sae_params", "heldout_fraction", "split_seed", "nulls",
          "null_data_seed", "snapshot_first", "eval_rows", "eval_batch_size", "probe_tasks", "probe_k",
          "probe_max_train", "probe_max_test", "probe_seed", "headline_probe_k", "n_resamples", "stats_seed")


def conditions(params: dict[str, Any], art: Path, *, progress: bool = False, load_only: bool = False) -> dict[str, Any]:
    """Phase 4's conditions (this project's cache, no reference backend) and the evaluation rows."""
    from ..task import make_task

    unknown = [r for r in params["eval_rows"] if r not in ROW_SETS]
    if unknown or not params["eval_rows"]:
        raise HusaiError(f"eval_rows must list row sets from {', '.join(ROW_SETS)}; got {params['eval_rows']!r}")
    prep = prepare({**params, "activations": None, "reference_backend": None}, Path(art), progress=progress,
                   load_only=load_only)
    task, labels = make_task(prep["transformer"].task), prep["cache"].labels
    if not (torch.equal(labels["a"], task.a) and torch.equal(labels["b"], task.b)):
        raise HusaiError(f"the activation cache {prep['cache'].path} does not hold the transformer's pairs in order")
    held, test = prep["split"][1], torch.nonzero(labels["split"] == 1).flatten()
    sets = {"sae_heldout": held, "task_test": test, "sae_heldout_task_test": held[labels["split"][held] == 1]}
    for name in params["eval_rows"]:
        if len(sets[name]) == 0:
            raise HusaiError(f"eval_rows {name!r} is empty: no SAE held-out row is a held-out pair of the transformer "
                             f"(split_seed {params['split_seed']} draws the task split's permutation); use sae_heldout")
    return {**prep, "task": task, "eval_rows": {name: sets[name] for name in params["eval_rows"]}}


def _summary(values: list[float | None], n_resamples: int, stats_seed: int) -> dict[str, Any] | None:
    if any(v is None for v in values):
        return None  # undefined for some seed (the ablation did not raise the loss)
    b = bootstrap_seed_values(values, n_resamples, stats_seed)
    return {"mean": b.mean, "ci_low": b.ci_low, "ci_high": b.ci_high, "per_seed": list(values)}


def _against(summary: dict[str, dict], per_seed: dict[str, list], nulls: list[str], metric: str,
             stats_seed: int) -> dict[str, Any] | None:
    """Trained vs the null with the highest mean of ``metric``: LCB and permutation p."""
    have = [n for n in nulls if summary.get(n, {}).get(metric)]
    if not summary["trained"].get(metric) or not have:
        return None
    null = max(have, key=lambda n: summary[n][metric]["mean"])
    t, r = summary["trained"][metric], summary[null][metric]
    return {"metric": metric, "strongest_null": null, "trained": t["mean"], "null": r["mean"],
            "lcb": t["ci_low"] - r["ci_high"],
            "p": seed_values_permutation_p(per_seed["trained"], per_seed[null], seed=stats_seed)}


def faithfulness(params: dict[str, Any], prep: dict[str, Any]) -> dict[str, Any]:
    """``faithfulness_on`` each row set of ``eval_rows``, by name (the first is the headline)."""
    return {name: faithfulness_on(params, prep, rows) for name, rows in prep["eval_rows"].items()}


def faithfulness_on(params: dict[str, Any], prep: dict[str, Any], rows: torch.Tensor) -> dict[str, Any]:
    """Clean / ablated losses on ``rows``, per-seed splices and per-condition summaries."""
    ckpt, task = prep["transformer"], prep["task"]
    x, (train_idx, _) = prep["x"], prep["split"]
    mean = x[train_idx].mean(0)
    per_seed, out = [], None
    for name, group in prep["saes"].items():
        res = splice_saes(ckpt.model, task.tokens[rows], task.labels[rows], task.answer_pos, prep["hook"],
                          [s.sae for s in group], mean, params["eval_batch_size"])
        out = out or res
        for s, r in zip(group, res["per_sae"]):
            real = evaluate_sae(s.sae, x[rows])  # every condition's SAE on the real evaluation rows
            per_seed.append({"condition": name, "seed": s.seed, "ev_own_heldout": s.metrics["heldout"]["ev"],
                             "ev": real["ev"], "l0": real["l0"], **r})
    stat = (params["n_resamples"], params["stats_seed"])
    metrics = [f"loss_recovered_{a}" for a in ABLATIONS] + ["accuracy_spliced", "ce_spliced", "ev", "l0"]
    values = {m: {c: [r[m] for r in per_seed if r["condition"] == c] for c in prep["saes"]} for m in metrics}
    summary = {c: {m: _summary(values[m][c], *stat) for m in metrics} for c in prep["saes"]}
    tests = {m: _against(summary, values[m], prep["nulls"], m, params["stats_seed"]) for m in metrics[:3]}
    return {"clean": out["clean"], "ablated": out["ablated"], "n_rows": out["n_rows"], "per_seed": per_seed,
            "summary": summary, "tests": tests}


def probing(params: dict[str, Any], prep: dict[str, Any]) -> dict[str, Any]:
    """Probes on every SAE's top-k latents and on the raw activations, per task and k."""
    labels, (train_idx, held_idx) = prep["cache"].labels, prep["split"]
    ks = [int(k) for k in params["probe_k"]]
    splits = task_splits({v: labels[v] for v in ("a", "b", "c")}, params["probe_tasks"], train_idx.numpy(),
                         held_idx.numpy(), max_train=params["probe_max_train"], max_test=params["probe_max_test"],
                         seed=params["probe_seed"])
    x = prep["x"].numpy()
    raw = probe_features(x, splits, ["all", *[k for k in ks if k <= x.shape[1]]])
    per_seed = []
    for name, group in prep["saes"].items():
        for s in group:
            with torch.no_grad():
                z = s.sae.encode(prep["x"].to(s.sae.device, s.sae.dtype)).cpu().numpy()
            per_seed += [{"condition": name, "seed": s.seed, **r} for r in probe_features(z, splits, ks)]
    stat = (params["n_resamples"], params["stats_seed"])
    summary, values = {}, {}
    for name, group in prep["saes"].items():
        for k in ks:
            # one value per seed: the mean over tasks of that seed's probes with k latents
            for m in ("accuracy", "auc"):
                vals = [float(np.nanmean([r[m] for r in per_seed if r["condition"] == name and r["seed"] == s.seed
                                          and r["k"] == k])) for s in group]
                values.setdefault(f"{m}@k{k}", {})[name] = vals
                summary.setdefault(name, {})[f"{m}@k{k}"] = _summary(vals, *stat)
    tests = {key: _against(summary, values[key], prep["nulls"], key, params["stats_seed"])
             for key in values if key.startswith("accuracy")}
    done = [key for key, t in tests.items() if t]
    if done:  # one test per k: Holm across them, for a reader who looks for the best k
        for key, adj in zip(done, holm([tests[key]["p"] for key in done]).adjusted):
            tests[key]["p_holm"] = float(adj)
    raw_mean = {str(k): {m: float(np.nanmean([r[m] for r in raw if r["k"] == k])) for m in ("accuracy", "auc")}
                for k in ["all", *ks] if any(r["k"] == k for r in raw)}
    return {"tasks": list(params["probe_tasks"]), "k": ks,
            "rows": {t: {"train": len(s["train"]), "test": len(s["test"])} for t, s in splits.items()},
            "raw": raw, "raw_mean": raw_mean, "per_seed": per_seed, "summary": summary, "tests": tests}


def _gate(summary: dict[str, Any] | None, detail: str) -> dict[str, Any]:
    if summary is None:
        return {"value": None, "ci": None, "detail": detail + " (undefined: ablation does not raise the loss)"}
    return {"value": summary["mean"], "ci": [summary["ci_low"], summary["ci_high"]], "detail": detail}


def analyse(params: dict[str, Any], prep: dict[str, Any]) -> dict[str, Any]:
    """Every number of the phase: the results dict the notebook records."""
    faith_sets, probes = faithfulness(params, prep), probing(params, prep)
    first = params["eval_rows"][0]
    faith = faith_sets[first]
    fs, ps, cfg = faith["summary"]["trained"], probes["summary"], prep["cfg"]
    hk = int(params["headline_probe_k"])
    if hk not in probes["k"]:
        raise HusaiError(f"headline_probe_k={hk} is not one of probe_k {probes['k']}")
    lr_test, acc_test = faith["tests"]["loss_recovered_zero"], probes["tests"][f"accuracy@k{hk}"]
    n_seeds, hook = len(prep["seeds"]), prep["hook"]
    where = f"{hook}, {faith['n_rows']} {first} rows, {n_seeds} seeds"

    def mean(s):
        return None if s is None else s["mean"]

    headline = {
        "loss recovered (zero abl.)": mean(fs["loss_recovered_zero"]),
        "loss recovered (mean abl.)": mean(fs["loss_recovered_mean"]),
        "strongest null (loss recovered)": lr_test and lr_test["strongest_null"],
        "null loss recovered": lr_test and lr_test["null"], "loss recovered LCB": lr_test and lr_test["lcb"],
        "clean accuracy": faith["clean"]["accuracy"], "spliced accuracy": mean(fs["accuracy_spliced"]),
        f"probe accuracy k={hk} (trained)": mean(ps["trained"][f"accuracy@k{hk}"]),
        f"probe accuracy k={hk} (raw dims)": probes["raw_mean"].get(str(hk), {}).get("accuracy"),
        "probe accuracy (raw, all dims)": probes["raw_mean"]["all"]["accuracy"],
        f"probe accuracy k={hk} (strongest null)": acc_test and acc_test["null"],
        "strongest null (probes)": acc_test and acc_test["strongest_null"],
    }
    for name, other in faith_sets.items():
        if name != first:
            headline[f"loss recovered (zero abl.) on {name} rows"] = mean(other["summary"]["trained"]["loss_recovered_zero"])
    lr_text = ("loss recovered is undefined (zero ablation does not raise the loss on these rows)" if lr_test is None
               else f"loss recovered (zero ablation) {lr_test['trained']:.4f} for trained SAEs vs "
                    f"{lr_test['null']:.4f} for {lr_test['strongest_null']} (LCB {lr_test['lcb']:+.4f}, p {lr_test['p']:.3g})")
    if lr_test is not None and min(lr_test["trained"], lr_test["null"]) > 1 - SATURATED:
        lr_text += (" - saturated: both reconstructions leave the model's loss where it was (clean CE "
                    f"{faith['clean']['ce']:.2g}), so loss recovered cannot tell them apart")
    raw_k = headline[f"probe accuracy k={hk} (raw dims)"]
    pr_text = ("" if acc_test is None else
               f"; probe accuracy with {hk} latents {acc_test['trained']:.4f} trained vs {acc_test['null']:.4f} "
               f"{acc_test['strongest_null']}" + ("" if raw_k is None else f" vs {raw_k:.4f} on {hk} raw dimensions")
               + f" and {headline['probe accuracy (raw, all dims)']:.4f} on all raw dimensions")
    return {
        "headline": headline, "verdict": f"On {where}: {lr_text}{pr_text}.",
        "gate_inputs": {
            "loss_recovered": _gate(fs["loss_recovered_zero"], f"zero ablation, trained SAEs, mean over seeds; {where}"),
            "loss_recovered_mean_ablation": _gate(fs["loss_recovered_mean"],
                                                  f"mean ablation, trained SAEs, mean over seeds; {where}"),
        },
        "loss_recovered_for": {"phase": NOTEBOOK, "config_id": config_id(cfg), "config": {**cfg.to_dict(), "hook": hook},
                               "seeds": prep["seeds"], "loss_recovered": mean(fs["loss_recovered_zero"]),
                               "loss_recovered_mean_ablation": mean(fs["loss_recovered_mean"])},
        "faithfulness": faith_sets, "probing": probes,
        "config": cfg.to_dict(), "seeds": prep["seeds"], "null_seeds": prep["null_seeds"], "hook": hook,
        "layout": params["layout"], "nulls": prep["nulls"],
        "eval_rows": {name: int(len(rows)) for name, rows in prep["eval_rows"].items()},
        "conditions": {name: {"description": d.description,
                              "checkpoints": [str(s.path) if s.path else None for s in prep["saes"][name]]}
                       for name, d in prep["data"].items()},
    }


def run(params: dict[str, Any], art: Path, *, progress: bool = False, load_only: bool = False) -> dict[str, Any]:
    """The phase's results dict (see the module docstring); ``load_only`` trains nothing."""
    return to_jsonable(analyse(params, conditions(params, art, progress=progress, load_only=load_only)))


__all__ = ["ROW_SETS", "conditions", "faithfulness", "faithfulness_on", "probing", "analyse", "run"]
