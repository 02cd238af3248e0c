"""One-to-one (Hungarian) matching at any dictionary size (DESIGN.md §5, §8).

Every Hungarian-based metric (``consistency.hungarian_match``; ``matching.pw_mcc``,
``shared_latent_fraction``, ``activation_mcc``, ``pair_family``, ``family_matrices``) calls
``match``/``match_units`` (rows of two dictionaries) or ``match_blocks`` (a similarity
*provider*, e.g. activation correlations streamed block by block).

- **Dense** while the ``n_a x n_b`` float64 cost fits ``dense_limit`` elements (default
  8192² = 512 MiB): the cost is filled in row chunks and solved exactly by scipy's
  ``linear_sum_assignment``.
- **Sparse** above it: one chunked pass over the similarity keeps the top-``m`` neighbours of
  every row of A (among B) and of every row of B (among A) (``_Candidates``: exact top-m per
  row by group maxima; per column by a running lower bound on its m-th best value). Their
  union is a bipartite graph with weights ``3 - sim`` (all > 0: csgraph reads a 0 as a
  missing edge; a constant shift does not change a full matching's optimum) solved by
  ``scipy.sparse.csgraph.min_weight_full_bipartite_matching`` (LAPJVsp), which pairs
  ``min(n_a, n_b)`` latents (a full matching of the smaller side, rectangular allowed). If the
  candidate graph has no full matching (Hopcroft-Karp check first), ``m`` is doubled and the
  pass repeated. The result is optimal *over the candidates*: the dense optimum whenever the
  optimal pairs are among them; ``benchmarks/consistency.py`` measures the gap (~1e-4 at
  16k latents with m = 16).
- **Certified** (``exact=True``, sparse path): shortest-path potentials of the residual graph
  of the restricted optimum give dual variables (u, v) with ``u_i + v_j <= w_ij`` on every
  candidate edge and equality on matched ones; another chunked pass lists every pair (i, j)
  outside the candidates with ``u_i + v_j > w_ij + CERTIFY_TOL``. None: by LP duality the
  matching is optimal over all pairs. Otherwise those pairs join the candidates and the
  matching is re-solved (at most ``CERTIFY_ROUNDS`` rounds; typically 2-4 passes).

Memory: a similarity chunk of about ``CHUNK_BYTES`` plus O((n_a + n_b) m) candidates; a
``d_sae x d_sae`` matrix is never held on the sparse path.

The chunked similarity passes run on the tensors' device (CUDA included). On CPU the float32
products use numpy's BLAS (OpenBLAS), which is markedly faster than torch's MKL on AMD CPUs
(and the same library the dense numpy reference uses); its thread count follows
``OPENBLAS_NUM_THREADS``/``OMP_NUM_THREADS`` at import time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import maximum_bipartite_matching, min_weight_full_bipartite_matching

from .errors import HusaiError

# Largest n_a * n_b solved densely: an 8192 x 8192 float64 cost is 512 MiB.
DENSE_LIMIT = 8192 * 8192
CERTIFY_ROUNDS = 8  # rounds of the optimality certificate (exact=True) before giving up
CERTIFY_TOL = 1e-6  # slack allowed in a dual constraint (float32 similarities: ~1e-7)
# Candidate neighbours kept per row of A and per row of B on the sparse path.
TOP_M = 16
# Bytes of one similarity chunk on the sparse path, and the fewest rows of A per chunk (the
# per-column bound on the m-th best value is tighter with more rows: at 131,072 columns 512
# rows are 256 MiB).
CHUNK_BYTES = 64 << 20
MIN_CHUNK_ROWS = 512
# Elements of one float32 similarity chunk of the PWMCC passes (32 MiB): few, large BLAS calls
# (each call of a multi-threaded BLAS waits for its threads, which is slow on a loaded machine),
# and a buffer within glibc's dynamic mmap threshold (32 MiB), so repeated calls reuse heap
# pages instead of faulting in fresh ones.
BLOCK_ELEMENTS = 1 << 23
_GROUP = 32  # group width of the two-stage exact top-m along rows
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


def mm_into(a: torch.Tensor, bt: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``out = a @ bt`` (float32). On CPU through numpy's BLAS (OpenBLAS; ``out`` may have a
    row stride larger than its width); elsewhere ``torch.mm``."""
    if out.device.type == "cpu" and out.dtype == torch.float32 and a.dtype == torch.float32:
        np.matmul(a.numpy(), bt.numpy(), out=out.numpy())
        return out
    return torch.mm(a, bt, out=out)


