"""Notebook regression: papermill over the smoke profile, rendered reports, index, nbval."""

import json
import os
import re
import shutil
import subprocess
import sys

import nbformat
import pytest
import yaml

from husai_core import runner
from husai_core.errors import HusaiError
from conftest import REPO


def test_main_job_runs_every_phase(smoke_runs):
    expected = {name for name, per_seed in runner.MAIN_JOB if not per_seed}
    assert expected <= set(smoke_runs["runs"])
    for key, res in smoke_runs["runs"].items():
        assert res.results["headline"], key
        m = res.manifest
        assert m["status"] == "ok" and m["params_hash"] and m["packages"]["torch"] and m["device"]
        assert m["wall_seconds"] > 0 and "git_commit" in m
        assert (res.run_dir / "notebook.ipynb").is_file() and (res.run_dir / "params.yaml").is_file()
        assert not list(res.run_dir.parent.glob(".*.partial")), "a finished run left a partial folder"


def _asset_refs(page):
    return re.findall(r'(?:src|href)="(assets/[^"]+)"', page.read_text())


def test_reports_share_plotly_and_open_offline_from_a_copied_folder(smoke_runs, tmp_path):
    from plotly.offline import get_plotlyjs

    # the run folder's report stands alone (plotly.js inline): it opens wherever it is copied
    standalone = (smoke_runs["runs"]["01_transformer"].run_dir / "report.html").read_text()
    assert "Plotly.newPlot" in standalone and get_plotlyjs() in standalone
    # the index's copies share one plotly.js in assets/, referenced relatively
    copied = shutil.copytree(smoke_runs["base"] / "reports" / "smoke", tmp_path / "moved")
    pages = sorted(copied.glob("*.html"))
    assert len(pages) > 2
    plotly_js = {ref for page in pages for ref in _asset_refs(page) if ref.endswith(".js")}
    assert len(plotly_js) == 1 and (copied / plotly_js.pop()).read_text() == get_plotlyjs()
    for page in pages:
        html = page.read_text()
        assert get_plotlyjs()[:2000] not in html and 'src="https://cdn.plot.ly' not in html
        assert all((copied / ref).is_file() for ref in _asset_refs(page)), page.name
        if page.name != "index.html":
            assert "Plotly.newPlot" in html and len(html) < 200_000, page.name  # kilobytes, not megabytes


def test_index_links_reports_with_numbers_from_results(smoke_runs):
    reports = smoke_runs["base"] / "reports" / "smoke"  # profiles other than full never write reports/index.html
    assert not (smoke_runs["base"] / "reports" / "index.html").exists()
    index = (reports / "index.html").read_text()
    res = smoke_runs["runs"]["01_transformer"].results
    assert 'href="01_transformer.html"' in index and (reports / "01_transformer.html").is_file()
    assert f"{res['headline']['held-out accuracy']:.4g}" in index


def test_transformer_results_are_coherent(smoke_runs):
    res = smoke_runs["runs"]["01_transformer"].results
    assert 0 <= res["headline"]["held-out accuracy"] <= 1
    assert res["legacy"]["answer_in_input_at"] == [5]
    fourier = res["fourier"]
    assert len(fourier["trained_energy"]) == 12  # p = 23 in the smoke profile: k = 0..11


def test_activation_results_point_at_a_loadable_cache(smoke_runs):
    from husai_core.activations import load_cache

    res = smoke_runs["runs"]["02_activations"].results
    assert not os.path.isabs(res["caches"]["default"])  # stored relative to the runs folder
    cache = load_cache(smoke_runs["base"] / "runs" / res["caches"]["default"])
    assert cache.get("blocks.0.hook_resid_post").shape == (23 * 23, 32)
    assert cache.meta["source_sha256"] and cache.meta["position"] == "answer"


def test_resume_skips_a_finished_run(smoke_runs, monkeypatch):
    monkeypatch.setenv("HUSAI_RUNS_DIR", str(smoke_runs["base"] / "runs"))
    done = smoke_runs["runs"]["02_activations"]
    again = runner.run_notebook("02_activations", "smoke", resume=True)
    assert again.run_dir == done.run_dir


