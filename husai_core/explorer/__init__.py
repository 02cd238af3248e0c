"""The explorer (DESIGN §7 item 12): browse the cached grid of SAE configurations live.

Every phase that trains SAEs (03, 04, the sweeps of 05 through ``train_point``) saves them in
``<artifacts>/saes/<layout>/<hook>/<config_id>/seed<N>/``, so that folder tree *is* the
cached sweep grid. The package is split by concept:

- ``grid``      scans the tree into a tidy table, one row per configuration (:func:`scan_grid`). Seeds are
  never pooled across training data: each seed's ``metrics.json`` records the fingerprint of
  the rows it was trained on (and its key the SAE code version), and a configuration shows
  only the seeds trained like its newest checkpoint; seeds trained on other (older) data or
  code are left out with a warning, listed as ``stale_seeds``, and Train retrains them;
- ``summary``   summarises one configuration: trained vs Gaussian-random PWMCC with seed-level CIs, ratio,
  LCB, verdict, mean EV / L0 / dead fraction, and the Hungarian-matched similarities of one
  seed pair (:func:`config_summary`). Summaries are memoised in-process and persisted as
  ``explorer_summary.json`` beside the seeds, keyed by the content hashes of the seeds'
  checkpoint and metrics files and their data fingerprints, so a retrained seed invalidates them;
- ``plots``     the overview figure of the grid and the widget's figure and summary table;
- ``training``  train-on-demand for a point that is not cached;
- ``widget``    the ipywidgets UI (:class:`Explorer`): architecture / d_sae / k sliders over the grid
  and a plotly figure redrawn in an ``Output`` widget.

The widget callbacks are plain methods and the explorer keeps the ``state`` and ``summary`` it
last rendered, so tests drive it without a browser: set ``explorer.k.value`` (or call
``explorer.train_button.click()``) and read ``explorer.state`` / ``explorer.figure``.
"""

from .grid import GRID_COLUMNS, sparsity_field, complete_seeds, training_identity, seed_groups, scan_grid
from .summary import (
    SUMMARY_FILE, SUMMARY_VERSION, DEFAULT_MATCH_LIMIT, config_summary, clear_summary_memo, summary_row,
    summarise_grid, best_configuration,
)
from .plots import TRAINED_COLOUR, RANDOM_COLOUR, overview_figure
from .training import NOT_CACHED
from .widget import DEFAULT_K, DEFAULT_D_SAE, DEFAULT_COEFFS, Explorer
