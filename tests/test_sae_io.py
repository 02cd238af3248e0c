"""Checkpoints and SAELens interop, checked against the real sae_lens package."""

import json

import pytest
import torch

from husai_core.errors import HusaiError
from husai_core.sae import SAEConfig, build_sae, export_saelens, import_saelens, load_sae, save_sae



def make(arch, transcoder=False, seed=0):
    kw = dict(architecture=arch, d_in=12, d_sae=40, k=4)
    if transcoder:
        kw.update(transcoder=True, d_out=7)
    sae = build_sae(SAEConfig(**kw), seed=seed)
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():  # non-trivial biases and thresholds, as after training
        sae.enc_b.copy_(0.1 * torch.randn(sae.enc_b.shape, generator=g))
        sae.dec_b.copy_(torch.randn(sae.dec_b.shape, generator=g))
        if sae.in_b is not None:
            sae.in_b.copy_(torch.randn(sae.in_b.shape, generator=g))
        if arch == "jumprelu":
            sae.log_threshold.copy_(torch.log(0.05 + 0.2 * torch.rand(sae.log_threshold.shape, generator=g)))
    if arch == "batchtopk":
        sae.calibrate(torch.randn(300, 12, generator=g))
    return sae.eval()


def inputs(n=64, d=12):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(7)) + 0.3


ARCHS = ["relu", "topk", "batchtopk", "jumprelu", "matryoshka"]


@pytest.mark.parametrize("arch", ARCHS)
def test_save_load_round_trip(tmp_path, arch):
    sae = make(arch)
    save_sae(sae, tmp_path / "ck")
    assert {p.name for p in (tmp_path / "ck").iterdir()} == {"sae.safetensors", "config.json"}
    back = load_sae(tmp_path / "ck")
    assert type(back) is type(sae) and back.cfg == sae.cfg
    for (n1, t1), (n2, t2) in zip(sae.state_dict().items(), back.state_dict().items()):
        assert n1 == n2 and torch.equal(t1, t2)
    x = inputs()
    torch.testing.assert_close(back.encode(x), sae.encode(x))


def test_transcoder_save_load(tmp_path):
    sae = make("topk", transcoder=True)
    back = load_sae(save_sae(sae, tmp_path / "tc"))
    x = inputs()
    torch.testing.assert_close(back.decode(back.encode(x)), sae.decode(sae.encode(x)))
    assert back.b_in.shape == (12,) and back.b_dec.shape == (7,)


