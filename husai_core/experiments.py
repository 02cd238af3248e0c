"""Phase-level building blocks the notebooks call: where SAEs live, train-or-load, analyses.

SAE checkpoints of one configuration sit together so later phases find them:
``<artifacts>/saes/<layout>/<hook>/<config_id>/seed<N>/`` with ``sae.safetensors``,
``config.json``, ``history.json`` and ``metrics.json`` (written last: a seed folder with
``metrics.json`` is complete).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd
import torch

from .errors import HusaiError
from .io import config_hash, load_tensors, read_json, save_tensors, write_json
from .metrics import evaluate_sae
from .sae import BaseSAE, SAEConfig, load_sae, save_sae, train_saes
from .store import artifact_key, key_matches, tensor_fingerprint

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
) -> list[SeedSAE]:
    """One SAE per seed: a seed whose stored key (config, seed, backend, fingerprint of the
    training rows, SAE code version) matches is loaded, the rest trained and saved.

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
    done = {s: _load_seed(folder / f"seed{s}", s, cfg, keys[s]) for s in seeds} if reuse else {}
    if snapshot_steps:  # a checkpoint kept without the requested snapshots is retrained with them
        done = {s: d for s, d in done.items() if d is not None and (d.path / SNAPSHOTS_FILE).is_file()}
    for s, d in list(done.items()):
        if d is not None and heldout is not None and "heldout" not in d.metrics:
            metrics = {**d.metrics, "heldout": evaluate_sae(d.sae, heldout, heldout_target)}
            write_json(d.path / "metrics.json", metrics)
            done[s] = d._replace(metrics=metrics)
    todo = [s for s in seeds if done.get(s) is None]
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
    from .activations import load_cache
    from .conditions import condition_data, heldout_split

    spec = dict(spec)
    art, layout, hook = spec.pop("artifacts"), spec.pop("layout"), spec.pop("hook")
    activations = spec.pop("activations", None)
    condition = spec.pop("condition", "trained")
    null_seed = int(spec.pop("null_data_seed", 1))
    fraction, split_seed = float(spec.pop("heldout_fraction", 0.2)), int(spec.pop("split_seed", 0))
    if condition not in SWEEP_CONDITIONS:
        raise HusaiError(f"sweep condition {condition!r} is not supported; choose one of {', '.join(SWEEP_CONDITIONS)}")
    if activations is not None:
        from .sources import open_source, source_condition_data, storage_layout

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
    from .conditions import train_or_load_condition

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
    from .consistency import pwmcc_matrix
    from .stats import bootstrap_over_seeds, conservative_lcb, seed_permutation_test, verdict

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
    The LCB and p are against the strongest null the summary has: the trained
    ``gaussian_matched`` null (``null_lcb``, ``null_p``) when present, else the isotropic one.
    """
    from .stats import holm

    if summary.empty:
        raise HusaiError("cannot select from an empty sweep summary")
    out = summary.copy().reset_index(drop=True)
    against = "gaussian_matched" if "null_lcb" in out and out.null_lcb.notna().all() else "isotropic"
    lcb_col, p_col = ("null_lcb", "null_p") if against == "gaussian_matched" else ("lcb", "permutation_p")
    h = holm(out[p_col].to_numpy(), alpha=alpha)
    out["p_holm"], out["significant"] = h.adjusted, h.reject
    flags = [True] * len(out) if eligible is None else [bool(e) for e in eligible]
    if len(flags) != len(out):
        raise HusaiError(f"eligible has {len(flags)} entries for {len(out)} configurations")
    out["eligible"] = flags
    pool = out[out.eligible] if out.eligible.any() else out
    pool = pool[pool.significant] if pool.significant.any() else pool
    best = int(pool[lcb_col].idxmax())
    out["selected"] = out.index == best
    return out, {
        "rule": f"highest LCB against the {against} null among {'eligible ' if eligible is not None else ''}"
                f"configurations with Holm-adjusted permutation p <= {alpha:g} (the highest LCB overall when none "
                f"qualifies)",
        "against": against, "lcb_column": lcb_col,
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


def jumprelu_scales(x: torch.Tensor, d_sae: int, k: int, scale: float = 1.0) -> dict[str, float]:
    """JumpReLU threshold settings in the units the SAE trains in: ``x`` times ``scale``
    (``trainer.training_scale(cfg, x)``: the input normalisation factor, 1 for raw rows); a
    short run cannot move log-thresholds far, so they must start in the right units.

    At initialisation the encoder rows are random unit vectors, so a pre-activation is about
    N(0, sigma^2) with sigma^2 = E||x - mean||^2 / d_in. The initial threshold is the
    (1 - k/d_sae) quantile of that normal (L0 starts near k instead of d_sae/2); the bandwidth
    of the straight-through kernel is ``0.1 * sigma`` (the published 1e-3 of a unit-norm scale,
    which is ~sqrt(d_in)*sigma, would leave almost no rows inside the kernel).
    """
    from statistics import NormalDist

    x = torch.as_tensor(x).double() * float(scale)
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
    trained = table[table.condition == "trained"] if "condition" in table else table
    extra = []
    for value in summary[by]:
        group = trained[trained[by] == value].sort_values("seed")
        seeds = group.seed.astype(int).tolist()
        decoders = [load_sae(path).W_dec.detach() for path in group.checkpoint]
        d_sae, d_in = decoders[0].shape
        gauss = gaussian_decoders(len(seeds), d_sae, d_in, disjoint_seeds(seeds, len(seeds)), trained_seeds=seeds)
        t, r = matched_fractions(decoders, thresholds), matched_fractions(gauss, thresholds)
        extra.append({**{f"matched_{k}": v for k, v in t.items()}, **{f"random_matched_{k}": v for k, v in r.items()}})
    return pd.concat([summary, pd.DataFrame(extra)], axis=1)
