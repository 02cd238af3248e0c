"""Modular addition c = (a + b) mod p, its token layouts and a seeded train/test split.

Default layout ``[a, b, =]``: the model predicts c at the ``=`` position, so the answer
is never part of the input. The ``legacy`` layout reproduces the earlier HUSAI setup
``[BOS, a, +, b, =, c, EOS]`` read at position -2, which *holds c itself*: the model
only has to copy a token. It exists so its effect can be shown side by side.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch

from .errors import HusaiError

LAYOUTS = ("default", "legacy")


@dataclass(frozen=True)
class TaskConfig:
    p: int = 113
    train_frac: float = 0.3
    split_seed: int = 0
    layout: str = "default"

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise HusaiError(f"unknown layout {self.layout!r}; choose one of {LAYOUTS}")
        if self.p < 3:
            raise HusaiError(f"p must be >= 3, got {self.p}")
        if not 0.0 < self.train_frac < 1.0:
            raise HusaiError(f"train_frac must be in (0, 1), got {self.train_frac}")

    def to_dict(self) -> dict:
        return asdict(self)


class Vocab(NamedTuple):
    """Token ids: numbers are 0..p-1, special tokens follow."""

    p: int

    @property
    def equals(self) -> int:
        return self.p

    @property
    def plus(self) -> int:
        return self.p + 1

    @property
    def bos(self) -> int:
        return self.p + 2

    @property
    def eos(self) -> int:
        return self.p + 3

    def size(self, layout: str) -> int:
        return self.p + 1 if layout == "default" else self.p + 4


class TaskData(NamedTuple):
    tokens: torch.Tensor  # (p*p, seq) int64 model input
    labels: torch.Tensor  # (p*p,) int64, c = (a + b) mod p
    a: torch.Tensor
    b: torch.Tensor
    train_idx: torch.Tensor
    test_idx: torch.Tensor
    answer_pos: int  # position whose logits predict c (and where activations are read)
    d_vocab: int


def all_pairs(p: int) -> tuple[torch.Tensor, torch.Tensor]:
    a = torch.arange(p).repeat_interleave(p)
    b = torch.arange(p).repeat(p)
    return a, b


def split_indices(n: int, train_frac: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded permutation split; independent of torch's global RNG state."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_train = int(round(train_frac * n))
    return perm[:n_train].sort().values, perm[n_train:].sort().values


def make_task(cfg: TaskConfig = TaskConfig()) -> TaskData:
    p, vocab = cfg.p, Vocab(cfg.p)
    a, b = all_pairs(p)
    c = (a + b) % p
    n = p * p
    if cfg.layout == "default":
        eq = torch.full((n,), vocab.equals)
        tokens = torch.stack([a, b, eq], dim=1)
        answer_pos = 2
    else:
        col = lambda v: torch.full((n,), v)  # noqa: E731
        tokens = torch.stack([col(vocab.bos), a, col(vocab.plus), b, col(vocab.equals), c, col(vocab.eos)], 1)
        answer_pos = tokens.shape[1] - 2  # the legacy read-out position: it holds c
    train_idx, test_idx = split_indices(n, cfg.train_frac, cfg.split_seed)
    return TaskData(tokens, c, a, b, train_idx, test_idx, answer_pos, vocab.size(cfg.layout))


def answer_leak_positions(data: TaskData) -> list[int]:
    """Input positions whose token equals the label for every example (a copyable answer)."""
    return [i for i in range(data.tokens.shape[1]) if bool((data.tokens[:, i] == data.labels).all())]
