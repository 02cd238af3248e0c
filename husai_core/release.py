"""Acceptance gates, selection among candidates, and matched comparisons (DESIGN §7 items 7, 8, 11).

A *gate* is one named comparison of a measured value with a threshold; a phase's acceptance
is ``pass_all`` of its gates. Gates are recorded in a run's ``results.json`` under ``gates``
(``gates_record``), which is what ``husai gate <results.json> --fail-on-gate-fail`` reads:
exit code 2 when a gate failed and the flag asks for it, 0 otherwise.

Selection (``select_candidate``) picks the candidate with the best conservative LCB
(trained CI low - random CI high) among the eligible ones (e.g. EV above a floor), ties
broken by the trained - random difference, then by EV. The permutation p-values of *all*
candidates are Holm-adjusted (the number of conditions is the number of candidates tried,
eligible or not) and the winner's adjusted p is reported; it does not filter the selection
(with 3 search seeds the exact permutation p cannot go below 0.05, so nothing would survive):
the confirmation is the retrain on fresh seeds.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from .errors import HusaiError

OPS = (">=", "<=")
EXIT_GATE_FAILED = 2


# ---------------------------------------------------------------- gates

@dataclass(frozen=True)
class Gate:
    """``value op threshold``; a NaN value never passes."""

    name: str
    value: float
    op: str
    threshold: float
    passed: bool
    detail: str = ""


def check_gate(name: str, value: float, threshold: float, op: str = ">=", detail: str = "") -> Gate:
    if op not in OPS:
        raise HusaiError(f"gate {name!r}: op must be one of {OPS}, got {op!r}")
    value, threshold = float(value), float(threshold)
    ok = (value >= threshold) if op == ">=" else (value <= threshold)
    return Gate(name, value, op, threshold, bool(ok and not math.isnan(value)), detail)


def _as_gate(g: Gate | dict) -> Gate:
    """A Gate, or a stored gate record re-derived from its value, op and threshold (a record
    whose ``passed`` disagrees with its own numbers is refused rather than trusted)."""
    if isinstance(g, Gate):
        return g
    try:
        gate = check_gate(str(g["name"]), g["value"], g["threshold"], str(g["op"]), str(g.get("detail", "")))
        stored = bool(g["passed"])
    except (KeyError, TypeError, ValueError) as exc:
        raise HusaiError(f"malformed gate record {g!r}: {exc!r}") from None
    if stored != gate.passed:
        raise HusaiError(f"gate {gate.name!r} says passed={stored} but {gate.value:g} {gate.op} {gate.threshold:g} "
                         f"is {gate.passed}")
    return gate


def pass_all(gates: Iterable[Gate | dict]) -> bool:
    """True when every gate passed. No gates at all is an error, not a pass."""
    gates = [_as_gate(g) for g in gates]
    if not gates:
        raise HusaiError("pass_all needs at least one gate (an empty gate list accepts nothing)")
    return all(g.passed for g in gates)


def gates_record(gates: Sequence[Gate]) -> dict[str, Any]:
    """The JSON form stored in results.json: ``{"pass_all", "failed", "gates": [...]}``."""
    gates = [_as_gate(g) for g in gates]
    return {"pass_all": pass_all(gates), "failed": [g.name for g in gates if not g.passed],
            "gates": [dataclasses.asdict(g) for g in gates]}


def consistency_gates(difference: float, lcb: float, ev_drop: float, ev_drop_limit: float = 0.05,
                      prefix: str = "", collapse: bool | None = None, against: str = "random") -> list[Gate]:
    """Phase-8 acceptance of one regularised configuration: trained - null difference >= 0,
    LCB >= 0 (against the null named by ``against``), EV drop from lambda 0 <= ``ev_drop_limit``;
    with ``collapse`` given, also a gate that the agreement is not a collapse onto the reference."""
    vs = "" if against == "random" else f" vs {against}"
    gates = [check_gate(f"{prefix}difference{vs} >= 0", difference, 0.0, ">=", f"mean PWMCC trained - {against}"),
             check_gate(f"{prefix}LCB{vs} >= 0", lcb, 0.0, ">=", f"trained CI low - {against} CI high"),
             check_gate(f"{prefix}EV drop <= {ev_drop_limit:g}", ev_drop, ev_drop_limit, "<=", "EV(lambda 0) - EV")]
    if collapse is not None:
        gates.append(check_gate(f"{prefix}no collapse onto the reference", float(bool(collapse)), 0.0, "<=",
                                "1 when most of the agreement gain vanishes under a change of reference"))
    return gates


# ---------------------------------------------------------------- reading gates back (CLI)

def load_gates(path: str | os.PathLike) -> list[Gate]:
    """Gates of a run: ``path`` is its ``results.json`` or its run folder."""
    from .io import read_json

    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    results = read_json(path, "results file")
    record = results.get("gates") if isinstance(results, dict) else None
    if not isinstance(record, dict) or not isinstance(record.get("gates"), list):
        raise HusaiError(f"{path} has no acceptance gates (expected a 'gates' mapping with a 'gates' list)")
    return [_as_gate(g) for g in record["gates"]]


def gate_exit_code(gates: Sequence[Gate], fail_on_gate_fail: bool) -> int:
    """2 when a gate failed and ``fail_on_gate_fail`` asks for it; 0 otherwise."""
    return EXIT_GATE_FAILED if fail_on_gate_fail and not pass_all(gates) else 0


def format_gates(gates: Sequence[Gate]) -> str:
    lines = [f"{'PASS' if g.passed else 'FAIL'}  {g.name}: {g.value:.4g} {g.op} {g.threshold:g}" for g in gates]
    return "\n".join(lines + [f"pass_all: {pass_all(gates)}"])


# ---------------------------------------------------------------- selection

NULL_COLUMNS = {"random": ("lcb", "difference", "permutation_p"),
                "gaussian_matched": ("null_lcb", "null_difference", "null_p")}


def select_candidate(summary: pd.DataFrame, eligible: Sequence[bool] | pd.Series | None = None, alpha: float = 0.05,
                     tie_tol: float = 1e-12, ev_col: str = "ev", eligibility: str = "eligible",
                     against: str = "random") -> tuple[pd.DataFrame, dict[str, Any]]:
    """Best conservative LCB among the eligible candidates; ties (within ``tie_tol``) broken by
    the larger difference, then the larger EV.

    ``summary`` needs ``lcb``, ``difference``, ``permutation_p`` and ``ev_col`` (e.g. a
    ``summarise_sweep`` table). Returns the table with ``p_holm``, ``significant``,
    ``eligible``, ``rank`` (1 = winner, among the eligible) and ``selected``, and a description.
    When no candidate is eligible the description has ``status == "none"`` and ``row`` None.
    ``against="gaussian_matched"`` ranks by the ``null_*`` columns (the trained null) instead.
    """
    from .stats import holm

    if against not in NULL_COLUMNS:
        raise HusaiError(f"unknown null {against!r} to select against; choose one of {', '.join(NULL_COLUMNS)}")
    lcb_col, diff_col, p_col = NULL_COLUMNS[against]
    need = {lcb_col, diff_col, p_col, ev_col} - set(summary.columns)
    if summary.empty or need:
        raise HusaiError(f"cannot select from this summary: {'it is empty' if summary.empty else f'missing {sorted(need)}'}")
    out = summary.copy().reset_index(drop=True)
    mask = [True] * len(out) if eligible is None else [bool(e) for e in eligible]
    if len(mask) != len(out):
        raise HusaiError(f"eligible has {len(mask)} entries for {len(out)} candidates")
    h = holm(out[p_col].to_numpy(), alpha=alpha)
    out["p_holm"], out["significant"], out["eligible"] = h.adjusted, h.reject, mask
    order = _ranking(out[out.eligible], (lcb_col, diff_col, ev_col), tie_tol)
    out["rank"] = pd.Series([None] * len(out), dtype=object)
    out.loc[order, "rank"] = range(1, len(order) + 1)
    out["selected"] = False
    rule = (f"highest LCB against the {against} null among the candidates that are {eligibility}; ties (within "
            f"{tie_tol:g}) by the larger trained - {against} difference, then the larger EV; permutation p-values "
            f"Holm-adjusted across all "
            f"{len(out)} candidates (alpha {alpha:g}), reported, not used to filter")
    base = {"rule": rule, "correction": "Holm", "n_conditions": int(len(out)), "alpha": float(alpha),
            "n_eligible": int(sum(mask))}
    if not order:
        return out, {**base, "status": "none", "row": None, "significant": False,
                     "reason": f"no candidate is {eligibility}"}
    best = order[0]
    out.loc[best, "selected"] = True
    return out, {**base, "status": "selected", "row": out.loc[best].to_dict(), "significant": bool(out.significant[best]),
                 "reason": f"best LCB among {sum(mask)} {eligibility} of {len(out)} candidates"}


def _ranking(pool: pd.DataFrame, columns: tuple[str, str, str], tie_tol: float) -> list[int]:
    """Indices of ``pool`` best first: LCB, then difference, then EV (each tie within tie_tol)."""
    def key(i: int) -> tuple:
        r = pool.loc[i]
        return tuple(r[c] for c in columns)

    remaining = list(pool.index)
    order = []
    while remaining:
        cands = remaining
        for pos in range(3):  # narrow to the ties of each criterion in turn
            top = max(key(i)[pos] for i in cands)
            cands = [i for i in cands if key(i)[pos] >= top - tie_tol]
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
    from .stats import bootstrap_over_seeds

    if len(winner) != len(seeds) or len(control) != len(seeds):
        raise HusaiError(f"matched_gain needs one winner and one control decoder per seed; got {len(winner)}, "
                         f"{len(control)} for {len(seeds)} seeds")
    mw, mc = np.asarray(pwmcc_matrix(list(winner))), np.asarray(pwmcc_matrix(list(control)))
    boot = bootstrap_over_seeds(mw - mc, n_resamples, seed=stats_seed, ci=ci)
    iu = np.triu_indices(len(seeds), 1)
    return {"gain": boot.mean, "ci_low": boot.ci_low, "ci_high": boot.ci_high, "ci": ci, "n_seeds": len(seeds),
            "n_resamples": int(n_resamples), "n_valid": boot.n_valid, "stats_seed": int(stats_seed),
            "winner_pwmcc": float(mw[iu].mean()), "control_pwmcc": float(mc[iu].mean()),
            "pair_gains": (mw - mc)[iu].tolist(), "winner_matrix": mw.tolist(), "control_matrix": mc.tolist(),
            "definition": "mean PWMCC over seed pairs (winner) - same (control); 95% CI from a paired bootstrap "
                          "over seeds (one seed resample for both)"}


__all__ = ["Gate", "check_gate", "pass_all", "gates_record", "consistency_gates", "load_gates", "gate_exit_code",
           "format_gates", "select_candidate", "select_adaptive_k", "select_under_ev_drop", "matched_gain",
           "EXIT_GATE_FAILED"]
