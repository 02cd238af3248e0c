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
# # Phase 7 — adaptive L0: pick k for consistency, then check the pick on fresh seeds
#
# Which sparsity makes TopK SAEs most reproducible across seeds, without giving up
# reconstruction? The calibration runs in three steps:
#
# 1. **Search.** Train every candidate k (fixed d_sae) on a few *search seeds* and summarise
#    each as in phase 5: trained vs Gaussian PWMCC with bootstrap-over-seeds CIs and the
#    conservative bound LCB = trained CI low − random CI high.
# 2. **Select.** Among the candidates whose mean explained variance (EV) reaches the floor,
#    take the highest LCB; ties go to the larger trained − random difference, then to the
#    larger EV. The rule lives in `husai_core.selection.select_adaptive_k`. The seed-level
#    permutation p-values of **all** candidates are **Holm-adjusted** (the number of
#    conditions is the number of candidates), and the winner's adjusted p is reported. With
#    few search seeds the exact permutation p has a floor (1/20 for 3 + 3 seeds), so the
#    adjusted p cannot be small: the search is exploratory, and step 3 is the confirmation.
# 3. **Confirm.** Retrain the winner on more seeds, disjoint from the search seeds (so the
#    selection's winner's curse does not carry over), with longer training, next to a
#    **matched control** at the conventional k (same seeds, same training). The **gain** is
#    mean PWMCC over seed pairs of the winner minus the same for the control; its CI is a
#    paired bootstrap over seeds (each resample draws one multiset of seeds and computes both
#    means on its pairs). Both have the same d_sae, so they share the Gaussian baseline and the
#    gain is also the gain in trained − random difference; the gain in trained / random ratio
#    is reported beside it.
#
# Both sweeps are resumable (`husai_core.sweep`): finished points are kept under
# `<artifacts>/sweeps/07_adaptive_l0/`, SAEs in the shared SAE folders.

# %% tags=["parameters"]
profile = "interactive"
run_dir = None
artifacts_dir = None
progress = True
layout = "default"
hook = "blocks.0.hook_resid_post"
architecture = "topk"
d_sae = 512
k_candidates = [8, 16, 32, 64]
search_seeds = [42, 123, 456]
search_steps = 1500
ev_floor = 0.8
retrain_seeds = [1001, 1002, 1003, 1004, 1005, 1006, 1007, 1008]
retrain_steps = 3000
control_k = 32
batch_size = 1024
lr = 3e-4
sae_params = {}
sweep_dir = None
workers = None
threads_per_worker = None
scheduler = None
n_resamples = 10000
stats_seed = 0
alpha = 0.05

# %%
import time
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from husai_core.activations import load_cache
from husai_core.errors import HusaiError
from husai_core.experiments import consistency_summary, summarise_sweep, sweep_point_check, train_point
from husai_core.selection import matched_gain, select_adaptive_k
from husai_core.report import headline_figure, record_results
from husai_core.runner import artifacts_dir as resolve_artifacts
from husai_core.sae import load_sae
from husai_core.store import code_version, tensor_fingerprint
from husai_core.sweep import expand_grid, run_sweep

if control_k not in k_candidates:
    raise HusaiError(f"control_k {control_k} must be one of k_candidates {k_candidates} (the control is a candidate too)")
if len(search_seeds) < 2 or len(retrain_seeds) < 2:
    raise HusaiError(f"need at least 2 search seeds and 2 retrain seeds, got {search_seeds} and {retrain_seeds}")
overlap = sorted(set(search_seeds) & set(retrain_seeds))
art = resolve_artifacts(profile, artifacts_dir)
cache = load_cache(art / "activations" / layout)
x = cache.get(hook)
base = {"artifacts": str(art), "layout": layout, "hook": hook, "architecture": architecture, "d_sae": d_sae,
        "batch_size": batch_size, "lr": lr, **sae_params,
        "extra": {**sae_params.get("extra", {}), "cache_source": cache.meta.get("source_sha256")}}
check = sweep_point_check(x.shape[1])
# A finished point is reused only for the same data and code (they are part of its key).
ids = {"data_id": tensor_fingerprint(x), "code_id": code_version("all")}
search_points = expand_grid({**base, "steps": search_steps}, {"k": k_candidates}, search_seeds, check=check, **ids)
out = Path(sweep_dir) if sweep_dir else art / "sweeps" / "07_adaptive_l0"
start = time.perf_counter()
search_table = run_sweep(train_point, search_points, out / "search", workers=workers,
                         threads_per_worker=threads_per_worker, scheduler=scheduler, progress=progress)
