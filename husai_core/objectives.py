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
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from .errors import HusaiError

OBJECTIVES = ("alignment", "assignment")


# ---------------------------------------------------------------- helpers

def _unit(t: Tensor) -> Tensor:
    # clamp keeps a zero row at zero (similarity 0) instead of NaN, as in consistency.py
    return t / t.norm(dim=-1, keepdim=True).clamp_min(1e-12)


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
    return _unit(ref.float().cpu())


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
        sims = (_unit(dec) @ self._ref_for(dec).T).abs()
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
            cost = 1.0 - (_unit(dec.detach()) @ ref.T).abs().double().cpu().numpy()
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
        sims = (_unit(dec[rows]) * self._ref_for(dec)[cols]).sum(-1).abs()
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


# ---------------------------------------------------------------- training (sweep points)

# Keys of a regularised sweep point that are not SAEConfig fields.
OBJECTIVE_KEYS = ("objective", "lam", "resolve_every", "reference")


def regularised_point_check(d_in: int) -> Callable[[dict[str, Any]], None]:
    """A ``check`` for ``sweep.expand_grid`` over regularised points: the SAE fields must make a
    valid SAEConfig, the objective must be known and lambda >= 0 (fails before anything trains)."""
    from .experiments import sweep_point_check

    inner = sweep_point_check(d_in)

    def check(config: dict[str, Any]) -> None:
        kind, lam = config.get("objective", "none"), config.get("lam", 0.0)
        if kind != "none" and kind not in OBJECTIVES:
            raise HusaiError(f"unknown consistency objective {kind!r}; choose none or one of {', '.join(OBJECTIVES)}")
        if not float(lam) >= 0:
            raise HusaiError(f"lambda must be >= 0, got {lam!r}")
        inner({key: v for key, v in config.items() if key not in OBJECTIVE_KEYS})
    return check


def train_or_load_regularised(folder: str | Path, cfg, x: Tensor, seeds: list[int],
                              objective: DecoderAlignment | None, progress: bool = False,
                              device: str = "auto", heldout: Tensor | None = None) -> list:
    """``experiments.train_or_load_saes`` with an extra training term (one fresh objective per
    seed, so cached matchings never leak between seeds). ``objective=None`` is plain training.

    Checkpoints use the same layout (``seed<N>/`` with ``metrics.json`` written last), so
    ``experiments.load_saes`` reads them; metrics also record the final penalty value.
    """
    from .experiments import train_or_load_saes

    return train_or_load_saes(folder, cfg, x, seeds, progress=progress, device=device, objective=objective,
                              heldout=heldout)


def train_regularised_point(spec: dict[str, Any]) -> dict[str, Any]:
    """Sweep point: one seed of one SAE configuration trained with (or, for ``lam == 0`` or
    ``objective == "none"``, without) a consistency objective towards the SAE checkpoint at
    ``spec['reference']``. Returns the ``experiments.train_point`` fields plus the seed's
    alignment to the reference. Top-level so a process-pool or Dask worker can run it."""
    from .experiments import config_id, point_data, sae_config, sae_dir, train_point
    from .sae import load_sae
    from .sae.trainer import training_scale

    spec = dict(spec)
    kind, lam = str(spec.pop("objective", "none")), float(spec.pop("lam", 0.0))
    resolve_every, ref_path = int(spec.pop("resolve_every", 50)), spec.pop("reference", None)
    if kind != "none" and kind not in OBJECTIVES:
        raise HusaiError(f"unknown consistency objective {kind!r}; choose none or one of {', '.join(OBJECTIVES)}")
    reference = load_sae(ref_path).W_dec.detach() if ref_path else None
    if kind == "none" or lam == 0.0:
        res = train_point(spec)
    else:
        if reference is None:
            raise HusaiError(f"objective {kind!r} with lambda {lam:g} needs a reference SAE checkpoint")
        spec, data, x = point_data(spec)  # the same held-out split as every other SAE
        (art, layout, hook, _), seed = spec.pop("_where"), int(spec.pop("seed"))
        rows = data.train
        # penalty in MSE units: times the mean per-element variance of the training rows, in the
        # units the SAE trains in (times the input scale squared when rows are normalised)
        cfg0 = sae_config(x.shape[1], spec)
        scale = float(rows.double().var(dim=0, unbiased=False).mean()) * training_scale(cfg0, rows) ** 2
        objective = make_objective(kind, reference, lam, resolve_every, scale=max(scale, 1e-12))
        extra = {**spec.pop("extra", {}), "objective": objective.describe()}
        cfg = sae_config(x.shape[1], {**spec, "extra": extra})
        (r,) = train_or_load_regularised(sae_dir(art, layout, hook, cfg), cfg, rows, [seed], objective,
                                         heldout=data.heldout)
        held = r.metrics["heldout"]
        res = {"ev": held["ev"], "l0": held["l0"], "mse": held["mse"], "dead_fraction": held["dead_fraction"],
               "train_ev": r.metrics["ev"], "checkpoint": str(r.path), "config_id": config_id(cfg),
               "final_penalty": r.metrics.get("final_penalty"), "n_solves": r.metrics.get("n_solves")}
    if reference is not None:
        res["reference_alignment"] = reference_alignment(load_sae(res["checkpoint"]).W_dec, reference)
    return res


