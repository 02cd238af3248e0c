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
# # Phase 10 — compare: any SAEs, through the same seed-consistency analysis
#
# SAEs trained elsewhere — **SAELens** (files or a cached pretrained `release/sae_id`),
# EleutherAI **sparsify**, **dictionary_learning**, or ours — are read into one SAE type
# (`husai_core.sae.read_sae`; encode/decode match the source library), grouped into
# configurations (seeds of one configuration share a label), checked for compatibility (same
# d_in, same recorded hook), and put through phase 4's analysis, group by group:
#
# | null | what it is | when |
# |---|---|---|
# | `gaussian_matched` | SAEs of the group's config trained with our trainer on Gaussian rows with the activations' mean and full covariance | with activations |
# | `isotropic` | untrained SAEs of the group's config (i.i.d. isotropic decoder rows) — the weakest null | always |
#
# Metrics (`husai_core.matching`): max-|cos| **PWMCC** and its **signed** form, **PW-MCC**
# (Hungarian), the **shared-latent fraction** (decoder and encoder cosine > threshold), and
# **activation matching** — over all latents and over latents alive on held-out rows. CIs are
# bootstrap-over-seeds, tests are seed-level permutation tests, LCB = trained CI low − null CI high,
# and each group's headline is its verdict against the strongest null.
#
# **Without activations** only the weight-based metrics over all latents can be computed, against
# the isotropic null; activation matching, the alive scope, held-out EV/L0/dead and the
# gaussian_matched null are skipped (and listed below). With the default `paths = []` the notebook
# runs a self-contained demo: SAEs trained with our trainer on synthetic rows with a planted
# dictionary, exported in the SAELens format, then compared like any foreign SAEs.

# %% tags=["parameters"]
profile = "interactive"
run_dir = None
artifacts_dir = None
progress = True
paths = []
labels = []
activations = None
hook = None
out = None
nulls = ["gaussian_matched", "isotropic"]
null_params = {}
null_data_seed = 1
heldout_fraction = 0.2
split_seed = 0
max_rows = 200000
max_rows_per_file = None
headline_metric = "pwmcc/all"
shared_threshold = 0.7
n_resamples = 10000
stats_seed = 0
alpha = 0.05
device = "cpu"
demo_architectures = ["topk", "batchtopk"]
demo_seeds = [0, 1, 2, 3, 4, 5, 6, 7]
demo_rows = 16384
demo_d_in = 32
demo_atoms = 64
demo_active = 3
demo_noise = 0.02
demo_data_seed = 0
demo_d_sae = 96
demo_k = 3
demo_steps = 1500
demo_batch_size = 256
demo_lr = 0.003

# %%
import shutil
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import torch
from IPython.display import display
from plotly.subplots import make_subplots

from husai_core.compare import compare_saes, relative_paths
from husai_core.conditions import heldout_split
from husai_core.experiments import config_id, train_or_load_saes
from husai_core.report import headline_figure, record_results
from husai_core.runner import artifacts_dir as resolve_artifacts
from husai_core.runner import runs_dir, runs_path
from husai_core.sae import SAEConfig, export_saelens
from husai_core.sae.synthetic import planted_dictionary

art = resolve_artifacts(profile, artifacts_dir)
base = runs_path(run_dir) if run_dir else runs_dir() / "10_compare" / "interactive"
demo = not paths
ground_truth = None
if demo:
    # Synthetic rows = sums of `demo_active` planted unit atoms; SAEs of each demo architecture
    # trained with our trainer on the training share of the split compare uses, exported as SAELens.
    x, ground_truth = planted_dictionary(demo_rows, demo_d_in, demo_atoms, demo_active, seed=demo_data_seed,
                                         noise=demo_noise)
    acts_dir = base / "demo" / "activations"
    acts_dir.mkdir(parents=True, exist_ok=True)
    torch.save(x, acts_dir / "planted_hook_planted.pt")
    train_idx, _ = heldout_split(x.shape[0], heldout_fraction, split_seed)
    paths, labels = [], []
    for arch in demo_architectures:
        cfg = SAEConfig(architecture=arch, d_in=demo_d_in, d_sae=demo_d_sae, k=demo_k, steps=demo_steps,
                        batch_size=demo_batch_size, lr=demo_lr)
        trained = train_or_load_saes(art / "compare" / "demo" / config_id(cfg), cfg, x[train_idx], demo_seeds,
                                     progress=progress)
        for t in trained:
            folder = export_saelens(t.sae, base / "demo" / arch / f"seed{t.seed}", hook_name="hook_planted",
                                    model_name="planted dictionary (synthetic)")
            paths.append(str(folder))
            labels.append(f"demo {arch}")
    activations, hook = str(acts_dir), "hook_planted"
    print(f"demo: {len(paths)} SAELens-format SAEs ({', '.join(demo_architectures)} x seeds {demo_seeds}) trained on "
          f"{demo_rows} rows with {demo_atoms} planted atoms (d_in {demo_d_in}); files in the run folder's demo/")

