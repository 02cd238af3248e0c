"""Decoders as matrices of unit rows: the one row normalisation of the library (consistency,
matching, assignment and the consistency objectives use it), threshold checks, and the
off-diagonal values of a pairwise matrix (``stats.pair_values`` validates, then calls it)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .errors import HusaiError


Decoder = torch.Tensor | np.ndarray
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


def off_diagonal(matrix: np.ndarray) -> np.ndarray:
    """Upper-triangle (i < j) values of a square pairwise matrix."""
    m = np.asarray(matrix, dtype=float)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise HusaiError(f"pairwise matrix must be square (n, n), got shape {m.shape}")
    return m[np.triu_indices(m.shape[0], k=1)]


def _check_thresholds(thresholds) -> tuple[float, ...]:
    ts = tuple(float(t) for t in thresholds)
    if any(not 0.0 <= t <= 1.0 for t in ts):
        raise HusaiError(f"thresholds must lie in [0, 1], got {ts}")
    return ts
