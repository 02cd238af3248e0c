import math

import numpy as np
import torch

from husai_core.fourier import answer_fourier_directions, fourier_basis, fourier_summary, frequency_norms


def test_basis_is_orthonormal():
    basis, names = fourier_basis(11)
    assert basis.shape == (11, 11) and names[:3] == ["const", "cos 1", "sin 1"]
    assert torch.allclose(basis @ basis.T, torch.eye(11, dtype=basis.dtype), atol=1e-10)


def test_hand_built_embedding_on_two_frequencies():
    p, d = 31, 8
    x = torch.arange(p, dtype=torch.float64)
    emb = torch.zeros(p, d, dtype=torch.float64)
    emb[:, 0] = 3 * torch.cos(2 * math.pi * 4 * x / p)  # energy 9 * p / 2 on k = 4
    emb[:, 1] = torch.sin(2 * math.pi * 9 * x / p)      # energy p / 2 on k = 9
    emb[:, 2] = 2.0                                     # constant: excluded from concentration
    energy = frequency_norms(emb)
    assert np.isclose(energy.sum(), emb.pow(2).sum().item())
    assert np.isclose(energy[4], 9 * p / 2) and np.isclose(energy[9], p / 2) and np.isclose(energy[0], 4 * p)
    summary = fourier_summary(emb, top=1)
    assert summary.key_frequencies == [4]
    assert np.isclose(summary.concentration, 0.9)  # 9 of 10 parts of the non-constant energy
    assert np.isclose(fourier_summary(emb, top=2).concentration, 1.0)


def test_random_embedding_is_not_concentrated():
    p = 113
    emb = torch.randn(p, 128, generator=torch.Generator().manual_seed(0))
    conc = fourier_summary(emb, top=5).concentration
    assert abs(conc - 5 / 56) < 0.05


def test_answer_directions_recover_planted_waves():
    p = 17
    c = torch.arange(p).repeat(4)
    w = torch.randn(2, 6, generator=torch.Generator().manual_seed(1))
    acts = torch.cos(2 * math.pi * 3 * c / p)[:, None] * w[0] + torch.sin(2 * math.pi * 3 * c / p)[:, None] * w[1]
    dirs = answer_fourier_directions(acts, c, p, [3])
    assert torch.allclose(dirs, w, atol=1e-4)
