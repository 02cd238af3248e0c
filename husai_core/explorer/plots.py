"""Figures of the explorer: the overview of the whole grid and the widget's live figure and table."""

from __future__ import annotations

import html
import math
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..errors import HusaiError
from .summary import summarise_grid


TRAINED_COLOUR, RANDOM_COLOUR = "#1f77b4", "#d62728"


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


# ---------------------------------------------------------------- the widget's figure and table

def _label(value: Any) -> str:
    return str(value) if isinstance(value, (int, np.integer)) else f"{float(value):g}"


def _fmt(x: float, digits: int = 4) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


class FigureView:
    """The explorer's live figure and summary table (a mixin of :class:`~.widget.Explorer`, which owns
    ``figure``, ``figure_view`` and ``summary_html``).

    ``figure`` is a plain ``go.Figure``; live, ``figure_view`` (an ``Output`` widget) shows it and is
    redrawn whole (a few kB) on every change. Not a plotly ``FigureWidget``: in JupyterLab its view
    can draw before its model holds the figure and then stays empty (seen in tests/test_lab_browser.py).
    """

    @staticmethod
    def _build_figure() -> go.Figure:
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
        return fig

    def _show(self) -> None:
        """Redraw ``figure`` in ``figure_view`` (live only, and only in a kernel: tests drive the widgets without one)."""
        from IPython import get_ipython
        from IPython.display import clear_output, display

        if self.figure_view is None or get_ipython() is None:
            return
        with self.figure_view:
            clear_output(wait=True)
            display(self.figure)

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
        self._show()

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
        self._show()

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