result = compare_saes(paths, labels or None, activations, hook, nulls=nulls, heldout_fraction=heldout_fraction,
                      split_seed=split_seed, null_data_seed=null_data_seed, null_params=null_params,
                      headline_metric=headline_metric, threshold=shared_threshold, n_resamples=n_resamples,
                      stats_seed=stats_seed, alpha=alpha, max_rows=max_rows, max_rows_per_file=max_rows_per_file,
                      artifacts=art, device=device, progress=progress, ground_truth=ground_truth)
if demo:
    result = relative_paths(result, base)  # the demo's files live in the run folder (renamed when the run ends)
groups = result["groups"]
print(f"{len(result['inputs'])} SAEs in {len(groups)} group(s), grouped {result['grouping']}; d_in {result['d_in']}, "
      f"hook {result['hook'] or 'not recorded'}")
if result["activations"]:
    a = result["activations"]
    print(f"activations: {a['kind']} {a['source']} (hook {a['hook']}), {a['n_rows']} of {a['n_rows_available']} rows; "
          f"{a['n_train']} for the nulls' training / {a['n_heldout']} held out. {a['note']}.")
for line in result["skipped"]:
    print(f"skipped: {line}")
for line in result["warnings"]:
    print(f"warning: {line}")
pd.DataFrame(result["inputs"]).drop(columns=["source"]).set_index("path")

# %% [markdown]
# ## The condition × metric table, per group
# Mean over seed pairs with its 95% bootstrap-over-seeds CI.

# %%
for label, g in groups.items():
    print(label)
    display(pd.DataFrame({cond: {k: f"{b['mean']:.4f} [{b['ci_low']:.4f}, {b['ci_high']:.4f}]" for k, b in cols.items()}
                          for cond, cols in g["comparison"]["table"].items()}))

# %%
colours = {"trained": "#1f77b4", "gaussian_matched": "#d62728", "isotropic": "#7f7f7f"}
fig = make_subplots(rows=len(groups), cols=1, subplot_titles=list(groups), shared_xaxes=True,
                    vertical_spacing=0.12 if len(groups) > 1 else 0.0)
for row, (label, g) in enumerate(groups.items(), start=1):
    table = g["comparison"]["table"]
    keys = list(table["trained"])
    for cond, cols in table.items():
        ks = [k for k in keys if k in cols]
        fig.add_scatter(x=ks, y=[cols[k]["mean"] for k in ks], mode="markers", name=cond, legendgroup=cond,
                        showlegend=row == 1, marker=dict(size=10, color=colours.get(cond)),
                        error_y=dict(type="data", symmetric=False,
                                     array=[cols[k]["ci_high"] - cols[k]["mean"] for k in ks],
                                     arrayminus=[cols[k]["mean"] - cols[k]["ci_low"] for k in ks]),
                        row=row, col=1)
fig.update_layout(title="Consistency by condition and metric (95% CI over seeds)", height=380 * len(groups),
                  xaxis_tickangle=-30)
headline_figure(fig, run_dir).show()

# %% [markdown]
# ## Verdicts against every null
# Rule (`husai_core.stats.verdict`): *present* when LCB > 0 and p < α; *absent* when p ≥ α and the
# trained mean is inside (or below) the null's CI; otherwise *inconclusive*. Activation matching has
# no cross-condition pairs, so its p-value is a bootstrap-over-seeds difference test.

# %%
verdicts = pd.DataFrame([{"group": label, "null": null, "metric": key, "difference": t["difference"], "LCB": t["lcb"],
                          "p": t["p_value"], "verdict": t["verdict"]}
                         for label, g in groups.items() for null, per_key in g["comparison"]["tests"].items()
                         for key, t in per_key.items()])
