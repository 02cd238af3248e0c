"""Phase 4's analysis of each group (every metric against every null) and across groups."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..errors import HusaiError
from .activations import Activations, _check_against_activations, load_activations
from .groups import check_compatible, group_inputs
from .loading import LoadedSAE, load_inputs


NULLS = ("gaussian_matched", "isotropic")


# ====================================================================== the analysis
def _null_config(cfg, null_params: dict[str, Any] | None):
    """The group's config for its null SAEs: everything the checkpoint says, provenance notes
    dropped, ``null_params`` (SAEConfig fields) on top."""
    from ..sae import SAEConfig
    from ..experiments import SAE_FIELDS

    params = dict(null_params or {})
    unknown = sorted(set(params) - SAE_FIELDS)
    if unknown:
        raise HusaiError(f"unknown null_params field(s) {', '.join(unknown)}; known: {', '.join(sorted(SAE_FIELDS))}")
    for fixed in ("d_in", "d_sae", "architecture", "transcoder", "d_out"):
        if fixed in params and params[fixed] != getattr(cfg, fixed):
            raise HusaiError(f"null_params cannot change {fixed} (the nulls must have the group's shape)")
    d = {**cfg.to_dict(), "extra": {}, **params}
    return SAEConfig.from_dict(d)


def _recon(sae, rows) -> dict[str, float]:
    from ..metrics import evaluate_sae

    m = evaluate_sae(sae, rows)
    return {k: float(m[k]) for k in ("ev", "l0", "mse", "dead_fraction")}


def _mean_recon(rows: list[dict[str, Any]]) -> dict[str, float]:
    return {k: float(np.mean([r[k] for r in rows])) for k in ("ev", "l0", "mse", "dead_fraction")}


def _keep_all_scope(comparison: dict[str, Any]) -> dict[str, Any]:
    """Drop the ``/alive`` keys (without rows every latent counts as alive, so they would only
    repeat ``/all`` under a misleading name)."""
    keep = lambda d: {k: v for k, v in d.items() if k.endswith("/all")}  # noqa: E731
    out = dict(comparison)
    out["table"] = {c: keep(v) for c, v in comparison["table"].items()}
    out["tests"] = {n: keep(v) for n, v in comparison["tests"].items()}
    out["strongest"] = keep(comparison["strongest"])
    out["matrices"] = {c: keep(v) for c, v in comparison["matrices"].items()}
    return out


def compare_group(label: str, members: list[LoadedSAE], acts: Activations | None,
                  split: tuple[torch.Tensor, torch.Tensor] | None, *, nulls: Sequence[str] = NULLS,
                  null_data_seed: int = 1, null_params: dict[str, Any] | None = None,
                  headline_metric: str = "pwmcc/all", threshold: float = 0.7, n_resamples: int = 10_000,
                  stats_seed: int = 0, alpha: float = 0.05, artifacts: str | os.PathLike | None = None,
                  device: str = "cpu", progress: bool = False, ground_truth: torch.Tensor | None = None) -> dict[str, Any]:
    """Phase 4's analysis for one group of seeds (see the module docstring)."""
    from ..comparison import compare_conditions, ground_truth_recovery, headline_verdict
    from ..conditions import condition_data
    from ..consistency import disjoint_seeds
    from ..experiments import config_id, train_or_load_saes
    from ..matching import SAEView, view_of
    from ..sae import build_sae
    from ..store import tensor_fingerprint

    cfg = members[0].cfg
    recorded = [i.seed for i in members if i.seed is not None]
    null_seeds = disjoint_seeds(recorded, len(members))
    null_cfg = _null_config(cfg, null_params)
    use = [n for n in nulls if n == "isotropic" or acts is not None]
    descriptions = {"trained": f"the given checkpoints ({', '.join(sorted({i.format for i in members}))})"}
    saes: dict[str, list[Any]] = {"trained": [i.sae for i in members]}
    names: dict[str, list[str]] = {"trained": [i.path for i in members]}
    rows: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    recon: dict[str, list[dict[str, Any]]] = {}
    if acts is not None:
        real = condition_data("trained", acts.x, split)
        rows["trained"] = rows["isotropic"] = (real.train, real.heldout)
    if "isotropic" in use:
        iso = []
        for s in null_seeds:
            sae = build_sae(null_cfg, s)
            if acts is not None:
                sae.init_biases_from_data(rows["isotropic"][0])
                if null_cfg.architecture == "batchtopk":
                    sae.calibrate(rows["isotropic"][0])
            iso.append(sae.eval())
        saes["isotropic"] = iso
        names["isotropic"] = [f"untrained seed {s}" for s in null_seeds]
        descriptions["isotropic"] = "no training: our initialisation of the group's config (i.i.d. isotropic decoder rows)"
    if "gaussian_matched" in use:
        data = condition_data("gaussian_matched", acts.x, split, data_seed=null_data_seed)
        rows["gaussian_matched"] = (data.train, data.heldout)
        if artifacts is None:
            from ..paths import artifacts_dir

            artifacts = artifacts_dir("interactive")
        folder = (Path(artifacts) / "compare" / "gaussian_matched" / tensor_fingerprint(acts.x)[:12]
                  / f"split-{split_seed_tag(split)}-data{null_data_seed}" / config_id(null_cfg))
        trained = train_or_load_saes(folder, null_cfg, data.train, null_seeds, progress=progress, device=device,
                                     heldout=data.heldout)
        saes["gaussian_matched"] = [t.sae.cpu().eval() for t in trained]
        names["gaussian_matched"] = [str(t.path) for t in trained]
        descriptions["gaussian_matched"] = data.description + " — SAEs of the group's config trained with our trainer"
    views: dict[str, list[SAEView]] = {}
    for cond, group in saes.items():
        if acts is None:
            views[cond] = [SAEView(s.W_dec.detach(), s.W_enc.detach().T, None,
                                   torch.ones(s.cfg.d_sae, dtype=torch.bool)) for s in group]
        else:
            held = rows[cond][1]
            views[cond] = [view_of(s, held) for s in group]
            recon[cond] = [{"name": n, **_recon(s, held)} for n, s in zip(names[cond], group)]
    warnings = []
    if "gaussian_matched" in recon:
        l0_t = float(np.mean([r["l0"] for r in recon["trained"]]))
        l0_n = float(np.mean([r["l0"] for r in recon["gaussian_matched"]]))
        if l0_t > 0 and not 0.5 <= l0_n / l0_t <= 2.0:
            warnings.append(f"the gaussian_matched null's held-out L0 ({l0_n:.3g}) is far from the given SAEs' "
                            f"({l0_t:.3g}): it is not a matched null at this sparsity; set null_params (k, "
                            f"l1_coeff, l0_coeff, steps, ...) so it trains like the given SAEs")
    null_names = [n for n in ("gaussian_matched", "isotropic") if n in use]
    comparison = compare_conditions(views, "trained", null_names, threshold=threshold, n_resamples=n_resamples,
                                    stats_seed=stats_seed, alpha=alpha, progress=progress)
    if acts is None:
        comparison = _keep_all_scope(comparison)
    headline = headline_verdict(comparison, headline_metric)
    alive_key = headline_metric.split("/")[0] + "/alive"
    alive = headline_verdict(comparison, alive_key) if acts is not None and alive_key in comparison["strongest"] else None
    out: dict[str, Any] = {
        "label": label, "members": [i.describe() for i in members], "n_seeds": len(members),
        "formats": sorted({i.format for i in members}), "config": cfg.to_dict(), "null_config": null_cfg.to_dict(),
        "recorded_seeds": recorded, "null_seeds": null_seeds, "nulls": null_names, "conditions": descriptions,
        "condition_members": names, "comparison": comparison, "headline": headline, "alive_headline": alive,
        "warnings": warnings, "reconstruction": recon or None,
        "reconstruction_mean": {c: _mean_recon(r) for c, r in recon.items()} or None,
    }
    if ground_truth is not None:
        out["ground_truth"] = ground_truth_recovery({c: [s.W_dec.detach() for s in g] for c, g in saes.items()},
                                                    ground_truth, threshold=threshold, n_resamples=n_resamples,
                                                    stats_seed=stats_seed)
    return out


