"""The regularised sweep point: one seed trained (or loaded, by key) with a consistency objective
towards a reference checkpoint, and the check of its configuration.
"""

from __future__ import annotations

from typing import Any, Callable

from ..errors import HusaiError
from .alignment import OBJECTIVES, make_objective, reference_alignment


# ---------------------------------------------------------------- training (sweep points)

# Keys of a regularised sweep point that are not SAEConfig fields.
OBJECTIVE_KEYS = ("objective", "lam", "resolve_every", "reference")


def regularised_point_check(d_in: int) -> Callable[[dict[str, Any]], None]:
    """A ``check`` for ``sweep.expand_grid`` over regularised points: the SAE fields must make a
    valid SAEConfig, the objective must be known and lambda >= 0 (fails before anything trains)."""
    from ..experiments import sweep_point_check

    inner = sweep_point_check(d_in)

    def check(config: dict[str, Any]) -> None:
        kind, lam = config.get("objective", "none"), config.get("lam", 0.0)
        if kind != "none" and kind not in OBJECTIVES:
            raise HusaiError(f"unknown consistency objective {kind!r}; choose none or one of {', '.join(OBJECTIVES)}")
        if not float(lam) >= 0:
            raise HusaiError(f"lambda must be >= 0, got {lam!r}")
        inner({key: v for key, v in config.items() if key not in OBJECTIVE_KEYS})
    return check


def train_regularised_point(spec: dict[str, Any]) -> dict[str, Any]:
    """Sweep point: one seed of one SAE configuration trained with (or, for ``lam == 0`` or
    ``objective == "none"``, without) a consistency objective towards the SAE checkpoint at
    ``spec['reference']``. Returns the ``experiments.train_point`` fields plus the seed's
    alignment to the reference. Top-level so a process-pool or Dask worker can run it."""
    from ..experiments import config_id, point_data, sae_config, sae_dir, train_point
    from ..sae import load_sae
    from ..sae.trainer import training_scale
    from ..store import train_or_load_saes

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
        # the one train-or-load: a fresh objective per seed, its identity in cfg.extra (the key)
        (r,) = train_or_load_saes(sae_dir(art, layout, hook, cfg), cfg, rows, [seed], objective=objective,
                                  heldout=data.heldout)
        held = r.metrics["heldout"]
        res = {"ev": held["ev"], "l0": held["l0"], "mse": held["mse"], "dead_fraction": held["dead_fraction"],
               "train_ev": r.metrics["ev"], "checkpoint": str(r.path), "config_id": config_id(cfg),
               "final_penalty": r.metrics.get("final_penalty"), "n_solves": r.metrics.get("n_solves")}
    if reference is not None:
        res["reference_alignment"] = reference_alignment(load_sae(res["checkpoint"]).W_dec, reference)
    return res
