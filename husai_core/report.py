"""Results artifacts, HTML rendering and the report index.

Every number a report shows comes from a run's ``results.json``: notebooks record their
headline numbers with :func:`record_results`, and the index reads them back. Each profile has
its own index: ``reports/index.html`` is the full profile's alone, every other profile's is
``reports/<profile>/index.html``.
"""

from __future__ import annotations

import hashlib
import html
import os
import re
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from .errors import HusaiError
from .io import atomic_write_text, read_json, to_jsonable, write_json


def record_results(run_dir: str | os.PathLike | None, results: dict[str, Any], notebook: str = "interactive") -> Path:
    """Write ``results.json`` (atomically). ``results['headline']`` holds the numbers the index shows.

    Paths inside the runs folder are stored relative to it (``runner.runs_path`` resolves them),
    so no results file names a machine's folders. Interactive sessions (no ``run_dir``) write
    under ``runs/<notebook>/interactive/``.
    """
    from .paths import runs_dir, runs_path, runs_relative

    if "headline" not in results:
        raise HusaiError("results need a 'headline' mapping of the numbers to show in the index")
    run_dir = runs_path(run_dir) if run_dir is not None else runs_dir() / notebook / "interactive"
    return write_json(run_dir / "results.json", _relative_paths(to_jsonable(results), runs_relative))


# A run's headline figure (plotly JSON), drawn as a thumbnail next to its numbers in the index.
FIGURE = "figure.json"


def headline_figure(fig: Any, run_dir: str | os.PathLike | None) -> Any:
    """Mark ``fig`` as the run's headline figure (the index shows it as a thumbnail) and return
    it: ``headline_figure(fig, run_dir).show()``. Interactive sessions (no ``run_dir``) skip it."""
    if run_dir is not None:
        from .paths import runs_path

        atomic_write_text(runs_path(run_dir) / FIGURE, fig.to_json())
    return fig


def _relative_paths(obj: Any, relative) -> Any:
    if isinstance(obj, dict):
        return {k: _relative_paths(v, relative) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_relative_paths(v, relative) for v in obj]
    return relative(obj) if isinstance(obj, str) and os.path.isabs(obj) else obj


def render_html(notebook_path: str | os.PathLike, html_path: str | os.PathLike, title: str | None = None) -> Path:
    """Render an executed notebook to standalone HTML, code hidden (the .ipynb keeps it)."""
    import nbformat
    from nbconvert import HTMLExporter

    nb = nbformat.read(str(notebook_path), as_version=4)
    if title:
        nb.metadata["title"] = title
    for cell in nb.cells:  # a closed progress bar leaves only blanks behind
        if "outputs" in cell:
            cell.outputs = [o for o in cell.outputs if o.get("output_type") != "stream" or o.get("text", "").strip()]
    exporter = HTMLExporter(template_name="lab", exclude_input=True, exclude_input_prompt=True,
                            exclude_output_prompt=True)
    body, _ = exporter.from_notebook_node(nb)
    return atomic_write_text(html_path, body)


# A run folder's report.html is standalone (plotly.js inline: it opens anywhere, e.g. after
# `husai compare --out`); the copies in reports/ share the library code through ``assets/``.
ASSETS = "assets"
_SCRIPT = re.compile(r'<script(?: type="text/javascript")?>(.*?)</script>', re.S)
_STYLE = re.compile(r'<style(?: type="text/css")?>(.*?)</style>', re.S)
_PLOTLY = re.compile(r"\s*/\*\*\s*\* plotly\.js (v[0-9.]+)")
_MIN_SCRIPT, _MIN_STYLE = 100_000, 2_000  # library code (plotly.js 4.8 MB); figures' own scripts stay inline


def _asset(folder: Path, text: str, stem: str, ext: str) -> str:
    """Store ``text`` once in ``folder/assets/`` under a content hash; return its relative path."""
    name = f"{stem}-{hashlib.sha256(text.encode()).hexdigest()[:12]}{ext}"
    if not (folder / ASSETS / name).is_file():
        atomic_write_text(folder / ASSETS / name, text)
    return f"{ASSETS}/{name}"


def publish_report(src: str | os.PathLike, folder: str | os.PathLike, name: str) -> Path:
    """Copy a rendered report into a reports folder as ``<name>.html``, its inline library code
    (plotly.js, the notebook stylesheets) moved to shared files in ``assets/`` beside it, so each
    report is kilobytes and the folder opens offline wherever it is copied."""
    folder = Path(folder)

    def script(m: re.Match) -> str:
        if len(m.group(1)) < _MIN_SCRIPT:
            return m.group(0)
        version = _PLOTLY.match(m.group(1))
        path = _asset(folder, m.group(1), f"plotly-{version.group(1)}" if version else "script", ".js")
        return f'<script src="{path}" charset="utf-8"></script>'

    def style(m: re.Match) -> str:
        if len(m.group(1)) < _MIN_STYLE:
            return m.group(0)
        return f'<link rel="stylesheet" href="{_asset(folder, m.group(1), "style", ".css")}">'

    body = _STYLE.sub(style, _SCRIPT.sub(script, Path(src).read_text(encoding="utf-8")))
    return atomic_write_text(folder / f"{name}.html", body)


