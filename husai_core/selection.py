"""Choosing a configuration among candidates: the one selection rule, the release-gate candidate
record, the Pareto view, and the matched gain that confirms a winner (DESIGN §6, §7 items 5-8, 14).

The rule (``select_candidate``), used by every phase that names a winner:

1. the seed-level permutation p-values against the chosen null are **Holm**-adjusted across
   *every* candidate tried (eligible or not: the number of conditions is what was tried);
2. the pool is the eligible candidates (EV floor, matched sparsity, EV-drop limit, >= 3 seeds, ...);
3. in the pool, the highest conservative **LCB** (trained CI low - null CI high) wins; ties (within
   ``tie_tol``) go to the larger trained - null difference, then to the larger EV.

Two options, stated by the caller and written into the rule text: ``prefer_significant`` puts
the candidates that survive Holm first (phases 5-6, five seeds); otherwise significance is
reported, not a filter (with 3 search seeds an exact permutation p cannot go below 0.05, so
nothing would survive; there the confirmation is the retrain on fresh seeds). When no candidate
is eligible the result is ``status == "none"``, or with ``if_none_eligible="all"`` the best of
all candidates, flagged ``eligible=False``.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import pandas as pd

from .errors import HusaiError

# Columns (LCB, difference, permutation p) of a summary table against each null.
NULL_COLUMNS = {"isotropic": ("lcb", "difference", "permutation_p"),
                "random": ("lcb", "difference", "permutation_p"),  # the isotropic decoders, by their older name
                "gaussian_matched": ("null_lcb", "null_difference", "null_p"),
                "strongest": ("null_lcb", "null_difference", "null_p")}  # a candidate table: each row's strongest null


def _against(summary: pd.DataFrame, against: str) -> str:
    if against == "auto":  # the trained gaussian_matched null when every row has it, else the isotropic decoders
        return "gaussian_matched" if "null_lcb" in summary and summary.null_lcb.notna().all() else "isotropic"
    if against not in NULL_COLUMNS:
        raise HusaiError(f"unknown null {against!r} to select against; choose one of auto, {', '.join(NULL_COLUMNS)}")
    return against


def select_candidate(summary: pd.DataFrame, eligible: Sequence[bool] | pd.Series | None = None, alpha: float = 0.05,
                     tie_tol: float = 1e-12, ev_col: str = "ev", eligibility: str = "eligible",
                     against: str = "random", *, prefer_significant: bool = False,
                     if_none_eligible: str = "none") -> tuple[pd.DataFrame, dict[str, Any]]:
    """The selection rule of this module's docstring.

    ``summary`` needs the LCB, difference and p columns of ``against`` (``NULL_COLUMNS``; ``auto``
    picks ``gaussian_matched`` when every row has it) and ``ev_col``. Returns the table with
    ``p_holm``, ``significant``, ``eligible``, ``rank`` (1 = winner; None outside the pool) and
    ``selected``, and a description (rule, correction, counts, ``status``, winner ``row``).
    """
    from .stats import holm

    if if_none_eligible not in ("none", "all"):
        raise HusaiError(f"if_none_eligible must be 'none' or 'all', got {if_none_eligible!r}")
    if summary.empty:
        raise HusaiError("cannot select from this summary: it is empty")
    against = _against(summary, against)
    lcb_col, diff_col, p_col = NULL_COLUMNS[against]
    need = {lcb_col, diff_col, p_col, ev_col} - set(summary.columns)
    if need:
        raise HusaiError(f"cannot select from this summary: missing {sorted(need)}")
    out = summary.copy().reset_index(drop=True)
    mask = [True] * len(out) if eligible is None else [bool(e) for e in eligible]
    if len(mask) != len(out):
        raise HusaiError(f"eligible has {len(mask)} entries for {len(out)} candidates")
    h = holm(out[p_col].to_numpy(dtype=float), alpha=alpha)
    out["p_holm"], out["significant"], out["eligible"] = h.adjusted, h.reject, mask
    pool = out[out.eligible] if out.eligible.any() or if_none_eligible == "none" else out
    columns = (("significant",) if prefer_significant else ()) + (lcb_col, diff_col, ev_col)
    order = _ranking(pool, columns, tie_tol)
    out["rank"] = pd.Series([None] * len(out), dtype=object)
    out.loc[order, "rank"] = range(1, len(order) + 1)
    out["selected"] = False
    sig = (f"candidates significant after Holm first, then the " if prefer_significant else "the ")
    rule = (f"{sig}highest LCB against the {against} null among the candidates that are {eligibility}"
            f"{' (all candidates when none is)' if if_none_eligible == 'all' else ''}; ties (within {tie_tol:g}) by "
            f"the larger trained - {against} difference, then the larger EV; permutation p-values Holm-adjusted "
            f"across all {len(out)} candidates (alpha {alpha:g})"
            f"{'' if prefer_significant else ', reported, not used to filter'}")
    base = {"rule": rule, "against": against, "lcb_column": lcb_col, "correction": "Holm",
            "n_conditions": int(len(out)), "alpha": float(alpha), "n_eligible": int(sum(mask))}
    if not order:
        return out, {**base, "status": "none", "row": None, "significant": False, "eligible": False,
                     "reason": f"no candidate is {eligibility}"}
    best = order[0]
    out.loc[best, "selected"] = True
    return out, {**base, "status": "selected", "row": out.loc[best].to_dict(), "significant": bool(out.significant[best]),
                 "eligible": bool(out.eligible[best]),
                 "reason": f"best LCB among {sum(mask)} {eligibility} of {len(out)} candidates"
                           if out.eligible[best] else f"no candidate is {eligibility}: best LCB of all {len(out)}"}


def _ranking(pool: pd.DataFrame, columns: Sequence[str], tie_tol: float) -> list[int]:
    """Indices of ``pool`` best first: by each column in turn, a tie being within ``tie_tol``."""
    remaining = list(pool.index)
    order = []
    while remaining:
        cands = remaining
        for col in columns:  # narrow to the ties of each criterion in turn
            top = max(float(pool.at[i, col]) for i in cands)
            cands = [i for i in cands if float(pool.at[i, col]) >= top - tie_tol]
        order.append(cands[0])
        remaining.remove(cands[0])
    return order


def select_adaptive_k(summary: pd.DataFrame, ev_floor: float, alpha: float = 0.05,
                      tie_tol: float = 1e-12) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Phase 7: the candidate (e.g. one k) with the best LCB among those with mean EV >= ``ev_floor``."""
    if not 0.0 <= float(ev_floor) <= 1.0:
        raise HusaiError(f"ev_floor must lie in [0, 1], got {ev_floor!r}")
    table, choice = select_candidate(summary, summary.ev >= ev_floor, alpha, tie_tol,
                                     eligibility=f"above the EV floor {ev_floor:g}")
    return table, {**choice, "ev_floor": float(ev_floor)}


