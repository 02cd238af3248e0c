"""Scan the cached SAE folder tree into a tidy table, one row per configuration.

Seeds are never pooled across training data: a configuration shows only the seeds trained like
its newest checkpoint (same data fingerprint and SAE code version); the others are listed as
``stale_seeds``.
"""

from __future__ import annotations

import math
import re
import warnings
from pathlib import Path
from typing import Any
import numpy as np
import pandas as pd

from ..errors import HusaiError
from ..experiments import config_id
from ..io import read_json
from ..sae import SAEConfig
from ..sae.config import ALIASES, ARCHITECTURES, TOPK_FAMILY


GRID_COLUMNS = ["layout", "hook", "architecture", "transcoder", "d_in", "d_sae", "sparsity_name", "sparsity", "k",
                "l1_coeff", "l0_coeff", "steps", "batch_size", "lr", "config_id", "seeds", "n_seeds", "ev", "l0",
                "dead_fraction", "data_fingerprint", "stale_seeds", "folder", "config"]
_SEED_DIR = re.compile(r"seed(\d+)")


# ---------------------------------------------------------------- the grid

def sparsity_field(architecture: str) -> str:
    """The SAEConfig field that sets sparsity: ``k`` (TopK family), ``l1_coeff`` (ReLU), ``l0_coeff`` (JumpReLU)."""
    arch = ALIASES.get(str(architecture).lower(), str(architecture).lower())
    if arch in TOPK_FAMILY:
        return "k"
    if arch == "relu":
        return "l1_coeff"
    if arch == "jumprelu":
        return "l0_coeff"
    raise HusaiError(f"unknown architecture {architecture!r}; choose one of {', '.join(ARCHITECTURES)}")


def complete_seeds(folder: str | Path) -> list[int]:
    """Seeds of one configuration folder whose ``metrics.json`` exists (written last: complete)."""
    out = []
    for d in Path(folder).glob("seed*"):
        m = _SEED_DIR.fullmatch(d.name)
        if m and (d / "metrics.json").is_file():
            out.append(int(m.group(1)))
    return sorted(out)


def training_identity(metrics: dict[str, Any]) -> tuple[str | None, str | None]:
    """What a seed was trained on: (fingerprint of the training rows, SAE code version of its key).

    Seeds of one configuration are comparable only when these are equal."""
    key = metrics.get("key")
    return metrics.get("data_fingerprint"), key.get("code") if isinstance(key, dict) else None


def _read_seeds(folder: Path, warn: bool = True) -> list[dict[str, Any]]:
    """Every finished, readable seed of a configuration folder: seed, config, metrics, when written."""
    out = []
    for seed in complete_seeds(folder):
        d = folder / f"seed{seed}"
        try:
            meta = read_json(d / "config.json", "SAE config")
            c = SAEConfig.from_dict(meta["config"])
            m = read_json(d / "metrics.json", "SAE metrics")
            written = (d / "metrics.json").stat().st_mtime_ns
        except (HusaiError, KeyError, TypeError, OSError) as exc:
            # one damaged seed must not hide the rest of the grid
            if warn:
                warnings.warn(f"explorer: skipping unreadable SAE checkpoint {d} ({exc})", stacklevel=4)
            continue
        out.append({"seed": seed, "config": c, "metrics": m, "written": written, "identity": training_identity(m)})
    return out


def seed_groups(folder: str | Path) -> list[dict[str, Any]]:
    """The finished seeds of one configuration folder grouped by ``training_identity``, newest first.

    Each group: ``seeds``, ``data_fingerprint``, ``code`` and ``written`` (ns time of its newest
    ``metrics.json``). The first group holds the seeds trained like the newest checkpoint.
    """
    groups: dict[tuple, dict[str, Any]] = {}
    for e in _read_seeds(Path(folder), warn=False):
        g = groups.setdefault(e["identity"], {"data_fingerprint": e["identity"][0], "code": e["identity"][1],
                                              "seeds": [], "written": 0})
        g["seeds"].append(e["seed"])
        g["written"] = max(g["written"], e["written"])
    return sorted(groups.values(), key=lambda g: g["written"], reverse=True)


