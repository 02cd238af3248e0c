# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Phase 13 — scaling: does consistency grow with data, depth and width, beyond the null?
#
# A **2-layer** transformer is trained on the task the way phase 1 trains its model (same task,
# optimiser and settings; stored apart from phase 1's model as `transformer/<layout>-2layer`), and
# its activations are cached at the answer position at `hook_resid_mid`, `hook_mlp_out` and
# `hook_resid_post` of **both layers**. On each of these sites TopK SAEs are trained over a grid
#
# **token budget** (rows seen = steps × batch) × **d_sae**,
#
# on several seeds, together with the **`gaussian_matched` null** of the same configuration (SAEs
# trained on Gaussian rows with the site's mean and covariance, seeds disjoint from the trained
# ones): consistency by itself mostly measures the data's geometry, so every point is read
# against that null. Consistency is `pwmcc/all` (PWMCC over all latents, the metric family's first
# member), with bootstrap-over-seeds CIs; EV is on held-out rows.
#
# Every (configuration, seed) is one point of a resumable sweep (`husai_core.sweep`): a second run
# trains nothing. The logic lives in `husai_core.phases.scaling`; this notebook plots it.

# %% tags=["parameters"]
profile = "interactive"
run_dir = None
artifacts_dir = None
progress = True
# the transformer: phase 1's task and training settings, with two layers
p = 113
train_frac = 0.3
split_seed = 0
layout = "default"
model_seed = 0
n_layers = 2
d_model = 128
n_heads = 4
d_mlp = 512
model_steps = 10000
model_lr = 1e-3
weight_decay = 1.0
eval_every = 100
position = "answer"
# the grid: hooks x layers x token budgets (rows seen) x d_sae, TopK SAEs
hooks = ["hook_resid_mid", "hook_mlp_out", "hook_resid_post"]
layers = [0, 1]
token_budgets = [65536, 262144, 1048576]
d_sae_grid = [128, 512]
seeds = [42, 123, 456]
architecture = "topk"
k = 32
batch_size = 256
lr = 1e-3
sae_params = {}
null_data_seed = 1
family = True  # also the decoder/encoder metric family (PW-MCC, signed PWMCC, shared latents)
# execution and statistics
sweep_dir = None
workers = None
threads_per_worker = None
scheduler = None
n_resamples = 10000
stats_seed = 0
alpha = 0.05

# %%
import time

import numpy as np
import pandas as pd
from plotly.subplots import make_subplots

from husai_core import trends
from husai_core.phases import scaling
from husai_core.report import headline_figure, record_results
from husai_core.runner import artifacts_dir as resolve_artifacts

art = resolve_artifacts(profile, artifacts_dir)
params = {name: globals()[name] for name in scaling.DEFAULTS}
start = time.perf_counter()
res = scaling.run(params, art, progress=progress)
seconds = time.perf_counter() - start
summary = pd.DataFrame(res["summary"])
tr = res["transformer"]
print(f"2-layer transformer {res['transformer_checkpoint']}: held-out accuracy {tr['heldout_accuracy']:.3f} after {tr['steps']} "
      f"steps; {len(res['points'])} sweep points ({len(summary)} configurations x {len(seeds)} seeds, trained + "
      f"{res['null']}); {seconds:.1f}s for this run; points in {res['sweep_dir']}")

# %% [markdown]
# ## One row per configuration
#
# `pwmcc` with its bootstrap CI; `null*` the `gaussian_matched` null (`null_lcb` = trained CI low −
# null CI high, `null_p` the seed-level permutation p, `p_holm` after Holm across every
# configuration of the phase); `excess` = pwmcc − null; EV, L0, dead fraction: held-out means over
# seeds. `best_in_hook`: the highest LCB among that site's configurations (significant ones first).

# %%
cols = ["hook", "tokens", "d_sae", "pwmcc", "pwmcc_ci_low", "pwmcc_ci_high", "null", "null_ci_high", "excess",
        "null_lcb", "null_p", "p_holm", "null_verdict", "ev", "null_ev", "l0", "dead_fraction", "best_in_hook"]
summary[cols].round(4)

# %% [markdown]
# The rest of the metric family over all latents (`family = True`): signed PWMCC, PW-MCC (Song et
# al. 2025, Hungarian one-to-one) and the shared-latent fraction (Paulo & Belrose 2025), each for
# the trained seeds and the null, with the LCB (trained CI low − null CI high).

# %%
fam = [c for m in scaling.FAMILY for c in (m, f"{m} null", f"{m} lcb") if c in summary]
summary[["hook", "tokens", "d_sae", *fam]].round(4) if fam else print("family = False: not computed")

# %% [markdown]
# ## Consistency against the token budget (log-log)
#
# One panel per site; solid lines are the trained SAEs (error bars: bootstrap CI over seeds),
# dashed the `gaussian_matched` null, one colour per d_sae. The thin lines are the power law fitted
# within the site (log PWMCC on log tokens and log d_sae, one intercept): its exponents are listed
# in the table further down.