def select_under_ev_drop(summary: pd.DataFrame, ev_drop_limit: float = 0.05, alpha: float = 0.05,
                         tie_tol: float = 1e-12, against: str = "random") -> tuple[pd.DataFrame, dict[str, Any]]:
    """Phase 8: the lambda > 0 with the best LCB among those whose ``ev_drop`` (EV at lambda 0
    minus EV) is within ``ev_drop_limit``; lambda 0 is the baseline, never the selection."""
    if "lam" not in summary or "ev_drop" not in summary:
        raise HusaiError("select_under_ev_drop needs 'lam' and 'ev_drop' columns")
    candidates = summary[summary.lam > 0].reset_index(drop=True)  # Holm counts only what competes
    if candidates.empty:
        raise HusaiError("select_under_ev_drop: no lambda > 0 to select from")
    table, choice = select_candidate(candidates, candidates.ev_drop <= ev_drop_limit, alpha, tie_tol,
                                     eligibility=f"within the EV-drop limit {ev_drop_limit:g}", against=against)
    return table, {**choice, "ev_drop_limit": float(ev_drop_limit)}


# ---------------------------------------------------------------- release-gate candidates

CANDIDATE_FIELDS = ("phase", "name", "config", "seeds", "metric", "trained", "trained_ci", "strongest_null", "null",
                    "null_ci", "lcb", "p", "ev_heldout", "loss_recovered")


def candidate(phase: str, name: str, config: dict[str, Any], seeds: Sequence[int], trained: float,
              trained_ci: Sequence[float], strongest_null: str, null: float, null_ci: Sequence[float], p: float,
              ev_heldout: float, metric: str = "pwmcc/all", loss_recovered: float | None = None,
              p_holm: float | None = None, **extra: Any) -> dict[str, Any]:
    """One configuration a phase offers the release gate (``phases`` contract): consistency on
    ``seeds`` against its strongest trained null, LCB = trained CI low - null CI high, the raw
    seed-level permutation ``p`` (``p_holm``: adjusted within the phase, when it tried several)."""
    if len(trained_ci) != 2 or len(null_ci) != 2:
        raise HusaiError(f"candidate {name!r}: trained_ci and null_ci must be [low, high]")
    def num(v: Any) -> float | None:
        return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)

    return {"phase": phase, "name": name, "config": config, "seeds": [int(s) for s in seeds], "metric": metric,
            "trained": float(trained), "trained_ci": [float(trained_ci[0]), float(trained_ci[1])],
            "strongest_null": strongest_null, "null": float(null), "null_ci": [float(null_ci[0]), float(null_ci[1])],
            "lcb": float(trained_ci[0]) - float(null_ci[1]), "p": float(p), "p_holm": num(p_holm),
            "ev_heldout": float(ev_heldout), "loss_recovered": num(loss_recovered), **extra}


