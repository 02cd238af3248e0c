"""Training conditions: the real activations and each null, with one held-out split for all.

A *condition* is a set of SAEs of one config trained under several seeds on one data source:

    trained             the transformer's activations (``backend`` husai or sae_lens)
    gaussian_matched    Gaussian rows with the activations' mean and covariance
    random_transformer  an untrained transformer's activations (same hook and position)
    isotropic           untrained SAEs (no training; the weakest null)

Every condition splits its rows with the same seeded held-out split, trains on the training
rows only and is evaluated (EV, L0, dead latents, latents for activation matching) on its own
held-out rows. Null SAEs are cached like any SAE (``experiments.train_or_load_saes``), keyed on
their own rows' fingerprint, so they are retrained whenever the activations change.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import HusaiError
from .metrics import evaluate_sae
from .nulls import NULLS, check_null, gaussian_matched_rows, random_transformer_activations
from .sae import SAEConfig, build_sae
from .sources import INIT_MAX_ROWS, eval_rows, evenly_spaced, heldout_rows
from .sources.rows import _available_memory
from .store import SeedSAE, config_id, train_or_load_saes

CONDITIONS = ("trained",) + NULLS


@dataclass(frozen=True)
class ConditionData:
    """The rows one condition trains on and is evaluated on."""

    name: str
    train: torch.Tensor
    heldout: torch.Tensor
    description: str


def heldout_split(n_rows: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded split of ``n_rows`` into (training rows, held-out rows), both sorted."""
    if not 0.0 < float(fraction) < 1.0:
        raise HusaiError(f"heldout_fraction must be in (0, 1), got {fraction!r}")
    n_held = int(round(n_rows * float(fraction)))
    if n_held < 1 or n_held >= n_rows:
        raise HusaiError(f"a held-out fraction of {fraction} leaves an empty split of {n_rows} rows")
    perm = torch.randperm(n_rows, generator=torch.Generator().manual_seed(int(seed)))
    return perm[n_held:].sort().values, perm[:n_held].sort().values


def condition_data(name: str, x: torch.Tensor, split: tuple[torch.Tensor, torch.Tensor], *,
                   data_seed: int = 0, checkpoint: Any = None, hook: str | None = None,
                   position: str | int = "answer") -> ConditionData:
    """Rows for condition ``name`` (see the module docstring), split like the real rows.

    ``gaussian_matched`` fits mean and covariance on the real *training* rows and draws as many
    rows as ``x`` has with ``data_seed``; ``random_transformer`` needs the trained model's
    ``checkpoint`` and ``hook`` and builds the untrained model with init seed ``data_seed``.
    """
    train_idx, held_idx = split
    if name == "trained" or name == "isotropic":
        rows, why = x, ("the transformer's activations" if name == "trained" else
                        "no training: our initialisation (i.i.d. isotropic decoder rows)")
    elif check_null(name) == "gaussian_matched":
        rows = gaussian_matched_rows(x[train_idx], seed=data_seed, n_rows=x.shape[0])
        why = f"Gaussian rows with the activations' mean and covariance (data seed {data_seed})"
    else:
        if checkpoint is None or hook is None:
            raise HusaiError("the random_transformer null needs the trained transformer checkpoint and the hook")
        rows = random_transformer_activations(checkpoint, [hook], init_seed=data_seed, position=position)[hook]
        if rows.shape != x.shape:
            raise HusaiError(f"random_transformer activations have shape {tuple(rows.shape)}, expected {tuple(x.shape)}")
        why = f"activations of an untrained transformer (init seed {data_seed}) at {hook}"
    return ConditionData(name, rows[train_idx], rows[held_idx], why)


def condition_dir(artifacts: str | Path, layout: str, hook: str, cfg: SAEConfig, condition: str = "trained",
                  backend: str = "husai") -> Path:
    """Where a condition's SAEs live. Trained SAEs of our backend stay in ``saes/`` (every phase
    and the explorer read them there); nulls and other backends get their own folders."""
    if condition not in CONDITIONS:
        raise HusaiError(f"unknown condition {condition!r}; choose from {', '.join(CONDITIONS)}")
    base = Path(artifacts)
    if condition == "trained" and backend == "husai":
        return base / "saes" / layout / hook / config_id(cfg)
    tag = condition if backend == "husai" else f"{condition}-{backend}"
    return base / "conditions" / tag / layout / hook / config_id(cfg)