def split_seed_tag(split: tuple[torch.Tensor, torch.Tensor]) -> str:
    """A short tag of the held-out split (null SAEs trained on one split are not reused for another)."""
    from ..store import tensor_fingerprint

    return tensor_fingerprint(split[1].to(torch.int64))[:8]


def across_groups(groups: dict[str, dict[str, Any]], alpha: float = 0.05) -> list[dict[str, Any]]:
    """One row per group: headline metric with CI, strongest null, LCB, p (Holm-adjusted across
    the groups when there are several), verdict, held-out EV/L0/dead of the given SAEs."""
    from ..stats import holm

    rows = []
    for label, g in groups.items():
        h = g["headline"]
        key = h["metric"]
        t = g["comparison"]["table"]["trained"][key]
        n = g["comparison"]["table"][h["strongest_null"]][key]
        c = g["config"]
        row = {"group": label, "n_seeds": g["n_seeds"], "formats": ", ".join(g["formats"]),
               "architecture": c["architecture"], "d_sae": c["d_sae"],
               "k": c["k"] if c["architecture"] in ("topk", "batchtopk", "matryoshka") else None,
               "metric": key, "trained": t["mean"], "ci_low": t["ci_low"], "ci_high": t["ci_high"],
               "strongest_null": h["strongest_null"], "null": n["mean"], "null_ci_high": n["ci_high"],
               "lcb": h["lcb"], "p": h["p_value"], "verdict": h["verdict"],
               "alive_verdict": g["alive_headline"]["verdict"] if g.get("alive_headline") else None}
        if g.get("reconstruction_mean"):
            r = g["reconstruction_mean"]["trained"]
            row |= {"heldout_ev": r["ev"], "heldout_l0": r["l0"], "heldout_dead_fraction": r["dead_fraction"]}
        rows.append(row)
    if len(rows) > 1:
        adj = holm([r["p"] for r in rows], alpha=alpha)
        for r, p, rej in zip(rows, adj.adjusted, adj.reject):
            r["p_holm"], r["significant_holm"] = float(p), bool(rej)
    return rows


