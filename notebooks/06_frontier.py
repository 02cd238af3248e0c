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
# # Phase 6 — the architecture frontier: which SAE family is most consistent at matched sparsity?
#
# ReLU + L1, TopK, BatchTopK, JumpReLU and Matryoshka-TopK are trained **on equal footing**:
# the same cached activations, the same seeds, the same number of steps, batch size,
# learning rate and dictionary width. Sparsity is matched as closely as each architecture
# allows:
#
# * the TopK family (TopK, BatchTopK, Matryoshka) gets the target L0 directly as `k`
#   (BatchTopK: k per row on average, with a calibrated inference threshold);
# * ReLU and JumpReLU have no k: a sparsity knob is **calibrated on one seed** — a short
#   search that trains, measures L0, and moves the knob (stepping, then interpolating log L0
#   against log knob) until L0 lands within the tolerance of the target
#   (`husai_core.experiments.calibrate_point`). The achieved L0 of every seed is reported
#   below, not assumed.
# * ReLU's knob is its L1 coefficient. JumpReLU's is, by default, its **initial threshold**,
#   with the L0 coefficient fixed: Adam moves a log-threshold by at most about `lr` per step,
#   so in a run this short the thresholds stay near where they start and the L0 coefficient
#   barely steers L0 (set `calibrate` to `{"jumprelu": "l0_coeff"}` to see it; the search
#   then stops early and says that L0 does not respond). JumpReLU's bandwidth is put in the
#   units the SAE trains in (`jumprelu_scales`; rows are normalised to mean squared norm d_in
#   by default): a short run cannot move log-thresholds far from where they start.
#
# Every architecture is then compared on EV, L0, dead fraction, PWMCC against its
# `gaussian_matched` null — the same configuration trained on Gaussian rows with the
# activations' mean and covariance, the strongest null of phase 4 — (ratio, LCB, seed-level
# permutation test; isotropic decoders beside it), and the **shared-feature fraction**:
# one-to-one Hungarian matching of every seed pair, share of features matched above each
# threshold, averaged over pairs.

# %% tags=["parameters"]
profile = "interactive"
run_dir = None
artifacts_dir = None
progress = True
seeds = [42, 123, 456, 789, 1011]
layout = "default"
hook = "blocks.0.hook_resid_post"
architectures = ["relu", "topk", "batchtopk", "jumprelu", "matryoshka"]
d_sae = 512
k = 32
steps = 2000
batch_size = 1024
lr = 3e-4
sae_params = {}
arch_params = {"relu": {"l1_coeff": 0.01}, "jumprelu": {"l0_coeff": 0.001}}
calibrate = {"relu": "l1_coeff", "jumprelu": "jumprelu_init_threshold"}
calibration_iters = 6
calibration_tol = 0.1
jumprelu_data_scaled = True
l0_match_tol = 0.25
shared_thresholds = [0.5, 0.7]
sweep_dir = None
workers = None
threads_per_worker = None
scheduler = None
n_resamples = 10000
stats_seed = 0
alpha = 0.05
null_data_seed = 1

# %%
import time
from pathlib import Path

import numpy as np
import pandas as pd
from plotly.subplots import make_subplots

from husai_core.activations import load_cache
from husai_core.consistency import disjoint_seeds
from husai_core.errors import HusaiError
from husai_core.experiments import (CALIBRATION_KNOBS, calibrate_point, frontier_summary, jumprelu_scales, merge_points,
                                    sae_config, sweep_point_check, train_point)
from husai_core.report import headline_figure, record_results
from husai_core.runner import artifacts_dir as resolve_artifacts
from husai_core.sae.config import ALIASES
from husai_core.sae.trainer import training_scale
from husai_core.selection import candidates_from_summary, select_candidate
from husai_core.store import code_version, tensor_fingerprint
from husai_core.sweep import SweepPoint, expand_grid, run_sweep

art = resolve_artifacts(profile, artifacts_dir)
cache = load_cache(art / "activations" / layout)
x = cache.get(hook)
if not architectures:
    raise HusaiError("architectures is empty; name at least one of relu, topk, batchtopk, jumprelu, matryoshka")
