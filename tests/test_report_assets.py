"""Reports folder: shared assets (plotly.js, stylesheets) and headline-figure thumbnails."""

import re
import shutil
from pathlib import Path

import plotly.graph_objects as go
import pytest

from husai_core import report
from husai_core.io import write_json

LIBRARY = "/**\n* plotly.js v9.9.9\n*/\n" + "var x = 1;\n" * 20_000  # stands in for the 4.8 MB bundle
STYLE = "body { color: red; }\n" * 200


def _page(title: str) -> str:
    return (f'<!doctype html><html><head><style type="text/css">{STYLE}</style><style>.small{{}}</style></head>'
            f'<body><h1>{title}</h1><script>{LIBRARY}</script>'
            f'<script type="text/javascript">Plotly.newPlot("{title}", [])</script></body></html>')


def _fake_run(runs: Path, notebook: str, profile: str, figure: bool = True) -> Path:
    folder = runs / notebook / f"{profile}-1"
    folder.mkdir(parents=True)
    write_json(folder / "manifest.json", {"notebook": notebook, "run_id": folder.name, "profile": profile,
                                          "status": "ok", "finished": "2026-01-01T00:00:00", "wall_seconds": 3})
    write_json(folder / "results.json", {"headline": {"value": 0.5}})
    (folder / "report.html").write_text(_page(notebook))
    if figure:
        report.headline_figure(go.Figure(go.Scatter(x=[0, 1, 2], y=[1, 3, 2])), folder)
    return folder


def _refs(page: Path) -> list[str]:
    return re.findall(r'(?:src|href)="(assets/[^"]+)"', page.read_text())


def test_published_reports_share_library_code_and_open_from_a_copy(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "_browser", lambda: None)
    runs = tmp_path / "runs"
    for nb in ("01_a", "02_b"):
        _fake_run(runs, nb, "full")
    report.build_index(runs, tmp_path / "reports", "full")
    moved = shutil.copytree(tmp_path / "reports", tmp_path / "elsewhere")
    pages = [moved / "01_a.html", moved / "02_b.html"]
    assert _refs(pages[0]) == _refs(pages[1]) and len(_refs(pages[0])) == 2  # one script, one stylesheet
    for page in pages:
        text = page.read_text()
        assert LIBRARY not in text and STYLE not in text and len(text) < 1000
        assert 'Plotly.newPlot' in text and '<style>.small{}</style>' in text  # figures and small styles stay
        assert all((moved / ref).is_file() for ref in _refs(page))
    script = next(r for r in _refs(pages[0]) if r.endswith(".js"))
    assert script.startswith("assets/plotly-v9.9.9-") and (moved / script).read_text() == LIBRARY


def test_assets_no_page_uses_are_pruned(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "_browser", lambda: None)
    folder = _fake_run(tmp_path / "runs", "01_a", "full")
    report.build_index(tmp_path / "runs", tmp_path / "reports", "full")
    old = set((tmp_path / "reports" / "assets").iterdir())
    (folder / "report.html").write_text(_page("01_a").replace("var x = 1;", "var x = 2;"))
    report.build_index(tmp_path / "runs", tmp_path / "reports", "full")
    new = set((tmp_path / "reports" / "assets").iterdir())
    assert len(old) == len(new) == 2 and len(old & new) == 1  # the stylesheet stays, the old script is gone


def test_index_without_chromium_has_no_thumbnails_and_says_so_once(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(report, "_browser", lambda: None)
    monkeypatch.setattr(report, "_noted", set())
    for nb in ("01_a", "02_b"):
        _fake_run(tmp_path / "runs", nb, "full")
        _fake_run(tmp_path / "runs", nb, "smoke")
    paths = report.build_indexes(tmp_path / "runs", tmp_path / "reports")
    assert set(paths) == {"full", "smoke"}
    for index in paths.values():
        text = index.read_text()
        assert "<img" not in text and "0.5" in text  # numbers still there
    assert capsys.readouterr().err.count("no Chromium for figure thumbnails") == 1


def test_index_draws_thumbnails_once_with_chromium(tmp_path):
    if report._browser() is None:
        pytest.skip("no Chromium on this machine (apt-get install -y chromium)")
    _fake_run(tmp_path / "runs", "01_a", "full")
    _fake_run(tmp_path / "runs", "02_b", "full", figure=False)
    index = report.build_index(tmp_path / "runs", tmp_path / "reports", "full")
    thumbs = re.findall(r'<img src="(assets/thumb-[0-9a-f]+\.png)"', index.read_text())
    assert len(thumbs) == 1  # only the run that marked a headline figure
    png = tmp_path / "reports" / thumbs[0]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    before = png.stat().st_mtime_ns
    report.build_index(tmp_path / "runs", tmp_path / "reports", "full")
    assert png.stat().st_mtime_ns == before  # keyed by the figure's content: not drawn again


def test_failed_drawing_keeps_the_index(tmp_path, monkeypatch, capsys):
    import plotly.io as pio

    monkeypatch.setattr(report, "_browser", lambda: "/usr/bin/chromium")
    monkeypatch.setattr(report, "_noted", set())

    def broken(*args, **kwargs):
        raise RuntimeError("browser crashed")

    monkeypatch.setattr(pio, "write_images", broken)
    _fake_run(tmp_path / "runs", "01_a", "full")
    index = report.build_index(tmp_path / "runs", tmp_path / "reports", "full")
    assert "<img" not in index.read_text() and "01_a.html" in index.read_text()
    assert "figure thumbnails failed (RuntimeError: browser crashed)" in capsys.readouterr().err
    assert not list((tmp_path / "reports" / "assets").glob("*.png"))
