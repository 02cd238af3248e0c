"""Phase 14, the release gate: one configuration selected over everything the study produced,
and the gates it (and the study) must pass (DESIGN §7 item 14).

Inputs are the *finished runs* of the source phases on a profile (the newest of each, or the
run ids pinned in ``upstream_runs``), read from their ``results.json``:

- ``candidates`` (contract: ``husai_core.selection.candidate``): configurations evaluated on
  several seeds against trained nulls. Eligible: ``>= min_seeds`` seeds and mean held-out EV
  ``>= ev_floor`` (both fixed in the params before the run), and the study's ``metric``. The
  rule is ``selection.select_candidate``: highest LCB (trained CI low - strongest null CI high)
  among the eligible, ties by the difference then EV; the raw permutation p-values of *every*
  candidate are Holm-adjusted together (reported; the optional ``selected_holm_p`` gate uses it).
- ``gate_inputs``: ``{name: {"value", "ci", "detail"}}`` (phase 04 ``trained_vs_strongest_null_lcb``,
  phase 11 ``transcoder_delta_lcb`` and ``ood_drop``, phase 12 ``loss_recovered``).

Gates (``GATES``; those named in ``require`` decide ``pass_all``, the others are reported):

- ``trained_vs_strongest_null_lcb >= lcb_threshold`` — the main configuration (phase 04) vs the
  strongest of its nulls;
- ``selected_lcb >= lcb_threshold`` — the selected candidate vs the strongest null its phase trained;
- ``transcoder_delta_lcb >= transcoder_delta_threshold``; ``ood_drop <= ood_drop_limit``;
  ``loss_recovered >= loss_recovered_floor`` — from their phases' gate inputs;
- ``ev_drop <= ev_drop_limit`` — **EV drop = the highest mean held-out EV among the eligible
  candidates minus the selected candidate's**: the reconstruction the selection gives up for
  consistency (0 when the most consistent eligible candidate also reconstructs best);
- ``selected_holm_p <= alpha`` — the selected candidate's permutation p after Holm across all candidates.

A gate whose input was not measured (its phase has no finished run, the run lacks the input, or
no candidate is eligible) is reported as missing with one line saying why; it fails when required.
``run`` reads only runs (``art`` is unused), so it trains nothing and ``load_only`` changes nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from ..errors import HusaiError
from ..gates import Gate, check_gate, gates_record
from ..io import read_json, to_jsonable
from ..selection import pareto_front, select_candidate

NOTEBOOK = "14_release_gate"
# Sections of results.json `husai verify` re-derives besides its defaults (headline, gate_inputs, candidates).
VERIFIED = ("gates", "selected", "upstream_runs", "ev_drop")
SOURCES = ("04_trained_vs_nulls", "05_ablations", "06_frontier", "11_stress", "12_evaluation", "13_scaling")
GATES = ("trained_vs_strongest_null_lcb", "selected_lcb", "transcoder_delta_lcb", "ood_drop", "loss_recovered",
         "ev_drop", "selected_holm_p")
PARAMS = ("source_phases", "source_profile", "upstream_runs", "metric", "min_seeds", "ev_floor", "alpha", "require",
          "lcb_threshold", "transcoder_delta_threshold", "ood_drop_limit", "loss_recovered_floor", "ev_drop_limit")
# The phase that measures each gate input (for saying why one is missing).
INPUT_PHASE = {"trained_vs_strongest_null_lcb": "04_trained_vs_nulls", "transcoder_delta_lcb": "11_stress",
               "ood_drop": "11_stress", "loss_recovered": "12_evaluation"}
NEEDED = ("name", "seeds", "trained", "trained_ci", "strongest_null", "null", "null_ci", "lcb", "p", "ev_heldout")


# ---------------------------------------------------------------- inputs

def collect(phases: list[str], profile: str, upstream_runs: dict[str, str] | None = None) -> dict[str, dict]:
    """The newest finished run of each phase on ``profile`` (or the pinned run id): its candidates
    and gate inputs, or ``status: missing`` with a one-line reason."""
    from ..runner import finished_runs

    upstream_runs = upstream_runs or {}
    unknown = sorted(set(upstream_runs) - set(phases))
    if unknown:
        raise HusaiError(f"upstream_runs names phase(s) {unknown} that are not in source_phases {phases}")
    sources: dict[str, dict] = {}
    for phase in phases:
        runs = finished_runs(phase, profile)
        if phase in upstream_runs:
            runs = [r for r in runs if r[1].get("run_id") == upstream_runs[phase]]
            if not runs:
                raise HusaiError(f"upstream_runs: no finished {phase} run {upstream_runs[phase]!r} on profile {profile!r}")
        if not runs:
            sources[phase] = {"status": "missing", "detail": f"no finished {phase} run on profile {profile!r}"}
            continue
        folder, manifest = runs[0]
        results = read_json(folder / "results.json", f"{phase} results")
        sources[phase] = {"status": "ok", "run_id": manifest["run_id"], "run": f"{phase}/{manifest['run_id']}",
                          "finished": manifest.get("finished"), "candidates": list(results.get("candidates") or []),
                          "gate_inputs": dict(results.get("gate_inputs") or {})}
    return sources


def candidate_table(sources: dict[str, dict], metric: str) -> tuple[pd.DataFrame, list[str]]:
    """One row per candidate of every source (columns ``select_candidate`` reads against the
    ``strongest`` null), and one line per candidate left out (malformed, other metric, repeated name)."""
    rows, notes, seen = [], [], set()
    for phase, src in sources.items():
        for c in src.get("candidates", []):
            lacking = [f for f in NEEDED if c.get(f) is None]
            if lacking:
                notes.append(f"{phase}: candidate {c.get('name')!r} lacks {', '.join(lacking)}: left out")
            elif not 0.0 <= float(c["p"]) <= 1.0 or len(c["trained_ci"]) != 2 or len(c["null_ci"]) != 2:
                notes.append(f"{phase}: candidate {c['name']!r} has a p outside [0, 1] or a CI that is not "
                             f"[low, high]: left out")
            elif c.get("metric", metric) != metric:
                notes.append(f"{phase}: candidate {c['name']!r} is on {c.get('metric')!r}, not {metric!r}: left out")
            elif c["name"] in seen:
                notes.append(f"{phase}: candidate name {c['name']!r} repeats an earlier one: left out")
            else:
                seen.add(c["name"])
                rows.append({"phase": phase, "name": c["name"], "n_seeds": len(c["seeds"]), "seeds": list(c["seeds"]),
                             "trained": c["trained"], "trained_ci_low": c["trained_ci"][0],
                             "trained_ci_high": c["trained_ci"][1], "strongest_null": c["strongest_null"],
                             "null": c["null"], "null_ci_low": c["null_ci"][0], "null_ci_high": c["null_ci"][1],
                             "null_lcb": float(c["lcb"]), "null_difference": float(c["trained"]) - float(c["null"]),
                             "null_p": float(c["p"]), "phase_p_holm": c.get("p_holm"), "ev": float(c["ev_heldout"]),
                             "loss_recovered": c.get("loss_recovered"), "config": c.get("config", {})})
    return pd.DataFrame(rows), notes


def eligibility(table: pd.DataFrame, min_seeds: int, ev_floor: float) -> list[str]:
    """``"eligible"`` or why not, per candidate (seeds first, then the EV floor)."""
    return ["eligible" if n >= min_seeds and ev >= ev_floor
            else f"{n} seeds < {min_seeds}" if n < min_seeds else f"EV {ev:.4g} < floor {ev_floor:g}"
            for n, ev in zip(table.n_seeds, table.ev)]


def find_input(sources: dict[str, dict], name: str) -> tuple[dict | None, str]:
    """The gate input ``name`` from the first source run that has it, or (None, one line on why
    it is missing: the phase that measures it has no finished run, or its run lacks it)."""
    for phase, src in sources.items():
        if name in src.get("gate_inputs", {}):
            return src["gate_inputs"][name], f"{src['run']}"
    owner = sources.get(INPUT_PHASE.get(name, ""))
    if owner is not None and owner["status"] != "ok":
        return None, f"missing: {owner['detail']}"
    if owner is not None:
        return None, f"missing: {owner['run']} has no gate input {name!r}"
    return None, f"missing: no source run has the gate input {name!r}"


# ---------------------------------------------------------------- gates

def release_gates(params: dict[str, Any], sources: dict[str, dict], table: pd.DataFrame,
                  choice: dict[str, Any]) -> tuple[list[Gate], dict[str, Any]]:
    """Every gate of ``GATES`` (required when named in ``params['require']``) and the EV-drop record."""
    require = set(params["require"])
    row = choice.get("row") if choice.get("status") == "selected" else None
    none = f"missing: {choice.get('reason', 'no candidates')}"

    def from_input(gate: str, name: str, op: str, threshold: float) -> Gate:
        value, where = find_input(sources, name)
        detail = where if value is None else f"{where}: {value.get('detail', '')}".strip()
        return check_gate(gate, None if value is None else value.get("value"), threshold, op, detail, gate in require)

    ev_rec: dict[str, Any] = {"definition": "highest mean held-out EV among the eligible candidates minus the "
                                            "selected candidate's", "value": None}
    if row is not None:
        best = float(table.ev[table.eligible].max())
        ev_rec.update(best_eligible_ev=best, selected_ev=float(row["ev"]), value=best - float(row["ev"]))
    gates = [
        from_input("trained_vs_strongest_null_lcb", "trained_vs_strongest_null_lcb", ">=", params["lcb_threshold"]),
        check_gate("selected_lcb", None if row is None else row["null_lcb"], params["lcb_threshold"], ">=",
                   none if row is None else f"{row['name']}: trained CI low - {row['strongest_null']} CI high",
                   "selected_lcb" in require),
        from_input("transcoder_delta_lcb", "transcoder_delta_lcb", ">=", params["transcoder_delta_threshold"]),
        from_input("ood_drop", "ood_drop", "<=", params["ood_drop_limit"]),
        from_input("loss_recovered", "loss_recovered", ">=", params["loss_recovered_floor"]),
        check_gate("ev_drop", ev_rec["value"], params["ev_drop_limit"], "<=",
                   none if row is None else ev_rec["definition"], "ev_drop" in require),
        check_gate("selected_holm_p", None if row is None else row["p_holm"], params["alpha"], "<=",
                   none if row is None else f"Holm across {choice['n_conditions']} candidates",
                   "selected_holm_p" in require),
    ]
    return gates, ev_rec


def check_params(params: dict[str, Any]) -> None:
    missing = [p for p in PARAMS if p not in params]
    if missing:
        raise HusaiError(f"release gate parameters missing: {', '.join(missing)}")
    unknown = sorted(set(params["require"]) - set(GATES))
    if unknown:
        raise HusaiError(f"require names unknown gate(s) {unknown}; known: {', '.join(GATES)}")
    if not params["require"]:
        raise HusaiError("require is empty: name at least one gate that decides pass_all")
    if int(params["min_seeds"]) < 2 or not 0.0 <= float(params["ev_floor"]) <= 1.0:
        raise HusaiError(f"min_seeds must be >= 2 and ev_floor in [0, 1]; got {params['min_seeds']}, {params['ev_floor']}")


# ---------------------------------------------------------------- the phase

def run(params: dict[str, Any], art: Path | None = None, *, progress: bool = False,
        load_only: bool = False) -> dict[str, Any]:
    """The release gate's results dict (module docstring). ``params['source_profile']`` (default
    ``params['profile']``) names the profile whose runs are read."""
    check_params(params)
    profile = params["source_profile"] or params.get("profile")
    if not profile:
        raise HusaiError("no profile to read the source runs of (set source_profile)")
    sources = collect(list(params["source_phases"]), profile, params["upstream_runs"])
    table, notes = candidate_table(sources, params["metric"])
    choice: dict[str, Any] = {"status": "none", "reason": "no candidates in any source run", "n_conditions": 0}
    if not table.empty:
        reasons = eligibility(table, int(params["min_seeds"]), float(params["ev_floor"]))
        table, choice = select_candidate(
            table, [r == "eligible" for r in reasons], params["alpha"], ev_col="ev", against="strongest",
            eligibility=f"on >= {params['min_seeds']} seeds with held-out EV >= {params['ev_floor']:g}")
        table["eligibility"] = reasons
        faith = "loss_recovered" if table.loss_recovered.notna().all() else "ev"
        table["pareto"] = pareto_front(table[faith].where(table.eligible), table.null_lcb.where(table.eligible))
    else:
        faith = "ev"
    gates, ev_rec = release_gates(params, sources, table, choice)
    record = gates_record(gates)
    row = choice.get("row") if choice["status"] == "selected" else None
    selected = None
    if row is not None:
        src = next(c for c in sources[row["phase"]]["candidates"] if c.get("name") == row["name"])
        selected = {**src, "p_holm_all": row["p_holm"], "rank": 1}
    missing = [g.name for g in gates if g.missing]
    verdict = (f"Release gate {'PASSES' if record['pass_all'] else 'FAILS'}"
               + (f" (failed: {', '.join(record['failed'])})" if record["failed"] else "")
               + (f"; selected {row['name']}: LCB {row['null_lcb']:.4g} vs {row['strongest_null']}, EV {row['ev']:.4g}"
                  if row is not None else f"; no candidate selected ({choice['reason']})")
               + (f"; missing inputs: {', '.join(missing)}" if missing else "") + ".")
    return to_jsonable({
        "headline": {"pass_all": record["pass_all"], "selected": None if row is None else row["name"],
                     "selected LCB vs strongest null": None if row is None else row["null_lcb"],
                     "its strongest null": None if row is None else row["strongest_null"],
                     "selected held-out EV": None if row is None else row["ev"],
                     "candidates": int(len(table)), "eligible": int(table.eligible.sum()) if not table.empty else 0,
                     "failed gates": ", ".join(record["failed"]) or "none",
                     "missing inputs": ", ".join(missing) or "none"},
        "verdict": verdict, "gates": record, "pass_all": record["pass_all"], "selected": selected,
        "selection": {k: v for k, v in choice.items() if k != "row"}, "ev_drop": ev_rec,
        "candidates_table": [] if table.empty else table.to_dict(orient="records"),
        "pareto": {"x": faith, "y": "null_lcb",
                   "front": [] if table.empty else table["name"][table.pareto].tolist()},
        "sources": {p: {k: v for k, v in s.items() if k not in ("candidates", "gate_inputs")}
                    | {"n_candidates": len(s.get("candidates", [])), "gate_inputs": sorted(s.get("gate_inputs", {}))}
                    for p, s in sources.items()},
        "upstream_runs": {p: s["run_id"] for p, s in sources.items() if s["status"] == "ok"},
        "notes": notes, "profile": profile, "params": {p: params[p] for p in PARAMS},
    })


__all__ = ["run", "collect", "candidate_table", "eligibility", "find_input", "release_gates", "check_params",
           "GATES", "SOURCES", "PARAMS", "NOTEBOOK"]
