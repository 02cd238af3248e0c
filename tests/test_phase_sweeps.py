"""Phases 5 (k / d_sae ablations) and 6 (architecture frontier) on the smoke profile.

The notebooks run through ``runner.run_notebook`` (papermill) on top of phases 1-2; the
checks are on their ``results.json`` and on the resumable sweep folders they leave behind.
"""

from pathlib import Path

import pandas as pd
import pytest
import yaml

from husai_core import runner
from husai_core.errors import HusaiError
from husai_core.experiments import calibrate_point, next_coefficient
from conftest import REPO, runs_env

ARCHITECTURES = {"relu", "topk", "batchtopk", "jumprelu", "matryoshka"}


def smoke_params(notebook: str) -> dict:
    return yaml.safe_load((REPO / "params" / "smoke" / f"{notebook}.yaml").read_text())


@pytest.fixture(scope="module")
def phases(tmp_path_factory):
    """Phases 1-2 (default layout only, to save time), then 05 and 06, in a private runs folder."""
    with runs_env(tmp_path_factory.mktemp("phase_sweeps")) as base:
        runner.run_notebook("01_transformer", "smoke", {"compare_legacy": False}, render=False)
        runner.run_notebook("02_activations", "smoke", {"layouts": ["default"]}, render=False)
        ablations = runner.run_notebook("05_ablations", "smoke")
        frontier = runner.run_notebook("06_frontier", "smoke")
    return {"base": base, "art": base / "runs" / "artifacts" / "smoke", "05": ablations, "06": frontier}


@pytest.fixture
def in_phase_runs(phases, monkeypatch):
    monkeypatch.setenv("HUSAI_RUNS_DIR", str(phases["base"] / "runs"))
    return phases


# ---------------------------------------------------------------- phase 5

def test_ablation_results_are_coherent(phases):
    res, params = phases["05"].results, smoke_params("05_ablations")
    head = res["headline"]
    assert head["best k"] in params["k_grid"] and head["best d_sae"] in params["d_sae_grid"]
    assert head["conditions"] == len(params["k_grid"]) + len(params["d_sae_grid"])
    assert "Holm" in head["correction"] and res["selection"]["k"]["correction"] == "Holm"
    for sweep, col, grid in (("k_sweep", "k", params["k_grid"]), ("d_sae_sweep", "d_sae", params["d_sae_grid"])):
        rows = pd.DataFrame(res[sweep])
        assert sorted(rows[col]) == sorted(grid)
        assert (rows.ratio > 0).all() and (rows.random > 0).all() and (rows.null > 0).all()
        assert (rows.null_seeds == len(params["seeds"])).all()  # every configuration has its gaussian_matched null
        assert rows.null_lcb.tolist() == pytest.approx((rows.pwmcc_ci_low - rows.null_ci_high).tolist())
        assert ((rows.pwmcc_ci_low <= rows.pwmcc) & (rows.pwmcc <= rows.pwmcc_ci_high)).all()
        assert ((0 < rows.ev) & (rows.ev <= 1)).all() and (rows.n_seeds == len(params["seeds"])).all()
        assert (rows.p_holm >= rows.null_p - 1e-12).all()  # Holm on the p against the gaussian_matched null
        assert rows.selected.sum() == 1
        best = rows[rows.selected].iloc[0]
        pool = rows[rows.significant] if rows.significant.any() else rows
        assert best.null_lcb == pool.null_lcb.max()
    k_best = pd.DataFrame(res["k_sweep"]).set_index("k").loc[head["best k"]]
    assert head["best k ratio vs gaussian_matched"] == pytest.approx(k_best.null_ratio)
    assert head["best k EV"] == pytest.approx(k_best.ev)
    assert res["selection"]["k"]["against"] == "gaussian_matched"
    d_rows = pd.DataFrame(res["d_sae_sweep"])
    assert res["effective_rank"] > 0
    assert d_rows.d_sae_over_rank.tolist() == pytest.approx((d_rows.d_sae / res["effective_rank"]).tolist())
    assert f"best k = {head['best k']}" in res["verdict"]
    html = (phases["05"].run_dir / "report.html").read_text()
    assert html.count("Plotly.newPlot") >= 2


