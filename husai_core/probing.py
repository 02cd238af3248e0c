"""Sparse probing on the task's variables: SAEBench's ``sparse_probing`` evaluation, offline.

SAEBench turns each labelled variable into binary one-vs-rest tasks with balanced classes
(the larger class subsampled to the smaller, at most 4000 training and 1000 test rows), picks
the top-k latents by the absolute difference of their mean activation on positive and negative
training rows (``get_top_k_mean_diff_mask``), fits a logistic probe (scikit-learn,
``LogisticRegression(C=1, max_iter=1000)``) on those k latents and reports test accuracy; the
same probe on the raw activations (all dimensions, and the top-k dimensions by the same rule) is
the baseline. Here the rows are the transformer's activations at the answer position, the tasks
are predicates on the operands and the answer, written ``var[%m]:v`` ("var, mod m, equals v";
papermill cannot parse ``==`` inside a parameter's strings) or ``var[%m]<v``: ``"c:0"`` (c = 0),
``"c%2:0"`` (c even), ``"a<56"``; training
rows are the SAE's training rows and test rows its held-out rows. One deviation, so that latents
and raw dimensions of very different scales meet the same L2 penalty: features are standardised
with the training rows' mean and standard deviation before the fit. AUC comes with accuracy.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .errors import HusaiError

VARIABLES = ("a", "b", "c")
_TASK = re.compile(r"^(a|b|c)(?:%(\d+))?(:|<)(\d+)$")


def parse_task(task: str) -> tuple[str, int | None, str, int]:
    """``"c%3:0"`` -> ("c", 3, ":", 0): c mod 3 equals 0; variables a, b, c; ``:`` (equals) or ``<``."""
    m = _TASK.match(str(task).replace(" ", ""))
    if not m:
        raise HusaiError(f"unknown probe task {task!r}; write '<a|b|c>[%m]:v' (equals) or '<a|b|c>[%m]<v', e.g. 'c:0', 'c%2:0'")
    var, mod, op, value = m.groups()
    if mod is not None and int(mod) < 2:
        raise HusaiError(f"probe task {task!r}: the modulus must be >= 2")
    return var, None if mod is None else int(mod), op, int(value)


def task_group(task: str) -> str:
    """The variable a task reads: ``c:3`` -> ``c``, ``c%2:0`` -> ``c%2``, ``a<56`` -> ``a<``."""
    var, mod, op, _ = parse_task(task)
    return f"{var}%{mod}" if mod else (var if op == ":" else f"{var}<")


def task_labels(values: dict[str, torch.Tensor], task: str) -> np.ndarray:
    """Boolean labels of ``task`` for rows with variables ``values`` (``{"a": ..., "b": ..., "c": ...}``)."""
    var, mod, op, value = parse_task(task)
    if var not in values:
        raise HusaiError(f"probe task {task!r} needs the variable {var!r}, which the rows do not have")
    v = np.asarray(values[var]).astype(np.int64)
    v = v % mod if mod else v
    return v == value if op == ":" else v < value


def balanced_rows(labels: np.ndarray, idx: np.ndarray, max_rows: int, rng: np.random.Generator) -> np.ndarray:
    """Rows of ``idx`` with equally many positives and negatives (SAEBench's balancing), at most
    ``max_rows`` in all, in sorted order."""
    pos, neg = idx[labels[idx]], idx[~labels[idx]]
    n = min(len(pos), len(neg), max_rows // 2)
    if n < 1:
        return idx[:0]
    return np.sort(np.concatenate([rng.choice(pos, n, replace=False), rng.choice(neg, n, replace=False)]))


def top_k_mean_diff(features: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k features with the largest |mean(positives) - mean(negatives)| (SAEBench's
    rule), ties broken by index."""
    if not 1 <= k <= features.shape[1]:
        raise HusaiError(f"probe k={k} must be between 1 and the number of features ({features.shape[1]})")
    diff = np.abs(features[labels].mean(0) - features[~labels].mean(0))
    return np.argsort(-diff, kind="stable")[:k]


def fit_probe(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
              seed: int = 42) -> dict[str, float]:
    """Standardised logistic probe (C=1, max_iter=1000): held-out accuracy and AUC."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    mu, sd = x_train.mean(0), x_train.std(0)
    sd = np.where(sd > 1e-8, sd, 1.0)  # a constant feature (a dead latent) stays 0
    clf = LogisticRegression(C=1.0, max_iter=1000, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit((x_train - mu) / sd, y_train)
    xt = (x_test - mu) / sd
    auc = float(roc_auc_score(y_test, clf.decision_function(xt))) if 0 < y_test.sum() < len(y_test) else float("nan")
    return {"accuracy": float((clf.predict(xt) == y_test).mean()), "auc": auc}


def task_splits(values: dict[str, torch.Tensor], tasks: Sequence[str], train_idx, test_idx, *,
                max_train: int = 4000, max_test: int = 1000, seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """Per task: labels and the balanced training / test rows (the same for every SAE)."""
    if not tasks:
        raise HusaiError("no probe tasks given")
    rng = np.random.default_rng(seed)
    train_idx, test_idx = np.asarray(train_idx), np.asarray(test_idx)
    out = {}
    for task in tasks:
        y = task_labels(values, task)
        tr, te = balanced_rows(y, train_idx, max_train, rng), balanced_rows(y, test_idx, max_test, rng)
        if len(tr) < 4 or len(te) < 2:
            raise HusaiError(f"probe task {task!r} has too few rows of one class ({len(tr)} balanced training, "
                             f"{len(te)} test rows); choose another task or more rows")
        out[task] = {"y": y, "train": tr, "test": te}
    return out


def probe_features(features: np.ndarray, splits: dict[str, dict[str, np.ndarray]], ks: Sequence[int | str],
                   seed: int = 42) -> list[dict[str, Any]]:
    """One row per task and k: top-k features by the mean-difference rule on the task's training
    rows (``k="all"``: every feature), a probe on them, held-out accuracy and AUC."""
    from threadpoolctl import threadpool_limits

    rows = []
    with threadpool_limits(1):  # the fits are tiny: a second BLAS thread only adds waiting (10x on a busy machine)
        for task, s in splits.items():
            y, tr, te = s["y"], s["train"], s["test"]
            for k in ks:
                cols = np.arange(features.shape[1]) if k == "all" else top_k_mean_diff(features[tr], y[tr], int(k))
                res = fit_probe(features[np.ix_(tr, cols)], y[tr], features[np.ix_(te, cols)], y[te], seed)
                rows.append({"task": task, "group": task_group(task), "k": k, **res,
                             "features": cols.tolist() if k != "all" else None})
    return rows


__all__ = ["VARIABLES", "balanced_rows", "fit_probe", "parse_task", "probe_features", "task_group", "task_labels",
           "task_splits", "top_k_mean_diff"]
