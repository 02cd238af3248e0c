"""Entry points (``match``, ``match_units``, ``match_blocks``), the ``Matching`` result and the
dense path (scipy's ``linear_sum_assignment`` on a chunk-filled cost).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from ..errors import HusaiError
from .kernels import _tqdm, mm_into
from .sparse import TOP_M, _check_exact, _pass_candidates, _pass_violations, _solve_sparse


# Largest n_a * n_b solved densely: an 8192 x 8192 float64 cost is 512 MiB.
DENSE_LIMIT = 8192 * 8192
SIMILARITIES = ("cos", "abs_cos")


@dataclass(frozen=True)
class Matching:
    """A one-to-one matching of ``min(n_a, n_b)`` pairs: ``rows[k]`` of A with ``cols[k]`` of
    B (rows ascending), ``sims[k]`` their similarity (float64). ``method``: "dense" or
    "sparse"; ``top_m``: candidates per row that gave the sparse matching (None when dense);
    ``n_edges``: candidate edges of the sparse graph (``n_a * n_b`` when dense); ``certified``:
    True when the matching is proven optimal over all pairs, False for a sparse matching that is
    only optimal over its candidates, None when certification was not asked for."""

    rows: np.ndarray
    cols: np.ndarray
    sims: np.ndarray
    method: str
    top_m: int | None
    n_edges: int
    certified: bool | None = None  # True: proven optimal over all pairs (dense, or sparse + certificate)

    @property
    def mean(self) -> float:
        """Mean matched similarity."""
        return float(self.sims.mean())


# --------------------------------------------------------------------------- small helpers
def _check_options(dense_limit, top_m) -> None:
    if not isinstance(dense_limit, (int, float)) or isinstance(dense_limit, bool) or dense_limit < 0 \
            or (isinstance(dense_limit, float) and math.isnan(dense_limit)):
        raise HusaiError(f"dense_limit must be a number of cost-matrix elements >= 0, got {dense_limit!r}")
    if isinstance(top_m, bool) or not isinstance(top_m, (int, np.integer)) or top_m < 1:
        raise HusaiError(f"top_m must be a positive integer, got {top_m!r}")


# --------------------------------------------------------------------------- dense path
def solve_dense(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact minimum-cost assignment of a dense cost matrix (scipy ``linear_sum_assignment``)."""
    return linear_sum_assignment(cost)


