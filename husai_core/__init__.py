"""HUSAI: do sparse autoencoders learn the same features across seeds, and when?

The library is organised by concept; each module can be read top to bottom:

- ``task``         modular-addition data and token layouts
- ``model``        the TransformerLens transformer, its training loop and checkpoints
- ``fourier``      Fourier analysis of embeddings and the task's ground-truth directions
- ``activations``  hook extraction, the safetensors cache, foreign caches, diagnostics
- ``sae``          SAE architectures, the trainer, checkpoints, SAELens interop
- ``metrics``      reconstruction metrics (EV, L0, dead fraction, MSE)
- ``consistency``  PWMCC (max-|cos| and signed), random baselines, Hungarian matching, stability
- ``matching``     the literature's one-to-one metrics: PW-MCC, shared-latent fraction, activation matching
- ``nulls``        null data: gaussian_matched rows, an untrained transformer's activations
- ``conditions``   trained / null conditions with one held-out split, trained or loaded
- ``comparison``   condition x metric tables, verdicts against every null, ground-truth recovery
- ``convergence``  consistency against training steps and the plateau criterion
- ``stats``        seed-level bootstrap, tests, LCB, Holm
- ``store``        artifact keys: config hash + input fingerprints + code version
- ``experiments``  SAE storage (train-or-load by key), sweep points and summaries
- ``compare``      ``husai compare``: foreign SAEs (SAELens, sparsify, dictionary_learning) through phase 4
- ``sweep``        resumable seeds x configurations sweeps (process pool or Dask)
- ``objectives``   consistency regularisers (decoder alignment, Hungarian-matched)
- ``release``      selection rules and acceptance gates
- ``explorer``     the widget explorer over the cached sweep grid
- ``runner``       papermill execution, params profiles, manifests
- ``report``       HTML rendering and the report index
- ``cli``          the ``husai`` command
"""

__version__ = "0.1.0"
