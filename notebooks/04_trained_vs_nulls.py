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
# # Phase 4 — do SAEs trained with different seeds agree more than the strongest null?
#
# One configuration (default TopK) trained under several seeds on the transformer's
# activations is compared with **trained nulls** — SAEs of the same config, steps, seed
# protocol and trainer, trained on data without the structure under test:
#
# | null | rows the null SAEs train on |
# |---|---|
# | `gaussian_matched` | Gaussian rows with the activations' mean and full covariance (the geometry, no sparse features) |
# | `random_transformer` | activations of an *untrained* transformer of the same architecture, same hook and position |
# | `isotropic` | none: untrained SAEs (i.i.d. isotropic decoder rows) — the weakest null, labelled so |
#
# Every condition trains on the same seeded share of its rows and is evaluated on the rest
# (**held-out** rows). Consistency is measured with the literature's metrics (definitions in
# `husai_core.matching`): max-|cos| **PWMCC** and its **signed** form, **PW-MCC** (Song et al.
# 2025, Hungarian on signed cosine), the **shared-latent fraction** (Paulo & Belrose 2025,
# decoder *and* encoder cosine > threshold), and **activation matching** (Hungarian-matched
# Pearson correlation of latents on the same held-out rows) — each over *all* latents and over
# latents *alive* on held-out rows. Pair values share seeds, so CIs come from a bootstrap
# **over seeds**, tests are seed-level permutation tests, and LCB = trained CI low − null CI
# high. **The headline is the verdict against the strongest null** (the null with the highest
# consistency on the headline metric).
#
# `activations` (default None: this project's cache and transformer) may name any activation
# source `husai_core.sources.open_source` reads (a per-dataset folder, a SAELens activation
# cache, ...; `hook` picks its tensor). Its training rows are streamed from disk; held-out rows
# are read into memory (an evenly spaced subset when they exceed 32 MiB); the Gaussian null is
# drawn in memory as for our cache. Foreign activations have no transformer, so the
# `random_transformer` null and the Fourier ground truth are dropped (with a printed note).

# %% tags=["parameters"]
profile = "interactive"
run_dir = None
artifacts_dir = None
progress = True
seeds = [42, 123, 456, 789, 1011, 2022, 3033, 4044]
activations = None
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
nulls = ["gaussian_matched", "random_transformer", "isotropic"]
null_data_seed = 1
reference_backend = "sae_lens"
snapshot_first = 25
convergence_seeds = 4
convergence_tol = 0.01
headline_metric = "pwmcc/all"
shared_threshold = 0.7
n_resamples = 10000
stats_seed = 0
alpha = 0.05
fourier_top = 5
gt_threshold = 0.7

# %%
import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from husai_core.activations import load_cache
from husai_core.comparison import (compare_conditions, condition_views, equal_live_comparison, ground_truth_recovery,
                                   headline_verdict)
from husai_core.conditions import ConditionData, condition_data, heldout_split, train_or_load_condition
from husai_core.consistency import disjoint_seeds
from husai_core.convergence import convergence_table, plateau
from husai_core.experiments import load_snapshots, sae_config
from husai_core.fourier import answer_fourier_directions, fourier_summary
from husai_core.model import load_checkpoint, number_embedding
from husai_core.nulls import check_null
from husai_core.report import record_results
from husai_core.runner import artifacts_dir as resolve_artifacts
from husai_core.sae.trainer import log_spaced_steps
from husai_core.sources import open_source, source_condition_data, storage_layout

art = resolve_artifacts(profile, artifacts_dir)
if activations is None:  # this project's cache and transformer
    transformer = load_checkpoint(art / "transformer" / layout)
    cache = load_cache(art / "activations" / layout)
    x = cache.get(hook)
    source = None
else:  # any supported activation source, streamed from disk; there is no transformer
    transformer = cache = None
    source = x = open_source(activations, hook=hook)
    hook = x.hook
    print(f"activations: {x.describe()}")
    if "random_transformer" in nulls:
        print("note: the random_transformer null needs the transformer that made the activations, which foreign "
              "activations do not have: dropped")
        nulls = [n for n in nulls if n != "random_transformer"]