def test_checkpoint_errors(tmp_path):
    with pytest.raises(HusaiError, match="missing SAE checkpoint folder"):
        load_sae(tmp_path / "nope")
    d = save_sae(make("topk"), tmp_path / "ck")
    (d / "sae.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(HusaiError, match="corrupt SAE weights"):
        load_sae(d)
    (d / "sae.safetensors").unlink()
    with pytest.raises(HusaiError, match="missing SAE weights"):
        load_sae(d)
    save_sae(make("topk"), d)
    (d / "config.json").write_text("{broken")
    with pytest.raises(HusaiError, match="corrupt SAE config"):
        load_sae(d)
    save_sae(make("topk"), d)
    meta = json.loads((d / "config.json").read_text())
    meta["config"]["d_sae"] = 41  # weights no longer match the config
    (d / "config.json").write_text(json.dumps(meta))
    with pytest.raises(HusaiError, match=r"W_enc.*shape"):
        load_sae(d)
    meta["config"]["d_sae"] = 40
    meta["config"]["k"] = 99
    (d / "config.json").write_text(json.dumps(meta))
    with pytest.raises(HusaiError, match="k=99"):
        load_sae(d)
    (d / "config.json").unlink()
    with pytest.raises(HusaiError, match="missing SAE config"):
        load_sae(d)


# ---------------------------------------------------------------- SAELens
sae_lens = pytest.importorskip("sae_lens")


@pytest.mark.parametrize("arch, transcoder, sl_arch", [
    ("relu", False, "standard"), ("topk", False, "topk"), ("jumprelu", False, "jumprelu"),
    ("batchtopk", False, "jumprelu"), ("matryoshka", False, "topk"),
    ("relu", True, "transcoder"), ("jumprelu", True, "jumprelu_transcoder"),
])
def test_saelens_round_trip(tmp_path, arch, transcoder, sl_arch):
    sae = make(arch, transcoder)
    export_saelens(sae, tmp_path / "sl", hook_name="blocks.0.hook_resid_post")
    assert json.loads((tmp_path / "sl" / "cfg.json").read_text())["architecture"] == sl_arch
    theirs = sae_lens.SAE.load_from_disk(tmp_path / "sl")
    assert theirs.cfg.architecture() == sl_arch
    assert tuple(theirs.W_enc.shape) == (12, 40) and tuple(theirs.W_dec.shape) == (40, sae.cfg.d_target)
    x = inputs()
    with torch.no_grad():
        z_ours, z_theirs = sae.encode(x), theirs.encode(x)
        assert (z_ours != 0).any()
        torch.testing.assert_close(z_theirs, z_ours, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(theirs.decode(z_ours), sae.decode(z_ours), atol=1e-5, rtol=1e-5)
    back = import_saelens(tmp_path / "sl")
    assert type(back) is type(sae) and back.cfg == sae.cfg
    with torch.no_grad():
        torch.testing.assert_close(back.decode(back.encode(x)), sae.decode(sae.encode(x)), atol=1e-5, rtol=1e-5)


def test_topk_transcoder_export_refused(tmp_path):
    with pytest.raises(HusaiError, match="no topk transcoder"):
        export_saelens(make("topk", transcoder=True), tmp_path / "x")


@pytest.mark.parametrize("kind", ["standard", "topk_rescaled", "jumprelu"])
def test_import_native_saelens_with_non_unit_decoder(tmp_path, kind):
    from sae_lens import JumpReLUSAE, JumpReLUSAEConfig, StandardSAE, StandardSAEConfig, TopKSAE, TopKSAEConfig

    torch.manual_seed(0)
    if kind == "standard":
        theirs = StandardSAE(StandardSAEConfig(d_in=12, d_sae=40))
    elif kind == "jumprelu":
        theirs = JumpReLUSAE(JumpReLUSAEConfig(d_in=12, d_sae=40))
    else:
        theirs = TopKSAE(TopKSAEConfig(d_in=12, d_sae=40, k=5, rescale_acts_by_decoder_norm=True))
    with torch.no_grad():
        for p in theirs.parameters():
            p.copy_(torch.randn_like(p) * (0.5 if p.dim() == 1 else 1.0))
        if kind == "jumprelu":
            theirs.threshold.copy_(theirs.threshold.abs() * 0.2)
    theirs.save_model(tmp_path / "native")
    ours = import_saelens(tmp_path / "native")
    torch.testing.assert_close(ours.W_dec.norm(dim=1), torch.ones(40))
    x = inputs()
    with torch.no_grad():
        want = theirs.decode(theirs.encode(x))
        torch.testing.assert_close(ours.decode(ours.encode(x)), want, atol=1e-4, rtol=1e-4)
        assert ((ours.encode(x) != 0) == (theirs.encode(x) != 0)).all()


def test_import_saelens_errors(tmp_path):
    with pytest.raises(HusaiError, match="missing SAELens folder"):
        import_saelens(tmp_path / "none")
    d = export_saelens(make("topk"), tmp_path / "sl")
    cfg = json.loads((d / "cfg.json").read_text())
    cfg["architecture"] = "gated"
    (d / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(HusaiError, match="unsupported SAELens architecture 'gated'"):
        import_saelens(d)
    (d / "sae_weights.safetensors").unlink()
    with pytest.raises(HusaiError, match="missing SAELens weights"):
        import_saelens(d)
