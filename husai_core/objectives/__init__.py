"""Consistency regularisers: pull a training SAE's decoder towards a fixed reference dictionary.

Phase 8 asks whether an explicit objective makes seeds agree, and whether they then agree
because they found the same features in the data or only because each of them copied the
reference. Two penalties, both on unit-normalised decoder rows (sign ignored, like PWMCC) and
differentiable with respect to the training decoder:

* ``DecoderAlignment`` — ``lam * (1 - mean_i max_j |cos(d_i, r_j)|)``: every training feature
  is pulled towards its nearest reference feature (several may pick the same one);
* ``AssignmentAlignment`` — ``lam * (1 - mean |cos|)`` over the pairs of a one-to-one Hungarian
  matching (``scipy.optimize.linear_sum_assignment`` on ``1 - |cos|``). The matching is
  re-solved every ``resolve_every`` steps and cached in between (it changes slowly, and a
  solve costs far more than a training step for large dictionaries).

Both are multiplied by ``scale`` (in training: the activations' mean per-element variance) so
that lambda is dimensionless, relative to the reconstruction loss (see ``DecoderAlignment``).

An objective is a callable ``objective(sae, step) -> scalar tensor``; the trainer adds it to
the loss (``train_sae(..., extra_loss=objective)``) and logs it as the history column
``extra``. ``train_regularised_point`` is the sweep-point form (see ``husai_core.sweep``):
regularised SAEs are cached like any other, in ``sae_dir`` of a config whose ``extra`` names
the objective, its lambda and the reference's content hash.

``collapse_diagnostics`` separates real agreement from collapse onto the reference by
comparing seeds pulled towards reference A with control seeds pulled towards another
reference B: agreement that only exists within a reference group is the reference's, not
the data's.

The package: ``alignment`` (the two penalties, their factory and the reference's alignment),
``points`` (the regularised sweep point and its checks) and ``collapse`` (agreement vs collapse
onto the reference, the design check, the phase-8 summary).
"""

from .alignment import (
    OBJECTIVES, reference_hash, DecoderAlignment, AssignmentAlignment, make_objective, reference_alignment,
)
from .points import OBJECTIVE_KEYS, regularised_point_check, train_regularised_point
from .collapse import cross_pwmcc, collapse_diagnostics, check_design, summarise_objectives

__all__ = [
    "OBJECTIVES", "DecoderAlignment", "AssignmentAlignment", "make_objective", "reference_alignment", "reference_hash",
    "regularised_point_check", "train_regularised_point", "cross_pwmcc", "collapse_diagnostics", "check_design",
    "summarise_objectives",
]
