"""Feature stability against a reference, consensus features, subspace overlap and the alignment
with ground-truth directions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, Sequence

import numpy as np
import torch

from ..errors import HusaiError
from .pairwise import _maybe_tqdm, _pair_maxima
from ..decoders import DEFAULT_THRESHOLDS, Decoder, _check_thresholds, _normalise, _prepare, _prepare_list


# --------------------------------------------------------------------------- per-feature stability
@dataclass(frozen=True)
class StabilityResult:
    """For each scored dictionary ``k = indices[m]``: ``best[m]`` has shape
    ``(n_dicts - 1, d_sae_k)`` = best |cos| of each feature in every other dictionary
    (in order, skipping k), and ``counts[m]`` how many of those are >= ``threshold``."""

    indices: list[int]
    best: list[np.ndarray]
    counts: list[np.ndarray]
    threshold: float
    n_others: int

    def fraction_stable(self, min_fraction: float = 1.0) -> list[float]:
        """Per scored dictionary: share of features matched in >= min_fraction of the others."""
        need = _required(min_fraction, self.n_others)
        return [float((c >= need).mean()) for c in self.counts]


def _required(min_fraction: float, n_others: int) -> int:
    if not 0.0 < min_fraction <= 1.0:
        raise HusaiError(f"min_fraction must lie in (0, 1], got {min_fraction}")
    return max(1, math.ceil(min_fraction * n_others - 1e-9))


def _check_reference(reference: int | str | None, n: int) -> list[int]:
    if reference is None or reference == "all":
        return list(range(n))
    if isinstance(reference, str) or int(reference) != reference or not -n <= reference < n:
        raise HusaiError(f"reference {reference!r} is not 'all' or an index into {n} dictionaries")
    return [int(reference) % n]


def feature_stability(decoders: Sequence[Decoder], reference: int | str | None = 0, threshold: float = 0.7,
                      chunk_size: int | None = None, device: str | torch.device | None = None,
                      progress: bool = False) -> StabilityResult:
    """In how many other seeds each feature has a match (max |cos| >= threshold).

    ``reference=k`` scores dictionary k only (n-1 passes); ``"all"`` (or None) scores
    all of them, reusing each pair's pass for both directions (n(n-1)/2 passes).
    """
    threshold = _check_thresholds([threshold])[0]
    mats = _prepare_list(decoders, device)
    n = len(mats)
    scored = _check_reference(reference, n)
    best = {k: np.zeros((n - 1, mats[k].shape[0])) for k in scored}
    slot = lambda k, j: j if j < k else j - 1  # row of dictionary j in best[k]  # noqa: E731
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n) if i in best or j in best]
    for i, j in _maybe_tqdm(pairs, progress, "stability pairs"):
        m = _pair_maxima(mats[i], mats[j], chunk_size)
        if i in best:
            best[i][slot(i, j)] = m.row_max.cpu().numpy()
        if j in best:
            best[j][slot(j, i)] = m.col_max.cpu().numpy()
    counts = [(best[k] >= threshold).sum(axis=0) for k in scored]
    return StabilityResult(scored, [best[k] for k in scored], counts, threshold, n - 1)


@dataclass(frozen=True)
class ConsensusResult:
    """Features of dictionary ``reference`` matched (|cos| >= threshold) in at least
    ``required`` of the ``n_others`` other dictionaries. ``directions`` are the unit mean
    of the reference feature and its sign-aligned matches. ``random_fraction`` is the same
    share computed on the supplied random decoders (None when none were given)."""

    reference: int
    indices: np.ndarray
    n_present: np.ndarray  # in how many other dictionaries each consensus feature was matched
    directions: np.ndarray  # (n_consensus, d_in) float32
    fraction: float  # len(indices) / d_sae of the reference
    required: int
    n_others: int
    threshold: float
    random_fraction: float | None


def _consensus(mats: list[torch.Tensor], reference: int, threshold: float, min_fraction: float,
               chunk_size: int | None):
    ref = mats[reference]
    others = [m for k, m in enumerate(mats) if k != reference]
    need = _required(min_fraction, len(others))
    present = torch.zeros(ref.shape[0], dtype=torch.long, device=ref.device)
    total = ref.clone()  # running sum of sign-aligned matched directions
    for other in others:
        m = _pair_maxima(ref, other, chunk_size, with_index=True)
        hit = m.row_max >= threshold
        matched = other[m.row_arg]
        sign = torch.sign((ref * matched).sum(dim=1)).unsqueeze(1)  # undo sign flips before averaging
        total += torch.where(hit.unsqueeze(1), sign * matched, torch.zeros_like(matched))
        present += hit.long()
    keep = present >= need
    idx = torch.nonzero(keep).squeeze(1)
    dirs = _normalise(total[idx])
    return idx.cpu().numpy(), present[idx].cpu().numpy(), dirs.cpu().numpy(), float(keep.float().mean()), need


def consensus_features(decoders: Sequence[Decoder], threshold: float = 0.7, min_fraction: float = 1.0,
                       reference: int = 0, random_decoders: Sequence[Decoder] | None = None,
                       chunk_size: int | None = None, device: str | torch.device | None = None) -> ConsensusResult:
    """Features of ``decoders[reference]`` present in >= ``min_fraction`` of the other seeds.

    Pass ``random_decoders`` (e.g. ``gaussian_decoders`` of the same shape) for the chance
    level: the same procedure on random dictionaries, reported as ``random_fraction``.
    """
    threshold = _check_thresholds([threshold])[0]
    mats = _prepare_list(decoders, device)
    if reference is None or reference == "all":
        raise HusaiError("reference must be one dictionary's index for consensus_features")
    ref = _check_reference(reference, len(mats))[0]
    idx, present, dirs, frac, need = _consensus(mats, ref, threshold, min_fraction, chunk_size)
    rand_frac = None
    if random_decoders is not None:
        rmats = _prepare_list(random_decoders, device, what="random_decoders")
        if rmats[0].shape[1] != mats[0].shape[1]:
            raise HusaiError(f"random_decoders have d_in={rmats[0].shape[1]} but decoders have d_in={mats[0].shape[1]}")
        rand_frac = _consensus(rmats, 0, threshold, min_fraction, chunk_size)[3]
    return ConsensusResult(ref, idx, present, dirs, frac, need, len(mats) - 1, threshold, rand_frac)


# --------------------------------------------------------------------------- subspaces
class SubspaceResult(NamedTuple):
    """``mean_cos2 = ||Q_a^T Q_b||_F^2 / r`` in [0, 1] (1: same subspace, 0: orthogonal).
    For two independent uniformly random r-dim subspaces of R^d_in its expectation is
    ``r / d_in`` (``random_expectation``): each of the r directions of one subspace keeps
    on average a fraction r/d_in of its squared length when projected onto the other."""

    mean_cos2: float
    angles: np.ndarray  # principal angles in radians, ascending
    cosines: np.ndarray  # cos of the principal angles (singular values of Q_a^T Q_b), descending
    r: int
    d_in: int
    random_expectation: float


def _top_subspace(m: torch.Tensor, r: int) -> torch.Tensor:
    # top-r right singular vectors of D are the top eigenvectors of the d_in x d_in Gram D^T D:
    # cheap for tall decoders and never needs the d_sae-sized left factor. float64 for accuracy.
    d = m.double()
    evals, evecs = torch.linalg.eigh(d.T @ d)  # ascending
    return evecs[:, -r:]


def subspace_overlap(dec_a: Decoder, dec_b: Decoder, r: int, device: str | torch.device | None = None) -> SubspaceResult:
    """Principal angles between the top-r subspaces spanned by the (unit-normalised) decoder rows.

    Rows are normalised first, so every feature weighs the same regardless of its norm;
    the subspace is uncentred (principal directions of the rows, not of their deviations).
    """
    a, b = _prepare([dec_a, dec_b], ["dec_a", "dec_b"], device)
    d_in = a.shape[1]
    limit = min(d_in, a.shape[0], b.shape[0])
    if int(r) != r or not 1 <= r <= limit:
        raise HusaiError(f"r must be an integer in [1, min(d_in, d_sae_a, d_sae_b)={limit}], got {r!r}")
    qa, qb = _top_subspace(a, r), _top_subspace(b, r)
    cos = torch.linalg.svdvals(qa.T @ qb).clamp(0.0, 1.0).cpu().numpy()
    return SubspaceResult(float((cos**2).sum() / r), np.arccos(cos), cos, int(r), d_in, r / d_in)


# --------------------------------------------------------------------------- ground truth
@dataclass(frozen=True)
class GroundTruthResult:
    gt_best: np.ndarray  # (n_gt,) best |cos| of each ground-truth direction with any feature
    gt_best_index: np.ndarray  # (n_gt,) the feature achieving it
    mean_gt_best: float
    gt_fraction_above: dict[float, float]  # share of ground-truth directions recovered >= t
    feature_best: np.ndarray  # (d_sae,) best |cos| of each feature with any ground-truth direction
    feature_fraction_above: dict[float, float]  # share of features aligned to some direction >= t


def ground_truth_alignment(decoder: Decoder, directions: Decoder, thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
                           chunk_size: int | None = None, device: str | torch.device | None = None) -> GroundTruthResult:
    """How well a dictionary recovers known directions (rows of ``directions``, shape (n_gt, d_in))."""
    ts = _check_thresholds(thresholds)
    g, d = _prepare([directions, decoder], ["directions", "decoder"], device)
    m = _pair_maxima(g, d, chunk_size, with_index=True)
    gt, feat = m.row_max.double().cpu().numpy(), m.col_max.double().cpu().numpy()
    return GroundTruthResult(
        gt, m.row_arg.cpu().numpy(), float(gt.mean()),
        {t: float((gt >= t).mean()) for t in ts}, feat, {t: float((feat >= t).mean()) for t in ts},
    )
