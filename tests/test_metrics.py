"""Reconstruction metrics on hand-computed cases (one definition each, see husai_core.metrics)."""

import numpy as np
import pytest
import torch

from husai_core.errors import HusaiError
from husai_core.metrics import dead_fraction, evaluate_sae, explained_variance, fire_counts, l0, mse


def test_explained_variance_hand_computed():
    x = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 4.0], [2.0, 4.0]])
    # per-dim variances over rows: 1 and 4 -> total 5
    x_hat = x.clone()
    x_hat[:, 1] = 0.0  # residual keeps dim 1 entirely: variance 4
    assert explained_variance(x, x_hat) == pytest.approx(1 - 4 / 5)
    assert explained_variance(x, x) == pytest.approx(1.0)
    # a constant offset has no variance: EV ignores it (MSE does not)
    assert explained_variance(x, x + 3.0) == pytest.approx(1.0)
    assert explained_variance(x, torch.zeros_like(x)) == pytest.approx(0.0)
    assert explained_variance(x.numpy(), x_hat.numpy()) == pytest.approx(0.2)  # numpy accepted


def test_mse_is_mean_over_all_elements():
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    assert mse(x, torch.zeros_like(x)) == pytest.approx((1 + 4 + 9 + 16) / 4)
    assert mse(np.ones((3, 5)), np.zeros((3, 5))) == pytest.approx(1.0)


def test_l0_and_fire_counts():
    z = torch.tensor([[0.0, 1.0, 2.0], [0.0, 0.0, 0.0], [3.0, 0.0, 0.0]])
    assert l0(z) == pytest.approx(1.0)
    assert fire_counts(z).tolist() == [1, 1, 1]
    assert l0(z.reshape(1, 3, 3)) == pytest.approx(1.0)  # leading axes are rows


def test_dead_fraction_with_explicit_window():
    assert dead_fraction(torch.tensor([0, 3, 0, 1]), window_tokens=100) == pytest.approx(0.5)
    since = torch.tensor([10, 200, 99, 100])
    assert dead_fraction(since, window_tokens=100, kind="tokens_since_fired") == pytest.approx(0.5)
    with pytest.raises(HusaiError, match="window_tokens"):
        dead_fraction(since, window_tokens=0)
    with pytest.raises(TypeError):
        dead_fraction(since)  # the window is required
    with pytest.raises(HusaiError, match="kind"):
        dead_fraction(since, window_tokens=5, kind="bogus")


def test_metric_bad_input():
    with pytest.raises(HusaiError, match="shape"):
        mse(torch.zeros(3, 2), torch.zeros(3, 3))
    with pytest.raises(HusaiError, match="zero variance"):
        explained_variance(torch.ones(4, 2), torch.zeros(4, 2))


class _Diag:
    """A minimal SAE-like object (encode/decode/cfg) to check evaluate_sae's batching."""

    class cfg:
        d_in = d_sae = d_target = 3
        transcoder = False

    n_stack = 1
    dtype = torch.float32
    device = torch.device("cpu")

    def encode(self, x):
        return torch.relu(x - 0.5)

    def decode(self, z):
        return z * 0.9


def test_evaluate_sae_batched_equals_one_shot():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(37, 3, generator=g)
    sae = _Diag()
    z = sae.encode(x)
    res = evaluate_sae(sae, x, batch_size=5)
    assert res["ev"] == pytest.approx(explained_variance(x, sae.decode(z)), abs=1e-6)
    assert res["mse"] == pytest.approx(mse(x, sae.decode(z)), abs=1e-6)
    assert res["l0"] == pytest.approx(l0(z))
    assert res["dead_fraction"] == pytest.approx(dead_fraction(fire_counts(z), window_tokens=37))
    assert res["dead_window_tokens"] == 37 and res["n_rows"] == 37
    with pytest.raises(HusaiError, match="width"):
        evaluate_sae(sae, torch.zeros(4, 5))
