"""Phase-level analysis: one module per notebook, each returning plain dicts the notebook plots.

Contract (shared by every module here, and relied on by ``husai verify`` and the release gate):

- ``run(params: dict, art: Path, *, progress: bool = False, load_only: bool = False) -> dict``
  computes the phase's results from its parameters (the notebook's parameter cell values, as
  written to the run's ``params.yaml``) and the artifacts folder ``art``. It trains or loads
  through the artifact store, so a second call on the same artifacts trains nothing and returns
  the same numbers. ``load_only=True`` never trains: a missing or stale artifact raises
  ``HusaiError`` naming it (the verifier uses this to re-derive a report's numbers).
- The returned dict is what the notebook passes to ``report.record_results``: its
  ``"headline"`` holds the index's numbers; phases that feed the release gate add
  ``"candidates"`` and ``"gate_inputs"`` (see ``husai_core.phases.release_gate``).
"""
