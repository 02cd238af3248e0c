"""Phase-level building blocks the notebooks call: where SAEs live, train-or-load, analyses.

SAE checkpoints of one configuration sit together so later phases find them:
``<artifacts>/saes/<layout>/<hook>/<config_id>/seed<N>/`` with ``sae.safetensors``,
``config.json``, ``history.json`` and ``metrics.json`` (written last: a seed folder with
``metrics.json`` is complete).
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd
import torch

from .errors import HusaiError
from .io import config_hash, read_json, write_json
from .sae import BaseSAE, SAEConfig, load_sae, save_sae, train_saes

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


class SeedSAE(NamedTuple):
    seed: int
    sae: BaseSAE
    history: pd.DataFrame
    metrics: dict[str, Any]
    path: Path


def data_fingerprint(x: torch.Tensor, x_target: torch.Tensor | None = None) -> str:
    """Hash of the training rows, so a checkpoint is never reused after the activations change."""
    h = hashlib.sha256()
    for t in (x, x_target):
        if t is not None:
            h.update(str(tuple(t.shape)).encode())
            h.update(t.detach().cpu().float().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _load_seed(folder: Path, seed: int, cfg: SAEConfig, fingerprint: str) -> SeedSAE | None:
    if not (folder / "metrics.json").is_file():
        return None
    metrics = read_json(folder / "metrics.json", "SAE metrics")
    if metrics.get("data_fingerprint") != fingerprint:
        return None  # trained on other activations (or before fingerprints): retrain
    sae = load_sae(folder)
    if sae.cfg != cfg:
        return None
    history = pd.DataFrame(read_json(folder / "history.json", "SAE training history"))
    return SeedSAE(seed, sae, history, metrics, folder)


def train_or_load_saes(
    folder: str | Path,
    cfg: SAEConfig,
    x: torch.Tensor,
    seeds: list[int],
    x_target: torch.Tensor | None = None,
    reuse: bool = True,
    progress: bool = False,
    device: str = "auto",
) -> list[SeedSAE]:
    """One SAE per seed: finished seeds (same config, same data) are loaded, the rest trained and saved."""
    folder = Path(folder)
    fingerprint = data_fingerprint(x, x_target)
    done = {s: _load_seed(folder / f"seed{s}", s, cfg, fingerprint) for s in seeds} if reuse else {}
    todo = [s for s in seeds if done.get(s) is None]
    if todo:
        for seed, res in zip(todo, train_saes(cfg, x, todo, x_target=x_target, device=device, progress=progress)):
            out = folder / f"seed{seed}"
            save_sae(res.sae, out)
            write_json(out / "history.json", res.history.to_dict(orient="list"))
            # metrics.json last: its presence (with the data fingerprint) marks a complete checkpoint
            write_json(out / "metrics.json", {**res.metrics, "seed": seed, "data_fingerprint": fingerprint,
                                              **{f"info_{k}": v for k, v in res.info.items()}})
            done[seed] = SeedSAE(seed, res.sae.cpu(), res.history, read_json(out / "metrics.json"), out)
    return [done[s] for s in seeds]


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


# ---------------------------------------------------------------- trained vs random

def _stat_dict(res: Any) -> dict[str, Any]:
    return res._asdict() if hasattr(res, "_asdict") else dataclasses.asdict(res)


def consistency_summary(
    decoders: list[torch.Tensor],
    seeds: list[int],
    n_resamples: int = 10_000,
    stats_seed: int = 0,
    alpha: float = 0.05,
    random_decoders: list[torch.Tensor] | None = None,
    random_seeds: list[int] | None = None,
) -> dict[str, Any]:
    """PWMCC of trained seeds against the Gaussian baseline, with the seed-level statistics.

    The baseline uses i.i.d. Gaussian decoders of the same shape and seeds disjoint from the
    trained ones. Returns JSON-able numbers plus both matrices (``*_matrix``) for plotting.
    """
    from .consistency import disjoint_seeds, gaussian_decoders, pwmcc_matrix
    from .stats import bootstrap_over_seeds, conservative_lcb, mann_whitney_greater, pair_values, seed_permutation_test, verdict

    if len(decoders) != len(seeds) or len(seeds) < 2:
        raise HusaiError(f"need at least 2 seeds with one decoder each; got {len(seeds)} seeds and {len(decoders)} decoders")
    d_sae, d_in = decoders[0].shape
    if random_decoders is None:
        random_seeds = disjoint_seeds(seeds, len(seeds))
        random_decoders = gaussian_decoders(len(seeds), d_sae, d_in, random_seeds, trained_seeds=seeds)
    joint = pwmcc_matrix(list(decoders) + list(random_decoders))
    n = len(decoders)
    trained_m, random_m = joint[:n, :n], joint[n:, n:]
    t_boot = bootstrap_over_seeds(trained_m, n_resamples, seed=stats_seed)
    r_boot = bootstrap_over_seeds(random_m, n_resamples, seed=stats_seed)
    perm = seed_permutation_test(joint, ["trained"] * n + ["random"] * len(random_decoders), n_resamples, seed=stats_seed)
    mw = mann_whitney_greater(pair_values(trained_m), pair_values(random_m))
    v = verdict(t_boot, r_boot, perm, alpha=alpha)
    return {
        "seeds": list(seeds), "random_seeds": random_seeds,
        "trained": _stat_dict(t_boot), "random": _stat_dict(r_boot),
        "ratio": v.ratio, "difference": v.difference, "lcb": conservative_lcb(t_boot, r_boot),
        "permutation": _stat_dict(perm), "mann_whitney": _stat_dict(mw), "verdict": _stat_dict(v),
        "trained_matrix": trained_m.tolist(), "random_matrix": random_m.tolist(),
        "trained_pairs": pair_values(trained_m).tolist(), "random_pairs": pair_values(random_m).tolist(),
    }


def trained_vs_random(
    decoders: list[torch.Tensor],
    seeds: list[int],
    untrained_decoders: list[torch.Tensor] | None = None,
    ground_truth: torch.Tensor | None = None,
    thresholds: tuple[float, ...] = (0.3, 0.5, 0.7, 0.9),
    stability_threshold: float = 0.7,
    subspace_r: int = 16,
    n_resamples: int = 10_000,
    stats_seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, Any]:
    """The phase-4 analysis: PWMCC statistics plus matching, stability, subspaces, ground truth.

    Every comparison is made for the trained dictionaries and for the Gaussian baseline
    (and, when given, for untrained SAEs from our own initialisation as a second control).
    """
    from .consistency import (consensus_features, disjoint_seeds, feature_stability, gaussian_decoders,
                              ground_truth_alignment, hungarian_match, pwmcc_matrix, subspace_overlap)
    from .stats import bootstrap_over_seeds

    d_sae, d_in = decoders[0].shape
    random_seeds = disjoint_seeds(seeds, len(seeds))
    gaussian = gaussian_decoders(len(seeds), d_sae, d_in, random_seeds, trained_seeds=seeds)
    # the same Gaussian decoders serve the PWMCC statistics and every comparison below
    core = consistency_summary(decoders, seeds, n_resamples, stats_seed, alpha, gaussian, random_seeds)
    groups = {"trained": list(decoders), "random": gaussian}
    if untrained_decoders is not None:
        untrained_m = pwmcc_matrix(untrained_decoders)
        core["untrained"] = _stat_dict(bootstrap_over_seeds(untrained_m, n_resamples, seed=stats_seed))
        core["untrained_matrix"] = untrained_m.tolist()
        groups["untrained"] = list(untrained_decoders)
    pairs = [(i, j) for i in range(len(seeds)) for j in range(i + 1, len(seeds))]
    r = min(subspace_r, d_in, d_sae)
    for name, decs in groups.items():
        matches = [hungarian_match(decs[i], decs[j], thresholds) for i, j in pairs]
        stability = feature_stability(decs, reference=None, threshold=stability_threshold)
        core[f"{name}_matching"] = {
            "mean_similarity": float(sum(m.mean_similarity for m in matches) / len(matches)),
            "fraction_above": {str(t): float(sum(m.fraction_above[t] for m in matches) / len(matches)) for t in thresholds},
            "similarities": [float(s) for s in torch.cat([torch.as_tensor(m.similarities) for m in matches])],
        }
        counts = torch.cat([torch.as_tensor(c) for c in stability.counts])
        core[f"{name}_stability"] = {
            "threshold": stability_threshold, "n_others": stability.n_others,
            "count_histogram": torch.bincount(counts.long(), minlength=stability.n_others + 1).tolist(),
            "fraction_in_all_others": float(sum(stability.fraction_stable(1.0)) / len(stability.indices)),
            "consensus_fraction": consensus_features(decs, threshold=stability_threshold).fraction,
        }
        overlaps = [subspace_overlap(decs[i], decs[j], r) for i, j in pairs]
        core[f"{name}_subspace"] = {"r": r, "mean_cos2": float(sum(o.mean_cos2 for o in overlaps) / len(overlaps)),
                                    "random_expectation": overlaps[0].random_expectation}
        if ground_truth is not None:
            gts = [ground_truth_alignment(d, ground_truth, thresholds) for d in decs]
            core[f"{name}_ground_truth"] = {
                "n_directions": int(ground_truth.shape[0]),
                "mean_best_cos": float(sum(g.mean_gt_best for g in gts) / len(gts)),
                "recovered_fraction": {str(t): float(sum(g.gt_fraction_above[t] for g in gts) / len(gts)) for t in thresholds},
                "feature_fraction": {str(t): float(sum(g.feature_fraction_above[t] for g in gts) / len(gts)) for t in thresholds},
            }
    return core


# ---------------------------------------------------------------- sweeps of SAE configurations

def train_point(spec: dict[str, Any]) -> dict[str, Any]:
    """One sweep point: train (or load) the SAE of ``spec`` for ``spec['seed']``; return its metrics.

    ``spec`` holds ``artifacts``, ``layout``, ``hook`` and SAEConfig fields (plus ``seed``).
    Top-level and self-contained so a process-pool or Dask worker can run it.
    """
    from .activations import load_cache

    spec = dict(spec)
    art, layout, hook, seed = spec.pop("artifacts"), spec.pop("layout"), spec.pop("hook"), int(spec.pop("seed"))
    x = load_cache(Path(art) / "activations" / layout).get(hook)
    cfg = sae_config(x.shape[1], spec)
    (res,) = train_or_load_saes(sae_dir(art, layout, hook, cfg), cfg, x, [seed])
    return {"ev": res.metrics["ev"], "l0": res.metrics["l0"], "mse": res.metrics["mse"],
            "dead_fraction": res.metrics["dead_fraction"], "checkpoint": str(res.path), "config_id": config_id(cfg)}


def summarise_sweep(table: pd.DataFrame, by: list[str], n_resamples: int = 10_000, stats_seed: int = 0,
                    alpha: float = 0.05) -> pd.DataFrame:
    """One row per configuration: trained vs random PWMCC with CIs, ratio, LCB, and mean EV/L0/dead."""
    rows = []
    for key, group in table.groupby(by, sort=True):
        group = group.sort_values("seed")
        seeds = group.seed.astype(int).tolist()
        decoders = [load_sae(path).W_dec.detach() for path in group.checkpoint]
        s = consistency_summary(decoders, seeds, n_resamples, stats_seed, alpha)
        rows.append({**dict(zip(by, key if isinstance(key, tuple) else (key,))), "n_seeds": len(seeds),
                     "pwmcc": s["trained"]["mean"], "pwmcc_ci_low": s["trained"]["ci_low"],
                     "pwmcc_ci_high": s["trained"]["ci_high"], "random": s["random"]["mean"],
                     "random_ci_high": s["random"]["ci_high"], "ratio": s["ratio"], "difference": s["difference"],
                     "lcb": s["lcb"], "permutation_p": s["permutation"]["p_value"], "verdict": s["verdict"]["label"],
                     "ev": group.ev.mean(), "l0": group.l0.mean(), "dead_fraction": group.dead_fraction.mean()})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- phases 5-6: ablation sweeps and the frontier

# Keys of a sweep point that say where the data live; everything else is an SAEConfig field.
POINT_DATA_KEYS = ("artifacts", "layout", "hook")
# The coefficient that sets the sparsity of the architectures without a k (the default knob a
# calibration moves), and every knob it may move instead (each lowers L0 as it grows).
CALIBRATED_COEFF = {"relu": "l1_coeff", "jumprelu": "l0_coeff"}
CALIBRATION_KNOBS = {"relu": ("l1_coeff",), "jumprelu": ("l0_coeff", "jumprelu_init_threshold")}


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


def select_by_lcb(summary: pd.DataFrame, alpha: float = 0.05,
                  eligible: pd.Series | list[bool] | None = None) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Pick the winner of one sweep; Holm-correct the permutation p-values across its conditions.

    Rule: the configuration with the highest LCB (trained CI low - random CI high) among those
    whose Holm-adjusted seed-level permutation p is <= ``alpha``; when none is, the highest LCB
    overall, flagged ``significant=False``. ``eligible`` (one bool per row, e.g. "L0 matches the
    target") restricts the candidates; the correction still counts every condition tested.
    Returns the summary with ``p_holm``, ``significant``, ``eligible`` and ``selected`` columns,
    and a description of the selection (rule, correction, number of conditions, winner row).
    """
    from .stats import holm

    if summary.empty:
        raise HusaiError("cannot select from an empty sweep summary")
    out = summary.copy().reset_index(drop=True)
    h = holm(out.permutation_p.to_numpy(), alpha=alpha)
    out["p_holm"], out["significant"] = h.adjusted, h.reject
    flags = [True] * len(out) if eligible is None else [bool(e) for e in eligible]
    if len(flags) != len(out):
        raise HusaiError(f"eligible has {len(flags)} entries for {len(out)} configurations")
    out["eligible"] = flags
    pool = out[out.eligible] if out.eligible.any() else out
    pool = pool[pool.significant] if pool.significant.any() else pool
    best = int(pool.lcb.idxmax())
    out["selected"] = out.index == best
    return out, {
        "rule": f"highest LCB among {'eligible ' if eligible is not None else ''}configurations with Holm-adjusted "
                f"permutation p <= {alpha:g} (the highest LCB overall when none qualifies)",
        "correction": "Holm", "n_conditions": int(len(out)), "alpha": float(alpha),
        "significant": bool(out.significant[best]), "eligible": bool(out.eligible[best]),
        "row": out.loc[best].to_dict(),
    }


