"""Out-of-distribution stress: SAEs trained on one part of the input space, evaluated on the rest.

A split assigns every row to *in* (the SAE trains on a share of these and is evaluated on the
rest of them) or *out* (never seen in training). Rows are split by a per-row value:

- a task label (``a``, ``b``, ``c`` of our cache): ``below=f`` puts rows whose value is below
  ``min + f * (max - min + 1)`` in (``a < p/2`` for ``f = 0.5``), or ``in_values`` lists them;
- the dataset of a foreign per-dataset cache (``by="dataset"``): ``in_values`` lists dataset
  names or shell patterns (``["wiki*", "books"]``), every other dataset is out.

Then, per seed, the same metrics on in-distribution held-out rows and on out-of-distribution
rows (an evenly spaced subset of the same size, so the dead fraction's window and the
activation-matching rows are comparable): EV, L0, dead fraction, the accuracy of a linear
probe of a class label (``c``) fitted on in-distribution training latents (a ridge regression
onto one-hot classes: closed form, deterministic; ``probing`` holds SAEBench's binary logistic
probes), and consistency between seeds (activation
matching needs every SAE on the same rows: each split's rows are those rows). A *drop* is
in - out, with a bootstrap CI over seeds.
"""

from __future__ import annotations

import fnmatch
from typing import Any, NamedTuple, Sequence

import numpy as np
import torch

from .errors import HusaiError


class OODSplit(NamedTuple):
    in_idx: torch.Tensor  # sorted row indices of the in-distribution part
    out_idx: torch.Tensor  # sorted row indices of the out-of-distribution part
    rule: str  # the rule in words, e.g. "a < 56.5 (in) vs a >= 56.5 (out)"


def _matches(value: Any, spec: Sequence[Any]) -> bool:
    for s in spec:
        if isinstance(s, str) and isinstance(value, str) and fnmatch.fnmatchcase(value, s):
            return True
        if not isinstance(s, str) and not isinstance(value, str) and value == s:
            return True
    return False


def ood_split(values: Any, *, by: str = "value", in_values: Sequence[Any] | None = None,
              below: float | None = None) -> OODSplit:
    """Split rows by their ``values`` (one per row: numbers, or dataset names) into in / out.

    Exactly one rule: ``in_values`` (values, or shell patterns for names, that are in) or
    ``below`` (numeric values below ``min + below * (max - min + 1)`` are in; ``below`` in
    (0, 1)). A rule that names nothing present, or leaves either part empty, raises one line.
    """
    vals = np.asarray(values.detach().cpu().numpy() if torch.is_tensor(values) else values, dtype=object).reshape(-1)
    if vals.size == 0:
        raise HusaiError(f"OOD split by {by}: there are no rows")
    if (in_values is None) == (below is None):
        raise HusaiError(f"OOD split by {by}: give exactly one rule, ood_in (a list) or ood_below (a fraction)")
    if in_values is not None:
        spec = [in_values] if isinstance(in_values, (str, int, float)) else list(in_values)
        if not spec:
            raise HusaiError(f"OOD split by {by}: ood_in is an empty list")
        distinct = set(vals.tolist())
        unknown = [s for s in spec if not any(_matches(v, [s]) for v in distinct)]
        if unknown:
            present = sorted({str(v) for v in vals.tolist()})
            raise HusaiError(f"OOD split by {by}: {unknown} match no row; present: "
                             f"{', '.join(present[:10])}{' ...' if len(present) > 10 else ''}")
        mask = np.array([_matches(v, spec) for v in vals.tolist()])
        rule = f"{by} in {spec} (in) vs the rest (out)"
    else:
        if not 0.0 < float(below) < 1.0:
            raise HusaiError(f"OOD split by {by}: ood_below must be a fraction in (0, 1), got {below!r}")
        try:
            num = vals.astype(float)
        except (TypeError, ValueError):
            raise HusaiError(f"OOD split by {by}: ood_below needs numeric values; use ood_in for names") from None
        lo, hi = float(num.min()), float(num.max())
        cut = lo + float(below) * (hi - lo + 1)
        mask = num < cut
        rule = f"{by} < {cut:g} (in) vs {by} >= {cut:g} (out)"
    n_in = int(mask.sum())
    if n_in == 0 or n_in == mask.size:
        side = "in-distribution" if n_in == 0 else "out-of-distribution"
        raise HusaiError(f"OOD split {rule} leaves no {side} rows")
    idx = torch.arange(mask.size)
    return OODSplit(idx[torch.from_numpy(mask)], idx[torch.from_numpy(~mask)], rule)


def split_tag(split: OODSplit) -> str:
    """A short folder-safe id of a split (its rule and its rows), for where its SAEs live."""
    import hashlib

    h = hashlib.sha256(split.rule.encode())
    h.update(split.in_idx.numpy().astype(np.int64).tobytes())
    return h.hexdigest()[:10]


# ---------------------------------------------------------------- a small linear probe

class Probe(NamedTuple):
    weight: torch.Tensor  # (d + 1, n_classes) on standardised features plus an intercept, float64
    mean: torch.Tensor  # (d,) feature means of the fitting rows
    scale: torch.Tensor  # (d,) feature std of the fitting rows (1 where constant)


def fit_class_probe(z: Any, y: Any, *, ridge: float = 1e-3) -> Probe:
    """Linear probe of the class ``y`` from features ``z``: ridge regression onto one-hot
    classes (standardised features, intercept unpenalised, penalty ``ridge`` x rows), predicted
    class = argmax. Closed form in float64, so it is deterministic and costs one solve."""
    z = torch.as_tensor(z).double()
    y = torch.as_tensor(y).long().reshape(-1)
    if z.ndim != 2 or z.shape[0] != y.shape[0] or z.shape[0] < 2:
        raise HusaiError(f"probe needs (rows, d) features with one label per row, got {tuple(z.shape)} and {tuple(y.shape)}")
    mean, scale = z.mean(0), z.std(0)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    a = torch.cat([(z - mean) / scale, torch.ones(z.shape[0], 1, dtype=torch.float64)], dim=1)
    onehot = torch.nn.functional.one_hot(y, int(y.max()) + 1).double()
    penalty = torch.full((a.shape[1],), float(ridge) * z.shape[0], dtype=torch.float64)
    penalty[-1] = 0.0
    w = torch.linalg.solve(a.T @ a + torch.diag(penalty), a.T @ onehot)
    return Probe(w, mean, scale)


def class_probe_accuracy(probe: Probe, z: Any, y: Any) -> float:
    """Share of rows whose highest-scoring class under ``probe`` is ``y``."""
    z = torch.as_tensor(z).double()
    a = torch.cat([(z - probe.mean) / probe.scale, torch.ones(z.shape[0], 1, dtype=torch.float64)], dim=1)
    return float(((a @ probe.weight).argmax(1) == torch.as_tensor(y).long().reshape(-1)).double().mean())


__all__ = ["OODSplit", "ood_split", "split_tag", "Probe", "fit_class_probe", "class_probe_accuracy"]
