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
# # Phase 5 — core ablations: how do sparsity (k) and width (d_sae) change consistency?
#
# Two one-factor sweeps of TopK SAEs on the same cached activations, every configuration
# trained under the same list of seeds:
#
# * **k sweep** — the number of active latents varies, the dictionary width is fixed;
# * **d_sae sweep** — the dictionary width varies, k is fixed.
#
# For each configuration we compare the seeds' dictionaries with each other (PWMCC) and with
# two nulls (seeds disjoint from the trained ones): the **`gaussian_matched` null** — SAEs of
# the same configuration trained on Gaussian rows with the activations' mean and covariance,
# the strongest null of phase 4 and the one every selection here is made against — and
# i.i.d. isotropic decoders of the same shape (the weakest, shown for reference). Statistics
# as in phase 4: bootstrap over seeds for the CIs, a seed-level permutation test, and the
# conservative bound LCB = trained CI low − null CI high. The question: **at which sparsity
# and width (if any) do SAEs find structure beyond the data's geometry?** Consistency is
# only half the story, so every configuration also reports its reconstruction (EV), its L0
# and its dead-latent fraction: the plots below show the **trade-off frontier** between
# stability and reconstruction.
#
# Every point (configuration × seed) is one job of a resumable sweep (`husai_core.sweep`):
# a finished point is written to `<artifacts>/sweeps/05_ablations/points/`, so a rerun — or
# a run that was interrupted — trains only what is missing. Set `workers` for the local
# process pool, or `scheduler` to the address of a Dask cluster.

# %% tags=["parameters"]
profile = "interactive"
run_dir = None
artifacts_dir = None
progress = True
seeds = [42, 123, 456, 789, 1011]
layout = "default"
hook = "blocks.0.hook_resid_post"
architecture = "topk"
k_grid = [4, 8, 16, 32, 64]
k_sweep_d_sae = 128
d_sae_grid = [64, 128, 256, 512, 1024]
d_sae_sweep_k = 32
steps = 2000
batch_size = 1024
lr = 3e-4
sae_params = {}
sweep_dir = None
workers = None
threads_per_worker = None
scheduler = None
null_data_seed = 1
n_resamples = 10000
stats_seed = 0
alpha = 0.05

# %%
import time
from pathlib import Path

import pandas as pd
from plotly.subplots import make_subplots

from husai_core.activations import effective_rank, load_cache
from husai_core.consistency import disjoint_seeds
from husai_core.experiments import merge_points, summarise_sweep, sweep_point_check, train_point
from husai_core.report import headline_figure, record_results
from husai_core.runner import artifacts_dir as resolve_artifacts
from husai_core.selection import candidates_from_summary, select_candidate
from husai_core.store import code_version, tensor_fingerprint
from husai_core.sweep import expand_grid, run_sweep

art = resolve_artifacts(profile, artifacts_dir)
cache = load_cache(art / "activations" / layout)
x = cache.get(hook)
# SAEs live where every phase finds them (experiments.sae_dir): a configuration that phase 3/4
# already trained on the same seeds is loaded, not retrained.
base = {"artifacts": str(art), "layout": layout, "hook": hook, "architecture": architecture, "steps": steps,
        "batch_size": batch_size, "lr": lr, **sae_params}
# Validate both sweeps before anything trains: an empty grid or k > d_sae fails here, naming the point.
check = sweep_point_check(x.shape[1])
# A finished point is reused only for the same data and code (they are part of its key).
ids = {"data_id": tensor_fingerprint(x), "code_id": code_version("all")}
# Every configuration also trains the gaussian_matched null: the same config on Gaussian rows with
# the activations' mean and covariance, on seeds disjoint from the trained ones.
null_base = {**base, "condition": "gaussian_matched", "null_data_seed": null_data_seed}
null_seeds = disjoint_seeds(seeds, len(seeds))
k_points = (expand_grid({**base, "d_sae": k_sweep_d_sae}, {"k": k_grid}, seeds, check=check, **ids)
            + expand_grid({**null_base, "d_sae": k_sweep_d_sae}, {"k": k_grid}, null_seeds, check=check, **ids))
d_points = (expand_grid({**base, "k": d_sae_sweep_k}, {"d_sae": d_sae_grid}, seeds, check=check, **ids)
            + expand_grid({**null_base, "k": d_sae_sweep_k}, {"d_sae": d_sae_grid}, null_seeds, check=check, **ids))
