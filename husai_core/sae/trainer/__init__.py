"""Step-based SAE training: one config, one or many seeds, sequential or seed-batched.

Each step draws ``batch_size`` rows from the in-memory activations (shuffled passes driven by
a generator derived from the seed, so the data order is part of the seed), runs the SAE,
and applies Adam with a linear warm-up over ``warmup_steps`` and a linear decay to 0 from
``decay_start_frac * steps`` on. Around the optimiser step the decoder rows are kept
unit-norm: the gradient component parallel to each row is removed before, and the rows are
renormalised after. A latent is *dead* once ``dead_tokens`` tokens passed without it firing;
the TopK family feeds the dead mask to its AuxK loss.

``train_saes`` trains one config for several seeds either one after another or as one
vectorised stack (parameters with a leading seed axis; each seed keeps its own data order
and optimiser state, so the results match sequential training up to float rounding).
``mode="auto"`` follows a fixed rule (batched on CUDA, sequential on CPU) and records it, so
results never depend on machine load; ``probe_modes`` measures both for benchmarks.

With ``cfg.normalize_activations="expected_average_only_in"`` the rows are scaled so their
mean squared norm is d_in before training and the trained SAE is folded back to raw units
(``BaseSAE.fold_input_scale``). ``snapshot_steps`` keeps the SAE's public tensors (in raw
units) after those steps, for convergence analyses.

Streaming: ``x`` (and ``x_target``) may be an activation *source* (``husai_core.sources``, or
any object with ``take(idx)``, ``shape`` and ``__len__``) instead of a tensor. Each step then
reads only its batch's rows from disk (``_StreamRows``; same shuffled-pass sampling and, up to
``PERM_MAX_ROWS`` rows, the very same data order as in memory, so a source trains exactly like
its rows held in memory on CPU). Data memory is then bounded, independent of the row count, by

    ~3 x S x batch_size x d_in x 4 bytes       the batch being read (gather, float32, scaled)
  + 8192 x d_in x ~32 bytes, before training   the b_dec init rows and geometric median (float64)
  + FINAL_EVAL_ROWS x d_in x 4 bytes, at the end  the final-metrics rows (8192, as in memory;
                                               fewer when over sources.EVAL_MAX_BYTES = 32 MiB)
  + BatchTopK only: min(65,536, 2^23 / d_in) x d_in x 4 bytes of calibration rows (<= 32 MiB)
  + 8 x min(n, PERM_MAX_ROWS) bytes per seed    the shuffled-pass permutation (<= 32 MiB)

plus the kernel page cache (reclaimable, not process memory): a batch's rows are read with
``preadv`` (or, when they fill >= 1/4 of the file span they cover, one mapping of that span),
and no file stays mapped between batches. Reads are synchronous (no prefetch) and, within a
batch, in file order. Input normalisation and the ``mean`` b_dec init read the source once in
``sources.CHUNK_BYTES`` (4 MiB) chunks.

The package: ``schedule`` (the result type, log steps, input scale, learning-rate schedule),
``data`` (row samplers, streamed rows, data checks), ``loop`` (optimiser, one step, the fit)
and ``run`` (``train_sae`` / ``train_saes``, final metrics, the sequential / batched mode).
"""

from .schedule import (
    LOG_COLUMNS, MODES, ExtraLoss, TrainResult, log_spaced_steps, training_scale, input_scale, lr_multiplier,
)
from .data import PERM_MAX_ROWS, FINAL_EVAL_ROWS, _check_data, _RowSampler
from .loop import make_optimizer, clip_per_seed, train_step, _fit
from .run import (
    FINAL_EVAL_BATCH_CPU, train_sae, train_saes, max_stack_size, probe_modes, choose_mode,
)

__all__ = [
    "TrainResult", "train_sae", "train_saes", "train_step", "make_optimizer", "choose_mode", "probe_modes",
    "lr_multiplier", "max_stack_size", "LOG_COLUMNS", "log_spaced_steps", "input_scale", "training_scale",
]
