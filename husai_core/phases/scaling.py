"""Phase 13 — scaling: consistency against token budget, hook/layer and dictionary width.

A 2-layer transformer is trained on the task exactly as phase 1 trains its model (same task,
optimiser and settings, ``n_layers`` = 2), kept in the transformer store under its own name
(``transformer/<layout>-2layer``) so it never replaces phase 1's model, and its activations are
cached at ``blocks.{L}.{hook}`` for every requested hook and layer. For each point of

    token budget (rows seen = steps x batch_size) x hook x layer x d_sae

TopK SAEs are trained on several seeds, with the ``gaussian_matched`` null of the same
configuration on disjoint seeds (the strongest trained null the sweep runner offers), through the
resumable sweep runner: a second run trains nothing. Each configuration is summarised by
``experiments.summarise_sweep`` (PWMCC = ``pwmcc/all`` of the metric family, bootstrap-over-seeds
CIs, permutation test and LCB against the null, held-out EV).

Trends: ``trends.fit_power_law`` regresses log(consistency) — and log(consistency - null), where
that is positive — on log(token budget) and log(d_sae), with one intercept per hook (pooled) or
within a hook. The CI of a slope is the t interval of ordinary least squares (standard error from
the residuals, ``n - p`` degrees of freedom, ``scipy.stats.t``): it treats configurations as the
observations, so it includes lack of fit but not the seed-level dependence inside each mean.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from ..errors import HusaiError
from ..experiments import (_load_seed, config_id, data_fingerprint, point_data, sae_config, sae_key,
                           summarise_sweep, sweep_point_check, train_point)
from ..paths import runs_relative
from ..selection import candidate, select_candidate
from ..store import code_version, tensor_fingerprint
from ..sweep import SweepPoint, expand_grid, point_path, read_point, run_sweep
from ..trends import fit_power_law

PHASE = "13_scaling"
HOOKS = ("hook_resid_mid", "hook_mlp_out", "hook_resid_post")
NULL = "gaussian_matched"
# Sections of results.json `husai verify` re-derives besides headline and candidates.
VERIFIED = ("slopes", "best_per_hook", "transformer")
# Every parameter ``run`` reads, with the notebook's defaults (the parameters cell repeats them).
DEFAULTS: dict[str, Any] = {
    # the transformer: phase 1's task and training settings, with two layers
    "p": 113, "train_frac": 0.3, "split_seed": 0, "layout": "default", "model_seed": 0, "n_layers": 2,
    "d_model": 128, "n_heads": 4, "d_mlp": 512, "model_steps": 10_000, "model_lr": 1e-3, "weight_decay": 1.0,
    "eval_every": 100, "position": "answer",
    # the grid
    "hooks": list(HOOKS), "layers": [0, 1], "token_budgets": [65_536, 262_144, 1_048_576], "d_sae_grid": [128, 512],
    "seeds": [42, 123, 456], "architecture": "topk", "k": 32, "batch_size": 256, "lr": 1e-3, "sae_params": {},
    "null_data_seed": 1, "family": True,
    # execution and statistics
    "sweep_dir": None, "workers": None, "threads_per_worker": None, "scheduler": None,
    "n_resamples": 10_000, "stats_seed": 0, "alpha": 0.05,
}


# ---------------------------------------------------------------- the grid

def hook_names(hooks: Sequence[str], layers: Sequence[int], n_layers: int) -> list[str]:
    """``blocks.{L}.{hook}`` for every layer and hook, validated (bad input: one-line HusaiError)."""
    if not hooks or not layers:
        raise HusaiError(f"scaling grid is empty: give at least one hook and one layer (hooks={list(hooks)}, "
                         f"layers={list(layers)})")
    for h in hooks:
        if h not in HOOKS:
            raise HusaiError(f"unknown hook {h!r} for the scaling grid; choose from {', '.join(HOOKS)}")
    for layer in layers:
        if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or not 0 <= layer < n_layers:
            raise HusaiError(f"layer {layer!r} is outside the {n_layers}-layer model (0..{n_layers - 1})")
    return [f"blocks.{int(layer)}.{h}" for layer in layers for h in hooks]


def budget_steps(token_budgets: Sequence[int], batch_size: int) -> list[int]:
    """SAE training steps of each token budget (rows seen = steps x batch_size, rounded)."""
    if not token_budgets:
        raise HusaiError("scaling grid is empty: token_budgets has no value")
    if int(batch_size) < 1:
        raise HusaiError(f"batch_size must be a positive integer, got {batch_size!r}")
    steps = [max(1, round(float(t) / int(batch_size))) for t in token_budgets]
    if any(float(t) <= 0 for t in token_budgets) or len(set(steps)) != len(steps):
        raise HusaiError(f"token_budgets {list(token_budgets)} must be positive and distinct after rounding to "
                         f"whole steps of batch {batch_size} (steps {steps})")
    return steps


def model_name(params: dict[str, Any]) -> str:
    """The transformer's (and its activations' and SAEs') storage name: never phase 1's."""
    return f"{params['layout']}-{int(params['n_layers'])}layer"


def _configs(params: dict[str, Any]):
    from ..model import ModelConfig, TrainConfig
    from ..task import TaskConfig

    task = TaskConfig(p=params["p"], train_frac=params["train_frac"], split_seed=params["split_seed"],
                      layout=params["layout"])
    model = ModelConfig(n_layers=params["n_layers"], d_model=params["d_model"], n_heads=params["n_heads"],
                        d_mlp=params["d_mlp"])
    train = TrainConfig(steps=params["model_steps"], lr=params["model_lr"], weight_decay=params["weight_decay"],
                        eval_every=params["eval_every"], seed=params["model_seed"])
    return task, model, train


def scaling_model(params: dict[str, Any], art: Path, *, progress: bool = False, load_only: bool = False):
    """The 2-layer transformer: trained with phase 1's loop (``model.train_or_load``) or loaded."""
    from ..model import load_checkpoint, train_or_load

    folder = Path(art) / "transformer" / model_name(params)
    task, cfg, train = _configs(params)
    if load_only:
        ckpt = load_checkpoint(folder)
        if (ckpt.task, ckpt.model_cfg, ckpt.train_cfg) != (task, cfg, train):
            raise HusaiError(f"stale transformer checkpoint {folder}: trained with other settings (load_only)")
        return ckpt
    return train_or_load(folder, task, cfg, train, progress=progress)