points = merge_points(k_points, d_points)  # the configuration both sweeps share trains once
out = Path(sweep_dir) if sweep_dir else art / "sweeps" / "05_ablations"
start = time.perf_counter()
table = run_sweep(train_point, points, out, workers=workers, threads_per_worker=threads_per_worker,
                  scheduler=scheduler, progress=progress)
sweep_seconds = time.perf_counter() - start
print(f"{len(points)} sweep points ({len(k_points)} in the k sweep, {len(d_points)} in the d_sae sweep, "
      f"{len(k_points) + len(d_points) - len(points)} shared) over {len(seeds)} seeds; "
      f"{sweep_seconds:.1f}s for this run; results in {out}")

# %% [markdown]
# ## One row per configuration
#
# `pwmcc` is the mean PWMCC over seed pairs with its bootstrap CI; `null*` the same against the
# `gaussian_matched` null (`null_ratio` = trained / null, `null_lcb`, `null_p`, `null_verdict`);
# `random` / `ratio` / `lcb` against isotropic decoders; `p_holm` is the permutation p-value
# against the gaussian_matched null after the Holm correction across the conditions of that
# sweep; EV, L0 and dead fraction are means over seeds on held-out rows.

# %%
k_keys = {p.key for p in k_points}
d_keys = {p.key for p in d_points}
k_table = table[table.key.isin(k_keys)]
d_table = table[table.key.isin(d_keys)]
# the selection rule of husai_core.selection, as phases 5-6 state it: against the strongest null the
# table has, configurations significant after Holm first, the best of all when none is eligible
rule = {"alpha": alpha, "against": "auto", "prefer_significant": True, "if_none_eligible": "all"}
k_summary, k_choice = select_candidate(summarise_sweep(k_table, ["k"], n_resamples, stats_seed, alpha), **rule)
d_summary, d_choice = select_candidate(summarise_sweep(d_table, ["d_sae"], n_resamples, stats_seed, alpha), **rule)
rank = effective_rank(x)
d_summary["d_sae_over_rank"] = d_summary.d_sae / rank
columns = ["pwmcc", "pwmcc_ci_low", "pwmcc_ci_high", "null", "null_ci_high", "null_ratio", "null_lcb", "null_p",
           "p_holm", "null_verdict", "random", "ratio", "lcb", "ev", "null_ev", "l0", "dead_fraction", "selected"]
print(f"k sweep at d_sae = {k_sweep_d_sae}:")
k_summary[["k", *columns]].round(4)

# %%
print(f"d_sae sweep at k = {d_sae_sweep_k} (effective rank of the activations: {rank:.2f}):")
d_summary[["d_sae", "d_sae_over_rank", *columns]].round(4)

# %% [markdown]
# ## The trade-off frontier: stability against reconstruction
#
# Each marker is one configuration (mean over seeds; the bars are the bootstrap CI of the
# trained PWMCC), labelled by the setting that varies. The x axis is the fraction of variance
# unexplained, 1 − EV, on a log scale (reversed, so better reconstruction is to the right;
# EVs close to one would otherwise pile up). Hollow markers are the Gaussian baseline of the
# same shape, drawn at the same EV. Up and to the right is better on both counts; the ratio
# panel removes the baseline's own growth with d_sae.

# %%
fig = make_subplots(rows=1, cols=2, subplot_titles=("PWMCC vs EV", "trained / gaussian_matched ratio vs EV"))
for name, s, col, colour in (("k sweep", k_summary, "k", "#1f77b4"), ("d_sae sweep", d_summary, "d_sae", "#ff7f0e")):
    labels = [f"{col}={v}" for v in s[col]]
    err = dict(type="data", symmetric=False, array=s.pwmcc_ci_high - s.pwmcc, arrayminus=s.pwmcc - s.pwmcc_ci_low)
    fig.add_scatter(x=1 - s.ev, y=s.pwmcc, error_y=err, mode="markers+text+lines", text=labels, textposition="top center",
                    name=name, marker=dict(color=colour, size=9), row=1, col=1)
    fig.add_scatter(x=1 - s.ev, y=s.null, mode="markers", name=f"{name}: gaussian_matched null",
                    marker=dict(color=colour, size=9, symbol="circle-open"), row=1, col=1)
    fig.add_scatter(x=1 - s.ev, y=s.null_ratio, mode="markers+text+lines", text=labels, textposition="top center",
                    name=f"{name} ratio", marker=dict(color=colour, size=9), showlegend=False, row=1, col=2)