def compare_saes(paths: Sequence[str | os.PathLike], labels: Sequence[str] | None = None,
                 activations: str | os.PathLike | None = None, hook: str | None = None, *,
                 nulls: Sequence[str] = NULLS, heldout_fraction: float = 0.2, split_seed: int = 0,
                 null_data_seed: int = 1, null_params: dict[str, Any] | None = None,
                 headline_metric: str = "pwmcc/all", threshold: float = 0.7, n_resamples: int = 10_000,
                 stats_seed: int = 0, alpha: float = 0.05, max_rows: int | None = 200_000,
                 max_rows_per_file: int | None = None, artifacts: str | os.PathLike | None = None,
                 device: str = "cpu", progress: bool = False, ground_truth: torch.Tensor | None = None) -> dict[str, Any]:
    """Load, group and check the SAEs at ``paths``, then run phase 4's analysis per group.

    Returns a JSON-able dict: ``inputs`` (one entry per PATH), ``grouping``, ``d_in``, ``hook``,
    ``activations`` (source, kind, rows, split; None without), ``nulls``, ``metric_keys``,
    ``skipped`` (what could not be computed, and why), ``warnings`` (e.g. a gaussian_matched null
    whose L0 is not within 2x of the given SAEs'), ``groups[label]`` (``compare_group``),
    ``across`` (one row per group), ``headline`` (numbers for the index) and ``verdict`` (text).
    """
    from ..comparison import metric_keys
    from ..conditions import heldout_split

    for n in nulls:
        if n not in NULLS:
            raise HusaiError(f"unknown null {n!r} for compare; choose from {', '.join(NULLS)} "
                             f"(random_transformer needs our transformer checkpoint: use phase 04)")
    if "isotropic" not in nulls and activations is None:
        raise HusaiError("without activations the isotropic null is the only one; keep it in nulls")
    items = load_inputs(paths, labels)
    groups, how = group_inputs(items)
    compat = check_compatible(items)
    if hook is not None and activations is None:
        raise HusaiError("hook selects a hook of the activations; give activations too")
    keys = metric_keys(with_activations=activations is not None)
    if activations is None:
        keys = [k for k in keys if k.endswith("/all")]
    if headline_metric not in keys:
        raise HusaiError(f"headline metric {headline_metric!r} is not computed "
                         f"{'without activations' if activations is None else ''}; available: {', '.join(keys)}")
    acts, split, act_info = None, None, None
    skipped: list[str] = []
    if activations is not None:
        acts = load_activations(activations, hook, max_rows=max_rows, max_rows_per_file=max_rows_per_file,
                                seed=split_seed)
        _check_against_activations(items, compat, acts.hook, int(acts.x.shape[1]), activations)
        split = heldout_split(acts.x.shape[0], heldout_fraction, split_seed)
        act_info = {"source": acts.source, "kind": acts.kind, "hook": acts.hook, "n_rows_available": acts.n_total,
                    "n_rows": int(acts.x.shape[0]), "max_rows": max_rows, "datasets": acts.datasets or None,
                    "heldout_fraction": heldout_fraction, "split_seed": split_seed,
                    "n_train": int(len(split[0])), "n_heldout": int(len(split[1])),
                    "note": "held-out rows are held out from the null SAEs' training; the given SAEs were trained "
                            "elsewhere and may have seen them"}
    else:
        skipped = ["activation_mcc (activation matching needs rows)",
                   "alive-latent scope (which latents are alive needs rows)",
                   "held-out EV / L0 / dead fraction",
                   "gaussian_matched null (it is fitted to the activations' mean and covariance)"]
    used_nulls = [n for n in nulls if n == "isotropic" or acts is not None]
    results = {label: compare_group(label, members, acts, split, nulls=used_nulls, null_data_seed=null_data_seed,
                                    null_params=null_params, headline_metric=headline_metric, threshold=threshold,
                                    n_resamples=n_resamples, stats_seed=stats_seed, alpha=alpha, artifacts=artifacts,
                                    device=device, progress=progress, ground_truth=ground_truth)
               for label, members in groups.items()}
    across = across_groups(results, alpha=alpha)
    headline, verdict_text = _overall(results, across, headline_metric, acts is not None)
    return {"inputs": [i.describe() for i in items], "grouping": how, "d_in": compat["d_in"], "hook": compat["hook"],
            "activations": act_info, "nulls": used_nulls, "metric_keys": keys, "headline_metric": headline_metric,
            "skipped": skipped, "threshold": threshold, "n_resamples": n_resamples, "stats_seed": stats_seed,
            "alpha": alpha, "groups": results, "across": across, "headline": headline, "verdict": verdict_text,
            "warnings": [f"[{label}] {w}" for label, g in results.items() for w in g["warnings"]]}


