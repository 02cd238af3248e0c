"""Notebooks and their parameters: the ``parameters`` cell, params profiles, ``--set`` overrides
and seed lists.
"""

from __future__ import annotations

import ast
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from ..errors import HusaiError
from ..paths import artifacts_dir, repo_root


# Injected by the runner into every notebook; each notebook declares them in its parameters cell.
RUNNER_PARAMS = ("profile", "run_dir", "artifacts_dir", "progress")


def list_notebooks() -> list[str]:
    return sorted(p.stem for p in (repo_root() / "notebooks").glob("[0-9][0-9]_*.py"))


def resolve_notebook(name: str) -> Path:
    """Accept ``01_transformer``, ``01``, ``transformer`` or a path to the .py/.ipynb."""
    path = Path(name)
    if path.suffix in (".py", ".ipynb") and path.is_file():
        return path.with_suffix(".py").resolve()
    names = list_notebooks()
    matches = [n for n in names if n == name or n.split("_", 1)[0] == name or n.split("_", 1)[1] == name]
    if len(matches) != 1:
        raise HusaiError(f"unknown notebook {name!r}; available: {', '.join(names)}")
    return repo_root() / "notebooks" / f"{matches[0]}.py"


# ---------------------------------------------------------------- parameters

def read_notebook(path: Path):
    import jupytext

    return jupytext.read(path)


def notebook_parameters(nb) -> dict[str, Any]:
    """Names and literal defaults assigned in the cell tagged ``parameters``."""
    cells = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    if not cells:
        raise HusaiError("notebook has no cell tagged 'parameters'")
    params: dict[str, Any] = {}
    for node in ast.parse(cells[0].source).body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Name):
                    try:
                        params[target.id] = ast.literal_eval(node.value) if node.value else None
                    except ValueError:
                        params[target.id] = ast.unparse(node.value)
    return params


def load_profile(notebook: str, profile: str) -> dict[str, Any]:
    folder = repo_root() / "params" / profile
    if not folder.is_dir():
        known = sorted(p.name for p in (repo_root() / "params").iterdir() if p.is_dir())
        raise HusaiError(f"unknown profile {profile!r}; available: {', '.join(known)}")
    path = folder / f"{notebook}.yaml"
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise HusaiError(f"corrupt parameter file {path}: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise HusaiError(f"parameter file {path} must hold a mapping of name: value")
    return data


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """``["k=32", "seeds=[1,2]"]`` -> ``{"k": 32, "seeds": [1, 2]}`` (values parsed as YAML)."""
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise HusaiError(f"bad parameter {item!r}; expected key=value")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            out[key.strip()] = value
    return out


def resolve_params(notebook: str, nb, profile: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """Notebook defaults <- profile file <- command-line overrides; unknown names are errors
    (papermill itself only warns and silently runs with the defaults)."""
    declared = notebook_parameters(nb)
    for source, values in ((f"params/{profile}/{notebook}.yaml", load_profile(notebook, profile)),
                           ("the command line", overrides)):
        unknown = sorted(set(values) - set(declared))
        if unknown:
            raise HusaiError(f"unknown parameter {', '.join(map(repr, unknown))} for {notebook} (from {source}); "
                             f"known: {', '.join(sorted(set(declared) - set(RUNNER_PARAMS)))}")
    missing = [p for p in RUNNER_PARAMS if p not in declared]
    if missing:
        raise HusaiError(f"notebook {notebook} does not declare the runner parameters {missing}")
    return {**declared, **load_profile(notebook, profile), **overrides}


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.replace(" ", "").split(",") if s]
    except ValueError:
        raise HusaiError(f"bad seed list {text!r}; expected comma-separated integers like 42,123,456") from None
    if len(set(seeds)) != len(seeds) or not seeds:
        raise HusaiError(f"seed list {text!r} is empty or repeats a seed")
    return seeds


def pipeline_seeds(profile: str) -> list[int]:
    """The SAE seeds of the main job, shared by the per-seed and the analysis phases."""
    return [int(s) for s in load_profile("pipeline", profile).get("seeds", [42, 123, 456, 789, 1011])]
