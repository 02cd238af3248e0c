"""Conditions compared over the whole metric family: seed-level CIs, tests and verdicts.

Input: SAEs of several conditions (``conditions.py``: trained, each null, another backend),
each with its own held-out rows. For every metric of ``matching.METRICS`` and both scopes
(all latents, latents alive on the held-out rows) this computes

- per condition: the mean over seed pairs with a bootstrap-over-seeds CI;
- per null: the seed-level permutation test on the pooled (reference + null) matrix, the LCB
  (reference CI low - null CI high), the difference and ratio, and the verdict rule of
  ``stats.verdict``. Activation matching has no cross-condition pairs (each condition is
  evaluated on its own rows), so its p-value comes from ``stats.bootstrap_difference_p``.

The *strongest* null of a metric is the null with the highest mean consistency: a claim is
made against it or not at all.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np
import torch

from .errors import HusaiError
from .matching import METRICS, SCOPES, SAEView, family_matrices, view_of
from .stats import (bootstrap_difference_p, bootstrap_over_seeds, conservative_lcb, seed_permutation_test,
                    verdict)

ACTIVATION_METRICS = ("activation_mcc",)


def metric_keys(with_activations: bool = True) -> list[str]:
    return [f"{m}/{s}" for m in METRICS for s in SCOPES if with_activations or m not in ACTIVATION_METRICS]


def _as_dict(res: Any) -> dict[str, Any]:
    return res._asdict() if hasattr(res, "_asdict") else dataclasses.asdict(res)


def _no_latents(v: SAEView) -> SAEView:
    return v._replace(latents=None)


def condition_views(saes: Sequence[Any], heldout: torch.Tensor) -> list[SAEView]:
    """``SAEView``s (decoder, encoder, held-out latents, alive mask) of one condition's SAEs."""
    return [view_of(s.sae if hasattr(s, "sae") else s, heldout) for s in saes]


def within_matrices(views: list[SAEView], threshold: float, progress: bool = False) -> dict[str, np.ndarray]:
    """Every metric for every pair of one condition's seeds: {key: (n, n)}."""
    if len(views) < 2:
        raise HusaiError(f"a condition needs at least 2 seeds, got {len(views)}")
    return family_matrices(views, threshold=threshold, progress=progress)


def joint_matrices(ref_views: list[SAEView], null_views: list[SAEView], ref_within: dict[str, np.ndarray],
                   null_within: dict[str, np.ndarray], threshold: float, progress: bool = False) -> dict[str, np.ndarray]:
    """Pooled (reference + null) matrices for the permutation test: the within blocks are reused,
    the cross blocks computed for the decoder/encoder metrics (activation metrics: NaN)."""
    n_r, n_n = len(ref_views), len(null_views)
    views = [_no_latents(v) for v in ref_views + null_views]
    pairs = [(i, n_r + j) for i in range(n_r) for j in range(n_n)]
    cross = family_matrices(views, threshold=threshold, progress=progress, pairs=pairs)
    out = {}
    for key in ref_within:
        m = np.full((n_r + n_n, n_r + n_n), np.nan)
        m[:n_r, :n_r] = ref_within[key]
        m[n_r:, n_r:] = null_within[key]
        if key in cross:
            m[:n_r, n_r:] = cross[key][:n_r, n_r:]
            m[n_r:, :n_r] = cross[key][n_r:, :n_r]
        out[key] = m
    return out


def compare_conditions(views: dict[str, list[SAEView]], reference: str, nulls: Sequence[str], *,
                       threshold: float = 0.7, n_resamples: int = 10_000, stats_seed: int = 0,
                       alpha: float = 0.05, progress: bool = False) -> dict[str, Any]:
    """The condition x metric table with CIs, and ``reference`` vs each null per metric.

    ``views`` maps condition name -> SAE views (one per seed). Returns JSON-able dicts:
    ``table[condition][key]`` = bootstrap result, ``tests[null][key]`` = permutation / verdict,
    ``strongest[key]`` = the null with the highest mean, ``matrices[condition][key]`` = pairs.
    """
    if reference not in views:
        raise HusaiError(f"reference condition {reference!r} has no SAEs")
    missing = [n for n in nulls if n not in views]
    if missing:
        raise HusaiError(f"null condition(s) without SAEs: {', '.join(missing)}")
    within = {name: within_matrices(v, threshold, progress) for name, v in views.items()}
    table = {name: {key: _as_dict(bootstrap_over_seeds(m, n_resamples, seed=stats_seed)) for key, m in mats.items()
                    if np.isfinite(m).all()}
             for name, mats in within.items()}
    tests: dict[str, dict[str, Any]] = {}
    for null in nulls:
        joint = joint_matrices(views[reference], views[null], within[reference], within[null], threshold, progress)
        labels = ["trained"] * len(views[reference]) + ["null"] * len(views[null])
        tests[null] = {}
        for key, m in joint.items():
            if key not in table[reference] or key not in table[null]:
                continue
            t_boot = bootstrap_over_seeds(within[reference][key], n_resamples, seed=stats_seed)
            n_boot = bootstrap_over_seeds(within[null][key], n_resamples, seed=stats_seed)
            if np.isfinite(m).all():
                perm = seed_permutation_test(m, labels, n_resamples, seed=stats_seed)
                p, test = perm.p_value, {"test": "seed permutation", **_as_dict(perm)}
            else:
                p = bootstrap_difference_p(within[reference][key], within[null][key], n_resamples, seed=stats_seed)
                test = {"test": "bootstrap over seeds (no cross-condition pairs)", "p_value": p}
            v = verdict(t_boot, n_boot, p, alpha=alpha, null_name=null)
            tests[null][key] = {**test, "lcb": conservative_lcb(t_boot, n_boot), "difference": v.difference,
                                "ratio": v.ratio, "verdict": v.label, "explanation": v.explanation}
    strongest = {}
    for key in table[reference]:
        candidates = [(table[n][key]["mean"], n) for n in nulls if key in table[n]]
        if candidates:
            strongest[key] = max(candidates)[1]
    return {"reference": reference, "nulls": list(nulls), "threshold": threshold, "table": table, "tests": tests,
            "strongest": strongest,
            "matrices": {name: {k: m.tolist() for k, m in mats.items()} for name, mats in within.items()}}