# ---------------------------------------------------------------- collapse onto the reference

def cross_pwmcc(group_a: list[Tensor], group_b: list[Tensor]) -> np.ndarray:
    """PWMCC of every (a, b) pair across two groups of dictionaries: an (n_a, n_b) array."""
    from .consistency import pwmcc_matrix

    if not group_a or not group_b:
        raise HusaiError("cross_pwmcc needs at least one dictionary in each group")
    joint = pwmcc_matrix(list(group_a) + list(group_b))
    return np.asarray(joint)[: len(group_a), len(group_a):]


def collapse_diagnostics(within: float, cross: float, baseline: float, alignment: float, baseline_alignment: float,
                         ev_drop: float, min_gain: float = 0.01, max_collapse_share: float = 0.5) -> dict[str, Any]:
    """Is the extra agreement of regularised seeds their own, or the reference's?

    ``within``: mean PWMCC between seeds pulled towards reference A; ``cross``: mean PWMCC
    between those seeds and control seeds pulled towards a different reference B (same
    lambda); ``baseline``: mean PWMCC between unregularised seeds (lambda 0). The gain
    ``within - baseline`` splits into a part that survives a change of reference
    (``cross - baseline``) and a part that does not (``within - cross``, the agreement that
    exists only because both seeds copy the same reference). ``collapse_share`` is the latter's
    share of the gain. *Collapse onto the reference* is flagged when the gain is at least
    ``min_gain`` and more than ``max_collapse_share`` of it vanishes under a change of reference.
    """
    gain = within - baseline
    transferable = cross - baseline
    share = float((within - cross) / gain) if gain > 0 else float("nan")
    collapsed = bool(gain >= min_gain and share > max_collapse_share)
    if gain < min_gain:
        why = f"agreement did not rise by {min_gain:g} or more (gain {gain:+.4f}): nothing to attribute"
    elif collapsed:
        why = (f"collapse onto the reference: agreement rose by {gain:+.4f} but only {transferable:+.4f} survives a "
               f"change of reference ({share:.0%} of the gain is the shared reference), while alignment to the "
               f"reference rose by {alignment - baseline_alignment:+.4f} and EV changed by {-ev_drop:+.4f}")
    else:
        why = (f"agreement rose by {gain:+.4f} and {transferable:+.4f} of it survives a change of reference "
               f"(collapse share {share:.0%})")
    return {"gain": float(gain), "transferable_gain": float(transferable), "collapse_share": share,
            "alignment_gain": float(alignment - baseline_alignment), "collapse": collapsed, "explanation": why}


# ---------------------------------------------------------------- phase 8: design check and summary

def check_design(seeds: list[int], control_seeds: list[int], reference_seed: int, control_reference_seed: int,
                 lambdas: list[float], objectives: list[str]) -> None:
    """Refuse a phase-8 design that cannot answer its question (with a message naming why)."""
    if len(seeds) < 2 or len(set(seeds)) != len(seeds):
        raise HusaiError(f"seeds must hold at least 2 distinct seeds (pairs to compare), got {seeds}")
    if not control_seeds or len(set(control_seeds)) != len(control_seeds):
        raise HusaiError(f"control_seeds must hold at least 1 distinct seed, got {control_seeds}")
    if set(seeds) & set(control_seeds):
        raise HusaiError(f"control_seeds {sorted(set(seeds) & set(control_seeds))} are also in seeds: a shared seed "
                         "shares initialisation and data order, which would inflate the cross-reference agreement")
    refs = {int(reference_seed), int(control_reference_seed)}
    if len(refs) != 2:
        raise HusaiError(f"reference_seed and control_reference_seed must differ, both are {reference_seed}")
    if refs & (set(seeds) | set(control_seeds)):
        raise HusaiError(f"reference seed(s) {sorted(refs & (set(seeds) | set(control_seeds)))} are also training seeds: "
                         "a seed would be regularised towards its own twin")
    lams = [float(v) for v in lambdas]
    if any(not v >= 0 for v in lams) or len(set(lams)) != len(lams):
        raise HusaiError(f"lambdas must be distinct and >= 0, got {lambdas}")
    if 0.0 not in lams or len(lams) < 2:
        raise HusaiError(f"lambdas must include 0 (the unregularised baseline) and at least one value > 0, got {lambdas}")
    unknown = [o for o in objectives if o not in OBJECTIVES]
    if not objectives or unknown:
        raise HusaiError(f"objectives must be a non-empty list from {', '.join(OBJECTIVES)}, got {objectives}")


def _decoders(paths: list[str]) -> list[Tensor]:
    from .sae import load_sae

    return [load_sae(p).W_dec.detach() for p in paths]