def test_rerun_resumes_the_sweep_without_retraining(in_phase_runs):
    from husai_core.paths import runs_path

    first = in_phase_runs["05"].results
    sweep = runs_path(first["sweep_dir"])  # metadata stores paths relative to the runs folder
    assert sweep.is_relative_to(in_phase_runs["art"])  # lives with the artifacts, so reruns find it
    files = sorted(sweep.glob("points/*.json")) + sorted(runs_path(p["checkpoint"]) / "sae.safetensors" for p in first["points"])
    params = smoke_params("05_ablations")
    n_configs = len(params["k_grid"]) + len(params["d_sae_grid"]) - 1  # one configuration is in both sweeps
    assert len(list(sweep.glob("points/*.json"))) == 2 * n_configs * len(params["seeds"])  # trained + null
    before = {f: f.stat().st_mtime_ns for f in files}
    again = runner.run_notebook("05_ablations", "smoke", render=False)
    assert {f: f.stat().st_mtime_ns for f in files} == before  # nothing was retrained or rewritten
    assert again.results["headline"] == first["headline"]


@pytest.mark.parametrize("notebook,overrides,message", [
    ("05_ablations", {"k_grid": []}, "sweep grid entry 'k' is empty"),
    ("05_ablations", {"k_grid": [4, 256]}, r"invalid sweep point \{'k': 256\}: SAEConfig.k=256 must be <= d_sae=32"),
    ("06_frontier", {"k": 64}, r"invalid sweep point \{'architecture': 'topk'\}: SAEConfig.k=64 must be <= d_sae=32"),
])
def test_bad_sweep_specs_fail_before_training(in_phase_runs, tmp_path, notebook, overrides, message):
    with pytest.raises(HusaiError, match=message) as err:
        runner.run_notebook(notebook, "smoke", {**overrides, "sweep_dir": str(tmp_path / "sweep")}, render=False)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "sweep").exists()  # rejected up front: no sweep folder, nothing trained


# ---------------------------------------------------------------- phase 6

def test_frontier_compares_all_architectures_at_reported_sparsity(phases):
    res, params = phases["06"].results, smoke_params("06_frontier")
    k = params["k"]
    frontier = pd.DataFrame(res["frontier"]).set_index("architecture")
    assert set(frontier.index) == ARCHITECTURES
    assert (frontier.ratio > 0).all() and ((0 < frontier.ev) & (frontier.ev <= 1)).all()
    assert (frontier.null > 0).all() and frontier.null_verdict.notna().all()  # judged against gaussian_matched
    assert (frontier.target_l0 == k).all()
    assert frontier.l0_vs_target.tolist() == pytest.approx((frontier.l0 / k).tolist())
    assert frontier.loc["topk", "l0"] <= k and frontier.loc["matryoshka", "l0"] <= k
    for t in ("0.5", "0.7"):
        assert frontier[f"matched_shared_{t}"].between(0, 1).all()
    assert (frontier["matched_shared_0.7"] <= frontier["matched_shared_0.5"]).all()
    # the sparsity of ReLU and JumpReLU was calibrated, and the chosen value is what trained
    points = pd.DataFrame(res["points"])
    knobs = runner.notebook_parameters(runner.read_notebook(runner.resolve_notebook("06_frontier")))["calibrate"]
    assert set(knobs) == {"relu", "jumprelu"}
    for arch, knob in knobs.items():
        cal = res["calibration"][arch]
        assert cal["coeff_name"] == knob and cal["target_l0"] == k and 1 <= len(cal["trace"]) <= params["calibration_iters"]
        assert cal["coeff"] in [t["coeff"] for t in cal["trace"]]
        assert (points[(points.architecture == arch) & (points.condition == "trained")][knob] == cal["coeff"]).all()
        assert frontier.loc[arch, "calibrated_knob"] == knob and frontier.loc[arch, "calibrated_value"] == cal["coeff"]
    # headline: per-architecture numbers and the winner, which must be sparsity-matched when any is
    head = res["headline"]
    assert head["most consistent at matched sparsity"] in ARCHITECTURES
    for arch in ARCHITECTURES:
        row = frontier.loc[arch]
        assert head[f"{arch} (PWMCC, gaussian_matched, EV, L0)"] == pytest.approx([row.pwmcc, row.null, row.ev, row.l0])
    winner = frontier.loc[head["most consistent at matched sparsity"]]
    assert winner.selected and (winner.eligible or not frontier.eligible.any())
    assert frontier.eligible.tolist() == [abs(v - 1) <= 0.25 for v in frontier.l0_vs_target]
    assert (phases["06"].run_dir / "report.html").read_text().count("Plotly.newPlot") >= 3