store_layout = storage_layout(layout, source)
split = heldout_split(x.shape[0], heldout_fraction, split_seed)
cfg = sae_config(x.shape[1], {"architecture": architecture, "d_sae": d_sae, "k": k, "steps": steps,
                              "batch_size": batch_size, "lr": lr, **sae_params})
snapshot_steps = tuple(log_spaced_steps(cfg.steps, snapshot_first))
null_seeds = disjoint_seeds(seeds, len(seeds))
for null in nulls:
    check_null(null)

if source is None:
    data = {"trained": condition_data("trained", x, split)}
    for null in nulls:
        data[null] = condition_data(null, x, split, data_seed=null_data_seed, checkpoint=transformer, hook=hook)
else:
    data = {name: source_condition_data(name, source, split, data_seed=null_data_seed) for name in ["trained", *nulls]}
saes = {"trained": train_or_load_condition(art, store_layout, hook, cfg, data["trained"], seeds,
                                           snapshot_steps=snapshot_steps, progress=progress)}
for null in nulls:
    saes[null] = train_or_load_condition(art, store_layout, hook, cfg, data[null], null_seeds,
                                         snapshot_steps=snapshot_steps, progress=progress)
backend_name = None
if reference_backend:
    backend_name = f"trained ({reference_backend})"
    data[backend_name] = data["trained"]
    if source is not None:  # SAELens's trainer takes its rows in memory
        data[backend_name] = ConditionData("trained", data["trained"].train.materialise(), data["trained"].heldout,
                                           data["trained"].description + " (read into memory for SAELens)")
    saes[backend_name] = train_or_load_condition(art, store_layout, hook, cfg, data[backend_name], seeds,
                                                 backend=reference_backend, progress=progress)
print(f"{cfg.architecture} d_sae {cfg.d_sae}, k {cfg.k}, {cfg.steps} steps x {cfg.batch_size} rows; "
      f"{len(split[0])} training / {len(split[1])} held-out rows; trained seeds {seeds}, null seeds {null_seeds}")
pd.DataFrame({name: d.description for name, d in data.items()}, index=["rows"]).T

# %% [markdown]
# ## Reconstruction on held-out rows (training rows beside them)
# EV = 1 − Σ_d Var_d(x − x̂) / Σ_d Var_d(x); L0 = mean non-zero latents per row; dead = share of
# latents that never fire on the evaluated rows. Each condition on its own rows.

# %%
def recon_row(name: str, group: list) -> dict:
    held = [s.metrics["heldout"] for s in group]
    train = [s.metrics for s in group if "ev" in s.metrics]
    row = {"condition": name, "held-out EV": np.mean([h["ev"] for h in held]),
           "held-out L0": np.mean([h["l0"] for h in held]),
           "held-out dead fraction": np.mean([h["dead_fraction"] for h in held])}
    if train:
        row |= {"training-row EV": np.mean([t["ev"] for t in train]),
                "training-row dead fraction": np.mean([t["dead_fraction"] for t in train])}
    return row


recon = pd.DataFrame([recon_row(n, g) for n, g in saes.items()]).set_index("condition")
recon.round(4)

# %% [markdown]
# ## The condition × metric table
# Mean over seed pairs with its 95% bootstrap-over-seeds CI, for every metric and scope.

# %%
views = {name: condition_views(group, data[name].heldout) for name, group in saes.items()}
comparison = compare_conditions(views, "trained", nulls, threshold=shared_threshold, n_resamples=n_resamples,
                                stats_seed=stats_seed, alpha=alpha, progress=progress)
table = pd.DataFrame({name: {key: f"{b['mean']:.4f} [{b['ci_low']:.4f}, {b['ci_high']:.4f}]" for key, b in cols.items()}
                      for name, cols in comparison["table"].items()})
table

# %%
fig = go.Figure()
keys = list(comparison["table"]["trained"])
colours = {"trained": "#1f77b4", "gaussian_matched": "#d62728", "random_transformer": "#ff7f0e",
           "isotropic": "#7f7f7f", backend_name: "#2ca02c"}
