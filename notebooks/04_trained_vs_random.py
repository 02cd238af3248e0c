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
# # Phase 4 — do SAEs trained with different seeds agree more than random dictionaries?
#
# For one configuration (default TopK, d_sae 1024, k 32) we compare the dictionaries of
# several seeds with each other, and the same comparisons for **i.i.d. Gaussian decoders**
# of the same shape (seeds disjoint from the trained ones) and for **untrained SAEs** from
# our own initialisation.
#
# **PWMCC** (DESIGN §5): normalise decoder rows, C = |D̂₁ D̂₂ᵀ|,
# PWMCC = ½(mean_i max_j C_ij + mean_j max_i C_ij).
# Pair values share seeds and are not independent, so confidence intervals come from a
# **bootstrap over seeds** (resample seeds, recompute the mean over their pairs), the main
# test is a **seed-level permutation test**, and the conservative bound is
# LCB = trained CI low − random CI high. The Mann-Whitney test on pair values is shown
# with that caveat.

# %% tags=["parameters"]
profile = "interactive"
run_dir = None
artifacts_dir = None
progress = True
seeds = [42, 123, 456, 789, 1011]
layout = "default"
hook = "blocks.0.hook_resid_post"
architecture = "topk"
d_sae = 1024
k = 32
steps = 2000
batch_size = 1024
lr = 3e-4
sae_params = {}
train_missing = True
compare_legacy = False
n_resamples = 10000
stats_seed = 0
alpha = 0.05
thresholds = [0.3, 0.5, 0.7, 0.9]
stability_threshold = 0.7
subspace_r = 16
fourier_top = 5

# %%
import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from husai_core.activations import load_cache
from husai_core.experiments import load_saes, sae_config, sae_dir, train_or_load_saes, trained_vs_random
from husai_core.fourier import answer_fourier_directions, fourier_summary
from husai_core.model import load_checkpoint, number_embedding
from husai_core.report import record_results
from husai_core.runner import artifacts_dir as resolve_artifacts
from husai_core.sae import build_sae

art = resolve_artifacts(profile, artifacts_dir)
transformer = load_checkpoint(art / "transformer" / "default")
p = transformer.task.p
key_freqs = fourier_summary(number_embedding(transformer.model, p), top=fourier_top).key_frequencies


def analyse(layout_name: str) -> dict:
    """Load (or train) the SAEs of every seed on one layout's cache and run the comparison."""
    cache = load_cache(art / "activations" / layout_name)
    x = cache.get(hook)
    cfg = sae_config(x.shape[1], {"architecture": architecture, "d_sae": d_sae, "k": k, "steps": steps,
                                  "batch_size": batch_size, "lr": lr, **sae_params})
    folder = sae_dir(art, layout_name, hook, cfg)
    saes = (train_or_load_saes(folder, cfg, x, seeds, progress=progress) if train_missing else load_saes(folder, seeds))
    untrained = [build_sae(cfg, s).W_dec.detach() for s in seeds]
    gt = answer_fourier_directions(x, cache.labels["c"], p, key_freqs)  # the task's ground truth, in this space
    out = trained_vs_random([s.sae.W_dec.detach() for s in saes], seeds, untrained, gt, tuple(thresholds),
                            stability_threshold, subspace_r, n_resamples, stats_seed, alpha)
    out["ev"] = [s.metrics["ev"] for s in saes]
    out["l0"] = [s.metrics["l0"] for s in saes]
    out["dead_fraction"] = [s.metrics["dead_fraction"] for s in saes]
    out["folder"] = str(folder)
    return out


analyses = {"default": analyse(layout)}
if compare_legacy:
    analyses["legacy"] = analyse("legacy")
res = analyses["default"]
print(f"{len(seeds)} seeds, d_sae {d_sae}, k {k}; mean EV {np.mean(res['ev']):.3f}, mean L0 {np.mean(res['l0']):.1f}")

