"""Train-on-demand in the explorer: train (or load) the missing seeds of a point with the widget's
training settings, then rescan the grid and show the point.
"""

from __future__ import annotations

from typing import Any, Sequence

from ..errors import HusaiError
from ..experiments import config_id, sae_config, sae_dir, train_or_load_saes
from ..sae import SAEConfig
from ..sae.config import ALIASES
from .grid import sparsity_field

NOT_CACHED = "not cached — press Train"


class TrainOnDemand:
    """Training of the explorer (a mixin of :class:`~.widget.Explorer`, which owns the widgets and the grid)."""

    def _d_in(self) -> int:
        if not self.grid.empty:
            return int(self.grid.d_in.iloc[0])
        return int(self._activations().shape[1])

    def _activations(self):
        if self._x is None:
            from ..activations import load_cache

            self._x = load_cache(self.artifacts / "activations" / self.layout).get(self.hook)
        return self._x

    def _config_for(self, arch: str, d_sae: int, sparsity: Any) -> SAEConfig:
        """The configuration Train builds for a point: ``train_params`` + the point."""
        field = sparsity_field(arch)
        value = int(sparsity) if field == "k" else float(sparsity)
        return sae_config(self._d_in(), {**self.train_params, "architecture": arch, "d_sae": int(d_sae), field: value})

    def train_seeds(self) -> list[int]:
        """The seeds in the ``seeds`` box (a malformed list is a HusaiError)."""
        from ..runner import parse_seeds

        return parse_seeds(self.seeds.value)

    def _not_cached_message(self) -> str:
        return NOT_CACHED if self.train_on_demand else "not cached — train-on-demand is off (run phase 03/05 for it)"

    def on_train(self, button: Any = None) -> dict[str, Any]:
        """The Train button: train the missing seeds of the selected point, then show it."""
        if not self.train_on_demand:
            self.status.value = "train-on-demand is off"
            return self.state
        cid = self.variant.value
        if cid is None or cid not in self._variant_cfgs:
            self.status.value = self.state.get("message", "nothing to train here")
            return self.state
        try:
            self._train(self._variant_cfgs[cid], self.train_seeds())
        except HusaiError as exc:  # shown in the UI: a click handler's exception would vanish
            self.status.value = f"training failed: {exc}"
            self.state = {**self.state, "status": "error", "message": str(exc)}
            return self.state
        return self.state

    def train_point(self, architecture: str | None = None, d_sae: int | None = None, k: Any = None,
                    seeds: Sequence[int] | None = None) -> dict[str, Any] | None:
        """Train (or load) a point with ``train_params`` for ``seeds`` (default: the seeds box), then show it.

        Programmatic twin of the Train button (works even with train-on-demand off); errors raise.
        Returns the summary rendered (None if fewer than 2 seeds exist).
        """
        arch = ALIASES.get(str(architecture).lower(), str(architecture).lower()) if architecture else self.architecture.value
        if arch is None:
            raise HusaiError("train_point needs an architecture")
        field = sparsity_field(arch)
        here = self._point()
        d = d_sae if d_sae is not None else here[1]
        s = k if k is not None else (here[2] if arch == here[0] else self.train_params.get(field))
        if d is None or s is None:
            raise HusaiError(f"train_point needs d_sae and {field} (got d_sae={d}, {field}={s})")
        cfg = self._config_for(arch, d, s)
        self._train(cfg, [int(x) for x in seeds] if seeds is not None else self.train_seeds())
        return self.summary

    def _train(self, cfg: SAEConfig, seeds: list[int]) -> None:
        folder = sae_dir(self.artifacts, self.layout, self.hook, cfg)
        # done: the seeds the grid shows (trained like the newest checkpoint); a seed trained on
        # other data is retrained (train_or_load_saes reuses a seed only for the same data)
        row = self.grid[self.grid.config_id == config_id(cfg)]
        done = set(row.seeds.iloc[0]) if not row.empty else set()
        todo = [s for s in seeds if s not in done]
        self.train_progress.max, self.train_progress.value = max(1, len(todo)), 0
        if todo:
            x = self._activations()
            for i, seed in enumerate(todo):
                self.status.value = f"training seed {seed} ({i + 1}/{len(todo)}) of {config_id(cfg)} …"
                train_or_load_saes(folder, cfg, x, [seed], progress=self.progress, device=self.device)
                self.train_progress.value = i + 1
        self.grid = self._scan()
        field = sparsity_field(cfg.architecture)
        with self._hold():
            self._update_architectures()
            self.architecture.value = cfg.architecture
            self._update_sliders(cfg.d_sae, getattr(cfg, field))
            self._update_variants(config_id(cfg))
        self.refresh()
