"""The two consistency penalties (nearest-feature and Hungarian-matched alignment to a reference
dictionary), their factory and the alignment of a decoder to its reference.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from ..decoders import _unit_rows
from ..errors import HusaiError


OBJECTIVES = ("alignment", "assignment")


# ---------------------------------------------------------------- helpers

def _decoder_of(target: Any) -> Tensor:
    """The (d_sae, d_out) decoder of an SAE (its ``W_dec``) or a decoder tensor itself."""
    dec = target if isinstance(target, Tensor) else getattr(target, "W_dec", None)
    if not isinstance(dec, Tensor):
        raise HusaiError(f"a consistency objective needs an SAE or a decoder tensor, got {type(target).__name__}")
    if dec.dim() != 2:
        raise HusaiError(f"the regularised decoder must be 2-D (d_sae, d_out), got shape {tuple(dec.shape)} "
                         "(train regularised seeds one at a time, not as a stack)")
    return dec


def _check_reference(reference: Any) -> Tensor:
    ref = torch.as_tensor(reference).detach()
    if ref.dim() != 2 or ref.shape[0] == 0 or ref.shape[1] == 0:
        raise HusaiError(f"reference decoder must be a non-empty (d_sae, d_out) matrix, got shape {tuple(ref.shape)}")
    if not torch.is_floating_point(ref) or not bool(torch.isfinite(ref).all()):
        raise HusaiError("reference decoder must hold finite floating-point values")
    return _unit_rows(ref.float().cpu(), "decoder")


def reference_hash(reference: Any) -> str:
    """Short content hash of a reference decoder: part of a regularised SAE's config, so SAEs
    trained towards another reference never share a checkpoint folder."""
    ref = torch.as_tensor(reference).detach().float().cpu().contiguous()
    return hashlib.sha256(ref.numpy().tobytes() + str(tuple(ref.shape)).encode()).hexdigest()[:12]


# ---------------------------------------------------------------- the two regularisers

@dataclass
class DecoderAlignment:
    """``lam * scale * (1 - mean over training features of the best |cos| to any reference feature)``.

    ``scale`` puts the penalty in the units of the reconstruction loss: the SAE's MSE is in
    squared activation units, so ``train_regularised_point`` passes the mean per-element
    variance of the activations (the MSE of predicting the mean). ``lam`` is then
    dimensionless: ``lam = 0.1`` weighs a fully misaligned dictionary like 10% of the variance
    left unexplained, whatever the activations' scale.
    """

    reference: Tensor
    lam: float
    scale: float = 1.0
    kind: ClassVar[str] = "alignment"

    def __post_init__(self) -> None:
        self.reference = _check_reference(self.reference)
        if not float(self.lam) >= 0:
            raise HusaiError(f"lambda of the {self.kind} objective must be >= 0, got {self.lam!r}")
        if not float(self.scale) > 0 or math.isinf(float(self.scale)):
            raise HusaiError(f"scale of the {self.kind} objective must be a positive number, got {self.scale!r}")
        self.lam, self.scale = float(self.lam), float(self.scale)

    def _ref_for(self, dec: Tensor) -> Tensor:
        if dec.shape[-1] != self.reference.shape[1]:
            raise HusaiError(f"decoder width {dec.shape[-1]} does not match the reference width {self.reference.shape[1]}")
        if self.reference.device != dec.device or self.reference.dtype != dec.dtype:
            self.reference = self.reference.to(device=dec.device, dtype=dec.dtype)
        return self.reference

    def penalty(self, target: Any, step: int | None = None) -> Tensor:
        """The unweighted penalty in [0, 1] (0: every feature is some reference feature, up to sign).
        ``step`` is the training step (used by objectives with state)."""
        dec = _decoder_of(target)
        sims = (_unit_rows(dec, "decoder") @ self._ref_for(dec).T).abs()
        return 1.0 - sims.max(dim=1).values.mean()

    def __call__(self, target: Any, step: int) -> Tensor:
        return (self.lam * self.scale) * self.penalty(target, step)

    def fresh(self) -> "DecoderAlignment":
        """A copy with no training state (one per seed)."""
        return dataclasses.replace(self)

    def describe(self) -> dict[str, Any]:
        return {"objective": self.kind, "lam": self.lam, "scale": self.scale, "reference_sha": reference_hash(self.reference)}


@dataclass
class AssignmentAlignment(DecoderAlignment):
    """``lam * (1 - mean |cos| of Hungarian-matched pairs)``; the matching (cost ``1 - |cos|``)
    is re-solved when ``step`` is ``resolve_every`` or more past the last solve, else reused.
    ``n_solves`` counts the solves. With dictionaries of different sizes only min(d_sae, d_ref)
    pairs are matched; the extra features of the larger one are not penalised."""

    resolve_every: int = 50
    kind: ClassVar[str] = "assignment"
    n_solves: int = field(default=0, init=False)
    _rows: Tensor | None = field(default=None, init=False, repr=False)
    _cols: Tensor | None = field(default=None, init=False, repr=False)
    _solved_at: int | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.resolve_every, bool) or int(self.resolve_every) != self.resolve_every or self.resolve_every < 1:
            raise HusaiError(f"resolve_every must be a positive integer number of steps, got {self.resolve_every!r}")
        self.resolve_every = int(self.resolve_every)

    def _stale(self, step: int) -> bool:
        return self._cols is None or self._solved_at is None or step < self._solved_at \
            or step - self._solved_at >= self.resolve_every

    def _solve(self, dec: Tensor, ref: Tensor) -> tuple[Tensor, Tensor]:
        with torch.no_grad():
            cost = 1.0 - (_unit_rows(dec.detach(), "decoder") @ ref.T).abs().double().cpu().numpy()
        rows, cols = linear_sum_assignment(cost)
        self.n_solves += 1
        return (torch.as_tensor(rows, dtype=torch.long, device=dec.device),
                torch.as_tensor(cols, dtype=torch.long, device=dec.device))

    def match(self, target: Any, step: int | None = None) -> tuple[Tensor, Tensor]:
        """Matched (training row, reference row) indices. During training (``step`` given) the
        cached matching is reused until it is stale; ``step=None`` solves afresh, uncached."""
        dec = _decoder_of(target)
        ref = self._ref_for(dec)
        if step is None:
            return self._solve(dec, ref)
        if self._stale(step):
            self._rows, self._cols = self._solve(dec, ref)
            self._solved_at = int(step)
        return self._rows, self._cols

    def penalty(self, target: Any, step: int | None = None) -> Tensor:
        dec = _decoder_of(target)
        rows, cols = self.match(dec, step)
        sims = (_unit_rows(dec[rows], "decoder") * self._ref_for(dec)[cols]).sum(-1).abs()
        return 1.0 - sims.mean()

    def fresh(self) -> "AssignmentAlignment":
        return AssignmentAlignment(self.reference, self.lam, scale=self.scale, resolve_every=self.resolve_every)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "resolve_every": self.resolve_every}


def make_objective(kind: str, reference: Any, lam: float, resolve_every: int = 50, scale: float = 1.0) -> DecoderAlignment:
    """``"alignment"`` -> DecoderAlignment, ``"assignment"`` -> AssignmentAlignment."""
    if kind == "alignment":
        return DecoderAlignment(reference, lam, scale=scale)
    if kind == "assignment":
        return AssignmentAlignment(reference, lam, scale=scale, resolve_every=resolve_every)
    raise HusaiError(f"unknown consistency objective {kind!r}; choose one of {', '.join(OBJECTIVES)}")


# ---------------------------------------------------------------- measurements (no gradient)

def reference_alignment(decoder: Any, reference: Any) -> float:
    """Mean over the decoder's features of the best |cos| to any reference feature
    (1 - the unweighted ``DecoderAlignment`` penalty)."""
    with torch.no_grad():
        return float(1.0 - DecoderAlignment(reference, 0.0).penalty(torch.as_tensor(decoder).detach().float().cpu()))
