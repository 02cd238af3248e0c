"""The sae_lens reference backend: SAELens's own trainer on our cached rows, imported back."""

from __future__ import annotations

import sys

import pytest
import torch

from husai_core.errors import HusaiError
from husai_core.sae import SAEConfig, TopKSAE
from husai_core.sae import saelens_backend as backend
from husai_core.sae.saelens import import_saelens
from husai_core.sae.saelens_backend import compare_with_saelens, train_saelens, train_with_backend

sae_lens = pytest.importorskip("sae_lens")

D_IN, D_SAE = 8, 24


def rows(n: int = 256) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, D_IN, generator=g) @ torch.randn(D_IN, D_IN, generator=g) * 0.5 + 0.2


def config(arch: str, **kw) -> SAEConfig:
    # raw units, so SAELens's own objects and ours take the same inputs (normalisation: see below)
    return SAEConfig(**{"architecture": arch, "d_in": D_IN, "d_sae": D_SAE, "k": 3, "steps": 12,
                        "batch_size": 32, "log_every": 4, "normalize_activations": "none", **kw})


def assert_same_function(ours, theirs, x, latent_scale):
    """Latents (SAELens's times ``latent_scale``) and reconstructions agree to 1e-5."""
    with torch.no_grad():
        z_theirs = theirs.encode(x)
        z = ours.encode(x)
        assert (z != 0).any()
        torch.testing.assert_close(z, z_theirs * latent_scale, atol=1e-5, rtol=0)
        torch.testing.assert_close(ours.decode(z), theirs.decode(z_theirs), atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch, sl_arch", [
    ("topk", "topk"), ("relu", "standard"), ("jumprelu", "jumprelu"), ("batchtopk", "jumprelu"),
])
def test_trains_and_imports_like_saelens(tmp_path, arch, sl_arch):
    x = rows()
    cfg = config(arch)
    res = train_saelens(cfg, x, seed=3, device="cpu", workdir=tmp_path / "sl")
    ours = res.sae
    assert ours.cfg == cfg and ours.cfg.architecture == arch and not ours.training
    torch.testing.assert_close(ours.W_dec.norm(dim=1), torch.ones(D_SAE), atol=1e-5, rtol=0)
    info = res.info
    assert info["backend"] == "sae_lens" and info["sae_lens_version"] == sae_lens.__version__
    assert info["seed"] == 3 and info["train_seconds"] > 0
    assert info["sae_lens_architecture"] == {"relu": "standard"}.get(arch, arch)
    assert all(v <= 1e-5 for k, v in info.items() if k.startswith("check_") and not k.endswith("ambiguous_rows"))
    h = res.history
    assert list(h.step) == [0, 4, 8, 11] and {"loss", "mse", "l0", "ev", "lr"} <= set(h.columns)
    assert (h.lr == cfg.lr).all()  # SAELens's default: constant lr
    torch.testing.assert_close(torch.tensor(h.mse.values * D_IN), torch.tensor(h.sl_mse_loss.values))
    assert {"ev", "l0", "mse", "dead_fraction", "dead_fraction_train"} <= set(res.metrics)

    # path 1: SAELens's own loader on the folder it saved
    theirs = sae_lens.SAE.load_from_disk(tmp_path / "sl")
    assert theirs.cfg.architecture() == sl_arch
    scale = 1.0 if arch == "topk" else theirs.W_dec.detach().norm(dim=1)
    if arch in ("topk", "batchtopk"):  # trained with rescale_acts_by_decoder_norm: norms folded at save
        torch.testing.assert_close(theirs.W_dec.norm(dim=1), torch.ones(D_SAE), atol=1e-5, rtol=0)
    else:  # SAELens does not pin decoder norms: the import folded them into the encoder
        assert not torch.allclose(theirs.W_dec.norm(dim=1), torch.ones(D_SAE), atol=1e-3)
    assert_same_function(ours, theirs, x, scale)
    # path 2: our import of the same folder gives the same SAE again
    again = import_saelens(tmp_path / "sl")
    assert type(again) is type(ours) and again.cfg == cfg
    for a, b in zip(again.state_dict().values(), ours.state_dict().values()):
        assert torch.equal(a.cpu(), b.cpu())


def test_same_seed_same_weights_other_seed_differs():
    x = rows()
    cfg = config("topk")
    a, b = (train_saelens(cfg, x, seed=1, device="cpu") for _ in range(2))
    c = train_saelens(cfg, x, seed=2, device="cpu")
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        assert torch.equal(getattr(a.sae, name), getattr(b.sae, name))
    assert not torch.equal(a.sae.W_dec, c.sae.W_dec)
    assert a.history.loss.tolist() == b.history.loss.tolist()


