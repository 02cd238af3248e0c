"""Locations: the checkout, the runs and reports folders (``HUSAI_RUNS_DIR`` /
``HUSAI_REPORTS_DIR``), per-profile artifacts, and paths stored relative to the runs folder."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import HusaiError


def repo_root() -> Path:
    """The checkout holding ``notebooks/`` (found from the package, then from the cwd)."""
    for start in (Path(__file__).resolve().parent, Path.cwd().resolve()):
        for folder in (start, *start.parents):
            if (folder / "notebooks").is_dir() and (folder / "husai_core").is_dir():
                return folder
    raise HusaiError("cannot find the HUSAI checkout (a folder with notebooks/ and husai_core/)")


def runs_dir() -> Path:
    return Path(os.environ.get("HUSAI_RUNS_DIR") or repo_root() / "runs")


def reports_dir() -> Path:
    return Path(os.environ.get("HUSAI_REPORTS_DIR") or repo_root() / "reports")


def runs_relative(path: str | os.PathLike) -> str:
    """How metadata (results.json, params.yaml) stores a path: relative to the runs folder when
    inside it, so no record names a machine's folders; a path elsewhere is kept as given."""
    text = os.fspath(path)
    if os.path.isabs(text):
        for root in {os.path.abspath(runs_dir()), os.path.realpath(runs_dir())}:
            for candidate in (os.path.abspath(text), os.path.realpath(text)):
                if candidate.startswith(root + os.sep):
                    return Path(os.path.relpath(candidate, root)).as_posix()
    return text


def runs_path(value: str | os.PathLike) -> Path:
    """Resolve a path read from metadata (see ``runs_relative``): relative means inside the runs folder."""
    path = Path(value)
    return path if path.is_absolute() else runs_dir() / path


def artifacts_dir(profile: str, override: str | os.PathLike | None = None) -> Path:
    """Where phases leave checkpoints and caches for the next phase, per profile. A relative
    ``override`` is relative to the runs folder, as the runner records it (``runs_relative``)."""
    return runs_path(override) if override else runs_dir() / "artifacts" / profile
