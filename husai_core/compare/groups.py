"""Group the loaded SAEs into configurations (seeds of one configuration) and check that every
SAE reads the same activations (d_in, hook, site, model).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import HusaiError
from .loading import LoadedSAE, PRETRAINED_PREFIX


# ====================================================================== grouping and compatibility
def _signature(item: LoadedSAE) -> str:
    cfg = item.cfg.to_dict()
    return json.dumps({"format": item.format, "config": cfg}, sort_keys=True, default=str)


def _short(item: LoadedSAE) -> str:
    c = item.cfg
    fmt = {"saelens_pretrained": "SAELens pretrained", "dictionary_learning": "dictionary_learning"}.get(
        item.format, item.format)
    k = f" k={c.k}" if c.architecture in ("topk", "batchtopk", "matryoshka") else ""
    return f"{fmt} {c.architecture} d_sae={c.d_sae}{k}"


def group_inputs(items: list[LoadedSAE]) -> tuple[dict[str, list[LoadedSAE]], str]:
    """Groups of seeds (label -> members, in input order) and how they were formed.

    Labelled inputs group by label. Otherwise by configuration, split by source folder (the
    parent of each seed folder) only when every folder then holds >= 2 seeds. Each group is
    checked: >= 2 SAEs, one architecture and width.
    """
    if all(i.given_label is not None for i in items):
        groups: dict[str, list[LoadedSAE]] = {}
        for i in items:
            i.label = i.given_label
            groups.setdefault(i.label, []).append(i)
        how = "by the given labels"
    else:
        by_sig: dict[str, list[LoadedSAE]] = {}
        for i in items:
            by_sig.setdefault(_signature(i), []).append(i)
        raw: list[tuple[str, str | None, list[LoadedSAE]]] = []  # (short name, folder, members)
        split_any = False
        for members in by_sig.values():
            by_dir: dict[str, list[LoadedSAE]] = {}
            for i in members:
                by_dir.setdefault(str(Path(i.unit).parent) if not i.unit.startswith(PRETRAINED_PREFIX) else i.unit,
                                  []).append(i)
            if len(by_dir) > 1 and all(len(v) >= 2 for v in by_dir.values()):
                split_any = True
                raw += [(_short(v[0]), d, v) for d, v in by_dir.items()]
            else:
                raw.append((_short(members[0]), None, members))
        groups = {}
        for name, folder, members in raw:
            label = name if folder is None else f"{name} [{Path(folder).name}]"
            base, n = label, 2
            while label in groups:
                label, n = f"{base} #{n}", n + 1
            for i in members:
                i.label = label
            groups[label] = members
        how = ("by configuration, split by source folder" if split_any else "by configuration")
    for label, members in groups.items():
        if len(members) < 2:
            raise HusaiError(f"group {label!r} has a single SAE ({members[0].path}); seed consistency needs >= 2 "
                             f"seeds of one configuration: add seeds, or use --labels to group them")
        first = members[0]
        for other in members[1:]:
            a, b = first.cfg, other.cfg
            if (a.architecture, a.d_sae) != (b.architecture, b.d_sae):
                raise HusaiError(f"group {label!r} mixes configurations: {first.path} is {a.architecture} "
                                 f"d_sae={a.d_sae} but {other.path} is {b.architecture} d_sae={b.d_sae}; "
                                 f"seeds of one configuration must share architecture and width")
    return groups, how


def check_compatible(items: list[LoadedSAE]) -> dict[str, Any]:
    """Same d_in everywhere; recorded hooks (and dictionary_learning sites, models per format)
    agree. Returns ``{"d_in", "hook"}`` (hook None when no checkpoint records one)."""
    first = items[0]
    for other in items[1:]:
        if other.cfg.d_in != first.cfg.d_in:
            raise HusaiError(f"incompatible SAEs: {first.path} has d_in={first.cfg.d_in} but {other.path} has "
                             f"d_in={other.cfg.d_in} (SAEs compared must read the same activations)")
    for attr, what, same_format in (("hook", "hook", False), ("site", "dictionary_learning site", False),
                                    ("model", "model", True)):
        seen: dict[Any, LoadedSAE] = {}
        for i in items:
            value = getattr(i, attr)
            if value is None:
                continue
            scope = i.format if same_format else None
            ref = seen.setdefault(scope, i)
            if getattr(ref, attr) != value:
                raise HusaiError(f"incompatible SAEs: {ref.path} records {what} {getattr(ref, attr)!r} but {i.path} "
                                 f"records {value!r} (SAEs compared must read the same activations)")
    hooks = {i.hook for i in items if i.hook}
    return {"d_in": first.cfg.d_in, "hook": hooks.pop() if hooks else None}
