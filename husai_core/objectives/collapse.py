"""Real agreement vs collapse onto the reference: cross-group PWMCC, the collapse diagnostics, the
phase-8 design check and its summary table.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from torch import Tensor

from ..decoders import off_diagonal
from ..errors import HusaiError
from .alignment import OBJECTIVES


# ---------------------------------------------------------------- collapse onto the reference

def cross_pwmcc(group_a: list[Tensor], group_b: list[Tensor]) -> np.ndarray:
    """PWMCC of every (a, b) pair across two groups of dictionaries: an (n_a, n_b) array."""
    from ..consistency import pwmcc_matrix

    if not group_a or not group_b:
        raise HusaiError("cross_pwmcc needs at least one dictionary in each group")
    joint = pwmcc_matrix(list(group_a) + list(group_b))
    return np.asarray(joint)[: len(group_a), len(group_a):]


def collapse_diagnostics(within: float, cross: float, baseline: float, alignment: float, baseline_alignment: float,
                         ev_drop: float, min_gain: float = 0.01, max_collapse_share: float = 0.5) -> dict[str, Any]:
    """Is the extra agreement of regularised seeds their own, or the reference's?

    ``within``: mean PWMCC between seeds pulled towards reference A; ``cross``: mean PWMCC
    between those seeds and control seeds pulled towards a different reference B (same
    lambda); ``baseline``: mean PWMCC between unregularised seeds (lambda 0). The gain
    ``within - baseline`` splits into a part that survives a change of reference
    (``cross - baseline``) and a part that does not (``within - cross``, the agreement that
    exists only because both seeds copy the same reference). ``collapse_share`` is the latter's
    share of the gain. *Collapse onto the reference* is flagged when the gain is at least
    ``min_gain`` and more than ``max_collapse_share`` of it vanishes under a change of reference.
    """
    gain = within - baseline
    transferable = cross - baseline
    share = float((within - cross) / gain) if gain > 0 else float("nan")
    collapsed = bool(gain >= min_gain and share > max_collapse_share)
    if gain < min_gain:
        why = f"agreement did not rise by {min_gain:g} or more (gain {gain:+.4f}): nothing to attribute"
    elif collapsed:
        why = (f"collapse onto the reference: agreement rose by {gain:+.4f} but only {transferable:+.4f} survives a "
               f"change of reference ({share:.0%} of the gain is the shared reference), while alignment to the "
               f"reference rose by {alignment - baseline_alignment:+.4f} and EV changed by {-ev_drop:+.4f}")
    else:
        why = (f"agreement rose by {gain:+.4f} and {transferable:+.4f} of it survives a change of reference "
               f"(collapse share {share:.0%})")
    return {"gain": float(gain), "transferable_gain": float(transferable), "collapse_share": share,
            "alignment_gain": float(alignment - baseline_alignment), "collapse": collapsed, "explanation": why}


# ---------------------------------------------------------------- phase 8: design check and summary

def check_design(seeds: list[int], control_seeds: list[int], reference_seed: int, control_reference_seed: int,
                 lambdas: list[float], objectives: list[str]) -> None:
    """Refuse a phase-8 design that cannot answer its question (with a message naming why)."""
    if len(seeds) < 2 or len(set(seeds)) != len(seeds):
        raise HusaiError(f"seeds must hold at least 2 distinct seeds (pairs to compare), got {seeds}")
    if not control_seeds or len(set(control_seeds)) != len(control_seeds):
        raise HusaiError(f"control_seeds must hold at least 1 distinct seed, got {control_seeds}")
    if set(seeds) & set(control_seeds):
        raise HusaiError(f"control_seeds {sorted(set(seeds) & set(control_seeds))} are also in seeds: a shared seed "
                         "shares initialisation and data order, which would inflate the cross-reference agreement")
    refs = {int(reference_seed), int(control_reference_seed)}
    if len(refs) != 2:
        raise HusaiError(f"reference_seed and control_reference_seed must differ, both are {reference_seed}")
    if refs & (set(seeds) | set(control_seeds)):
        raise HusaiError(f"reference seed(s) {sorted(refs & (set(seeds) | set(control_seeds)))} are also training seeds: "
                         "a seed would be regularised towards its own twin")
    lams = [float(v) for v in lambdas]
    if any(not v >= 0 for v in lams) or len(set(lams)) != len(lams):
        raise HusaiError(f"lambdas must be distinct and >= 0, got {lambdas}")
    if 0.0 not in lams or len(lams) < 2:
        raise HusaiError(f"lambdas must include 0 (the unregularised baseline) and at least one value > 0, got {lambdas}")
    unknown = [o for o in objectives if o not in OBJECTIVES]
    if not objectives or unknown:
        raise HusaiError(f"objectives must be a non-empty list from {', '.join(OBJECTIVES)}, got {objectives}")


def _decoders(paths: list[str]) -> list[Tensor]:
    from ..sae import load_sae

    return [load_sae(p).W_dec.detach() for p in paths]


def summarise_objectives(table, seeds: list[int], control_seeds: list[int], n_resamples: int = 10_000,
                         stats_seed: int = 0, alpha: float = 0.05, min_gain: float = 0.01,
                         max_collapse_share: float = 0.5, null_table=None):
    """One row per (objective, lambda) from a phase-8 sweep table (``objective``, ``lam``,
    ``seed``, ``checkpoint``, ``ev``, ``l0``, ``dead_fraction``, ``reference_alignment``);
    the lambda-0 row (``objective == "none"``) is repeated under every objective as its baseline.

    Columns: trained vs random PWMCC of ``seeds`` (regularised towards reference A) with the
    ``consistency_summary`` statistics; ``alignment`` (mean over seeds of the mean best |cos|
    to reference A) and ``seed_alignment``; ``cross_pwmcc`` (seeds vs ``control_seeds``, which
    were pulled towards reference B); ``control_pwmcc`` (among control seeds, NaN with one);
    ``ev``, ``ev_drop`` (EV at lambda 0 minus EV), ``l0``, ``dead_fraction``; and the
    ``collapse_diagnostics`` fields. With ``null_table`` (sweep rows of the unregularised
    config trained on ``gaussian_matched`` rows: ``seed``, ``checkpoint``) every row is also
    judged against that null (``null``, ``null_lcb``, ``null_p``, ``null_verdict``, ...).
    """
    import pandas as pd

    from ..consistency import pwmcc_matrix
    from ..experiments import _pwmcc_stats, consistency_summary

    null_decs = null_seeds = None
    if null_table is not None:
        null_table = null_table.sort_values("seed")
        null_decs, null_seeds = _decoders(list(null_table.checkpoint)), null_table.seed.astype(int).tolist()

    seeds, control_seeds = [int(s) for s in seeds], [int(s) for s in control_seeds]

    def group(objective: str, lam: float, which: list[int]):
        sel = table[(table.objective == objective) & np.isclose(table.lam.astype(float), lam)]
        missing = sorted(set(which) - set(sel.seed.astype(int)))
        if missing:
            raise HusaiError(f"phase-8 table lacks seeds {missing} for objective {objective!r}, lambda {lam:g}")
        return sel.assign(seed=sel.seed.astype(int)).drop_duplicates("seed").set_index("seed").loc[which]

    def measure(objective: str, lam: float) -> dict[str, Any]:
        main, ctrl = group(objective, lam, seeds), group(objective, lam, control_seeds)
        decs = _decoders(list(main.checkpoint)) + _decoders(list(ctrl.checkpoint))
        joint = np.asarray(pwmcc_matrix(decs))
        n = len(seeds)
        s = consistency_summary(decs[:n], seeds, n_resamples, stats_seed, alpha)
        ctrl_m = joint[n:, n:]
        return {"pwmcc": s["trained"]["mean"], "pwmcc_ci_low": s["trained"]["ci_low"],
                "pwmcc_ci_high": s["trained"]["ci_high"], "random": s["random"]["mean"],
                "random_ci_high": s["random"]["ci_high"], "difference": s["difference"], "ratio": s["ratio"],
                "lcb": s["lcb"], "permutation_p": s["permutation"]["p_value"], "verdict": s["verdict"]["label"],
                "alignment": float(main.reference_alignment.mean()),
                "control_alignment": float(ctrl.reference_alignment.mean()),
                "cross_pwmcc": float(joint[:n, n:].mean()),
                "control_pwmcc": float(off_diagonal(ctrl_m).mean()) if len(control_seeds) > 1
                else float("nan"),
                "ev": float(main.ev.mean()), "l0": float(main.l0.mean()), "dead_fraction": float(main.dead_fraction.mean()),
                "seed_alignment": [float(v) for v in main.reference_alignment],
                "trained_pairs": s["trained_pairs"], "cross_pairs": joint[:n, n:].ravel().tolist(),
                **(_pwmcc_stats(decs[:n], seeds, null_decs, null_seeds, n_resamples, stats_seed, alpha)
                   if null_decs is not None else {})}

    base = measure("none", 0.0)
    rows = []
    for objective in [o for o in OBJECTIVES if o in set(table.objective)]:
        lams = sorted({float(v) for v in table[table.objective == objective].lam if float(v) > 0})
        for lam in [0.0, *lams]:
            m = base if lam == 0 else measure(objective, lam)
            ev_drop = base["ev"] - m["ev"]
            diag = collapse_diagnostics(m["pwmcc"], m["cross_pwmcc"], base["pwmcc"], m["alignment"], base["alignment"],
                                        ev_drop, min_gain, max_collapse_share)
            rows.append({"objective": objective, "lam": lam, **m, "ev_drop": ev_drop, **diag})
    return pd.DataFrame(rows)