# %% [markdown]
# ## PWMCC of every pair: trained vs the two controls

# %%
fig = make_subplots(rows=1, cols=2, subplot_titles=("pair values", "trained seeds × seeds"), column_widths=[0.55, 0.45])
for name, colour in (("trained", "#1f77b4"), ("random", "#d62728"), ("untrained", "#7f7f7f")):
    values = res["trained_pairs"] if name == "trained" else res["random_pairs"] if name == "random" else \
        [v for i, row in enumerate(res["untrained_matrix"]) for j, v in enumerate(row) if j > i]
    fig.add_box(y=values, name=name, boxpoints="all", marker_color=colour, row=1, col=1)
labels = [str(s) for s in seeds]
off_diag = [[None if i == j else v for j, v in enumerate(row)] for i, row in enumerate(res["trained_matrix"])]
fig.add_heatmap(z=off_diag, x=labels, y=labels, colorscale="Viridis", colorbar=dict(x=1.0, title="PWMCC"),
                row=1, col=2)  # the diagonal (a seed with itself, 1 by definition) is left blank
fig.update_yaxes(title_text="PWMCC", row=1, col=1)
fig.update_layout(title="Pairwise PWMCC (Gaussian = i.i.d. decoders, untrained = our initialisation)", height=420,
                  showlegend=False)
fig.show()

# %%
def stats_table(r: dict) -> pd.DataFrame:
    rows = []
    for name in ("trained", "random", "untrained"):
        if name in r:
            b = r[name]
            rows.append({"dictionaries": name, "mean PWMCC": b["mean"], "CI low": b["ci_low"], "CI high": b["ci_high"]})
    return pd.DataFrame(rows)


stats_table(res).round(4)

# %% [markdown]
# ## Tests and verdict

# %%
def verdict_table(r: dict) -> pd.DataFrame:
    return pd.DataFrame([
        ("trained / random ratio", r["ratio"]), ("trained − random difference", r["difference"]),
        ("LCB = trained CI low − random CI high", r["lcb"]),
        (f"seed-level permutation p ({'exact' if r['permutation']['exact'] else 'Monte-Carlo'})", r["permutation"]["p_value"]),
        ("Mann-Whitney p on pair values (anti-conservative: pairs share seeds)", r["mann_whitney"]["p_value"]),
    ], columns=["statistic", "value"])


print(res["verdict"]["label"], "—", res["verdict"]["explanation"])
verdict_table(res).round(5)

# %% [markdown]
# ## One-to-one matching (Hungarian, cost 1 − |cos|)
# Matched similarity of every feature pair over all seed pairs; the dashed lines are the
# thresholds for "shared" features.

# %%
fig = go.Figure()
for name, colour in (("trained", "#1f77b4"), ("random", "#d62728")):
    fig.add_histogram(x=res[f"{name}_matching"]["similarities"], name=name, marker_color=colour, opacity=0.6,
                      histnorm="probability", xbins=dict(start=0, end=1, size=0.02))
for t in thresholds:
    fig.add_vline(x=t, line_dash="dash", line_color="black")
fig.update_layout(barmode="overlay", title="Hungarian-matched |cos| between seeds", xaxis_title="|cos| of matched pair",
                  yaxis_title="share of features", height=380)
fig.show()
shared = pd.DataFrame({name: {f"shared ≥ {t}": res[f"{name}_matching"]["fraction_above"][str(t)] for t in thresholds}
                       | {"mean matched |cos|": res[f"{name}_matching"]["mean_similarity"]}
                       for name in ("trained", "random", "untrained") if f"{name}_matching" in res})
shared.round(4)

# %% [markdown]
# ## Per-feature stability, subspaces and the task's ground truth
# *Stability*: in how many of the other seeds a feature has a match with |cos| ≥ the
# threshold. *Subspace overlap*: mean cos² of the principal angles between the top-r
# decoder subspaces (random expectation r / d_in). *Fourier alignment*: how well the
# dictionaries contain the activation-space directions of cos/sin(2πkc/p) for the model's
# key frequencies k.

