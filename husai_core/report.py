"""Results artifacts, HTML rendering and the report index.

Every number a report shows comes from a run's ``results.json``: notebooks record their
headline numbers with :func:`record_results`, and the index reads them back. Each profile has
its own index: ``reports/index.html`` is the full profile's alone, every other profile's is
``reports/<profile>/index.html``.
"""

from __future__ import annotations

import html
import os
import re
import shutil
from datetime import datetime
from pathlib import Path
from typing import Any

from .errors import HusaiError
from .io import atomic_write_text, read_json, to_jsonable, write_json


def record_results(run_dir: str | os.PathLike | None, results: dict[str, Any], notebook: str = "interactive") -> Path:
    """Write ``results.json`` (atomically). ``results['headline']`` holds the numbers the index shows.

    Interactive sessions (no ``run_dir``) write under ``runs/<notebook>/interactive/``.
    """
    if "headline" not in results:
        raise HusaiError("results need a 'headline' mapping of the numbers to show in the index")
    if run_dir is None:
        from .runner import runs_dir

        run_dir = runs_dir() / notebook / "interactive"
    return write_json(Path(run_dir) / "results.json", to_jsonable(results))


def render_html(notebook_path: str | os.PathLike, html_path: str | os.PathLike, title: str | None = None) -> Path:
    """Render an executed notebook to standalone HTML, code hidden (the .ipynb keeps it)."""
    import nbformat
    from nbconvert import HTMLExporter

    nb = nbformat.read(str(notebook_path), as_version=4)
    if title:
        nb.metadata["title"] = title
    exporter = HTMLExporter(template_name="lab", exclude_input=True, exclude_input_prompt=True,
                            exclude_output_prompt=True)
    body, _ = exporter.from_notebook_node(nb)
    return atomic_write_text(html_path, body)


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
    from .runner import reports_dir

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
    from .runner import runs_dir

    runs = Path(runs or runs_dir())
    folder = profile_reports_dir(profile, reports)
    folder.mkdir(parents=True, exist_ok=True)
    rows, verdicts = [], []
    for entry in _latest_runs(runs, profile):
        m, res = entry["manifest"], entry["results"]
        name = m["notebook"] + (f"-seed{m['seed']}" if m.get("seed") is not None else "")
        link = ""
        if (entry["dir"] / "report.html").is_file():
            shutil.copyfile(entry["dir"] / "report.html", folder / f"{name}.html")
            link = f'<a href="{html.escape(name)}.html">{html.escape(name)}</a>'
        headline = "".join(f"<li><b>{html.escape(str(k))}</b>: {html.escape(_fmt(v))}</li>"
                           for k, v in res.get("headline", {}).items())
        rows.append(f"<tr><td>{link or html.escape(name)}</td><td>{html.escape(m['profile'])}</td>"
                    f"<td>{html.escape(m['finished'])}</td><td>{m.get('wall_seconds', 0):.0f}s</td>"
                    f"<td><code>{html.escape(str(m.get('git_commit') or '')[:12])}</code></td><td><ul>{headline}</ul></td></tr>")
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
<table><tr><th>report</th><th>profile</th><th>finished (UTC)</th><th>wall</th><th>commit</th><th>headline numbers</th></tr>
{''.join(rows) or f'<tr><td colspan=6>no runs yet: run <code>{html.escape(command)}</code></td></tr>'}
</table></body></html>"""
    return atomic_write_text(folder / "index.html", body)


def build_indexes(runs: str | os.PathLike | None = None, reports: str | os.PathLike | None = None) -> dict[str, Path]:
    """Rebuild the index of every profile that has runs, and always the full profile's."""
    from .runner import runs_dir

    runs = Path(runs or runs_dir())
    profiles = {str(e["manifest"].get("profile")) for e in _latest_runs(runs)}
    out = {MAIN_PROFILE: build_index(runs, reports, MAIN_PROFILE)}
    for profile in sorted(profiles - {MAIN_PROFILE}):
        if _PROFILE_NAME.fullmatch(profile):
            out[profile] = build_index(runs, reports, profile)
    return out
