"""Consistency against training steps, and whether it has plateaued.

Training keeps each SAE after log-spaced step counts (``trainer.log_spaced_steps``: the last
step S, S // 2, S // 4, ... down to ``snapshot_first``). For every condition and every kept step this recomputes the
whole metric family over the seed pairs and the held-out EV, so a consistency number can be
read beside how far training had got.

Plateau criterion (stated in every report): the last doubling of steps moved the mean PWMCC
by less than ``tol`` (default 0.01), i.e. ``|PWMCC(S) - PWMCC(S')| < tol`` where S is the
final step and S' the largest kept step <= S / 2 (S // 2 itself with the default snapshots).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from .errors import HusaiError
from .matching import family_matrices, view_of
from .metrics import evaluate_sae
from .stats import pair_values


def convergence_table(snapshots: dict[str, Sequence[dict[int, Any]]], heldout: dict[str, torch.Tensor],
                      threshold: float = 0.7, progress: bool = False) -> pd.DataFrame:
    """Tidy rows (condition, step, metric, value): the mean over seed pairs of every metric and
    the mean held-out EV / L0 / dead fraction, at each step every seed of the condition kept.

    ``snapshots[condition]`` is one ``{steps_done: SAE}`` per seed; ``heldout[condition]`` its rows.
    """
    rows = []
    for cond, per_seed in snapshots.items():
        if len(per_seed) < 2:
            raise HusaiError(f"convergence needs at least 2 seeds of {cond!r}, got {len(per_seed)}")
        steps = sorted(set.intersection(*(set(s) for s in per_seed)))
        if not steps:
            raise HusaiError(f"the seeds of {cond!r} kept no common training step")
        for step in steps:
            saes = [s[step] for s in per_seed]
            views = [view_of(sae, heldout[cond]) for sae in saes]
            for key, m in family_matrices(views, threshold=threshold, progress=progress).items():
                rows.append({"condition": cond, "step": step, "metric": key, "value": float(pair_values(m).mean())})
            evals = [evaluate_sae(sae, heldout[cond]) for sae in saes]
            for name in ("ev", "l0", "dead_fraction"):
                rows.append({"condition": cond, "step": step, "metric": f"heldout_{name}",
                             "value": float(np.mean([e[name] for e in evals]))})
    return pd.DataFrame(rows, columns=["condition", "step", "metric", "value"])


def plateau(table: pd.DataFrame, condition: str, metric: str = "pwmcc/all", tol: float = 0.01) -> dict[str, Any]:
    """Did ``metric`` of ``condition`` move by less than ``tol`` over the last doubling of steps?"""
    t = table[(table.condition == condition) & (table.metric == metric)].sort_values("step")
    if len(t) < 2:
        raise HusaiError(f"need at least two kept steps of {condition!r} to judge a plateau, got {len(t)}")
    final_step, final = int(t.step.iloc[-1]), float(t.value.iloc[-1])
    earlier = t[t.step <= final_step / 2]
    if earlier.empty:
        raise HusaiError(f"no kept step of {condition!r} at or below half of {final_step}")
    half_step, half = int(earlier.step.iloc[-1]), float(earlier.value.iloc[-1])
    change = final - half
    return {"condition": condition, "metric": metric, "tol": tol, "final_step": final_step, "final": final,
            "half_step": half_step, "half": half, "change": change, "converged": bool(abs(change) < tol),
            "statement": (f"{condition}: {metric} moved {change:+.4f} from step {half_step} to {final_step} "
                          f"({'<' if abs(change) < tol else '>='} {tol}: "
                          f"{'plateaued' if abs(change) < tol else 'still moving'})")}


__all__ = ["convergence_table", "plateau"]
