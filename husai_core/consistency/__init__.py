"""Consistency of SAE dictionaries across seeds (DESIGN.md section 5).

A dictionary is a decoder matrix of shape ``(d_sae, d_in)``: one row per feature (SAELens
``W_dec`` layout). Every function accepts torch tensors or numpy arrays. Similarities are
absolute cosines: a feature and its negation are the same direction for our purposes.
``pwmcc``/``pwmcc_matrix`` also take ``signed=True`` (signed cosines: latents are non-negative,
so a decoder direction's sign means something); one-to-one matchings on signed cosines
(PW-MCC, shared latents, activation matching) live in ``husai_core.matching``.
Rows of zero norm (e.g. never-trained features) are kept and have similarity 0 with
everything, so they can never count as a match.

Heavy lifting is a float32 matmul, done in row chunks on the decoders' device so that a
``d_sae x d_sae`` similarity matrix is never held at once (16k x 16k floats is 1 GiB); the
chunked maxima are exact, only the float32 rounding (~1e-7) differs from float64. On CPU the
PWMCC passes and row normalisation run through numpy (OpenBLAS products into a reused 32 MiB
block, single-threaded in-place reductions; ``assignment.maxima_cpu``), elsewhere torch.
``hungarian_match`` solves through ``husai_core.assignment`` (dense up to 8192², sparse
top-m candidate matching above).

The package (unit rows and off-diagonal values come from :mod:`husai_core.decoders`):
``pairwise`` (max-|cos| PWMCC of a pair and of a set), ``baselines`` (disjoint seeds and the
Gaussian-random decoders), ``hungarian`` (one-to-one matching of two dictionaries) and
``stability`` (feature stability, consensus features, subspace overlap, ground-truth alignment).
"""

from ..decoders import (
    Decoder, DEFAULT_THRESHOLDS, normalise_rows, off_diagonal, _as_matrix, _check_thresholds, _device_of, _unit_rows,
    _prepare,
)
from .pairwise import CHUNK_ELEMENTS, MIN_CHUNK_ROWS, pwmcc, pwmcc_matrix, _pair_maxima
from .baselines import disjoint_seeds, gaussian_decoders, random_baseline, BaselineSummary, baseline_summary
from .hungarian import MatchResult, hungarian_match
from .stability import (
    StabilityResult, feature_stability, ConsensusResult, consensus_features, SubspaceResult, subspace_overlap,
    GroundTruthResult, ground_truth_alignment,
)