archs = [ALIASES.get(a, a) for a in architectures]
unknown_params = sorted(set(arch_params) - set(archs))
if unknown_params:
    raise HusaiError(f"arch_params names architecture(s) {unknown_params} that are not in architectures {archs}")
for a, knob in (calibrate or {}).items():
    if knob not in CALIBRATION_KNOBS.get(a, ()):
        raise HusaiError(f"calibrate: cannot calibrate {knob!r} of {a!r}; calibratable: "
                         f"{ {arch: list(knobs) for arch, knobs in CALIBRATION_KNOBS.items()} }")
shared = {"artifacts": str(art), "layout": layout, "hook": hook, "d_sae": d_sae, "k": k, "steps": steps,
          "batch_size": batch_size, "lr": lr, **sae_params}
# in the units the SAEs train in (normalised rows unless sae_params turns normalisation off)
scales = jumprelu_scales(x, d_sae, k, training_scale(sae_config(x.shape[1], {**sae_params, "architecture": "jumprelu"}), x))
configs = {}
for a in archs:
    cfg = {**shared, "architecture": a}
    if a == "jumprelu" and jumprelu_data_scaled:
        cfg.update({name: scales[name] for name in ("jumprelu_init_threshold", "bandwidth")})
    configs[a] = {**cfg, **arch_params.get(a, {})}  # explicit settings win over the data-scaled ones
# Validate every architecture's configuration before anything trains (k > d_sae, unknown names, ...).
check = sweep_point_check(x.shape[1])
# A finished point is reused only for the same data and code (they are part of its key).
ids = {"data_id": tensor_fingerprint(x), "code_id": code_version("all")}


null_seeds = disjoint_seeds(seeds, len(seeds))


def arch_points(a: str) -> list:
    """Every seed of architecture ``a``, and its gaussian_matched null (same config, Gaussian rows
    with the activations' mean and covariance, disjoint seeds)."""
    cfg = {key: v for key, v in configs[a].items() if key != "architecture"}
    null_cfg = {**cfg, "condition": "gaussian_matched", "null_data_seed": null_data_seed}
    return (expand_grid(cfg, {"architecture": [a]}, seeds, check=check, **ids)  # an error names the architecture
            + expand_grid(null_cfg, {"architecture": [a]}, null_seeds, check=check, **ids))


for a in archs:
    arch_points(a)
out = Path(sweep_dir) if sweep_dir else art / "sweeps" / "06_frontier"
print(f"{len(archs)} architectures × {len(seeds)} seeds, d_sae {d_sae}, target L0 {k}, {steps} steps of {batch_size} rows")
print(f"Adam bound on how far a JumpReLU log-threshold can move: about lr × steps = {lr * steps:.2f} "
      f"(a factor of {np.exp(lr * steps):.2f}); data scale sigma = {scales['sigma']:.3g}")

# %% [markdown]
# ## Calibrating the sparsity of ReLU and JumpReLU
#
# One seed (the first), a few tries per architecture; each try is a full-length training run
# whose checkpoint is kept (the final sweep reuses the chosen one). The plot shows every try.
# "L0 responds" is false when a try moved the knob by 2× or more and L0 changed by under 2%.

# %%
to_calibrate = [a for a in archs if a in (calibrate or {})]
calibration = {}
start = time.perf_counter()
if to_calibrate:
    cal_points = [SweepPoint({**configs[a], "target_l0": k, "calibration_iters": calibration_iters,
                              "calibration_tol": calibration_tol, "calibrate": calibrate[a]}, seeds[0], **ids)
                  for a in to_calibrate]
    cal_table = run_sweep(calibrate_point, cal_points, out / "calibration", workers=workers,
                          threads_per_worker=threads_per_worker, scheduler=scheduler, progress=progress)
    for _, row in cal_table.iterrows():
        calibration[row.architecture] = {key: row[key] for key in ("coeff_name", "coeff", "l0", "ev", "target_l0", "n_tries",
                                                                   "within_tol", "responsive", "trace")}
        configs[row.architecture][row.coeff_name] = row.coeff