def next_coefficient(trace: list[dict[str, float]], target: float, factor: float = 4.0) -> float:
    """Next sparsity coefficient to try so that L0 reaches ``target`` (L0 falls as it grows).

    ``trace`` holds ``{"coeff", "l0"}`` of the runs so far. Once one run is too dense and one
    too sparse, interpolate log L0 linearly in log coeff between the closest two; until then,
    step by ``factor`` (or by the secant through the last two runs, kept within [2, 10]x).
    """
    import math

    def ll(t: dict) -> tuple[float, float]:
        return math.log(t["coeff"]), math.log(max(t["l0"], 0.1))

    lt = math.log(target)
    dense = [t for t in trace if t["l0"] > target]
    sparse = [t for t in trace if t["l0"] <= target]
    if dense and sparse:
        (c0, l0), (c1, l1) = ll(max(dense, key=lambda t: t["coeff"])), ll(min(sparse, key=lambda t: t["coeff"]))
        if c1 <= c0 or l1 >= l0:  # noisy, non-monotone: bisect the bracket in log space
            return math.exp((c0 + c1) / 2)
        frac = min(max((lt - l0) / (l1 - l0), 0.1), 0.9)  # stay inside the bracket
        return math.exp(c0 + frac * (c1 - c0))
    last = ll(trace[-1])
    step = math.log(factor)
    if len(trace) >= 2:
        (ca, la), (cb, lb) = ll(trace[-2]), last
        if cb != ca and (lb - la) / (cb - ca) < 0:
            step = min(max(abs((lt - lb) / ((lb - la) / (cb - ca))), math.log(2)), math.log(10))
    return math.exp(last[0] + step if dense else last[0] - step)