for name, cols in comparison["table"].items():
    ks = [k for k in keys if k in cols]
    fig.add_scatter(x=ks, y=[cols[k]["mean"] for k in ks], mode="markers", name=name,
                    marker=dict(size=10, color=colours.get(name)),
                    error_y=dict(type="data", symmetric=False, array=[cols[k]["ci_high"] - cols[k]["mean"] for k in ks],
                                 arrayminus=[cols[k]["mean"] - cols[k]["ci_low"] for k in ks]))
fig.update_layout(title="Consistency by condition (95% CI over seeds)", yaxis_title="value", height=450,
                  xaxis_tickangle=-30)
fig.show()

# %% [markdown]
# ## Verdicts against every null
# Rule (`husai_core.stats.verdict`): *present* when LCB > 0 and p < α; *absent* when p ≥ α and
# the trained mean is inside (or below) the null's CI; otherwise *inconclusive*.
# Activation matching has no cross-condition pairs (each condition has its own rows), so its
# p-value is a bootstrap-over-seeds difference test.

# %%
verdict_rows = []
for null, per_key in comparison["tests"].items():
    for key, t in per_key.items():
        verdict_rows.append({"null": null, "metric": key, "difference": t["difference"], "LCB": t["lcb"],
                             "p": t["p_value"], "test": t["test"], "verdict": t["verdict"]})
verdicts = pd.DataFrame(verdict_rows)
verdicts.pivot(index="metric", columns="null", values="verdict")

# %%
verdicts.round(5)

# %%
headline = headline_verdict(comparison, headline_metric)
alive_headline = headline_verdict(comparison, headline_metric.split("/")[0] + "/alive")
print(headline["text"])
print(alive_headline["text"])

# %% [markdown]
# ## Our trainer vs SAELens's, on identical rows and config
# The reference backend trains the same config with SAELens's own trainer (fed these cached
# rows, saved in the SAELens format and imported). Comparing consistency at an equal number
# of live latents: each dictionary keeps its N most frequently firing held-out latents, with N
# the smallest live count — so fewer live latents cannot pass for more agreement.

# %%
backend_cmp = None
if backend_name:
    backend_cmp = equal_live_comparison(views["trained"], views[backend_name], threshold=shared_threshold,
                                        n_resamples=n_resamples, stats_seed=stats_seed)
    side = pd.DataFrame({
        "ours (husai)": {**recon.loc["trained"].to_dict(),
                         **{f"{k}": comparison["table"]["trained"][k]["mean"] for k in comparison["table"]["trained"]},
                         **{f"{k} @ top {backend_cmp['n_latents']} latents": v["mean"] for k, v in backend_cmp["a"].items()}},
        f"SAELens ({reference_backend})": {**recon.loc[backend_name].to_dict(),
                                           **{f"{k}": comparison["table"][backend_name][k]["mean"]
                                              for k in comparison["table"][backend_name]},
                                           **{f"{k} @ top {backend_cmp['n_latents']} latents": v["mean"]
                                              for k, v in backend_cmp["b"].items()}},
    })
    display(side.round(4))

# %% [markdown]
# ## Ground truth: the task's Fourier directions
# The transformer computes (a + b) mod p with a few key frequencies; the activation-space
# directions of cos/sin(2πkc/p) for those frequencies are known features. How many each seed's
# dictionary recovers (best |cos| ≥ threshold), per condition, with a bootstrap CI over seeds —
# a check that does not depend on any null.

# %%
recovery, key_freqs = {}, None
if transformer is not None:
    p = transformer.task.p
    key_freqs = fourier_summary(number_embedding(transformer.model, p), top=fourier_top).key_frequencies
    gt = answer_fourier_directions(x, cache.labels["c"], p, key_freqs)
    recovery = ground_truth_recovery({name: [s.sae.W_dec.detach() for s in group] for name, group in saes.items()}, gt,
                                     threshold=gt_threshold, n_resamples=n_resamples, stats_seed=stats_seed)
