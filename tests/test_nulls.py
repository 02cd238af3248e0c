"""Null conditions, held-out splits, artifact keys and the condition comparison."""

import numpy as np
import pandas as pd
import pytest
import torch

from husai_core import store
from husai_core.comparison import compare_conditions, ground_truth_recovery, headline_verdict, top_firing
from husai_core.conditions import condition_data, condition_dir, heldout_split, train_or_load_condition
from husai_core.convergence import plateau
from husai_core.errors import HusaiError
from husai_core.experiments import load_snapshots, train_or_load_saes
from husai_core.matching import SAEView
from husai_core.model import ModelConfig, TrainConfig, build_model, train_model
from husai_core.nulls import check_null, gaussian_matched_rows, random_transformer_activations
from husai_core.sae import SAEConfig, build_sae, train_sae
from husai_core.stats import bootstrap_difference_p
from husai_core.task import TaskConfig


def correlated_rows(n=20000, d=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=g)
    return torch.randn(n, d, generator=g) @ mix + torch.arange(d, dtype=torch.float32)


def test_gaussian_matched_reproduces_mean_and_covariance():
    x = correlated_rows()
    y = gaussian_matched_rows(x, seed=3)
    assert y.shape == x.shape
    cov_x, cov_y = torch.cov(x.double().T), torch.cov(y.double().T)
    # sampling error of a covariance from 20k rows is ~1/sqrt(20k) ~ 0.7% of its scale
    assert float((cov_y - cov_x).norm() / cov_x.norm()) < 0.03
    assert float((y.double().mean(0) - x.double().mean(0)).abs().max()) < 0.05 * float(x.std())
    assert torch.equal(gaussian_matched_rows(x, seed=3), y)  # seeded
    assert not torch.equal(gaussian_matched_rows(x, seed=4), y)


def test_null_rows_do_not_depend_on_the_thread_count():
    # a sweep worker (1 thread) and the notebook (all cores) must draw the same rows, or every
    # phase keys their SAEs differently and retrains them; 2 threads sum in another order
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5000, 96, generator=g) @ torch.randn(96, 96, generator=g) + 3
    threads = torch.get_num_threads()
    rows = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            rows.append(gaussian_matched_rows(x, seed=1))
            assert torch.get_num_threads() == n  # restored
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(rows[0], rows[1])


def test_random_transformer_is_untrained_and_differs_from_the_trained_model():
    task = TaskConfig(p=11)
    ckpt = train_model(task, ModelConfig(d_model=16, n_heads=2, d_mlp=32), TrainConfig(steps=30, eval_every=30, seed=0),
                       device="cpu", progress=False)
    hook = "blocks.0.hook_resid_post"
    acts = random_transformer_activations(ckpt, [hook], init_seed=5)[hook]
    untrained = build_model(task, ckpt.model_cfg, seed=5, device="cpu")
    from husai_core.activations import extract_activations
    from husai_core.task import make_task

    data = make_task(task)
    expect = extract_activations(untrained, data.tokens, [hook], answer_pos=data.answer_pos)[hook]
    trained = extract_activations(ckpt.model, data.tokens, [hook], answer_pos=data.answer_pos)[hook]
    assert torch.allclose(acts, expect)  # exactly an untrained model of that seed
    assert acts.shape == trained.shape and not torch.allclose(acts, trained, atol=1e-3)
    with pytest.raises(HusaiError, match="equals the trained model's seed"):
        random_transformer_activations(ckpt, [hook], init_seed=0)


def test_heldout_split_is_a_seeded_partition():
    tr, ho = heldout_split(100, 0.2, seed=1)
    assert len(ho) == 20 and len(tr) == 80
    assert sorted(torch.cat([tr, ho]).tolist()) == list(range(100))
    assert torch.equal(heldout_split(100, 0.2, seed=1)[1], ho)
    assert not torch.equal(heldout_split(100, 0.2, seed=2)[1], ho)
    with pytest.raises(HusaiError, match="heldout_fraction"):
        heldout_split(100, 1.5, 0)
    with pytest.raises(HusaiError, match="empty split"):
        heldout_split(3, 0.01, 0)


def test_unknown_null_and_condition_are_one_clear_line():
    with pytest.raises(HusaiError, match="unknown null 'shuffled'"):
        check_null("shuffled")
    x = correlated_rows(50)
    with pytest.raises(HusaiError, match="unknown null"):
        condition_data("shuffled", x, heldout_split(50, 0.2, 0))
    with pytest.raises(HusaiError, match="unknown condition"):
        condition_dir("/tmp", "default", "h", SAEConfig(d_in=6, d_sae=8, k=2), "bogus")
    with pytest.raises(HusaiError, match="needs the trained transformer"):
        condition_data("random_transformer", x, heldout_split(50, 0.2, 0))