def summarise_objectives(table, seeds: list[int], control_seeds: list[int], n_resamples: int = 10_000,
                         stats_seed: int = 0, alpha: float = 0.05, min_gain: float = 0.01,
                         max_collapse_share: float = 0.5, null_table=None):
    """One row per (objective, lambda) from a phase-8 sweep table (``objective``, ``lam``,
    ``seed``, ``checkpoint``, ``ev``, ``l0``, ``dead_fraction``, ``reference_alignment``);
    the lambda-0 row (``objective == "none"``) is repeated under every objective as its baseline.

    Columns: trained vs random PWMCC of ``seeds`` (regularised towards reference A) with the
    ``consistency_summary`` statistics; ``alignment`` (mean over seeds of the mean best |cos|
    to reference A) and ``seed_alignment``; ``cross_pwmcc`` (seeds vs ``control_seeds``, which
    were pulled towards reference B); ``control_pwmcc`` (among control seeds, NaN with one);
    ``ev``, ``ev_drop`` (EV at lambda 0 minus EV), ``l0``, ``dead_fraction``; and the
    ``collapse_diagnostics`` fields. With ``null_table`` (sweep rows of the unregularised
    config trained on ``gaussian_matched`` rows: ``seed``, ``checkpoint``) every row is also
    judged against that null (``null``, ``null_lcb``, ``null_p``, ``null_verdict``, ...).
    """
    import pandas as pd

    from .consistency import pwmcc_matrix
    from .experiments import _pwmcc_stats, consistency_summary

    null_decs = null_seeds = None
    if null_table is not None:
        null_table = null_table.sort_values("seed")
        null_decs, null_seeds = _decoders(list(null_table.checkpoint)), null_table.seed.astype(int).tolist()

    seeds, control_seeds = [int(s) for s in seeds], [int(s) for s in control_seeds]

    def group(objective: str, lam: float, which: list[int]):
        sel = table[(table.objective == objective) & np.isclose(table.lam.astype(float), lam)]
        missing = sorted(set(which) - set(sel.seed.astype(int)))
        if missing:
            raise HusaiError(f"phase-8 table lacks seeds {missing} for objective {objective!r}, lambda {lam:g}")
        return sel.assign(seed=sel.seed.astype(int)).drop_duplicates("seed").set_index("seed").loc[which]

    def measure(objective: str, lam: float) -> dict[str, Any]:
        main, ctrl = group(objective, lam, seeds), group(objective, lam, control_seeds)
        decs = _decoders(list(main.checkpoint)) + _decoders(list(ctrl.checkpoint))
        joint = np.asarray(pwmcc_matrix(decs))
        n = len(seeds)
        s = consistency_summary(decs[:n], seeds, n_resamples, stats_seed, alpha)
        ctrl_m = joint[n:, n:]
        return {"pwmcc": s["trained"]["mean"], "pwmcc_ci_low": s["trained"]["ci_low"],
                "pwmcc_ci_high": s["trained"]["ci_high"], "random": s["random"]["mean"],
                "random_ci_high": s["random"]["ci_high"], "difference": s["difference"], "ratio": s["ratio"],
                "lcb": s["lcb"], "permutation_p": s["permutation"]["p_value"], "verdict": s["verdict"]["label"],
                "alignment": float(main.reference_alignment.mean()),
                "control_alignment": float(ctrl.reference_alignment.mean()),
                "cross_pwmcc": float(joint[:n, n:].mean()),
                "control_pwmcc": float(ctrl_m[np.triu_indices(len(control_seeds), 1)].mean()) if len(control_seeds) > 1
                else float("nan"),
                "ev": float(main.ev.mean()), "l0": float(main.l0.mean()), "dead_fraction": float(main.dead_fraction.mean()),
                "seed_alignment": [float(v) for v in main.reference_alignment],
                "trained_pairs": s["trained_pairs"], "cross_pairs": joint[:n, n:].ravel().tolist(),
                **(_pwmcc_stats(decs[:n], seeds, null_decs, null_seeds, n_resamples, stats_seed, alpha)
                   if null_decs is not None else {})}

    base = measure("none", 0.0)
    rows = []
    for objective in [o for o in OBJECTIVES if o in set(table.objective)]:
        lams = sorted({float(v) for v in table[table.objective == objective].lam if float(v) > 0})
        for lam in [0.0, *lams]:
            m = base if lam == 0 else measure(objective, lam)
            ev_drop = base["ev"] - m["ev"]
            diag = collapse_diagnostics(m["pwmcc"], m["cross_pwmcc"], base["pwmcc"], m["alignment"], base["alignment"],
                                        ev_drop, min_gain, max_collapse_share)
            rows.append({"objective": objective, "lam": lam, **m, "ev_drop": ev_drop, **diag})
    return pd.DataFrame(rows)


__all__ = ["OBJECTIVES", "DecoderAlignment", "AssignmentAlignment", "make_objective", "reference_alignment",
           "reference_hash", "regularised_point_check", "train_or_load_regularised", "train_regularised_point", "cross_pwmcc",
           "collapse_diagnostics", "check_design", "summarise_objectives"]
