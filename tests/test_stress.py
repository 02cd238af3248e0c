"""Phase 11 (stress): OOD split logic, the probe, transcoders on a planted map, hooks, the notebook.

The notebook runs on the smoke profile over a tiny transformer and cache built here with
library calls (seconds), not through phases 1-2; ``stress.run(load_only=True)`` must then
re-derive its results from the artifacts alone (what ``husai verify`` does).
"""

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from husai_core import runner
from husai_core.errors import HusaiError
from husai_core.ood import fit_class_probe, ood_split, class_probe_accuracy
from husai_core.phases import stress
from husai_core.sae import SAEConfig
from husai_core.transcoders import (hook_rows, mlp_hooks, planted_map, train_or_load_transcoders,
                                    transcoder_data)
from conftest import REPO, runs_env


def one_line(err) -> str:
    msg = str(err.value)
    assert "\n" not in msg and msg
    return msg


# ---------------------------------------------------------------- OOD split

def test_split_by_label_fraction_puts_the_lower_half_in():
    a = torch.arange(10).repeat_interleave(3)
    s = ood_split(a, by="a", below=0.5)
    assert (a[s.in_idx] < 5).all() and (a[s.out_idx] >= 5).all()
    assert sorted(s.in_idx.tolist() + s.out_idx.tolist()) == list(range(30))
    assert s.rule == "a < 5 (in) vs a >= 5 (out)"


def test_split_by_dataset_names_and_patterns():
    names = np.array(["wiki_en", "code", "wiki_de", "books", "code"], dtype=object)
    s = ood_split(names, by="dataset", in_values=["wiki*", "books"])
    assert s.in_idx.tolist() == [0, 2, 3] and s.out_idx.tolist() == [1, 4]
    s = ood_split(torch.tensor([3, 1, 4, 1, 5]), by="b", in_values=[1, 5])
    assert s.in_idx.tolist() == [1, 3, 4]


@pytest.mark.parametrize("values,kw,message", [
    ([3, 3, 3], {"below": 0.5}, "OOD split b < 3.5 .* leaves no out-of-distribution rows"),
    (["wiki", "code"], {"in_values": ["*"]}, "leaves no out-of-distribution rows"),
    (["wiki", "code"], {"in_values": ["news"]}, r"\['news'\] match no row; present: code, wiki"),
    ([1, 2], {"in_values": []}, "ood_in is an empty list"),
    ([1, 2], {}, "give exactly one rule"),
    ([1, 2], {"in_values": [1], "below": 0.5}, "give exactly one rule"),
    ([1, 2], {"below": 1.5}, r"ood_below must be a fraction in \(0, 1\)"),
    (["wiki", "code"], {"below": 0.5}, "ood_below needs numeric values"),
    ([], {"below": 0.5}, "there are no rows"),
])
def test_bad_or_empty_splits_fail_in_one_line(values, kw, message):
    with pytest.raises(HusaiError, match=message) as err:
        ood_split(np.array(values, dtype=object), by="b", **kw)
    one_line(err)


def test_probe_reads_a_linear_class_and_is_deterministic():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 5, (600,), generator=g)
    z = torch.nn.functional.one_hot(y, 5).float() @ torch.randn(5, 12, generator=g) + 0.1 * torch.randn(600, 12, generator=g)
    probe = fit_class_probe(z[:400], y[:400])
    assert class_probe_accuracy(probe, z[400:], y[400:]) > 0.95
    assert class_probe_accuracy(probe, z[400:], (y[400:] + 1) % 5) < 0.1
    torch.testing.assert_close(fit_class_probe(z[:400], y[:400]).weight, probe.weight, rtol=0, atol=0)


# ---------------------------------------------------------------- transcoders

