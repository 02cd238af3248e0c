"""Phase 13 (scaling): the power-law fit, the grid and its resume, bad input, a smoke run."""

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats as sps

from husai_core import runner
from husai_core.errors import HusaiError
from husai_core import trends
from husai_core.phases import scaling
from conftest import REPO, runs_env

SMOKE = yaml.safe_load((REPO / "params" / "smoke" / "13_scaling.yaml").read_text())


def power_law(noise: float, seed: int = 0) -> pd.DataFrame:
    """y = C_site * tokens^0.25 * d_sae^-0.4 * lognormal(noise), two sites with their own C."""
    rng = np.random.default_rng(seed)
    rows = [{"hook": h, "tokens": t, "d_sae": d, "y": c * t ** 0.25 * d ** -0.4 * np.exp(noise * rng.standard_normal())}
            for h, c in (("a", 0.02), ("b", 0.05)) for t in (1e4, 3e4, 1e5, 3e5, 1e6) for d in (64, 256, 1024)]
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- the fit

def test_fit_recovers_a_known_power_law():
    exact = trends.fit_power_law(power_law(0.0), "y", ["tokens", "d_sae"], group="hook")
    assert exact["slopes"]["tokens"]["slope"] == pytest.approx(0.25, abs=1e-9)
    assert exact["slopes"]["d_sae"]["slope"] == pytest.approx(-0.4, abs=1e-9)
    assert exact["intercepts"] == pytest.approx({"a": np.log(0.02), "b": np.log(0.05)})
    assert exact["dof"] == 30 - 4 and exact["n_dropped"] == 0
    noisy = trends.fit_power_law(power_law(0.05), "y", ["tokens", "d_sae"], group="hook")
    for x, truth in (("tokens", 0.25), ("d_sae", -0.4)):
        s = noisy["slopes"][x]
        assert s["ci"][0] < truth < s["ci"][1]  # the 95% interval covers the true exponent
        assert s["slope"] == pytest.approx(truth, abs=0.05) and s["ci"][1] - s["ci"][0] < 0.1
    fitted = trends.predict(exact, {"tokens": [1e4, 1e6], "d_sae": [64, 64]}, group="b")
    assert fitted == pytest.approx([0.05 * 1e4 ** 0.25 * 64 ** -0.4, 0.05 * 1e6 ** 0.25 * 64 ** -0.4])


def test_single_x_fit_is_linregress_with_a_t_interval():
    frame = power_law(0.1, seed=3)
    frame = frame[(frame.hook == "a") & (frame.d_sae == 256)]
    fit = trends.fit_power_law(frame, "y", ["tokens"])
    ref = sps.linregress(np.log(frame.tokens), np.log(frame.y))
    s = fit["slopes"]["tokens"]
    assert s["slope"] == pytest.approx(ref.slope) and s["stderr"] == pytest.approx(ref.stderr)
    half = sps.t.ppf(0.975, len(frame) - 2) * ref.stderr
    assert s["ci"] == pytest.approx([ref.slope - half, ref.slope + half])
    assert fit["r2"] == pytest.approx(ref.rvalue ** 2)


def test_fit_drops_non_positive_values_and_says_when_there_is_no_ci():
    frame = pd.DataFrame({"y": [0.1, -0.2, 0.3, 0.0], "tokens": [1, 2, 4, 8]})
    fit = trends.fit_power_law(frame, "y", ["tokens"])
    assert fit["n_dropped"] == 2 and fit["n_points"] == 2 and fit["dof"] == 0
    assert fit["slopes"]["tokens"]["ci"] is None and fit["slopes"]["tokens"]["slope"] == pytest.approx(np.log(3) / np.log(4))
    one_value = trends.fit_power_law(frame.assign(tokens=5), "y", ["tokens"])
    assert one_value["slopes"]["tokens"] is None
    with pytest.raises(HusaiError, match="no column"):
        trends.fit_power_law(frame, "y", ["d_sae"])


# ---------------------------------------------------------------- bad input: one line, before anything trains

@pytest.mark.parametrize("overrides,message", [
    ({"hooks": ["hook_attn_out"]}, "unknown hook 'hook_attn_out' for the scaling grid"),
    ({"hooks": []}, "scaling grid is empty"),
    ({"layers": [2]}, "layer 2 is outside the 2-layer model"),
    ({"token_budgets": []}, "scaling grid is empty: token_budgets"),
    ({"token_budgets": [6400, 6401]}, "must be positive and distinct"),
    ({"seeds": [1]}, "at least 2 seeds"),
    ({"d_sae_grid": []}, "scaling grid is empty: d_sae_grid"),
    ({"d_sae_grid": [2]}, r"invalid sweep point \{'steps': 50, 'd_sae': 2\}: SAEConfig.k=4 must be <= d_sae=2"),
])
def test_bad_grids_fail_in_one_line_before_training(tmp_path, overrides, message):
    with pytest.raises(HusaiError, match=message) as err:
        scaling.run({**SMOKE, **overrides}, tmp_path / "art")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "art").exists()


