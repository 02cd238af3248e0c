"""Sparse autoencoders: architectures, training, checkpoints and SAELens interop.

Typical use::

    from husai_core.sae import SAEConfig, train_saes, save_sae
    cfg = SAEConfig(architecture="topk", d_in=128, d_sae=1024, k=32, steps=3000)
    results = train_saes(cfg, acts, seeds=[0, 1, 2])      # one TrainResult per seed
    results[0].sae.W_dec                                   # (d_sae, d_in), unit-norm rows
    results[0].history, results[0].metrics                 # per-step log, final EV/L0/MSE/dead

Architectures (``SAEConfig.architecture``): ``relu`` (ReLU + L1), ``topk``, ``batchtopk``,
``jumprelu``, ``matryoshka`` (Matryoshka-TopK); any of them becomes a transcoder with
``transcoder=True`` (and ``d_out``), trained with ``x_target``.

Foreign checkpoints (SAELens, EleutherAI sparsify, dictionary_learning, ours) load into the
common type with ``read_sae(path)`` (format detected). ``saelens_backend.train_saelens`` trains
with SAELens's own trainer on cached rows, as a reference.
"""

from .base import BaseSAE, SAEOutput, geometric_median, stack_saes
from .batchtopk import BatchTopKSAE
from .build import SAE_CLASSES, build_sae
from .checkpoint import load_sae, save_sae
from .config import ARCHITECTURES, SAEConfig
from .jumprelu import JumpReLUSAE
from .readers import FORMATS, detect_format, read_sae
from .relu import ReLUSAE
from .saelens import export_saelens, import_saelens
from .synthetic import planted_dictionary
from .topk import MatryoshkaSAE, TopKSAE
from .trainer import TrainResult, choose_mode, lr_multiplier, probe_modes, train_sae, train_saes

SAE = BaseSAE  # the common type of every architecture

__all__ = [
    "ARCHITECTURES", "SAE", "SAE_CLASSES", "BaseSAE", "BatchTopKSAE", "JumpReLUSAE", "MatryoshkaSAE",
    "ReLUSAE", "SAEConfig", "SAEOutput", "TopKSAE", "TrainResult", "build_sae", "choose_mode",
    "export_saelens", "geometric_median", "import_saelens", "load_sae", "lr_multiplier",
    "planted_dictionary", "probe_modes", "save_sae", "stack_saes", "train_sae", "train_saes",
    "FORMATS", "detect_format", "read_sae",
]
