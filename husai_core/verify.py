"""``husai verify``: does every reported number still follow from the artifacts?

Two checks per profile, over the latest successful run of every phase (the runs the index shows):

1. **Index**: each row of the profile's ``index.html`` shows the latest run (its finish time) and
   exactly the headline of that run's ``results.json`` (as ``report._fmt`` prints it).
2. **Re-derivation**: for every phase with a module in ``husai_core.phases`` (notebook
   ``NN_name`` -> ``husai_core.phases.name``), ``run(params, art, load_only=True)`` recomputes the
   results from the run's ``params.yaml`` and the stored artifacts (transformer checkpoint,
   activation caches, SAE checkpoints; nothing is trained), and every leaf of the recorded
   ``headline``, ``gate_inputs`` and ``candidates`` (plus the module's ``VERIFIED`` entries: weights
   and cache fingerprints) must equal the recomputed one: numbers within a relative tolerance of
   1e-6 (absolute 1e-9; CPU runs are deterministic, the slack covers float reduction order under
   another thread count), strings, booleans and None exactly. A missing or stale artifact (its
   stored key no longer matches, ``store.stale_reason``) is reported, not raised.

Every mismatch is one line ``husai verify: <phase>: <what>: reported X, recomputed Y``.
"""

from __future__ import annotations

import html
import importlib
import importlib.util
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any
from unittest import mock

import yaml

from .errors import HusaiError

RTOL, ATOL = 1e-6, 1e-9
SECTIONS = ("headline", "gate_inputs", "candidates")
PREFIX = "husai verify"


@dataclass
class Outcome:
    """What ``verify`` found: mismatch lines, numbers checked and seconds spent per phase."""

    profile: str
    mismatches: list[str] = field(default_factory=list)
    checked: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    runs: dict[str, int] = field(default_factory=dict)  # re-derived runs per phase
    not_derived: list[str] = field(default_factory=list)  # phases without a phases module

    @property
    def ok(self) -> bool:
        return not self.mismatches

    def summary(self) -> str:
        parts = [f"index {self.checked.get('index', 0)}"]
        for phase, n in self.checked.items():
            if phase != "index":
                runs = self.runs.get(phase, 1)
                parts.append(f"{phase} {n}" + (f" ({runs} runs)" if runs > 1 else "")
                             + f" in {self.seconds.get(phase, 0):.1f}s")
        tail = f"; index only (no phases module): {', '.join(self.not_derived)}" if self.not_derived else ""
        state = "OK" if self.ok else f"{len(self.mismatches)} mismatch(es)"
        return f"{PREFIX}: {self.profile} profile {state}; numbers checked: {', '.join(parts)}{tail}"


# ---------------------------------------------------------------- comparing values

def _show(v: Any) -> str:
    text = repr(v) if isinstance(v, str) else ("missing" if v is _MISSING else str(v))
    return text if len(text) <= 80 else text[:77] + "..."