@pytest.mark.parametrize("overrides,message", [
    ({"hooks": ["blocks.0.hook_resid_pst"]}, "unknown hook 'blocks.0.hook_resid_pst'"),
    ({"artifacts_dir": "/nonexistent/husai"}, "missing transformer checkpoint"),
])
def test_bad_input_inside_a_notebook_fails_cleanly(smoke_runs, monkeypatch, overrides, message):
    monkeypatch.setenv("HUSAI_RUNS_DIR", str(smoke_runs["base"] / "runs"))
    before = sorted(p.name for p in (smoke_runs["base"] / "runs" / "02_activations").iterdir())
    with pytest.raises(HusaiError, match=message) as err:
        runner.run_notebook("02_activations", "smoke", overrides, render=False)
    assert "\n" not in str(err.value)
    after = sorted(p.name for p in (smoke_runs["base"] / "runs" / "02_activations").iterdir())
    assert set(before) <= set(after)  # earlier runs are untouched; the failure is kept aside
    assert any(name.endswith(".failed") for name in after)


@pytest.mark.parametrize("name", ["01_transformer", "02_activations"])
def test_nbval_reproduces_summary_cells(smoke_runs, tmp_path, name):
    """Re-execute the papermill output with nbval: cells marked NBVAL_CHECK_OUTPUT must match."""
    executed = smoke_runs["runs"][name].run_dir / "notebook.ipynb"
    nb = nbformat.read(executed, as_version=4)
    for cell in nb.cells:  # send the re-run's results.json to a scratch folder
        if "injected-parameters" in cell.metadata.get("tags", []):
            cell.source += f"\nrun_dir = {str(tmp_path / 'rerun')!r}\n"
    target = tmp_path / f"{name}.ipynb"
    nbformat.write(nb, target)
    env = {**os.environ, "HUSAI_RUNS_DIR": str(smoke_runs["base"] / "runs")}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax",
                           "--sanitize-with", str(REPO / "tests" / "nbval_sanitize.cfg"), str(target)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "passed" in proc.stdout


def test_sae_phase_writes_one_checkpoint_per_seed(smoke_runs):
    from husai_core.experiments import load_snapshots
    from husai_core.sae import load_sae

    seeds = runner.pipeline_seeds("smoke")
    runs = [smoke_runs["runs"][f"03_sae_training-seed{s}"] for s in seeds]
    folders = {r.results["config_id"] for r in runs}
    assert len(folders) == 1  # every seed of one configuration lands in the same folder
    for r, s in zip(runs, seeds):
        head = r.results["headline"]
        assert head["seed"] == s and 0 < head["held-out L0"] <= 4 + 1e-6 and head["held-out EV"] <= 1
        assert r.results["metrics"]["heldout"]["n_rows"] < r.results["metrics"]["n_rows"]  # held-out rows are apart
        checkpoint = smoke_runs["base"] / "runs" / r.results["checkpoint"]  # stored relative to the runs folder
        sae = load_sae(checkpoint)
        assert sae.W_dec.shape == (64, 32)
        assert sorted(load_snapshots(checkpoint, sae.cfg))[-1] == sae.cfg.steps


def test_trained_vs_nulls_report(smoke_runs):
    from husai_core.comparison import metric_keys
    from husai_core.stats import ABSENT, INCONCLUSIVE, PRESENT

    res = smoke_runs["runs"]["04_trained_vs_nulls"].results
    assert res["seeds"] == runner.pipeline_seeds("smoke")
    assert set(res["null_seeds"]).isdisjoint(res["seeds"])
    cmp = res["comparison"]
    assert set(cmp["nulls"]) == {"gaussian_matched", "random_transformer", "isotropic"}
    assert {"trained", "trained (sae_lens)"} <= set(cmp["table"])
    for cond, cols in cmp["table"].items():
        assert set(metric_keys()) == set(cols), cond  # every metric over all and alive latents
        for b in cols.values():
            assert b["ci_low"] <= b["mean"] <= b["ci_high"]
    for null in cmp["nulls"]:
        t = cmp["tests"][null]["pwmcc/all"]
        assert t["lcb"] == pytest.approx(cmp["table"]["trained"]["pwmcc/all"]["ci_low"]
                                         - cmp["table"][null]["pwmcc/all"]["ci_high"])
    head = res["headline"]
    assert head["verdict"] in {PRESENT, ABSENT, INCONCLUSIVE}
    strongest = max(cmp["nulls"], key=lambda n: cmp["table"][n]["pwmcc/all"]["mean"])
    assert head["against (strongest null)"] == strongest and strongest in res["verdict"]
    assert 0 <= head["held-out dead fraction"] <= 1 and isinstance(head["converged"], bool)
    assert res["ground_truth"]["trained"]["ci_low"] <= res["ground_truth"]["trained"]["mean"]
    assert {r["condition"] for r in res["convergence"]} == {"trained", "gaussian_matched", "random_transformer"}
    assert res["backend_comparison"]["n_latents"] >= 2
    index = (smoke_runs["base"] / "reports" / "smoke" / "index.html").read_text()
    assert "04_trained_vs_nulls.html" in index and strongest in index


