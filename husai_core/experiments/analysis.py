"""Trained vs Gaussian-random consistency of one configuration's seeds."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from ..errors import HusaiError


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
    from ..consistency import pwmcc_matrix, random_baseline
    from ..stats import bootstrap_over_seeds, conservative_lcb, mann_whitney_greater, pair_values, seed_permutation_test, verdict

    if len(decoders) != len(seeds) or len(seeds) < 2:
        raise HusaiError(f"need at least 2 seeds with one decoder each; got {len(seeds)} seeds and {len(decoders)} decoders")
    if random_decoders is None:
        random_decoders, random_seeds = random_baseline(decoders, seeds)
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