def calibrate_point(spec: dict[str, Any]) -> dict[str, Any]:
    """Sweep point function: search the sparsity coefficient of a ReLU (``l1_coeff``) or
    JumpReLU (``l0_coeff``) SAE so that its L0 lands near ``spec['target_l0']``, on one seed.
    ``spec['calibrate']`` may name another knob of ``CALIBRATION_KNOBS`` (JumpReLU's
    ``jumprelu_init_threshold``: in a short run Adam moves log-thresholds by at most about
    ``lr`` per step, so the initial threshold, not the L0 coefficient, decides L0).

    Every try is an ordinary ``train_point`` (its checkpoint is kept, so the final sweep reuses
    the chosen one). Stops when L0 is within ``calibration_tol`` (relative) of the target or
    after ``calibration_iters`` tries; returns the try closest to the target in log L0.
    """
    import math

    spec = dict(spec)
    target = float(spec.pop("target_l0"))
    iters = int(spec.pop("calibration_iters", 6))
    tol = float(spec.pop("calibration_tol", 0.1))
    arch = str(spec.get("architecture"))
    if arch not in CALIBRATION_KNOBS:
        raise HusaiError(f"calibration is for {', '.join(CALIBRATION_KNOBS)} SAEs, got {spec.get('architecture')!r}")
    name = spec.pop("calibrate", None) or CALIBRATED_COEFF[arch]
    if name not in CALIBRATION_KNOBS[arch]:
        raise HusaiError(f"cannot calibrate {name!r} of a {arch} SAE; "
                         f"choose one of {', '.join(CALIBRATION_KNOBS[arch])}")
    if target <= 0 or iters < 1:
        raise HusaiError(f"calibration needs target_l0 > 0 and calibration_iters >= 1, got {target}, {iters}")
    coeff = float(spec[name])
    trace: list[dict[str, float]] = []
    responsive = True
    for _ in range(iters):
        res = train_point({**spec, name: coeff})
        trace.append({"coeff": coeff, "l0": res["l0"], "ev": res["ev"], "dead_fraction": res["dead_fraction"]})
        if abs(math.log(max(res["l0"], 0.1) / target)) <= math.log1p(tol):
            break
        if len(trace) >= 2 and abs(math.log(trace[-1]["coeff"] / trace[-2]["coeff"])) >= math.log(2) \
                and abs(math.log(max(trace[-1]["l0"], 0.1) / max(trace[-2]["l0"], 0.1))) < 0.02:
            # L0 did not move although the coefficient changed by 2x or more: within this
            # training budget the coefficient does not control sparsity; stop rather than spin.
            responsive = False
            break
        coeff = next_coefficient(trace, target)
    best = min(trace, key=lambda t: abs(math.log(max(t["l0"], 0.1) / target)))
    return {"coeff_name": name, "coeff": best["coeff"], "l0": best["l0"], "ev": best["ev"], "target_l0": target,
            "n_tries": len(trace), "within_tol": abs(math.log(max(best["l0"], 0.1) / target)) <= math.log1p(tol),
            "responsive": responsive, "trace": trace}


