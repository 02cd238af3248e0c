"""The ipywidgets explorer: architecture / d_sae / k sliders over the cached grid, a plotly
figure and a summary table; train-on-demand comes from :mod:`.training`.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Any, Iterator, Sequence

import ipywidgets as W
import numpy as np
import pandas as pd
import plotly.graph_objects as go

from ..errors import HusaiError
from ..experiments import SAE_FIELDS, config_id, sae_dir
from ..sae import SAEConfig
from ..sae.config import ALIASES, ARCHITECTURES
from .grid import _sparsity_is, scan_grid, sparsity_field
from .plots import FigureView, _label
from .summary import DEFAULT_MATCH_LIMIT, config_summary
from .training import TrainOnDemand


# Values offered on the sliders when train-on-demand is on, besides those in the grid.
DEFAULT_K = (1, 2, 4, 8, 16, 32, 64, 128, 256)
DEFAULT_D_SAE = (32, 64, 128, 256, 512, 1024, 2048, 4096)
DEFAULT_COEFFS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2)

_NO_OPTIONS = [("—", 0)]  # a SelectionSlider cannot be empty: this placeholder is shown disabled


class Explorer(TrainOnDemand, FigureView):
    """Widgets over the cached grid of one (layout, hook): pick architecture, d_sae and k.

    ``architecture`` (Dropdown), ``d_sae`` and ``k`` (SelectionSliders; ``k`` is the L1/L0
    coefficient for ReLU/JumpReLU), ``variant`` (Dropdown of the cached configurations at that
    point, which may differ in other settings), ``seeds`` (Text: the seeds Train trains),
    ``train_button``, ``train_progress`` (IntProgress, one step per seed) and ``status`` (Label),
    a ``summary_html`` table and ``figure`` (a ``go.Figure``: PWMCC trained vs random with CIs,
    per-seed EV and L0, matched-similarity histograms) drawn in ``figure_view`` (an ``Output``).
    ``widget`` is the whole box.

    Sliders offer the values present in the grid for the architecture; with
    ``train_on_demand`` also ``k_values`` / ``d_sae_values`` / ``coeff_values``, and a point
    with fewer than 2 seeds shows "not cached — press Train". Training uses ``train_params``
    (SAEConfig fields such as steps, batch_size, lr) plus the point, on the cached activations
    of (layout, hook). ``state`` and ``summary`` hold what was rendered last.

    ``live=False`` leaves ``figure_view`` out (``None``; ``figure`` is updated the same way): for
    batch runs, where nobody interacts and the report shows ``figure`` statically.
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
        self.figure = self._build_figure()
        self.figure_view = W.Output() if live else None
        self.widget = W.VBox([W.HBox([self.architecture, self.variant]), W.HBox([self.d_sae, self.k]),
                              W.HBox([self.seeds, self.train_button, self.train_progress, self.status]),
                              self.summary_html] + ([self.figure_view] if live else []))

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









