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
# # Phase 12 — evaluation: are the SAEs faithful to the model, and do their latents carry the task's variables?
#
# The offline equivalents of SAEBench's **core** and **sparse-probing** evaluations, computed on
# the modular-addition task for phase 4's SAEs (same configuration and seeds, loaded from the
# artifact store by key; trained here only if absent) and for each trained null's SAEs.
#
# **Faithfulness.** Each SAE's reconstruction x̂ = decode(encode(x)) replaces the activation at its
# hook on the answer position (TransformerLens `run_with_hooks`), and
#
#   loss recovered = (CE_ablated − CE_spliced) / (CE_ablated − CE_clean)
#
# with CE the model's cross-entropy on the answer c, and the hook either **zero-ablated**
# (SAELens's / SAEBench's form) or **mean-ablated** (the mean activation of the SAE training rows).
# SAELens's own `evals.get_recons_loss` does not run on this model — it scores next-token prediction
# at every position, and this model's output vocabulary (the numbers) has no `=` token to predict —
# so the published definition is implemented in `husai_core.faithfulness`; a test checks that the
# same splice reproduces SAELens's numbers on a small language model, where its code does run.
# Rows (`eval_rows`, the first set is the headline and the release gate's input): `sae_heldout`, rows
# no SAE trained on, and `task_test`, pairs the transformer never trained on. With the default seeds
# these two sets do not meet: the task split and the SAE split draw the same seeded permutation, so
# every SAE held-out row is a pair the transformer trained on, and every transformer held-out pair
# is an SAE training row.
#
# **Sparse probing.** Binary predicates of the operands and the answer (`c:0` is c = 0, `c%2:0` is
# c even, …; one-vs-rest, classes balanced as SAEBench does), the top-k latents picked by SAEBench's
# mean-difference rule on training rows, a logistic probe on them, accuracy and AUC on held-out
# rows — against the same probe on the raw activations (top-k dimensions, and all of them).
#
# **Nulls.** The null SAEs encode the *real* activations here. `gaussian_matched` SAEs were fit to
# Gaussian rows with the activations' covariance; `random_transformer` SAEs were fit to an
# *untrained* transformer's activations, so spliced into the trained model they test whether a
# dictionary fit to other data still reconstructs what this model uses — a different question
# from the consistency null of phase 4. Statistics are per seed, with bootstrap-over-seeds CIs;
# trained vs the strongest null (highest mean) gets LCB = trained CI low − null CI high and a
# seed-level permutation p.
#
# **External harness.** For SAEs of a real language model (`saebench_saes`: SAELens folders), the
# PyPI `sae-bench` evaluations run offline in subprocesses when the model and datasets are in the
# local Hugging Face cache; otherwise a preflight says in one line what is missing and nothing runs.

# %% tags=["parameters"]
profile = "interactive"
run_dir = None
artifacts_dir = None
progress = True
seeds = [42, 123, 456, 789, 1011, 2022, 3033, 4044]
layout = "default"
hook = "blocks.0.hook_resid_post"
architecture = "topk"
d_sae = 1024
k = 32
steps = 2000
batch_size = 1024
lr = 3e-4
sae_params = {}
heldout_fraction = 0.2
split_seed = 0
nulls = ["gaussian_matched", "random_transformer"]
null_data_seed = 1
snapshot_first = 25
eval_rows = ["sae_heldout", "task_test"]
eval_batch_size = 4096
probe_tasks = ["a:0", "a:1", "a:2", "b:0", "b:1", "b:2", "c:0", "c:1", "c:2", "c%2:0", "c%3:0"]
probe_k = [1, 2, 5, 20]
probe_max_train = 4000
probe_max_test = 1000
probe_seed = 0
headline_probe_k = 5
n_resamples = 10000
stats_seed = 0
saebench_saes = []
saebench_model = None
saebench_evals = ["core", "sparse_probing"]

# %%
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go

from husai_core.phases import evaluation as phase
from husai_core.report import headline_figure, record_results
from husai_core.runner import artifacts_dir as resolve_artifacts
from husai_core.runner import runs_path
from husai_core.saebench import run_saebench

# Every number below comes from husai_core.phases.evaluation (`husai verify` re-derives it there).
art = resolve_artifacts(profile, artifacts_dir)
params = {name: globals()[name] for name in phase.PARAMS}
prep = phase.conditions(params, art, progress=progress)
results = phase.analyse(params, prep)
faith, probes = results["faithfulness"][eval_rows[0]], results["probing"]
cfg = prep["cfg"]
print(f"{cfg.architecture} d_sae {cfg.d_sae}, k {cfg.k} at {prep['hook']}; trained seeds {prep['seeds']}, "
      f"null seeds {prep['null_seeds']}; evaluation rows {results['eval_rows']}")
pd.DataFrame({name: d.description for name, d in prep["data"].items()}, index=["rows"]).T

# %% [markdown]
# ## Faithfulness: the reconstruction spliced into the model
# The clean model and the two ablations are computed once per row set; each SAE gives one spliced
# loss. Tables for every row set; figures for the first. The ratio saturates when the model is
# near-certain (clean CE ≈ 0) and a reconstruction with EV ≈ 1 leaves it so: then read the spliced
# CE and accuracy, and the EV of the real activations, beside it.

