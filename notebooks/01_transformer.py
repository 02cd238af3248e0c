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
# # Phase 1 — the modular-addition transformer
#
# We train a one-layer transformer on c = (a + b) mod p from a seeded 30% of all pairs and
# check that it learned the *algorithm*, not a lookup: held-out accuracy on pairs it never
# saw, and the Fourier structure of its token embedding (Nanda et al. 2023) against a
# randomly initialised control of the same shape.
#
# The input layout is `[a, b, =]` and the model predicts c at `=`: the answer is never in
# the input. The earlier HUSAI layout `[BOS, a, +, b, =, c, EOS]` read at position −2 holds
# c itself; the full profile trains it too, so its effect is visible side by side.

# %% tags=["parameters"]
profile = "interactive"
run_dir = None
artifacts_dir = None
progress = True
p = 113
train_frac = 0.3
split_seed = 0
seed = 0
n_layers = 1
d_model = 128
n_heads = 4
d_mlp = 512
steps = 10000
lr = 1e-3
weight_decay = 1.0
eval_every = 100
fourier_top = 5
compare_legacy = False
legacy_steps = 1000
reuse_checkpoint = True

# %%
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from husai_core.phases import transformer as phase
from husai_core.report import headline_figure, record_results
from husai_core.runner import artifacts_dir as resolve_artifacts
from husai_core.task import answer_leak_positions, make_task

# Training and every number below come from husai_core.phases.transformer (`husai verify`
# re-derives this report through the same code).
art = resolve_artifacts(profile, artifacts_dir)
params = {name: globals()[name] for name in phase.PARAMS}
runs = phase.checkpoints(params, art, progress=progress)
results = phase.summarise(params, runs)
ckpt = runs["default"]
data = make_task(ckpt.task)
print(f"{len(data.train_idx)} training pairs, {len(data.test_idx)} held-out pairs; checkpoint in {ckpt.path}")

# %% [markdown]
# ## Training curves
# Full-batch AdamW (weight decay drives the model from memorising to the general
# algorithm). Held-out accuracy is measured on pairs that were never trained on.

# %%
def curves(history: pd.DataFrame, title: str) -> go.Figure:
    fig = make_subplots(rows=1, cols=2, subplot_titles=("cross-entropy loss", "accuracy"))
    for split, colour in (("train", "#1f77b4"), ("test", "#d62728")):
        fig.add_scatter(x=history.step, y=history[f"{split}_loss"], name=f"{split} loss", line_color=colour, row=1, col=1)
        fig.add_scatter(x=history.step, y=history[f"{split}_acc"], name=f"{split} accuracy", line_color=colour,
                        line_dash="dot", row=1, col=2)
    fig.update_yaxes(type="log", row=1, col=1)
    fig.update_xaxes(title_text="step")
    fig.update_layout(title=title, height=380)
    return fig


headline_figure(curves(ckpt.history, "Corrected layout [a, b, =]"), run_dir).show()

# %% [markdown]
# ## Did it learn the Fourier algorithm?
# Energy of the number-token embedding per frequency k (cos and sin pooled, constant term
# excluded), for the trained model and for an untrained model of the same shape.

# %%
fourier, headline = results["fourier"], results["headline"]
trained_energy, control_energy = pd.Series(fourier["trained_energy"][1:]), pd.Series(fourier["control_energy"][1:])
freqs = list(range(1, len(fourier["trained_energy"])))
fig = go.Figure()
fig.add_bar(x=freqs, y=trained_energy / trained_energy.sum(), name="trained")
fig.add_bar(x=freqs, y=control_energy / control_energy.sum(), name="random init (control)")
fig.update_layout(title=f"Embedding energy per frequency (top {fourier_top} hold {fourier['concentration']:.1%} vs "
                  f"{fourier['control_concentration']:.1%} for the control)", xaxis_title="frequency k",
                  yaxis_title="fraction of embedding energy", barmode="group", height=380)
fig.show()

# %%
summary = pd.DataFrame({
    "layout": ["[a, b, =] (default)"],
    "train accuracy": [headline["train accuracy"]], "held-out accuracy": [headline["held-out accuracy"]],
    f"Fourier top-{fourier_top} concentration": [fourier["concentration"]],
    "control concentration": [fourier["control_concentration"]],
    "key frequencies": [", ".join(map(str, fourier["key_frequencies"]))],
    "grokking step (test acc ≥ 99%)": [results["grokking_step"]],
})

# %% [markdown]
# ## The legacy layout, side by side
# `[BOS, a, +, b, =, c, EOS]` read at position −2: that position *is* the answer token, so
# the model can score perfectly by copying it — no modular arithmetic, no Fourier structure.

# %%
legacy = results["legacy"]
if legacy is not None:
    summary.loc[len(summary)] = ["[BOS, a, +, b, =, c, EOS] (legacy, read at −2)", legacy["train accuracy"],
                                 legacy["held-out accuracy"], legacy["fourier_concentration"],
                                 fourier["control_concentration"], ", ".join(map(str, legacy["key_frequencies"])),
                                 legacy["steps_to_99pct"]]
    curves(runs["legacy"].history,
           f"Legacy layout: the answer is in the input at positions {legacy['answer_in_input_at']}").show()
print("answer tokens found in the default input at positions:", answer_leak_positions(data) or "none")

# %%
# NBVAL_CHECK_OUTPUT
summary.round(4)

# %%
results_path = record_results(run_dir, results, notebook="01_transformer")
