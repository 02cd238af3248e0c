"""Phase 11: stress tests — transcoders vs SAEs, and SAEs out of distribution.

``run(params, art)`` is the analysis of ``notebooks/11_stress.py`` (``husai verify`` calls it
with ``load_only=True``):

- ``transcoder_stress``: for every (d_sae, k) of a small grid, SAEs on the MLP's input and
  transcoders from the MLP's input to its output (``transcoders``), same seeds, same rows and
  sparsity, each against its trained nulls over the metric family; ``transcoder_delta`` =
  transcoder minus SAE consistency on the headline metric, LCB = transcoder CI low - SAE CI
  high, a bootstrap-over-seeds p for "transcoder > SAE", Holm across the grid. The headline
  configuration is fixed in params (no best-of-N).
- ``ood_stress``: SAEs trained on the in-distribution part of a split (``ood``) and evaluated
  on its held-out rows and on the out-of-distribution rows: EV, L0, dead fraction, probe
  accuracy, consistency; drops (in - out) with bootstrap CIs over seeds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..comparison import compare_conditions, condition_views, headline_verdict
from ..conditions import condition_data, heldout_split, train_or_load_condition
from ..consistency import disjoint_seeds
from ..errors import HusaiError
from ..experiments import config_id, sae_config, train_or_load_saes
from ..matching import family_matrices, view_of
from ..metrics import evaluate_sae
from ..nulls import check_null
from ..stats import bootstrap_difference_p, bootstrap_over_seeds, bootstrap_seed_values, holm

NOTEBOOK = "11_stress"
PARAMS = ("seeds", "layout", "activations", "layer", "transcoder_input", "transcoder_target", "architecture",
          "d_sae_grid", "k_grid", "grid", "headline_d_sae", "headline_k", "steps", "batch_size", "lr", "sae_params",
          "heldout_fraction", "split_seed", "nulls", "null_data_seed", "ood_hook", "ood_d_sae", "ood_k", "ood_by",
          "ood_in", "ood_below", "ood_metric", "probe_label", "probe_max_rows", "headline_metric",
          "shared_threshold", "n_resamples", "stats_seed", "alpha")
ARMS = ("sae", "transcoder")
OOD_METRICS = ("ev", "l0", "dead_fraction", "probe_accuracy")
OOD_CONSISTENCY = ("activation_mcc/all", "activation_mcc/alive", "pwmcc/alive", "shared_latent/alive")


def _stat(b: Any) -> dict[str, float]:
    return {"mean": float(b.mean), "ci_low": float(b.ci_low), "ci_high": float(b.ci_high)}


def _recon(group: list) -> dict[str, float]:
    held = [s.metrics["heldout"] for s in group]
    return {f"heldout_{m}": float(np.mean([h[m] for h in held])) for m in ("ev", "l0", "dead_fraction")}


# ---------------------------------------------------------------- transcoders vs SAEs

def _grid_configs(params: dict[str, Any], d_in: int, d_out: int) -> dict[tuple[int, int], dict[str, Any]]:
    """SAE and transcoder configs of every grid point, validated before anything trains."""
    base = {"architecture": params["architecture"], "steps": params["steps"], "batch_size": params["batch_size"],
            "lr": params["lr"], **(params.get("sae_params") or {})}
    if params.get("grid") is not None:  # explicit (d_sae, k) pairs
        try:
            points = [(int(d), int(k)) for d, k in params["grid"]]
        except (TypeError, ValueError):
            raise HusaiError(f"grid must be a list of [d_sae, k] pairs, got {params['grid']!r}") from None
    else:
        points = [(int(d), int(k)) for d in params["d_sae_grid"] for k in params["k_grid"]]
    if not points or len(set(points)) != len(points):
        raise HusaiError(f"the transcoder grid is empty or repeats a configuration: {points}")
    head = (int(params["headline_d_sae"]), int(params["headline_k"]))
    if head not in points:
        raise HusaiError(f"headline configuration d_sae {head[0]}, k {head[1]} is not in the grid {points}")
    out = {}
    for d, k in points:
        try:
            out[(d, k)] = {"sae": sae_config(d_in, {**base, "d_sae": d, "k": k}),
                           "transcoder": sae_config(d_in, {**base, "d_sae": d, "k": k, "transcoder": True}, d_out=d_out)}
        except HusaiError as exc:
            raise HusaiError(f"invalid grid point d_sae {d}, k {k}: {exc}") from None
    return out


def transcoder_stress(params: dict[str, Any], art: Path, *, progress: bool = False,
                      load_only: bool = False) -> dict[str, Any]:
    """Transcoders vs SAEs on the same input over the (d_sae, k) grid (module docstring)."""
    from ..activations import load_cache
    from ..model import load_checkpoint
    from ..transcoders import hook_rows, mlp_hooks, train_or_load_transcoders, transcoder_data

    art, layout = Path(art), params["layout"]
    ckpt = load_checkpoint(art / "transformer" / layout)
    cache = load_cache(art / "activations" / layout)
    in_hook, out_hook, why = mlp_hooks(ckpt.model_cfg, params["layer"], params.get("transcoder_input"),
                                       params.get("transcoder_target"))
    rows, where = hook_rows(cache, ckpt, [in_hook, out_hook])
    x, t = rows[in_hook], rows[out_hook]
    configs = _grid_configs(params, x.shape[1], t.shape[1])
    nulls = [check_null(n) for n in params["nulls"]]
    if not [n for n in nulls if n != "isotropic"]:
        raise HusaiError("transcoder stress needs at least one trained null (gaussian_matched or random_transformer)")
    seeds = [int(s) for s in params["seeds"]]
    null_seeds = disjoint_seeds(seeds, len(seeds))
    split = heldout_split(x.shape[0], params["heldout_fraction"], params["split_seed"])
    dseed = int(params["null_data_seed"])
    data = {"sae": {n: condition_data(n, x, split, data_seed=dseed, checkpoint=ckpt, hook=in_hook)
                    for n in ["trained", *nulls]},
            "transcoder": {n: transcoder_data(n, x, t, split, data_seed=dseed, checkpoint=ckpt,
                                              hooks=(in_hook, out_hook), position=cache.meta.get("position", "answer"))
                           for n in ["trained", *nulls]}}
    metric, stat = params["headline_metric"], {"n_resamples": params["n_resamples"], "stats_seed": params["stats_seed"]}
    grid = []
    for (d, k), cfgs in configs.items():
        point: dict[str, Any] = {"d_sae": d, "k": k}
        for arm in ARMS:
            cfg = cfgs[arm]
            saes = {}
            for cond in ["trained", *nulls]:
                cond_seeds = seeds if cond == "trained" else null_seeds
                if arm == "sae":
                    saes[cond] = train_or_load_condition(art, layout, in_hook, cfg, data[arm][cond], cond_seeds,
                                                         progress=progress, load_only=load_only)
                else:
                    saes[cond] = train_or_load_transcoders(art, layout, (in_hook, out_hook), cfg, data[arm][cond],
                                                           cond_seeds, progress=progress, load_only=load_only)
            views = {c: condition_views(g, data[arm][c].heldout) for c, g in saes.items()}
            comp = compare_conditions(views, "trained", nulls, threshold=params["shared_threshold"],
                                      alpha=params["alpha"], **stat)
            head = headline_verdict(comp, metric)
            point[arm] = {"config_id": config_id(cfg), "config": cfg.to_dict(), "comparison": comp, "headline": head,
                          "reconstruction": {c: _recon(g) for c, g in saes.items()},
                          "checkpoints": {c: [str(s.path) if s.path else None for s in g] for c, g in saes.items()}}
        ts, ss = (point[a]["comparison"]["table"]["trained"][metric] for a in ("transcoder", "sae"))
        m_t, m_s = (np.asarray(point[a]["comparison"]["matrices"]["trained"][metric]) for a in ("transcoder", "sae"))
        excess = {a: point[a]["headline"]["trained"] - point[a]["headline"]["null"] for a in ARMS}
        point["delta"] = {"transcoder": ts["mean"], "sae": ss["mean"], "delta": ts["mean"] - ss["mean"],
                          "lcb": ts["ci_low"] - ss["ci_high"],
                          "p": bootstrap_difference_p(m_t, m_s, params["n_resamples"], seed=params["stats_seed"]),
                          "transcoder_excess_over_null": excess["transcoder"], "sae_excess_over_null": excess["sae"]}
        grid.append(point)
    h = holm([p["delta"]["p"] for p in grid], alpha=params["alpha"])
    for p, adj, rej in zip(grid, h.adjusted, h.reject):
        p["delta"] |= {"p_holm": float(adj), "significant": bool(rej)}
    cand_p = holm([p[a]["headline"]["p_value"] for p in grid for a in ARMS], alpha=params["alpha"]).adjusted
    candidates = []
    for i, (p, arm) in enumerate([(p, a) for p in grid for a in ARMS]):
        hv, comp = p[arm]["headline"], p[arm]["comparison"]
        tr, nl = comp["table"]["trained"][metric], comp["table"][hv["strongest_null"]][metric]
        candidates.append({
            "phase": NOTEBOOK, "name": f"{NOTEBOOK}:{arm}:{p[arm]['config_id']}",
            "config": {**p[arm]["config"], "hook": in_hook, "target_hook": out_hook if arm == "transcoder" else None},
            "seeds": seeds, "metric": metric, "trained": tr["mean"], "trained_ci": [tr["ci_low"], tr["ci_high"]],
            "strongest_null": hv["strongest_null"], "null": nl["mean"], "null_ci": [nl["ci_low"], nl["ci_high"]],
            "lcb": hv["lcb"], "p": hv["p_value"], "p_holm": float(cand_p[i]),
            "ev_heldout": p[arm]["reconstruction"]["trained"]["heldout_ev"], "loss_recovered": None})
    head_point = next(p for p in grid if (p["d_sae"], p["k"]) == (int(params["headline_d_sae"]), int(params["headline_k"])))
    return {"hooks": {"input": in_hook, "target": out_hook, "why": why, "rows_from": where},
            "nulls": nulls, "seeds": seeds, "null_seeds": null_seeds, "metric": metric,
            "split": {"heldout_fraction": params["heldout_fraction"], "split_seed": params["split_seed"],
                      "n_train": len(split[0]), "n_heldout": len(split[1])},
            "conditions": {a: {c: d_.description for c, d_ in data[a].items()} for a in ARMS},
            "grid": grid, "headline": {"d_sae": head_point["d_sae"], "k": head_point["k"], **head_point["delta"]},
            "correction": f"Holm across the {len(grid)} grid configurations (alpha {params['alpha']:g})",
            "candidates": candidates}


# ---------------------------------------------------------------- out of distribution

def _ood_rows(params: dict[str, Any], art: Path) -> dict[str, Any]:
    """The rows, per-row split values and probe labels of the OOD stress (our cache or a source)."""
    from ..activations import load_cache
    from ..sources import open_source, storage_layout

    by, label = params["ood_by"], params.get("probe_label")
    if params.get("activations") is None:
        from ..model import load_checkpoint
        from ..transcoders import hook_rows

        cache = load_cache(art / "activations" / params["layout"])
        ckpt = load_checkpoint(art / "transformer" / params["layout"])
        rows, _ = hook_rows(cache, ckpt, [params["ood_hook"]])
        if by not in cache.labels:
            raise HusaiError(f"ood_by {by!r} is not a row label of the cache; labels: {sorted(cache.labels)}")
        return {"x": rows[params["ood_hook"]], "hook": params["ood_hook"], "values": cache.labels[by],
                "labels": cache.labels.get(label) if label else None, "layout": params["layout"], "source": None}
    src = open_source(params["activations"], hook=params.get("ood_hook"))
    if by == "dataset":
        values = src.dataset_names()
        if values is None:
            raise HusaiError(f"ood_by 'dataset': the activation source has no per-row datasets ({src.describe()})")
    else:
        values = src.label(by)
    labels = src.label(label) if label and label in src.label_names else None
    return {"x": src, "hook": src.hook, "values": values, "labels": labels,
            "layout": storage_layout(params["layout"], src), "source": src}


def ood_plan(params: dict[str, Any], art: Path) -> dict[str, Any]:
    """Rows, split and SAE config of the OOD stress, checked without training anything."""
    from ..ood import ood_split
    from ..sources import eval_rows, evenly_spaced, is_source

    r = _ood_rows(params, Path(art))
    x = r["x"]
    split = ood_split(r["values"], by=params["ood_by"], in_values=params.get("ood_in"), below=params.get("ood_below"))
    inner = heldout_split(len(split.in_idx), params["heldout_fraction"], params["split_seed"])
    in_train, in_held = split.in_idx[inner[0]], split.in_idx[inner[1]]
    if is_source(x):  # held-out rows are read into memory: cap them as every phase does
        in_held = in_held[evenly_spaced(len(in_held), eval_rows(len(in_held), x.shape[1]))]
    # out-of-distribution rows: as many as the in-distribution held-out rows, evenly spaced, so the
    # dead fraction has the same window and activation matching the same number of rows
    out_idx = split.out_idx[evenly_spaced(len(split.out_idx), len(in_held))]
    cfg = sae_config(x.shape[1], {"architecture": params["architecture"], "d_sae": params["ood_d_sae"],
                                  "k": params["ood_k"], "steps": params["steps"], "batch_size": params["batch_size"],
                                  "lr": params["lr"], **(params.get("sae_params") or {})})
    measured = [m for m in OOD_METRICS if m != "probe_accuracy" or r["labels"] is not None] + list(OOD_CONSISTENCY)
    if params["ood_metric"] not in measured:
        raise HusaiError(f"ood_metric {params['ood_metric']!r} is not measured here; choose one of {', '.join(measured)}")
    return {**r, "split": split, "in_train": in_train, "in_held": in_held, "out_idx": out_idx, "cfg": cfg}


def ood_stress(params: dict[str, Any], art: Path, *, progress: bool = False, load_only: bool = False,
               plan: dict[str, Any] | None = None) -> dict[str, Any]:
    """SAEs trained in distribution, evaluated in and out of it (module docstring)."""
    from ..ood import fit_class_probe, class_probe_accuracy, split_tag
    from ..sources import evenly_spaced, is_source

    art = Path(art)
    r = plan or ood_plan(params, art)
    x, by, labels, cfg, split = r["x"], params["ood_by"], r["labels"], r["cfg"], r["split"]
    in_train, in_held, out_idx = r["in_train"], r["in_held"], r["out_idx"]
    take = (lambda idx: x.take(idx)) if is_source(x) else (lambda idx: x[idx])
    held_x, out_x = take(in_held), take(out_idx)
    train_x = x.subset(in_train) if is_source(x) else x[in_train]
    seeds = [int(s) for s in params["seeds"]]
    folder = art / "stress" / "ood" / r["layout"] / r["hook"] / f"{by}-{split_tag(split)}" / config_id(cfg)
    saes = train_or_load_saes(folder, cfg, train_x, seeds, heldout=held_x, progress=progress, load_only=load_only)
    probe_idx = in_train[evenly_spaced(len(in_train), int(params["probe_max_rows"]))]
    probe_x = take(probe_idx) if labels is not None else None
    per_seed = []
    for s in saes:
        row = {"seed": s.seed}
        for side, rows in (("in", held_x), ("out", out_x)):
            m = evaluate_sae(s.sae, rows)
            row |= {f"{side}_{k}": m[k] for k in ("ev", "l0", "dead_fraction")}
        if labels is not None:
            with torch.no_grad():
                probe = fit_class_probe(s.sae.encode(probe_x), labels[probe_idx])
                row["in_probe_accuracy"] = class_probe_accuracy(probe, s.sae.encode(held_x), labels[in_held])
                row["out_probe_accuracy"] = class_probe_accuracy(probe, s.sae.encode(out_x), labels[out_idx])
        per_seed.append(row)
    metrics = [m for m in OOD_METRICS if f"in_{m}" in per_seed[0]]
    stat = {"n_resamples": params["n_resamples"], "seed": params["stats_seed"]}
    summary = {}
    for m in metrics:
        a, b = np.array([p[f"in_{m}"] for p in per_seed]), np.array([p[f"out_{m}"] for p in per_seed])
        summary[m] = {"in": _stat(bootstrap_seed_values(a, **stat)), "out": _stat(bootstrap_seed_values(b, **stat)),
                      "drop": _stat(bootstrap_seed_values(a - b, **stat))}
    raw_probe = None
    if labels is not None:  # what a probe on the raw activations does on the same rows: the reference
        probe = fit_class_probe(probe_x, labels[probe_idx])
        raw_probe = {"in": class_probe_accuracy(probe, held_x, labels[in_held]),
                     "out": class_probe_accuracy(probe, out_x, labels[out_idx])}
    consistency = {}
    if len(saes) >= 2:
        mats = {side: family_matrices([view_of(s.sae, rows) for s in saes], threshold=params["shared_threshold"])
                for side, rows in (("in", held_x), ("out", out_x))}
        for key in OOD_CONSISTENCY:
            consistency[key] = {"in": _stat(bootstrap_over_seeds(mats["in"][key], **stat)),
                                "out": _stat(bootstrap_over_seeds(mats["out"][key], **stat)),
                                "drop": _stat(bootstrap_over_seeds(mats["in"][key] - mats["out"][key], **stat))}
    metric = params["ood_metric"]
    drops = {**{m: summary[m]["drop"] for m in summary}, **{k: v["drop"] for k, v in consistency.items()}}
    if metric not in drops:
        raise HusaiError(f"ood_metric {metric!r} needs at least 2 seeds (consistency between seeds)")
    return {"hook": r["hook"], "by": by, "rule": split.rule, "layout": r["layout"],
            "source": r["source"].describe() if r["source"] is not None else None,
            "n_in": len(split.in_idx), "n_out": len(split.out_idx), "n_train": len(in_train),
            "n_eval_rows": len(in_held), "config_id": config_id(cfg), "config": cfg.to_dict(), "seeds": seeds,
            "checkpoints": [str(s.path) for s in saes], "per_seed": per_seed, "summary": summary,
            "raw_probe": raw_probe, "consistency": consistency, "metric": metric, "drop": drops[metric],
            "probe": None if labels is None else f"ridge one-hot probe of {params['probe_label']} fitted on "
                                                 f"{len(probe_idx)} in-distribution training rows"}


# ---------------------------------------------------------------- the phase

def run(params: dict[str, Any], art: Path, *, progress: bool = False, load_only: bool = False) -> dict[str, Any]:
    """The phase's results dict: headline, gate inputs, candidates, both stress tests."""
    notes = []
    tc = None
    plan = ood_plan(params, art)  # a bad split fails here, before any transcoder trains
    if params.get("activations") is None:
        tc = transcoder_stress(params, art, progress=progress, load_only=load_only)
    else:
        notes.append("transcoder stress skipped: foreign activations have no transformer whose MLP input and output "
                     "could be read; the OOD stress runs on them")
    ood = ood_stress(params, art, progress=progress, load_only=load_only, plan=plan)
    headline: dict[str, Any] = {}
    gate_inputs: dict[str, Any] = {}
    if tc is not None:
        th = tc["headline"]
        headline |= {"transcoder_delta config": f"d_sae {th['d_sae']}, k {th['k']}", "transcoder": th["transcoder"],
                     "SAE (same input)": th["sae"], "transcoder_delta": th["delta"], "transcoder_delta LCB": th["lcb"],
                     "transcoder_delta p (Holm)": th["p_holm"],
                     "configs with transcoder_delta LCB > 0": sum(p["delta"]["lcb"] > 0 for p in tc["grid"])}
        gate_inputs["transcoder_delta_lcb"] = {
            "value": th["lcb"], "ci": None,
            "detail": f"{tc['metric']}: transcoder CI low - SAE CI high at the pre-declared d_sae {th['d_sae']}, "
                      f"k {th['k']} ({tc['hooks']['input']} -> {tc['hooks']['target']}, {len(tc['seeds'])} seeds)"}
    d = ood["drop"]
    headline |= {f"OOD drop ({ood['metric']})": d["mean"], "OOD drop CI": [d["ci_low"], d["ci_high"]],
                 "OOD split": ood["rule"]}
    gate_inputs["ood_drop"] = {
        "value": d["mean"], "ci": [d["ci_low"], d["ci_high"]],
        "detail": f"{ood['metric']} in-distribution minus out-of-distribution ({ood['rule']}, {ood['hook']}), "
                  f"mean over {len(ood['seeds'])} seeds, bootstrap CI over seeds"}
    return {"headline": headline, "gate_inputs": gate_inputs, "candidates": tc["candidates"] if tc else [],
            "transcoders": tc, "ood": ood, "notes": notes}


__all__ = ["transcoder_stress", "ood_plan", "ood_stress", "run", "PARAMS", "NOTEBOOK"]
