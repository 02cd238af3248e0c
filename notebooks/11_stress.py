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
# # Phase 11 — stress tests: transcoders vs SAEs, and SAEs out of distribution
#
# Two ways to push on the consistency result of phases 4–6.
#
# **Transcoder stress.** A transcoder encodes the MLP's *input* and decodes the MLP's *output*
# (`blocks.L.hook_mlp_out`): its latents have to describe what the MLP computes, not just
# what is in the residual stream. Are transcoders trained with different seeds more (or less)
# consistent than SAEs trained on the same input, with the same seeds, rows and sparsity? The
# model of this study has no LayerNorm, so the MLP reads the residual stream after attention
# directly: the input hook is `blocks.L.hook_resid_mid` (with LayerNorm it would be
# `blocks.L.ln2.hook_normalized`); the next cell prints which one was used and why.
# Each architecture is judged against its own trained nulls over the metric family of phase 4,
# and `transcoder_delta` = transcoder − SAE consistency on the headline metric, with
# **LCB = transcoder CI low − SAE CI high** (bootstrap over seeds). A small grid over d_sae × k
# is run (`d_sae_grid` × `k_grid`, or the explicit pairs of `grid`); the p-values of "transcoder > SAE" are **Holm**-corrected across the grid, and the
# headline configuration is fixed in the parameters before the run (no best-of-N).
#
# *The transcoders' null.* Rows for a transcoder are pairs (input, target). The
# `gaussian_matched` null draws them from **one Gaussian with the joint mean and covariance
# of [input, target]**. Each side keeps its geometry (the property that inflates max-cosine
# agreement), and the target keeps its best *linear* prediction from the input — but the
# MLP's nonlinear, sparse computation (ReLU neurons firing on some inputs only) is absent: a
# transcoder on these rows can only learn a linear map plus Gaussian noise. Drawing input and
# target independently would also remove the linear part and make the null trivially weak
# (a decoder with nothing to predict); keeping it makes the null the strongest one we can
# build that still lacks the structure under test. `random_transformer` (an untrained MLP's
# map) can be added in `nulls`.
#
# **OOD stress.** SAEs trained on the activations of one part of the input space (default:
# operand a < p/2) and evaluated on the rest: EV, L0, dead fraction, the accuracy of a linear
# probe of c fitted on in-distribution latents, and consistency between seeds (activation
# matching on each part's rows), in vs out, with `ood_drop` (in − out) and a bootstrap CI over
# seeds. For foreign per-dataset caches (`activations`, as in phase 4), split by dataset name
# (`ood_by = "dataset"`, `ood_in` = names or shell patterns of the in-distribution datasets).

# %% tags=["parameters"]
profile = "interactive"
run_dir = None
artifacts_dir = None
progress = True
seeds = [42, 123, 456, 789, 1011]
layout = "default"
activations = None
# transcoder stress
layer = 0
transcoder_input = None
transcoder_target = None
architecture = "topk"
d_sae_grid = [256, 512]
k_grid = [16, 32]
grid = None  # explicit [[d_sae, k], ...] pairs instead of d_sae_grid x k_grid
headline_d_sae = 512
headline_k = 32
steps = 2000
batch_size = 256
lr = 1e-3
sae_params = {}
heldout_fraction = 0.2
split_seed = 0
nulls = ["gaussian_matched"]
null_data_seed = 1
# OOD stress
ood_hook = "blocks.0.hook_resid_post"
ood_d_sae = 512
ood_k = 32
ood_by = "a"
ood_in = None
ood_below = 0.5
ood_metric = "ev"
probe_label = "c"
probe_max_rows = 4096
# statistics
headline_metric = "pwmcc/all"
shared_threshold = 0.7
n_resamples = 10000
stats_seed = 0
alpha = 0.05

# %%
import time

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from husai_core.phases import stress
from husai_core.report import headline_figure, record_results
from husai_core.runner import artifacts_dir as resolve_artifacts

art = resolve_artifacts(profile, artifacts_dir)
start = time.perf_counter()
results = stress.run({name: globals()[name] for name in stress.PARAMS}, art, progress=progress)
seconds = time.perf_counter() - start
tc, ood = results["transcoders"], results["ood"]
for note in results["notes"]:
    print(note)
if tc:
    print(f"transcoder input {tc['hooks']['input']} -> target {tc['hooks']['target']}: {tc['hooks']['why']}; "
          f"rows: {tc['hooks']['rows_from']}")
    print(f"seeds {tc['seeds']}, null seeds {tc['null_seeds']}; {tc['split']['n_train']} training / "
          f"{tc['split']['n_heldout']} held-out rows; {seconds:.0f} s")
    display(pd.DataFrame(tc["conditions"]))

# %% [markdown]
# ## Transcoders vs SAEs over the grid
#
# Per configuration and architecture: consistency of the trained seeds on the headline metric
# (mean over seed pairs, 95% bootstrap-over-seeds CI), its strongest null, the LCB against that
# null and the verdict; held-out EV (the transcoder's on its target, `hook_mlp_out`). Then the
# comparison of the two: `delta` = transcoder − SAE, `delta LCB` = transcoder CI low − SAE CI
# high, the one-sided bootstrap p of "transcoder > SAE" and its Holm adjustment across the grid.
# The `excess` columns subtract each architecture's strongest null: the two decoders live in
# different spaces (MLP output vs input), whose geometries set different floors.

