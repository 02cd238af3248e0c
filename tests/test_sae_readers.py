"""Readers for sparsify / dictionary_learning checkpoints, checked against the real packages.

Checkpoints are written by the packages themselves (sparsify ``SparseCoder.save_to_disk``;
dictionary_learning ``trainSAE`` for a few steps, or, for seeded random weights, the
``torch.save(state_dict)`` + ``config.json`` that ``trainSAE`` writes) and loaded back with
the packages' own loaders (``SparseCoder.load_from_disk``, ``dictionary_learning.utils.
load_dictionary`` / ``from_pretrained``) for the comparison.
"""

from __future__ import annotations

import json
import os

import pytest
import torch

from husai_core.errors import HusaiError
from husai_core.sae import SAEConfig, build_sae, export_saelens, load_sae, save_sae, stack_saes
from husai_core.sae.readers import FORMATS, detect_format, read_sae

os.environ.setdefault("SPARSIFY_DISABLE_TRITON", "1")
sparsify = pytest.importorskip("sparsify")
dl = pytest.importorskip("dictionary_learning")

from dictionary_learning.dictionary import (  # noqa: E402
    AutoEncoder, AutoEncoderNew, GatedAutoEncoder, JumpReluAutoEncoder,
)
from dictionary_learning.trainers.batch_top_k import BatchTopKSAE  # noqa: E402
from dictionary_learning.trainers.top_k import AutoEncoderTopK  # noqa: E402
from dictionary_learning.utils import load_dictionary  # noqa: E402
from sparsify import SparseCoder, SparseCoderConfig  # noqa: E402

D_IN, D_SAE, K = 16, 64, 8
SEEDS = (0, 1, 2)
TOL = 1e-5


def _x(seed: int, n: int = 48) -> torch.Tensor:
    g = torch.Generator().manual_seed(1000 + seed)
    return torch.randn(n, D_IN, generator=g) + 0.2