# ---------------------------------------------------------------- release-gate candidates (phase 14)

def test_sweeps_offer_release_candidates_to_the_gate(in_phase_runs):
    from husai_core.phases import release_gate

    p5 = smoke_params("05_ablations")
    cands = {c["name"]: c for c in in_phase_runs["05"].results["candidates"]}
    shapes = {(p5["k_sweep_d_sae"], k) for k in p5["k_grid"]} | {(d, p5["d_sae_sweep_k"]) for d in p5["d_sae_grid"]}
    assert set(cands) == {f"05_ablations:d_sae={d},k={k}" for d, k in shapes}  # the shared configuration once
    k_rows = pd.DataFrame(in_phase_runs["05"].results["k_sweep"]).set_index("k")
    for k in p5["k_grid"]:
        c, row = cands[f"05_ablations:d_sae={p5['k_sweep_d_sae']},k={k}"], k_rows.loc[k]
        assert c["lcb"] == pytest.approx(row.null_lcb) and c["p"] == row.null_p and c["ev_heldout"] == row.ev
        assert c["seeds"] == p5["seeds"] and c["strongest_null"] == "gaussian_matched" and c["config"]["k"] == k
    frontier = in_phase_runs["06"].results["candidates"]
    assert {c["config"]["architecture"] for c in frontier} == ARCHITECTURES
    res = release_gate.run({"source_phases": ["05_ablations", "06_frontier"], "source_profile": "smoke",
                            "upstream_runs": {}, "metric": "pwmcc/all", "min_seeds": 3, "ev_floor": 0.0, "alpha": 0.05,
                            "require": ["selected_lcb"], "lcb_threshold": 0.0, "transcoder_delta_threshold": 0.0,
                            "ood_drop_limit": 0.1, "loss_recovered_floor": 0.9, "ev_drop_limit": 0.05})
    best = max(list(cands.values()) + frontier, key=lambda c: c["lcb"])
    assert res["selection"]["n_conditions"] == len(cands) + len(ARCHITECTURES) and res["selected"]["name"] == best["name"]


# ---------------------------------------------------------------- selection and calibration rules

def test_calibration_refuses_what_it_cannot_calibrate():
    with pytest.raises(HusaiError, match="calibration is for relu, jumprelu SAEs, got 'topk'"):
        calibrate_point({"architecture": "topk", "k": 4, "target_l0": 4})
    with pytest.raises(HusaiError, match="cannot calibrate 'k' of a relu SAE"):
        calibrate_point({"architecture": "relu", "l1_coeff": 0.1, "target_l0": 4, "calibrate": "k"})


def test_next_coefficient_brackets_then_interpolates():
    assert next_coefficient([{"coeff": 1.0, "l0": 100.0}], target=10) == pytest.approx(4.0)  # too dense: step up
    assert next_coefficient([{"coeff": 1.0, "l0": 2.0}], target=10) == pytest.approx(0.25)  # too sparse: step down
    # bracketed: log-log interpolation between the closest tries, strictly inside the bracket
    c = next_coefficient([{"coeff": 1.0, "l0": 100.0}, {"coeff": 100.0, "l0": 1.0}], target=10)
    assert c == pytest.approx(10.0)
    c = next_coefficient([{"coeff": 1.0, "l0": 100.0}, {"coeff": 2.0, "l0": 99.0}, {"coeff": 100.0, "l0": 1.0},
                          {"coeff": 50.0, "l0": 9.9}], target=10)
    assert 2.0 < c < 50.0