def jumprelu_scales(x: torch.Tensor, d_sae: int, k: int) -> dict[str, float]:
    """JumpReLU threshold settings in the units of ``x`` (the published 1e-3 assume unit mean
    squared norm; ours are raw activations, and a short run cannot move log-thresholds far).

    At initialisation the encoder rows are random unit vectors, so a pre-activation is about
    N(0, sigma^2) with sigma^2 = E||x - mean||^2 / d_in. The initial threshold is the
    (1 - k/d_sae) quantile of that normal (L0 starts near k instead of d_sae/2); the bandwidth
    of the straight-through kernel is ``0.1 * sigma`` (the published 1e-3 of a unit-norm scale,
    which is ~sqrt(d_in)*sigma, would leave almost no rows inside the kernel).
    """
    from statistics import NormalDist

    x = torch.as_tensor(x).double()
    sigma = float(((x - x.mean(0)).pow(2).sum(1).mean() / x.shape[1]).sqrt())
    q = NormalDist().inv_cdf(1.0 - min(max(k / d_sae, 1e-6), 0.5))
    return {"jumprelu_init_threshold": max(q * sigma, 1e-6), "bandwidth": 0.1 * sigma, "sigma": sigma}


def matched_fractions(decoders: list[torch.Tensor], thresholds: tuple[float, ...] = (0.5, 0.7)) -> dict[str, Any]:
    """Hungarian matching (cost 1 - |cos|) of every seed pair: mean matched |cos| and the
    fraction of features matched above each threshold, averaged over the pairs."""
    from .consistency import hungarian_match

    pairs = [(i, j) for i in range(len(decoders)) for j in range(i + 1, len(decoders))]
    if not pairs:
        raise HusaiError("matched_fractions needs at least 2 decoders")
    matches = [hungarian_match(decoders[i], decoders[j], thresholds) for i, j in pairs]
    return {"mean_similarity": float(sum(m.mean_similarity for m in matches) / len(matches)),
            **{f"shared_{t:g}": float(sum(m.fraction_above[t] for m in matches) / len(matches)) for t in thresholds}}