def _prune_assets(folder: Path) -> None:
    """Remove assets no page of ``folder`` refers to any more (old plotly.js, old thumbnails)."""
    used = {m for page in folder.glob("*.html")
            for m in re.findall(rf'"{ASSETS}/([^"/]+)"', page.read_text(encoding="utf-8"))}
    for path in (folder / ASSETS).glob("*"):
        if path.is_file() and path.name not in used:
            path.unlink()


_noted: set[str] = set()


def _note_once(message: str) -> None:
    if message not in _noted:
        _noted.add(message)
        print(f"husai: {message}", file=sys.stderr)


def _browser() -> str | None:
    """The Chromium kaleido would use (``BROWSER_PATH``, else the system one), or None."""
    try:
        from choreographer.browsers.chromium import Chromium
    except ImportError:
        return None
    return Chromium.find_browser(skip_local=False)


def thumbnails(figures: dict[str, Path], folder: str | os.PathLike, width: int = 640, height: int = 400,
               scale: float = 0.5) -> dict[str, str]:
    """``{name: figure.json}`` -> ``{name: relative path of its PNG thumbnail in assets/}``.

    Thumbnails are keyed by the figure's content, so only new figures are drawn (all in one
    kaleido/Chromium session). Without kaleido or a Chromium, or if drawing fails: the figures
    without a thumbnail yet are left out and one note says why; the index never fails for it.
    """
    folder = Path(folder)
    look = f"{width}x{height}@{scale},no legend".encode()  # how it is drawn is part of its key
    pngs = {name: folder / ASSETS / f"thumb-{hashlib.sha256(path.read_bytes() + look).hexdigest()[:12]}.png"
            for name, path in figures.items()}
    todo = list({png: name for name, png in pngs.items() if not png.is_file()}.values())  # one per figure
    if todo and _browser() is None:
        _note_once("no Chromium for figure thumbnails (apt-get install -y chromium, or set BROWSER_PATH); "
                   "index built without them")
    elif todo:
        import plotly.io as pio

        tmp = [pngs[n].with_name(f".{pngs[n].name}.tmp.png") for n in todo]
        try:
            (folder / ASSETS).mkdir(parents=True, exist_ok=True)
            figs = [pio.from_json(figures[n].read_text()).update_layout(showlegend=False) for n in todo]  # no room
            pio.write_images(figs, tmp, format="png", width=width, height=height, scale=scale)
            for n, t in zip(todo, tmp):
                os.replace(t, pngs[n])
        except Exception as exc:  # a thumbnail is a convenience: report it, keep the index
            _note_once(f"figure thumbnails failed ({type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}); "
                       "index built without them")
        finally:
            for t in tmp:
                t.unlink(missing_ok=True)
    return {name: f"{ASSETS}/{png.name}" for name, png in pngs.items() if png.is_file()}


# The profile whose reports are the project's results: only it writes reports/index.html.
MAIN_PROFILE = "full"
_PROFILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def _latest_runs(runs: Path, profile: str | None = None) -> list[dict]:
    """The latest successful run of every notebook (and of every seed for per-seed phases), per
    profile: runs of different profiles never replace each other. ``profile`` keeps only its runs."""
    latest: dict[tuple, dict] = {}
    for path in runs.glob("[0-9][0-9]_*/*/manifest.json"):
        if path.parent.name.startswith(".") or path.parent.name.endswith(".failed"):
            continue
        try:
            manifest = read_json(path)
            results = read_json(path.parent / "results.json")
        except HusaiError:
            continue  # a damaged run is skipped, not fatal for the index
        if manifest.get("status") != "ok" or (profile is not None and manifest.get("profile") != profile):
            continue
        key = (str(manifest.get("profile")), manifest["notebook"], manifest.get("seed"))
        if key not in latest or manifest["finished"] > latest[key]["manifest"]["finished"]:
            latest[key] = {"manifest": manifest, "results": results, "dir": path.parent}
    return [latest[k] for k in sorted(latest, key=lambda k: (k[0], k[1], k[2] is not None, k[2] or 0))]


def profile_reports_dir(profile: str, reports: str | os.PathLike | None = None) -> Path:
    """Where a profile's index and reports go: ``reports/`` for the full profile, else ``reports/<profile>/``."""
    from .paths import reports_dir

    reports = Path(reports or reports_dir())
    if profile == MAIN_PROFILE:
        return reports
    if not _PROFILE_NAME.fullmatch(profile):
        raise HusaiError(f"profile name {profile!r} cannot name a reports folder")
    return reports / profile


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_fmt(v) for v in value)
    return str(value)