# %%
sites = list(dict.fromkeys(summary.hook))
colours = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"]
n_cols = min(3, len(sites))
n_rows = -(-len(sites) // n_cols)


def loglog(x: str, lines: str, ys: tuple[str, ...], title: str, y_title: str):
    fig = make_subplots(rows=n_rows, cols=n_cols, subplot_titles=sites)
    for i, site in enumerate(sites):
        row, col = i // n_cols + 1, i % n_cols + 1
        g = summary[summary.hook == site]
        for j, (value, h) in enumerate(g.groupby(lines)):
            h = h.sort_values(x)
            c = colours[j % len(colours)]
            for y in ys:
                err = (dict(type="data", symmetric=False, array=h.pwmcc_ci_high - h.pwmcc,
                            arrayminus=h.pwmcc - h.pwmcc_ci_low) if y == "pwmcc" else None)
                fig.add_scatter(x=h[x], y=h[y], error_y=err, mode="lines+markers", name=f"{lines} {value}: {y}",
                                line=dict(color=c, dash="dash" if y == "null" else "solid"),
                                legendgroup=f"{value}{y}", showlegend=i == 0, row=row, col=col)
                fit = res["trends"]["by_hook"][y][site]
                if fit["intercepts"] and all(fit["slopes"][v] for v in fit["used"]):
                    grid = np.geomspace(h[x].min(), h[x].max(), 20)
                    fixed = {x: grid, **{v: np.full(20, value) for v in fit["used"] if v != x}}
                    fig.add_scatter(x=grid, y=trends.predict(fit, fixed), mode="lines", showlegend=False,
                                    line=dict(color=c, width=1, dash="dot"), hoverinfo="skip", row=row, col=col)
        fig.update_xaxes(type="log", title_text=x, row=row, col=col)
        fig.update_yaxes(type="log", title_text=y_title if col == 1 else None, row=row, col=col)
    fig.update_layout(title=title, height=330 * n_rows + 80)
    return fig


headline_figure(loglog("tokens", "d_sae", ("pwmcc", "null"),
                       "PWMCC vs token budget: trained (solid) and gaussian_matched (dashed)", "PWMCC"), run_dir).show()

# %% [markdown]
# ## Consistency against width (log-log)
#
# The same points against d_sae, one colour per token budget.

# %%
loglog("d_sae", "tokens", ("pwmcc", "null"), "PWMCC vs d_sae: trained (solid) and gaussian_matched (dashed)",
       "PWMCC").show()

# %% [markdown]
# ## The part the null does not explain: PWMCC − null
#
# Where the trained dictionaries agree no more than the null's, the difference is ≤ 0 and has no
# logarithm: such configurations are left out of the plot and of the fit of the excess (the fit
# reports how many were dropped).

# %%
pos = summary.excess > 0
print(f"{int((~pos).sum())} of {len(summary)} configurations have PWMCC <= null (not drawn, not fitted)")
loglog("tokens", "d_sae", ("excess",), "PWMCC − gaussian_matched vs token budget", "PWMCC − null").show()

# %% [markdown]
# ## Reconstruction: held-out EV against the token budget

# %%
fig = make_subplots(rows=1, cols=1)
for site, g in summary.groupby("hook", sort=False):
    for d, h in g.groupby("d_sae"):
        h = h.sort_values("tokens")
        fig.add_scatter(x=h.tokens, y=1 - h.ev, mode="lines+markers", name=f"{site} d_sae {d}")
fig.update_xaxes(type="log", title_text="token budget (rows seen)")
fig.update_yaxes(type="log", title_text="1 − held-out EV")
fig.update_layout(title="Unexplained variance vs token budget", height=450)
fig.show()

# %% [markdown]
# ## Fitted exponents
#
# `pooled`: one fit over every site (one intercept per site, shared exponents); per site: the fit
# within the site. The CI is the OLS t interval (standard error from the residuals): it counts
# configurations as observations, so it covers lack of fit but not the seed dependence inside each
# mean, and with few configurations per site it is wide.

# %%
rows = []
for y in ("pwmcc", "null", "excess"):
    fits = {"pooled": res["trends"]["pooled"][y], **res["trends"]["by_hook"][y]}
    for scope, fit in fits.items():
        for x in ("tokens", "d_sae"):
            s = fit["slopes"].get(x)
            rows.append({"y": y, "scope": scope, "x": x, "slope": s and s["slope"],
                         "ci_low": s and s["ci"] and s["ci"][0], "ci_high": s and s["ci"] and s["ci"][1],
                         "n_points": fit["n_points"], "dropped": fit["n_dropped"], "dof": fit["dof"], "r2": fit["r2"]})
slopes = pd.DataFrame(rows)
slopes.round(4)

# %%
# NBVAL_CHECK_OUTPUT
pd.DataFrame({"sites": [len(sites)], "configurations": [len(summary)], "seeds": [len(seeds)],
              "candidates": [len(res["candidates"])]})

# %%
for name, s in res["slopes"].items():
    ci = f" [{s['ci'][0]:+.3f}, {s['ci'][1]:+.3f}]" if s and s["ci"] else ""
    print(f"{name}: " + ("n/a" if s is None else f"{s['slope']:+.3f}{ci}"))
for site, b in res["best_per_hook"].items():
    print(f"best at {site}: {res['headline'][f'best at {site} (LCB vs gaussian_matched)']} ({b['null_verdict']})")
results_path = record_results(run_dir, {**res, "wall_seconds": seconds}, notebook="13_scaling")