# ------------------------------------------------------------------ stale artifacts
CFG = SAEConfig(d_in=6, d_sae=16, k=2, steps=30, batch_size=32, warmup_steps=0, log_every=10)


def test_sae_artifacts_are_recomputed_when_data_config_or_code_change(tmp_path, monkeypatch):
    x = correlated_rows(400)
    folder = tmp_path / "saes"
    (first,) = train_or_load_saes(folder, CFG, x, [1])
    mtime = (first.path / "sae.safetensors").stat().st_mtime_ns
    (again,) = train_or_load_saes(folder, CFG, x, [1])
    assert (again.path / "sae.safetensors").stat().st_mtime_ns == mtime  # reused
    (new_data,) = train_or_load_saes(folder, CFG, x * 2, [1])
    assert new_data.metrics["key"]["inputs"] != first.metrics["key"]["inputs"]
    (new_cfg,) = train_or_load_saes(tmp_path / "other", CFG.replace(steps=31), x, [1])
    assert new_cfg.metrics["key"]["config"] != first.metrics["key"]["config"]
    # a new version of the SAE code invalidates the checkpoint although config and data match
    (back,) = train_or_load_saes(folder, CFG, x, [1])
    mtime = (back.path / "sae.safetensors").stat().st_mtime_ns
    real = store.artifact_key
    monkeypatch.setattr(store, "artifact_key", lambda kind, config, inputs: {**real(kind, config, inputs), "code": "other"})
    (recoded,) = train_or_load_saes(folder, CFG, x, [1])
    assert recoded.metrics["key"]["code"] == "other"
    assert (recoded.path / "sae.safetensors").stat().st_mtime_ns != mtime
    assert store.stale_reason(back.metrics["key"], recoded.metrics["key"]) == "code changed"


def test_unknown_backend_is_refused(tmp_path):
    with pytest.raises(HusaiError, match="unknown SAE training backend 'keras'"):
        train_or_load_saes(tmp_path, CFG, correlated_rows(100), [1], backend="keras")


def test_code_version_tracks_the_producing_sources():
    assert store.code_version("sae") != store.code_version("transformer")
    with pytest.raises(HusaiError, match="unknown artifact kind"):
        store.code_version("nope")


def test_snapshots_are_kept_and_the_last_equals_the_final_sae(tmp_path):
    x = correlated_rows(400)
    (res,) = train_or_load_saes(tmp_path, CFG, x, [3], snapshot_steps=(10, 20, 30))
    snaps = load_snapshots(res.path, CFG)
    assert sorted(snaps) == [10, 20, 30]
    assert torch.allclose(snaps[30].W_dec, res.sae.W_dec) and torch.allclose(snaps[30].b_enc, res.sae.b_enc)
    assert not torch.allclose(snaps[10].W_dec, res.sae.W_dec)


def test_heldout_metrics_are_recorded_beside_training_rows(tmp_path):
    x = correlated_rows(500)
    tr, ho = heldout_split(500, 0.2, 0)
    data = condition_data("gaussian_matched", x, (tr, ho), data_seed=2)
    (res,) = train_or_load_condition(tmp_path, "default", "h", CFG, data, [1])
    assert res.metrics["heldout"]["n_rows"] == 100 and res.metrics["n_rows"] == 400
    assert "conditions/gaussian_matched" in str(res.path)
    iso = train_or_load_condition(tmp_path, "default", "h", CFG, condition_data("isotropic", x, (tr, ho)), [1, 2])
    assert iso[0].path is None and 0 <= iso[0].metrics["heldout"]["ev"] <= 1 or iso[0].metrics["heldout"]["ev"] < 0


# ------------------------------------------------------------------ input normalisation and free decoder norms
@pytest.mark.parametrize("arch", ["topk", "relu", "jumprelu", "batchtopk"])
def test_fold_input_scale_is_exact(arch):
    cfg = SAEConfig(architecture=arch, d_in=6, d_sae=16, k=3, jumprelu_init_threshold=0.05)
    sae = build_sae(cfg, 1)
    x = correlated_rows(64)
    sae.init_biases_from_data(x * 0.1)
    with torch.no_grad():
        sae.enc_b.normal_(0, 0.1)
        if arch == "batchtopk":
            sae.calibrate(x * 0.1)
        s = 0.1
        z_scaled = sae.encode(x * s)
        out_scaled = sae.decode(z_scaled) / s
        sae.fold_input_scale(s, s)
        assert torch.allclose(sae.encode(x), z_scaled / s, atol=1e-5)
        assert torch.allclose(sae.decode(sae.encode(x)), out_scaled, atol=1e-4)


