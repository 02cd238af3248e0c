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

from husai_core.fourier import fourier_summary
from husai_core.model import ModelConfig, TrainConfig, build_model, grokking_step, number_embedding, train_or_load
from husai_core.report import record_results
from husai_core.runner import artifacts_dir as resolve_artifacts
from husai_core.task import TaskConfig, answer_leak_positions, make_task

art = resolve_artifacts(profile, artifacts_dir)
model_cfg = ModelConfig(n_layers=n_layers, d_model=d_model, n_heads=n_heads, d_mlp=d_mlp)
layouts = {"default": steps} | ({"legacy": legacy_steps} if compare_legacy else {})
runs = {}
for layout, n_steps in layouts.items():
    task = TaskConfig(p=p, train_frac=train_frac, split_seed=split_seed, layout=layout)
    train = TrainConfig(steps=n_steps, lr=lr, weight_decay=weight_decay, eval_every=eval_every, seed=seed)
    runs[layout] = train_or_load(art / "transformer" / layout, task, model_cfg, train, reuse=reuse_checkpoint,
                                 progress=progress)
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


curves(ckpt.history, "Corrected layout [a, b, =]").show()

# %% [markdown]
# ## Did it learn the Fourier algorithm?
# Energy of the number-token embedding per frequency k (cos and sin pooled, constant term
# excluded), for the trained model and for an untrained model of the same shape.

# %%
trained = fourier_summary(number_embedding(ckpt.model, p), top=fourier_top)
control_model = build_model(ckpt.task, model_cfg, seed=seed + 10_000)
control = fourier_summary(number_embedding(control_model, p), top=fourier_top)
freqs = list(range(1, len(trained.energy)))
fig = go.Figure()
fig.add_bar(x=freqs, y=trained.energy[1:] / trained.energy[1:].sum(), name="trained")
fig.add_bar(x=freqs, y=control.energy[1:] / control.energy[1:].sum(), name="random init (control)")
fig.update_layout(title=f"Embedding energy per frequency (top {fourier_top} hold {trained.concentration:.1%} vs "
                  f"{control.concentration:.1%} for the control)", xaxis_title="frequency k",
                  yaxis_title="fraction of embedding energy", barmode="group", height=380)
fig.show()

# %%
final = ckpt.history.iloc[-1]
summary = pd.DataFrame({
    "layout": ["[a, b, =] (default)"],
    "train accuracy": [final.train_acc], "held-out accuracy": [final.test_acc],
    f"Fourier top-{fourier_top} concentration": [trained.concentration],
    "control concentration": [control.concentration],
    "key frequencies": [", ".join(map(str, trained.key_frequencies))],
    "grokking step (test acc ≥ 99%)": [grokking_step(ckpt.history)],
})
headline = {
    "held-out accuracy": float(final.test_acc),
    "train accuracy": float(final.train_acc),
    f"Fourier top-{fourier_top} concentration": trained.concentration,
    "random-control concentration": control.concentration,
    "key frequencies": trained.key_frequencies,
    "steps": int(final.step),
}

# %% [markdown]
# ## The legacy layout, side by side
# `[BOS, a, +, b, =, c, EOS]` read at position −2: that position *is* the answer token, so
# the model can score perfectly by copying it — no modular arithmetic, no Fourier structure.

# %%
legacy_result = None
if "legacy" in runs:
    legacy = runs["legacy"]
    legacy_data = make_task(legacy.task)
    leaks = answer_leak_positions(legacy_data)
    legacy_fourier = fourier_summary(number_embedding(legacy.model, p), top=fourier_top)
    lfinal = legacy.history.iloc[-1]
    summary.loc[len(summary)] = ["[BOS, a, +, b, =, c, EOS] (legacy, read at −2)", lfinal.train_acc, lfinal.test_acc,
                                 legacy_fourier.concentration, control.concentration,
                                 ", ".join(map(str, legacy_fourier.key_frequencies)), grokking_step(legacy.history)]
    curves(legacy.history, f"Legacy layout: the answer is in the input at positions {leaks}").show()
    legacy_result = {"held-out accuracy": float(lfinal.test_acc), "fourier_concentration": legacy_fourier.concentration,
                     "answer_in_input_at": leaks, "steps_to_99pct": grokking_step(legacy.history)}
    headline["legacy held-out accuracy"] = float(lfinal.test_acc)
    headline[f"legacy Fourier top-{fourier_top} concentration"] = legacy_fourier.concentration
print("answer tokens found in the default input at positions:", answer_leak_positions(data) or "none")

# %%
# NBVAL_CHECK_OUTPUT
summary.round(4)

# %%
results_path = record_results(run_dir, {
    "headline": headline,
    "task": ckpt.task.to_dict(),
    "checkpoint": str(ckpt.path), "weights_sha256": ckpt.sha256,
    "fourier": {"trained_energy": trained.energy.tolist(), "control_energy": control.energy.tolist(),
                "key_frequencies": trained.key_frequencies, "concentration": trained.concentration,
                "control_concentration": control.concentration, "top": fourier_top},
    "grokking_step": grokking_step(ckpt.history),
    "legacy": legacy_result,
}, notebook="01_transformer")