# %%
pd.concat({name: pd.DataFrame({"clean": f["clean"], **{f"{a}-ablated": v for a, v in f["ablated"].items()}}).T
           for name, f in results["faithfulness"].items()}).round(4)


# %%
def ci_text(s):
    return "undefined" if s is None else f"{s['mean']:.4f} [{s['ci_low']:.4f}, {s['ci_high']:.4f}]"


metrics = ["loss_recovered_zero", "loss_recovered_mean", "accuracy_spliced", "ce_spliced", "ev", "l0"]
pd.concat({name: pd.DataFrame({c: {m: ci_text(s[m]) for m in metrics} for c, s in f["summary"].items()}).T
           for name, f in results["faithfulness"].items()})

# %%
colours = {"trained": "#1f77b4", "gaussian_matched": "#d62728", "random_transformer": "#ff7f0e", "isotropic": "#7f7f7f"}
per_seed = pd.DataFrame(faith["per_seed"])
fig = go.Figure()
for c, group in per_seed.groupby("condition", sort=False):
    for m, symbol in (("loss_recovered_zero", "circle"), ("loss_recovered_mean", "diamond")):
        fig.add_scatter(x=[f"{c}<br>{m.rsplit('_', 1)[1]} abl."] * len(group), y=group[m], mode="markers",
                        marker=dict(color=colours.get(c), symbol=symbol, size=9, opacity=0.7), name=f"{c} ({m})",
                        text=[f"seed {s}" for s in group.seed], showlegend=False)
        s = faith["summary"][c][m]
        if s is not None:
            fig.add_scatter(x=[f"{c}<br>{m.rsplit('_', 1)[1]} abl."], y=[s["mean"]], mode="markers",
                            marker=dict(color="black", symbol="line-ew-open", size=30), showlegend=False,
                            error_y=dict(type="data", symmetric=False, array=[s["ci_high"] - s["mean"]],
                                         arrayminus=[s["mean"] - s["ci_low"]]))
fig.add_hline(y=1.0, line_dash="dot", annotation_text="as good as the activation")
fig.add_hline(y=0.0, line_dash="dot", annotation_text="as bad as ablating it")
fig.update_layout(title="Loss recovered per seed (dots) and mean with 95% CI over seeds", yaxis_title="loss recovered",
                  height=450)
headline_figure(fig, run_dir).show()

# %%
fig = go.Figure()
for c, group in per_seed.groupby("condition", sort=False):
    fig.add_scatter(x=group.ev, y=group.loss_recovered_zero, mode="markers", name=c,
                    marker=dict(color=colours.get(c), size=9), text=[f"seed {s}" for s in group.seed])
fig.update_layout(title="EV on the real evaluation rows vs loss recovered, per seed",
                  xaxis_title="EV of the real activations", yaxis_title="loss recovered (zero ablation)", height=420)
fig.show()
pd.DataFrame({m: t for m, t in faith["tests"].items() if t}).T

# %% [markdown]
# ## Sparse probing: top-k latents vs raw activations
# One value per seed = mean over tasks of that seed's probes; the raw-activation probes are the same
# for every condition (dashed lines).

# %%
fig = go.Figure()
for c, s in probes["summary"].items():
    ks = probes["k"]
    vals = [s[f"accuracy@k{k}"] for k in ks]
    fig.add_scatter(x=ks, y=[v["mean"] for v in vals], mode="lines+markers", name=c, line=dict(color=colours.get(c)),
                    error_y=dict(type="data", symmetric=False, array=[v["ci_high"] - v["mean"] for v in vals],
                                 arrayminus=[v["mean"] - v["ci_low"] for v in vals]))
raw_k = [k for k in probes["k"] if str(k) in probes["raw_mean"]]
fig.add_scatter(x=raw_k, y=[probes["raw_mean"][str(k)]["accuracy"] for k in raw_k], mode="lines+markers",
                name="raw top-k dims", line=dict(color="black", dash="dash"))
fig.add_hline(y=probes["raw_mean"]["all"]["accuracy"], line_dash="dot", annotation_text="raw, all dimensions")
fig.update_xaxes(type="log", title_text="k (latents or dimensions)")
fig.update_layout(title="Held-out probe accuracy (mean over tasks, 95% CI over seeds)", yaxis_title="accuracy",
                  height=450)
fig.show()

# %%
rows = pd.DataFrame(probes["per_seed"])
by_group = rows.groupby(["condition", "group", "k"])[["accuracy", "auc"]].mean().unstack("k")
raw = pd.DataFrame(probes["raw"]).groupby(["group", "k"])[["accuracy", "auc"]].mean().unstack("k")
raw.index = pd.MultiIndex.from_product([["raw activations"], raw.index], names=["condition", "group"])
pd.concat([by_group, raw]).round(3)

# %%
pd.DataFrame({m: t for m, t in probes["tests"].items() if t}).T

# %% [markdown]
# ## External harness: SAEBench on real-LM SAEs
# Only for SAELens folders of SAEs on a Hugging Face language model (`saebench_saes`), offline.

# %%
external = run_saebench(saebench_saes, (runs_path(run_dir) if run_dir else art) / "saebench", saebench_evals, saebench_model)
print(external.get("missing") or pd.DataFrame(external["runs"]))

# %%
print(results["verdict"])

# %%
results_path = record_results(run_dir, {**results, "external_harness": external}, notebook="12_evaluation")