def test_normalised_training_returns_an_sae_in_raw_units():
    x = correlated_rows(600) * 50
    res = train_sae(CFG.replace(normalize_activations="expected_average_only_in"), x, 1)
    scale = res.metrics["input_scale"][0]
    assert abs(scale - (6 / float(x.pow(2).sum(1).mean())) ** 0.5) < 1e-6
    assert res.metrics["ev"] > 0.5  # reconstructs raw rows, not scaled ones


def test_free_decoder_norm_training_folds_to_unit_rows_with_the_same_outputs():
    cfg = CFG.replace(decoder_norm="free", decoder_init_norm=0.1)
    x = correlated_rows(600)
    res = train_sae(cfg, x, 2)
    assert torch.allclose(res.sae.W_dec.norm(dim=-1), torch.ones(16), atol=1e-5)
    sae = build_sae(cfg, 2)
    assert torch.allclose(sae.W_dec.norm(dim=-1), torch.full((16,), 0.1), atol=1e-6)
    with torch.no_grad():  # training forward (free norms) == folded inference forward
        sae.dec_w.mul_(torch.linspace(0.5, 2.0, 16).view(1, -1, 1))
        sae.train()
        before = sae(x[:50], return_latents=False).x_hat
        sae.eval()
        sae.fold_decoder_norm()
        after = sae.decode(sae.encode(x[:50]))
    assert torch.allclose(before, after, atol=1e-4)
    with pytest.raises(HusaiError, match="decoder_init_norm"):
        SAEConfig(decoder_init_norm=0.1)
    with pytest.raises(HusaiError, match="topk only"):
        SAEConfig(architecture="relu", decoder_norm="free")


# ------------------------------------------------------------------ comparison, convergence, ground truth
def _views(decoders, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for d in decoders:
        lat = torch.relu(torch.randn(40, d.shape[0], generator=g))
        out.append(SAEView(d, d.clone(), lat, (lat > 0).any(0)))
    return out


def test_compare_conditions_names_the_strongest_null_and_decides():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(12, 5, generator=g)
    trained = [base + 0.05 * torch.randn(12, 5, generator=g) for _ in range(4)]
    weak = [torch.randn(12, 5, generator=g) for _ in range(4)]
    strong = [base[:, [1, 0, 2, 3, 4]] + 0.5 * torch.randn(12, 5, generator=g) for _ in range(4)]
    cmp = compare_conditions({"trained": _views(trained), "weak": _views(weak, 1), "strong": _views(strong, 2)},
                             "trained", ["weak", "strong"], n_resamples=500)
    assert cmp["strongest"]["pwmcc/all"] == "strong"
    head = headline_verdict(cmp, "pwmcc/all")
    assert head["strongest_null"] == "strong" and head["verdict"] == "training signal present"
    assert cmp["tests"]["weak"]["pwmcc/all"]["test"] == "seed permutation"
    assert cmp["tests"]["weak"]["activation_mcc/all"]["test"].startswith("bootstrap")
    with pytest.raises(HusaiError, match="was not compared"):
        headline_verdict(cmp, "nope/all")


def test_bootstrap_difference_p():
    hi = np.full((5, 5), 0.9)
    lo = np.full((5, 5), 0.1)
    assert bootstrap_difference_p(hi, lo, 500) < 0.01
    assert bootstrap_difference_p(lo, hi, 500) > 0.99


def test_top_firing_keeps_the_most_frequent_latents():
    lat = torch.tensor([[1.0, 0, 2, 0], [1, 0, 0, 3], [1, 0, 2, 0]])
    v = SAEView(torch.eye(4), torch.eye(4), lat, (lat > 0).any(0))
    top = top_firing(v, 2)
    assert torch.equal(top.decoder, torch.eye(4)[[0, 2]])


def test_plateau_criterion():
    t = pd.DataFrame({"condition": "trained", "metric": "pwmcc/all", "step": [25, 50, 100, 200],
                      "value": [0.2, 0.3, 0.395, 0.40]})
    p = plateau(t, "trained")
    assert p["converged"] and p["half_step"] == 100 and abs(p["change"] - 0.005) < 1e-12
    t.loc[3, "value"] = 0.45
    assert not plateau(t, "trained")["converged"]


def test_ground_truth_recovery_counts_directions_per_seed():
    gt = torch.eye(4)[:2]
    decs = {"hit": [torch.eye(4), torch.eye(4)[[0, 2, 3]]], "miss": [torch.ones(3, 4), torch.ones(3, 4)]}
    r = ground_truth_recovery(decs, gt, threshold=0.7, n_resamples=200)
    assert r["hit"]["counts"] == [2, 1] and r["miss"]["counts"] == [0, 0]
    assert r["n_directions"] == 2