def frontier_summary(table: pd.DataFrame, by: str = "architecture", thresholds: tuple[float, ...] = (0.5, 0.7),
                     n_resamples: int = 10_000, stats_seed: int = 0, alpha: float = 0.05) -> pd.DataFrame:
    """``summarise_sweep`` per architecture plus the shared-feature fractions (Hungarian) of the
    trained seeds and of the Gaussian baseline (same shape, seeds disjoint from the trained)."""
    from .consistency import disjoint_seeds, gaussian_decoders

    summary = summarise_sweep(table, [by], n_resamples, stats_seed, alpha)
    extra = []
    for value in summary[by]:
        group = table[table[by] == value].sort_values("seed")
        seeds = group.seed.astype(int).tolist()
        decoders = [load_sae(path).W_dec.detach() for path in group.checkpoint]
        d_sae, d_in = decoders[0].shape
        gauss = gaussian_decoders(len(seeds), d_sae, d_in, disjoint_seeds(seeds, len(seeds)), trained_seeds=seeds)
        t, r = matched_fractions(decoders, thresholds), matched_fractions(gauss, thresholds)
        extra.append({**{f"matched_{k}": v for k, v in t.items()}, **{f"random_matched_{k}": v for k, v in r.items()}})
    return pd.concat([summary, pd.DataFrame(extra)], axis=1)
