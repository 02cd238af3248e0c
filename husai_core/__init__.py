"""HUSAI: do sparse autoencoders learn the same features across seeds, and when?

The library is organised by concept; each module can be read top to bottom:

- ``task``         modular-addition data and token layouts
- ``model``        the TransformerLens transformer, its training loop and checkpoints
- ``fourier``      Fourier analysis of embeddings and the task's ground-truth directions
- ``activations``  hook extraction, the safetensors cache, foreign caches, diagnostics
- ``sae``          SAE architectures, the trainer, checkpoints, SAELens interop
- ``metrics``      reconstruction metrics (EV, L0, dead fraction, MSE)
- ``consistency``  PWMCC, random baselines, Hungarian matching, stability
- ``stats``        seed-level bootstrap, tests, LCB, Holm
- ``experiments``  phase-level analyses used by the notebooks (SAE storage, trained vs random)
- ``sweep``        resumable seeds x configurations sweeps (process pool or Dask)
- ``objectives``   consistency regularisers (decoder alignment, Hungarian-matched)
- ``release``      selection rules and acceptance gates
- ``explorer``     the widget explorer over the cached sweep grid
- ``runner``       papermill execution, params profiles, manifests
- ``report``       HTML rendering and the report index
- ``cli``          the ``husai`` command
"""

__version__ = "0.1.0"
