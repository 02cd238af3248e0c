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
# # Phase 9 — explorer: how consistent are SAEs across the cached grid of k, d_sae and architecture?
#
# Every SAE any phase has trained lives in `<artifacts>/saes/<layout>/<hook>/<config_id>/seed<N>/`,
# so that folder tree **is** the cached sweep grid. The explorer below reads it and shows, for the
# point picked with the sliders, the PWMCC of the trained seeds against i.i.d. Gaussian decoders of
# the same shape (seeds disjoint from the trained ones) with bootstrap-over-seeds 95 % CIs, the
# per-seed explained variance and L0, and the Hungarian-matched |cos| of one seed pair (trained and
# random). A point that is not cached says so; with train-on-demand the **Train** button trains its
# missing seeds (with this notebook's training settings) and the view refreshes.
#
# Widgets need a live kernel, so the report also shows a static overview of the whole grid below.
# Summaries are cached beside each configuration as `explorer_summary.json`.

# %% tags=["parameters"]
# Opened by hand (JupyterLab, `make lab`), it explores what `make run` cached: the full profile's
# artifacts and SAE settings (params/full/03_sae_training.yaml and the pipeline's seeds).
profile = "full"
run_dir = None
artifacts_dir = None
progress = True
layout = "default"
hook = "blocks.0.hook_resid_post"
seeds = [42, 123, 456, 789, 1011, 2022, 3033, 4044]
architecture = "topk"
d_sae = 512
k = 32
steps = 2000
batch_size = 256
lr = 1e-3
sae_params = {}
train_on_demand = True
k_values = [4, 8, 16, 32, 64, 128]
d_sae_values = [256, 512, 1024, 2048, 4096]
coeff_values = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2]
demo_points = []
n_resamples = 10000
stats_seed = 0
alpha = 0.05
match_limit = 4096
live_figure = None

# %%
import pandas as pd
import plotly.graph_objects as go
from IPython.display import display

from husai_core.explorer import Explorer, best_configuration, overview_figure, scan_grid, summarise_grid
from husai_core.report import headline_figure, record_results
from husai_core.runner import artifacts_dir as resolve_artifacts

art = resolve_artifacts(profile, artifacts_dir)
train_params = {"steps": steps, "batch_size": batch_size, "lr": lr, **sae_params}
explorer = Explorer(art, layout, hook, seeds, train_params, train_on_demand=train_on_demand, k_values=k_values,
                    d_sae_values=d_sae_values, coeff_values=coeff_values, n_resamples=n_resamples,
                    stats_seed=stats_seed, alpha=alpha, match_limit=match_limit, progress=progress,
                    architecture=architecture, d_sae=d_sae, k=k,
                    # the live figure view only in an interactive session: a batch run has no one
                    # to interact, and its report shows the static snapshot below
                    live=run_dir is None if live_figure is None else live_figure)
# Points trained here on purpose (the smoke profile adds a couple so the grid has more than one).
for point in demo_points:
    explorer.train_point(**point)
explorer.select(architecture, d_sae, k, strict=False)
print(f"{len(explorer.grid)} cached configuration(s) at {layout} / {hook}; showing {explorer.state['config_id']}: "
      f"{explorer.state['message']}")

# %% [markdown]
# ## The explorer
# Pick the architecture, d_sae and k (the L1 / L0 coefficient for ReLU / JumpReLU). *config*
# lists the cached configurations at that point (they may differ in other settings).

# %%
display(explorer.widget)

# %% [markdown]
# The explorer's figure as a static snapshot (what it showed when this notebook ran; in batch runs
# the live figure is left out of the widget above):

# %%
go.Figure(explorer.figure).show()

# %% [markdown]
# ## The whole cached grid
# One row per configuration with at least two finished seeds, over every layout and hook in the
# artifacts. *ratio* = trained / random mean PWMCC; *LCB* = trained CI low − random CI high (> 0
# only when the intervals are separated); *Holm p* adjusts the seed-level permutation p for
# picking among all rows. The figure plots the ratio for the explorer's layout and hook: against
# k (for ReLU / JumpReLU, which have no k, against their measured L0) and against d_sae.

# %%
grid = scan_grid(art)
table = summarise_grid(grid, n_resamples, stats_seed, alpha, match_limit)
here = table[(table.layout == layout) & (table.hook == hook)] if not table.empty else table
headline_figure(overview_figure(here, title=f"Trained / random PWMCC over the cached grid ({layout}, {hook})"), run_dir).show()

# %%
columns = {"layout": "layout", "hook": "hook", "config_id": "configuration", "n_seeds": "seeds", "pwmcc": "PWMCC",
           "pwmcc_ci_low": "CI low", "pwmcc_ci_high": "CI high", "random": "random", "ratio": "ratio", "lcb": "LCB",
           "permutation_p_holm": "Holm p", "verdict": "verdict", "ev": "EV", "l0": "L0", "dead_fraction": "dead",
           "matched_trained": "matched |cos|", "matched_random": "matched |cos| random"}
(table[list(columns)].rename(columns=columns).sort_values(["layout", "hook", "LCB"], ascending=[True, True, False])
 .round(4).reset_index(drop=True) if not table.empty else pd.DataFrame(columns=list(columns.values())))

# %%
best_lcb, best_ratio = best_configuration(table, "lcb"), best_configuration(table, "ratio")
print(f"{len(grid)} cached configuration(s), {len(table)} with at least 2 seeds")
if best_lcb is not None:
    print(f"best by LCB: {best_lcb['config_id']} ({best_lcb['layout']}, {best_lcb['hook']}), LCB {best_lcb['lcb']:+.4f}, "
          f"ratio {best_lcb['ratio']:.3f}, Holm p {best_lcb['permutation_p_holm']:.3g}, EV {best_lcb['ev']:.3f}")
    print(f"best by ratio: {best_ratio['config_id']}, ratio {best_ratio['ratio']:.3f}, LCB {best_ratio['lcb']:+.4f}")

# %%
def brief(row: dict | None, prefix: str) -> dict:
    if row is None:
        return {}
    return {f"{prefix} configuration": row["config_id"], f"{prefix} ratio": row["ratio"], f"{prefix} LCB": row["lcb"],
            f"{prefix} Holm p": row["permutation_p_holm"], f"{prefix} verdict": row["verdict"], f"{prefix} EV": row["ev"]}


headline = {"cached configurations": len(grid), "comparable configurations (≥ 2 seeds)": len(table),
            f"configurations at {layout}/{hook}": len(explorer.grid)} | brief(best_ratio, "best-ratio") \
    | brief(best_lcb, "best-LCB")
verdict_text = (f"Best configuration by the conservative LCB: {best_lcb['config_id']} — {best_lcb['verdict']} "
                f"(ratio {best_lcb['ratio']:.3f}, LCB {best_lcb['lcb']:+.4f}, Holm-adjusted p {best_lcb['permutation_p_holm']:.3g} "
                f"over {len(table)} configurations).") if best_lcb else "No configuration with at least 2 seeds is cached."
results_path = record_results(run_dir, {
    "headline": headline, "verdict": verdict_text,
    "layout": layout, "hook": hook, "train_params": train_params, "seeds": seeds,
    "explorer_state": explorer.state, "demo_points": demo_points,
    "grid": grid.drop(columns=["config"]).to_dict(orient="records"),
    "table": table.to_dict(orient="records"),
}, notebook="09_explorer")