def build_index(runs: str | os.PathLike | None = None, reports: str | os.PathLike | None = None,
                profile: str | None = None) -> Path:
    """Copy each latest report of ``profile`` into its reports folder and write its ``index.html``.

    Profiles never mix: ``reports/index.html`` and ``reports/<name>.html`` come only from the
    full profile; any other profile gets ``reports/<profile>/index.html`` and its reports there,
    so a smoke run never touches the full-profile index. ``profile=None`` rebuilds every
    profile's index (``build_indexes``) and returns the full one.
    """
    if profile is None:
        return build_indexes(runs, reports)[MAIN_PROFILE]
    from .paths import runs_dir

    runs = Path(runs or runs_dir())
    folder = profile_reports_dir(profile, reports)
    folder.mkdir(parents=True, exist_ok=True)
    rows, verdicts = [], []
    entries = [(e["manifest"]["notebook"] + (f"-seed{e['manifest']['seed']}" if e["manifest"].get("seed") is not None
                                            else ""), e) for e in _latest_runs(runs, profile)]
    thumbs = thumbnails({name: e["dir"] / FIGURE for name, e in entries if (e["dir"] / FIGURE).is_file()}, folder)
    for name, entry in entries:
        m, res = entry["manifest"], entry["results"]
        link = ""
        if (entry["dir"] / "report.html").is_file():
            publish_report(entry["dir"] / "report.html", folder, name)
            link = f'<a href="{html.escape(name)}.html">{html.escape(name)}</a>'
        thumb = (f'<a href="{html.escape(name)}.html"><img src="{thumbs[name]}" width="320" alt="{html.escape(name)} '
                 f'headline figure"></a>' if name in thumbs else "")
        headline = "".join(f"<li><b>{html.escape(str(k))}</b>: {html.escape(_fmt(v))}</li>"
                           for k, v in res.get("headline", {}).items())
        rows.append(f"<tr><td>{link or html.escape(name)}</td><td>{html.escape(m['profile'])}</td>"
                    f"<td>{html.escape(m['finished'])}</td><td>{m.get('wall_seconds', 0):.0f}s</td>"
                    f"<td><code>{html.escape(str(m.get('git_commit') or '')[:12])}</code></td><td><ul>{headline}</ul></td>"
                    f"<td>{thumb}</td></tr>")
        if res.get("verdict"):
            verdicts.append(f"<p class='verdict'><b>{html.escape(name)}</b>: {html.escape(str(res['verdict']))}</p>")
    main = profile == MAIN_PROFILE
    title = "HUSAI reports" if main else f"HUSAI reports — {profile} profile"
    scope = (f"Latest successful <b>{MAIN_PROFILE}-profile</b> run of every phase (runs of other profiles are "
             "indexed in <code>reports/&lt;profile&gt;/</code>, never here)." if main else
             f"Latest successful run of every phase on the <b>{html.escape(profile)}</b> profile. These are not "
             f"the project's results: those come from the {MAIN_PROFILE} profile (<code>reports/index.html</code>).")
    command = f"husai run 01_transformer --profile {profile}"
    body = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}}table{{border-collapse:collapse;width:100%}}
td,th{{border:1px solid #ccc;padding:6px;vertical-align:top;text-align:left}}ul{{margin:0;padding-left:1.2em}}
.verdict{{background:#f3f7ff;border-left:4px solid #36c;padding:8px}}</style></head><body>
<h1>HUSAI — do SAEs learn the same features across seeds?{'' if main else f' <small>({html.escape(profile)} profile)</small>'}</h1>
<p>{scope} Every number below is read from that run's <code>results.json</code>;
open a report for its figures. Built {datetime.now().strftime('%Y-%m-%d %H:%M')}.</p>
{''.join(verdicts)}
<table><tr><th>report</th><th>profile</th><th>finished (UTC)</th><th>wall</th><th>commit</th><th>headline numbers</th><th>headline figure</th></tr>
{''.join(rows) or f'<tr><td colspan=7>no runs yet: run <code>{html.escape(command)}</code></td></tr>'}
</table></body></html>"""
    index = atomic_write_text(folder / "index.html", body)
    _prune_assets(folder)
    return index


def build_indexes(runs: str | os.PathLike | None = None, reports: str | os.PathLike | None = None) -> dict[str, Path]:
    """Rebuild the index of every profile that has runs, and always the full profile's."""
    from .paths import runs_dir

    runs = Path(runs or runs_dir())
    profiles = {str(e["manifest"].get("profile")) for e in _latest_runs(runs)}
    out = {MAIN_PROFILE: build_index(runs, reports, MAIN_PROFILE)}
    for profile in sorted(profiles - {MAIN_PROFILE}):
        if _PROFILE_NAME.fullmatch(profile):
            out[profile] = build_index(runs, reports, profile)
    return out