def test_transcoders_recover_a_planted_map_that_saes_do_not(tmp_path):
    # x = c A, target = c B through a sparse code c: the transcoder's decoder should find B, an
    # SAE on x finds A (the input's dictionary), whose rows say nothing about B
    x, t, in_atoms, out_atoms = planted_map(4096, 16, 16, 24, 3, seed=0)
    split = (torch.arange(3584), torch.arange(3584, 4096))
    data = transcoder_data("trained", x, t, split)
    cfg = dict(architecture="topk", d_in=16, d_sae=48, k=3, steps=300, batch_size=128, lr=1e-2, warmup_steps=5,
               dead_tokens=1024)
    tcfg = SAEConfig(**cfg, transcoder=True, d_out=16)
    hooks = ("in", "out")
    tcs = train_or_load_transcoders(tmp_path, "synthetic", hooks, tcfg, data, [0, 1])
    from husai_core.experiments import train_or_load_saes

    (plain,) = train_or_load_saes(tmp_path / "sae", SAEConfig(**cfg), x[split[0]], [0], heldout=x[split[1]])
    matched = []
    for tc in tcs:
        assert tc.metrics["heldout"]["ev"] > 0.7 and tc.metrics["heldout"]["target"] == "x_target"
        cos = (tc.sae.W_dec.detach() @ out_atoms.T).abs()
        assert cos.max(dim=0).values.mean() > 0.9  # best latent per planted target atom
        matched.append(tc.sae.W_dec.detach()[cos.argmax(dim=0)])  # that latent, atom by atom
    sae_dec = plain.sae.W_dec.detach()
    assert (sae_dec @ in_atoms.T).abs().max(dim=0).values.mean() > 0.9
    assert (sae_dec @ out_atoms.T).abs().max(dim=0).values.mean() < 0.75
    # the two seeds' transcoders agree on the planted map: the latents they match to each atom align
    assert (matched[0] * matched[1]).sum(1).abs().mean() > 0.85
    # stored by key: load_only returns the same transcoders and refuses a seed that was never trained
    again = train_or_load_transcoders(tmp_path, "synthetic", hooks, tcfg, data, [0, 1], load_only=True)
    torch.testing.assert_close(again[1].sae.W_dec, tcs[1].sae.W_dec, rtol=0, atol=0)
    with pytest.raises(HusaiError, match=r"seed7: missing") as err:
        train_or_load_transcoders(tmp_path, "synthetic", hooks, tcfg, data, [0, 7], load_only=True)
    one_line(err)


def test_gaussian_null_keeps_the_joint_covariance_but_not_the_nonlinearity():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(20000, 4, generator=g)
    t = torch.relu(x @ torch.randn(4, 3, generator=g))
    split = (torch.arange(16000), torch.arange(16000, 20000))
    null = transcoder_data("gaussian_matched", x, t, split, data_seed=3)
    joint_real = torch.cov(torch.cat([x[split[0]], t[split[0]]], 1).T)
    joint_null = torch.cov(torch.cat([null.train, null.train_target], 1).T)
    torch.testing.assert_close(joint_null, joint_real, atol=0.08, rtol=0.05)
    assert (null.train_target < 0).float().mean() > 0.2  # ReLU outputs are never negative: structure gone
    with pytest.raises(HusaiError, match="input rows .* and target rows .* differ"):
        transcoder_data("trained", x, t[:10], split)


def test_mlp_input_hook_follows_the_layernorm():
    from husai_core.model import ModelConfig

    assert mlp_hooks(ModelConfig(), 0)[:2] == ("blocks.0.hook_resid_mid", "blocks.0.hook_mlp_out")
    assert mlp_hooks(ModelConfig(n_layers=2, normalization_type="LN"), 1)[:2] == ("blocks.1.ln2.hook_normalized",
                                                                                 "blocks.1.hook_mlp_out")
    with pytest.raises(HusaiError, match="layer 2 does not exist in a 1-layer model"):
        mlp_hooks(ModelConfig(), 2)


# ---------------------------------------------------------------- the phase on a tiny transformer

HOOKS = ["blocks.0.hook_resid_post", "blocks.0.hook_resid_mid", "blocks.0.hook_mlp_out"]


