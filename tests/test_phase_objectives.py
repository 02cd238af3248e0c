"""Phases 7 (adaptive L0) and 8 (consistency objectives) end to end on the smoke profile."""


import pytest

from husai_core import runner
from husai_core.cli import main
from husai_core.stats import ABSENT, INCONCLUSIVE, PRESENT
from conftest import runs_env


@pytest.fixture(scope="module")
def phase_runs(tmp_path_factory):
    """01 and 02 (smoke) for the artifacts, then 07 and 08, in a scratch runs folder."""
    with runs_env(tmp_path_factory.mktemp("phases78")) as base:
        runner.run_notebook("01_transformer", "smoke", render=False)
        runner.run_notebook("02_activations", "smoke", render=False)
        runs = {name: runner.run_notebook(name, "smoke") for name in ("07_adaptive_l0", "08_consistency_objectives")}
        # an EV floor nobody reaches: the search is reused from the sweep folder, nothing is retrained
        runs["07_none"] = runner.run_notebook("07_adaptive_l0", "smoke", {"ev_floor": 0.999}, render=False)
    return {"base": base, **runs}


def test_adaptive_l0_results(phase_runs):
    run = phase_runs["07_adaptive_l0"]
    res, params = run.results, runner.load_profile("07_adaptive_l0", "smoke")
    assert (run.run_dir / "report.html").is_file() and run.manifest["status"] == "ok"
    sel = res["selection"]
    assert sel["status"] == "selected" and sel["correction"] == "Holm" and sel["n_conditions"] == len(params["k_candidates"])
    cands = res["candidates"]
    assert [c["k"] for c in cands] == params["k_candidates"]
    assert sum(c["selected"] for c in cands) == 1
    for c in cands:
        assert c["p_holm"] >= c["permutation_p"] and c["pwmcc_ci_low"] <= c["pwmcc"] <= c["pwmcc_ci_high"]
        assert c["eligible"] == (c["ev"] >= params["ev_floor"])
    winner = next(c for c in cands if c["selected"])
    assert winner["lcb"] == max(c["lcb"] for c in cands if c["eligible"])
    conf = res["confirmation"]
    assert conf["winner_k"] == winner["k"] and conf["control_k"] == params["control_k"]
    assert conf["seeds"] == params["retrain_seeds"]
    gain = conf["gain"]
    assert gain["ci_low"] <= gain["gain"] <= gain["ci_high"]
    assert gain["gain"] == pytest.approx(conf["arms"]["winner"]["trained"]["mean"] - conf["arms"]["control"]["trained"]["mean"])
    assert conf["arms"]["winner"]["verdict"]["label"] in {PRESENT, ABSENT, INCONCLUSIVE}
    h = res["headline"]
    assert h["selected k"] == winner["k"] and h["gain 95% CI"] == [gain["ci_low"], gain["ci_high"]]
    assert "Holm" in h["correction"] and "Holm" in res["verdict"]


def test_adaptive_l0_reports_when_no_candidate_reaches_the_floor(phase_runs):
    res = phase_runs["07_none"].results
    assert res["selection"]["status"] == "none" and res["selection"]["row"] is None
    assert res["confirmation"] is None and not any(c["eligible"] or c["selected"] for c in res["candidates"])
    assert res["headline"]["selected k"] == "none" and "No candidate reaches the EV floor" in res["verdict"]


def test_consistency_objectives_results(phase_runs):
    run = phase_runs["08_consistency_objectives"]
    res, params = run.results, runner.load_profile("08_consistency_objectives", "smoke")
    assert (run.run_dir / "report.html").is_file() and run.manifest["status"] == "ok"
    summary = res["summary"]
    objectives = ["alignment", "assignment"]
    assert [(r["objective"], r["lam"]) for r in summary] == [(o, lam) for o in objectives for lam in params["lambdas"]]
    for r in summary:
        assert 0 <= r["alignment"] <= 1 and 0 <= r["cross_pwmcc"] <= 1
        assert r["lcb"] == pytest.approx(r["pwmcc_ci_low"] - r["random_ci_high"])
        assert len(r["seed_alignment"]) == len(params["seeds"])
        assert len(r["cross_pairs"]) == len(params["seeds"]) * len(params["control_seeds"])
        if r["lam"] == 0:
            assert r["ev_drop"] == 0 and r["gain"] == 0 and not r["collapse"]
    gates = res["gates"]
    assert len(gates["gates"]) == 4 * len(objectives)  # difference, LCB, EV drop, collapse per objective
    assert gates["pass_all"] == all(g["passed"] for g in gates["gates"])
    assert res["headline"]["acceptance"] == ("pass" if gates["pass_all"] else "fail")
    for o in objectives:
        assert res["selection"][o]["correction"] == "Holm"
        assert res["selection"][o]["n_conditions"] == sum(1 for lam in params["lambdas"] if lam > 0)
    # the regularised SAEs were trained with the objective and logged it
    points = [p for p in res["points"] if p["objective"] == "assignment" and p["lam"] > 0]
    assert points and all(p["n_solves"] >= 1 for p in points)
    assert all(0 <= p["final_penalty"] <= 1 for p in points)


def test_gate_command_on_a_phase8_run(phase_runs, capsys):
    run = phase_runs["08_consistency_objectives"]
    path = str(run.run_dir / "results.json")
    assert main(["gate", path]) == 0
    expected = 0 if run.results["gates"]["pass_all"] else 2
    assert main(["gate", path, "--fail-on-gate-fail"]) == expected
    assert "pass_all:" in capsys.readouterr().out