def test_train_with_backend_switch(tmp_path):
    x = rows(128)
    cfg = config("topk", steps=4)
    ours = train_with_backend(cfg, x, [0, 1], backend="husai", device="cpu", mode="sequential")
    theirs = train_with_backend(cfg, x, [0, 1], backend="sae_lens", device="cpu", workdir=tmp_path)
    assert [r.info["seed"] for r in theirs] == [0, 1] and all(r.info["backend"] == "sae_lens" for r in theirs)
    assert isinstance(ours[0].sae, TopKSAE) and isinstance(theirs[0].sae, TopKSAE)
    assert (tmp_path / "seed_1" / "cfg.json").is_file()
    with pytest.raises(HusaiError, match="unknown training backend 'sklearn'; choose one of husai, sae_lens"):
        train_with_backend(cfg, x, [0], backend="sklearn")
    with pytest.raises(HusaiError, match="seeds must be distinct"):
        train_with_backend(cfg, x, [0, 0], backend="sae_lens")


def test_unsupported_architectures():
    x = rows(64)
    with pytest.raises(HusaiError, match="cannot train architecture 'matryoshka'"):
        train_saelens(config("matryoshka"), x, 0)
    with pytest.raises(HusaiError, match="does not train transcoders"):
        train_saelens(config("relu", transcoder=True, d_out=4), x, 0)
    with pytest.raises(HusaiError, match="unknown SAELens TopKTrainingSAEConfig field"):
        train_saelens(config("topk"), x, 0, sae_overrides={"no_such_field": 1})


def test_missing_sae_lens(monkeypatch):
    monkeypatch.setitem(sys.modules, "sae_lens", None)  # `import sae_lens` now raises ImportError
    hint = r"^the sae_lens backend needs the sae_lens package: pip install sae-lens==6\.54\.12$"
    with pytest.raises(HusaiError, match=hint):
        train_saelens(config("topk"), rows(64), 0)
    with pytest.raises(HusaiError, match="pip install sae-lens"):
        train_with_backend(config("topk"), rows(64), [0], backend="sae_lens")


def test_agreement_check_fails_on_a_different_sae(tmp_path, monkeypatch):
    x = rows()
    real_import = backend.import_saelens

    def perturbed(folder, device="cpu"):
        sae = real_import(folder, device)
        with torch.no_grad():
            sae.dec_b.add_(1e-3)
        return sae

    with monkeypatch.context() as m:
        m.setattr(backend, "import_saelens", perturbed)
        with pytest.raises(HusaiError, match="does not reproduce SAELens's SAE.load_from_disk: .*recon"):
            train_saelens(config("topk"), x, 0, device="cpu")
    # the check itself, on unit-scale numbers: a shift of 2e-5 (times the scale) is caught, rounding is not
    ok = train_saelens(config("relu"), x, 0, device="cpu", workdir=tmp_path / "r").sae
    theirs = sae_lens.SAE.load_from_disk(tmp_path / "r")
    assert compare_with_saelens(ok, theirs, x)["recon"] < 1e-6
    with torch.no_grad():
        big = float(theirs.decode(theirs.encode(x)).abs().max())
        theirs.b_dec.add_(2e-5 * max(1.0, big))
    with pytest.raises(HusaiError, match="recon max"):
        compare_with_saelens(ok, theirs, x)


def test_cached_rows_follow_our_trainers_order():
    from husai_core.sae.trainer import _RowSampler

    x = rows(50)
    provider = backend.CachedRows(x, 32, seed=4)
    ours = _RowSampler(50, 4)
    for _ in range(3):  # crosses a pass boundary (50 rows, 32 per batch)
        assert torch.equal(next(provider), x[ours.take(32)])


def test_normalised_training_is_folded_back_to_raw_units(tmp_path):
    from husai_core.sae.trainer import input_scale

    x = rows() * 40
    cfg = config("topk", normalize_activations="expected_average_only_in")
    res = train_saelens(cfg, x, seed=1, device="cpu", workdir=tmp_path / "sl")
    s = input_scale(x)
    assert res.metrics["input_scale"] == [s, s]
    theirs = sae_lens.SAE.load_from_disk(tmp_path / "sl", device="cpu")  # trained on x * s
    with torch.no_grad():
        torch.testing.assert_close(res.sae.encode(x), theirs.encode(x * s) / s, atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(res.sae.decode(res.sae.encode(x)), theirs.decode(theirs.encode(x * s)) / s,
                                   atol=1e-4, rtol=1e-5)
    from husai_core.metrics import explained_variance

    with torch.no_grad():  # EV is scale-free: ours on raw rows equals SAELens's on the scaled rows it trained on
        ev_theirs = explained_variance(x * s, theirs.decode(theirs.encode(x * s)))
    assert abs(res.metrics["ev"] - ev_theirs) < 1e-4
