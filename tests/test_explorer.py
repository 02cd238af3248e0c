"""The explorer (phase 12): grid scan, cached summaries, widgets driven headlessly, notebook run.

A tiny artifacts tree (random activations, SAEs of a few dozen steps) stands in for the
phases' output; the widgets are driven by setting ``.value`` / clicking, as a browser would.
"""

import json
import shutil

import nbformat
import numpy as np
import pytest
import torch

from husai_core import explorer as ex_mod
from husai_core.activations import save_cache
from husai_core.consistency import disjoint_seeds, gaussian_decoders, hungarian_match, pwmcc_matrix
from husai_core.errors import HusaiError
from husai_core.experiments import config_id, sae_config, sae_dir, train_or_load_saes
from husai_core.explorer import (NOT_CACHED, SUMMARY_FILE, Explorer, best_configuration, config_summary,
                                 overview_figure, scan_grid, summarise_grid)
from husai_core.io import read_json, write_json
from husai_core.sae import load_sae

HOOK, OTHER_HOOK = "blocks.0.hook_resid_post", "blocks.0.hook_mlp_out"
TRAIN = {"steps": 30, "batch_size": 64, "lr": 1e-3, "warmup_steps": 5}
SEEDS = [1, 2, 3]
D_IN = 16
# (hook, architecture, d_sae, sparsity, seeds) of the cached grid
POINTS = [(HOOK, "topk", 32, 4, [1, 2, 3]), (HOOK, "topk", 32, 8, [1, 2, 3]), (HOOK, "relu", 32, 1e-3, [1, 2]),
          (HOOK, "topk", 64, 4, [1]), (OTHER_HOOK, "topk", 32, 4, [1, 2])]


def cfg_of(arch, d_sae, sparsity):
    field = ex_mod.sparsity_field(arch)
    return sae_config(D_IN, {**TRAIN, "architecture": arch, "d_sae": d_sae, field: sparsity})


def folder_of(art, arch, d_sae, sparsity, hook=HOOK):
    return sae_dir(art, "default", hook, cfg_of(arch, d_sae, sparsity))


def build_tree(art):
    """Artifacts with an activation cache for two hooks and SAEs of five configurations (also the browser test's)."""
    g = torch.Generator().manual_seed(0)
    acts = {h: torch.randn(256, D_IN, generator=g) @ torch.randn(D_IN, D_IN, generator=g) for h in (HOOK, OTHER_HOOK)}
    save_cache(art / "activations" / "default", acts, {"c": torch.arange(256)}, {"note": "random test data"})
    for hook, arch, d, s, seeds in POINTS:
        cfg = cfg_of(arch, d, s)
        train_or_load_saes(sae_dir(art, "default", hook, cfg), cfg, acts[hook], seeds)
    (folder_of(art, "topk", 32, 4) / "seed9").mkdir()  # an unfinished seed: no metrics.json
    return art


@pytest.fixture(scope="module")
def base_tree(tmp_path_factory):
    return build_tree(tmp_path_factory.mktemp("explorer") / "artifacts")


@pytest.fixture
def tree(base_tree, tmp_path):
    """A private copy for tests that train or write summaries."""
    ex_mod.clear_summary_memo()
    return shutil.copytree(base_tree, tmp_path / "artifacts")


def make_explorer(art, **kw):
    kw = {"seeds": SEEDS, "train_params": TRAIN, "n_resamples": 200, "architecture": "topk", "d_sae": 32, "k": 4, **kw}
    return Explorer(art, "default", HOOK, **kw)


def independent_numbers(folder, seeds):
    """PWMCC means and matched similarities recomputed from the checkpoints, without the explorer."""
    decs = [load_sae(folder / f"seed{s}").W_dec.detach() for s in seeds]
    upper = np.triu_indices(len(seeds), k=1)
    random = gaussian_decoders(len(seeds), *decs[0].shape, disjoint_seeds(seeds, len(seeds)), trained_seeds=seeds)
    metrics = [read_json(folder / f"seed{s}" / "metrics.json") for s in seeds]
    return {"trained": pwmcc_matrix(decs)[upper].mean(), "random": pwmcc_matrix(random)[upper].mean(),
            "matched": hungarian_match(decs[0], decs[1]).similarities,
            "matched_random": hungarian_match(random[0], random[1]).similarities,
            "ev": [m["ev"] for m in metrics], "l0": [m["l0"] for m in metrics]}


# ---------------------------------------------------------------- grid scan

