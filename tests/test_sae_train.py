"""Training behaviour: the published mechanisms do what they are for, runs are reproducible."""

import math

import pytest
import torch

from husai_core.sae import (SAEConfig, build_sae, choose_mode, geometric_median, lr_multiplier,
                            probe_modes, train_sae, train_saes)
from husai_core.sae.synthetic import planted_dictionary
from husai_core.sae.trainer import LOG_COLUMNS, _fit



@pytest.fixture(scope="module")
def planted():
    return planted_dictionary(4096, 16, 24, 3, seed=0)


def small(arch="topk", **kw):
    base = dict(architecture=arch, d_in=16, d_sae=64, k=3, steps=60, batch_size=128, lr=1e-2,
                warmup_steps=5, log_every=20, dead_tokens=1024, bandwidth=0.1, jumprelu_init_threshold=0.1)
    return SAEConfig(**{**base, **kw})


@pytest.mark.parametrize("arch", ["relu", "topk", "batchtopk", "jumprelu", "matryoshka"])
def test_decoder_rows_stay_unit_norm(arch, planted):
    res = train_sae(small(arch, steps=15), planted[0], seed=0, device="cpu")
    torch.testing.assert_close(res.sae.W_dec.norm(dim=1), torch.ones(64))
    assert set(LOG_COLUMNS) <= set(res.history.columns)
    assert 0.0 < res.metrics["ev"] <= 1.0 and res.metrics["dead_window_tokens"] == 4096


def test_topk_recovers_planted_dictionary(planted):
    x, atoms = planted
    res = train_sae(small(steps=300), x, seed=0, device="cpu")
    best = (res.sae.W_dec @ atoms.T).abs().max(dim=0).values  # best match for each true atom
    assert best.mean() > 0.9, best
    assert res.metrics["ev"] > 0.8 and res.metrics["l0"] == pytest.approx(3.0)


def test_auxk_revives_latents_that_start_dead():
    # 48 true atoms but only 32 live latents: the dead half is needed to reconstruct well
    x, _ = planted_dictionary(4096, 16, 48, 3, seed=0)
    revived = {}
    for coeff in (1 / 32, 0.0):
        cfg = small(steps=300, aux_coeff=coeff, dead_tokens=256)
        sae = build_sae(cfg, seed=0)
        sae.init_biases_from_data(x)
        with torch.no_grad():
            sae.enc_b[:, 32:] = -3.0  # far below any live pre-activation: never in the top k
        assert (sae.encode(x)[:, 32:] == 0).all()
        _fit(sae, x, None, [0], progress=False, desc="")
        revived[coeff] = (sae.eval().encode(x)[:, 32:] > 0).any(dim=0).float().mean().item()
    assert revived[0.0] == 0.0  # without AuxK they stay dead...
    assert revived[1 / 32] > 0.8, revived  # ...with it (nearly) all of them fire again


def test_jumprelu_thresholds_move_and_l0_penalty_bites(planted):
    x, _ = planted
    free = train_sae(small("jumprelu", steps=150, l0_coeff=0.0), x, seed=0, device="cpu")
    pen = train_sae(small("jumprelu", steps=150, l0_coeff=0.05), x, seed=0, device="cpu")
    moved = (pen.sae.threshold.log() - math.log(0.1)).abs().max()
    assert moved > 0.05
    assert pen.metrics["l0"] < 0.7 * free.metrics["l0"], (pen.metrics["l0"], free.metrics["l0"])
    assert (pen.history.l0 > 0).all()


def test_relu_l1_penalty_sparsifies(planted):
    x, _ = planted
    free = train_sae(small("relu", steps=100, l1_coeff=0.0), x, seed=0, device="cpu")
    pen = train_sae(small("relu", steps=100, l1_coeff=0.05), x, seed=0, device="cpu")
    assert pen.metrics["l0"] < 0.7 * free.metrics["l0"], (pen.metrics["l0"], free.metrics["l0"])
    assert pen.history.l1.iloc[-1] < free.history.l1.iloc[-1]


def test_matryoshka_prefix_reconstructs_on_its_own(planted):
    x, _ = planted

    @torch.no_grad()
    def prefix_mse(sae, m):  # reconstruct with latents [0, m) only
        z = sae.encode(x)
        z[:, m:] = 0
        return float((sae.decode(z) - x).pow(2).mean())

    kw = dict(steps=150, matryoshka_prefixes=(8,))
    plain = train_sae(small("topk", **kw), x, seed=0, device="cpu")
    nested = train_sae(small("matryoshka", **kw), x, seed=0, device="cpu")
    assert prefix_mse(nested.sae, 8) < 0.8 * prefix_mse(plain.sae, 8)


@pytest.mark.parametrize("method, tol", [("quantile", 0.05), ("batch_min", 0.25)])
def test_batchtopk_inference_l0_matches_k_after_calibration(planted, method, tol):
    x, _ = planted
    cfg = small("batchtopk", k=4, steps=100, batchtopk_calibration=method)
    res = train_sae(cfg, x, seed=0, device="cpu")
    assert bool(res.sae.calibrated.all()) and float(res.sae.threshold) > 0
    assert res.metrics["l0"] == pytest.approx(4.0, rel=tol)
    held_out, _ = planted_dictionary(2048, 16, 24, 3, seed=0)  # same dictionary, new rows
    held_out = held_out[torch.randperm(2048, generator=torch.Generator().manual_seed(5))]
    z = res.sae.encode(held_out[:1000])
    assert (z != 0).sum(-1).float().mean().item() == pytest.approx(4.0, rel=0.25)


