"""``husai compare``: run notebook ``10_compare`` through the runner; paths stored relative."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

from ..errors import HusaiError
from .activations import check_inputs
from .loading import _check_labels, pretrained_spec


def relative_paths(obj: Any, root: str | os.PathLike) -> Any:
    """``obj`` (JSON-able) with every string path under ``root`` made relative to it (the demo's
    checkpoints live in the run folder, which the runner renames when the run completes)."""
    from ..io import to_jsonable

    prefix = str(Path(root)).rstrip(os.sep) + os.sep

    def walk(v: Any) -> Any:
        if isinstance(v, str):
            return v[len(prefix):] if v.startswith(prefix) else v
        if isinstance(v, dict):
            return {walk(k): walk(x) for k, x in v.items()}
        if isinstance(v, list):
            return [walk(x) for x in v]
        return v

    return walk(to_jsonable(obj))


# ====================================================================== the CLI entry
def run_compare(paths: Sequence[str], labels: Sequence[str] | None = None, activations: str | None = None,
                hook: str | None = None, out: str | os.PathLike | None = None, profile: str = "full",
                params: dict[str, Any] | None = None, run_id: str | None = None, index: bool = True):
    """``husai compare``: check the inputs here (one-line errors before any notebook starts),
    run notebook ``10_compare`` through the runner, and copy ``results.json`` and ``report.html``
    into ``out`` when given. Returns the ``runner.RunResult``."""
    import shutil

    from .. import runner

    def absolute(p: str) -> str:
        return p if pretrained_spec(p) is not None and not Path(p).exists() else str(Path(p).resolve())

    paths = [str(p) for p in paths]
    if not paths:
        raise HusaiError("husai compare needs SAE paths")
    check_inputs(paths, labels, activations, hook)
    overrides = dict(params or {})
    clash = sorted({"paths", "labels", "activations", "hook", "out"} & set(overrides))
    if clash:
        raise HusaiError(f"give {', '.join(clash)} as command arguments, not -p")
    overrides.update(paths=[absolute(p) for p in paths], labels=_check_labels(paths, labels) or [],
                     activations=str(Path(activations).resolve()) if activations else None, hook=hook,
                     out=str(Path(out).resolve()) if out else None)
    res = runner.run_notebook("10_compare", profile, overrides, run_id=run_id)
    if out:
        dest = Path(out)
        dest.mkdir(parents=True, exist_ok=True)
        for name in ("results.json", "report.html"):
            if (res.run_dir / name).is_file():
                shutil.copyfile(res.run_dir / name, dest / name)
    if index:
        from ..report import build_index

        build_index(profile=profile)
    return res