def _block_shape(n_a: int, n_b: int, rows: int | None, cols: int | None) -> tuple[int, int]:
    cols = min(cols or n_b, n_b)
    return min(rows or max(1, BLOCK_ELEMENTS // cols), n_a), cols


def maxima_cpu(a: np.ndarray, b: np.ndarray, signed: bool = False, rows: int | None = None,
               cols: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Row and column maxima of ``|a @ b.T|`` (``signed``: of ``a @ b.T``) for float32 numpy
    rows, one ``rows x cols`` block at a time (default: all columns and
    ``BLOCK_ELEMENTS // n_b`` rows, i.e. 32 MiB): each block is one BLAS product into a reused
    buffer, then reduced in place (no ``abs`` copy) by single-threaded numpy reductions."""
    n_a, n_b = a.shape[0], b.shape[0]
    rows, cols = _block_shape(n_a, n_b, rows, cols)
    init = -np.inf if signed else 0.0  # |cos| >= 0; signed maxima must start below -1
    row_max = np.full(n_a, init, dtype=np.float32)
    col_max = np.full(n_b, init, dtype=np.float32)
    buf = np.empty((rows, cols), dtype=np.float32)
    bt = b.T
    for i0 in range(0, n_a, rows):
        i1 = min(i0 + rows, n_a)
        r = row_max[i0:i1]
        for j0 in range(0, n_b, cols):
            j1 = min(j0 + cols, n_b)
            c = np.matmul(a[i0:i1], bt[:, j0:j1], out=buf[: i1 - i0, : j1 - j0])
            if not signed:
                np.abs(c, out=c)
            np.maximum(r, c.max(axis=1), out=r)
            q = col_max[j0:j1]
            np.maximum(q, c.max(axis=0), out=q)
    return row_max, col_max


def extrema(a: torch.Tensor, b: torch.Tensor, rows: int | None = None,
            cols: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Row max, row min, column max and column min of ``a @ b.T`` (float32 tensors on one
    device) in one tiled pass: the signed and the absolute PWMCC both follow
    (``max|c| = max(max c, -min c)``) without holding an ``n_a x n_b`` matrix."""
    n_a, n_b = a.shape[0], b.shape[0]
    rows, cols = _block_shape(n_a, n_b, rows, cols)
    dev = a.device
    r_max = torch.full((n_a,), -math.inf, device=dev)
    r_min = torch.full((n_a,), math.inf, device=dev)
    c_max = torch.full((n_b,), -math.inf, device=dev)
    c_min = torch.full((n_b,), math.inf, device=dev)
    cpu = dev.type == "cpu"
    buf = torch.empty(rows, cols, device=dev)
    bt = b.T
    for i0 in range(0, n_a, rows):
        i1 = min(i0 + rows, n_a)
        for j0 in range(0, n_b, cols):
            j1 = min(j0 + cols, n_b)
            c = buf[: i1 - i0, : j1 - j0]
            if cpu:  # numpy BLAS and single-threaded numpy reductions on the cache-resident tile
                x = np.matmul(a[i0:i1].numpy(), bt[:, j0:j1].numpy(), out=c.numpy())
                for out, red, axis in ((r_max[i0:i1], np.maximum, 1), (r_min[i0:i1], np.minimum, 1),
                                       (c_max[j0:j1], np.maximum, 0), (c_min[j0:j1], np.minimum, 0)):
                    o = out.numpy()
                    red(o, red.reduce(x, axis=axis), out=o)
            else:
                torch.mm(a[i0:i1], bt[:, j0:j1], out=c)
                lo, hi = torch.aminmax(c, dim=1)
                torch.maximum(r_max[i0:i1], hi, out=r_max[i0:i1])
                torch.minimum(r_min[i0:i1], lo, out=r_min[i0:i1])
                lo, hi = torch.aminmax(c, dim=0)
                torch.maximum(c_max[j0:j1], hi, out=c_max[j0:j1])
                torch.minimum(c_min[j0:j1], lo, out=c_min[j0:j1])
    return r_max, r_min, c_max, c_min


def pwmcc_from_extrema(r_max, r_min, c_max, c_min, signed: bool) -> float:
    """PWMCC (``signed``: signed PWMCC) from ``extrema``; float64 means."""
    if not signed:
        r_max, c_max = torch.maximum(r_max, -r_min), torch.maximum(c_max, -c_min)
    return 0.5 * (r_max.double().mean().item() + c_max.double().mean().item())


def _tqdm(total: int, progress: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not progress, desc=desc, leave=False)


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


# --------------------------------------------------------------------------- candidate selection
def _row_topm(s: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-``m`` along dim 1 of ``s`` (r, w) (``w`` a multiple of _GROUP when grouped):
    the top-m elements of a row lie in its top-m groups by group maximum, so we take the
    group maxima, the m best groups, and the top-m of their ``m * _GROUP`` elements."""
    r, w = s.shape
    if w < 4 * m * _GROUP or w % _GROUP:
        return s.topk(m, dim=1)
    grouped = s.view(r, w // _GROUP, _GROUP)
    best_groups = grouped.amax(dim=2).topk(m, dim=1).indices  # (r, m)
    cand = grouped.gather(1, best_groups.unsqueeze(2).expand(r, m, _GROUP)).view(r, m * _GROUP)
    vals, pos = cand.topk(m, dim=1)
    return vals, best_groups.gather(1, pos // _GROUP) * _GROUP + pos % _GROUP


class _Candidates:
    """Running top-m candidates of a chunked pass over the similarity S (n_a, n_b), chunks of
    rows of A at a time: exact top-m of each row of A (each chunk holds whole rows) and exact
    top-m of each column (= row of B), kept by a running lower bound ``theta`` on each
    column's m-th largest value: only elements >= theta are collected, and the collection is
    trimmed to the exact top-m per column whenever it grows past a few ``m`` per column."""

    def __init__(self, n_a: int, n_b: int, m: int, device: torch.device, dtype: torch.dtype):
        self.n_a, self.n_b = n_a, n_b
        self.m_row, self.m_col = min(m, n_b), min(m, n_a)
        self.theta = torch.full((n_b,), -math.inf, device=device, dtype=dtype)
        self.row_parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.col_parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.pending = 0

    def add(self, s_pad: torch.Tensor, start: int) -> None:
        """``s_pad`` (r, w >= n_b): similarities of rows start..start+r of A with every row of
        B, then -inf padding columns (w a multiple of _GROUP for the grouped top-m)."""
        r = s_pad.shape[0]
        vals, cols = _row_topm(s_pad, self.m_row)
        s = s_pad[:, : self.n_b]
        rows = torch.arange(start, start + r, device=s.device).unsqueeze(1).expand(r, self.m_row)
        self.row_parts.append((rows.reshape(-1), cols.reshape(-1), vals.reshape(-1)))
        # column side: a lower bound of this chunk's m-th largest per column from group maxima
        g = max(1, min(_GROUP, r // (2 * self.m_col)))
        n_groups = r // g
        if n_groups >= self.m_col:
            gmax = s[: n_groups * g].view(n_groups, g, -1).amax(dim=1)  # (n_groups, n_b)
            # m-th largest group max (transposed first: a contiguous reduction is much faster)
            tau = gmax.T.contiguous().kthvalue(n_groups - self.m_col + 1, dim=1).values
            torch.maximum(self.theta, tau, out=self.theta)
        if s.device.type == "cpu":  # numpy's compare + flatnonzero is ~3x faster than torch's nonzero
            flat = torch.from_numpy(np.flatnonzero(s.numpy() >= self.theta.numpy()))
            hit_r, hit_c = flat // self.n_b, flat % self.n_b
        else:
            hit_r, hit_c = (s >= self.theta).nonzero().unbind(1)
        if len(hit_r):
            self.col_parts.append((hit_r + start, hit_c, s[hit_r, hit_c]))
            self.pending += len(hit_r)
        if self.pending > 4 * self.m_col * self.n_b:
            self._trim()

    def _trim(self) -> None:
        """Keep the exact top-m collected per column; raise theta to their m-th value."""
        if not self.col_parts:
            return
        r, c, v = (torch.cat(x) for x in zip(*self.col_parts))
        order = torch.sort(v, descending=True, stable=True).indices
        order = order[torch.sort(c[order], stable=True).indices]  # by column, best first
        r, c, v = r[order], c[order], v[order]
        counts = torch.bincount(c, minlength=self.n_b)
        starts = torch.cumsum(counts, 0) - counts
        rank = torch.arange(len(c), device=c.device) - starts[c]
        keep = rank < self.m_col
        last = keep & (rank == self.m_col - 1)
        self.theta[c[last]] = torch.maximum(self.theta[c[last]], v[last])
        self.col_parts = [(r[keep], c[keep], v[keep])]
        self.pending = int(keep.sum())

    def edges(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Union of the row and column candidates, deduplicated: (rows, cols, sims float64)."""
        self._trim()
        r, c, v = (torch.cat(x) for x in zip(*(self.row_parts + self.col_parts)))
        r, c, v = r.cpu().numpy(), c.cpu().numpy(), v.double().cpu().numpy()
        key = r.astype(np.int64) * self.n_b + c
        key, first = np.unique(key, return_index=True)
        return key // self.n_b, key % self.n_b, v[first]


def _pass_candidates(n_a: int, n_b: int, fill: Callable[[int, int, torch.Tensor], None], m: int, abs_: bool,
                     device: torch.device, dtype: torch.dtype, chunk_rows: int | None, progress: bool):
    """One chunked pass: ``fill(i0, i1, out)`` writes S[i0:i1] into ``out`` (i1-i0, n_b)."""
    w = n_b if n_b < 4 * m * _GROUP else -(-n_b // _GROUP) * _GROUP  # padded width for grouped top-m
    itemsize = torch.empty((), dtype=dtype).element_size()
    # at least MIN_CHUNK_ROWS rows: the column bound comes from groups of rows within a chunk
    rows = chunk_rows or min(n_a, max(MIN_CHUNK_ROWS, CHUNK_BYTES // (itemsize * w)))
    buf = torch.full((min(rows, n_a), w), -math.inf, device=device, dtype=dtype)  # pad columns stay -inf
    cand = _Candidates(n_a, n_b, m, device, dtype)
    with _tqdm(n_a, progress, f"candidate pass (top {m})") as bar:
        for start in range(0, n_a, rows):
            stop = min(start + rows, n_a)
            s = buf[: stop - start]
            fill(start, stop, s[:, :n_b])
            if abs_:
                s[:, :n_b].abs_()
            cand.add(s, start)
            bar.update(stop - start)
    return cand


def _pass_violations(n_a: int, n_b: int, fill: Callable[[int, int, torch.Tensor], None], abs_: bool,
                     x: np.ndarray, y: np.ndarray, bound: float, device: torch.device, dtype: torch.dtype,
                     chunk_rows: int | None, progress: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One chunked pass listing every pair with ``S[i, j] - x[i] - y[j] > bound`` (the pairs
    whose dual constraint is violated): (rows, cols, sims float64)."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    rows = chunk_rows or max(1, min(n_a, CHUNK_BYTES // (itemsize * n_b)))
    buf = torch.empty((min(rows, n_a), n_b), device=device, dtype=dtype)
    # screen in the buffer's precision with a margin (the potentials can be large: float32
    # rounding of x + y is up to ~1e-7 (|x| + |y|)), then test the survivors exactly in float64
    margin = 1e-5 * (1.0 + float(np.abs(y).max(initial=0.0)) + float(np.abs(x).max(initial=0.0)))
    x64 = x + bound
    xt = torch.as_tensor(x64 - margin, dtype=dtype, device=device)
    yt = torch.as_tensor(y, dtype=dtype, device=device)
    rhs = torch.empty_like(buf)
    out_r, out_c, out_v = [], [], []
    with _tqdm(n_a, progress, "optimality check") as bar:
        for start in range(0, n_a, rows):
            stop = min(start + rows, n_a)
            s, t = buf[: stop - start], rhs[: stop - start]
            fill(start, stop, s)
            if abs_:
                s.abs_()
            torch.add(xt[start:stop, None], yt[None, :], out=t)
            if device.type == "cpu":
                hit = np.flatnonzero(s.numpy() > t.numpy())
                hr, hc = hit // n_b, hit % n_b
            else:
                hr, hc = (s > t).nonzero().unbind(1)
                hr, hc = hr.cpu().numpy(), hc.cpu().numpy()
            if len(hr):
                vals = s[torch.from_numpy(hr).to(device), torch.from_numpy(hc).to(device)].double().cpu().numpy()
                keep = vals - y[hc] > x64[start + hr]
                out_r.append(hr[keep] + start)
                out_c.append(hc[keep])
                out_v.append(vals[keep])
            bar.update(stop - start)
    if not out_r:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0)
    return np.concatenate(out_r), np.concatenate(out_c), np.concatenate(out_v)


def _potentials(n_l: int, n_r: int, el: np.ndarray, er: np.ndarray, ew: np.ndarray,
                match_l: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Shortest-path potentials of the residual graph of an optimal matching in which every
    left node is matched (``match_l``): arcs left -> right along unmatched edges (weight w)
    and right -> left along matched ones (-w), every node also reachable at distance 0 from a
    virtual source. Label-correcting (Bellman-Ford restricted to the nodes that changed).
    Returns (p_left, p_right), or None if it does not settle (a negative cycle: the matching
    was not optimal, which only float rounding can cause)."""
    order = np.lexsort((er, el))  # by left, then right
    el, er, ew = el[order], er[order], ew[order]
    indptr = np.searchsorted(el, np.arange(n_l + 1))
    key = el * n_r + er
    w_match = ew[np.searchsorted(key, np.arange(n_l) * n_r + match_l)]  # edges sorted by (left, right)
    left_of = np.full(n_r, -1, dtype=np.int64)
    left_of[match_l] = np.arange(n_l)
    p_r = np.zeros(n_r)
    active = np.arange(n_l)
    for _ in range(n_l + 2):
        p_l = p_r[match_l] - w_match  # a left node is reached only through its matched right node
        starts = indptr[active]
        counts = indptr[active + 1] - starts
        total = int(counts.sum())
        if total == 0:
            return p_l, p_r
        idx = np.repeat(starts - (np.cumsum(counts) - counts), counts) + np.arange(total)
        new = p_r.copy()
        np.minimum.at(new, er[idx], p_l[el[idx]] + ew[idx])
        changed = np.flatnonzero(new < p_r - 1e-12)
        p_r = new
        if len(changed) == 0:
            return p_r[match_l] - w_match, p_r
        active = left_of[changed]
        active = active[active >= 0]
    return None


def _dual_offsets(n_a: int, n_b: int, r: np.ndarray, c: np.ndarray, w: np.ndarray, rows: np.ndarray,
                  cols: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Dual certificate of the restricted optimum: ``(x, y)`` such that the matching is optimal
    over *all* pairs iff ``S[i, j] - x[i] - y[j] <= offset`` everywhere (LP duality: with
    u = -p_left, v = p_right, u + v <= w on every candidate edge, = on matched ones, v = 0 on
    unmatched right nodes; a pair outside the candidates only has to satisfy the same)."""
    if n_a <= n_b:  # left = A
        match_l = np.empty(n_a, dtype=np.int64)
        match_l[rows] = cols
        pot = _potentials(n_a, n_b, r, c, w, match_l)
        return None if pot is None else (pot[0], -pot[1])
    match_l = np.empty(n_b, dtype=np.int64)
    match_l[cols] = rows
    pot = _potentials(n_b, n_a, c, r, w, match_l)
    return None if pot is None else (-pot[1], pot[0])


def _lapjvsp(n_a: int, n_b: int, r: np.ndarray, c: np.ndarray, v: np.ndarray, offset: float):
    """Minimum-weight full matching over candidate edges sorted by key ``r * n_b + c``."""
    graph = csr_matrix((offset - v, (r, c)), shape=(n_a, n_b))  # weights > 0 (0 = no edge)
    rows, cols = min_weight_full_bipartite_matching(graph)
    rows, cols = rows.astype(np.int64), cols.astype(np.int64)
    return rows, cols, v[np.searchsorted(r * n_b + c, rows * n_b + cols)]


def _solve_sparse(n_a: int, n_b: int, candidates: Callable[[int], tuple], top_m: int, offset: float,
                  violations: Callable | None = None, rounds: int = CERTIFY_ROUNDS):
    """Candidates for m = top_m, 2 top_m, ... until the graph has a full matching; LAPJVsp.
    With ``violations`` (a pass listing the pairs that violate a dual certificate): certify
    the restricted optimum, adding violating pairs and re-solving up to ``rounds`` times.
    Returns rows, cols, sims, m, n_edges, certified (None when not asked)."""
    m = top_m
    while True:
        r, c, v = candidates(m)
        graph = csr_matrix((offset - v, (r, c)), shape=(n_a, n_b))
        perm = maximum_bipartite_matching(graph, perm_type="column" if n_a <= n_b else "row")
        if int((perm >= 0).sum()) == min(n_a, n_b):
            break
        if m >= max(n_a, n_b):  # cannot happen: the complete graph has a full matching
            raise HusaiError("sparse assignment found no full matching on the complete candidate graph")
        m = min(2 * m, max(n_a, n_b))
    rows, cols, sims = _lapjvsp(n_a, n_b, r, c, v, offset)
    certified = None
    if violations is not None:
        certified = False
        for _ in range(rounds):
            duals = _dual_offsets(n_a, n_b, r, c, offset - v, rows, cols)
            if duals is None:
                break
            vr, vc, vv = violations(duals[0], duals[1], offset + CERTIFY_TOL)
            key = r * n_b + c
            new_key, first = np.unique(vr * n_b + vc, return_index=True)
            fresh = ~np.isin(new_key, key, assume_unique=True)
            if not fresh.any():
                certified = True
                break
            key = np.concatenate([key, new_key[fresh]])
            v = np.concatenate([v, vv[first][fresh]])
            order = np.argsort(key)
            key, v = key[order], v[order]
            r, c = key // n_b, key % n_b
            rows, cols, sims = _lapjvsp(n_a, n_b, r, c, v, offset)
    return rows, cols, sims, m, len(r), certified


def _check_exact(exact) -> bool:
    if not isinstance(exact, (bool, np.bool_)):
        raise HusaiError(f"exact must be True or False, got {exact!r}")
    return bool(exact)


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
    from .consistency import _prepare

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