_MISSING = object()


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _same_number(a: float, b: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return math.isclose(a, b, rel_tol=RTOL, abs_tol=ATOL)


def compare(reported: Any, recomputed: Any, where: str, *, extra_ok: bool = False) -> tuple[int, list[tuple[str, Any, Any]]]:
    """(numbers compared, [(where, reported, recomputed), ...] differences) over every leaf.

    Dicts are compared key by key (``extra_ok``: keys only the recomputation has are ignored, for
    entries a newer code version adds), lists item by item, numbers with ``RTOL``/``ATOL``.
    """
    if isinstance(reported, dict) and isinstance(recomputed, dict):
        n, diffs = 0, []
        keys = list(reported) + [k for k in recomputed if k not in reported and not extra_ok]
        for k in keys:
            m, d = compare(reported.get(k, _MISSING), recomputed.get(k, _MISSING), f"{where}.{k}" if where else str(k),
                           extra_ok=extra_ok)
            n, diffs = n + m, diffs + d
        return n, diffs
    if isinstance(reported, list) and isinstance(recomputed, list):
        if len(reported) != len(recomputed):
            return 0, [(f"{where} (length)", len(reported), len(recomputed))]
        n, diffs = 0, []
        for i, (a, b) in enumerate(zip(reported, recomputed)):
            m, d = compare(a, b, f"{where}[{i}]", extra_ok=extra_ok)
            n, diffs = n + m, diffs + d
        return n, diffs
    if _is_number(reported) and _is_number(recomputed):
        return 1, [] if _same_number(float(reported), float(recomputed)) else [(where, reported, recomputed)]
    same = reported == recomputed and type(reported) is type(recomputed)
    return int(_is_number(reported)), [] if same else [(where, reported, recomputed)]


def _line(phase: str, what: str, reported: Any, recomputed: Any) -> str:
    return f"{PREFIX}: {phase}: {what}: reported {_show(reported)}, recomputed {_show(recomputed)}"


# ---------------------------------------------------------------- the index

_ROW = re.compile(r"<tr>(<td>.*?)</tr>", re.S)
_CELL = re.compile(r"<td>(.*?)</td>", re.S)
_HEAD = re.compile(r"<th>(.*?)</th>", re.S)
_ITEM = re.compile(r"<li><b>(.*?)</b>: (.*?)</li>", re.S)
# Columns of report.build_index's table, found by their headers (positions as a fallback).
_COLUMNS = {"name": ("report", 0), "finished": ("finished (UTC)", 2), "headline": ("headline numbers", 5)}


def _text(fragment: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", fragment)).strip()


def index_rows(text: str) -> dict[str, dict[str, Any]]:
    """``{report name: {"finished": ..., "headline": {key: shown text}}}`` from an ``index.html``."""
    heads = [_text(h) for h in _HEAD.findall(text)]
    col = {k: heads.index(h) if h in heads else i for k, (h, i) in _COLUMNS.items()}
    rows = {}
    for row in _ROW.findall(text):
        cells = _CELL.findall(row)
        if len(cells) <= max(col.values()):
            continue  # the "no runs yet" row
        rows[_text(cells[col["name"]])] = {
            "finished": _text(cells[col["finished"]]),
            "headline": {html.unescape(k): html.unescape(v) for k, v in _ITEM.findall(cells[col["headline"]])}}
    return rows


def _run_name(manifest: dict) -> str:
    return manifest["notebook"] + (f"-seed{manifest['seed']}" if manifest.get("seed") is not None else "")


def check_index(latest: list[dict], index: Path) -> tuple[int, list[str]]:
    """(headline numbers checked, mismatch lines) of ``index`` against the latest runs."""
    from .report import _fmt

    if not index.is_file():
        return 0, [f"{PREFIX}: index: {index}: reported missing, recomputed {len(latest)} run(s) to show"]
    rows, n, lines = index_rows(index.read_text(encoding="utf-8")), 0, []
    for entry in latest:
        name, m = _run_name(entry["manifest"]), entry["manifest"]
        if name not in rows:
            lines.append(f"{PREFIX}: index: {name}: reported missing, recomputed run {m['run_id']}")
            continue
        row = rows.pop(name)
        if row["finished"] != m["finished"]:
            lines.append(f"{PREFIX}: index: {name}: finished: reported {row['finished']}, recomputed {m['finished']} "
                         f"(the index shows another run than the latest, {m['run_id']})")
        headline = {str(k): _fmt(v) for k, v in entry["results"].get("headline", {}).items()}
        for key in list(row["headline"]) + [k for k in headline if k not in row["headline"]]:
            shown, want = row["headline"].get(key, _MISSING), headline.get(key, _MISSING)
            n += _is_number(entry["results"].get("headline", {}).get(key))
            if shown != want:
                lines.append(_line("index", f"{name}: {key}", shown, want))
    lines += [f"{PREFIX}: index: {name}: reported a row, recomputed no such run" for name in rows]
    return n, lines


# ---------------------------------------------------------------- re-deriving a run

def phase_module(notebook: str) -> ModuleType | None:
    """``husai_core.phases.<name>`` for notebook ``NN_<name>``, or None when there is none."""
    name = f"husai_core.phases.{notebook.split('_', 1)[-1]}"
    return importlib.import_module(name) if importlib.util.find_spec(name) else None


def run_artifacts(params: dict[str, Any], runs: Path, profile: str) -> Path:
    """The artifacts folder a run used, inside ``runs`` when it was inside the run's runs folder:
    a relative path is relative to the runs folder (``runner.runs_relative``), and an absolute one
    under the folder the run was made in (older runs) is re-rooted, so copied or moved runs verify."""
    recorded = Path(str(params.get("artifacts_dir") or Path("artifacts") / profile))
    if not recorded.is_absolute():
        return Path(runs) / recorded
    run_dir = Path(str(params.get("run_dir") or ""))
    if run_dir.is_absolute():
        try:
            return Path(runs) / recorded.relative_to(run_dir.parents[1])
        except ValueError:
            pass
    return recorded


def rederive(entry: dict, module: ModuleType, runs: Path, profile: str,
             artifacts: Path | None = None) -> tuple[int, list[str]]:
    """(numbers checked, mismatch lines) of one run re-derived through its phase module."""
    name, results = _run_name(entry["manifest"]), entry["results"]
    path = entry["dir"] / "params.yaml"
    try:
        params = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        return 0, [f"{PREFIX}: {name}: params.yaml: reported unreadable ({exc.__class__.__name__}), recomputed nothing"]
    art = Path(artifacts) if artifacts else run_artifacts(params, runs, profile)
    try:
        fresh = module.run(params, art, progress=False, load_only=True)
    except HusaiError as exc:  # a missing or stale artifact
        return 0, [f"{PREFIX}: {name}: cannot re-derive: {exc}"]
    except Exception as exc:  # noqa: BLE001 - e.g. a run older than a parameter the phase now reads
        return 0, [f"{PREFIX}: {name}: cannot re-derive: {exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"]
    n, diffs = compare(results.get("headline", {}), fresh.get("headline", {}), "headline")
    for section in [s for s in SECTIONS if s != "headline"] + list(getattr(module, "VERIFIED", ())):
        if section in results:  # runs made before a section existed are not held to it
            m, d = compare(results[section], fresh.get(section, _MISSING), section, extra_ok=True)
            n, diffs = n + m, diffs + d
    return n, [_line(name, where, a, b) for where, a, b in diffs]


def verify(profile: str = "full", runs: str | Path | None = None, reports: str | Path | None = None,
           artifacts: str | Path | None = None) -> Outcome:
    """Check the profile's index and re-derive every latest run; see the module docstring."""
    from .report import _latest_runs, profile_reports_dir
    from .paths import runs_dir

    runs = Path(runs or runs_dir())
    if not runs.is_dir():
        raise HusaiError(f"no runs folder at {runs}")
    out = Outcome(profile)
    latest = _latest_runs(runs, profile)
    if not latest:
        raise HusaiError(f"no finished {profile}-profile runs in {runs}")
    out.checked["index"], lines = check_index(latest, profile_reports_dir(profile, reports) / "index.html")
    out.mismatches += lines
    env = {"HUSAI_RUNS_DIR": str(runs), **({"HUSAI_REPORTS_DIR": str(reports)} if reports else {})}
    with mock.patch.dict(os.environ, env):  # phases that read other runs (the release gate) read these
        for entry in latest:
            notebook = entry["manifest"]["notebook"]
            try:
                module = phase_module(notebook)
            except Exception as exc:  # noqa: BLE001 - a broken phase module is a finding, not a crash
                out.mismatches.append(f"{PREFIX}: {_run_name(entry['manifest'])}: cannot re-derive: its phase module "
                                      f"does not import ({exc.__class__.__name__}: {exc})")
                continue
            if module is None:
                if notebook not in out.not_derived:
                    out.not_derived.append(notebook)
                continue
            start = time.perf_counter()
            n, lines = rederive(entry, module, runs, profile, artifacts)
            out.checked[notebook] = out.checked.get(notebook, 0) + n
            out.runs[notebook] = out.runs.get(notebook, 0) + 1
            out.seconds[notebook] = out.seconds.get(notebook, 0.0) + time.perf_counter() - start
            out.mismatches += lines
    return out


__all__ = ["Outcome", "verify", "compare", "check_index", "index_rows", "phase_module", "run_artifacts", "rederive",
           "RTOL", "ATOL"]