def _scan_config(folder: Path, layout: str, hook: str) -> dict[str, Any] | None:
    cfg, entries = None, []
    for e in _read_seeds(folder):
        if cfg is None:
            cfg = e["config"]
        elif e["config"] != cfg:
            warnings.warn(f"explorer: skipping {folder / ('seed%d' % e['seed'])}: its config differs from "
                          f"seed{entries[0]['seed']} of the same folder", stacklevel=3)
            continue
        entries.append(e)
    if cfg is None:
        return None
    # Never pool seeds trained on different data (or code): keep those trained like the newest checkpoint.
    newest = max(entries, key=lambda e: e["written"])["identity"]
    stale = [e["seed"] for e in entries if e["identity"] != newest]
    entries = [e for e in entries if e["identity"] == newest]
    if stale:
        warnings.warn(f"explorer: {folder.name}: seed(s) {stale} were trained on other data or code than the newest "
                      f"checkpoint (seeds {[e['seed'] for e in entries]}, data {newest[0]}); they are left out, not "
                      "pooled (retrain them, e.g. with Train)", stacklevel=3)
    seeds, metrics = [e["seed"] for e in entries], [e["metrics"] for e in entries]

    def mean(key: str) -> float:
        vals = [float(m[key]) for m in metrics if key in m]
        return float(np.mean(vals)) if vals else math.nan

    field = sparsity_field(cfg.architecture)
    return {"layout": layout, "hook": hook, "architecture": cfg.architecture, "transcoder": cfg.transcoder,
            "d_in": cfg.d_in, "d_sae": cfg.d_sae, "sparsity_name": field, "sparsity": getattr(cfg, field),
            "k": cfg.k, "l1_coeff": cfg.l1_coeff, "l0_coeff": cfg.l0_coeff, "steps": cfg.steps,
            "batch_size": cfg.batch_size, "lr": cfg.lr, "config_id": folder.name, "seeds": seeds,
            "n_seeds": len(seeds), "ev": mean("ev"), "l0": mean("l0"), "dead_fraction": mean("dead_fraction"),
            "data_fingerprint": newest[0], "stale_seeds": sorted(stale), "folder": str(folder),
            "config": cfg.to_dict()}


def scan_grid(artifacts: str | Path, layout: str | None = None, hook: str | None = None) -> pd.DataFrame:
    """Every SAE configuration with at least one finished seed under ``<artifacts>/saes``.

    One row per configuration (columns ``GRID_COLUMNS``): where it lives, its architecture,
    width and sparsity setting (``sparsity`` holds k, the L1 or the L0 coefficient, named by
    ``sparsity_name``), the seeds available and their mean EV / L0 / dead fraction from each
    seed's ``metrics.json``. ``layout`` / ``hook`` restrict the scan. Unfinished seeds (no
    ``metrics.json``) are ignored; unreadable ones are skipped with a warning.

    ``seeds`` are only those trained on the same data (and SAE code) as the configuration's
    newest checkpoint (``data_fingerprint``); seeds trained otherwise are never pooled with
    them: they are listed in ``stale_seeds`` (with a warning) and left out of every number.
    """
    art = Path(artifacts)
    if not art.is_dir():
        raise HusaiError(f"missing artifacts folder: {art}")
    rows = []
    for folder in sorted((art / "saes").glob("*/*/*")):
        lay, hk = folder.parent.parent.name, folder.parent.name
        if not folder.is_dir() or (layout is not None and lay != layout) or (hook is not None and hk != hook):
            continue
        if (row := _scan_config(folder, lay, hk)) is not None:
            rows.append(row)
    grid = pd.DataFrame(rows, columns=GRID_COLUMNS)
    # k is an int and the coefficients are floats: keep each as it is rather than all as floats
    grid["sparsity"] = pd.Series([r["sparsity"] for r in rows], dtype=object)
    if not rows:
        return grid
    numeric = ("d_sae", "sparsity")
    return grid.sort_values(["layout", "hook", "architecture", "d_sae", "sparsity", "config_id"], ignore_index=True,
                            key=lambda c: c.astype(float) if c.name in numeric else c.map(str))


def _sparsity_is(values: pd.Series, value: float) -> np.ndarray:
    if len(values) == 0:
        return np.zeros(0, dtype=bool)
    return np.isclose(values.astype(float).to_numpy(), float(value), rtol=1e-9, atol=0.0)