fig.add_hline(y=1.0, line_dash="dash", line_color="grey", row=1, col=2)
fig.update_xaxes(title_text="1 − EV (unexplained variance, mean over seeds)", type="log", autorange="reversed")
fig.update_yaxes(title_text="PWMCC", row=1, col=1)
fig.update_yaxes(title_text="trained / gaussian_matched", row=1, col=2)
fig.update_layout(title="Stability vs reconstruction", height=520)
headline_figure(fig, run_dir).show()

# %% [markdown]
# ## Consistency against sparsity and against width
#
# Left: PWMCC (with CI) against k at fixed width. Middle and right: PWMCC against d_sae, and
# against d_sae divided by the effective rank of the activations (exp of the entropy of the
# normalised singular values of the centred activations): how over-complete the dictionary
# is relative to the dimensions the data actually use. The red band is the `gaussian_matched`
# null's mean up to its CI high; the grey dotted line the isotropic decoders.

# %%
def band(fig, xs, s, col):
    fig.add_scatter(x=xs, y=s.null_ci_high, mode="lines", line=dict(width=0), showlegend=False,
                    hoverinfo="skip", row=1, col=col)
    fig.add_scatter(x=xs, y=s.null, mode="lines+markers", fill="tonexty", line=dict(color="#d62728", dash="dash"),
                    fillcolor="rgba(214,39,40,0.15)", name="gaussian_matched null", showlegend=col == 1, row=1, col=col)
    fig.add_scatter(x=xs, y=s.random, mode="lines", line=dict(color="grey", dash="dot"), name="isotropic decoders",
                    showlegend=col == 1, row=1, col=col)


def trained(fig, xs, s, col):
    err = dict(type="data", symmetric=False, array=s.pwmcc_ci_high - s.pwmcc, arrayminus=s.pwmcc - s.pwmcc_ci_low)
    fig.add_scatter(x=xs, y=s.pwmcc, error_y=err, mode="lines+markers", line=dict(color="#1f77b4"),
                    name="trained (95% CI)", showlegend=col == 1, row=1, col=col)


fig = make_subplots(rows=1, cols=3, subplot_titles=(f"k sweep (d_sae {k_sweep_d_sae})", f"d_sae sweep (k {d_sae_sweep_k})",
                                                    f"d_sae / effective rank ({rank:.1f})"))
for col, (s, xs) in enumerate(((k_summary, k_summary.k), (d_summary, d_summary.d_sae),
                               (d_summary, d_summary.d_sae_over_rank)), start=1):
    band(fig, xs, s, col)
    trained(fig, xs, s, col)
    fig.update_xaxes(type="log", tickvals=list(xs), ticktext=[f"{v:.3g}" for v in xs], row=1, col=col)
fig.update_xaxes(title_text="k", row=1, col=1)
fig.update_xaxes(title_text="d_sae", row=1, col=2)
fig.update_xaxes(title_text="d_sae / effective rank", row=1, col=3)
fig.update_yaxes(title_text="PWMCC", row=1, col=1)
fig.update_layout(title="PWMCC of trained seeds vs the gaussian_matched null", height=430)
fig.show()

# %% [markdown]
# ## Which configuration is best?
#
# Within each sweep the rule is stated by `husai_core.selection.select_candidate`: among the
# configurations whose permutation p-value against the `gaussian_matched` null survives the
# **Holm** correction across that sweep's conditions, take the one with the highest LCB (trained CI low − null CI
# high) — the configuration whose advantage over the geometry-matched null is largest even in
# the worst case the intervals allow. If no
# configuration survives the correction, the highest LCB is still named but flagged as not
# significant. The rule looks at consistency only: read the winner's EV and dead fraction
# next to it (a very sparse or very narrow dictionary can be consistent because it is
# simple). Phase 7 selects k under an explicit EV floor.

