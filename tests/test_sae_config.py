"""SAEConfig validation and bad input: every mistake is a HusaiError that names the culprit."""

import pytest
import torch

from husai_core.errors import HusaiError
from husai_core.sae import SAEConfig, build_sae, train_sae, train_saes


def test_defaults_and_aliases():
    cfg = SAEConfig(architecture="standard", d_in=4, d_sae=8)
    assert cfg.architecture == "relu"
    assert SAEConfig(architecture="Matryoshka_TopK", d_in=4, d_sae=64, k=2).architecture == "matryoshka"
    assert SAEConfig(d_in=10, d_sae=64, k=4).k_aux == 5  # d_in // 2 by default
    assert SAEConfig(d_in=10, d_sae=64, k=4, architecture="matryoshka").prefixes == (8, 16, 32, 64)
    assert SAEConfig(d_in=10, d_sae=64, k=4, matryoshka_prefixes=(40, 10)).prefixes == (10, 40, 64)
    cfg = SAEConfig(d_in=4, d_sae=8, k=2, transcoder=True, d_out=6)
    assert cfg.d_target == 6
    assert SAEConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("kwargs, match", [
    ({"k": 9, "d_sae": 8}, "k=9 must be <= d_sae=8"),
    ({"architecture": "gated"}, "unknown architecture 'gated'"),
    ({"d_in": 0}, "d_in"),
    ({"d_sae": -3}, "d_sae"),
    ({"batch_size": 0}, "batch_size"),
    ({"steps": 1.5}, "steps"),
    ({"lr": 0.0}, "lr"),
    ({"l1_coeff": -1.0}, "l1_coeff"),
    ({"decay_start_frac": 1.5}, "decay_start_frac"),
    ({"b_dec_init": "median"}, "b_dec_init"),
    ({"d_out": 5}, "transcoder"),
    ({"matryoshka_prefixes": (0, 4)}, "matryoshka_prefixes"),
    ({"bandwidth": 0}, "bandwidth"),
])
def test_config_validation(kwargs, match):
    base = {"d_in": 4, "d_sae": 8, "k": 2}
    with pytest.raises(HusaiError, match=match):
        SAEConfig(**{**base, **kwargs})


def test_from_dict_rejects_unknown_fields():
    with pytest.raises(HusaiError, match="unknown field"):
        SAEConfig.from_dict({"d_in": 4, "d_sae": 8, "k": 2, "sparsity": 3})


def test_width_mismatch_names_both_numbers():
    cfg = SAEConfig(d_in=16, d_sae=32, k=2, steps=2, batch_size=4)
    with pytest.raises(HusaiError, match=r"width 12.*d_in is 16"):
        train_sae(cfg, torch.randn(10, 12), seed=0, device="cpu")
    with pytest.raises(HusaiError, match=r"width 12.*expects width 16"):
        build_sae(cfg).encode(torch.randn(3, 12))


def test_bad_training_input():
    cfg = SAEConfig(d_in=4, d_sae=8, k=2, steps=2, batch_size=4)
    x = torch.randn(10, 4)
    with pytest.raises(HusaiError, match="transcoder is False"):
        train_sae(cfg, x, seed=0, x_target=x, device="cpu")
    tc = cfg.replace(transcoder=True, d_out=3)
    with pytest.raises(HusaiError, match="x_target"):
        train_sae(tc, x, seed=0, device="cpu")
    with pytest.raises(HusaiError, match="7 rows"):
        train_sae(tc, x, seed=0, x_target=torch.randn(7, 3), device="cpu")
    with pytest.raises(HusaiError, match="NaN"):
        train_sae(cfg, torch.full((10, 4), float("nan")), seed=0, device="cpu")
    with pytest.raises(HusaiError, match="mode"):
        train_saes(cfg, x, [0], mode="parallel")
    with pytest.raises(HusaiError, match="seed"):
        train_sae(cfg, x, seed=-1, device="cpu")
