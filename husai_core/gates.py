"""Acceptance gates: named comparisons of a measured value with a threshold (DESIGN §7 items 8, 14).

A *gate* is ``value op threshold``; a NaN (or missing) value never passes. A gate is
*required* (it decides ``pass_all``) or *optional* (reported, never decisive). A phase's
gates are stored in its ``results.json`` under ``gates`` (``gates_record``); ``husai gate
[results.json] --fail-on-gate-fail`` reads them back (``load_gates``) and exits with code 2
when a required gate failed. The release gate (``phases.release_gate``, notebook
``14_release_gate``) builds its gates here too.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from .errors import HusaiError

OPS = (">=", "<=")
EXIT_GATE_FAILED = 2
RELEASE_NOTEBOOK = "14_release_gate"


@dataclass(frozen=True)
class Gate:
    """``value op threshold``; a NaN value (an input that was not measured) never passes."""

    name: str
    value: float
    op: str
    threshold: float
    passed: bool
    detail: str = ""
    required: bool = True

    @property
    def missing(self) -> bool:
        return math.isnan(self.value)


def check_gate(name: str, value: float | None, threshold: float, op: str = ">=", detail: str = "",
               required: bool = True) -> Gate:
    """One gate; ``value=None`` (its input was not measured) is stored as NaN and fails."""
    if op not in OPS:
        raise HusaiError(f"gate {name!r}: op must be one of {OPS}, got {op!r}")
    value, threshold = float("nan") if value is None else float(value), float(threshold)
    ok = (value >= threshold) if op == ">=" else (value <= threshold)
    return Gate(name, value, op, threshold, bool(ok and not math.isnan(value)), detail, bool(required))


def _as_gate(g: Gate | dict) -> Gate:
    """A Gate, or a stored gate record re-derived from its value, op and threshold (a record
    whose ``passed`` disagrees with its own numbers is refused rather than trusted)."""
    if isinstance(g, Gate):
        return g
    try:
        gate = check_gate(str(g["name"]), g["value"], g["threshold"], str(g["op"]), str(g.get("detail", "")),
                          bool(g.get("required", True)))
        stored = bool(g["passed"])
    except (KeyError, TypeError, ValueError) as exc:
        raise HusaiError(f"malformed gate record {g!r}: {exc!r}") from None
    if stored != gate.passed:
        raise HusaiError(f"gate {gate.name!r} says passed={stored} but {gate.value:g} {gate.op} {gate.threshold:g} "
                         f"is {gate.passed}")
    return gate


def pass_all(gates: Iterable[Gate | dict]) -> bool:
    """True when every *required* gate passed. No required gate at all is an error, not a pass."""
    gates = [_as_gate(g) for g in gates]
    required = [g for g in gates if g.required]
    if not required:
        raise HusaiError("pass_all needs at least one required gate (an empty gate list accepts nothing)")
    return all(g.passed for g in required)


def gates_record(gates: Sequence[Gate]) -> dict[str, Any]:
    """The JSON form stored in results.json: ``{"pass_all", "failed", "gates": [...]}``; ``failed``
    names the required gates that failed, ``optional_failed`` the others."""
    gates = [_as_gate(g) for g in gates]
    return {"pass_all": pass_all(gates), "failed": [g.name for g in gates if g.required and not g.passed],
            "optional_failed": [g.name for g in gates if not g.required and not g.passed],
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

def latest_release_results(profile: str) -> Path:
    """``results.json`` of the newest finished release-gate run (``14_release_gate``) of ``profile``."""
    from .runner import finished_runs

    runs = finished_runs(RELEASE_NOTEBOOK, profile)
    if not runs:
        raise HusaiError(f"no finished {RELEASE_NOTEBOOK} run on profile {profile!r} "
                         f"(run `husai run {RELEASE_NOTEBOOK} --profile {profile}` first)")
    return runs[0][0] / "results.json"


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
    """2 when a required gate failed and ``fail_on_gate_fail`` asks for it; 0 otherwise."""
    return EXIT_GATE_FAILED if fail_on_gate_fail and not pass_all(gates) else 0


def format_gates(gates: Sequence[Gate]) -> str:
    def line(g: Gate) -> str:
        status = "MISSING" if g.missing else "PASS" if g.passed else "FAIL"
        tail = f" ({g.detail})" if g.missing and g.detail else ""
        return f"{status:<7} {g.name}{'' if g.required else ' [optional]'}: {g.value:.4g} {g.op} {g.threshold:g}{tail}"

    return "\n".join([line(g) for g in gates] + [f"pass_all: {pass_all(gates)}"])


__all__ = ["Gate", "check_gate", "pass_all", "gates_record", "consistency_gates", "load_gates", "gate_exit_code",
           "format_gates", "latest_release_results", "EXIT_GATE_FAILED", "RELEASE_NOTEBOOK"]