def _overall(results: dict[str, dict[str, Any]], across: list[dict[str, Any]], metric: str,
             with_acts: bool) -> tuple[dict[str, Any], str]:
    from ..stats import PRESENT

    verdicts = [r["verdict"] for r in across]
    overall = verdicts[0] if len(set(verdicts)) == 1 else "mixed"
    head: dict[str, Any] = {"verdict": overall, "metric": metric, "groups": len(across),
                            "present": f"{verdicts.count(PRESENT)} of {len(verdicts)}",
                            "activations": "given" if with_acts else "none (weight metrics, isotropic null only)"}
    if len(across) == 1:
        r = across[0]
        head |= {"against (strongest null)": r["strongest_null"], "trained": r["trained"],
                 "strongest null": r["null"], "LCB": r["lcb"], "p": r["p"]}
        if r.get("alive_verdict"):
            head["alive-latent verdict"] = r["alive_verdict"]
        if "heldout_ev" in r:
            head["held-out EV"] = r["heldout_ev"]
    else:
        for r in across:
            head[f"{r['group']}"] = f"{r['verdict']} ({r['trained']:.3g} vs {r['strongest_null']} {r['null']:.3g})"
    text = " ".join(f"[{label}] {g['headline']['text']}" for label, g in results.items())
    if not with_acts:
        text += (" No activations were given: only weight-based metrics over all latents, against the isotropic "
                 "null (the weakest null) — pass activations for the gaussian_matched null.")
    return head, text
