"""The sparsity-reconstruction frontier (phases 06-07): calibrate a coefficient to a target L0
(ReLU / JumpReLU), JumpReLU's threshold scales, shared-feature fractions and the frontier summary.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import torch

from ..errors import HusaiError
from ..sae import load_sae
from .points import summarise_sweep, train_point


# The coefficient that sets the sparsity of the architectures without a k (the default knob a
# calibration moves), and every knob it may move instead (each lowers L0 as it grows).
CALIBRATED_COEFF = {"relu": "l1_coeff", "jumprelu": "l0_coeff"}
CALIBRATION_KNOBS = {"relu": ("l1_coeff",), "jumprelu": ("l0_coeff", "jumprelu_init_threshold")}


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
    from ..consistency import hungarian_match

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
    from ..consistency import random_baseline

    summary = summarise_sweep(table, [by], n_resamples, stats_seed, alpha)
    trained = table[table.condition == "trained"] if "condition" in table else table
    extra = []
    for value in summary[by]:
        group = trained[trained[by] == value].sort_values("seed")
        seeds = group.seed.astype(int).tolist()
        decoders = [load_sae(path).W_dec.detach() for path in group.checkpoint]
        gauss, _ = random_baseline(decoders, seeds)
        t, r = matched_fractions(decoders, thresholds), matched_fractions(gauss, thresholds)
        extra.append({**{f"matched_{k}": v for k, v in t.items()}, **{f"random_matched_{k}": v for k, v in r.items()}})
    return pd.concat([summary, pd.DataFrame(extra)], axis=1)