def untrained_saes(cfg: SAEConfig, data: ConditionData, seeds: list[int]) -> list[SeedSAE]:
    """The isotropic null: SAEs at initialisation (b_dec from the training rows), evaluated on
    the held-out rows. Nothing is trained or stored: they are rebuilt in milliseconds."""
    out = []
    for s in seeds:
        sae = build_sae(cfg, s)
        sae.init_biases_from_data(data.train)
        sae.eval()
        metrics = {"heldout": evaluate_sae(sae, data.heldout), "seed": s, "backend": "none (untrained)"}
        out.append(SeedSAE(s, sae, None, metrics, None))
    return out


def train_or_load_condition(artifacts: str | Path, layout: str, hook: str, cfg: SAEConfig,
                            data: ConditionData, seeds: list[int], backend: str = "husai",
                            snapshot_steps: tuple[int, ...] = (), progress: bool = False,
                            device: str = "auto", load_only: bool = False) -> list[SeedSAE]:
    """The SAEs of one condition for ``seeds`` (trained or loaded; isotropic: built).
    ``load_only``: never train; a missing or stale checkpoint is a HusaiError naming it."""
    if data.name == "isotropic":
        return untrained_saes(cfg, data, seeds)
    folder = condition_dir(artifacts, layout, hook, cfg, data.name, backend)
    return train_or_load_saes(folder, cfg, data.train, seeds, progress=progress, device=device, backend=backend,
                              snapshot_steps=snapshot_steps if backend == "husai" else (), heldout=data.heldout,
                              load_only=load_only)



# ---------------------------------------------------------------- conditions from an activation source

def source_condition_data(name: str, source: Any, split: tuple[torch.Tensor, torch.Tensor], *,
                          data_seed: int = 0) -> Any:
    """``ConditionData`` of condition ``name`` for rows read from a source.

    ``trained``: training rows are a lazy view of the source (the trainer streams them); the
    held-out rows are read into memory (``heldout_rows``: all of them up to EVAL_MAX_BYTES,
    else an evenly spaced subset). ``gaussian_matched``: fitted on all training rows and drawn
    in memory exactly as for our cache (``nulls.gaussian_matched_rows``: n_rows x d_in float32,
    ~3x that while drawing; refused with a clear error when that exceeds the free memory).
    ``isotropic`` (untrained SAEs): the <= 8192 evenly spaced training rows their b_dec init
    reads. ``random_transformer`` needs the transformer that made the activations: refused.
    """
    train_idx, held_idx = split
    where = source.describe()
    if name == "trained":
        return ConditionData(name, source.subset(train_idx), heldout_rows(source, held_idx),
                             f"activations streamed from {where}")
    if name == "isotropic":
        rows = source.take(train_idx[evenly_spaced(len(train_idx), INIT_MAX_ROWS)])
        return ConditionData(name, rows, heldout_rows(source, held_idx),
                             "no training: our initialisation (i.i.d. isotropic decoder rows)")
    if check_null(name) != "gaussian_matched":
        raise HusaiError(f"the {name} null needs the transformer that made the activations; it does not exist for "
                         f"foreign activations ({where})")
    n, d = source.shape
    need, free = 12 * n * d + 4 * len(train_idx) * d, _available_memory()
    if free is not None and need > free:
        raise HusaiError(f"the gaussian_matched null of {n:,} x {d} rows needs ~{need / 2**30:.1f} GiB in memory, "
                         f"{free / 2**30:.1f} GiB are free; drop it from the nulls for this source")
    fit = source.take(train_idx)
    rows = gaussian_matched_rows(fit, seed=data_seed, n_rows=n)
    del fit
    return ConditionData(name, rows[train_idx], _held_like(rows, source, held_idx),
                         f"Gaussian rows with the activations' mean and covariance (data seed {data_seed})")


def _held_like(rows: torch.Tensor, source: Any, held_idx: torch.Tensor) -> torch.Tensor:
    """Held-out rows of an in-memory null, capped like the source's (same count, same positions)."""
    held_idx = torch.as_tensor(held_idx)
    return rows[held_idx[evenly_spaced(len(held_idx), eval_rows(len(held_idx), source.shape[1]))]]


__all__ = ["CONDITIONS", "ConditionData", "heldout_split", "condition_data", "condition_dir", "untrained_saes",
           "train_or_load_condition", "source_condition_data"]