# %%
n_others = res["trained_stability"]["n_others"]
fig = go.Figure()
for name, colour in (("trained", "#1f77b4"), ("random", "#d62728")):
    hist = np.array(res[f"{name}_stability"]["count_histogram"], dtype=float)
    fig.add_bar(x=list(range(n_others + 1)), y=hist / hist.sum(), name=name, marker_color=colour)
fig.update_layout(title=f"Features matched (|cos| ≥ {stability_threshold}) in how many other seeds",
                  xaxis_title="other seeds with a match", yaxis_title="share of features", barmode="group", height=360)
fig.show()
extras = pd.DataFrame({name: {
    f"stable in all other seeds (≥ {stability_threshold})": res[f"{name}_stability"]["fraction_in_all_others"],
    f"subspace overlap (top {res[f'{name}_subspace']['r']})": res[f"{name}_subspace"]["mean_cos2"],
    "Fourier directions recovered ≥ 0.7": res[f"{name}_ground_truth"]["recovered_fraction"]["0.7"],
    "mean best |cos| to Fourier directions": res[f"{name}_ground_truth"]["mean_best_cos"],
} for name in ("trained", "random", "untrained") if f"{name}_stability" in res})
extras.loc["subspace random expectation r/d_in"] = res["trained_subspace"]["random_expectation"]
extras.round(4)

# %% [markdown]
# ## The legacy (answer-leaking) activations, side by side
# Shown when the profile enables it: the same SAEs and statistics on activations from the
# legacy layout, where the read position holds the answer token itself.

# %%
side = pd.DataFrame({name: {
    "trained PWMCC": a["trained"]["mean"], "trained CI": f"[{a['trained']['ci_low']:.3f}, {a['trained']['ci_high']:.3f}]",
    "random PWMCC": a["random"]["mean"], "random CI": f"[{a['random']['ci_low']:.3f}, {a['random']['ci_high']:.3f}]",
    "ratio": a["ratio"], "LCB": a["lcb"], "permutation p": a["permutation"]["p_value"],
    "mean EV": float(np.mean(a["ev"])), "verdict": a["verdict"]["label"],
} for name, a in analyses.items()})
side

# %%
# NBVAL_CHECK_OUTPUT
pd.DataFrame({name: {"trained": round(a["trained"]["mean"], 4), "random": round(a["random"]["mean"], 4),
                     "verdict": a["verdict"]["label"]} for name, a in analyses.items()})

# %%
def headline_for(a: dict, prefix: str = "") -> dict:
    return {f"{prefix}trained PWMCC": a["trained"]["mean"],
            f"{prefix}trained 95% CI": [a["trained"]["ci_low"], a["trained"]["ci_high"]],
            f"{prefix}random PWMCC": a["random"]["mean"],
            f"{prefix}random 95% CI": [a["random"]["ci_low"], a["random"]["ci_high"]],
            f"{prefix}ratio": a["ratio"], f"{prefix}LCB": a["lcb"], f"{prefix}verdict": a["verdict"]["label"]}


headline = headline_for(res) | {"mean EV": float(np.mean(res["ev"])), "mean L0": float(np.mean(res["l0"]))}
if "legacy" in analyses:
    headline |= headline_for(analyses["legacy"], "legacy ")
verdict_text = f"{res['verdict']['label']}: {res['verdict']['explanation']}"
if "legacy" in analyses:
    verdict_text += f" Legacy layout: {analyses['legacy']['verdict']['label']}."
results_path = record_results(run_dir, {
    "headline": headline, "verdict": verdict_text,
    "config": {"architecture": architecture, "d_sae": d_sae, "k": k, "steps": steps, "batch_size": batch_size,
               "lr": lr, **sae_params},
    "seeds": seeds, "hook": hook, "key_frequencies": key_freqs, "analyses": analyses,
}, notebook="04_trained_vs_random")
