"""The sparse path: top-m candidates of every row and column, the exact sparse assignment (LAPJV)
and its optimality certificate against the full similarity.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import maximum_bipartite_matching, min_weight_full_bipartite_matching

from ..errors import HusaiError
from .kernels import CHUNK_BYTES, MIN_CHUNK_ROWS, _GROUP, _tqdm


CERTIFY_ROUNDS = 8  # rounds of the optimality certificate (exact=True) before giving up
CERTIFY_TOL = 1e-6  # slack allowed in a dual constraint (float32 similarities: ~1e-7)
# Candidate neighbours kept per row of A and per row of B on the sparse path.
TOP_M = 16


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
