"""One configuration's summary (trained vs Gaussian-random PWMCC, CIs, LCB, verdict, EV / L0 /
dead fraction, matched similarities), memoised in-process and cached on disk beside the seeds,
keyed by the seeds' checkpoint content hashes and data fingerprints.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence
import numpy as np
import pandas as pd

from ..errors import HusaiError
from ..experiments import config_id, consistency_summary
from ..io import config_hash, file_sha256, read_json, to_jsonable, write_json
from ..sae import load_sae
from .grid import seed_groups, sparsity_field, training_identity


SUMMARY_FILE = "explorer_summary.json"
SUMMARY_VERSION = 2  # 2: keyed on checkpoint content hashes and data fingerprints
# Hungarian matching is O(d_sae^3) with a dense float64 cost matrix; above this it is skipped.
DEFAULT_MATCH_LIMIT = 4096
_MEMO: dict[str, dict[str, Any]] = {}


# ---------------------------------------------------------------- one configuration's summary

def _fingerprint(folder: Path, seeds: list[int], n_resamples: int, stats_seed: int, alpha: float,
                 match_limit: int | None) -> dict[str, Any]:
    """The key of a persisted summary: settings, and per seed the content hashes of its checkpoint
    and metrics and the fingerprint of its training data, so any retrained seed invalidates it."""
    files, data = {}, {}
    for s in seeds:
        for name in ("sae.safetensors", "metrics.json"):
            path = folder / f"seed{s}" / name
            if not path.is_file():
                raise HusaiError(f"missing SAE checkpoint file {path} (seed {s} of {folder.name} is not finished)")
            files[f"seed{s}/{name}"] = file_sha256(path)
        data[f"seed{s}"] = list(training_identity(read_json(folder / f"seed{s}" / "metrics.json", "SAE metrics")))
    return to_jsonable({"version": SUMMARY_VERSION, "seeds": seeds, "n_resamples": int(n_resamples),
                        "stats_seed": int(stats_seed), "alpha": float(alpha), "match_limit": match_limit,
                        "files": files, "data": data})


def _check_same_training(folder: Path, seeds: list[int]) -> None:
    """A summary never pools seeds trained on different data or code: raise naming them."""
    ids = {}
    for s in seeds:
        path = folder / f"seed{s}" / "metrics.json"
        if not path.is_file():
            raise HusaiError(f"missing SAE checkpoint file {path} (seed {s} of {folder.name} is not finished)")
        ids[s] = training_identity(read_json(path, "SAE metrics"))
    if len(set(ids.values())) > 1:
        by: dict[tuple, list[int]] = {}
        for s, i in ids.items():
            by.setdefault(i, []).append(s)
        detail = "; ".join(f"seeds {ss}: data {i[0]}, code {i[1]}" for i, ss in by.items())
        raise HusaiError(f"seeds of {folder.name} were trained on different data or code ({detail}); "
                         "a consistency summary never pools them: pick seeds of one group or retrain the others")


def _match_dict(m: Any) -> dict[str, Any]:
    return {"mean_similarity": m.mean_similarity, "fraction_above": {str(t): v for t, v in m.fraction_above.items()},
            "similarities": [float(s) for s in m.similarities]}


def _compute_summary(folder: Path, seeds: list[int], n_resamples: int, stats_seed: int, alpha: float,
                     match_limit: int | None) -> dict[str, Any]:
    from ..consistency import hungarian_match, random_baseline

    saes = [load_sae(folder / f"seed{s}") for s in seeds]
    cfg = saes[0].cfg
    decoders = [sae.W_dec.detach().float().cpu() for sae in saes]
    metrics = [read_json(folder / f"seed{s}" / "metrics.json", "SAE metrics") for s in seeds]
    d_sae = decoders[0].shape[0]
    # The same Gaussian baseline consistency_summary would draw; built here so its first pair
    # can also be Hungarian-matched.
    random, random_seeds = random_baseline(decoders, seeds)
    core = consistency_summary(decoders, seeds, n_resamples, stats_seed, alpha, random_decoders=random)
    match = None
    if match_limit is None or d_sae <= match_limit:
        match = {"pair": seeds[:2], "random_pair": random_seeds[:2],
                 "trained": _match_dict(hungarian_match(decoders[0], decoders[1])),
                 "random": _match_dict(hungarian_match(random[0], random[1]))}
    per_seed = {key: [float(m.get(key, math.nan)) for m in metrics] for key in ("ev", "l0", "dead_fraction", "mse")}
    field = sparsity_field(cfg.architecture)
    return to_jsonable({
        "config_id": folder.name, "folder": str(folder), "data_fingerprint": metrics[0].get("data_fingerprint"),
        "architecture": cfg.architecture, "transcoder": cfg.transcoder,
        "d_in": cfg.d_in, "d_sae": cfg.d_sae, "sparsity_name": field, "sparsity": getattr(cfg, field),
        "config": cfg.to_dict(), "seeds": seeds, "random_seeds": random_seeds,
        "trained": core["trained"], "random": core["random"], "ratio": core["ratio"], "difference": core["difference"],
        "lcb": core["lcb"], "permutation_p": core["permutation"]["p_value"], "verdict": core["verdict"]["label"],
        "verdict_explanation": core["verdict"]["explanation"],
        "trained_matrix": core["trained_matrix"], "random_matrix": core["random_matrix"],
        "ev": float(np.nanmean(per_seed["ev"])), "l0": float(np.nanmean(per_seed["l0"])),
        "dead_fraction": float(np.nanmean(per_seed["dead_fraction"])), "per_seed": per_seed,
        "match": match, "match_limit": match_limit, "n_resamples": int(n_resamples), "stats_seed": int(stats_seed),
        "alpha": float(alpha),
    })


def config_summary(folder: str | Path, seeds: Sequence[int] | None = None, n_resamples: int = 10_000,
                   stats_seed: int = 0, alpha: float = 0.05, match_limit: int | None = DEFAULT_MATCH_LIMIT,
                   persist: bool = True) -> dict[str, Any]:
    """Consistency summary of one cached configuration (all finished seeds unless ``seeds`` is given).

    Only seeds trained on the same data and code are summarised together: by default those of
    the newest checkpoint (``seed_groups``); explicit ``seeds`` that mix trainings are an error.
    Trained vs random PWMCC with bootstrap-over-seeds CIs, ratio, LCB, permutation p and verdict
    (``experiments.consistency_summary`` on i.i.d. Gaussian decoders with disjoint seeds), mean
    and per-seed EV / L0 / dead fraction, and the Hungarian-matched |cos| of the first seed pair
    and of the first random pair (skipped when d_sae > ``match_limit``). Memoised in-process;
    with ``persist`` also written to ``<folder>/explorer_summary.json`` and read back while the
    checkpoints and settings are unchanged. Treat the returned dict as read-only.
    """
    folder = Path(folder)
    if seeds is None:
        groups = seed_groups(folder)
        seeds = sorted(groups[0]["seeds"]) if groups else []
        stale = sorted(s for g in groups[1:] for s in g["seeds"])
    else:
        seeds, stale = sorted({int(s) for s in seeds}), []
    if len(seeds) < 2:
        note = f" (seeds {stale} were trained on other data or code and are not pooled)" if stale else ""
        raise HusaiError(f"configuration {folder.name} needs at least 2 finished seeds for a consistency summary; "
                         f"found {seeds} in {folder}{note}")
    _check_same_training(folder, seeds)
    fp = _fingerprint(folder, seeds, n_resamples, stats_seed, alpha, match_limit)
    key = config_hash({"folder": str(folder.resolve()), **fp})
    if key in _MEMO:
        return _MEMO[key]
    summary = None
    path = folder / SUMMARY_FILE
    if persist and path.is_file():
        try:
            stored = read_json(path, "explorer summary")
            if isinstance(stored, dict) and stored.get("fingerprint") == fp:
                summary = {**stored["summary"], "folder": str(folder)}
        except (HusaiError, KeyError, TypeError):
            summary = None  # a damaged cache file is recomputed and overwritten
    if summary is None:
        summary = _compute_summary(folder, seeds, n_resamples, stats_seed, alpha, match_limit)
        if persist:
            write_json(path, {"fingerprint": fp, "summary": summary})
    _MEMO[key] = summary
    return summary


def clear_summary_memo() -> None:
    """Forget the in-process summaries (the JSON files stay)."""
    _MEMO.clear()


def summary_row(summary: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers of a summary as one flat table row."""
    match = summary.get("match") or {}
    return {"config_id": summary["config_id"], "architecture": summary["architecture"], "d_sae": summary["d_sae"],
            "sparsity_name": summary["sparsity_name"], "sparsity": summary["sparsity"], "n_seeds": len(summary["seeds"]),
            "pwmcc": summary["trained"]["mean"], "pwmcc_ci_low": summary["trained"]["ci_low"],
            "pwmcc_ci_high": summary["trained"]["ci_high"], "random": summary["random"]["mean"],
            "random_ci_low": summary["random"]["ci_low"], "random_ci_high": summary["random"]["ci_high"],
            "ratio": summary["ratio"], "difference": summary["difference"], "lcb": summary["lcb"],
            "permutation_p": summary["permutation_p"], "verdict": summary["verdict"], "ev": summary["ev"],
            "l0": summary["l0"], "dead_fraction": summary["dead_fraction"],
            "matched_trained": match.get("trained", {}).get("mean_similarity", math.nan),
            "matched_random": match.get("random", {}).get("mean_similarity", math.nan)}