def scaling_activations(ckpt, hooks: list[str], folder: Path, position: str = "answer",
                        load_only: bool = False) -> dict[str, torch.Tensor]:
    """Activations of ``ckpt`` at ``hooks`` from the cache in ``folder`` (``activations.save_cache``
    format), extracted again when the cache is missing, lacks a hook or came from another checkpoint."""
    from ..activations import extract_activations, load_cache, save_cache
    from ..task import make_task

    if (folder / "metadata.json").is_file():
        cache = load_cache(folder)
        if (cache.meta.get("source_sha256") == ckpt.sha256 and cache.meta.get("position") == position
                and set(hooks) <= set(cache.acts)):
            return {h: cache.acts[h] for h in hooks}
        why = "made by another checkpoint or position, or without every hook"
    else:
        why = "missing"
    if load_only:
        raise HusaiError(f"activation cache {folder} is {why} (load_only)")
    data = make_task(ckpt.task)
    acts = extract_activations(ckpt.model, data.tokens, hooks, position=position, answer_pos=data.answer_pos)
    split = torch.zeros(len(data.labels), dtype=torch.int64)
    split[data.test_idx] = 1  # 0 = train pair, 1 = held-out pair (as phase 2)
    labels = {"a": data.a, "b": data.b, "c": data.labels, "split": split}
    meta = {"source_checkpoint": runs_relative(ckpt.path), "source_sha256": ckpt.sha256, "layout": ckpt.task.layout,
            "position": position, "answer_pos": data.answer_pos, "task": ckpt.task.to_dict(), "phase": PHASE}
    cache = load_cache(save_cache(folder, acts, labels, meta))
    return {h: cache.acts[h] for h in hooks}  # grid order, as when the cache is reused (not the file's)


def check_grid(params: dict[str, Any]) -> list[str]:
    """Validate the whole grid before anything trains (every site has width d_model); return the hooks."""
    hooks = hook_names(params["hooks"], params["layers"], int(params["n_layers"]))
    steps = budget_steps(params["token_budgets"], params["batch_size"])
    if not params["d_sae_grid"]:
        raise HusaiError("scaling grid is empty: d_sae_grid has no value")
    if len(params["seeds"]) < 2:
        raise HusaiError(f"scaling needs at least 2 seeds per configuration, got {params['seeds']}")
    expand_grid({"architecture": params["architecture"], "k": params["k"], "batch_size": params["batch_size"],
                 "lr": params["lr"], **params["sae_params"]}, {"steps": steps, "d_sae": list(params["d_sae_grid"])},
                params["seeds"], sweep_point_check(int(params["d_model"])), data_id="check")
    return hooks


