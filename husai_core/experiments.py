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


def _load_seed(folder: Path, seed: int, cfg: SAEConfig) -> SeedSAE | None:
    if not (folder / "metrics.json").is_file():
        return None
    sae = load_sae(folder)
    if sae.cfg != cfg:
        return None
    history = pd.DataFrame(read_json(folder / "history.json", "SAE training history"))
    return SeedSAE(seed, sae, history, read_json(folder / "metrics.json", "SAE metrics"), folder)


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
    """One SAE per seed: finished seeds are loaded, the rest trained together and saved."""
    folder = Path(folder)
    done = {s: _load_seed(folder / f"seed{s}", s, cfg) for s in seeds} if reuse else {}
    todo = [s for s in seeds if done.get(s) is None]
    if todo:
        for seed, res in zip(todo, train_saes(cfg, x, todo, x_target=x_target, device=device, progress=progress)):
            out = folder / f"seed{seed}"
            save_sae(res.sae, out)
            write_json(out / "history.json", res.history.to_dict(orient="list"))
            write_json(out / "metrics.json", {**res.metrics, "seed": seed, **{f"info_{k}": v for k, v in res.info.items()}})
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
    return {k: v for k, v in (res._asdict() if hasattr(res, "_asdict") else dataclasses.asdict(res)).items()}


def consistency_summary(
    decoders: list[torch.Tensor],
    seeds: list[int],
    n_resamples: int = 10_000,
    stats_seed: int = 0,
    alpha: float = 0.05,
    random_decoders: list[torch.Tensor] | None = None,
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
    else:
        random_seeds = None
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
    from .consistency import (consensus_features, feature_stability, gaussian_decoders, ground_truth_alignment,
                              hungarian_match, pwmcc_matrix, subspace_overlap)
    from .stats import bootstrap_over_seeds

    core = consistency_summary(decoders, seeds, n_resamples, stats_seed, alpha)
    d_sae, d_in = decoders[0].shape
    gaussian = gaussian_decoders(len(seeds), d_sae, d_in, core["random_seeds"], trained_seeds=seeds)
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
