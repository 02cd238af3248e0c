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
import torch

from husai_core.activations import (effective_rank, explained_variance_ratio, extract_activations, load_cache,
                                    save_cache)
from husai_core.model import load_checkpoint
from husai_core.report import record_results
from husai_core.runner import artifacts_dir as resolve_artifacts
from husai_core.runner import git_commit
from husai_core.task import make_task

art = resolve_artifacts(profile, artifacts_dir)
caches = {}
for layout in layouts:
    ckpt = load_checkpoint(art / "transformer" / layout)
    data = make_task(ckpt.task)
    acts = extract_activations(ckpt.model, data.tokens, hooks, position=position, answer_pos=data.answer_pos,
                               batch_size=batch_size)
    split = np.zeros(len(data.labels), dtype=np.int64)
    split[data.test_idx.numpy()] = 1  # 0 = train pair, 1 = held-out pair
    labels = {"a": data.a, "b": data.b, "c": data.labels, "split": torch.from_numpy(split)}
    meta = {"source_checkpoint": str(ckpt.path), "source_sha256": ckpt.sha256, "layout": layout,
            "position": position, "answer_pos": data.answer_pos, "task": ckpt.task.to_dict(), "git_commit": git_commit()}
    caches[layout] = load_cache(save_cache(art / "activations" / layout, acts, labels, meta))  # read back = verified
print({k: str(v.path) for k, v in caches.items()})

# %% [markdown]
# ## Basic statistics per hook

# %%
rows = []
for layout, cache in caches.items():
    for hook, x in cache.acts.items():
        rows.append({"layout": layout, "hook": hook, "rows": x.shape[0], "d": x.shape[1],
                     "mean": float(x.mean()), "std": float(x.std()), "mean ‖x‖": float(x.norm(dim=1).mean()),
                     "effective rank": effective_rank(x)})
stats = pd.DataFrame(rows)
stats.round(3)

# %% [markdown]
# ## PCA spectrum
# Fraction of variance per principal component (log scale). A model that computes with a
# few Fourier frequencies concentrates its answer-position activations on few directions.

# %%
fig = go.Figure()
for layout, cache in caches.items():
    for hook, x in cache.acts.items():
        evr = explained_variance_ratio(x)[:spectrum_components]
        fig.add_scatter(x=np.arange(1, len(evr) + 1), y=evr, mode="lines+markers", name=f"{layout} · {hook}")
fig.update_layout(title="PCA spectrum of cached activations", xaxis_title="component",
                  yaxis_title="explained variance ratio", yaxis_type="log", height=420)
fig.show()

# %%
# NBVAL_CHECK_OUTPUT
stats[["layout", "hook", "rows", "d", "effective rank"]].round(3)

# %%
main = caches[layouts[0]]
headline = {f"effective rank ({h})": effective_rank(x) for h, x in main.acts.items()}
headline["rows"] = int(next(iter(main.acts.values())).shape[0])
for layout in layouts[1:]:
    x = caches[layout].acts[hooks[0]]
    headline[f"{layout} effective rank ({hooks[0]})"] = effective_rank(x)
results_path = record_results(run_dir, {
    "headline": headline,
    "caches": {k: str(v.path) for k, v in caches.items()},
    "stats": stats.to_dict(orient="records"),
    "spectra": {f"{l}|{h}": explained_variance_ratio(x)[:spectrum_components].tolist()
                for l, c in caches.items() for h, x in c.acts.items()},
}, notebook="02_activations")