def grid_points(params: dict[str, Any], art: Path, xs: dict[str, torch.Tensor]) -> list[SweepPoint]:
    """Sweep points: every hook x steps x d_sae for the trained seeds and for the null's seeds."""
    from ..consistency import disjoint_seeds

    seeds = [int(s) for s in params["seeds"]]
    steps = budget_steps(params["token_budgets"], params["batch_size"])
    grid = {"steps": steps, "d_sae": [int(d) for d in params["d_sae_grid"]]}
    null_seeds = disjoint_seeds(seeds, len(seeds))
    points: list[SweepPoint] = []
    for hook, x in xs.items():
        base = {"artifacts": str(art), "layout": model_name(params), "hook": hook,
                "architecture": params["architecture"], "k": params["k"], "batch_size": params["batch_size"],
                "lr": params["lr"], **params["sae_params"]}
        ids = {"data_id": tensor_fingerprint(x), "code_id": code_version("all"), "check": sweep_point_check(x.shape[1])}
        points += expand_grid(base, grid, seeds, **ids)
        points += expand_grid({**base, "condition": NULL, "null_data_seed": params["null_data_seed"]}, grid,
                              null_seeds, **ids)
    return points


def load_point(spec: dict[str, Any]) -> dict[str, Any]:
    """``experiments.train_point`` that never trains: a missing or stale SAE is a HusaiError."""
    from ..conditions import condition_dir

    spec, data, x = point_data(spec)
    (art, layout, hook, condition), seed = spec.pop("_where"), int(spec.pop("seed"))
    cfg = sae_config(x.shape[1], spec)
    folder = condition_dir(art, layout, hook, cfg, condition)
    res = _load_seed(folder / f"seed{seed}", seed, cfg, sae_key(cfg, seed, data_fingerprint(data.train)))
    if res is None or "heldout" not in res.metrics:
        raise HusaiError(f"missing or stale SAE checkpoint {folder / f'seed{seed}'} (load_only: run {PHASE} to train it)")
    held = res.metrics["heldout"]
    return {"ev": held["ev"], "l0": held["l0"], "mse": held["mse"], "dead_fraction": held["dead_fraction"],
            "train_ev": res.metrics["ev"], "checkpoint": str(res.path), "config_id": config_id(cfg),
            "condition": condition}


def run_grid(points: list[SweepPoint], out: Path, *, load_only: bool = False, progress: bool = False,
             workers: int | None = None, threads_per_worker: int | None = None,
             scheduler: str | None = None) -> pd.DataFrame:
    """Run (resume) the sweep; ``load_only``: read finished points, load the rest, write nothing."""
    if not load_only:
        return run_sweep(train_point, points, out, workers=workers, threads_per_worker=threads_per_worker,
                         scheduler=scheduler, progress=progress)
    rows = []
    for p in points:
        path = point_path(out, p)
        result = read_point(path)["result"] if path.is_file() else \
            load_point({**p.config, "seed": p.seed})
        rows.append({**p.config, "seed": p.seed, "key": p.key, "data_id": p.data_id, **result})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- trends

def trends(summary: pd.DataFrame, alpha: float = 0.05) -> dict[str, Any]:
    """Fitted exponents vs token budget and d_sae: pooled over hooks (one intercept per hook) and
    within each hook, for ``pwmcc`` (trained), ``null`` and ``excess`` (pwmcc - null)."""
    out: dict[str, Any] = {"pooled": {}, "by_hook": {}}
    for y in ("pwmcc", "null", "excess"):
        out["pooled"][y] = fit_power_law(summary, y, ["tokens", "d_sae"], group="hook", alpha=alpha)
        out["by_hook"][y] = {h: fit_power_law(g, y, ["tokens", "d_sae"], alpha=alpha)
                             for h, g in summary.groupby("hook", sort=False)}
    return out


# ---------------------------------------------------------------- summary, candidates, run

FAMILY = ("pwmcc_signed/all", "pw_mcc/all", "shared_latent/all")


