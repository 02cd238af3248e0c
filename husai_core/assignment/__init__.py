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
``OPENBLAS_NUM_THREADS``/``OMP_NUM_THREADS`` at import time (one BLAS thread for small
products was tried and dropped: faster on a loaded machine, 0.69x dense on a quiet one).

The package: ``kernels`` (blocked similarity products, row / column extrema),
``sparse`` (top-m candidates, certificate, sparse LAPJV) and ``match`` (the entry points and the
dense path).
"""

from .kernels import (
    CHUNK_BYTES, MIN_CHUNK_ROWS, BLOCK_ELEMENTS, mm_into, maxima_cpu, extrema,
    pwmcc_from_extrema,
)
from .sparse import CERTIFY_ROUNDS, CERTIFY_TOL, TOP_M
from .match import DENSE_LIMIT, SIMILARITIES, Matching, solve_dense, match_units, pair_dots, match, match_blocks