else:
    print("note: no ground truth for foreign activations (the Fourier directions come from our transformer's task)")
pd.DataFrame({name: {"mean recovered": r["mean"], "CI low": r["ci_low"], "CI high": r["ci_high"],
                     "per seed": r["counts"]} for name, r in recovery.items() if isinstance(r, dict)}).T

# %% [markdown]
# ## Convergence: consistency and EV against training steps
# Snapshots kept at doubling step counts for the first seeds of each trained condition.
# Plateau criterion: the last doubling of steps moves the headline metric by < the tolerance.

# %%
conv_names = ["trained"] + [n for n in nulls if n != "isotropic"]
snaps = {name: [load_snapshots(s.path, cfg) for s in saes[name][:convergence_seeds]] for name in conv_names}
conv = convergence_table(snaps, {name: data[name].heldout for name in conv_names}, threshold=shared_threshold)
plateaus = {name: plateau(conv, name, headline_metric, convergence_tol) for name in conv_names}
show = [m for m in conv.metric.unique() if m.endswith("/all")] + ["heldout_ev"]
fig = make_subplots(rows=2, cols=(len(show) + 1) // 2, subplot_titles=show)
for i, metric in enumerate(show):
    for name in conv_names:
        t = conv[(conv.condition == name) & (conv.metric == metric)]
        fig.add_scatter(x=t.step, y=t.value, name=name, legendgroup=name, showlegend=i == 0,
                        line=dict(color=colours.get(name)), row=i // ((len(show) + 1) // 2) + 1,
                        col=i % ((len(show) + 1) // 2) + 1)
fig.update_xaxes(type="log", title_text="steps")
fig.update_layout(title="Consistency (mean over seed pairs) and held-out EV against training steps", height=560)
fig.show()
for pl in plateaus.values():
    print(pl["statement"])

# %%
# NBVAL_CHECK_OUTPUT
pd.DataFrame({"verdict": [headline["verdict"]], "strongest null": [headline["strongest_null"]],
              "metric": [headline["metric"]]})

# %%
results_path = record_results(run_dir, {
    "headline": {
        "verdict": headline["verdict"], "against (strongest null)": headline["strongest_null"],
        "metric": headline_metric, "trained": headline["trained"], "strongest null": headline["null"],
        "LCB": headline["lcb"], "p": headline["p_value"],
        "alive-latent verdict": alive_headline["verdict"],
        "held-out EV": float(recon.loc["trained", "held-out EV"]),
        "held-out dead fraction": float(recon.loc["trained", "held-out dead fraction"]),
        "converged": plateaus["trained"]["converged"],
        **({f"SAELens {headline_metric}": comparison["table"][backend_name][headline_metric]["mean"]} if backend_name else {}),
        "Fourier directions recovered (trained)": recovery["trained"]["mean"] if recovery else None,
    },
    "verdict": headline["text"] + " Verdicts against each null: "
               + ", ".join(f"{n}: {v}" for n, v in headline["by_null"].items()) + ".",
    "config": cfg.to_dict(), "seeds": seeds, "null_seeds": null_seeds, "hook": hook, "layout": layout,
    "activations": None if source is None else {"path": str(activations), "source": source.describe(),
                                                "storage_layout": store_layout, "nulls": nulls},
    "split": {"heldout_fraction": heldout_fraction, "split_seed": split_seed, "n_train": len(split[0]),
              "n_heldout": len(split[1])},
    "conditions": {name: {"description": d.description, "checkpoints": [str(s.path) if s.path else None for s in saes[name]],
                          "fingerprints": [s.metrics.get("data_fingerprint") for s in saes[name]]}
                   for name, d in data.items()},
    "reconstruction": recon.reset_index().to_dict(orient="records"),
    "comparison": comparison, "headline_verdict": headline, "alive_headline_verdict": alive_headline,
    "backend_comparison": backend_cmp, "ground_truth": recovery, "key_frequencies": key_freqs,
    "convergence": conv.to_dict(orient="records"), "plateau": plateaus,
}, notebook="04_trained_vs_nulls")