def _close(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


def _one_line_error(fn, *needles: str) -> str:
    with pytest.raises(HusaiError) as info:
        fn()
    msg = str(info.value)
    assert "\n" not in msg and msg.strip(), msg
    for n in needles:
        assert n in msg, f"{n!r} not in {msg!r}"
    return msg


# ====================================================================== sparsify
def _sparsify(seed: int, *, transcode: bool = False, unit: bool = True, **cfg) -> SparseCoder:
    torch.manual_seed(seed)
    sae = SparseCoder(D_IN, SparseCoderConfig(num_latents=D_SAE, k=K, transcode=transcode, **cfg))
    with torch.no_grad():
        sae.encoder.bias.normal_(0.0, 0.3)
        sae.b_dec.normal_(0.0, 1.0)
        sae.W_dec.normal_()
        if unit:
            sae.set_decoder_norm_to_unit_norm()  # what sparsify's trainer does after every step
    return sae


def _sparsify_dense(sae: SparseCoder, x: torch.Tensor) -> torch.Tensor:
    acts, idx, _ = sae.encode(x)
    return torch.zeros(x.shape[0], sae.num_latents).scatter(-1, idx, acts)


@pytest.mark.parametrize("seed", SEEDS)
def test_sparsify_topk_matches_the_package(tmp_path, seed):
    path = tmp_path / "layers.3"
    _sparsify(seed).save_to_disk(path)
    theirs = SparseCoder.load_from_disk(path)
    assert detect_format(path) == "sparsify"
    ours = read_sae(path)
    assert ours.cfg.architecture == "topk" and ours.cfg.k == K and (ours.cfg.d_in, ours.cfg.d_sae) == (D_IN, D_SAE)
    assert not ours.training
    x = _x(seed)
    with torch.no_grad():
        z_theirs = _sparsify_dense(theirs, x)
        z = ours.encode(x)
        assert _close(z, z_theirs) < TOL
        assert _close(ours.decode(z), theirs.decode(*theirs.encode(x)[:2])) < TOL
        # decode of arbitrary latents: sparsify decodes (values, indices) pairs
        zr = torch.randn(x.shape[0], D_SAE)
        idx = torch.arange(D_SAE).expand(x.shape[0], -1)
        assert _close(ours.decode(zr), theirs.decode(zr, idx)) < TOL
        assert _close(ours.decode(z), theirs(x).sae_out) < TOL
    # unit-norm rows as in our own SAEs
    assert torch.allclose(ours.W_dec.norm(dim=1), torch.ones(D_SAE), atol=1e-5)


def test_sparsify_seeds_stack_and_round_trip(tmp_path):
    saes = []
    for seed in SEEDS:
        _sparsify(seed).save_to_disk(tmp_path / f"s{seed}" / "layers.0")
        saes.append(read_sae(tmp_path / f"s{seed}"))  # run folder holding one hookpoint
    stacked = stack_saes(saes)
    assert stacked.n_stack == 3
    back = load_sae(save_sae(saes[0], tmp_path / "ours"))
    x = _x(0)
    with torch.no_grad():
        assert torch.equal(back.encode(x), saes[0].encode(x))


def test_sparsify_transcoder(tmp_path):
    sae = _sparsify(5, transcode=True)
    sae.save_to_disk(tmp_path / "tc")
    theirs = SparseCoder.load_from_disk(tmp_path / "tc")
    ours = read_sae(tmp_path / "tc")
    assert ours.cfg.transcoder and ours.cfg.d_target == D_IN
    assert torch.count_nonzero(ours.b_in) == 0
    x = _x(5)
    with torch.no_grad():
        z = ours.encode(x)
        assert _close(z, _sparsify_dense(theirs, x)) < TOL
        assert _close(ours.decode(z), theirs.decode(*theirs.encode(x)[:2])) < TOL
    # sparsify's trainer does not normalise transcoder decoders: TopK cannot be folded exactly
    _sparsify(6, transcode=True, unit=False).save_to_disk(tmp_path / "tc2")
    _one_line_error(lambda: read_sae(tmp_path / "tc2"), "tc2", "TopK", "unit-norm")


def test_sparsify_unsupported_features(tmp_path):
    _sparsify(0, activation="groupmax").save_to_disk(tmp_path / "gm")
    _one_line_error(lambda: read_sae(tmp_path / "gm"), "gm", "groupmax")
    sk = _sparsify(0, skip_connection=True)
    sk.save_to_disk(tmp_path / "skip0")  # a zero skip connection is exactly nothing
    x = _x(0)
    with torch.no_grad():
        assert _close(read_sae(tmp_path / "skip0").encode(x), _sparsify_dense(sk, x)) < TOL
        sk.W_skip.normal_()
    sk.save_to_disk(tmp_path / "skip")
    _one_line_error(lambda: read_sae(tmp_path / "skip"), "skip", "W_skip")
    _sparsify(0, unit=False).save_to_disk(tmp_path / "nonunit")
    _one_line_error(lambda: read_sae(tmp_path / "nonunit"), "nonunit", "unit-norm")


def test_sparsify_parent_folders(tmp_path):
    run = tmp_path / "run"
    _sparsify(0).save_to_disk(run / "layers.1")
    (run / "config.json").write_text(json.dumps({"sae": {}, "batch_size": 8}))  # sparsify's TrainConfig
    (run / "best").mkdir()
    assert detect_format(run) == "sparsify"
    _sparsify(1).save_to_disk(run / "layers.2")
    msg = _one_line_error(lambda: detect_format(run), "layers.1", "layers.2")
    assert "one of them" in msg
    _one_line_error(lambda: read_sae(run), "layers.1", "layers.2")


def test_sparsify_corrupt_files(tmp_path):
    good = tmp_path / "good"
    _sparsify(0).save_to_disk(good)
    for name, content in (("sae.safetensors", b"not a safetensors file"), ("cfg.json", b"{ nope")):
        bad = tmp_path / f"bad_{name}"
        _sparsify(0).save_to_disk(bad)
        (bad / name).write_bytes(content)
        _one_line_error(lambda: read_sae(bad), name)
    missing = tmp_path / "missing"
    _sparsify(0).save_to_disk(missing)
    (missing / "sae.safetensors").unlink()
    _one_line_error(lambda: detect_format(missing), "missing", "cfg.json", "sae.safetensors")
    _one_line_error(lambda: read_sae(good, format="dictionary_learning"), "sparsify", "dictionary_learning")
    _one_line_error(lambda: read_sae(good, format="nope"), "nope")


# ====================================================================== dictionary_learning
@pytest.fixture(scope="module")
def dl_runs(tmp_path_factory):
    """One trainSAE run per seed: five trainers (standard, topk, batchtopk, jumprelu, matryoshka)."""
    from dictionary_learning.training import trainSAE
    from dictionary_learning.trainers import BatchTopKTrainer, JumpReluTrainer, StandardTrainer, TopKTrainer
    from dictionary_learning.trainers.matryoshka_batch_top_k import MatryoshkaBatchTopKTrainer

    base = tmp_path_factory.mktemp("dl")
    runs = {}
    for seed in SEEDS:
        def data(seed=seed):
            g = torch.Generator().manual_seed(seed)
            while True:
                yield torch.randn(32, D_IN, generator=g) * 2.0 + 0.3

        common = dict(steps=3, activation_dim=D_IN, dict_size=D_SAE, layer=0, lm_name="toy", device="cpu",
                      seed=seed, warmup_steps=1)
        cfgs = [dict(trainer=StandardTrainer, sparsity_warmup_steps=1, **common),
                dict(trainer=TopKTrainer, k=K, threshold_start_step=0, **common),
                dict(trainer=BatchTopKTrainer, k=K, threshold_start_step=0, **common),
                dict(trainer=JumpReluTrainer, sparsity_warmup_steps=1, lr=0.05, **common),
                dict(trainer=MatryoshkaBatchTopKTrainer, k=K, threshold_start_step=0,
                     group_fractions=[0.25, 0.75], **common)]
        trainSAE(data(), cfgs, steps=3, save_dir=str(base / f"seed{seed}"), device="cpu", save_steps=[1])
        runs[seed] = base / f"seed{seed}"
    return runs


DL_TRAINED = [(0, "AutoEncoder", "relu"), (1, "AutoEncoderTopK", "topk"), (2, "BatchTopKSAE", "batchtopk"),
              (3, "JumpReluAutoEncoder", "jumprelu"), (4, "MatryoshkaBatchTopKSAE", "batchtopk")]


@pytest.mark.parametrize("seed", SEEDS)
def test_dictionary_learning_trained_checkpoints_match(dl_runs, seed):
    for i, cls, arch in DL_TRAINED:
        path = dl_runs[seed] / f"trainer_{i}"
        assert detect_format(path) == "dictionary_learning"
        theirs, config = load_dictionary(str(path), "cpu")
        assert config["trainer"]["dict_class"] == cls
        ours = read_sae(path)
        assert ours.cfg.architecture == arch, cls
        assert ours.cfg.extra["source_class"] == cls
        if arch in ("topk", "batchtopk"):
            assert ours.cfg.k == K
        x = _x(seed)
        with torch.no_grad():
            f = theirs.encode(x)
            z = ours.encode(x)
            assert _close(z, f) < TOL, cls
            assert (z > 0).any(), cls
            assert _close(ours.decode(z), theirs.decode(f)) < TOL, cls
            zr = torch.rand(x.shape[0], D_SAE)
            assert _close(ours.decode(zr), theirs.decode(zr)) < TOL, cls
        # the ae.pt file itself reads the same; a checkpoints/ae_<step>.pt finds config.json above it
        assert torch.equal(read_sae(path / "ae.pt").W_dec, ours.W_dec)
        step = path / "checkpoints" / "ae_1.pt"
        assert detect_format(step) == "dictionary_learning"
        early = read_sae(step)
        assert early.cfg == ours.cfg and not torch.equal(early.W_enc, ours.W_enc)
    # a save_dir holding several trainers: the caller must pick one
    _one_line_error(lambda: detect_format(dl_runs[seed]), "trainer_0", "trainer_4")


def test_dictionary_learning_trained_batchtopk_seeds_stack(dl_runs):
    saes = [read_sae(dl_runs[s] / "trainer_2") for s in SEEDS]
    assert stack_saes(saes).n_stack == 3


def _save_dl(ae: torch.nn.Module, folder, dict_class: str, **trainer) -> None:
    """What trainSAE writes: ``ae.pt`` (CPU state dict) and ``config.json`` {"trainer": {...}}."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.cpu() for k, v in ae.state_dict().items()}, folder / "ae.pt")
    (folder / "config.json").write_text(json.dumps({"trainer": {"dict_class": dict_class, **trainer}}))


def _randomise(ae, seed: int, dec_scale: bool):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in ae.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.3 if p.dim() == 1 else D_IN ** -0.5))
        dec = ae.W_dec if hasattr(ae, "W_dec") else ae.decoder.weight.T  # rows = latents
        dec.div_(dec.norm(dim=1, keepdim=True))
        if dec_scale:
            dec.mul_(torch.rand(dec.shape[0], 1, generator=g) * 1.5 + 0.25)
    return ae


@pytest.mark.parametrize("seed", SEEDS)
def test_dictionary_learning_relu_with_non_unit_decoder(tmp_path, seed):
    """AutoEncoder.from_pretrained normalises decoder columns, folding them as we do."""
    torch.manual_seed(seed)
    ae = _randomise(AutoEncoder(D_IN, D_SAE), seed, dec_scale=True)
    _save_dl(ae, tmp_path / "ae", "AutoEncoder")
    theirs = AutoEncoder.from_pretrained(str(tmp_path / "ae" / "ae.pt"))
    ours = read_sae(tmp_path / "ae")
    assert torch.allclose(ours.W_dec.norm(dim=1), torch.ones(D_SAE), atol=1e-5)
    x = _x(seed)
    with torch.no_grad():
        z = ours.encode(x)
        assert _close(z, theirs.encode(x)) < TOL
        assert _close(ours.decode(z), ae(x)) < TOL  # unchanged reconstruction
        zr = torch.rand(x.shape[0], D_SAE)
        assert _close(ours.decode(zr), theirs.decode(zr)) < TOL


@pytest.mark.parametrize("seed", SEEDS)
def test_dictionary_learning_jumprelu_thresholds_and_norms(tmp_path, seed):
    torch.manual_seed(seed)
    ae = _randomise(JumpReluAutoEncoder(D_IN, D_SAE), seed, dec_scale=False)
    with torch.no_grad():
        ae.threshold.copy_(torch.rand(D_SAE) * 0.6)
        ae.threshold[:5] = -0.5  # a non-positive threshold acts as a plain ReLU
    _save_dl(ae, tmp_path / "unit", "JumpReluAutoEncoder", bandwidth=0.001)
    theirs = JumpReluAutoEncoder.from_pretrained(str(tmp_path / "unit" / "ae.pt"))
    ours = read_sae(tmp_path / "unit")
    assert ours.cfg.architecture == "jumprelu"
    x = _x(seed)
    with torch.no_grad():
        z, f = ours.encode(x), theirs.encode(x)
        assert _close(z, f) < TOL and (z[:, :5] > 0).any()
        assert _close(ours.decode(z), theirs.decode(f)) < TOL

        # non-unit decoder rows: folded, latent j reads n_j times the source's, reconstruction unchanged
        n = torch.rand(D_SAE) * 1.5 + 0.25
        ae.W_dec.mul_(n[:, None])
    _save_dl(ae, tmp_path / "scaled", "JumpReluAutoEncoder")
    theirs = JumpReluAutoEncoder.from_pretrained(str(tmp_path / "scaled" / "ae.pt"))
    ours = read_sae(tmp_path / "scaled")
    assert torch.allclose(ours.W_dec.norm(dim=1), torch.ones(D_SAE), atol=1e-5)
    with torch.no_grad():
        z, f = ours.encode(x), theirs.encode(x)
        assert _close(z, f * n) < TOL
        assert _close(ours.decode(z), theirs.decode(f)) < TOL
        zr = torch.rand(x.shape[0], D_SAE)
        assert _close(ours.decode(zr), theirs.decode(zr / n)) < TOL


@pytest.mark.parametrize("seed", SEEDS)
def test_dictionary_learning_batchtopk_thresholds(tmp_path, seed):
    torch.manual_seed(seed)
    ae = _randomise(BatchTopKSAE(D_IN, D_SAE, K), seed, dec_scale=False)
    x = _x(seed)
    for name, thr in (("calibrated", 0.4), ("uncalibrated", -1.0)):
        ae.threshold.fill_(thr)
        _save_dl(ae, tmp_path / name, "BatchTopKSAE", k=K)
        theirs, _ = load_dictionary(str(tmp_path / name), "cpu")
        ours = read_sae(tmp_path / name)
        assert ours.cfg.architecture == "batchtopk" and ours.cfg.k == K
        assert float(ours.threshold) == float(torch.tensor(max(thr, 0.0)))  # float32
        with torch.no_grad():
            z, f = ours.encode(x), theirs.encode(x)
            assert _close(z, f) < TOL
            assert _close(ours.decode(z), theirs.decode(f)) < TOL
    # non-unit rows: per-latent thresholds, i.e. a JumpReLU SAE, exact
    ae.threshold.fill_(0.4)
    n = torch.rand(D_SAE) * 1.5 + 0.25
    with torch.no_grad():
        ae.decoder.weight.mul_(n[None, :])
    _save_dl(ae, tmp_path / "scaled", "BatchTopKSAE", k=K)
    theirs, _ = load_dictionary(str(tmp_path / "scaled"), "cpu")
    ours = read_sae(tmp_path / "scaled")
    assert ours.cfg.architecture == "jumprelu"
    with torch.no_grad():
        z, f = ours.encode(x), theirs.encode(x)
        assert _close(z, f * n) < TOL
        assert _close(ours.decode(z), theirs.decode(f)) < TOL


def test_dictionary_learning_topk_and_autoencodernew(tmp_path):
    x = _x(0)
    ae = _randomise(AutoEncoderTopK(D_IN, D_SAE, K), 0, dec_scale=False)
    _save_dl(ae, tmp_path / "topk", "AutoEncoderTopK", k=K)
    theirs, _ = load_dictionary(str(tmp_path / "topk"), "cpu")
    ours = read_sae(tmp_path / "topk")
    with torch.no_grad():
        assert _close(ours.encode(x), theirs.encode(x)) < TOL
    _randomise(ae, 1, dec_scale=True)
    _save_dl(ae, tmp_path / "topk_scaled", "AutoEncoderTopK", k=K)
    _one_line_error(lambda: read_sae(tmp_path / "topk_scaled"), "topk_scaled", "TopK", "unit-norm")
    # k in config.json and ae.pt disagree
    _save_dl(ae, tmp_path / "k_mismatch", "AutoEncoderTopK", k=K + 1)
    _one_line_error(lambda: read_sae(tmp_path / "k_mismatch"), "k_mismatch", "k=")

    new = _randomise(AutoEncoderNew(D_IN, D_SAE), 2, dec_scale=True)
    _save_dl(new, tmp_path / "new", "AutoEncoderNew")
    ours = read_sae(tmp_path / "new")
    n = new.decoder.weight.norm(dim=0).detach()
    with torch.no_grad():
        f = new.encode(x)
        assert _close(ours.encode(x), f * n) < TOL
        assert _close(ours.decode(ours.encode(x)), new.decode(f)) < TOL


def test_dictionary_learning_without_config_and_errors(tmp_path):
    x = _x(0)
    ae = _randomise(JumpReluAutoEncoder(D_IN, D_SAE), 0, dec_scale=False)
    (tmp_path / "bare").mkdir()
    torch.save(ae.state_dict(), tmp_path / "bare" / "ae.pt")  # no config.json: class from the tensors
    with torch.no_grad():
        assert _close(read_sae(tmp_path / "bare").encode(x), ae.encode(x)) < TOL
    topk = AutoEncoderTopK(D_IN, D_SAE, K)
    (tmp_path / "ambiguous").mkdir()
    torch.save(topk.state_dict(), tmp_path / "ambiguous" / "ae.pt")
    _one_line_error(lambda: read_sae(tmp_path / "ambiguous"), "AutoEncoderTopK", "BatchTopKSAE", "config.json")

    _save_dl(GatedAutoEncoder(D_IN, D_SAE), tmp_path / "gated", "GatedAutoEncoder")
    _one_line_error(lambda: read_sae(tmp_path / "gated"), "gated", "GatedAutoEncoder")
    (tmp_path / "gated" / "config.json").unlink()
    _one_line_error(lambda: read_sae(tmp_path / "gated"), "GatedAutoEncoder")

    _save_dl(ae, tmp_path / "corrupt", "JumpReluAutoEncoder")
    (tmp_path / "corrupt" / "ae.pt").write_bytes(b"\x80\x02 definitely not a torch file")
    _one_line_error(lambda: read_sae(tmp_path / "corrupt"), "corrupt", "ae.pt")

    state = {k: v for k, v in ae.state_dict().items() if k != "threshold"}
    (tmp_path / "missing_tensor").mkdir()
    torch.save(state, tmp_path / "missing_tensor" / "ae.pt")
    cfg = {"trainer": {"dict_class": "JumpReluAutoEncoder"}}
    (tmp_path / "missing_tensor" / "config.json").write_text(json.dumps(cfg))
    _one_line_error(lambda: read_sae(tmp_path / "missing_tensor"), "missing_tensor", "threshold")

    _save_dl(ae, tmp_path / "no_ae", "JumpReluAutoEncoder")
    (tmp_path / "no_ae" / "ae.pt").unlink()
    _one_line_error(lambda: detect_format(tmp_path / "no_ae"), "no_ae", "config.json", "ae.pt")

    _save_dl(ae, tmp_path / "badcfg", "JumpReluAutoEncoder")
    (tmp_path / "badcfg" / "config.json").write_text("[1, 2")
    _one_line_error(lambda: read_sae(tmp_path / "badcfg"), "config.json")


# ====================================================================== husai / saelens / nothing
def test_detect_and_read_husai_and_saelens(tmp_path):
    sae = build_sae(SAEConfig(architecture="jumprelu", d_in=D_IN, d_sae=D_SAE), seed=0)
    save_sae(sae, tmp_path / "ours")
    export_saelens(sae, tmp_path / "sl")
    assert detect_format(tmp_path / "ours") == "husai"
    assert detect_format(tmp_path / "ours" / "sae.safetensors") == "husai"
    assert detect_format(tmp_path / "sl") == "saelens"
    x = _x(0)
    with torch.no_grad():
        for p, fmt in ((tmp_path / "ours", "husai"), (tmp_path / "sl", "saelens")):
            back = read_sae(p, format=fmt)
            assert _close(back.encode(x), sae.encode(x)) < TOL
    assert set(FORMATS) == {"husai", "saelens", "sparsify", "dictionary_learning"}


def test_unknown_folders_and_paths(tmp_path):
    _one_line_error(lambda: detect_format(tmp_path / "nowhere"), "nowhere", "no such file")
    empty = tmp_path / "empty"
    empty.mkdir()
    _one_line_error(lambda: detect_format(empty), "empty", "ae.pt", "cfg.json")
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("hello")
    (other / "weights.bin").write_bytes(b"\0" * 8)
    (other / "sub").mkdir()
    _one_line_error(lambda: read_sae(other), "other", "expected")
    _one_line_error(lambda: detect_format(other / "notes.txt"), "notes.txt")
    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / "sae.safetensors").write_bytes(b"x")
    _one_line_error(lambda: detect_format(lone), "lone", "config.json", "cfg.json")
    fake = tmp_path / "fake_husai"
    fake.mkdir()
    (fake / "config.json").write_text(json.dumps({"format": "something-else"}))
    (fake / "sae.safetensors").write_bytes(b"x")
    _one_line_error(lambda: detect_format(fake), "fake_husai", "husai")
