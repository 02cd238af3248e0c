"""Consistency regularisers (husai_core.objectives) and the trainer's extra_loss hook."""

import math

import numpy as np
import pytest
import torch

from husai_core.errors import HusaiError
from husai_core.objectives import (AssignmentAlignment, DecoderAlignment, check_design, collapse_diagnostics,
                                   cross_pwmcc, make_objective, reference_alignment, reference_hash)
from husai_core.sae import SAEConfig, train_sae, train_saes

KINDS = ["alignment", "assignment"]



def _reference(n=12, d=8, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def _permuted_flipped(ref, seed=1):
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(ref.shape[0], generator=g)
    signs = torch.where(torch.rand(ref.shape[0], generator=g) < 0.5, -1.0, 1.0)
    scales = torch.rand(ref.shape[0], generator=g) * 3 + 0.5  # unnormalised rows: penalties normalise
    return ref[perm] * (signs * scales)[:, None], perm


@pytest.mark.parametrize("kind", KINDS)
def test_perfect_alignment_gives_zero(kind):
    ref = _reference()
    obj = make_objective(kind, ref, lam=0.7)
    assert obj.penalty(ref).item() == pytest.approx(0.0, abs=1e-6)
    assert obj(ref.clone(), 0).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_permuted_sign_flipped_copy_gives_zero(kind):
    ref = _reference()
    copy, _ = _permuted_flipped(ref)
    assert make_objective(kind, ref, 1.0).penalty(copy).item() == pytest.approx(0.0, abs=1e-6)


def test_assignment_finds_the_permutation():
    ref = _reference()
    copy, perm = _permuted_flipped(ref)
    rows, cols = make_objective("assignment", ref, 1.0).match(copy)
    assert torch.equal(cols[rows.argsort()], perm)  # training row i is reference row perm[i]


@pytest.mark.parametrize("kind", KINDS)
def test_orthogonal_dictionaries_give_one(kind):
    eye = torch.eye(8)
    assert make_objective(kind, eye[:4], 1.0).penalty(eye[4:]).item() == pytest.approx(1.0)


def test_assignment_is_one_to_one_but_alignment_is_not():
    # every training feature is a copy of reference feature 0: the nearest-feature penalty is 0,
    # the one-to-one penalty is not (only one training feature can be matched to feature 0)
    ref = torch.eye(4)
    dec = ref[[0, 0, 0, 0]] + 1e-3 * torch.arange(16.0).reshape(4, 4)
    assert make_objective("alignment", ref, 1.0).penalty(dec).item() < 1e-3
    assert make_objective("assignment", ref, 1.0).penalty(dec).item() > 0.5


def test_value_matches_hand_computation():
    ref = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    dec = torch.tensor([[1.0, 1.0], [0.0, -2.0]])  # |cos| to ref rows: (0.707, 0.707), (0, 1)
    assert DecoderAlignment(ref, 2.0)(dec, 0).item() == pytest.approx(2.0 * (1 - (math.sqrt(0.5) + 1.0) / 2))
    # one-to-one: dec0 -> ref0 (0.707), dec1 -> ref1 (1.0)
    assert AssignmentAlignment(ref, 1.0)(dec, 0).item() == pytest.approx(1 - (math.sqrt(0.5) + 1.0) / 2)
    assert reference_alignment(dec, ref) == pytest.approx((math.sqrt(0.5) + 1.0) / 2)


@pytest.mark.parametrize("kind", KINDS)
def test_gradient_flows_to_the_training_decoder_only(kind):
    ref = _reference().requires_grad_(False)
    dec = torch.randn(12, 8, generator=torch.Generator().manual_seed(5), requires_grad=True)
    obj = make_objective(kind, ref, 0.5, resolve_every=3)
    obj(dec, 0).backward()
    assert dec.grad is not None and dec.grad.abs().sum() > 0
    assert obj.reference.grad is None
    # a gradient step lowers the penalty
    with torch.no_grad():
        moved = dec - 0.1 * dec.grad
    assert obj.penalty(moved).item() < obj.penalty(dec).item()


def test_matching_is_resolved_only_every_n_steps():
    ref = _reference()
    dec = torch.randn(12, 8, generator=torch.Generator().manual_seed(2), requires_grad=True)
    obj = AssignmentAlignment(ref, 1.0, resolve_every=4)
    for step in range(10):
        obj(dec, step)
    assert obj.n_solves == 3  # steps 0, 4, 8
    fresh = obj.fresh()
    assert fresh.n_solves == 0 and fresh.resolve_every == 4
    for step in range(10):
        fresh(dec, step)
    assert fresh.n_solves == 3
    every = AssignmentAlignment(ref, 1.0, resolve_every=1)
    for step in range(5):
        every(dec, step)
    assert every.n_solves == 5


def test_cached_matching_is_reused_between_solves():
    ref = _reference()
    obj = AssignmentAlignment(ref, 1.0, resolve_every=100)
    assert obj(ref, 0).item() == pytest.approx(0.0, abs=1e-6)
    copy, _ = _permuted_flipped(ref)
    # within the window the identity matching of step 0 is kept, so the permuted copy is penalised
    assert obj(copy, 1).item() > 0.1
    assert obj(copy, 100).item() == pytest.approx(0.0, abs=1e-6)  # re-solved at step 100
    assert obj.n_solves == 2


@pytest.mark.parametrize("kind", KINDS)
def test_scale_multiplies_the_weighted_penalty_only(kind):
    ref, dec = _reference(), torch.randn(12, 8, generator=torch.Generator().manual_seed(4))
    plain, scaled = make_objective(kind, ref, 0.3), make_objective(kind, ref, 0.3, scale=250.0)
    assert scaled.penalty(dec).item() == pytest.approx(plain.penalty(dec).item())
    assert scaled(dec, 0).item() == pytest.approx(250.0 * plain(dec, 0).item(), rel=1e-5)
    assert scaled.fresh().scale == 250.0 and scaled.describe()["scale"] == 250.0


@pytest.mark.parametrize("bad", [dict(lam=-0.1), dict(lam=float("nan")), dict(resolve_every=0), dict(scale=0.0),
                                 dict(scale=float("inf"))])
def test_bad_settings_are_clear_errors(bad):
    kwargs = {"kind": "assignment", "reference": _reference(), "lam": 1.0, "resolve_every": 5, **bad}
    with pytest.raises(HusaiError):
        make_objective(**kwargs)


def test_unknown_objective_and_shape_errors():
    with pytest.raises(HusaiError, match="unknown consistency objective"):
        make_objective("cka", _reference(), 1.0)
    with pytest.raises(HusaiError, match="reference decoder"):
        make_objective("alignment", torch.zeros(3), 1.0)
    with pytest.raises(HusaiError, match="width"):
        make_objective("alignment", _reference(d=8), 1.0).penalty(torch.randn(4, 5))
    with pytest.raises(HusaiError, match="2-D"):
        make_objective("alignment", _reference(d=8), 1.0).penalty(torch.randn(2, 4, 8))


def test_reference_hash_tracks_content():
    ref = _reference()
    assert reference_hash(ref) == reference_hash(ref.clone())
    assert reference_hash(ref) != reference_hash(ref + 1e-3)
    assert make_objective("alignment", ref, 0.1).describe()["reference_sha"] == \
        make_objective("assignment", ref, 0.3).describe()["reference_sha"]


# ---------------------------------------------------------------- the trainer hook

def _cfg(**kw):
    return SAEConfig(architecture="topk", d_in=8, d_sae=12, k=2, steps=60, batch_size=32, lr=3e-3, warmup_steps=5,
                     log_every=10, b_dec_init="mean", **kw)


@pytest.fixture(scope="module")
def data():
    return torch.randn(400, 8, generator=torch.Generator().manual_seed(3))


def test_zero_lambda_changes_nothing_and_is_logged(data):
    cfg = _cfg()
    plain = train_sae(cfg, data, 1, device="cpu")
    zero = train_sae(cfg, data, 1, device="cpu", extra_loss=DecoderAlignment(_reference(), 0.0))
    assert torch.equal(plain.sae.W_dec, zero.sae.W_dec)
    assert "extra" not in plain.history.columns
    assert "extra" in zero.history.columns and (zero.history.extra == 0).all()
    assert list(plain.history.loss) == list(zero.history.loss)  # `loss` stays the SAE's own loss


@pytest.mark.parametrize("kind", KINDS)
def test_regulariser_pulls_the_decoder_towards_the_reference(data, kind):
    cfg, ref = _cfg(), _reference()
    plain = train_sae(cfg, data, 1, device="cpu")
    obj = make_objective(kind, ref, 5.0, resolve_every=10)
    reg = train_sae(cfg, data, 1, device="cpu", extra_loss=obj)
    assert reference_alignment(reg.sae.W_dec, ref) > reference_alignment(plain.sae.W_dec, ref) + 0.05
    assert reg.history.extra.iloc[-1] < reg.history.extra.iloc[0]
    assert torch.allclose(reg.sae.W_dec.norm(dim=1), torch.ones(12), atol=1e-5)  # rows stay unit-norm
    if kind == "assignment":
        assert obj.n_solves == 6  # 60 steps, re-solved every 10


def test_extra_loss_forces_sequential_training(data):
    calls = []

    def extra(sae, step):
        calls.append(tuple(sae.W_dec.shape))
        return sae.W_dec.sum() * 0.0

    res = train_saes(_cfg(), data, [1, 2], device="cpu", mode="batched", extra_loss=extra)
    assert [r.info["mode"] for r in res] == ["sequential", "sequential"]
    assert set(calls) == {(12, 8)} and len(calls) == 120


# ---------------------------------------------------------------- collapse diagnostics and design

def test_collapse_is_flagged_when_agreement_does_not_survive_a_change_of_reference():
    d = collapse_diagnostics(within=0.8, cross=0.42, baseline=0.4, alignment=0.9, baseline_alignment=0.5, ev_drop=0.1)
    assert d["collapse"] and d["gain"] == pytest.approx(0.4) and d["collapse_share"] == pytest.approx(0.95)
    assert "collapse onto the reference" in d["explanation"]


def test_real_agreement_is_not_collapse():
    d = collapse_diagnostics(within=0.6, cross=0.58, baseline=0.4, alignment=0.7, baseline_alignment=0.5, ev_drop=0.0)
    assert not d["collapse"] and d["transferable_gain"] == pytest.approx(0.18)


def test_no_gain_is_never_collapse():
    d = collapse_diagnostics(within=0.4, cross=0.3, baseline=0.41, alignment=0.9, baseline_alignment=0.5, ev_drop=0.0)
    assert not d["collapse"] and math.isnan(d["collapse_share"])


def test_cross_pwmcc_shape_and_values():
    ref = _reference()
    copy, _ = _permuted_flipped(ref)
    m = cross_pwmcc([ref, copy], [copy])
    assert m.shape == (2, 1) and np.allclose(m, 1.0, atol=1e-5)


@pytest.mark.parametrize("kwargs,message", [
    (dict(seeds=[1]), "at least 2"),
    (dict(control_seeds=[2]), "also in seeds"),
    (dict(reference_seed=1), "training seeds"),
    (dict(control_reference_seed=11), "must differ"),
    (dict(lambdas=[0.1, 0.3]), "include 0"),
    (dict(lambdas=[0.0, -1.0]), ">= 0"),
    (dict(objectives=["cka"]), "objectives"),
])
def test_check_design_refuses_unanswerable_designs(kwargs, message):
    design = dict(seeds=[1, 2, 3], control_seeds=[4], reference_seed=11, control_reference_seed=12,
                  lambdas=[0.0, 0.1], objectives=["alignment"])
    check_design(**design)  # the good design passes
    with pytest.raises(HusaiError, match=message):
        check_design(**{**design, **kwargs})


def test_regularised_checkpoints_are_reused_only_for_the_same_data(data, tmp_path):
    from husai_core.store import train_or_load_saes

    cfg, ref = _cfg(extra={"objective": "test"}), _reference()
    obj = make_objective("assignment", ref, 1.0, resolve_every=10)
    (first,) = train_or_load_saes(tmp_path, cfg, data, [1], objective=obj)
    assert first.metrics["n_solves"] == 6 and 0 <= first.metrics["final_penalty"] <= 1
    assert "extra" in first.history.columns
    mtime = (first.path / "sae.safetensors").stat().st_mtime_ns
    (again,) = train_or_load_saes(tmp_path, cfg, data, [1], objective=obj)
    assert (again.path / "sae.safetensors").stat().st_mtime_ns == mtime  # loaded, not retrained
    assert torch.equal(again.sae.W_dec, first.sae.W_dec)
    (other,) = train_or_load_saes(tmp_path, cfg, data * 2.0, [1], objective=obj)
    assert other.metrics["data_fingerprint"] != first.metrics["data_fingerprint"]  # new data: retrained
