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
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, Sequence

import numpy as np
import torch

from . import assignment as _assignment
from .assignment import maxima_cpu, mm_into
from .errors import HusaiError

Decoder = torch.Tensor | np.ndarray

# Elements per similarity chunk (32 MiB of float32): big enough that the matmul runs near
# BLAS speed, small enough to stay far below memory limits for any realistic d_sae.
CHUNK_ELEMENTS = 1 << 23
# pwmcc_matrix multiplies one dictionary against several others at once (fewer, larger ops:
# each torch op costs a thread synchronisation, which dominates for small dictionaries) but
# keeps at least this many rows per chunk so the matmul stays efficient.
MIN_CHUNK_ROWS = 256
DEFAULT_THRESHOLDS = (0.3, 0.5, 0.7, 0.9)


# --------------------------------------------------------------------------- inputs
def _device_of(*decs: Decoder, device: str | torch.device | None) -> torch.device:
    """An explicit device wins; otherwise the first torch input's device, else CPU."""
    if device is not None:
        dev = torch.device(device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise HusaiError(f"device {str(device)!r} requested but CUDA is not available")
        return dev
    for d in decs:
        if isinstance(d, torch.Tensor):
            return d.device
    return torch.device("cpu")


def _as_matrix(x: Decoder, name: str, device: torch.device) -> torch.Tensor:
    """Validate one decoder and return it as a float32 tensor on ``device``."""
    if isinstance(x, np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(x))
    elif isinstance(x, torch.Tensor):
        t = x.detach()
    else:
        raise HusaiError(f"{name} must be a torch tensor or numpy array, got {type(x).__name__}")
    if t.ndim != 2:
        raise HusaiError(f"{name} must be a 2-D (d_sae, d_in) decoder matrix, got shape {tuple(t.shape)}")
    if t.shape[0] == 0 or t.shape[1] == 0:
        raise HusaiError(f"{name} is empty: shape {tuple(t.shape)}")
    if not (t.is_floating_point() or t.dtype in (torch.int32, torch.int64)):
        raise HusaiError(f"{name} must hold real numbers, got dtype {t.dtype}")
    return t.to(device=device, dtype=torch.float32)


def _normalise(t: torch.Tensor) -> torch.Tensor:
    # clamp keeps zero rows at zero (similarity 0 to everything) instead of NaN
    return t / t.norm(dim=1, keepdim=True).clamp_min(1e-12)


def _unit_rows(t: torch.Tensor, name: str, out: torch.Tensor | None = None) -> torch.Tensor:
    """Row-normalise, validating finiteness through the row norms: a NaN/inf entry makes its
    row norm non-finite, and checking d_sae norms is far cheaper than a full isfinite pass."""
    if t.device.type == "cpu" and t.dtype == torch.float32 and not t.requires_grad:
        # numpy on CPU: single-threaded elementwise work that never waits on a descheduled
        # OpenMP thread (a shared machine makes every small multi-threaded torch op stall)
        x = t.numpy()
        norms = np.sqrt(np.einsum("ij,ij->i", x, x))[:, None]
        if not np.isfinite(norms).all():
            raise HusaiError(f"{name} contains NaN or inf (or values too large for float32)")
        res = torch.empty_like(t) if out is None else out
        np.divide(x, np.maximum(norms, np.float32(1e-12)), out=res.numpy())
        return res
    norms = t.norm(dim=1, keepdim=True)
    if not bool(torch.isfinite(norms).all()):
        raise HusaiError(f"{name} contains NaN or inf (or values too large for float32)")
    return torch.div(t, norms.clamp_min(1e-12), out=out)


def normalise_rows(dec: Decoder) -> torch.Tensor:
    """Unit-norm rows as a float32 tensor (on the input's device)."""
    return _unit_rows(_as_matrix(dec, "decoder", _device_of(dec, device=None)), "decoder")


def _prepare(decs: Sequence[Decoder], names: Sequence[str], device) -> list[torch.Tensor]:
    """Validate, check a common d_in, move to one device and row-normalise (once each)."""
    return _prepare_stacked(decs, names, device, stack=False)[0]


def _prepare_stacked(decs, names, device, stack: bool = True) -> tuple[list[torch.Tensor], torch.Tensor | None]:
    """As ``_prepare``; with equal d_sae the unit rows are written into one contiguous
    (n, d_sae, d_in) tensor (also returned) so consecutive dictionaries multiply at once."""
    dev = _device_of(*decs, device=device)
    mats = [_as_matrix(d, n, dev) for d, n in zip(decs, names)]
    d_in = mats[0].shape[1]
    for m, n in zip(mats[1:], names[1:]):
        if m.shape[1] != d_in:
            raise HusaiError(
                f"dictionaries have different d_in: {names[0]} has d_in={d_in}, {n} has "
                f"d_in={m.shape[1]} (decoders must be (d_sae, d_in) with the same d_in)"
            )
    if stack and len({m.shape[0] for m in mats}) == 1:
        out = torch.empty((len(mats), *mats[0].shape), device=dev)
        return [_unit_rows(m, n, out=o) for m, n, o in zip(mats, names, out)], out
    return [_unit_rows(m, n) for m, n in zip(mats, names)], None


def _check_list(decoders: Sequence[Decoder], min_count: int, what: str) -> list[Decoder]:
    if isinstance(decoders, (torch.Tensor, np.ndarray)) and decoders.ndim == 2:
        raise HusaiError(f"{what} must be a sequence of (d_sae, d_in) matrices, got a single matrix")
    decoders = list(decoders)
    if len(decoders) < min_count:
        raise HusaiError(f"need at least {min_count} dictionaries in {what}, got {len(decoders)}")
    return decoders


def _prepare_list(decoders: Sequence[Decoder], device, min_count: int = 2, what: str = "decoders") -> list[torch.Tensor]:
    decoders = _check_list(decoders, min_count, what)
    return _prepare(decoders, [f"{what}[{i}]" for i in range(len(decoders))], device)


def _check_chunk(chunk_size: int | None, n_cols: int, n_rows: int) -> int:
    if chunk_size is None:
        return max(1, min(n_rows, CHUNK_ELEMENTS // max(n_cols, 1)))
    if int(chunk_size) != chunk_size or chunk_size < 1:
        raise HusaiError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    return int(chunk_size)


# --------------------------------------------------------------------------- core pass
class _PairMaxima(NamedTuple):
    row_max: torch.Tensor  # (n_a,) best |cos| (signed: best cos) of each row of A against B
    col_max: torch.Tensor  # (n_b,) best |cos| (signed: best cos) of each row of B against A
    row_arg: torch.Tensor | None
    col_arg: torch.Tensor | None


def _block_maxima(a: torch.Tensor, bs: torch.Tensor, chunk_size: int | None,
                  signed: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """|cos| maxima (``signed``: cos maxima) of ``a`` (n_a, d) against m stacked dictionaries
    ``bs`` (m, n_b, d) in one chunked pass: row maxima (n_a, m) and column maxima (m, n_b)."""
    m, n_b, _ = bs.shape
    n_a = a.shape[0]
    chunk = _check_chunk(chunk_size, m * n_b, n_a)
    if a.device.type == "cpu":  # cache-sized tiles, BLAS product, numpy reductions: same values
        pairs = [maxima_cpu(a.numpy(), b.numpy(), signed, rows=chunk_size and chunk) for b in bs]
        return (torch.from_numpy(np.stack([p[0] for p in pairs], axis=1)),
                torch.from_numpy(np.stack([p[1] for p in pairs])))
    row_max = torch.empty(n_a, m, device=a.device)
    if signed:  # signed cos can be negative: running maxima must start below -1
        col_max = torch.full((m, n_b), -math.inf, device=a.device)
    else:
        col_max = torch.zeros(m, n_b, device=a.device)  # |cos| >= 0, so 0 is a safe start
    flat_t = bs.reshape(m * n_b, -1).T
    buf = torch.empty(min(chunk, n_a), m * n_b, device=a.device)  # reused: fresh buffers cost page faults
    for start in range(0, n_a, chunk):
        stop = min(start + chunk, n_a)
        sim = mm_into(a[start:stop], flat_t, buf[: stop - start])
        if not signed:
            sim = sim.abs_()  # in place: no 2nd buffer
        sim = sim.view(stop - start, m, n_b)
        row_max[start:stop] = sim.amax(dim=2)
        torch.maximum(col_max, sim.amax(dim=0), out=col_max)
    return row_max, col_max


def _pair_maxima(a: torch.Tensor, b: torch.Tensor, chunk_size: int | None, with_index: bool = False,
                 signed: bool = False) -> _PairMaxima:
    """One chunked pass over |A B^T| (``signed``: A B^T) keeping row maxima and running column maxima."""
    if not with_index:
        rows, cols = _block_maxima(a, b.unsqueeze(0), chunk_size, signed=signed)
        return _PairMaxima(rows[:, 0], cols[0], None, None)
    n_a, n_b = a.shape[0], b.shape[0]
    chunk = _check_chunk(chunk_size, n_b, n_a)
    row_max = torch.empty(n_a, device=a.device)
    if signed:  # signed cos can be negative: running maxima must start below -1
        col_max = torch.full((n_b,), -math.inf, device=a.device)
    else:
        col_max = torch.zeros(n_b, device=a.device)  # |cos| >= 0, so 0 is a safe start
    row_arg = torch.empty(n_a, dtype=torch.long, device=a.device)
    col_arg = torch.zeros(n_b, dtype=torch.long, device=a.device)
    bt = b.T
    buf = torch.empty(min(chunk, n_a), n_b, device=a.device)  # reused: a fresh 32 MiB per chunk costs page faults
    for start in range(0, n_a, chunk):
        stop = min(start + chunk, n_a)
        sim = mm_into(a[start:stop], bt, buf[: stop - start])
        if not signed:
            sim = sim.abs_()  # in place: no second buffer
        row_max[start:stop], row_arg[start:stop] = sim.max(dim=1)
        cvals, cidx = sim.max(dim=0)
        better = cvals > col_max  # strict: ties keep the earliest row, like argmax
        col_max = torch.where(better, cvals, col_max)
        col_arg = torch.where(better, cidx + start, col_arg)
    return _PairMaxima(row_max, col_max, row_arg, col_arg)


def _pwmcc_from(m: _PairMaxima) -> float:
    # float64 means: 16k float32 terms would otherwise lose ~1e-4 relative precision
    return 0.5 * (m.row_max.double().mean().item() + m.col_max.double().mean().item())


# --------------------------------------------------------------------------- PWMCC
def pwmcc(dec_a: Decoder, dec_b: Decoder, chunk_size: int | None = None,
          device: str | torch.device | None = None, *, signed: bool = False) -> float:
    """Pairwise mean max cosine similarity of two dictionaries.

    With unit rows and ``C = |D_a D_b^T|``: ``0.5 * (mean_i max_j C_ij + mean_j max_i C_ij)``.
    ``signed=True`` (signed PWMCC): the same with the signed cosines ``C = D_a D_b^T``, so the
    value lies in [-1, 1] and a feature's negation is no match (negating a one-feature
    dictionary gives -1 here, 1 with the default ``|cos|``).
    Exact (no sampling); memory is ``chunk_size x d_sae_b`` floats at a time
    (default: about 32 MiB). ``device`` defaults to the first tensor input's device.
    """
    a, b = _prepare([dec_a, dec_b], ["dec_a", "dec_b"], device)
    return _pwmcc_from(_pair_maxima(a, b, chunk_size, signed=signed))


def pwmcc_matrix(decoders: Sequence[Decoder], chunk_size: int | None = None,
                 device: str | torch.device | None = None, progress: bool = False, *,
                 signed: bool = False) -> np.ndarray:
    """Symmetric ``(n, n)`` PWMCC over all pairs (diagonal 1); each dictionary is normalised once.
    ``signed=True``: signed PWMCC (see ``pwmcc``).

    With equal d_sae, dictionary i is compared with a group of the following dictionaries in
    one pass (the group is sized so a chunk keeps >= MIN_CHUNK_ROWS rows); ``chunk_size``
    then counts rows of dictionary i per chunk. Results equal the pairwise ``pwmcc``.
    """
    decoders = _check_list(decoders, 2, "decoders")
    mats, stacked = _prepare_stacked(decoders, [f"decoders[{i}]" for i in range(len(decoders))], device)
    n, d_sae = len(mats), mats[0].shape[0]
    out = np.eye(n)
    if stacked is not None:
        group = max(1, CHUNK_ELEMENTS // (MIN_CHUNK_ROWS * d_sae))
        blocks = [(i, j, min(j + group, n)) for i in range(n) for j in range(i + 1, n, group)]
    else:  # unequal widths cannot share one stacked matmul: plain pairwise passes
        blocks = [(i, j, j + 1) for i in range(n) for j in range(i + 1, n)]
    for i, j0, j1 in _maybe_tqdm(blocks, progress, "PWMCC blocks"):
        others = stacked[j0:j1] if stacked is not None else mats[j0].unsqueeze(0)
        rows, cols = _block_maxima(mats[i], others, chunk_size, signed=signed)
        # float64 means: 16k float32 terms would otherwise lose ~1e-4 relative precision
        vals = 0.5 * (rows.double().mean(dim=0) + cols.double().mean(dim=1)).cpu().numpy()
        out[i, j0:j1] = out[j0:j1, i] = vals
    return out


def _maybe_tqdm(items, progress: bool, desc: str):
    if not progress:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc)


def off_diagonal(matrix: np.ndarray) -> np.ndarray:
    """Upper-triangle (i < j) values of a square pairwise matrix."""
    m = np.asarray(matrix, dtype=float)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise HusaiError(f"pairwise matrix must be square (n, n), got shape {m.shape}")
    return m[np.triu_indices(m.shape[0], k=1)]


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


def _check_thresholds(thresholds) -> tuple[float, ...]:
    ts = tuple(float(t) for t in thresholds)
    if any(not 0.0 <= t <= 1.0 for t in ts):
        raise HusaiError(f"thresholds must lie in [0, 1], got {ts}")
    return ts


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
