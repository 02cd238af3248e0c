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
# # Phase 3 — train SAEs for one configuration, one seed per run
#
# Batch mode runs this notebook once per seed (`husai run 03_sae_training --seeds 42,123,456`);
# every seed of one configuration lands in the same folder, where phase 4 finds them.
# Training is step-based (batches sampled from the cached activations, not epochs), with
# lr warm-up and decay; every loss term is logged separately. A seeded share of the rows
# (`heldout_fraction`, `split_seed`; the same split phase 4 uses) is never trained on: EV, L0
# and dead fraction are reported on those held-out rows, training-row figures beside them.
# The SAE is also kept after doubling step counts (25, 50, 100, ...) for phase 4's
# convergence analysis.
#
# `activations` (default None: this project's cache from phase 2) may instead name any
# activation source `husai_core.sources.open_source` reads — a folder of per-dataset
# `<dataset>_<hook>.pt|.safetensors` files, a SAELens activation cache (`CacheActivationsRunner`
# output) or another of our caches; `hook` picks its tensor. Its rows are streamed from disk
# batch by batch (bounded memory), held-out rows are read into memory (an evenly spaced subset
# when they exceed 32 MiB), and its SAEs are kept under their own layout folder (`ext-<source>`).
#
# Metric definitions (one each, `husai_core.metrics`): EV = 1 − Σ_d Var_d(x − x̂) / Σ_d Var_d(x);
# L0 = mean number of non-zero latents per row; dead fraction = share of latents that never
# fire over the evaluated rows (the window is stated in the table); MSE = mean over elements.

# %% tags=["parameters"]
profile = "interactive"
run_dir = None
artifacts_dir = None
progress = True
seed = 42
activations = None
layout = "default"
hook = "blocks.0.hook_resid_post"
transcoder_target = None
architecture = "topk"
d_sae = 1024
k = 32
steps = 2000
batch_size = 1024
lr = 3e-4
sae_params = {}
heldout_fraction = 0.2
split_seed = 0
snapshot_first = 25
reuse_checkpoint = True

# %%
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from husai_core.phases import sae_training as phase
from husai_core.report import headline_figure, record_results
from husai_core.runner import artifacts_dir as resolve_artifacts

# Training and the recorded numbers come from husai_core.phases.sae_training (`husai verify`
# re-derives this report through the same code).
art = resolve_artifacts(profile, artifacts_dir)
params = {name: globals()[name] for name in phase.PARAMS}
seed_run = phase.train(params, art, progress=progress)
trained, folder, cfg = seed_run.sae, seed_run.folder, seed_run.cfg
if seed_run.source is not None:
    print(f"activations: {seed_run.source.describe()}")
print(f"{cfg.architecture} SAE, d_in {cfg.d_in} -> d_sae {cfg.d_sae}, {cfg.steps} steps of {cfg.batch_size} rows; "
      f"seed {seed} saved in {trained.path}")

# %% [markdown]
# ## Loss terms during training
# Each term is logged on its own; the total is what the optimiser sees.

# %%
hist = trained.history
terms = [c for c in ("loss", "mse", "l1", "l0", "aux", "matryoshka") if c in hist and hist[c].abs().sum() > 0]
fig = make_subplots(rows=1, cols=2, subplot_titles=("loss terms", "batch EV and dead fraction"))
for term in terms:
    fig.add_scatter(x=hist.tokens, y=hist[term], name=term, row=1, col=1)
fig.add_scatter(x=hist.tokens, y=hist.ev, name="EV (batch)", row=1, col=2)
fig.add_scatter(x=hist.tokens, y=hist.dead_fraction, name=f"dead fraction ({cfg.dead_tokens:,}-token window)", row=1, col=2)
fig.update_yaxes(type="log", row=1, col=1)
fig.update_xaxes(title_text="tokens seen")
fig.update_layout(title=f"Seed {seed}: {cfg.architecture}, d_sae {cfg.d_sae}", height=400)
headline_figure(fig, run_dir).show()

# %% [markdown]
# ## Every seed of this configuration trained so far
# Held-out rows first (never trained on); training-row figures beside them. The dead fraction's
# window is the evaluated rows.

# %%
rows = []
for seed_dir in sorted(folder.glob("seed*/metrics.json")):
    m = pd.read_json(seed_dir, typ="series")
    held = m.get("heldout") or {}
    rows.append({"seed": int(m["seed"]), "held-out EV": held.get("ev"), "held-out L0": held.get("l0"),
                 "held-out dead fraction": held.get("dead_fraction"), "held-out rows": held.get("n_rows"),
                 "training EV": m["ev"], "training dead fraction": m["dead_fraction"],
                 "training rows": int(m["dead_window_tokens"])})
per_seed = pd.DataFrame(rows).sort_values("seed").reset_index(drop=True)
per_seed.round(4)

# %%
results_path = record_results(run_dir, phase.summarise(params, seed_run), notebook="03_sae_training")
