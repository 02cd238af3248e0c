"""Project hygiene: one list of requirements, paired output-free notebooks."""

import re

import jupytext
import nbformat
import yaml

from conftest import REPO


def _requirements():
    return [l.strip() for l in (REPO / "requirements.txt").read_text().splitlines() if l.strip() and not l.startswith("#")]


def test_environment_yml_equals_requirements():
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert [p for p in pip if p != "-e ."] == _requirements()
    assert "python=3.11" in env["dependencies"]


def test_torch_is_pinned_to_the_cpu_wheel():
    assert "torch==2.13.0" in _requirements()
    assert all(not re.match(r"^torch\s*([<>~!]|$)", r) for r in _requirements())


def test_notebooks_are_paired_output_free_and_in_sync():
    sources = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.py"))
    assert sources
    for py in sources:
        ipynb = py.with_suffix(".ipynb")
        assert ipynb.is_file(), f"{py.name} has no paired .ipynb (run `make notebooks`)"
        nb = nbformat.read(ipynb, as_version=4)
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), f"{ipynb.name} has outputs"
        text = jupytext.read(py)
        assert [c.source for c in nb.cells] == [c.source for c in text.cells], f"{ipynb.name} is out of sync with {py.name}"
        tags = [c.metadata.get("tags", []) for c in nb.cells]
        assert ["parameters"] in tags, f"{py.name} has no parameters cell"


def test_every_notebook_marks_a_headline_figure_for_the_index():
    """The index shows each phase's headline figure as a thumbnail: every notebook marks one."""
    for py in sorted((REPO / "notebooks").glob("[0-9][0-9]_*.py")):
        assert "headline_figure(" in py.read_text(), f"{py.name} marks no headline figure (report.headline_figure)"