def summarise_grid(grid: pd.DataFrame, n_resamples: int = 10_000, stats_seed: int = 0, alpha: float = 0.05,
                   match_limit: int | None = DEFAULT_MATCH_LIMIT, persist: bool = True) -> pd.DataFrame:
    """One summary row per grid configuration with at least 2 seeds (others cannot be compared).

    ``permutation_p_holm`` is the seed-level permutation p Holm-adjusted over every row, the
    p-value to quote for a configuration picked as the best of the table.
    """
    rows = []
    for _, g in grid[grid.n_seeds >= 2].iterrows():
        s = config_summary(g.folder, g.seeds, n_resamples, stats_seed, alpha, match_limit, persist)
        rows.append({"layout": g.layout, "hook": g.hook, "transcoder": g.transcoder, **summary_row(s),
                     "steps": g.steps, "batch_size": g.batch_size, "lr": g.lr, "seeds": g.seeds,
                     "data_fingerprint": g.data_fingerprint})
    table = pd.DataFrame(rows)
    if rows:
        from ..stats import holm

        table["sparsity"] = table["sparsity"].astype(object)
        # picking a winner among many configurations is a multiple comparison: Holm over the table
        table.insert(table.columns.get_loc("permutation_p") + 1, "permutation_p_holm",
                     holm(table.permutation_p.astype(float).tolist(), alpha).adjusted)
    return table


def best_configuration(table: pd.DataFrame, by: str = "lcb") -> dict[str, Any] | None:
    """The row of ``summarise_grid`` with the largest ``by`` (default the conservative LCB)."""
    if table.empty:
        return None
    return table.loc[table[by].astype(float).idxmax()].to_dict()