# %%
def describe(choice: dict, col: str) -> str:
    r = choice["row"]
    sig = "significant" if choice["significant"] else "NOT significant after the correction"
    return (f"best {col} = {r[col]}: PWMCC {r['pwmcc']:.3f} [{r['pwmcc_ci_low']:.3f}, {r['pwmcc_ci_high']:.3f}] vs "
            f"gaussian_matched {r['null']:.3f} (ratio {r['null_ratio']:.2f}, LCB {r['null_lcb']:.3f}, "
            f"{r['null_verdict']}); vs isotropic {r['random']:.3f}; EV {r['ev']:.3f}, L0 {r['l0']:.1f}, "
            f"dead fraction {r['dead_fraction']:.2f}; "
            f"Holm-adjusted p {r['p_holm']:.3g} over {choice['n_conditions']} conditions ({sig}).")


verdict_text = f"{describe(k_choice, 'k')} {describe(d_choice, 'd_sae')} Rule: {k_choice['rule']}."
print(verdict_text)

# %%
# NBVAL_CHECK_OUTPUT
pd.DataFrame({"sweep": ["k", "d_sae"], "conditions": [k_choice["n_conditions"], d_choice["n_conditions"]],
              "seeds": [len(seeds), len(seeds)], "correction": [k_choice["correction"], d_choice["correction"]]})

# %%
kb, db = k_choice["row"], d_choice["row"]
beyond = {name: [f"{col}={r[col]}" for r in summ.to_dict(orient="records") if r["null_verdict"] == "training signal present"]
          for name, summ, col in (("k", k_summary, "k"), ("d_sae", d_summary, "d_sae"))}
print("configurations whose consistency beats the gaussian_matched null:", beyond)
headline = {
    "best k": int(kb["k"]), "best k ratio vs gaussian_matched": kb["null_ratio"], "best k EV": kb["ev"],
    "best k LCB vs gaussian_matched": kb["null_lcb"], "best k verdict vs gaussian_matched": kb["null_verdict"],
    "best k dead fraction": kb["dead_fraction"],
    "best d_sae": int(db["d_sae"]), "best d_sae ratio vs gaussian_matched": db["null_ratio"], "best d_sae EV": db["ev"],
    "best d_sae LCB vs gaussian_matched": db["null_lcb"], "best d_sae verdict vs gaussian_matched": db["null_verdict"],
    "beyond gaussian_matched (k sweep)": ", ".join(beyond["k"]) or "none",
    "beyond gaussian_matched (d_sae sweep)": ", ".join(beyond["d_sae"]) or "none",
    "conditions": k_choice["n_conditions"] + d_choice["n_conditions"], "seeds": len(seeds),
    "correction": f"Holm across the conditions of each sweep (alpha {alpha:g})",
}
# Every configuration with its trained null is a release-gate candidate (notebook 14); the
# configuration both sweeps share is offered once.
common = {"architecture": architecture, "hook": hook, "layout": layout, "steps": steps, "batch_size": batch_size,
          "lr": lr, **sae_params}
release_candidates = list({c["name"]: c for c in
                           candidates_from_summary(k_summary.assign(d_sae=k_sweep_d_sae), "05_ablations", ["d_sae", "k"],
                                                   common, seeds)
                           + candidates_from_summary(d_summary.assign(k=d_sae_sweep_k), "05_ablations", ["d_sae", "k"],
                                                     common, seeds)}.values())
print(f"{len(release_candidates)} release-gate candidates")
results_path = record_results(run_dir, {
    "headline": headline, "verdict": verdict_text, "candidates": release_candidates,
    "selection": {"k": k_choice, "d_sae": d_choice},
    "k_sweep": k_summary.to_dict(orient="records"), "d_sae_sweep": d_summary.to_dict(orient="records"),
    "points": table.drop(columns=["artifacts", "extra"], errors="ignore").to_dict(orient="records"),
    "effective_rank": rank, "sweep_dir": str(out), "sweep_seconds": sweep_seconds,
    "config": {"architecture": architecture, "k_grid": k_grid, "k_sweep_d_sae": k_sweep_d_sae, "d_sae_grid": d_sae_grid,
               "d_sae_sweep_k": d_sae_sweep_k, "steps": steps, "batch_size": batch_size, "lr": lr, **sae_params},
    "seeds": seeds, "null_seeds": null_seeds, "layout": layout, "hook": hook,
}, notebook="05_ablations")