def test_seeds_differ_and_reruns_are_identical(planted):
    x, _ = planted
    cfg = small(steps=40, dead_tokens=256)
    a = train_saes(cfg, x, [0, 1], device="cpu", mode="sequential")
    b = train_saes(cfg, x, [0, 1], device="cpu", mode="sequential")
    assert not torch.allclose(a[0].sae.W_dec, a[1].sae.W_dec)
    for ra, rb in zip(a, b):
        for p, q in zip(ra.sae.state_dict().values(), rb.sae.state_dict().values()):
            assert torch.equal(p, q)
        assert ra.history.equals(rb.history)
    assert [r.info["seed"] for r in a] == [0, 1]


@pytest.mark.parametrize("arch", ["topk", "jumprelu", "batchtopk"])
def test_batched_training_matches_sequential(planted, arch):
    x, _ = planted
    cfg = small(arch, steps=30, dead_tokens=256)
    seq = train_saes(cfg, x, [3, 4], device="cpu", mode="sequential")
    bat = train_saes(cfg, x, [3, 4], device="cpu", mode="batched")
    assert [r.info["mode"] for r in bat] == ["batched"] * 2
    for rs, rb in zip(seq, bat):
        torch.testing.assert_close(rs.sae.W_dec, rb.sae.W_dec, rtol=1e-4, atol=1e-4)
        assert rs.metrics["ev"] == pytest.approx(rb.metrics["ev"], abs=1e-3)


def test_lr_schedule_warmup_then_linear_decay_to_zero():
    cfg = SAEConfig(d_in=4, d_sae=8, k=2, steps=100, warmup_steps=10, decay_start_frac=0.8)
    m = [lr_multiplier(s, cfg) for s in range(100)]
    assert m[0] == pytest.approx(0.1) and m[9] == pytest.approx(1.0)
    assert m[50] == 1.0 and m[80] == pytest.approx(1.0) and m[90] == pytest.approx(0.5)
    assert m[99] == pytest.approx(0.05) and all(a >= b for a, b in zip(m[10:], m[11:]))


def test_history_logs_each_term_every_n_steps(planted):
    res = train_sae(small("matryoshka", steps=45, log_every=20), planted[0], seed=0, device="cpu")
    h = res.history
    assert h.step.tolist() == [0, 20, 40, 44]
    assert (h.matryoshka > 0).all() and (h.l0 == 3).all() and h.tokens.iloc[-1] == 45 * 128
    assert res.info["mode"] == "sequential" and res.info["train_seconds"] > 0


def test_transcoder_maps_input_to_target():
    g = torch.Generator().manual_seed(0)
    x, _ = planted_dictionary(2048, 16, 24, 3, seed=1)
    target = torch.tanh(x @ torch.randn(16, 10, generator=g) / 4) + 0.5  # another "hook"
    for arch in ("topk", "relu"):
        res = train_sae(small(arch, steps=200, transcoder=True, d_out=10, l1_coeff=1e-4), x, seed=0,
                        x_target=target, device="cpu")
        assert res.sae.W_dec.shape == (64, 10) and res.sae.W_enc.shape == (16, 64)
        assert res.metrics["target"] == "x_target" and res.metrics["ev"] > 0.6, (arch, res.metrics)


def test_mode_choice():
    cfg = small(steps=50)
    assert choose_mode(cfg, 3, "cpu")[0] == "sequential"  # short CPU run: the measured rule
    assert choose_mode(cfg, 1, "cpu")[0] == "sequential"
    t = probe_modes(small(d_sae=32, batch_size=32), 2, "cpu", steps=1)
    assert t["sequential"] > 0 and t["batched"] > 0


def test_geometric_median_is_robust_and_init_uses_it():
    pts = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [100.0, 100.0]])
    gm = geometric_median(pts)
    assert (gm - torch.tensor([0.5, 0.5])).norm() < 1.0 < (pts.mean(0) - torch.tensor([0.5, 0.5])).norm()
    sym = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 2.0], [0.0, -2.0]]) + 3.0
    torch.testing.assert_close(geometric_median(sym), torch.tensor([3.0, 3.0]), atol=1e-5, rtol=0)
    sae = build_sae(small(), 0)
    sae.init_biases_from_data(pts.repeat(1, 8))
    torch.testing.assert_close(sae.b_dec, geometric_median(pts.repeat(1, 8)))
    sae = build_sae(small(b_dec_init="mean"), 0)
    sae.init_biases_from_data(pts.repeat(1, 8))
    torch.testing.assert_close(sae.b_dec, pts.repeat(1, 8).mean(0))


@pytest.mark.parametrize("shape", [(5000, 128), (3000, 700), (10, 64)])
def test_chunked_input_scale_equals_the_plain_one_bit_for_bit(shape):
    from husai_core.errors import HusaiError
    from husai_core.sae.trainer import input_scale

    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0)) * 3 + 1
    assert input_scale(x) == math.sqrt(shape[1] / float(x.double().pow(2).sum(-1).mean()))
    x[shape[0] - 1, 0] = float("nan")
    with pytest.raises(HusaiError, match="NaN"):
        input_scale(x)
