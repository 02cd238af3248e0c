"""The explorer (DESIGN §7 item 12): browse the cached grid of SAE configurations live.

Every phase that trains SAEs (03, 04, the sweeps of 05 through ``train_point``) saves them in
``<artifacts>/saes/<layout>/<hook>/<config_id>/seed<N>/``, so that folder tree *is* the
cached sweep grid. This module

- scans the tree into a tidy table, one row per configuration (:func:`scan_grid`). Seeds are
  never pooled across training data: each seed's ``metrics.json`` records the fingerprint of
  the rows it was trained on (and its key the SAE code version), and a configuration shows
  only the seeds trained like its newest checkpoint; seeds trained on other (older) data or
  code are left out with a warning, listed as ``stale_seeds``, and Train retrains them;
- summarises one configuration: trained vs Gaussian-random PWMCC with seed-level CIs, ratio,
  LCB, verdict, mean EV / L0 / dead fraction, and the Hungarian-matched similarities of one
  seed pair (:func:`config_summary`). Summaries are memoised in-process and persisted as
  ``explorer_summary.json`` beside the seeds, keyed by the content hashes of the seeds'
  checkpoint and metrics files and their data fingerprints, so a retrained seed invalidates them;
- drives an ipywidgets UI (:class:`Explorer`): architecture / d_sae / k sliders over the grid,
  train-on-demand for a point that is not cached, and a plotly ``FigureWidget``.

The widget callbacks are plain methods and the explorer keeps the ``state`` and ``summary`` it
last rendered, so tests drive it without a browser: set ``explorer.k.value`` (or call
``explorer.train_button.click()``) and read ``explorer.state`` / ``explorer.figure``.
"""

from __future__ import annotations

import contextlib
import html
import math
import re
import warnings
from pathlib import Path
from typing import Any, Iterator, Sequence

import ipywidgets as W
import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .errors import HusaiError
from .experiments import SAE_FIELDS, config_id, consistency_summary, sae_config, sae_dir, train_or_load_saes
from .io import config_hash, file_sha256, read_json, to_jsonable, write_json
from .sae import SAEConfig, load_sae
from .sae.config import ALIASES, ARCHITECTURES, TOPK_FAMILY

SUMMARY_FILE = "explorer_summary.json"
SUMMARY_VERSION = 2  # 2: keyed on checkpoint content hashes and data fingerprints
# Values offered on the sliders when train-on-demand is on, besides those in the grid.
DEFAULT_K = (1, 2, 4, 8, 16, 32, 64, 128, 256)
DEFAULT_D_SAE = (32, 64, 128, 256, 512, 1024, 2048, 4096)
DEFAULT_COEFFS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2)
# Hungarian matching is O(d_sae^3) with a dense float64 cost matrix; above this it is skipped.
DEFAULT_MATCH_LIMIT = 4096
GRID_COLUMNS = ["layout", "hook", "architecture", "transcoder", "d_in", "d_sae", "sparsity_name", "sparsity", "k",
                "l1_coeff", "l0_coeff", "steps", "batch_size", "lr", "config_id", "seeds", "n_seeds", "ev", "l0",
                "dead_fraction", "data_fingerprint", "stale_seeds", "folder", "config"]
NOT_CACHED = "not cached — press Train"
TRAINED_COLOUR, RANDOM_COLOUR = "#1f77b4", "#d62728"

_NO_OPTIONS = [("—", 0)]  # a SelectionSlider cannot be empty: this placeholder is shown disabled
_SEED_DIR = re.compile(r"seed(\d+)")
_MEMO: dict[str, dict[str, Any]] = {}


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
    from .consistency import disjoint_seeds, gaussian_decoders, hungarian_match

    saes = [load_sae(folder / f"seed{s}") for s in seeds]
    cfg = saes[0].cfg
    decoders = [sae.W_dec.detach().float().cpu() for sae in saes]
    metrics = [read_json(folder / f"seed{s}" / "metrics.json", "SAE metrics") for s in seeds]
    d_sae, d_out = decoders[0].shape
    # The same Gaussian baseline consistency_summary would draw; built here so its first pair
    # can also be Hungarian-matched.
    random_seeds = disjoint_seeds(seeds, len(seeds))
    random = gaussian_decoders(len(seeds), d_sae, d_out, random_seeds, trained_seeds=seeds)
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
        from .stats import holm

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


