"""Phase-level building blocks the notebooks call: where SAEs live, train-or-load, analyses.

SAE checkpoints of one configuration sit together so later phases find them:
``<artifacts>/saes/<layout>/<hook>/<config_id>/seed<N>/`` with ``sae.safetensors``,
``config.json``, ``history.json`` and ``metrics.json`` (written last: a seed folder with
``metrics.json`` is complete).

The package: ``analysis`` (trained vs
random consistency of one configuration), ``points`` (one sweep point: data, training,
summary), ``frontier`` (coefficients calibrated to a target L0, the frontier summary). SAE
configurations, their folders and the train-or-load of SAEs live in :mod:`husai_core.store`
and are re-exported here.
"""

from ..store import (
    SAE_FIELDS, BACKENDS, SNAPSHOTS_FILE, SeedSAE, config_id, data_fingerprint, load_saes, load_snapshots, sae_config,
    sae_dir, sae_key, train_or_load_saes, unusable_reason, _load_seed,
)
from .analysis import consistency_summary
from .points import (
    SWEEP_CONDITIONS, point_data, train_point, summarise_sweep, POINT_DATA_KEYS, sweep_point_check, merge_points,
    _pwmcc_stats,
)
from .frontier import (
    CALIBRATED_COEFF, CALIBRATION_KNOBS, next_coefficient, calibrate_point, jumprelu_scales, matched_fractions,
    frontier_summary,
)
