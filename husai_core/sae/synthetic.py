"""Synthetic activations with a known sparse dictionary, for sanity checks and tests."""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import HusaiError


def planted_dictionary(n_rows: int, d_in: int, n_atoms: int, active: int, seed: int = 0,
                       noise: float = 0.0) -> tuple[Tensor, Tensor]:
    """Rows that are sums of ``active`` random unit atoms (out of ``n_atoms``) with
    coefficients in [1, 2), plus optional Gaussian ``noise``. Returns (x, atoms (n_atoms, d_in))."""
    if not (0 < active <= n_atoms) or min(n_rows, d_in) <= 0:
        raise HusaiError(f"planted_dictionary: need 0 < active <= n_atoms and positive sizes, got "
                         f"n_rows={n_rows}, d_in={d_in}, n_atoms={n_atoms}, active={active}")
    g = torch.Generator().manual_seed(seed)
    atoms = torch.randn(n_atoms, d_in, generator=g)
    atoms = atoms / atoms.norm(dim=1, keepdim=True)
    which = torch.rand(n_rows, n_atoms, generator=g).argsort(dim=1)[:, :active]
    coef = torch.zeros(n_rows, n_atoms).scatter(1, which, 1.0 + torch.rand(n_rows, active, generator=g))
    x = coef @ atoms
    if noise > 0:
        x = x + noise * torch.randn(x.shape, generator=g)
    return x, atoms