def candidates_from_summary(summary: pd.DataFrame, phase: str, by: Sequence[str], config: dict[str, Any],
                            seeds: Sequence[int], metric: str = "pwmcc/all") -> list[dict[str, Any]]:
    """One candidate per row of a ``summarise_sweep`` table that has its trained
    ``gaussian_matched`` null (``null*`` columns); ``config`` holds the settings every row shares,
    ``by`` the columns that vary. ``p_holm`` is the table's (Holm within the phase's sweep)."""
    need = {"pwmcc", "pwmcc_ci_low", "pwmcc_ci_high", "ev", *by}
    if need - set(summary.columns):
        raise HusaiError(f"candidates_from_summary: summary lacks {sorted(need - set(summary.columns))}")
    out = []
    for r in summary.to_dict(orient="records"):
        if pd.isna(r.get("null_ci_high", np.nan)):
            continue  # no trained null for this configuration: not a release candidate
        varied = {c: (r[c].item() if hasattr(r[c], "item") else r[c]) for c in by}
        out.append(candidate(phase, f"{phase}:" + ",".join(f"{c}={v}" for c, v in varied.items()),
                             {**config, **varied}, seeds[:int(r.get("n_seeds", len(seeds)))], r["pwmcc"],
                             (r["pwmcc_ci_low"], r["pwmcc_ci_high"]), "gaussian_matched", r["null"],
                             (r["null_ci_low"], r["null_ci_high"]), r["null_p"], r["ev"], metric,
                             p_holm=r.get("p_holm")))
    return out


def pareto_front(x: Sequence[float], y: Sequence[float]) -> list[bool]:
    """True for the points no other point dominates (>= on both axes, > on one); NaN is never on it."""
    pts = np.column_stack([np.asarray(x, dtype=float), np.asarray(y, dtype=float)])
    ok = ~np.isnan(pts).any(1)
    front = []
    for i, p in enumerate(pts):
        dominated = ok & (pts >= p).all(1) & (pts > p).any(1)
        front.append(bool(ok[i] and not dominated.any()))
    return front


# ---------------------------------------------------------------- matched comparison (phase 7)

def matched_gain(winner: Sequence[Any], control: Sequence[Any], seeds: Sequence[int], n_resamples: int = 10_000,
                 stats_seed: int = 0, ci: float = 0.95) -> dict[str, Any]:
    """Gain in agreement of a winning configuration over a matched control (same seeds, same training).

    gain = mean PWMCC over seed pairs of the winner - the same for the control. Its CI is a
    *paired* bootstrap over seeds: each resample draws one multiset of seeds and computes both
    means on it (pairs of distinct drawn seeds), so the seed-to-seed variation the two
    configurations share cancels. Because both means run over the same resampled pairs, this is
    exactly ``bootstrap_over_seeds`` of the matrix ``winner - control``. With equal d_sae the
    Gaussian baseline is the same for both, so this is also the gain in trained - random difference.
    """
    from .consistency import pwmcc_matrix
    from .decoders import off_diagonal
    from .stats import bootstrap_over_seeds

    if len(winner) != len(seeds) or len(control) != len(seeds):
        raise HusaiError(f"matched_gain needs one winner and one control decoder per seed; got {len(winner)}, "
                         f"{len(control)} for {len(seeds)} seeds")
    mw, mc = np.asarray(pwmcc_matrix(list(winner))), np.asarray(pwmcc_matrix(list(control)))
    boot = bootstrap_over_seeds(mw - mc, n_resamples, seed=stats_seed, ci=ci)
    return {"gain": boot.mean, "ci_low": boot.ci_low, "ci_high": boot.ci_high, "ci": ci, "n_seeds": len(seeds),
            "n_resamples": int(n_resamples), "n_valid": boot.n_valid, "stats_seed": int(stats_seed),
            "winner_pwmcc": float(off_diagonal(mw).mean()), "control_pwmcc": float(off_diagonal(mc).mean()),
            "pair_gains": off_diagonal(mw - mc).tolist(), "winner_matrix": mw.tolist(), "control_matrix": mc.tolist(),
            "definition": "mean PWMCC over seed pairs (winner) - same (control); 95% CI from a paired bootstrap "
                          "over seeds (one seed resample for both)"}


__all__ = ["select_candidate", "select_adaptive_k", "select_under_ev_drop", "candidate", "candidates_from_summary",
           "pareto_front", "matched_gain", "NULL_COLUMNS", "CANDIDATE_FIELDS"]