def _dense_cost(a: torch.Tensor, b: torch.Tensor, abs_: bool, chunk_rows: int | None) -> np.ndarray:
    """Float64 cost ``1 - sim`` (n_a, n_b), filled in row chunks of float32 products."""
    n_a, n_b = a.shape[0], b.shape[0]
    rows = chunk_rows or max(1, min(n_a, (32 << 20) // (4 * n_b)))
    cost = np.empty((n_a, n_b), dtype=np.float64)
    buf = torch.empty(min(rows, n_a), n_b, device=a.device)
    bt = b.T
    for start in range(0, n_a, rows):
        stop = min(start + rows, n_a)
        sim = mm_into(a[start:stop], bt, buf[: stop - start])
        if abs_:
            sim.abs_()
        np.subtract(1.0, sim.cpu().numpy(), out=cost[start:stop])  # casts to float64 while writing
    return cost


# --------------------------------------------------------------------------- public API
def match_units(a: torch.Tensor, b: torch.Tensor, similarity: str = "cos", *, dense_limit: float = DENSE_LIMIT,
                top_m: int = TOP_M, exact: bool = False, chunk_rows: int | None = None,
                progress: bool = False) -> Matching:
    """``match`` on already validated unit rows (float32 tensors on one device)."""
    if similarity not in SIMILARITIES:
        raise HusaiError(f"similarity must be one of {SIMILARITIES}, got {similarity!r}")
    _check_options(dense_limit, top_m)
    abs_ = similarity == "abs_cos"
    n_a, n_b = a.shape[0], b.shape[0]
    want_exact = _check_exact(exact)
    if n_a * n_b > dense_limit:
        bt = b.T
        fill = lambda i0, i1, out: mm_into(a[i0:i1], bt, out)  # noqa: E731

        def candidates(m: int):
            return _pass_candidates(n_a, n_b, fill, m, abs_, a.device, torch.float32, chunk_rows, progress).edges()

        def violations(x, y, bound):
            return _pass_violations(n_a, n_b, fill, abs_, x, y, bound, a.device, torch.float32, chunk_rows, progress)

        rows, cols, _, m, n_edges, certified = _solve_sparse(n_a, n_b, candidates, int(top_m), offset=3.0,
                                                             violations=violations if want_exact else None)
        method = "sparse"
    else:
        rows, cols = solve_dense(_dense_cost(a, b, abs_, chunk_rows))
        method, m, n_edges, certified = "dense", None, n_a * n_b, True
    sims = pair_dots(a, b, rows, cols)
    return Matching(rows, cols, np.abs(sims) if abs_ else sims, method, m, n_edges, certified)


def pair_dots(a: torch.Tensor, b: torch.Tensor, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Float64 dot products ``a[rows[k]] . b[cols[k]]``: the matched similarities recomputed
    from the (unit) rows, exact up to their float32 rounding, O(n d)."""
    out = np.empty(len(rows))
    step = max(1, (16 << 20) // (8 * max(1, a.shape[1])))  # float64 row blocks of ~16 MiB
    for k in range(0, len(rows), step):
        r, c = rows[k : k + step], cols[k : k + step]
        if a.device.type == "cpu":
            out[k : k + step] = np.einsum("ij,ij->i", a.numpy()[r].astype(np.float64), b.numpy()[c].astype(np.float64))
        else:
            ra = a[torch.from_numpy(r).to(a.device)].double()
            rb = b[torch.from_numpy(c).to(b.device)].double()
            out[k : k + step] = (ra * rb).sum(dim=1).cpu().numpy()
    return out


def match(a_rows, b_rows, similarity: str = "cos", *, dense_limit: float = DENSE_LIMIT, top_m: int = TOP_M,
          exact: bool = False, chunk_rows: int | None = None, device: str | torch.device | None = None,
          progress: bool = False) -> Matching:
    """Optimal one-to-one matching of the rows of ``a_rows`` (n_a, d) and ``b_rows`` (n_b, d)
    (torch tensors or numpy arrays; rows are L2-normalised, a zero row has similarity 0 with
    everything) maximising the summed similarity: ``"cos"`` signed cosine (cost ``1 - cos``),
    ``"abs_cos"`` absolute cosine. Pairs ``min(n_a, n_b)`` rows.

    ``linear_sum_assignment`` on the dense cost while ``n_a * n_b <= dense_limit`` (exact);
    above it the sparse top-``top_m`` candidate matching (optimal over its candidates), which
    ``exact=True`` certifies optimal over all pairs (extra passes; see the module docstring;
    ``result.certified``).
    ``chunk_rows``: rows of A per similarity chunk (default: by memory). ``progress``: tqdm
    bars over the chunked passes.
    """
    from ..decoders import _prepare

    a, b = _prepare([a_rows, b_rows], ["a_rows", "b_rows"], device)
    return match_units(a, b, similarity, dense_limit=dense_limit, top_m=top_m, exact=exact, chunk_rows=chunk_rows,
                       progress=progress)


def match_blocks(n_a: int, n_b: int, blocks: Callable[[int, int], torch.Tensor | np.ndarray], *,
                 dense_limit: float = DENSE_LIMIT, top_m: int = TOP_M, exact: bool = False,
                 block_rows: int | None = None, progress: bool = False) -> Matching:
    """Optimal one-to-one matching maximising the summed similarity, where the similarity
    ``S`` (n_a, n_b) is only available through a provider: ``blocks(i0, i1)`` returns
    ``S[i0:i1]`` (i1 - i0, n_b) as a tensor (any device; float64 stays float64) or array.
    ``S`` must lie in [-1, 1] (e.g. correlations). Dense while ``n_a * n_b <= dense_limit``
    (S assembled from blocks, then ``linear_sum_assignment`` on ``1 - S``); otherwise the
    sparse candidate matching, streaming the blocks (again for a widened ``top_m`` and for
    each certification round when ``exact``, as in ``match``) and keeping only the top-m per
    row and per column. ``sims`` are the provider's values."""
    for name, v in (("n_a", n_a), ("n_b", n_b)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise HusaiError(f"{name} must be a positive integer, got {v!r}")
    _check_options(dense_limit, top_m)
    want_exact = _check_exact(exact)
    rows_per = block_rows or max(1, min(n_a, (32 << 20) // (8 * n_b)))

    def block(i0: int, i1: int) -> torch.Tensor:
        x = blocks(i0, i1)
        t = torch.from_numpy(np.asarray(x)) if not isinstance(x, torch.Tensor) else x
        if tuple(t.shape) != (i1 - i0, n_b):
            raise HusaiError(f"similarity provider returned shape {tuple(t.shape)} for rows {i0}:{i1}, "
                             f"expected ({i1 - i0}, {n_b})")
        return t

    def dense() -> Matching:
        cost = np.empty((n_a, n_b), dtype=np.float64)
        with _tqdm(n_a, progress, "similarity blocks") as bar:
            for i0 in range(0, n_a, rows_per):
                i1 = min(i0 + rows_per, n_a)
                np.subtract(1.0, block(i0, i1).detach().cpu().double().numpy(), out=cost[i0:i1])
                bar.update(i1 - i0)
        if not np.isfinite(cost).all():
            raise HusaiError("similarity provider returned NaN or inf")
        rows, cols = solve_dense(cost)
        return Matching(rows, cols, 1.0 - cost[rows, cols], "dense", None, n_a * n_b, True)

    if n_a * n_b <= dense_limit:
        return dense()
    probe = block(0, min(rows_per, n_a))
    dtype = torch.float64 if probe.dtype == torch.float64 else torch.float32

    def fill(i0: int, i1: int, out: torch.Tensor) -> None:
        x = probe if (i0 == 0 and i1 == probe.shape[0]) else block(i0, i1)
        out.copy_(x)
        if not bool(torch.isfinite(out).all()):
            raise HusaiError("similarity provider returned NaN or inf")

    def candidates(m: int):
        return _pass_candidates(n_a, n_b, fill, m, False, probe.device, dtype, rows_per, progress).edges()

    def violations(x, y, bound):
        return _pass_violations(n_a, n_b, fill, False, x, y, bound, probe.device, dtype, rows_per, progress)

    rows, cols, sims, m, n_edges, certified = _solve_sparse(n_a, n_b, candidates, int(top_m), offset=3.0,
                                                            violations=violations if want_exact else None)
    return Matching(rows, cols, sims, "sparse", m, n_edges, certified)