# %%
def grid_table(tc: dict) -> pd.DataFrame:
    rows = []
    for p in tc["grid"]:
        row = {"d_sae": p["d_sae"], "k": p["k"]}
        for arm in stress.ARMS:
            h, comp = p[arm]["headline"], p[arm]["comparison"]["table"]
            t = comp["trained"][tc["metric"]]
            row |= {f"{arm}": t["mean"], f"{arm} CI": f"[{t['ci_low']:.3f}, {t['ci_high']:.3f}]",
                    f"{arm} null ({h['strongest_null']})": h["null"], f"{arm} LCB vs null": h["lcb"],
                    f"{arm} verdict": h["verdict"], f"{arm} EV": p[arm]["reconstruction"]["trained"]["heldout_ev"]}
        dl = p["delta"]
        row |= {"delta": dl["delta"], "delta LCB": dl["lcb"], "p": dl["p"], "p (Holm)": dl["p_holm"],
                "transcoder excess": dl["transcoder_excess_over_null"], "SAE excess": dl["sae_excess_over_null"]}
        rows.append(row)
    return pd.DataFrame(rows).set_index(["d_sae", "k"])


if tc:
    print(f"metric {tc['metric']}; {tc['correction']}")
    display(grid_table(tc).round(4))

# %%
if tc:
    fig = go.Figure()
    labels = [f"d_sae {p['d_sae']}, k {p['k']}" for p in tc["grid"]]
    styles = {("sae", "trained"): ("SAE (trained)", "#1f77b4", "circle"),
              ("sae", "null"): ("SAE null", "#1f77b4", "circle-open"),
              ("transcoder", "trained"): ("transcoder (trained)", "#d62728", "diamond"),
              ("transcoder", "null"): ("transcoder null", "#d62728", "diamond-open")}
    for (arm, kind), (name, colour, symbol) in styles.items():
        cells = [p[arm]["comparison"]["table"]["trained" if kind == "trained" else p[arm]["headline"]["strongest_null"]]
                 [tc["metric"]] for p in tc["grid"]]
        fig.add_scatter(x=labels, y=[c["mean"] for c in cells], mode="markers", name=name,
                        marker=dict(color=colour, symbol=symbol, size=11),
                        error_y=dict(type="data", symmetric=False, array=[c["ci_high"] - c["mean"] for c in cells],
                                     arrayminus=[c["mean"] - c["ci_low"] for c in cells]))
    fig.update_layout(title=f"Transcoders vs SAEs on {tc['hooks']['input']}: {tc['metric']} (95% CI over seeds)",
                      yaxis_title=tc["metric"], height=450)
    headline_figure(fig, run_dir).show()

# %%
if tc:
    th = tc["headline"]
    print(f"headline configuration (fixed in params) d_sae {th['d_sae']}, k {th['k']}: transcoder {th['transcoder']:.4f} "
          f"vs SAE {th['sae']:.4f}, transcoder_delta {th['delta']:+.4f}, LCB {th['lcb']:+.4f}, "
          f"p {th['p']:.3g} (Holm {th['p_holm']:.3g})")
    for arm in stress.ARMS:
        p = next(p for p in tc["grid"] if (p["d_sae"], p["k"]) == (th["d_sae"], th["k"]))
        print(f"{arm}: {p[arm]['headline']['text']}")

# %% [markdown]
# ## Out of distribution
#
# SAEs of one configuration trained on the in-distribution part only; per seed, the metrics on
# in-distribution held-out rows and on out-of-distribution rows (evenly spaced, as many as the
# held-out rows). The probe is a ridge regression onto one-hot classes fitted on the latents of
# in-distribution *training* rows; the same probe on the raw activations is the reference (how
# much of the drop is the representation's own shift rather than the SAE's).

# %%
print(f"{ood['rule']}: {ood['n_in']} in-distribution rows ({ood['n_train']} for training, {ood['n_eval_rows']} "
      f"held out), {ood['n_out']} out-of-distribution rows; hook {ood['hook']}, {ood['config_id']}")
if ood["probe"]:
    print(ood["probe"])
pd.DataFrame(ood["per_seed"]).set_index("seed").round(4)

# %%
summary = pd.DataFrame({name: {"in": v["in"]["mean"], "out": v["out"]["mean"], "drop (in − out)": v["drop"]["mean"],
                               "drop CI": f"[{v['drop']['ci_low']:.4f}, {v['drop']['ci_high']:.4f}]"}
                        for name, v in {**ood["summary"], **ood["consistency"]}.items()}).T
if ood["raw_probe"]:
    summary.loc["probe on raw activations"] = [ood["raw_probe"]["in"], ood["raw_probe"]["out"],
                                               ood["raw_probe"]["in"] - ood["raw_probe"]["out"], "(one probe)"]
summary

# %%
items = {**ood["summary"], **ood["consistency"]}
fig = make_subplots(rows=1, cols=len(items), subplot_titles=list(items))
for i, (name, v) in enumerate(items.items(), start=1):
    for side, colour in (("in", "#1f77b4"), ("out", "#ff7f0e")):
        c = v[side]
        fig.add_bar(x=[side], y=[c["mean"]], marker_color=colour, showlegend=False, row=1, col=i,
                    error_y=dict(type="data", symmetric=False, array=[c["ci_high"] - c["mean"]],
                                 arrayminus=[c["mean"] - c["ci_low"]]))
fig.update_layout(title=f"In- vs out-of-distribution ({ood['rule']}; 95% CI over seeds)", height=380)
fig.show()

# %%
# NBVAL_CHECK_OUTPUT
pd.DataFrame({"gate input": list(results["gate_inputs"]), "detail": [g["detail"] for g in results["gate_inputs"].values()]})

# %%
results_path = record_results(run_dir, {**results, "seconds": seconds, "params": {name: globals()[name]
                                                                                   for name in stress.PARAMS}},
                              notebook="11_stress")
results["headline"]