def test_load_only_names_the_missing_artifact(tmp_path):
    with pytest.raises(HusaiError, match="missing transformer checkpoint"):
        scaling.run(SMOKE, tmp_path, load_only=True)


# ---------------------------------------------------------------- the smoke run and its resume

@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    with runs_env(tmp_path_factory.mktemp("phase_scaling")) as base:
        run = runner.run_notebook("13_scaling", "smoke")
    return {"base": base, "art": base / "runs" / "artifacts" / "smoke", "run": run}


def test_smoke_run_results_and_report(smoke):
    res = smoke["run"].results
    summary = pd.DataFrame(res["summary"])
    sites = [f"blocks.{layer}.{h}" for layer in SMOKE["layers"] for h in SMOKE["hooks"]]
    assert res["hooks"] == sites and list(dict.fromkeys(summary.hook)) == sites  # grid order, first run too
    assert len(summary) == len(sites) * len(SMOKE["token_budgets"]) * len(SMOKE["d_sae_grid"])
    assert sorted(summary.tokens.unique()) == SMOKE["token_budgets"]
    assert (summary.n_seeds == 3).all() and (summary.null_seeds == 3).all()
    assert summary.null_lcb.tolist() == pytest.approx((summary.pwmcc_ci_low - summary.null_ci_high).tolist())
    assert summary.excess.tolist() == pytest.approx((summary.pwmcc - summary.null).tolist())
    assert (summary.p_holm >= summary.null_p - 1e-12).all() and ((0 < summary.ev) & (summary.ev <= 1)).all()
    assert summary.groupby("hook").best_in_hook.sum().tolist() == [1] * len(sites)
    for m in scaling.FAMILY:  # the rest of the metric family, against the same null
        assert summary[f"{m} lcb"].tolist() == pytest.approx((summary[f"{m} ci_low"] - summary[f"{m} null_ci_high"]).tolist())
    assert (summary["pw_mcc/all"] <= summary.pwmcc + 1e-9).all()  # one-to-one signed <= best |cos|
    assert res["transformer"]["name"] == "default-2layer" and res["transformer"]["n_layers"] == 2
    # candidates follow the release-gate contract, one per configuration
    cands = res["candidates"]
    assert len(cands) == len(summary) and len({c["name"] for c in cands}) == len(cands)
    for c in cands:
        assert c["phase"] == "13_scaling" and c["metric"] == "pwmcc/all" and c["strongest_null"] == "gaussian_matched"
        assert c["lcb"] == pytest.approx(c["trained_ci"][0] - c["null_ci"][1]) and len(c["seeds"]) >= 3
        assert {"p", "p_holm", "ev_heldout", "loss_recovered", "config"} <= set(c)
    # headline slopes with CIs, from the pooled fit
    head = res["headline"]
    pooled = res["trends"]["pooled"]["pwmcc"]
    assert head["slope of log PWMCC vs log token budget"] == pytest.approx(pooled["slopes"]["tokens"]["slope"])
    lo, hi = head["slope of log PWMCC vs log d_sae, 95% CI"]
    assert lo <= head["slope of log PWMCC vs log d_sae"] <= hi
    assert res["slopes"]["slope of log PWMCC vs log d_sae"]["ci"] == [lo, hi]
    assert set(res["best_per_hook"]) == set(sites) and all(f"best at {s} (LCB vs gaussian_matched)" in head for s in sites)
    html = (smoke["run"].run_dir / "report.html").read_text()
    assert html.count("Plotly.newPlot") >= 4


def test_second_run_trains_nothing_and_load_only_rederives_the_results(smoke):
    res = smoke["run"].results
    art = smoke["art"]
    files = sorted(art.rglob("*.safetensors")) + sorted(art.glob("sweeps/13_scaling/points/*.json"))
    n_points = len(SMOKE["layers"]) * len(SMOKE["hooks"]) * len(SMOKE["token_budgets"]) * len(SMOKE["d_sae_grid"]) * 6
    assert len(list(art.glob("sweeps/13_scaling/points/*.json"))) == n_points  # trained + null seeds
    before = {f: f.stat().st_mtime_ns for f in files}
    params = yaml.safe_load((smoke["run"].run_dir / "params.yaml").read_text())
    with runs_env(smoke["base"]):  # the same runs folder: point files store paths relative to it
        again = scaling.run(params, art)
        verified = scaling.run(params, art, load_only=True)
    assert {f: f.stat().st_mtime_ns for f in files} == before  # nothing trained or rewritten
    assert len(list(art.glob("sweeps/13_scaling/points/*.json"))) == n_points  # no point computed again
    for out in (again, verified):
        assert out["headline"] == res["headline"] and out["candidates"] == res["candidates"]
        assert all(out[section] == res[section] for section in scaling.VERIFIED)


def test_module_defaults_are_the_notebook_parameters():
    declared = runner.notebook_parameters(runner.read_notebook(runner.resolve_notebook("13_scaling")))
    assert {k: v for k, v in declared.items() if k not in runner.RUNNER_PARAMS} == scaling.DEFAULTS
