"""Construct SAEs by architecture name, with seeded initialisation."""

from __future__ import annotations

import numpy as np
import torch

from ..device import pick_device
from ..errors import HusaiError
from .base import BaseSAE
from .batchtopk import BatchTopKSAE
from .config import SAEConfig
from .jumprelu import JumpReLUSAE
from .relu import ReLUSAE
from .topk import MatryoshkaSAE, TopKSAE

SAE_CLASSES: dict[str, type[BaseSAE]] = {
    "relu": ReLUSAE,
    "topk": TopKSAE,
    "batchtopk": BatchTopKSAE,
    "jumprelu": JumpReLUSAE,
    "matryoshka": MatryoshkaSAE,
}

# Independent random streams derived from one seed (so init and data order never share one).
INIT_STREAM, DATA_STREAM = 0, 1


def derived_seed(seed: int, stream: int) -> int:
    """A 63-bit seed for one purpose (``stream``) of a run seeded with ``seed``."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise HusaiError(f"seed must be a non-negative integer, got {seed!r}")
    state = np.random.SeedSequence([int(seed), int(stream)]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


def build_sae(cfg: SAEConfig, seed: int = 0, device: str | torch.device = "cpu") -> BaseSAE:
    """A freshly initialised single SAE for ``cfg``; the same seed gives the same weights
    on every device (initialised on CPU, then moved). ``device="auto"`` picks CUDA if present."""
    if not isinstance(cfg, SAEConfig):
        raise HusaiError(f"build_sae needs an SAEConfig, got {type(cfg).__name__}")
    cls = SAE_CLASSES[cfg.architecture]
    sae = cls(cfg, 1)
    sae.reset_parameters(torch.Generator().manual_seed(derived_seed(seed, INIT_STREAM)))
    return sae.to(pick_device(device))