def _x_value(row: pd.Series) -> float:
    # TopK family: k itself; L1/L0-penalised SAEs have no k, so their measured L0 stands in.
    return float(row.sparsity) if row.sparsity_name == "k" else float(row.l0)


def overview_figure(table: pd.DataFrame, title: str = "Cached grid: trained / random PWMCC") -> go.Figure:
    """Static overview of ``summarise_grid``: ratio vs k (per architecture and d_sae) and vs d_sae."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=(
        "ratio vs k (ReLU / JumpReLU: vs measured L0)", "ratio vs d_sae"), horizontal_spacing=0.1)
    if table.empty:
        fig.add_annotation(text="no configuration with ≥ 2 seeds cached", showarrow=False, x=0.5, y=0.5,
                           xref="paper", yref="paper")
    else:
        t = table.assign(x=table.apply(_x_value, axis=1))
        hover = "%{text}<br>ratio %{y:.3f}<extra></extra>"
        for (arch, d), g in t.groupby(["architecture", "d_sae"], sort=True):
            g = g.sort_values("x")
            fig.add_scatter(x=g.x, y=g.ratio, mode="lines+markers", name=f"{arch} d_sae {d}", legendgroup="k",
                            text=[f"{c}<br>L0 {l0:.1f}, EV {ev:.3f}, LCB {lcb:+.3f}" for c, l0, ev, lcb in
                                  zip(g.config_id, g.l0, g.ev, g.lcb)], hovertemplate=hover, row=1, col=1)
        for (arch, name, s), g in t.groupby(["architecture", "sparsity_name", t.sparsity.map(str)], sort=True):
            g = g.sort_values("d_sae")
            fig.add_scatter(x=g.d_sae, y=g.ratio, mode="lines+markers", name=f"{arch} {name} {s}", legendgroup="d",
                            marker_symbol="diamond",
                            text=[f"{c}<br>L0 {l0:.1f}, EV {ev:.3f}, LCB {lcb:+.3f}" for c, l0, ev, lcb in
                                  zip(g.config_id, g.l0, g.ev, g.lcb)], hovertemplate=hover, row=1, col=2)
        fig.add_hline(y=1.0, line_dash="dash", line_color="grey")
    fig.update_xaxes(type="log", title_text="k (active latents per row)", row=1, col=1)
    fig.update_xaxes(type="log", title_text="d_sae", row=1, col=2)
    fig.update_yaxes(title_text="PWMCC trained / random", row=1, col=1)
    fig.update_layout(title=title, height=420)
    return fig


# ---------------------------------------------------------------- the widget explorer

def _label(value: Any) -> str:
    return str(value) if isinstance(value, (int, np.integer)) else f"{float(value):g}"


def _fmt(x: float, digits: int = 4) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


class Explorer:
    """Widgets over the cached grid of one (layout, hook): pick architecture, d_sae and k.

    ``architecture`` (Dropdown), ``d_sae`` and ``k`` (SelectionSliders; ``k`` is the L1/L0
    coefficient for ReLU/JumpReLU), ``variant`` (Dropdown of the cached configurations at that
    point, which may differ in other settings), ``seeds`` (Text: the seeds Train trains),
    ``train_button``, ``train_progress`` (IntProgress, one step per seed) and ``status`` (Label),
    a ``summary_html`` table and ``figure`` (FigureWidget: PWMCC trained vs random with CIs,
    per-seed EV and L0, matched-similarity histograms). ``widget`` is the whole box.

    Sliders offer the values present in the grid for the architecture; with
    ``train_on_demand`` also ``k_values`` / ``d_sae_values`` / ``coeff_values``, and a point
    with fewer than 2 seeds shows "not cached — press Train". Training uses ``train_params``
    (SAEConfig fields such as steps, batch_size, lr) plus the point, on the cached activations
    of (layout, hook). ``state`` and ``summary`` hold what was rendered last.

    ``live=False`` keeps ``figure`` a plain ``go.Figure`` (updated the same way, not part of
    ``widget``): for batch runs, where nobody interacts and a FigureWidget's saved widget state
    (the whole plotly.js bundle, ~5 MB) would only bloat the executed notebook and its report.
    """

    def __init__(self, artifacts: str | Path, layout: str = "default", hook: str = "blocks.0.hook_resid_post",
                 seeds: Sequence[int] = (42, 123, 456, 789, 1011), train_params: dict[str, Any] | None = None,
                 train_on_demand: bool = True, k_values: Sequence[int] = DEFAULT_K,
                 d_sae_values: Sequence[int] = DEFAULT_D_SAE, coeff_values: Sequence[float] = DEFAULT_COEFFS,
                 n_resamples: int = 10_000, stats_seed: int = 0, alpha: float = 0.05,
                 match_limit: int | None = DEFAULT_MATCH_LIMIT, persist: bool = True, device: str = "auto",
                 progress: bool = False, architecture: str | None = None, d_sae: int | None = None,
                 k: float | None = None, live: bool = True):
        self.artifacts, self.layout, self.hook = Path(artifacts), layout, hook
        self.train_params = dict(train_params or {})
        unknown = sorted(set(self.train_params) - SAE_FIELDS)
        if unknown:
            raise HusaiError(f"unknown SAE parameter(s) in train_params: {', '.join(unknown)}")
        self.train_on_demand = bool(train_on_demand)
        self.k_values, self.d_sae_values = [int(v) for v in k_values], [int(v) for v in d_sae_values]
        self.coeff_values = [float(v) for v in coeff_values]
        self.stats = {"n_resamples": int(n_resamples), "stats_seed": int(stats_seed), "alpha": float(alpha),
                      "match_limit": match_limit, "persist": bool(persist)}
        self.device, self.progress = device, progress
        self.state: dict[str, Any] = {}
        self.summary: dict[str, Any] | None = None
        self._holding = 0
        self._x = None
        self._point_error: str | None = None
        self._variant_cfgs: dict[str, SAEConfig] = {}
        self.grid = self._scan()

        self.architecture = W.Dropdown(description="architecture")
        self.d_sae = W.SelectionSlider(options=_NO_OPTIONS, disabled=True, description="d_sae", continuous_update=False)
        self.k = W.SelectionSlider(options=_NO_OPTIONS, disabled=True, description="k", continuous_update=False)
        self.variant = W.Dropdown(description="config", layout=W.Layout(width="60%"))
        self.seeds = W.Text(value=", ".join(str(int(s)) for s in seeds), description="train seeds")
        self.train_button = W.Button(description="Train", icon="play", button_style="primary",
                                     tooltip="train the missing seeds of this point")
        self.train_progress = W.IntProgress(value=0, min=0, max=max(1, len(seeds)), description="trained")
        self.status = W.Label()
        self.summary_html = W.HTML()
        self.figure = self._build_figure(live)
        self.widget = W.VBox([W.HBox([self.architecture, self.variant]), W.HBox([self.d_sae, self.k]),
                              W.HBox([self.seeds, self.train_button, self.train_progress, self.status]),
                              self.summary_html] + ([self.figure] if live else []))

        self.architecture.observe(self._on_architecture, names="value")
        self.d_sae.observe(self._on_point, names="value")
        self.k.observe(self._on_point, names="value")
        self.variant.observe(self._on_refresh, names="value")
        self.seeds.observe(self._on_refresh, names="value")
        self.train_button.on_click(self.on_train)

        with self._hold():
            self._update_architectures()
        if architecture is None:
            architecture, d_sae, k = self._default_point()
        self.select(architecture, d_sae, k, strict=False)

    def _repr_mimebundle_(self, **kwargs: Any):
        return self.widget._repr_mimebundle_(**kwargs)

    # ------------------------------------------------------------ grid and options
    def _scan(self) -> pd.DataFrame:
        grid = scan_grid(self.artifacts, self.layout, self.hook)
        return grid[~grid.transcoder.astype(bool)].reset_index(drop=True)

    def refresh_grid(self) -> pd.DataFrame:
        """Rescan the artifacts (e.g. after another phase trained more points) and refresh the view."""
        self.grid = self._scan()
        with self._hold():
            self._update_architectures()
            self._update_sliders(*self._point()[1:])
            self._update_variants(self.variant.value)
        self.refresh()
        return self.grid

    @contextlib.contextmanager
    def _hold(self) -> Iterator[None]:
        """Widget updates made inside do not trigger observers (one refresh at the end instead)."""
        self._holding += 1
        try:
            yield
        finally:
            self._holding -= 1

    def _comparable(self) -> pd.DataFrame:
        return self.grid[self.grid.n_seeds >= 2]

    def _default_point(self) -> tuple[str | None, int | None, float | None]:
        g = self._comparable()
        g = g if not g.empty else self.grid
        if g.empty:
            arch = self.train_params.get("architecture", "topk") if self.train_on_demand else None
            return arch, self.train_params.get("d_sae"), self.train_params.get(sparsity_field(arch)) if arch else None
        # the most seeds; among equals the project's default architecture (TopK), then grid order
        order = g.assign(_topk=g.architecture != "topk").sort_values(["n_seeds", "_topk"], ascending=[False, True],
                                                                        kind="stable")
        row = order.iloc[0]
        return row.architecture, int(row.d_sae), row.sparsity

    def _update_architectures(self) -> None:
        archs = [a for a in ARCHITECTURES if self.train_on_demand or a in set(self.grid.architecture)]
        current = self.architecture.value
        self.architecture.options = archs
        self.architecture.value = current if current in archs else (archs[0] if archs else None)

    def _options(self, arch: str) -> tuple[list[int], list[Any]]:
        rows = self.grid[self.grid.architecture == arch]
        field = sparsity_field(arch)
        ds = {int(d) for d in rows.d_sae}
        ss = {int(s) if field == "k" else float(s) for s in rows.sparsity}
        if self.train_on_demand:
            ds |= set(self.d_sae_values)
            ss |= set(self.k_values) if field == "k" else set(self.coeff_values)
        return sorted(ds), sorted(ss)

    @staticmethod
    def _set_options(slider: W.SelectionSlider, values: list[Any], value: Any) -> None:
        slider.options = [(_label(v), v) for v in values] or _NO_OPTIONS
        slider.disabled = not values
        slider.value = value if values else _NO_OPTIONS[0][1]

    def _update_sliders(self, prefer_d: Any = None, prefer_s: Any = None, strict: bool = False) -> None:
        """Set the sliders' options for the chosen architecture and pick a point.

        Preference: the requested (d_sae, k) when on offer (``strict``: else an error); then a
        cached point of this architecture with that d_sae; then any cached point of it.
        """
        arch = self.architecture.value
        if arch is None:
            self._set_options(self.d_sae, [], None)
            self._set_options(self.k, [], None)
            return
        field = sparsity_field(arch)
        ds, ss = self._options(arch)
        if strict:
            for name, want, have in (("d_sae", prefer_d, ds), (field, prefer_s, ss)):
                if want is not None and not any(np.isclose(float(want), float(h), rtol=1e-9, atol=0) for h in have):
                    raise HusaiError(f"{name}={want} is not in the cached grid of {arch} at {self.layout}/{self.hook} "
                                     f"(available: {', '.join(map(_label, have)) or 'none'}); enable train-on-demand "
                                     "or train it with train_point")
        cached = self._comparable()
        cached = cached[cached.architecture == arch]
        d = next((v for v in ds if prefer_d is not None and v == int(prefer_d)), None)
        if d is None and not cached.empty:
            d = int(cached.d_sae.iloc[0])
        elif d is None and ds:
            d = min(ds, key=lambda v: abs(math.log(v / int(self.train_params.get("d_sae", 1024)))))
        s = next((v for v in ss if prefer_s is not None and np.isclose(float(v), float(prefer_s), rtol=1e-9, atol=0)), None)
        if s is None:
            here = cached[cached.d_sae == d]
            pool = here if not here.empty else cached
            if not pool.empty:
                s = int(pool.sparsity.iloc[0]) if field == "k" else float(pool.sparsity.iloc[0])
            else:
                fallback = self.train_params.get(field, 32 if field == "k" else 1e-3)
                s = min(ss, key=lambda v: abs(math.log(float(v) / float(fallback)))) if ss else None
        self._set_options(self.d_sae, ds, d)
        self._set_options(self.k, ss, s)
        self.k.description = {"k": "k", "l1_coeff": "L1 coeff", "l0_coeff": "L0 coeff"}[field]

    def _point(self) -> tuple[str | None, int | None, Any]:
        """(architecture, d_sae, sparsity); a disabled (empty) slider reads as None."""
        return (self.architecture.value, None if self.d_sae.disabled else self.d_sae.value,
                None if self.k.disabled else self.k.value)

    def _d_in(self) -> int:
        if not self.grid.empty:
            return int(self.grid.d_in.iloc[0])
        return int(self._activations().shape[1])

    def _activations(self):
        if self._x is None:
            from .activations import load_cache

            self._x = load_cache(self.artifacts / "activations" / self.layout).get(self.hook)
        return self._x

    def _config_for(self, arch: str, d_sae: int, sparsity: Any) -> SAEConfig:
        """The configuration Train builds for a point: ``train_params`` + the point."""
        field = sparsity_field(arch)
        value = int(sparsity) if field == "k" else float(sparsity)
        return sae_config(self._d_in(), {**self.train_params, "architecture": arch, "d_sae": int(d_sae), field: value})

    def _update_variants(self, prefer: str | None = None) -> None:
        """Cached configurations at the current point (plus the on-demand one), best first."""
        arch, d, s = self._point()
        self._variant_cfgs, self._point_error = {}, None
        options: list[tuple[str, str]] = []
        if arch is not None and d is not None and s is not None:
            g = self.grid
            rows = g[(g.architecture == arch) & (g.d_sae == d) & _sparsity_is(g.sparsity, s)]
            rows = rows.sort_values("n_seeds", ascending=False, kind="stable")
            for _, r in rows.iterrows():
                self._variant_cfgs[r.config_id] = SAEConfig.from_dict(r.config)
                options.append((f"{r.config_id} · {r.n_seeds} seed(s) · steps {r.steps}, batch {r.batch_size}, "
                                f"lr {r.lr:g}", r.config_id))
            try:
                cfg = self._config_for(arch, d, s)
                own = config_id(cfg)
                if own not in self._variant_cfgs:
                    self._variant_cfgs[own] = cfg
                    if self.train_on_demand:
                        options.append((f"{own} · not trained (current training settings)", own))
            except HusaiError as exc:
                own = None
                self._point_error = str(exc)
            ids = [o[1] for o in options]
            complete = [i for i in ids if i in set(rows.config_id[rows.n_seeds >= 2])]
            if prefer in ids:
                choice = prefer
            elif own in complete:
                choice = own
            else:
                choice = complete[0] if complete else (ids[0] if ids else None)
        else:
            choice = None
        self.variant.options = options
        self.variant.value = choice

    # ------------------------------------------------------------ callbacks
    def _keep_sparsity(self, old_arch: str | None, new_arch: str | None) -> Any:
        """The current k/coefficient if it means the same thing for the new architecture, else None."""
        same = old_arch and new_arch and sparsity_field(old_arch) == sparsity_field(new_arch)
        return self._point()[2] if same else None

    def _on_architecture(self, change: dict) -> None:
        if self._holding:
            return
        with self._hold():
            self._update_sliders(self._point()[1], self._keep_sparsity(change["old"], change["new"]))
            self._update_variants()
        self.refresh()

    def _on_point(self, change: dict) -> None:
        if self._holding:
            return
        with self._hold():
            self._update_variants()
        self.refresh()

    def _on_refresh(self, change: dict) -> None:
        if not self._holding:
            self.refresh()

    def train_seeds(self) -> list[int]:
        """The seeds in the ``seeds`` box (a malformed list is a HusaiError)."""
        from .runner import parse_seeds

        return parse_seeds(self.seeds.value)

    def select(self, architecture: str | None = None, d_sae: int | None = None, k: Any = None,
               config: str | None = None, strict: bool = True) -> dict[str, Any]:
        """Move to a point and render it once; parts left out keep their value or pick a cached one.

        ``strict``: a d_sae / k that the sliders do not offer is an error (else it is replaced).
        """
        with self._hold():
            old = self.architecture.value
            if architecture is not None:
                arch = ALIASES.get(str(architecture).lower(), str(architecture).lower())
                if arch not in self.architecture.options:
                    if strict:
                        raise HusaiError(f"architecture {architecture!r} is not in the cached grid at {self.layout}/"
                                         f"{self.hook} (available: {', '.join(self.architecture.options) or 'none'})")
                    arch = self.architecture.value  # keep what is on offer
                self.architecture.value = arch
            keep = self._keep_sparsity(old, self.architecture.value)
            self._update_sliders(d_sae if d_sae is not None else self._point()[1], k if k is not None else keep,
                                 strict=strict and (d_sae is not None or k is not None))
            self._update_variants(config)
        return self.refresh()

    def refresh(self) -> dict[str, Any]:
        """Render the current point: its summary when cached, else the not-cached state."""
        arch, d, s = self._point()
        cid = self.variant.value
        state: dict[str, Any] = {"architecture": arch, "d_sae": d, "sparsity_name": sparsity_field(arch) if arch else None,
                                 "sparsity": s, "config_id": cid, "seeds_cached": [], "seeds_missing": [],
                                 "stale_seeds": [], "data_fingerprint": None, "folder": None}
        try:
            wanted = self.train_seeds()
            seeds_error = None
        except HusaiError as exc:
            wanted, seeds_error = [], str(exc)
        if arch is None:
            state.update(status="empty", message=f"no cached SAE configurations at {self.layout}/{self.hook} "
                                                  "(train-on-demand is off)")
        elif cid is None:
            state.update(status="invalid" if self._point_error else "not cached",
                         message=self._point_error or self._not_cached_message())
        else:
            row = self.grid[self.grid.config_id == cid]
            cached = list(row.seeds.iloc[0]) if not row.empty else []
            folder = Path(row.folder.iloc[0]) if not row.empty else sae_dir(self.artifacts, self.layout, self.hook,
                                                                           self._variant_cfgs[cid])
            state.update(seeds_cached=cached, seeds_missing=[x for x in wanted if x not in cached], folder=str(folder),
                         stale_seeds=list(row.stale_seeds.iloc[0]) if not row.empty else [],
                         data_fingerprint=row.data_fingerprint.iloc[0] if not row.empty else None)
            if len(cached) >= 2:
                self.status.value = f"computing the summary of {cid} …"  # seconds for a large uncached one
                try:
                    summary = config_summary(folder, cached, **self.stats)
                    state.update(status="cached", message=f"{cid}: {len(cached)} seeds, {summary['verdict']}")
                    self.summary = summary
                    self._render(summary)
                except HusaiError as exc:
                    state.update(status="error", message=str(exc))
            else:
                note = f" ({len(cached)} seed cached)" if cached else ""
                state.update(status="not cached", message=self._not_cached_message() + note)
        if state["status"] != "cached":
            self.summary = None
            self._render_empty(state["message"])
        can_train = (self.train_on_demand and state["status"] in ("cached", "not cached") and cid is not None
                     and bool(state["seeds_missing"]) and seeds_error is None)
        self.train_button.disabled = not can_train
        self.status.value = seeds_error or state["message"]
        state["train_enabled"] = can_train
        self.state = state
        return state

    def _not_cached_message(self) -> str:
        return NOT_CACHED if self.train_on_demand else "not cached — train-on-demand is off (run phase 03/05 for it)"

    def on_train(self, button: Any = None) -> dict[str, Any]:
        """The Train button: train the missing seeds of the selected point, then show it."""
        if not self.train_on_demand:
            self.status.value = "train-on-demand is off"
            return self.state
        cid = self.variant.value
        if cid is None or cid not in self._variant_cfgs:
            self.status.value = self.state.get("message", "nothing to train here")
            return self.state
        try:
            self._train(self._variant_cfgs[cid], self.train_seeds())
        except HusaiError as exc:  # shown in the UI: a click handler's exception would vanish
            self.status.value = f"training failed: {exc}"
            self.state = {**self.state, "status": "error", "message": str(exc)}
            return self.state
        return self.state

    def train_point(self, architecture: str | None = None, d_sae: int | None = None, k: Any = None,
                    seeds: Sequence[int] | None = None) -> dict[str, Any] | None:
        """Train (or load) a point with ``train_params`` for ``seeds`` (default: the seeds box), then show it.

        Programmatic twin of the Train button (works even with train-on-demand off); errors raise.
        Returns the summary rendered (None if fewer than 2 seeds exist).
        """
        arch = ALIASES.get(str(architecture).lower(), str(architecture).lower()) if architecture else self.architecture.value
        if arch is None:
            raise HusaiError("train_point needs an architecture")
        field = sparsity_field(arch)
        here = self._point()
        d = d_sae if d_sae is not None else here[1]
        s = k if k is not None else (here[2] if arch == here[0] else self.train_params.get(field))
        if d is None or s is None:
            raise HusaiError(f"train_point needs d_sae and {field} (got d_sae={d}, {field}={s})")
        cfg = self._config_for(arch, d, s)
        self._train(cfg, [int(x) for x in seeds] if seeds is not None else self.train_seeds())
        return self.summary

    def _train(self, cfg: SAEConfig, seeds: list[int]) -> None:
        folder = sae_dir(self.artifacts, self.layout, self.hook, cfg)
        # done: the seeds the grid shows (trained like the newest checkpoint); a seed trained on
        # other data is retrained (train_or_load_saes reuses a seed only for the same data)
        row = self.grid[self.grid.config_id == config_id(cfg)]
        done = set(row.seeds.iloc[0]) if not row.empty else set()
        todo = [s for s in seeds if s not in done]
        self.train_progress.max, self.train_progress.value = max(1, len(todo)), 0
        if todo:
            x = self._activations()
            for i, seed in enumerate(todo):
                self.status.value = f"training seed {seed} ({i + 1}/{len(todo)}) of {config_id(cfg)} …"
                train_or_load_saes(folder, cfg, x, [seed], progress=self.progress, device=self.device)
                self.train_progress.value = i + 1
        self.grid = self._scan()
        field = sparsity_field(cfg.architecture)
        with self._hold():
            self._update_architectures()
            self.architecture.value = cfg.architecture
            self._update_sliders(cfg.d_sae, getattr(cfg, field))
            self._update_variants(config_id(cfg))
        self.refresh()

    # ------------------------------------------------------------ rendering
    @staticmethod
    def _build_figure(live: bool) -> go.FigureWidget | go.Figure:
        fig = make_subplots(rows=2, cols=3, specs=[[{}, {}, {}], [{"colspan": 3}, None, None]],
                            subplot_titles=("PWMCC (95% CI over seeds)", "explained variance", "L0",
                                            "Hungarian-matched |cos| of one seed pair"),
                            vertical_spacing=0.16, horizontal_spacing=0.08)
        fig.add_bar(name="trained PWMCC", x=[], y=[], marker_color=TRAINED_COLOUR, row=1, col=1)
        fig.add_bar(name="random PWMCC", x=[], y=[], marker_color=RANDOM_COLOUR, row=1, col=1)
        fig.add_bar(name="EV", x=[], y=[], marker_color="#2ca02c", showlegend=False, row=1, col=2)
        fig.add_bar(name="L0", x=[], y=[], marker_color="#9467bd", showlegend=False, row=1, col=3)
        for name, colour in (("trained matched |cos|", TRAINED_COLOUR), ("random matched |cos|", RANDOM_COLOUR)):
            fig.add_histogram(name=name, x=[], marker_color=colour, opacity=0.6, histnorm="probability",
                              xbins=dict(start=0, end=1.0, size=0.02), row=2, col=1)
        fig.update_xaxes(range=[0, 1], title_text="|cos| of matched features", row=2, col=1)
        fig.update_yaxes(title_text="share of features", row=2, col=1)
        fig.update_layout(barmode="overlay", height=640, title="", legend=dict(orientation="h", y=-0.12))
        return go.FigureWidget(fig) if live else fig

    def trace(self, name: str):
        """A figure trace by name (e.g. ``"trained PWMCC"``, ``"EV"``, ``"random matched |cos|"``)."""
        for t in self.figure.data:
            if t.name == name:
                return t
        raise HusaiError(f"no trace named {name!r}; traces: {[t.name for t in self.figure.data]}")

    def _render(self, s: dict[str, Any]) -> None:
        labels = [f"seed {x}" for x in s["seeds"]]
        match = s.get("match")
        with self.figure.batch_update():
            for name, key in (("trained PWMCC", "trained"), ("random PWMCC", "random")):
                b, t = s[key], self.trace(name)
                t.x, t.y = [key], [b["mean"]]
                t.error_y = dict(type="data", symmetric=False, array=[b["ci_high"] - b["mean"]],
                                 arrayminus=[b["mean"] - b["ci_low"]], visible=True)
            ev, l0 = self.trace("EV"), self.trace("L0")
            ev.x, ev.y = labels, s["per_seed"]["ev"]
            l0.x, l0.y = labels, s["per_seed"]["l0"]
            self.trace("trained matched |cos|").x = match["trained"]["similarities"] if match else []
            self.trace("random matched |cos|").x = match["random"]["similarities"] if match else []
            if s["sparsity_name"] == "k":  # the target L0 of the TopK family, dashed across the L0 panel
                self.figure.layout.shapes = [dict(type="line", xref=f"{l0.xaxis} domain", yref=l0.yaxis, x0=0, x1=1,
                                                  y0=s["sparsity"], y1=s["sparsity"],
                                                  line=dict(dash="dash", color="grey"))]
            else:
                self.figure.layout.shapes = ()
            pair = (f"seeds {match['pair'][0]} vs {match['pair'][1]} (random: {match['random_pair'][0]} vs "
                    f"{match['random_pair'][1]})") if match else f"skipped: d_sae > {s.get('match_limit')}"
            self.figure.layout.annotations[3].text = f"Hungarian-matched |cos|, {pair}"
            self.figure.layout.title.text = (f"{s['config_id']} · {len(s['seeds'])} seeds · ratio {s['ratio']:.3f} · "
                                             f"{s['verdict']}")
        self.summary_html.value = self._summary_table(s)

    def _render_empty(self, message: str) -> None:
        with self.figure.batch_update():
            for t in self.figure.data:
                t.x = []
                if t.type == "bar":
                    t.y = []
                    t.error_y = dict(array=[], arrayminus=[], visible=False)
            self.figure.layout.shapes = ()
            self.figure.layout.title.text = message
        self.summary_html.value = f"<p><b>{html.escape(message)}</b></p>"

    @staticmethod
    def _summary_table(s: dict[str, Any]) -> str:
        t, r, match = s["trained"], s["random"], s.get("match") or {}
        rows = [
            ("configuration", s["config_id"]),
            ("seeds", ", ".join(map(str, s["seeds"]))),
            ("trained PWMCC [95% CI]", f"{_fmt(t['mean'])} [{_fmt(t['ci_low'])}, {_fmt(t['ci_high'])}]"),
            ("random PWMCC [95% CI]", f"{_fmt(r['mean'])} [{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}]"),
            ("ratio trained / random", _fmt(s["ratio"], 3)),
            ("LCB = trained CI low − random CI high", f"{s['lcb']:+.4f}"),
            ("seed-level permutation p", f"{s['permutation_p']:.3g}"),
            ("verdict", s["verdict"]),
            ("mean EV · L0 · dead fraction", f"{_fmt(s['ev'], 3)} · {_fmt(s['l0'], 2)} · {_fmt(s['dead_fraction'], 3)}"),
            ("mean matched |cos| trained · random",
             f"{_fmt(match.get('trained', {}).get('mean_similarity', math.nan), 3)} · "
             f"{_fmt(match.get('random', {}).get('mean_similarity', math.nan), 3)}"),
        ]
        body = "".join(f"<tr><th style='text-align:left;padding-right:1em'>{html.escape(k)}</th>"
                       f"<td>{html.escape(str(v))}</td></tr>" for k, v in rows)
        return f"<table>{body}</table>"