def family(table: pd.DataFrame, n_resamples: int, stats_seed: int, threshold: float = 0.7) -> pd.DataFrame:
    """The decoder/encoder side of the metric family (``matching``; all latents, so no held-out
    rows are needed) per (hook, steps, d_sae): trained and null means over seed pairs with
    bootstrap-over-seeds CIs, and the LCB (trained CI low - null CI high)."""
    from ..matching import SAEView, family_matrices
    from ..sae import load_sae
    from ..stats import bootstrap_over_seeds, conservative_lcb

    rows = []
    for key, g in table.groupby(["hook", "steps", "d_sae"], sort=False):
        boots = {}
        for cond, h in g.groupby("condition"):
            saes = [load_sae(path) for path in h.sort_values("seed").checkpoint]
            views = [SAEView(s.W_dec.detach(), s.W_enc.detach().T, None, torch.ones(s.W_dec.shape[0], dtype=torch.bool))
                     for s in saes]
            mats = family_matrices(views, threshold)
            boots |= {(cond, m): bootstrap_over_seeds(mats[m], n_resamples, seed=stats_seed) for m in FAMILY}
        row = dict(zip(["hook", "steps", "d_sae"], key))
        for m in FAMILY:
            t, n = boots["trained", m], boots[NULL, m]
            row |= {m: t.mean, f"{m} ci_low": t.ci_low, f"{m} ci_high": t.ci_high, f"{m} null": n.mean,
                    f"{m} null_ci_high": n.ci_high, f"{m} lcb": conservative_lcb(t, n)}
        rows.append(row)
    return pd.DataFrame(rows)



def summarise(table: pd.DataFrame, batch_size: int, n_resamples: int, stats_seed: int,
              alpha: float) -> pd.DataFrame:
    """One row per (hook, steps, d_sae): ``summarise_sweep`` + tokens, layer, excess; Holm
    across every configuration of the phase (``p_holm``) and the best per hook (``best_in_hook``)."""
    s = summarise_sweep(table, ["hook", "steps", "d_sae"], n_resamples, stats_seed, alpha)
    hooks = list(dict.fromkeys(table.hook))  # grid order
    s = s.assign(order=s.hook.map(hooks.index)).sort_values(["order", "steps", "d_sae"]).drop(columns="order")
    s = s.reset_index(drop=True)
    s.insert(1, "layer", s.hook.str.split(".").str[1].astype(int))
    s.insert(2, "site", s.hook.str.split(".").str[2])
    s.insert(4, "tokens", s.steps * int(batch_size))
    s["excess"] = s.pwmcc - s.null
    best = pd.Series(False, index=s.index)
    for h in hooks:
        scored, choice = select_candidate(s, (s.hook == h).tolist(), alpha, against="auto", prefer_significant=True,
                                          if_none_eligible="all")  # the rule phases 5-6 use
        best[scored.selected] = True
    s["p_holm"], s["significant"] = scored.p_holm, scored.significant
    s["best_in_hook"] = best
    return s


def candidates(summary: pd.DataFrame, seeds: list[int], null_seeds: list[int], params: dict[str, Any]) -> list[dict]:
    """Release-gate candidates: every configuration with >= 3 seeds, against its trained null."""
    out = []
    for r in summary.to_dict(orient="records"):
        if r["n_seeds"] < 3:
            continue
        config = {"architecture": params["architecture"], "d_sae": int(r["d_sae"]), "k": int(params["k"]),
                  "hook": r["hook"], "steps": int(r["steps"]), "tokens": int(r["tokens"]),
                  "batch_size": int(params["batch_size"]), "lr": float(params["lr"]), "model": model_name(params),
                  **params["sae_params"]}
        out.append(candidate(PHASE, f"{PHASE}:{r['hook']},tokens={int(r['tokens'])},d_sae={int(r['d_sae'])}", config,
                             seeds, r["pwmcc"], (r["pwmcc_ci_low"], r["pwmcc_ci_high"]), NULL, r["null"],
                             (r["null_ci_low"], r["null_ci_high"]), r["null_p"], r["ev"], p_holm=r["p_holm"],
                             null_seeds=null_seeds, p_note=f"Holm across the {len(summary)} configurations of {PHASE}"))
    return out