calibration_seconds = time.perf_counter() - start

fig = make_subplots(rows=1, cols=max(1, len(calibration)),
                    subplot_titles=[f"{a}: {c['coeff_name']}" for a, c in calibration.items()] or [""])
for col, (a, c) in enumerate(calibration.items(), start=1):
    tr = pd.DataFrame(c["trace"])
    fig.add_scatter(x=tr.coeff, y=tr.l0, mode="lines+markers+text", text=[str(i + 1) for i in range(len(tr))],
                    textposition="top center", name=a, row=1, col=col)
    fig.add_scatter(x=[tr.coeff.min() / 1.5, tr.coeff.max() * 1.5], y=[k, k], mode="lines", name="target L0 (= k)",
                    line=dict(color="black", dash="dash"), showlegend=col == 1, row=1, col=col)
    fig.update_xaxes(type="log", title_text=c["coeff_name"], row=1, col=col)
    fig.update_yaxes(type="log", title_text="L0" if col == 1 else None, row=1, col=col)
fig.update_layout(title=f"Calibration on seed {seeds[0]}: L0 of each try (numbered in order)", height=380)
fig.show()
cal_summary = pd.DataFrame([{"architecture": a, "knob": c["coeff_name"], "chosen value": c["coeff"],
                             "L0 on calibration seed": c["l0"], "target L0": c["target_l0"], "tries": c["n_tries"],
                             "within tolerance": c["within_tol"], "L0 responds": c["responsive"]}
                            for a, c in calibration.items()])
cal_summary

# %% [markdown]
# ## Training every architecture on every seed

# %%
points = merge_points(*(arch_points(a) for a in archs))
start = time.perf_counter()
table = run_sweep(train_point, points, out, workers=workers, threads_per_worker=threads_per_worker,
                  scheduler=scheduler, progress=progress)
sweep_seconds = time.perf_counter() - start
print(f"{len(points)} points; {sweep_seconds:.1f}s for this run (calibration {calibration_seconds:.1f}s); results in {out}")

# %% [markdown]
# ## The frontier table
#
# One row per architecture, means over seeds. `l0_vs_target` is the achieved L0 divided by
# the target k; an architecture whose L0 misses the target by more than `l0_match_tol`
# (relative) is not at matched sparsity and is marked ineligible for the "most consistent"
# call. `matched_shared_*` are the Hungarian shared-feature fractions of the trained seeds,
# `random_matched_shared_*` the same for the Gaussian baseline.

# %%
frontier = frontier_summary(table, "architecture", tuple(shared_thresholds), n_resamples, stats_seed, alpha)
trained_table = table[table.condition == "trained"]
frontier["target_l0"] = k
frontier["l0_vs_target"] = frontier.l0 / k
matched = (frontier.l0_vs_target - 1).abs() <= l0_match_tol
# the selection rule of husai_core.selection as phases 5-6 state it (significant after Holm first;
# the best of all, flagged, when no architecture is sparsity-matched)
frontier, choice = select_candidate(frontier, matched, alpha, against="auto", prefer_significant=True,
                                    if_none_eligible="all", eligibility="sparsity-matched")
frontier["architecture"] = pd.Categorical(frontier.architecture, archs)
frontier = frontier.sort_values("architecture").reset_index(drop=True)
frontier["architecture"] = frontier.architecture.astype(str)
frontier["calibrated_knob"] = [calibration.get(a, {}).get("coeff_name") for a in frontier.architecture]
frontier["calibrated_value"] = [calibration.get(a, {}).get("coeff") for a in frontier.architecture]
shared_cols = ([f"matched_shared_{t:g}" for t in shared_thresholds]
               + [f"random_matched_shared_{t:g}" for t in shared_thresholds])
frontier[["architecture", "pwmcc", "pwmcc_ci_low", "pwmcc_ci_high", "null", "null_ci_high", "null_ratio", "null_lcb",
          "p_holm", "null_verdict", "random", "ratio", "ev", "null_ev", "l0", "l0_vs_target", "dead_fraction", *shared_cols,
          "eligible", "selected"]].round(4)

