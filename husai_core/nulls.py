"""Null conditions: what consistency looks like when there is nothing (or less) to find.

Max-cosine statistics are dominated by the data's geometry, so a trained condition is
compared with SAEs that share everything except the structure under test:

- ``gaussian_matched``   SAEs of the same config trained on Gaussian rows with the
  activations' mean and full covariance (same row count, its own data seed): the geometry
  without any sparse features.
- ``random_transformer`` SAEs trained on activations of an *untrained* transformer of the same
  architecture, at the same hook and position: the model's structure without learning.
- ``isotropic``          untrained SAEs (our initialisation: i.i.d. isotropic Gaussian decoder
  rows, encoder = decoder transpose): the weakest null, i.i.d. random directions.

Null seeds are disjoint from the trained seeds (``consistency.disjoint_seeds``). Null rows are
computed on one CPU thread: a multi-threaded BLAS sums in another order, so the rows (and the
fingerprint that keys their SAEs) would depend on the caller's thread count (a sweep worker vs
the notebook), and their SAEs would be retrained by every phase that reads them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from .errors import HusaiError

NULLS = ("gaussian_matched", "random_transformer", "isotropic")
TRAINED_NULLS = ("gaussian_matched", "random_transformer")


def check_null(name: str) -> str:
    if name not in NULLS:
        raise HusaiError(f"unknown null {name!r}; choose from {', '.join(NULLS)}")
    return name


@contextmanager
def single_threaded() -> Iterator[None]:
    """Run torch CPU ops on one thread (restored afterwards): results independent of thread count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def gaussian_matched_rows(x: torch.Tensor, seed: int, n_rows: int | None = None) -> torch.Tensor:
    """``n_rows`` (default: as many as ``x``) Gaussian rows with ``x``'s mean and full covariance.

    Sampled as mean + z Λ^½ Vᵀ from the eigendecomposition of the float64 covariance (negative
    eigenvalues from rounding are clipped to 0), with a generator seeded by ``seed``, on one
    thread: the same seed gives bit-identical rows for any thread count (same torch build and CPU).
    """
    x = torch.as_tensor(x)
    if x.dim() != 2 or x.shape[0] < 2:
        raise HusaiError(f"gaussian_matched needs a (rows >= 2, d) activation matrix, got shape {tuple(x.shape)}")
    with single_threaded():
        xd = x.double()
        mean = xd.mean(0)
        cov = torch.cov(xd.T, correction=1)
        evals, evecs = torch.linalg.eigh(cov)
        root = evecs * evals.clamp_min(0).sqrt()  # cov = root @ root.T
        gen = torch.Generator().manual_seed(int(seed))
        z = torch.randn(n_rows or x.shape[0], x.shape[1], generator=gen, dtype=torch.float64)
        return (mean + z @ root.T).to(x.dtype if x.is_floating_point() else torch.float32)


def random_transformer_activations(ckpt, hooks: list[str], init_seed: int, position: str | int = "answer",
                                   batch_size: int = 4096) -> dict[str, torch.Tensor]:
    """Activations of an untrained transformer with ``ckpt``'s task and architecture.

    ``ckpt`` is a ``model.Checkpoint``; the untrained model is built with ``init_seed`` (use one
    different from the trained model's seed) and read at the same hooks and position over
    every example of the task, in the same row order as the trained cache, on one thread (see
    the module docstring).
    """
    from .activations import extract_activations
    from .model import build_model
    from .task import make_task

    if int(init_seed) == int(ckpt.train_cfg.seed):
        raise HusaiError(f"random_transformer init_seed {init_seed} equals the trained model's seed; pick another")
    model = build_model(ckpt.task, ckpt.model_cfg, seed=int(init_seed), device=ckpt.model.cfg.device)
    model.eval()
    data = make_task(ckpt.task)
    with single_threaded():
        return extract_activations(model, data.tokens, hooks, position=position, answer_pos=data.answer_pos,
                                   batch_size=batch_size)


__all__ = ["NULLS", "TRAINED_NULLS", "check_null", "gaussian_matched_rows", "random_transformer_activations"]
