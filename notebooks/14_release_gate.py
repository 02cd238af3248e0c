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
# # Phase 14 — the release gate: is any configuration fit to release?
#
# Every phase that evaluated configurations on several seeds against **trained nulls** offers
# them as *candidates* (trained consistency with its CI, the strongest null it trained with its
# CI, the LCB = trained CI low − null CI high, the seed-level permutation p, held-out EV, and
# loss recovered where measured): phase 04 (the main configuration), 05 (k and d_sae
# ablations), 06 (architectures), 11 (stress), 13 (scaling). This notebook reads the **newest
# finished run** of each of those phases on the profile (or the run ids pinned in
# `upstream_runs`) — it trains nothing.
#
# **Selection** (`husai_core.selection.select_candidate`): a candidate is *eligible* with at
# least `min_seeds` seeds and a mean held-out EV at or above `ev_floor` (both fixed in
# `params/<profile>/14_release_gate.yaml` before the run); among the eligible, the highest LCB
# against its strongest null wins (ties: larger trained − null difference, then larger EV). The
# permutation p-values of **all** candidates are Holm-adjusted together.
#
# **Gates** (`husai_core.phases.release_gate`): those named in `require` decide `pass_all`,
# the others are reported. An input whose phase has no finished run is reported as *missing*
# (a failure when required). **EV drop** = the highest held-out EV among the eligible candidates
# minus the selected candidate's — what the choice gives up in reconstruction for consistency.
# `husai gate --profile <profile> --fail-on-gate-fail` exits with code 2 when a required gate
# failed (`make release-gate` does both on the full profile).

# %% tags=["parameters"]
profile = "interactive"
run_dir = None
artifacts_dir = None
progress = True
source_phases = ["04_trained_vs_nulls", "05_ablations", "06_frontier", "11_stress", "12_evaluation", "13_scaling"]
source_profile = None  # profile whose runs are read; None: this run's profile
upstream_runs = {}  # phase -> run id to read instead of the newest finished run
metric = "pwmcc/all"
min_seeds = 3
ev_floor = 0.9
alpha = 0.05
require = ["trained_vs_strongest_null_lcb", "selected_lcb", "ood_drop", "loss_recovered", "ev_drop"]
lcb_threshold = 0.0
transcoder_delta_threshold = 0.0
ood_drop_limit = 0.1
loss_recovered_floor = 0.9
ev_drop_limit = 0.05

# %%
import pandas as pd
import plotly.graph_objects as go

from husai_core.gates import format_gates, load_gates
from husai_core.phases import release_gate as phase
from husai_core.report import headline_figure, record_results
from husai_core.runner import artifacts_dir as resolve_artifacts

art = resolve_artifacts(profile, artifacts_dir)
params = {name: globals()[name] for name in phase.PARAMS}
results = phase.run({**params, "profile": profile}, art, progress=progress)
print(f"source runs of profile {results['profile']!r}:")
pd.DataFrame(results["sources"]).T.fillna("")

# %%
for note in results["notes"]:
    print(note)

# %% [markdown]
# ## Every candidate
# `null_lcb` is the LCB against the candidate's strongest null; `null_p` its raw permutation p,
# `phase_p_holm` the p adjusted within its phase, `p_holm` adjusted across all candidates here;
# `eligibility` says why a candidate cannot be selected; `rank` orders the eligible.

# %%
table = pd.DataFrame(results["candidates_table"])
show = ["phase", "name", "n_seeds", "trained", "strongest_null", "null", "null_lcb", "null_p", "phase_p_holm", "p_holm",
        "ev", "loss_recovered", "eligibility", "rank", "selected", "pareto"]
table[show].sort_values(["selected", "null_lcb"], ascending=False).round(4) if not table.empty else "no candidates"

# %% [markdown]
# ## Consistency against faithfulness (Pareto view)
# Each marker is a candidate: the y axis is its LCB against its strongest null (above zero: more
# consistent than the null even in the worst case the CIs allow), the x axis its faithfulness —
# loss recovered when every candidate has it, else held-out EV. Filled markers are eligible, the
# line joins the eligible Pareto front, the star is the selection.

# %%
fig = go.Figure()
if not table.empty:
    x = results["pareto"]["x"]
    for phase_name, g in table.groupby("phase"):
        fig.add_scatter(x=g[x], y=g.null_lcb, mode="markers", name=phase_name, text=g["name"] + " · " + g.eligibility,
                        marker=dict(size=10, symbol=["circle" if e else "circle-open" for e in g.eligible]))
    front = table[table.pareto].sort_values(x)
    fig.add_scatter(x=front[x], y=front.null_lcb, mode="lines", line=dict(color="black", dash="dot"),
                    name="eligible Pareto front")
    sel = table[table.selected]
    fig.add_scatter(x=sel[x], y=sel.null_lcb, mode="markers", name="selected",
                    marker=dict(size=18, symbol="star", color="gold", line=dict(color="black", width=1)))
    fig.add_hline(y=lcb_threshold, line_dash="dash", line_color="grey", annotation_text="LCB threshold")
    if x == "ev":
        fig.add_vline(x=ev_floor, line_dash="dash", line_color="grey", annotation_text="EV floor")
    fig.update_xaxes(title_text="loss recovered" if x == "loss_recovered" else "held-out EV (mean over seeds)")
fig.update_yaxes(title_text="LCB vs the strongest null")
fig.update_layout(title="Release candidates: consistency beyond the null vs faithfulness", height=500)
headline_figure(fig, run_dir).show()

# %% [markdown]
# ## The gates

# %%
gates = pd.DataFrame(results["gates"]["gates"])
gates["result"] = ["MISSING" if pd.isna(v) else "PASS" if p else "FAIL" for v, p in zip(gates.value, gates.passed)]
gates[["name", "required", "value", "op", "threshold", "result", "detail"]]

# %%
print(results["verdict"])
print("EV drop:", results["ev_drop"]["definition"])

# %%
# NBVAL_CHECK_OUTPUT
pd.DataFrame({"gates": [len(results["gates"]["gates"])], "required": [len(require)],
              "source phases": [len(source_phases)]})

# %%
results_path = record_results(run_dir, results, notebook="14_release_gate")
print(format_gates(load_gates(results_path)))