verdicts.pivot_table(index="metric", columns=["group", "null"], values="verdict", aggfunc="first")

# %%
for label, g in groups.items():
    print(g["headline"]["text"] if len(groups) == 1 else f"[{label}] {g['headline']['text']}")
    if g["alive_headline"]:
        print(f"    alive latents: {g['alive_headline']['text']}")

# %% [markdown]
# ## Reconstruction on held-out rows
# EV = 1 − Σ_d Var_d(x − x̂) / Σ_d Var_d(x); L0 = mean non-zero latents per row; dead = share of
# latents that never fire on the held-out rows. The given SAEs and the isotropic null on the real
# held-out rows, the gaussian_matched null on its own held-out Gaussian rows.

# %%
recon_rows = [{"group": label, "condition": cond, **r} for label, g in groups.items()
              for cond, rs in (g["reconstruction"] or {}).items() for r in rs]
if recon_rows:
    recon = pd.DataFrame(recon_rows)
    display(recon.groupby(["group", "condition"], sort=False)[["ev", "l0", "mse", "dead_fraction"]].mean().round(4))
    fig = go.Figure()
    symbols = ["circle", "square", "diamond", "triangle-up", "x", "cross"]
    for gi, label in enumerate(groups):
        for cond in recon.condition.unique():
            t = recon[(recon.group == label) & (recon.condition == cond)]
            if len(t):
                fig.add_scatter(x=t.l0, y=t.ev, mode="markers", name=f"{label} · {cond}", text=t.name,
                                marker=dict(size=10, color=colours.get(cond), symbol=symbols[gi % len(symbols)]))
    fig.update_layout(title="Held-out EV against L0, one point per SAE", xaxis_title="L0", yaxis_title="EV",
                      height=450)
    fig.show()
else:
    print("no activations: held-out EV / L0 / dead fraction skipped")

# %% [markdown]
# ## Configurations side by side
# One row per group: the headline metric with its CI, the strongest null, LCB, p (Holm-adjusted
# across the groups when there are several: no winner is selected here, but several verdicts are
# read at once) and held-out reconstruction.

# %%
across = pd.DataFrame(result["across"]).set_index("group")
if len(across) > 1:
    fig = go.Figure()
    fig.add_scatter(x=across.index, y=across.trained, mode="markers", name="trained", marker=dict(size=12),
                    error_y=dict(type="data", symmetric=False, array=across.ci_high - across.trained,
                                 arrayminus=across.trained - across.ci_low))
    fig.add_scatter(x=across.index, y=across.null, mode="markers", name="strongest null",
                    marker=dict(size=12, symbol="x", color="#d62728"),
                    error_y=dict(type="data", symmetric=False, array=across.null_ci_high - across.null, arrayminus=[0] * len(across)))
    fig.update_layout(title=f"{result['headline_metric']} by configuration: trained vs its strongest null",
                      yaxis_title=result["headline_metric"], height=420)
    fig.show()
across.round(4)

# %% [markdown]
# ## Ground truth (demo only)
# The demo's rows are built from known atoms: how many of them each seed's dictionary recovers
# (best |cos| ≥ the threshold), per condition, with a bootstrap CI over seeds — a check that does
# not depend on any null.

# %%
if demo:
    display(pd.DataFrame([{"group": label, "condition": cond, "mean recovered": r["mean"], "CI low": r["ci_low"],
                           "CI high": r["ci_high"], "of": g["ground_truth"]["n_directions"], "per seed": r["counts"]}
                          for label, g in groups.items() for cond, r in g["ground_truth"].items()
                          if isinstance(r, dict)]).set_index(["group", "condition"]))
else:
    print("no known ground truth for these SAEs")

# %%
# NBVAL_CHECK_OUTPUT
pd.DataFrame([{"group": r["group"], "verdict": r["verdict"], "strongest null": r["strongest_null"],
               "metric": r["metric"]} for r in result["across"]])

# %%
results_path = record_results(run_dir, {
    **result, "headline": result["headline"], "verdict": result["verdict"],
    "paths": relative_paths(paths, base) if demo else paths, "labels": labels, "demo": demo, "out": out,
}, notebook="10_compare")
if out:
    Path(out).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(results_path, Path(out) / "results.json")
print(f"results: {results_path}")