def test_scan_finds_every_configuration_and_its_finished_seeds(base_tree):
    grid = scan_grid(base_tree)
    assert len(grid) == len(POINTS)
    for hook, arch, d, s, seeds in POINTS:
        row = grid[(grid.config_id == config_id(cfg_of(arch, d, s))) & (grid.hook == hook)].iloc[0]
        assert (row.hook, row.architecture, row.d_sae, row.seeds, row.n_seeds) == (hook, arch, d, seeds, len(seeds))
        assert row.sparsity == pytest.approx(s) and row.layout == "default" and row.d_in == D_IN
        metrics = [read_json(f"{row.folder}/seed{x}/metrics.json") for x in seeds]
        assert row.ev == pytest.approx(np.mean([m["ev"] for m in metrics]))
    relu = grid[grid.architecture == "relu"].iloc[0]
    assert relu.sparsity_name == "l1_coeff" and relu.steps == TRAIN["steps"]
    assert set(scan_grid(base_tree, hook=OTHER_HOOK).hook) == {OTHER_HOOK}
    assert len(scan_grid(base_tree, layout="legacy")) == 0


def test_scan_skips_damaged_seeds_and_rejects_a_missing_tree(tree, tmp_path):
    (folder_of(tree, "topk", 32, 8) / "seed2" / "config.json").write_text("{not json")
    with pytest.warns(UserWarning, match="skipping unreadable SAE checkpoint"):
        grid = scan_grid(tree)
    assert grid[grid.config_id == config_id(cfg_of("topk", 32, 8))].iloc[0].seeds == [1, 3]
    with pytest.raises(HusaiError, match="missing artifacts folder"):
        scan_grid(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    assert scan_grid(tmp_path / "empty").empty


# ---------------------------------------------------------------- summaries

def test_summary_matches_independent_pwmcc_and_is_cached_on_disk(tree, monkeypatch):
    folder = folder_of(tree, "topk", 32, 4)
    s = config_summary(folder, n_resamples=200)
    ref = independent_numbers(folder, SEEDS)
    assert s["seeds"] == SEEDS  # seed9 is unfinished and left out
    assert s["trained"]["mean"] == pytest.approx(ref["trained"], abs=1e-6)
    assert s["random"]["mean"] == pytest.approx(ref["random"], abs=1e-6)
    assert s["ratio"] == pytest.approx(ref["trained"] / ref["random"], rel=1e-5)
    assert s["lcb"] == pytest.approx(s["trained"]["ci_low"] - s["random"]["ci_high"])
    assert s["match"]["trained"]["similarities"] == pytest.approx(list(ref["matched"]))
    assert s["match"]["random"]["similarities"] == pytest.approx(list(ref["matched_random"]))
    assert s["ev"] == pytest.approx(np.mean(ref["ev"])) and s["per_seed"]["l0"] == pytest.approx(ref["l0"])

    stored = read_json(folder / SUMMARY_FILE)
    assert stored["summary"]["trained"] == s["trained"] and stored["fingerprint"]["seeds"] == SEEDS
    calls = []
    real = ex_mod.summary._compute_summary
    monkeypatch.setattr(ex_mod.summary, "_compute_summary", lambda *a: calls.append(a) or real(*a))
    ex_mod.clear_summary_memo()
    assert config_summary(folder, n_resamples=200)["trained"] == s["trained"] and not calls  # read from the file
    assert config_summary(folder, n_resamples=200) is config_summary(folder, n_resamples=200)  # memoised
    metrics = read_json(folder / "seed2" / "metrics.json")
    write_json(folder / "seed2" / "metrics.json", {**metrics, "ev": 0.123456})  # a seed was retrained
    assert config_summary(folder, n_resamples=200)["per_seed"]["ev"][1] == pytest.approx(0.123456) and len(calls) == 1
    with pytest.raises(HusaiError, match="needs at least 2 finished seeds"):
        config_summary(folder_of(tree, "topk", 64, 4))


def test_grid_table_overview_and_best_configuration(tree):
    table = summarise_grid(scan_grid(tree), n_resamples=200)
    assert len(table) == sum(len(p[4]) >= 2 for p in POINTS)  # the one-seed configuration cannot be compared
    assert (table.permutation_p_holm >= table.permutation_p - 1e-12).all()
    best = best_configuration(table)
    assert best["lcb"] == pytest.approx(table.lcb.max())
    assert best_configuration(table, "ratio")["ratio"] == pytest.approx(table.ratio.max())
    fig = overview_figure(table)
    assert fig.data and {t.name for t in fig.data} >= {"topk d_sae 32", "relu d_sae 32"}
    empty = overview_figure(table.iloc[0:0])
    assert not empty.data and "no configuration" in empty.layout.annotations[-1].text
    assert best_configuration(table.iloc[0:0]) is None


# ---------------------------------------------------------------- widgets

def test_moving_the_k_slider_updates_the_figure(tree):
    ex = make_explorer(tree)
    assert ex.state["status"] == "cached" and ex.state["config_id"] == config_id(cfg_of("topk", 32, 4))
    assert ex.k.options == tuple((str(v), v) for v in ex_mod.DEFAULT_K)  # with train-on-demand: any k on offer

    ex.k.value = 8
    folder = folder_of(tree, "topk", 32, 8)
    ref = independent_numbers(folder, SEEDS)
    assert ex.state["config_id"] == folder.name and ex.summary["config_id"] == folder.name
    trained, random = ex.trace("trained PWMCC"), ex.trace("random PWMCC")
    assert trained.y[0] == pytest.approx(ref["trained"], abs=1e-6)
    assert random.y[0] == pytest.approx(ref["random"], abs=1e-6)
    assert trained.y[0] - trained.error_y.arrayminus[0] == pytest.approx(ex.summary["trained"]["ci_low"])
    assert trained.y[0] + trained.error_y.array[0] == pytest.approx(ex.summary["trained"]["ci_high"])
    assert list(ex.trace("EV").y) == pytest.approx(ref["ev"]) and list(ex.trace("L0").y) == pytest.approx(ref["l0"])
    assert list(ex.trace("trained matched |cos|").x) == pytest.approx(list(ref["matched"]))
    assert list(ex.trace("random matched |cos|").x) == pytest.approx(list(ref["matched_random"]))
    assert folder.name in ex.figure.layout.title.text and folder.name in ex.summary_html.value
    assert ex.figure.layout.shapes[0].y0 == 8  # the target L0 line
    assert ex.train_button.disabled  # every requested seed is cached


def test_uncached_point_trains_on_demand_and_the_grid_grows(tree):
    ex = make_explorer(tree)
    before = len(ex.grid)
    ex.d_sae.value = 64
    ex.k.value = 8
    assert ex.state["status"] == "not cached" and ex.state["message"] == NOT_CACHED
    assert ex.figure.layout.title.text == NOT_CACHED and len(ex.trace("trained PWMCC").y) == 0
    assert len(ex.trace("trained matched |cos|").x) == 0 and ex.summary is None
    assert not ex.train_button.disabled and ex.state["seeds_missing"] == SEEDS

    ex.train_button.click()
    folder = folder_of(tree, "topk", 64, 8)
    assert ex.train_progress.value == ex.train_progress.max == len(SEEDS)
    assert ex.state["status"] == "cached" and ex.state["config_id"] == folder.name
    assert len(ex.grid) == before + 1 and len(scan_grid(tree, hook=HOOK)) == before + 1
    assert (folder / SUMMARY_FILE).is_file()
    assert ex.trace("trained PWMCC").y[0] == pytest.approx(independent_numbers(folder, SEEDS)["trained"], abs=1e-6)

    ex.k.value = 4  # one seed cached: the missing ones are trained, the existing one is kept
    first = (folder_of(tree, "topk", 64, 4) / "seed1" / "sae.safetensors").stat().st_mtime_ns
    assert ex.state["status"] == "not cached" and ex.state["seeds_cached"] == [1]
    assert ex.state["seeds_missing"] == [2, 3]
    ex.on_train()
    assert ex.train_progress.max == 2 and ex.state["status"] == "cached"
    assert (folder_of(tree, "topk", 64, 4) / "seed1" / "sae.safetensors").stat().st_mtime_ns == first


def test_train_point_and_architecture_switch(tree):
    ex = make_explorer(tree)
    ex.architecture.value = "relu"
    assert ex.k.description == "L1 coeff" and 1e-3 in [v for _, v in ex.k.options]
    assert ex.state["status"] == "cached" and ex.state["config_id"] == config_id(cfg_of("relu", 32, 1e-3))
    ex.architecture.value = "batchtopk"
    assert ex.state["status"] == "not cached" and ex.k.description == "k"
    summary = ex.train_point(d_sae=32, k=4, seeds=[1, 2])
    assert summary["config_id"] == config_id(cfg_of("batchtopk", 32, 4)) == ex.state["config_id"]
    assert ex.state["seeds_missing"] == [3] and not ex.train_button.disabled


def test_invalid_point_bad_seeds_and_train_on_demand_off(tree):
    ex = make_explorer(tree)
    ex.k.value = 64  # > d_sae 32
    assert ex.state["status"] == "invalid" and "k=64 must be <= d_sae=32" in ex.state["message"]
    assert ex.train_button.disabled and len(ex.trace("EV").y) == 0
    ex.k.value = 4
    ex.seeds.value = "1, x"
    assert "bad seed list" in ex.status.value and ex.train_button.disabled
    with pytest.raises(HusaiError, match="d_sae=48 is not in the cached grid"):
        ex.select("topk", d_sae=48)

    off = make_explorer(tree, train_on_demand=False)
    assert off.architecture.options == ("relu", "topk")
    assert [v for _, v in off.d_sae.options] == [32, 64] and [v for _, v in off.k.options] == [4, 8]
    off.d_sae.value = 64  # k 4 has one seed here
    assert off.state["status"] == "not cached" and "train-on-demand is off" in off.state["message"]
    assert off.train_button.disabled
    grid = len(off.grid)
    off.train_button.click()
    assert len(scan_grid(tree, hook=HOOK)) == grid and off.status.value == "train-on-demand is off"


def test_an_empty_tree_starts_from_nothing(base_tree, tmp_path):
    art = tmp_path / "artifacts"
    shutil.copytree(base_tree / "activations", art / "activations")
    ex = Explorer(art, "default", HOOK, seeds=[1, 2], train_params={**TRAIN, "d_sae": 32, "k": 4}, n_resamples=100)
    assert ex.grid.empty and ex.state["status"] == "not cached" and ex._point() == ("topk", 32, 4)
    ex.train_button.click()
    assert ex.state["status"] == "cached" and len(ex.grid) == 1
    (tmp_path / "bare").mkdir()
    off = Explorer(tmp_path / "bare", train_on_demand=False)
    assert off.state["status"] == "empty" and off.architecture.options == () and off.train_button.disabled
    on = Explorer(tmp_path / "bare")  # nothing cached and no activations to train on: says why
    assert on.state["status"] == "invalid" and "missing activation cache" in on.state["message"]


def test_static_figure_mode_has_the_same_data(tree):
    ex = make_explorer(tree, live=False)
    assert type(ex.figure).__name__ == "Figure" and ex.figure not in ex.widget.children
    ref = independent_numbers(folder_of(tree, "topk", 32, 4), SEEDS)
    assert ex.trace("trained PWMCC").y[0] == pytest.approx(ref["trained"], abs=1e-6)


# ---------------------------------------------------------------- the notebook

def test_notebook_smoke_run_on_a_tiny_tree(tree, monkeypatch):
    from husai_core import runner

    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the kernel trains tiny SAEs: no thread contention
    before = len(scan_grid(tree))
    res = runner.run_notebook("09_explorer", "smoke", {
        "artifacts_dir": str(tree), "seeds": SEEDS, "d_sae": 32, "k": 4, "steps": TRAIN["steps"],
        "batch_size": TRAIN["batch_size"], "lr": TRAIN["lr"], "sae_params": {"warmup_steps": TRAIN["warmup_steps"]},
        "demo_points": [{"d_sae": 64, "k": 8}], "k_values": [4, 8], "d_sae_values": [32, 64]})
    head = res.results["headline"]
    assert head["cached configurations"] == before + 1 == len(scan_grid(tree))  # the demo point was trained
    assert head["comparable configurations (≥ 2 seeds)"] == len(res.results["table"])
    assert res.results["explorer_state"]["status"] == "cached"
    assert res.results["explorer_state"]["config_id"] == config_id(cfg_of("topk", 32, 4))
    best = max(res.results["table"], key=lambda r: r["lcb"])
    assert head["best-LCB configuration"] == best["config_id"] and res.results["verdict"].startswith("Best configuration")
    html = (res.run_dir / "report.html").read_text()
    assert html.count("Plotly.newPlot") >= 2  # the explorer snapshot and the grid overview
    nb = nbformat.read(res.run_dir / "notebook.ipynb", as_version=4)
    state = json.dumps(nb.metadata.get("widgets", {}))
    assert "AnyModel" not in state  # batch runs keep the ~5 MB FigureWidget out of the report
