"""Every metric over every scope for one pair (``pair_family``) and for every pair of a set of SAEs
(``family_matrices``).
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import torch

from .. import assignment as _assignment
from ..decoders import _check_thresholds, _device_of
from ..errors import HusaiError
from .correlation import _Prep, _activation_match, _correlation_cost, _prepare_view
from .pairwise import _check_same, _cosines, _pair_dots, _pwmcc_of, _shared, activation_mcc, pw_mcc
from .views import SAEView, SCOPES, _limits, _match, _matched_mean


METRICS = ("pwmcc", "pwmcc_signed", "pw_mcc", "shared_latent", "activation_mcc")


# --------------------------------------------------------------------------- the family
def _keys(with_activation: bool) -> list[str]:
    return [f"{m}/{s}" for m in METRICS for s in SCOPES if with_activation or m != "activation_mcc"]


def _scope_values(c: np.ndarray, pa: _Prep, pb: _Prep, ia, ib, thr: float, act_cost) -> dict[str, float]:
    """All metrics of one scope; ``ia``/``ib`` index the latents in scope (None: all)."""
    da, ea, db, eb = pa.dec, pa.enc, pb.dec, pb.enc
    if ia is not None:
        c = c[np.ix_(ia, ib)]
        ta, tb = torch.from_numpy(ia).to(da.device), torch.from_numpy(ib).to(db.device)
        da, ea, db, eb = da[ta], ea[ta], db[tb], eb[tb]
    out = {"pwmcc": _pwmcc_of(c, signed=False), "pwmcc_signed": _pwmcc_of(c, signed=True)}
    rows, cols = _match(np.subtract(1.0, c, dtype=np.float64))  # one solve for pw_mcc and shared
    out["pw_mcc"] = float(_pair_dots(da, db, rows, cols).mean())
    out["shared_latent"] = _shared(da, db, ea, eb, rows, cols, thr)
    if act_cost is not None:
        out["activation_mcc"] = _matched_mean(act_cost if ia is None else act_cost[np.ix_(ia, ib)])
    return out


def _scope_values_large(pa: _Prep, pb: _Prep, ia, ib, thr: float, limit: float, top_m: int,
                        exact: bool = False) -> dict[str, float]:
    """``_scope_values`` without any d_sae x d_sae matrix: PWMCC (both forms) from one tiled
    extrema pass, one (sparse above ``limit``) matching for pw_mcc and shared, and activation
    matching on streamed correlation blocks."""
    da, ea, db, eb = pa.dec, pa.enc, pb.dec, pb.enc
    if ia is not None:
        ta, tb = torch.from_numpy(ia).to(da.device), torch.from_numpy(ib).to(db.device)
        da, ea, db, eb = da[ta], ea[ta], db[tb], eb[tb]
    ext = _assignment.extrema(da, db)
    out = {"pwmcc": _assignment.pwmcc_from_extrema(*ext, signed=False),
           "pwmcc_signed": _assignment.pwmcc_from_extrema(*ext, signed=True)}
    m = _assignment.match_units(da, db, "cos", dense_limit=limit, top_m=top_m, exact=exact)  # pw_mcc and shared
    out["pw_mcc"] = m.mean
    out["shared_latent"] = _shared(da, db, ea, eb, m.rows, m.cols, thr)
    if pa.lat is not None and pb.lat is not None:
        out["activation_mcc"] = _activation_match(pa.lat, pb.lat, limit, top_m, ia, ib, exact)
    return out


def _pair_values(pa: _Prep, pb: _Prep, thr: float, names: tuple[str, str] = ("a", "b"),
                 dense_limit: float | None = None, top_m: int | None = None, exact: bool = False) -> dict[str, float]:
    _check_same(pa.dec, pb.dec, f"{names[0]}.decoder and {names[1]}.decoder")
    _check_same(pa.enc, pb.enc, f"{names[0]}.encoder and {names[1]}.encoder")
    for p, nm in zip((pa, pb), names):
        if len(p.alive) == 0:
            raise HusaiError(f"{nm} has no alive latent (none fired on the held-out rows): alive-scope metrics are undefined")
    limit, m = _limits(dense_limit, top_m)
    if pa.dec.shape[0] * pb.dec.shape[0] <= limit:  # small: one dense cosine matrix serves every metric
        c = _cosines(pa.dec, pb.dec)
        act_cost = None if pa.lat is None or pb.lat is None else _correlation_cost(pa.lat, pb.lat)
        scope = lambda ia, ib: _scope_values(c, pa, pb, ia, ib, thr, act_cost)  # noqa: E731
    else:
        scope = lambda ia, ib: _scope_values_large(pa, pb, ia, ib, thr, limit, m, exact)  # noqa: E731
    everything = scope(None, None)
    if len(pa.alive) == pa.dec.shape[0] and len(pb.alive) == pb.dec.shape[0]:
        alive = everything  # nothing dead: the alive scope is the same computation
    else:
        alive = scope(pa.alive, pb.alive)
    return {f"{m}/{s}": vals[m] for m in METRICS for s, vals in (("all", everything), ("alive", alive)) if m in vals}


def pair_family(a: SAEView, b: SAEView, threshold: float = 0.7, *, dense_limit: float | None = None,
                top_m: int | None = None, exact: bool = False) -> dict[str, float]:
    """Every metric of ``METRICS`` in every scope of ``SCOPES`` for one pair of SAEs.

    Keys ``"<metric>/<scope>"`` (e.g. ``"pw_mcc/alive"``); ``activation_mcc/*`` only when both
    views carry latents. One Hungarian solve per scope serves pw_mcc and shared_latent (both
    match on decoder signed cosine). Raises ``HusaiError`` if a view has no alive latent.
    Above ``d_sae_a * d_sae_b > dense_limit`` (default ``assignment.DENSE_LIMIT``) no
    d_sae x d_sae matrix is built: chunked PWMCC extrema, sparse top-``top_m`` matchings
    (certified optimal with ``exact=True``).
    """
    thr = _check_thresholds([threshold])[0]
    dev = _device_of(a.decoder, device=None) if isinstance(a, SAEView) else torch.device("cpu")
    return _pair_values(_prepare_view(a, "a", dev), _prepare_view(b, "b", dev), thr,
                        dense_limit=dense_limit, top_m=top_m, exact=exact)


def _check_pairs(pairs: Iterable[Sequence[int]] | None, n: int) -> list[tuple[int, int]]:
    if pairs is None:
        return [(i, j) for i in range(n) for j in range(i + 1, n)]
    out = []
    for p in pairs:
        try:
            i, j = (int(v) for v in p)
        except (TypeError, ValueError):
            raise HusaiError(f"pairs must hold (i, j) index pairs, got {p!r}") from None
        if not (0 <= i < n and 0 <= j < n) or i == j:
            raise HusaiError(f"pair {p!r} is not two distinct indices into {n} views")
        out.append((min(i, j), max(i, j)))
    return sorted(set(out))


def family_matrices(views: Sequence[SAEView], threshold: float = 0.7, progress: bool = False,
                    pairs: Iterable[Sequence[int]] | None = None, *, dense_limit: float | None = None,
                    top_m: int | None = None, exact: bool = False) -> dict[str, np.ndarray]:
    """For each key of ``pair_family`` an ``(n, n)`` symmetric float64 matrix, 1.0 on the
    diagonal and NaN for pairs not computed. ``pairs``: the (i, j) pairs to compute (default
    all i < j). Each view is validated and row-normalised once. Activation keys are present
    when at least two views carry latents (NaN for pairs where one does not).
    ``dense_limit``/``top_m``/``exact``: as in ``pair_family``."""
    from ..progress import tqdm

    if isinstance(views, SAEView):
        raise HusaiError("views must be a sequence of SAEView, got a single SAEView")
    views = list(views)
    if len(views) < 2:
        raise HusaiError(f"need at least 2 views, got {len(views)}")
    thr = _check_thresholds([threshold])[0]
    todo = _check_pairs(pairs, len(views))
    dev = _device_of(*(v.decoder for v in views if isinstance(v, SAEView)), device=None)
    preps = [_prepare_view(v, f"views[{i}]", dev) for i, v in enumerate(views)]
    n = len(views)
    out = {k: np.full((n, n), np.nan) for k in _keys(sum(p.lat is not None for p in preps) >= 2)}
    for m in out.values():
        np.fill_diagonal(m, 1.0)
    for i, j in tqdm(todo, disable=not progress, desc="SAE pairs"):
        for k, v in _pair_values(preps[i], preps[j], thr, (f"views[{i}]", f"views[{j}]"),
                                 dense_limit=dense_limit, top_m=top_m, exact=exact).items():
            out[k][i, j] = out[k][j, i] = v
    return out
