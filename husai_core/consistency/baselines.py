"""The random baseline: disjoint seeds for the random decoders and Gaussian-random decoders of the
trained ones' shape, and the trained-vs-random summary.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import numpy as np
import torch

from ..errors import HusaiError
from ..decoders import Decoder, _device_of, off_diagonal


# --------------------------------------------------------------------------- random baseline
def disjoint_seeds(trained_seeds: Sequence[int], n: int, offset: int = 10_000) -> list[int]:
    """``n`` seeds counting up from ``offset``, skipping any trained seed (disjoint by construction)."""
    if n < 1:
        raise HusaiError(f"n must be >= 1 random seeds, got {n}")
    taken = {int(s) for s in trained_seeds}
    out, s = [], int(offset)
    while len(out) < n:
        if s not in taken:
            out.append(s)
        s += 1
    return out


def gaussian_decoders(n: int, d_sae: int, d_in: int, seeds: Sequence[int] | None = None, *,
                      trained_seeds: Sequence[int], device: str | torch.device | None = None) -> list[torch.Tensor]:
    """``n`` decoders with i.i.d. N(0, 1) entries, one per seed (the random baseline).

    ``trained_seeds`` is required so that disjointness is checked, not assumed: reusing a
    trained seed would correlate the "random" control with the thing it controls for.
    ``seeds=None`` picks ``disjoint_seeds(trained_seeds, n)``. Sampling runs on a CPU
    generator so a seed gives the same matrix on any device.
    """
    for name, v in (("n", n), ("d_sae", d_sae), ("d_in", d_in)):
        if int(v) != v or v < 1:
            raise HusaiError(f"{name} must be a positive integer, got {v!r}")
    seeds = disjoint_seeds(trained_seeds, n) if seeds is None else [int(s) for s in seeds]
    if len(seeds) != n:
        raise HusaiError(f"seeds has {len(seeds)} entries but n={n}")
    if len(set(seeds)) != len(seeds):
        raise HusaiError(f"random seeds must be distinct, got {seeds}")
    overlap = sorted(set(seeds) & {int(s) for s in trained_seeds})
    if overlap:
        raise HusaiError(f"random seeds overlap the trained seeds: {overlap} (use disjoint_seeds)")
    dev = _device_of(device=device)
    return [torch.randn(d_sae, d_in, generator=torch.Generator().manual_seed(s)).to(dev) for s in seeds]


def random_baseline(decoders: Sequence[Decoder], seeds: Sequence[int]) -> tuple[list[torch.Tensor], list[int]]:
    """The one Gaussian baseline of trained ``decoders`` (one per seed): ``gaussian_decoders`` of
    the same shape, drawn with ``disjoint_seeds``. Returns (random decoders, their seeds)."""
    d_sae, d_in = decoders[0].shape
    random_seeds = disjoint_seeds(seeds, len(seeds))
    return gaussian_decoders(len(seeds), d_sae, d_in, random_seeds, trained_seeds=seeds), random_seeds


class BaselineSummary(NamedTuple):
    trained_mean: float
    random_mean: float
    ratio: float  # trained / random
    difference: float  # trained - random
    n_trained_pairs: int
    n_random_pairs: int


def baseline_summary(trained_matrix: np.ndarray, random_matrix: np.ndarray) -> BaselineSummary:
    """Mean off-diagonal value of the trained vs the random pairwise matrix."""
    t, r = off_diagonal(trained_matrix), off_diagonal(random_matrix)
    for name, v in (("trained_matrix", t), ("random_matrix", r)):
        if v.size == 0:
            raise HusaiError(f"{name} needs at least 2 seeds (got a 1x1 matrix)")
    tm, rm = float(t.mean()), float(r.mean())
    return BaselineSummary(tm, rm, tm / rm if rm != 0 else math.inf, tm - rm, t.size, r.size)
