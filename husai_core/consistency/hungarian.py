"""One-to-one (Hungarian) matching of two dictionaries on |cos| and its summary."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from .. import assignment as _assignment
from .pairwise import _check_chunk
from ..decoders import DEFAULT_THRESHOLDS, Decoder, _check_thresholds, _prepare


# --------------------------------------------------------------------------- Hungarian matching
@dataclass(frozen=True)
class MatchResult:
    """One-to-one matching. ``fraction_above[t]`` = matched pairs with |cos| >= t,
    divided by ``n_matched = min(d_sae_a, d_sae_b)`` (unmatched extra features of the
    larger dictionary are not counted)."""

    row_ind: np.ndarray  # feature indices into dec_a
    col_ind: np.ndarray  # matched feature indices into dec_b
    similarities: np.ndarray  # |cos| of each matched pair (float64)
    mean_similarity: float
    fraction_above: dict[float, float]
    n_matched: int
    method: str = "dense"  # "dense" (exact) or "sparse" (top-m candidates; see husai_core.assignment)
    top_m: int | None = None  # candidates per row of the sparse matching
    certified: bool | None = None  # proven optimal over all pairs (see husai_core.assignment)


def hungarian_match(dec_a: Decoder, dec_b: Decoder, thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
                    chunk_size: int | None = None, device: str | torch.device | None = None, *,
                    dense_limit: float | None = None, top_m: int | None = None, exact: bool = False,
                    progress: bool = False) -> MatchResult:
    """Optimal one-to-one matching on cost ``1 - |cos|`` (rectangular dictionaries allowed).

    Solved by ``husai_core.assignment.match``: exactly (dense ``linear_sum_assignment``) while
    ``d_sae_a * d_sae_b <= dense_limit`` (default ``assignment.DENSE_LIMIT`` = 8192²), above it
    by the sparse top-``top_m`` candidate matching (no d_sae x d_sae matrix is ever held),
    certified optimal over all pairs when ``exact=True`` (extra passes). ``result.method`` and
    ``result.certified`` say which. ``chunk_size``: rows of dec_a per similarity chunk.
    """
    ts = _check_thresholds(thresholds)
    a, b = _prepare([dec_a, dec_b], ["dec_a", "dec_b"], device)
    chunk = None if chunk_size is None else _check_chunk(chunk_size, b.shape[0], a.shape[0])
    m = _assignment.match_units(
        a, b, "abs_cos", dense_limit=_assignment.DENSE_LIMIT if dense_limit is None else dense_limit,
        top_m=_assignment.TOP_M if top_m is None else top_m, exact=exact, chunk_rows=chunk, progress=progress)
    sims, n = m.sims, len(m.rows)  # |cos| of the pairs, recomputed in float64 from the unit rows
    return MatchResult(m.rows, m.cols, sims, float(sims.mean()), {t: float((sims >= t).sum() / n) for t in ts}, n,
                       m.method, m.top_m, m.certified)