def tiny_artifacts(art: Path, hooks: list[str]) -> Path:
    """Phases 1-2 in miniature: a p = 23 transformer (150 steps) and its cache at ``hooks``."""
    from husai_core.activations import extract_activations, save_cache
    from husai_core.model import ModelConfig, TrainConfig, train_or_load
    from husai_core.task import TaskConfig, make_task

    ckpt = train_or_load(art / "transformer" / "default", TaskConfig(p=23), ModelConfig(d_model=32, d_mlp=64),
                         TrainConfig(steps=150, eval_every=50, lr=3e-3), device="cpu", progress=False)
    data = make_task(ckpt.task)
    acts = extract_activations(ckpt.model, data.tokens, hooks, position="answer", answer_pos=data.answer_pos)
    save_cache(art / "activations" / "default", acts, {"a": data.a, "b": data.b, "c": data.labels},
               {"layout": "default", "position": "answer", "answer_pos": data.answer_pos})
    return art


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("stress")
    art = tiny_artifacts(base / "art", HOOKS[:1] + HOOKS[2:])  # resid_mid is not cached: extracted on the fly
    with runs_env(base):
        res = runner.run_notebook("11_stress", "smoke", {"artifacts_dir": str(art)})
    return {"art": art, "run": res}


def test_smoke_run_reports_transcoders_and_ood(smoke_run):
    res, params = smoke_run["run"].results, yaml.safe_load((REPO / "params/smoke/11_stress.yaml").read_text())
    tc, ood = res["transcoders"], res["ood"]
    assert tc["hooks"]["input"] == "blocks.0.hook_resid_mid" and "no LayerNorm" in tc["hooks"]["why"]
    assert "extracted" in tc["hooks"]["rows_from"]["blocks.0.hook_resid_mid"]
    assert [(p["d_sae"], p["k"]) for p in tc["grid"]] == [(32, 2), (32, 4)]
    for p in tc["grid"]:
        d = p["delta"]
        t, s = (p[a]["comparison"]["table"]["trained"]["pwmcc/all"] for a in ("transcoder", "sae"))
        assert d["lcb"] == pytest.approx(t["ci_low"] - s["ci_high"]) and d["delta"] == pytest.approx(t["mean"] - s["mean"])
        assert d["p"] <= d["p_holm"] <= 1
        assert p["transcoder"]["config"]["transcoder"] and not p["sae"]["config"]["transcoder"]
        assert p["transcoder"]["headline"]["strongest_null"] in ("gaussian_matched", "isotropic")
        assert set(p["transcoder"]["comparison"]["table"]) == {"trained", "gaussian_matched", "isotropic"}
    assert res["gate_inputs"]["transcoder_delta_lcb"]["value"] == pytest.approx(tc["headline"]["lcb"])
    assert (tc["headline"]["d_sae"], tc["headline"]["k"]) == (params["headline_d_sae"], params["headline_k"])
    cands = res["candidates"]
    assert len(cands) == 4 and len({c["name"] for c in cands}) == 4
    for c in cands:
        assert c["lcb"] == pytest.approx(c["trained_ci"][0] - c["null_ci"][1]) and c["p"] <= c["p_holm"]
        assert len(c["seeds"]) >= 3 and c["phase"] == "11_stress"
    # OOD: a < p/2 in, the rest out; the gate input is the EV drop with its CI over seeds
    assert ood["rule"] == "a < 11.5 (in) vs a >= 11.5 (out)" and ood["n_in"] == 12 * 23 and ood["n_out"] == 11 * 23
    drop = res["gate_inputs"]["ood_drop"]
    per_seed = [r["in_ev"] - r["out_ev"] for r in ood["per_seed"]]
    assert drop["value"] == pytest.approx(np.mean(per_seed)) and drop["ci"][0] <= drop["value"] <= drop["ci"][1]
    assert {"ev", "l0", "dead_fraction", "probe_accuracy"} <= set(ood["summary"])
    assert "activation_mcc/all" in ood["consistency"] and ood["raw_probe"] is not None
    assert res["headline"]["transcoder_delta LCB"] == pytest.approx(tc["headline"]["lcb"])
    html = (smoke_run["run"].run_dir / "report.html").read_text()
    assert html.count("Plotly.newPlot") >= 2