# %% [markdown]
# ## Stability against reconstruction, per architecture
#
# Each marker is one architecture (bars: bootstrap CI of the trained PWMCC over seeds), placed
# by its reconstruction: the x axis is 1 − EV on a log scale, reversed. Hollow markers are each
# architecture's `gaussian_matched` null (same config trained on Gaussian rows with the
# activations' covariance) at its own EV; the grey band is the isotropic decoders of the same
# shape (the same for every architecture because the width is the same).

# %%
fig = make_subplots(rows=1, cols=2, subplot_titles=("PWMCC vs EV", "shared features (Hungarian |cos| above threshold)"))
colours = dict(zip(archs, ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2"]))
for _, r in frontier.iterrows():
    fig.add_scatter(x=[1 - r.ev], y=[r.pwmcc], mode="markers+text", text=[f"{r.architecture} (L0 {r.l0:.1f})"],
                    textposition="top center", name=r.architecture, marker=dict(size=12, color=colours[r.architecture]),
                    error_y=dict(type="data", symmetric=False, array=[r.pwmcc_ci_high - r.pwmcc],
                                 arrayminus=[r.pwmcc - r.pwmcc_ci_low]), row=1, col=1)
    fig.add_scatter(x=[1 - r.null_ev], y=[r.null], mode="markers", name=f"{r.architecture}: gaussian_matched",
                    marker=dict(size=12, color=colours[r.architecture], symbol="circle-open"),
                    error_y=dict(type="data", symmetric=False, array=[r.null_ci_high - r.null],
                                 arrayminus=[r.null - r.null_ci_low]), row=1, col=1)
fig.add_hrect(y0=frontier.random.min(), y1=frontier.random_ci_high.max(), fillcolor="rgba(127,127,127,0.15)", line_width=0,
              row=1, col=1)
fig.add_hline(y=frontier.random.mean(), line_dash="dot", line_color="grey", annotation_text="isotropic decoders",
              row=1, col=1)
for t in shared_thresholds:
    fig.add_bar(x=frontier.architecture, y=frontier[f"matched_shared_{t:g}"], name=f"trained ≥ {t:g}", row=1, col=2)
    fig.add_bar(x=frontier.architecture, y=frontier[f"random_matched_shared_{t:g}"], name=f"random ≥ {t:g}",
                marker_pattern_shape="/", row=1, col=2)
fig.update_xaxes(title_text="1 − EV (unexplained variance, log, reversed: better to the right)", type="log",
                 autorange="reversed", row=1, col=1)
fig.update_yaxes(title_text="PWMCC", row=1, col=1)
fig.update_yaxes(title_text="share of features matched", row=1, col=2)
fig.update_layout(title=f"Architecture frontier at d_sae {d_sae}, target L0 {k}", barmode="group", height=480)
headline_figure(fig, run_dir).show()

# %% [markdown]
# ## Achieved sparsity and dead latents
#
# The dashed line is the target; the shaded band is the tolerance within which an
# architecture counts as sparsity-matched.

# %%
fig = make_subplots(rows=1, cols=2, subplot_titles=("L0 per seed", "dead fraction per seed"))
for a in archs:
    g = trained_table[trained_table.architecture == a]
    fig.add_box(y=g.l0, name=a, boxpoints="all", marker_color=colours[a], showlegend=False, row=1, col=1)
    fig.add_box(y=g.dead_fraction, name=a, boxpoints="all", marker_color=colours[a], showlegend=False, row=1, col=2)
fig.add_hrect(y0=k * (1 - l0_match_tol), y1=k * (1 + l0_match_tol), fillcolor="rgba(0,0,0,0.07)", line_width=0, row=1, col=1)
fig.add_hline(y=k, line_dash="dash", line_color="black", row=1, col=1)
fig.update_yaxes(title_text="L0", row=1, col=1)
fig.update_yaxes(title_text="dead fraction", row=1, col=2)
fig.update_layout(height=380)
fig.show()

# %% [markdown]
# ## Which architecture is most consistent at matched sparsity?
#
# Rule (`husai_core.selection.select_candidate`): among the architectures whose L0 is within the tolerance of the
# target and whose permutation p-value against its `gaussian_matched` null survives the
# **Holm** correction across all the architectures compared, the highest LCB (trained CI low −
# null CI high). If none qualifies, the highest LCB is still named, flagged.

# %%
r = choice["row"]
flags = [] if choice["significant"] else ["NOT significant after the correction"]
flags += [] if choice["eligible"] else [f"L0 {r['l0']:.1f} is outside the matched-sparsity tolerance"]
off = [f"{a} (L0 {l0:.1f})" for a, l0, e in zip(frontier.architecture, frontier.l0, frontier.eligible) if not e]
verdict_text = (f"Most consistent at matched sparsity (target L0 {k}, d_sae {d_sae}): {r['architecture']} — PWMCC "
                f"{r['pwmcc']:.3f} [{r['pwmcc_ci_low']:.3f}, {r['pwmcc_ci_high']:.3f}] vs gaussian_matched "
                f"{r['null']:.3f} (ratio {r['null_ratio']:.2f}, LCB {r['null_lcb']:.3f}, {r['null_verdict']}), vs "
                f"isotropic {r['random']:.3f}; EV {r['ev']:.3f}, L0 {r['l0']:.1f}; "
                f"Holm-adjusted p {r['p_holm']:.3g} "
                f"over {choice['n_conditions']} architectures" + (f" ({'; '.join(flags)})" if flags else "") + "."
                + (f" Not sparsity-matched: {', '.join(off)}." if off else ""))
print(verdict_text)

# %%
# NBVAL_CHECK_OUTPUT
pd.DataFrame({"architecture": frontier.architecture, "seeds": frontier.n_seeds})

# %%
tidy = frontier[["architecture", "pwmcc", "pwmcc_ci_low", "pwmcc_ci_high", "random", "random_ci_high", "ratio", "difference",
                 "lcb", "permutation_p", "null", "null_ci_low", "null_ci_high", "null_ratio", "null_lcb", "null_p",
                 "null_verdict", "null_ev", "p_holm", "significant", "verdict", "ev", "l0", "target_l0", "l0_vs_target",
                 "eligible", "dead_fraction", "matched_mean_similarity", "random_matched_mean_similarity", *shared_cols,
                 "calibrated_knob", "calibrated_value", "selected"]]
beyond = [a for a, v in zip(tidy.architecture, tidy.null_verdict) if v == "training signal present"]
headline = {"most consistent at matched sparsity": r["architecture"], "its ratio vs gaussian_matched": r["null_ratio"],
            "its LCB vs gaussian_matched": r["null_lcb"], "its verdict vs gaussian_matched": r["null_verdict"],
            "architectures beyond gaussian_matched": ", ".join(beyond) or "none",
            "target L0": k, "d_sae": d_sae, "correction": f"Holm across {choice['n_conditions']} architectures"}
for _, row in tidy.iterrows():
    headline[f"{row.architecture} (PWMCC, gaussian_matched, EV, L0)"] = [row.pwmcc, row.null, row.ev, row.l0]
# Every architecture with its trained null is a release-gate candidate (notebook 14), with its own settings.
release_candidates = [c for a in archs for c in candidates_from_summary(
    frontier[frontier.architecture == a], "06_frontier", ["architecture"],
    {key: v for key, v in configs[a].items() if key != "artifacts"}, seeds)]
results_path = record_results(run_dir, {
    "headline": headline, "verdict": verdict_text, "selection": choice, "candidates": release_candidates,
    "frontier": tidy.to_dict(orient="records"), "calibration": calibration,
    "points": table.drop(columns=["artifacts", "extra"], errors="ignore").to_dict(orient="records"),
    "configs": {a: {key: v for key, v in c.items() if key != "artifacts"} for a, c in configs.items()},
    "jumprelu_scales": scales, "seeds": seeds, "null_seeds": null_seeds, "layout": layout, "hook": hook,
    "sweep_dir": str(out),
    "sweep_seconds": sweep_seconds, "calibration_seconds": calibration_seconds,
}, notebook="06_frontier")
