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
# # Phase 2 — activations
#
# We read the trained transformer's activations at standard TransformerLens hook names, at
# the answer (`=`) position, for all p² pairs, and cache them as safetensors with a JSON
# metadata file (source checkpoint hash, hook, position, shape, statistics). Later phases
# train SAEs on this cache. Diagnostics: the PCA spectrum and the effective rank.
#
# **Effective rank convention:** exp of the Shannon entropy (nats) of the normalised
# singular values p_i = s_i / Σ s_j of the *centred* activation matrix (Roy & Vetterli
# 2007). Rank-1 data gives 1; d orthogonal directions of equal strength give d.

# %% tags=["parameters"]
profile = "interactive"
run_dir = None
artifacts_dir = None
progress = True
layouts = ["default"]
hooks = ["blocks.0.hook_resid_post", "blocks.0.hook_resid_mid", "blocks.0.hook_mlp_out"]
position = "answer"
batch_size = 4096
spectrum_components = 64

# %%
import numpy as np
import pandas as pd
import plotly.graph_objects as go

from husai_core.phases import activations as phase
from husai_core.report import headline_figure, record_results
from husai_core.runner import artifacts_dir as resolve_artifacts
from husai_core.runner import git_commit

# Extraction and every number below come from husai_core.phases.activations (`husai verify`
# re-derives this report through the same code).
art = resolve_artifacts(profile, artifacts_dir)
params = {name: globals()[name] for name in phase.PARAMS}
caches = phase.caches(params, art, git_commit=git_commit())
results = phase.summarise(params, caches)
print({k: str(v.path) for k, v in caches.items()})

# %% [markdown]
# ## Basic statistics per hook

# %%
stats = pd.DataFrame(results["stats"])
stats.round(3)

# %% [markdown]
# ## PCA spectrum
# Fraction of variance per principal component (log scale). A model that computes with a
# few Fourier frequencies concentrates its answer-position activations on few directions.

# %%
fig = go.Figure()
for name, evr in results["spectra"].items():
    layout, hook = name.split("|")
    fig.add_scatter(x=np.arange(1, len(evr) + 1), y=evr, mode="lines+markers", name=f"{layout} · {hook}")
fig.update_layout(title="PCA spectrum of cached activations", xaxis_title="component",
                  yaxis_title="explained variance ratio", yaxis_type="log", height=420)
headline_figure(fig, run_dir).show()

# %%
# NBVAL_CHECK_OUTPUT
stats[["layout", "hook", "rows", "d", "effective rank"]].round(3)

# %%
results_path = record_results(run_dir, results, notebook="02_activations")