@pytest.mark.parametrize("profile", ["smoke", "full"])
def test_sae_settings_agree_between_phases_3_and_4(profile):
    shared = ("architecture", "d_sae", "k", "steps", "batch_size", "lr", "sae_params", "hook", "heldout_fraction",
              "split_seed", "snapshot_first")
    p3 = {**runner.notebook_parameters(runner.read_notebook(runner.resolve_notebook("03"))), **runner.load_profile("03_sae_training", profile)}
    p4 = {**runner.notebook_parameters(runner.read_notebook(runner.resolve_notebook("04"))), **runner.load_profile("04_trained_vs_nulls", profile)}
    assert {k: p3[k] for k in shared} == {k: p4[k] for k in shared}


def test_explorer_opens_on_the_main_jobs_saes():
    """09_explorer, run with the full profile or opened by hand in JupyterLab (its own defaults),
    shows the configuration and seeds `make run` trained (full profile of 03 and the pipeline)."""
    shared = ("architecture", "d_sae", "k", "steps", "batch_size", "lr", "sae_params", "hook", "layout")
    p3 = {**runner.notebook_parameters(runner.read_notebook(runner.resolve_notebook("03"))), **runner.load_profile("03_sae_training", "full")}
    own = runner.notebook_parameters(runner.read_notebook(runner.resolve_notebook("09")))
    full = {**own, **runner.load_profile("09_explorer", "full")}
    seeds = runner.load_profile("pipeline", "full")["seeds"]
    for p9 in (own, full):
        assert {k: p9[k] for k in shared} == {k: p3[k] for k in shared}
        assert p9["seeds"] == seeds
    assert own["profile"] == "full"


def test_run_metadata_names_no_machine_path(smoke_runs):
    """Run records, the executed notebook and its report, and the activation cache's metadata store
    paths relative to the runs folder, never the machine's."""
    base = str(smoke_runs["base"])
    for res in smoke_runs["runs"].values():
        for name in ("results.json", "params.yaml", "manifest.json", "notebook.ipynb", "report.html"):
            assert base not in (res.run_dir / name).read_text(), (res.run_dir, name)
    for meta in (smoke_runs["base"] / "runs" / "artifacts").glob("*/activations/*/metadata.json"):
        assert base not in meta.read_text(), meta
        params = yaml.safe_load((res.run_dir / "params.yaml").read_text())
        assert smoke_runs["base"] / "runs" / params["run_dir"] == res.run_dir


def test_index_shows_headline_figures(smoke_runs):
    reports = smoke_runs["base"] / "reports" / "smoke"
    assert (smoke_runs["runs"]["01_transformer"].run_dir / "figure.json").is_file()
    from husai_core.report import _browser

    if _browser() is None:
        pytest.skip("no Chromium: the index is built without thumbnails (tests/test_report_assets.py)")
    thumbs = re.findall(r'<img src="(assets/thumb-[0-9a-f]+\.png)"', (reports / "index.html").read_text())
    assert thumbs and all((reports / t).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for t in thumbs)



@pytest.mark.browser
def test_copied_reports_folder_draws_its_figures_offline_in_chromium(smoke_runs, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None and not os.environ.get("CI"):
        pytest.skip("no chromium (apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    moved = shutil.copytree(smoke_runs["base"] / "reports" / "smoke", tmp_path / "moved")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_context(offline=True).new_page()
            page.goto((moved / "01_transformer.html").as_uri())
            page.wait_for_selector(".js-plotly-plot .main-svg", timeout=60_000)
            assert page.evaluate("Plotly.version") and page.locator(".js-plotly-plot").count() >= 2
        finally:
            browser.close()