def headline_verdict(comparison: dict[str, Any], key: str) -> dict[str, Any]:
    """The verdict of ``key`` against its strongest null, plus the verdicts against every null."""
    if key not in comparison["strongest"]:
        raise HusaiError(f"metric {key!r} was not compared; available: {', '.join(comparison['strongest'])}")
    null = comparison["strongest"][key]
    t = comparison["tests"][null][key]
    return {"metric": key, "strongest_null": null, "verdict": t["verdict"], "lcb": t["lcb"], "p_value": t["p_value"],
            "trained": comparison["table"][comparison["reference"]][key]["mean"],
            "null": comparison["table"][null][key]["mean"],
            "by_null": {n: comparison["tests"][n][key]["verdict"] for n in comparison["nulls"]
                        if key in comparison["tests"][n]},
            "text": f"{t['verdict']} against the strongest null ({null}) on {key}: {t['explanation']}"}


def top_firing(view: SAEView, n: int) -> SAEView:
    """The ``n`` latents that fire on the most held-out rows (ties by index), for comparing
    dictionaries at an equal number of live latents."""
    if view.latents is None:
        raise HusaiError("top_firing needs the latents on held-out rows")
    freq = (view.latents > 0).sum(0)
    if n < 1 or n > freq.numel():
        raise HusaiError(f"top_firing: n must be in 1..{freq.numel()}, got {n}")
    order = torch.argsort(-freq.double() + torch.arange(freq.numel()) * 1e-9)[:n].sort().values
    return SAEView(view.decoder[order], view.encoder[order], view.latents[:, order], view.alive[order])


def equal_live_comparison(a: list[SAEView], b: list[SAEView], threshold: float = 0.7, n_resamples: int = 10_000,
                          stats_seed: int = 0) -> dict[str, Any]:
    """Two groups (e.g. our trainer vs SAELens) compared at the same number of live latents:
    each dictionary keeps its N most frequently firing latents, N = the smallest live count."""
    n = int(min(int(v.alive.sum()) for v in a + b))
    if n < 2:
        raise HusaiError(f"too few live latents to compare ({n})")
    out = {"n_latents": n}
    for name, group in (("a", a), ("b", b)):
        mats = family_matrices([top_firing(v, n) for v in group], threshold=threshold)
        out[name] = {k: _as_dict(bootstrap_over_seeds(m, n_resamples, seed=stats_seed)) for k, m in mats.items()
                     if k.endswith("/all")}
    return out


__all__ = ["compare_conditions", "headline_verdict", "condition_views", "within_matrices", "joint_matrices",
           "ground_truth_recovery",
           "top_firing", "equal_live_comparison", "metric_keys", "ACTIVATION_METRICS"]


def ground_truth_recovery(decoders: dict[str, Sequence[torch.Tensor]], directions: torch.Tensor,
                          threshold: float = 0.7, n_resamples: int = 10_000, stats_seed: int = 0) -> dict[str, Any]:
    """How many known directions (rows of ``directions``) each seed's dictionary recovers
    (best |cos| >= ``threshold``), per condition: per-seed counts and a percentile bootstrap CI
    of the mean count over seeds. A null-independent check that real features are found."""
    from .consistency import ground_truth_alignment

    n_gt = int(directions.shape[0])
    out: dict[str, Any] = {"n_directions": n_gt, "threshold": threshold}
    rng = np.random.default_rng(stats_seed)
    for name, decs in decoders.items():
        counts = np.array([round(ground_truth_alignment(d, directions, (threshold,)).gt_fraction_above[threshold] * n_gt)
                           for d in decs], dtype=float)
        boot = counts[rng.integers(0, len(counts), size=(int(n_resamples), len(counts)))].mean(1)
        lo, hi = np.percentile(boot, [2.5, 97.5])
        out[name] = {"counts": counts.astype(int).tolist(), "mean": float(counts.mean()), "ci_low": float(lo),
                     "ci_high": float(hi), "mean_fraction": float(counts.mean() / n_gt)}
    return out