search_seconds = time.perf_counter() - start
print(f"search: {len(k_candidates)} candidates x {len(search_seeds)} seeds, {search_steps} steps, d_sae {d_sae}, "
      f"{search_seconds:.1f}s in this run")
if overlap:
    print(f"warning: retrain seeds {overlap} were also search seeds; the confirmation is not fully independent")

# %% [markdown]
# ## Search: every candidate on the search seeds
#
# `pwmcc` with its bootstrap CI, the Gaussian baseline (`random`, CI high), `difference` =
# trained − random, `lcb`, the raw and Holm-adjusted permutation p-values, EV / L0 / dead
# fraction (means over seeds, on all cached rows); `eligible` = EV at or above the floor;
# `rank` orders the eligible candidates by the selection rule.

# %%
summary = summarise_sweep(search_table, ["k"], n_resamples, stats_seed, alpha)
candidates, choice = select_adaptive_k(summary, ev_floor, alpha)
cols = ["k", "pwmcc", "pwmcc_ci_low", "pwmcc_ci_high", "random", "random_ci_high", "difference", "ratio", "lcb",
        "permutation_p", "p_holm", "ev", "l0", "dead_fraction", "eligible", "rank", "selected"]
candidates[cols].round(4)

# %%
fig = make_subplots(rows=1, cols=2, subplot_titles=("consistency (search seeds)", "reconstruction"))
err = dict(type="data", symmetric=False, array=candidates.pwmcc_ci_high - candidates.pwmcc,
           arrayminus=candidates.pwmcc - candidates.pwmcc_ci_low)
fig.add_scatter(x=candidates.k, y=candidates.pwmcc, error_y=err, mode="lines+markers", name="trained PWMCC (95% CI)",
                line=dict(color="#1f77b4"), row=1, col=1)
fig.add_scatter(x=candidates.k, y=candidates.random_ci_high, mode="lines", line=dict(width=0), showlegend=False,
                hoverinfo="skip", row=1, col=1)
fig.add_scatter(x=candidates.k, y=candidates.random, mode="lines+markers", fill="tonexty", name="random (mean to CI high)",
                line=dict(color="#d62728", dash="dash"), fillcolor="rgba(214,39,40,0.15)", row=1, col=1)
fig.add_scatter(x=candidates.k, y=candidates.lcb, mode="lines+markers", name="LCB", line=dict(color="#2ca02c"), row=1, col=1)
colours = ["#2ca02c" if s else ("#1f77b4" if e else "#bbbbbb") for s, e in zip(candidates.selected, candidates.eligible)]
fig.add_scatter(x=candidates.k, y=candidates.ev, mode="lines+markers", marker=dict(color=colours, size=11),
                line=dict(color="#888"), name="EV (green: selected, grey: below floor)", row=1, col=2)
fig.add_hline(y=ev_floor, line_dash="dash", line_color="black", annotation_text="EV floor", row=1, col=2)
fig.update_xaxes(type="log", title_text="k", tickvals=k_candidates)
fig.update_yaxes(title_text="PWMCC / LCB", row=1, col=1)
fig.update_yaxes(title_text="explained variance", row=1, col=2)
fig.update_layout(title=f"Search over k (d_sae {d_sae}, {len(search_seeds)} seeds)", height=430)
headline_figure(fig, run_dir).show()

# %% [markdown]
# ## Selection

# %%
if choice["status"] == "none":
    winner_k = None
    selection_text = (f"No candidate reaches the EV floor {ev_floor:g} (best EV {candidates.ev.max():.3f} at "
                      f"k = {int(candidates.k[candidates.ev.idxmax()])}): nothing is selected and nothing is retrained.")
else:
    w = choice["row"]
    winner_k = int(w["k"])
    sig = "significant" if choice["significant"] else "not significant"
    selection_text = (f"Selected k = {winner_k}: LCB {w['lcb']:.4f}, difference {w['difference']:.4f}, EV {w['ev']:.3f} "
                      f"on {len(search_seeds)} search seeds; {choice['n_eligible']} of {choice['n_conditions']} "
                      f"candidates were above the EV floor. Holm-adjusted permutation p {w['p_holm']:.3g} across "
                      f"{choice['n_conditions']} candidates ({sig} at alpha {alpha:g}).")
