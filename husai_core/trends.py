"""Power-law trends: exponents of ``y ~ C * prod x^slope`` by least squares on logs, with t intervals.

Used by the scaling phase (consistency vs token budget and d_sae); any table with positive
columns works. ``predict`` evaluates a fit, e.g. to draw its line on a log-log plot.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd

from .errors import HusaiError


def fit_power_law(frame: pd.DataFrame, y: str, xs: Sequence[str], group: str | None = None,
                  alpha: float = 0.05) -> dict[str, Any]:
    """Ordinary least squares of log ``y`` on log of each column of ``xs`` (one intercept per value
    of ``group``, or one overall): the exponents of ``y ~ C_group * prod x^slope_x``.

    Rows with a non-positive or missing value are dropped (counted in ``n_dropped``); a column of
    ``xs`` with a single value left has no slope (None). CI: estimate +/- t_{1-alpha/2, n-p} * SE,
    SE from the residual variance (as ``scipy.stats.linregress``' stderr for one x); no CI when
    n - p < 1.
    """
    from scipy import stats as sps

    if not xs:
        raise HusaiError("fit_power_law needs at least one x column")
    cols = [y, *xs] + ([group] if group else [])
    missing = [c for c in cols if c not in frame]
    if missing:
        raise HusaiError(f"fit_power_law: no column(s) {', '.join(missing)} in the table")
    d = frame[cols].dropna()
    ok = (d[list(xs) + [y]].astype(float) > 0).all(axis=1)
    n_dropped = int(len(frame) - ok.sum())
    d = d[ok]
    used = [x for x in xs if d[x].nunique() > 1]
    groups = sorted(d[group].unique().tolist()) if group else ["all"]
    if d.empty or not used:
        return {"slopes": {x: None for x in xs}, "intercepts": {}, "used": [], "n_points": int(len(d)), "n_dropped": n_dropped,
                "dof": 0, "r2": None, "method": "no fit: fewer than two values of every x"}
    dummies = (np.stack([(d[group] == g).to_numpy(float) for g in groups], 1) if group
               else np.ones((len(d), 1)))
    X = np.column_stack([np.log(d[x].to_numpy(float)) for x in used] + [dummies])
    ly = np.log(d[y].to_numpy(float))
    beta, *_ = np.linalg.lstsq(X, ly, rcond=None)
    if np.linalg.matrix_rank(X) < X.shape[1]:
        raise HusaiError(f"fit_power_law: the design is rank deficient ({', '.join(used)} confounded with {group})")
    resid = ly - X @ beta
    dof = len(ly) - X.shape[1]
    tss = float(((ly - ly.mean()) ** 2).sum())
    se = np.sqrt(np.diag(np.linalg.inv(X.T @ X)) * float(resid @ resid) / dof) if dof > 0 else np.full(len(beta), np.nan)
    t = float(sps.t.ppf(1 - alpha / 2, dof)) if dof > 0 else float("nan")
    slopes: dict[str, Any] = {x: None for x in xs}
    for i, x in enumerate(used):
        ci = [float(beta[i] - t * se[i]), float(beta[i] + t * se[i])] if dof > 0 else None
        slopes[x] = {"slope": float(beta[i]), "stderr": float(se[i]) if dof > 0 else None, "ci": ci}
    return {"slopes": slopes, "intercepts": {str(g): float(b) for g, b in zip(groups, beta[len(used):])},
            "used": used, "n_points": int(len(ly)), "n_dropped": n_dropped, "dof": int(dof),
            "r2": 1 - float(resid @ resid) / tss if tss > 0 else None, "ci_level": 1 - alpha,
            "method": f"OLS of log {y} on log {', log '.join(used)}"
                      f"{f' with one intercept per {group}' if group else ''}; {1 - alpha:.0%} t interval "
                      f"(residual standard error, {dof} dof)"}


def predict(fit: dict[str, Any], values: dict[str, Any], group: str = "all") -> np.ndarray:
    """The fitted power law at ``values`` ({x column: array}) for one group (for plotting lines)."""
    if str(group) not in fit["intercepts"]:
        raise HusaiError(f"no fitted intercept for {group!r}; fitted: {', '.join(fit['intercepts'])}")
    log_y = fit["intercepts"][str(group)] + sum(
        fit["slopes"][x]["slope"] * np.log(np.asarray(values[x], float)) for x in fit["used"])
    return np.exp(log_y)


__all__ = ["fit_power_law", "predict"]
