"""Fourier analysis for modular addition (Nanda et al. 2023).

A model that learned the algorithm embeds tokens on a few frequencies k: the embedding
matrix W_E (p x d_model), expressed in the Fourier basis over the token index, has its
norm concentrated on a handful of k. A random embedding spreads its norm evenly.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch


def fourier_basis(p: int) -> tuple[torch.Tensor, list[str]]:
    """Orthonormal real Fourier basis over Z_p: rows are const, cos k, sin k for k = 1..(p-1)//2."""
    x = torch.arange(p, dtype=torch.float64)
    rows, names = [torch.ones(p, dtype=torch.float64)], ["const"]
    for k in range(1, (p - 1) // 2 + 1):
        rows += [torch.cos(2 * math.pi * k * x / p), torch.sin(2 * math.pi * k * x / p)]
        names += [f"cos {k}", f"sin {k}"]
    basis = torch.stack(rows)
    return basis / basis.norm(dim=1, keepdim=True), names


def frequency_norms(embedding: torch.Tensor) -> np.ndarray:
    """Squared norm of the embedding carried by each frequency k = 0..(p-1)//2.

    ``embedding`` is (p, d): one row per number token. Frequency k pools its cos and sin
    components; index 0 is the constant component. The values sum to ||embedding||_F^2
    (the basis is orthonormal, and complete for odd p).
    """
    p = embedding.shape[0]
    basis, _ = fourier_basis(p)
    coeffs = basis @ embedding.detach().double().cpu()  # (n_basis, d)
    energy = coeffs.pow(2).sum(dim=1)
    per_freq = [energy[0]] + [energy[2 * k - 1] + energy[2 * k] for k in range(1, (p - 1) // 2 + 1)]
    return torch.stack(per_freq).numpy()


class FourierSummary(NamedTuple):
    energy: np.ndarray  # per frequency, constant at index 0
    key_frequencies: list[int]  # the top frequencies (k >= 1) by energy
    concentration: float  # fraction of non-constant energy in the top frequencies


def fourier_summary(embedding: torch.Tensor, top: int = 5) -> FourierSummary:
    """Key frequencies and the fraction of (non-constant) energy they hold.

    The constant component is excluded: it carries no information about the token.
    A random embedding gives about top / ((p - 1) / 2) by chance.
    """
    energy = frequency_norms(embedding)
    varying = energy[1:]
    order = np.argsort(varying)[::-1][:top]
    return FourierSummary(energy, [int(k) + 1 for k in order], float(varying[order].sum() / varying.sum()))


def answer_fourier_directions(acts: torch.Tensor, c: torch.Tensor, p: int, freqs: list[int]) -> torch.Tensor:
    """Directions in activation space that carry cos/sin(2 pi k c / p) of the answer c.

    For each key frequency k, regress the centred activations on the cos and sin waves of
    c (least squares over all rows): the coefficient vectors are the ground-truth feature
    directions a model using the Fourier algorithm must represent. Returns (2*len(freqs), d).
    """
    x = acts.double() - acts.double().mean(0)
    rows = []
    for k in freqs:
        for wave in (torch.cos, torch.sin):
            w = wave(2 * math.pi * k * c.double() / p)
            w = w - w.mean()
            rows.append(x.T @ w / (w @ w))
    return torch.stack(rows).float()