def run(params: dict[str, Any], art: str | Path, *, progress: bool = False, load_only: bool = False) -> dict[str, Any]:
    """The phase: model, activations, the sweep (trained + null), summary, trends, candidates."""
    from ..consistency import disjoint_seeds

    params = {**DEFAULTS, **{k: v for k, v in params.items() if k in DEFAULTS}}
    art = Path(art)
    hooks = check_grid(params)
    ckpt = scaling_model(params, art, progress=progress, load_only=load_only)
    xs = scaling_activations(ckpt, hooks, art / "activations" / model_name(params), params["position"], load_only)
    points = grid_points(params, art, xs)
    out = Path(params["sweep_dir"]) if params["sweep_dir"] else art / "sweeps" / PHASE
    table = run_grid(points, out, load_only=load_only, progress=progress, workers=params["workers"],
                     threads_per_worker=params["threads_per_worker"], scheduler=params["scheduler"])
    summary = summarise(table, params["batch_size"], params["n_resamples"], params["stats_seed"], params["alpha"])
    if params["family"]:
        summary = summary.merge(family(table, params["n_resamples"], params["stats_seed"]),
                                on=["hook", "steps", "d_sae"], how="left", validate="one_to_one")
    fits = trends(summary, params["alpha"])
    seeds = [int(s) for s in params["seeds"]]
    null_seeds = disjoint_seeds(seeds, len(seeds))
    final = ckpt.history.iloc[-1]
    head: dict[str, Any] = {}
    slopes = {}
    for y, label in (("pwmcc", "PWMCC"), ("excess", "PWMCC - gaussian_matched")):
        for x, xl in (("tokens", "token budget"), ("d_sae", "d_sae")):
            s = fits["pooled"][y]["slopes"].get(x)
            name = f"slope of log {label} vs log {xl}"
            slopes[name] = None if s is None else {"slope": s["slope"], "ci": s["ci"]}
            head[name] = None if s is None else s["slope"]
            head[f"{name}, {1 - params['alpha']:.0%} CI"] = None if s is None else s["ci"]
    best = {}
    for r in summary[summary.best_in_hook].to_dict(orient="records"):
        best[r["hook"]] = {k: r[k] for k in ("tokens", "steps", "d_sae", "pwmcc", "null", "null_lcb", "p_holm", "ev",
                                             "null_verdict")}
        head[f"best at {r['hook']} (LCB vs gaussian_matched)"] = (
            f"tokens {int(r['tokens'])}, d_sae {int(r['d_sae'])}: PWMCC {r['pwmcc']:.3f} vs null {r['null']:.3f}, "
            f"LCB {r['null_lcb']:+.3f}, Holm p {r['p_holm']:.3g}, EV {r['ev']:.3f}")
    head["configurations beating gaussian_matched"] = int((summary.null_verdict == "training signal present").sum())
    head["configurations"] = int(len(summary))
    head["transformer held-out accuracy"] = float(final.test_acc)
    head["slope fit"] = fits["pooled"]["pwmcc"]["method"]
    cols = ["seed", "hook", "steps", "d_sae", "condition", "ev", "l0", "dead_fraction", "train_ev", "config_id", "key"]
    return {
        "headline": head, "slopes": slopes, "best_per_hook": best,
        "summary": summary.to_dict(orient="records"),
        "trends": fits,
        "candidates": candidates(summary, seeds, null_seeds, params),
        "points": table[[c for c in cols if c in table]].to_dict(orient="records"),
        "transformer_checkpoint": str(ckpt.path),
        "transformer": {"name": model_name(params), "weights_sha256": ckpt.sha256,
                        "n_layers": int(params["n_layers"]), "train_accuracy": float(final.train_acc),
                        "heldout_accuracy": float(final.test_acc), "steps": int(final.step)},
        "hooks": hooks, "seeds": seeds, "null_seeds": null_seeds, "null": NULL, "sweep_dir": str(out),
        "token_budgets": [int(s) * int(params["batch_size"]) for s in budget_steps(params["token_budgets"],
                                                                                   params["batch_size"])],
        "config": {k: params[k] for k in ("architecture", "k", "batch_size", "lr", "sae_params", "d_sae_grid")},
    }


__all__ = ["HOOKS", "DEFAULTS", "hook_names", "budget_steps", "model_name", "check_grid", "scaling_model", "scaling_activations",
           "grid_points", "load_point", "run_grid", "family", "FAMILY", "trends", "summarise", "candidates",
           "run"]