print(selection_text)
print("Rule:", choice["rule"])

# %% [markdown]
# ## Confirmation: the winner on fresh seeds against the matched control
#
# Winner and control are retrained on the same retrain seeds with the same, longer training;
# each is also compared with its Gaussian baseline (same shape, seeds disjoint from the
# trained ones).

# %%
confirm = None
if winner_k is not None:
    retrain_ks = sorted({winner_k, control_k})
    retrain_points = expand_grid({**base, "steps": retrain_steps}, {"k": retrain_ks}, retrain_seeds, check=check, **ids)
    start = time.perf_counter()
    retrain_table = run_sweep(train_point, retrain_points, out / "retrain", workers=workers,
                              threads_per_worker=threads_per_worker, scheduler=scheduler, progress=progress)
    retrain_seconds = time.perf_counter() - start

    def decoders_of(k_value: int) -> list:
        rows = retrain_table[retrain_table.k == k_value].set_index("seed").loc[retrain_seeds]
        return [load_sae(path).W_dec.detach() for path in rows.checkpoint]

    decs = {k_value: decoders_of(k_value) for k_value in retrain_ks}
    arms = {"winner": winner_k, "control": control_k}
    stats = {name: consistency_summary(decs[k_value], retrain_seeds, n_resamples, stats_seed, alpha)
             for name, k_value in arms.items()}
    gain = matched_gain(decs[winner_k], decs[control_k], retrain_seeds, n_resamples, stats_seed)
    quality = {name: retrain_table[retrain_table.k == k_value][["ev", "l0", "dead_fraction"]].mean().to_dict()
               for name, k_value in arms.items()}
    confirm = {"winner_k": winner_k, "control_k": control_k, "seeds": retrain_seeds, "steps": retrain_steps,
               "gain": gain, "ratio_gain": stats["winner"]["ratio"] - stats["control"]["ratio"],
               "arms": {name: {"k": arms[name], **{key: stats[name][key] for key in
                                                   ("trained", "random", "ratio", "difference", "lcb", "permutation",
                                                    "verdict", "trained_pairs", "random_pairs")},
                               **quality[name]} for name in arms},
               "retrain_seconds": retrain_seconds}
    print(f"retrain: k {retrain_ks} x {len(retrain_seeds)} seeds, {retrain_steps} steps, {retrain_seconds:.1f}s in this run")
    arm_table = pd.DataFrame({f"{name} (k {a['k']})": {
        "PWMCC": a["trained"]["mean"], "CI low": a["trained"]["ci_low"], "CI high": a["trained"]["ci_high"],
        "random": a["random"]["mean"], "difference": a["difference"], "ratio": a["ratio"], "LCB": a["lcb"],
        "permutation p": a["permutation"]["p_value"], "EV": a["ev"], "L0": a["l0"], "dead fraction": a["dead_fraction"],
        "verdict": a["verdict"]["label"]} for name, a in confirm["arms"].items()})
else:
    arm_table = pd.DataFrame()
arm_table

# %%
if confirm is not None:
    fig = make_subplots(rows=1, cols=2, column_widths=[0.6, 0.4],
                        subplot_titles=("pairwise PWMCC on the retrain seeds", "gain = winner − control"))
    for name, colour in (("winner", "#2ca02c"), ("control", "#1f77b4")):
        a = confirm["arms"][name]
        fig.add_box(y=a["trained_pairs"], name=f"{name} k={a['k']}", boxpoints="all", marker_color=colour, row=1, col=1)
    fig.add_box(y=confirm["arms"]["control"]["random_pairs"], name="random", boxpoints="all", marker_color="#d62728",
                row=1, col=1)
    g = confirm["gain"]
    fig.add_box(y=g["pair_gains"], name="pair gains", boxpoints="all", marker_color="#888", row=1, col=2)
    fig.add_scatter(x=["mean (95% CI)"], y=[g["gain"]], mode="markers", marker=dict(size=12, color="black"),
                    error_y=dict(type="data", symmetric=False, array=[g["ci_high"] - g["gain"]],
                                 arrayminus=[g["gain"] - g["ci_low"]]), name="gain", row=1, col=2)
    fig.add_hline(y=0, line_dash="dash", line_color="grey", row=1, col=2)
    fig.update_yaxes(title_text="PWMCC", row=1, col=1)
    fig.update_yaxes(title_text="PWMCC difference", row=1, col=2)
    fig.update_layout(title=f"Winner k = {confirm['winner_k']} vs control k = {control_k} "
                            f"({len(retrain_seeds)} seeds, {retrain_steps} steps)", height=430, showlegend=False)
    fig.show()