def test_load_only_rederives_the_results_from_artifacts(smoke_run):
    run_dir = smoke_run["run"].run_dir
    params = yaml.safe_load((run_dir / "params.yaml").read_text())
    again = stress.run(params, Path(params["artifacts_dir"]), load_only=True)
    recorded = smoke_run["run"].results
    assert set(again["headline"]) == set(recorded["headline"])
    for key, value in recorded["headline"].items():
        assert again["headline"][key] == (value if isinstance(value, str) else pytest.approx(value)), key
    for name, gate in recorded["gate_inputs"].items():
        assert again["gate_inputs"][name]["value"] == pytest.approx(gate["value"])
        assert again["gate_inputs"][name]["ci"] == (None if gate["ci"] is None else pytest.approx(gate["ci"]))
    with pytest.raises(HusaiError, match="seed99: missing") as err:
        stress.run({**params, "seeds": [1, 2, 99]}, Path(params["artifacts_dir"]), load_only=True)
    one_line(err)


@pytest.mark.parametrize("overrides,message", [
    ({"transcoder_input": "blocks.0.ln2.hook_normalized"}, "unknown hook 'blocks.0.ln2.hook_normalized' for a 1-layer model"),
    ({"ood_hook": "blocks.0.hook_nope"}, "unknown hook 'blocks.0.hook_nope'"),
    ({"ood_by": "d"}, r"ood_by 'd' is not a row label of the cache; labels: \['a', 'b', 'c'\]"),
    ({"headline_k": 8}, r"headline configuration d_sae 32, k 8 is not in the grid \[\(32, 2\), \(32, 4\)\]"),
    ({"grid": [[32, 4], [32, 4]]}, "the transcoder grid is empty or repeats a configuration"),
    ({"grid": [32, 4]}, "grid must be a list of \\[d_sae, k\\] pairs"),
    ({"k_grid": [4, 64]}, "invalid grid point d_sae 32, k 64: SAEConfig.k=64 must be <= d_sae=32"),
    ({"ood_below": None, "ood_in": list(range(23))}, "leaves no out-of-distribution rows"),
])
def test_bad_input_fails_in_one_line_before_training(smoke_run, overrides, message):
    params = yaml.safe_load((smoke_run["run"].run_dir / "params.yaml").read_text())
    with pytest.raises(HusaiError, match=message) as err:
        stress.run({**params, **overrides}, smoke_run["art"], load_only=True)
    one_line(err)


def test_ood_on_a_foreign_cache_splits_by_dataset(tmp_path):
    g = torch.Generator().manual_seed(0)
    for name in ("wiki_en", "wiki_de", "code"):
        torch.save(torch.randn(120, 8, generator=g), tmp_path / f"{name}_blocks.0.hook_resid_pre.pt")
    params = {"activations": str(tmp_path), "ood_hook": None, "ood_by": "dataset", "ood_in": ["wiki*"],
              "ood_below": None, "probe_label": None, "probe_max_rows": 64, "layout": "default", "architecture": "topk",
              "ood_d_sae": 16, "ood_k": 2, "steps": 30, "batch_size": 32, "lr": 1e-3, "sae_params": {},
              "heldout_fraction": 0.2, "split_seed": 0, "seeds": [1, 2], "shared_threshold": 0.7,
              "n_resamples": 200, "stats_seed": 0, "ood_metric": "ev"}
    out = stress.ood_stress(params, tmp_path / "art")
    assert out["rule"] == "dataset in ['wiki*'] (in) vs the rest (out)" and (out["n_in"], out["n_out"]) == (240, 120)
    assert out["hook"] == "blocks.0.hook_resid_pre" and out["layout"].startswith("ext-") and out["probe"] is None
    assert set(out["summary"]) == {"ev", "l0", "dead_fraction"} and out["drop"] == out["summary"]["ev"]["drop"]
    with pytest.raises(HusaiError, match=r"\['news'\] match no row") as err:
        stress.ood_stress({**params, "ood_in": ["news"]}, tmp_path / "art")
    one_line(err)


def test_unknown_hook_for_extraction_is_one_line(smoke_run):
    from husai_core.activations import load_cache
    from husai_core.model import load_checkpoint

    art = smoke_run["art"]
    with pytest.raises(HusaiError, match="unknown hook 'blocks.0.hook_nothing' for a 1-layer model") as err:
        hook_rows(load_cache(art / "activations" / "default"), load_checkpoint(art / "transformer" / "default"),
                  ["blocks.0.hook_nothing"])
    one_line(err)
