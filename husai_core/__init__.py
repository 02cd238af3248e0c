"""HUSAI: do sparse autoencoders learn the same features across seeds, and when?

The library is organised by concept, one module (or package of concept files, each < ~400
lines) per concept; each file can be read top to bottom. Module map (file -> responsibility):

Data and model
- ``task``           modular-addition data and token layouts
- ``model``          the TransformerLens transformer, its training loop and checkpoints
- ``fourier``        Fourier analysis of embeddings and the task's ground-truth directions
- ``activations``    hook extraction, the safetensors cache, foreign caches, diagnostics
- ``sources/``       activation sources read by row index from disk: ``segments`` (row-major
                     arrays at a file offset), ``source`` (``ActivationSource``), ``rows``
                     (eval / held-out rows, fingerprint, statistics), ``layouts`` (``open_source``),
                     ``arrow`` (SAELens Arrow caches)
- ``nulls``          null data: gaussian_matched rows, an untrained transformer's activations
- ``conditions``     trained / null conditions with one held-out split (also from a source)

SAEs
- ``sae/``           architectures (``base`` + ``decoder_norm``, ``relu``, ``topk``, ``batchtopk``,
                     ``jumprelu``; ``topk_kernel`` the exact two-pass top-k, ``sparse_ops``),
                     ``config``, ``build``, ``checkpoint``, ``trainer/`` (``schedule``, ``data``,
                     ``loop``, ``run``), ``readers/`` (foreign formats), SAELens interop
- ``metrics``        the one definition of EV, L0, dead fraction, MSE (``evaluate_sae``)
- ``store``          the artifact store: keys (config hash + input fingerprints + code version),
                     where SAEs live (``config_id``, ``sae_dir``) and the one SAE train-or-load
                     (``train_or_load_saes``: plain, transcoders, regularised)
- ``transcoders``    transcoders (MLP input -> MLP output) with their nulls
- ``objectives/``    consistency regularisers: ``alignment`` (penalties), ``points`` (sweep
                     point), ``collapse`` (agreement vs collapse, phase-8 summary)

Consistency and statistics
- ``decoders``       unit-row decoder matrices (the one row normalisation), off-diagonal values
- ``consistency/``   PWMCC (``pairwise``), the one Gaussian baseline factory (``baselines``:
                     ``random_baseline``), ``hungarian``, ``stability`` (stability, consensus,
                     subspaces, ground truth)
- ``assignment/``    one-to-one matching at any size: ``kernels``, ``sparse`` (certified), ``match``
- ``matching/``      the literature's one-to-one metrics: ``views``, ``correlation``, ``pairwise``
                     (PW-MCC, shared latents, activation MCC), ``family``
- ``comparison``     condition x metric tables, verdicts against every null, ground-truth recovery
- ``convergence``    consistency against training steps and the plateau criterion
- ``stats``          seed-level bootstrap, tests, LCB, Holm
- ``trends``         power-law fits with t intervals (``fit_power_law``, ``predict``)
- ``experiments/``   phase building blocks: ``analysis`` (trained vs random), ``points`` (sweep
                     points), ``frontier`` (calibration, frontier summary); re-exports the store
- ``sweep``          resumable seeds x configurations sweeps (process pool or Dask)
- ``selection``      the one selection rule (LCB vs the strongest null, Holm), release candidates, Pareto
- ``gates``          acceptance gates (required / optional), ``pass_all``, ``husai gate``
- ``ood``            out-of-distribution splits (task labels, dataset names) and a linear probe
- ``faithfulness``   the SAE spliced into the transformer: loss recovered (zero / mean ablation)
- ``probing``        sparse probing of task variables on top-k latents (SAEBench's rule) vs raw activations
- ``saebench``       the external PyPI sae-bench harness for real-LM SAEs (offline, one-line preflight)
- ``phases/``        phase-level analysis, one module per notebook (``run(params, art) -> dict``)

Tools, runs and reports
- ``compare/``       ``husai compare``: ``loading``, ``groups``, ``activations``, ``analysis``, ``run``
- ``explorer/``      the cached sweep grid: ``grid`` (scan), ``summary`` (cached summaries),
                     ``plots``, ``training`` (train-on-demand), ``widget`` (``Explorer``)
- ``verify``         ``husai verify``: every reported number re-derived from the artifacts
- ``paths``          the checkout, runs / reports folders, runs-relative paths (``runs_path``)
- ``runner/``        papermill execution: ``params`` (profiles, overrides, seeds), ``manifest``
                     (resume decision), ``execute`` (``run_notebook``), ``pipeline`` (main job)
- ``report``         ``record_results``, ``headline_figure``, HTML rendering, the index (shared assets, thumbnails)
- ``progress``       tqdm bars that reach the terminal from a runner's kernel
- ``cli``            the ``husai`` command
- ``io``, ``errors``, ``device``  atomic writes and JSON, ``HusaiError``, device choice and seeding

Public API (what notebooks, tests and the CLI import; a package re-exports its files' names, so
``from husai_core.explorer import Explorer`` keeps working):

- data: ``task.make_task``, ``activations.load_cache``, ``sources.open_source``,
  ``conditions.condition_data`` / ``heldout_split`` / ``train_or_load_condition``
- SAEs: ``sae.SAEConfig``, ``sae.build_sae``, ``sae.train_sae`` / ``train_saes``, ``sae.load_sae`` /
  ``save_sae`` / ``read_sae``, ``store.train_or_load_saes`` (also ``experiments.train_or_load_saes``),
  ``store.sae_config`` / ``config_id`` / ``sae_dir``, ``metrics.evaluate_sae`` / ``explained_variance``
- consistency: ``consistency.pwmcc`` / ``pwmcc_matrix`` / ``random_baseline`` / ``hungarian_match``,
  ``matching.family_matrices``, ``comparison.compare_conditions``, ``stats.bootstrap_over_seeds`` /
  ``conservative_lcb`` / ``holm``, ``experiments.consistency_summary`` / ``train_point`` / ``summarise_sweep``
- decisions: ``selection`` (the one rule), ``gates``; tools: ``compare.compare_saes``,
  ``explorer.Explorer``, ``verify``; runs: ``runner.run_notebook`` / ``run_main_job``,
  ``paths.artifacts_dir`` (also ``runner.artifacts_dir``), ``report.record_results``
"""

__version__ = "0.1.0"