# %% [markdown]
# ## Conclusion

# %%
if confirm is None:
    verdict_text = selection_text
elif winner_k == control_k:
    verdict_text = (f"{selection_text} The winner is the control k = {control_k} itself, so the gain is 0 by "
                    f"construction; on {len(retrain_seeds)} fresh seeds it is "
                    f"{confirm['arms']['winner']['verdict']['label']}.")
else:
    g = confirm["gain"]
    if g["ci_low"] > 0:
        outcome = f"k = {winner_k} agrees across seeds more than the control k = {control_k}"
    elif g["ci_high"] < 0:
        outcome = f"k = {winner_k} agrees across seeds LESS than the control k = {control_k} (the search did not replicate)"
    else:
        outcome = f"no detectable difference between k = {winner_k} and the control k = {control_k}"
    verdict_text = (f"{selection_text} On {len(retrain_seeds)} fresh seeds with {retrain_steps} steps: {outcome}; "
                    f"gain in mean PWMCC {g['gain']:+.4f}, 95% paired-bootstrap CI [{g['ci_low']:+.4f}, "
                    f"{g['ci_high']:+.4f}] (ratio-to-random gain {confirm['ratio_gain']:+.3f}); winner EV "
                    f"{confirm['arms']['winner']['ev']:.3f} vs control {confirm['arms']['control']['ev']:.3f}, dead "
                    f"fraction {confirm['arms']['winner']['dead_fraction']:.3f} vs {confirm['arms']['control']['dead_fraction']:.3f}.")
print(verdict_text)

# %%
# NBVAL_CHECK_OUTPUT
pd.DataFrame({"candidates": [len(k_candidates)], "search seeds": [len(search_seeds)],
              "retrain seeds": [len(retrain_seeds)], "correction": [choice["correction"]], "status": [choice["status"]]})

# %%
headline = {
    "selected k": winner_k if winner_k is not None else "none",
    "selection": choice["status"], "EV floor": ev_floor, "candidates": choice["n_conditions"],
    "eligible candidates": choice["n_eligible"],
    "correction": f"Holm across {choice['n_conditions']} candidates (alpha {alpha:g})",
}
if choice["row"] is not None:
    headline |= {"search LCB of selected": choice["row"]["lcb"], "Holm-adjusted p of selected": choice["row"]["p_holm"]}
if confirm is not None:
    g = confirm["gain"]
    headline |= {
        "control k": control_k, "retrain seeds": len(retrain_seeds),
        "winner PWMCC": confirm["arms"]["winner"]["trained"]["mean"],
        "control PWMCC": confirm["arms"]["control"]["trained"]["mean"],
        "random PWMCC": confirm["arms"]["control"]["random"]["mean"],
        "gain (winner - control PWMCC)": g["gain"], "gain 95% CI": [g["ci_low"], g["ci_high"]],
        "ratio-to-random gain": confirm["ratio_gain"],
        "winner LCB": confirm["arms"]["winner"]["lcb"], "winner EV": confirm["arms"]["winner"]["ev"],
        "control EV": confirm["arms"]["control"]["ev"],
        "winner dead fraction": confirm["arms"]["winner"]["dead_fraction"],
        "control dead fraction": confirm["arms"]["control"]["dead_fraction"],
    }
results_path = record_results(run_dir, {
    "headline": headline, "verdict": verdict_text,
    "selection": choice, "candidates": candidates.to_dict(orient="records"),
    "search_points": search_table.drop(columns=["artifacts", "extra"], errors="ignore").to_dict(orient="records"),
    "confirmation": confirm,
    "gain_definition": (confirm or {}).get("gain", {}).get("definition"),
    "config": {"architecture": architecture, "d_sae": d_sae, "k_candidates": k_candidates, "control_k": control_k,
               "search_steps": search_steps, "retrain_steps": retrain_steps, "ev_floor": ev_floor,
               "batch_size": batch_size, "lr": lr, **sae_params},
    "search_seeds": search_seeds, "retrain_seeds": retrain_seeds, "layout": layout, "hook": hook,
    "search_seconds": search_seconds, "sweep_dir": str(out),
}, notebook="07_adaptive_l0")
