"""One point of a seeds x configurations sweep: its data, train (or load) and summarise it, and
merge points into a table.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import torch

from ..errors import HusaiError
from ..sae import load_sae
from .analysis import consistency_summary
from ..store import config_id, sae_config


# ---------------------------------------------------------------- sweeps of SAE configurations

SWEEP_CONDITIONS = ("trained", "gaussian_matched")


def point_data(spec: dict[str, Any]) -> tuple[dict[str, Any], Any, torch.Tensor]:
    """Pop a sweep point's data keys; return (remaining spec, the condition's rows, its d_in source x).

    Data keys: ``artifacts``, ``layout``, ``hook``; optional ``condition`` (``trained`` or
    ``gaussian_matched``, default trained), ``null_data_seed`` (1), ``heldout_fraction`` (0.2)
    and ``split_seed`` (0) — the phase-4 split, so a configuration phase 4 trained is reused —
    and ``activations``: None (this project's cache, as before) or the path of any activation
    source ``sources.open_source`` reads (``hook`` picks its tensor; None: its only one). A
    source's training rows are streamed from disk; its SAEs live under the layout
    ``sources.storage_layout(layout, source)``.
    """
    from ..activations import load_cache
    from ..conditions import condition_data, heldout_split

    spec = dict(spec)
    art, layout, hook = spec.pop("artifacts"), spec.pop("layout"), spec.pop("hook")
    activations = spec.pop("activations", None)
    condition = spec.pop("condition", "trained")
    null_seed = int(spec.pop("null_data_seed", 1))
    fraction, split_seed = float(spec.pop("heldout_fraction", 0.2)), int(spec.pop("split_seed", 0))
    if condition not in SWEEP_CONDITIONS:
        raise HusaiError(f"sweep condition {condition!r} is not supported; choose one of {', '.join(SWEEP_CONDITIONS)}")
    if activations is not None:
        from ..conditions import source_condition_data
        from ..sources import open_source, storage_layout

        src = open_source(activations, hook=hook)
        data = source_condition_data(condition, src, heldout_split(len(src), fraction, split_seed), data_seed=null_seed)
        return {**spec, "_where": (art, storage_layout(layout, src), src.hook, condition)}, data, src
    x = load_cache(Path(art) / "activations" / layout).get(hook)
    data = condition_data(condition, x, heldout_split(x.shape[0], fraction, split_seed), data_seed=null_seed)
    return {**spec, "_where": (art, layout, hook, condition)}, data, x


def train_point(spec: dict[str, Any]) -> dict[str, Any]:
    """One sweep point: train (or load) the SAE of ``spec`` for ``spec['seed']``; return its metrics.

    ``spec`` holds the data keys of ``point_data`` and SAEConfig fields (plus ``seed``). EV, L0
    and dead fraction are on the condition's held-out rows (``train_ev``: training rows).
    Top-level and self-contained so a process-pool or Dask worker can run it.
    """
    from ..conditions import train_or_load_condition

    spec, data, x = point_data(spec)
    (art, layout, hook, condition), seed = spec.pop("_where"), int(spec.pop("seed"))
    cfg = sae_config(x.shape[1], spec)
    (res,) = train_or_load_condition(art, layout, hook, cfg, data, [seed])
    held = res.metrics["heldout"]
    return {"ev": held["ev"], "l0": held["l0"], "mse": held["mse"], "dead_fraction": held["dead_fraction"],
            "train_ev": res.metrics["ev"], "checkpoint": str(res.path), "config_id": config_id(cfg),
            "condition": condition}


def _pwmcc_stats(decoders: list, seeds: list[int], null_decoders: list, null_seeds: list[int], n_resamples: int,
                 stats_seed: int, alpha: float) -> dict[str, Any]:
    """Trained vs one trained null on PWMCC: bootstrap CIs, permutation test, LCB, verdict."""
    from ..consistency import pwmcc_matrix
    from ..stats import bootstrap_over_seeds, conservative_lcb, seed_permutation_test, verdict

    joint = pwmcc_matrix(list(decoders) + list(null_decoders))
    n = len(decoders)
    t = bootstrap_over_seeds(joint[:n, :n], n_resamples, seed=stats_seed)
    r = bootstrap_over_seeds(joint[n:, n:], n_resamples, seed=stats_seed)
    perm = seed_permutation_test(joint, ["trained"] * n + ["null"] * len(null_decoders), n_resamples, seed=stats_seed)
    v = verdict(t, r, perm, alpha=alpha)
    return {"null": r.mean, "null_ci_low": r.ci_low, "null_ci_high": r.ci_high, "null_ratio": v.ratio,
            "null_difference": v.difference, "null_lcb": conservative_lcb(t, r), "null_p": perm.p_value,
            "null_verdict": v.label, "null_seeds": len(null_seeds)}


def summarise_sweep(table: pd.DataFrame, by: list[str], n_resamples: int = 10_000, stats_seed: int = 0,
                    alpha: float = 0.05) -> pd.DataFrame:
    """One row per configuration: trained PWMCC with CIs against the isotropic baseline
    (``random``, ``ratio``, ``lcb``, ``permutation_p``, ``verdict``) and, when the table has
    ``condition == "gaussian_matched"`` points, against that trained null (``null*`` columns);
    mean held-out EV / L0 / dead fraction of the trained seeds."""
    if "condition" not in table:
        table = table.assign(condition="trained")
    trained_t, null_t = table[table.condition == "trained"], table[table.condition == "gaussian_matched"]
    rows = []
    for key, group in trained_t.groupby(by, sort=True):
        group = group.sort_values("seed")
        seeds = group.seed.astype(int).tolist()
        decoders = [load_sae(path).W_dec.detach() for path in group.checkpoint]
        s = consistency_summary(decoders, seeds, n_resamples, stats_seed, alpha)
        values = dict(zip(by, key if isinstance(key, tuple) else (key,)))
        row = {**values, "n_seeds": len(seeds),
               "pwmcc": s["trained"]["mean"], "pwmcc_ci_low": s["trained"]["ci_low"],
               "pwmcc_ci_high": s["trained"]["ci_high"], "random": s["random"]["mean"],
               "random_ci_high": s["random"]["ci_high"], "ratio": s["ratio"], "difference": s["difference"],
               "lcb": s["lcb"], "permutation_p": s["permutation"]["p_value"], "verdict": s["verdict"]["label"],
               "ev": group.ev.mean(), "l0": group.l0.mean(), "dead_fraction": group.dead_fraction.mean()}
        nulls = null_t
        for col, v in values.items():
            nulls = nulls[nulls[col] == v]
        if len(nulls) >= 2:
            nulls = nulls.sort_values("seed")
            row |= _pwmcc_stats(decoders, seeds, [load_sae(p).W_dec.detach() for p in nulls.checkpoint],
                                nulls.seed.astype(int).tolist(), n_resamples, stats_seed, alpha)
            row["null_ev"] = nulls.ev.mean()
        rows.append(row)
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- phases 5-6: ablation sweeps and the frontier

# Keys of a sweep point that say where the data live; everything else is an SAEConfig field.
POINT_DATA_KEYS = ("artifacts", "layout", "hook", "condition", "null_data_seed", "heldout_fraction", "split_seed",
                   "activations")


def sweep_point_check(d_in: int):
    """A ``check`` for ``sweep.expand_grid``: every point must be a valid SAEConfig for ``d_in``
    (unknown names, k > d_sae, ... fail up front, before anything trains)."""
    def check(config: dict[str, Any]) -> None:
        sae_config(d_in, {k: v for k, v in config.items() if k not in POINT_DATA_KEYS})
    return check


def merge_points(*point_lists: list) -> list:
    """Concatenate lists of sweep points, keeping the first of points that are the same
    (configuration and seed): overlapping sweeps then train the shared points once."""
    seen: dict[str, Any] = {}
    for points in point_lists:
        for p in points:
            seen.setdefault(p.key, p)
    return list(seen.values())
