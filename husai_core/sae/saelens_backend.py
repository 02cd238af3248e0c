"""Reference backend: train an SAE with SAELens's own trainer on our cached rows.

``train_saelens(cfg, x, seed)`` builds SAELens's *training* SAE for ``cfg.architecture``
(``TopKTrainingSAE``, ``StandardTrainingSAE``, ``JumpReLUTrainingSAE``,
``BatchTopKTrainingSAE``) and trains it with SAELens's ``SAETrainer.fit`` (its optimiser, lr
scheduler, gradient clipping, dead-latent tracking and loss code, untouched), fed the same
cached rows ``x`` in ``cfg.batch_size``-row batches drawn in the same seeded order as our
trainer. From ``cfg`` it takes only d_in, d_sae, k, lr, Adam betas, batch size and steps,
the sparsity coefficients (see below) and JumpReLU's bandwidth / initial threshold; every
other setting is SAELens's default (decoder init at norm 0.1, free decoder norms with
``rescale_acts_by_decoder_norm=True`` for the TopK family, AuxK coefficient 1, a dead
window of 1000 *steps*, a constant lr, b_dec = 0, clipping at gradient norm 1, ...).
``sae_overrides`` / ``trainer_overrides`` change any SAELens field for ablations.

Loss units. SAELens's MSE sums over the d_in features (mean over rows) where ours averages
over all elements, so by default (``match_loss_scale=True``) the L1 / L0 coefficients are
multiplied by d_in: the minimised objective is then exactly d_in times ours, i.e. the same
sparsity/reconstruction trade-off. (SAELens's L1 weights each latent by its decoder norm,
which matches our unit-norm decoder.)

The trained SAE is written with SAELens's ``save_inference_model`` (what its training runner
writes as the final SAE), read back with ``import_saelens`` into our SAE type and checked
against SAELens's own objects (the trained one where its training-mode encode equals
inference, and ``SAE.load_from_disk`` of the folder): latents and reconstructions must agree
to 1e-5 (relative to the values' scale when above 1), else ``HusaiError``.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator

import pandas as pd
import torch
from torch import Tensor

from ..device import describe_device, pick_device
from ..errors import HusaiError
from ..metrics import evaluate_sae
from .build import INIT_STREAM, derived_seed
from .config import SAEConfig
from .saelens import import_saelens
from .saelens_check import compare_with_saelens
from .trainer import TrainResult, _check_data, _RowSampler, train_saes, training_scale

BACKENDS = ("husai", "sae_lens")
SAELENS_PIN = "6.54.12"
INSTALL_HINT = f"the sae_lens backend needs the sae_lens package: pip install sae-lens=={SAELENS_PIN}"
SAELENS_ARCH = {"topk": "topk", "relu": "standard", "jumprelu": "jumprelu", "batchtopk": "batchtopk"}
HISTORY_COLUMNS = ["seed", "step", "tokens", "lr", "loss", "mse", "l1", "l0", "aux", "ev", "dead_fraction",
                   "dead_fraction_sae_lens", "sl_mse_loss", "sl_sparsity_loss", "sl_aux_loss"]
CHECK_ROWS = 4096


def _load_sae_lens() -> SimpleNamespace:
    """The SAELens pieces this backend uses; a missing package is one clear HusaiError."""
    try:
        import sae_lens
        from sae_lens import (
            SAE,
            BatchTopKTrainingSAE,
            BatchTopKTrainingSAEConfig,
            JumpReLUTrainingSAE,
            JumpReLUTrainingSAEConfig,
            StandardTrainingSAE,
            StandardTrainingSAEConfig,
            TopKTrainingSAE,
            TopKTrainingSAEConfig,
        )
        from sae_lens.config import LoggingConfig, SAETrainerConfig
        from sae_lens.training import sae_trainer as trainer_module
    except ImportError as exc:
        raise HusaiError(INSTALL_HINT) from exc
    return SimpleNamespace(
        version=str(getattr(sae_lens, "__version__", "unknown")), SAE=SAE,
        classes={"topk": (TopKTrainingSAE, TopKTrainingSAEConfig),
                 "standard": (StandardTrainingSAE, StandardTrainingSAEConfig),
                 "jumprelu": (JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig),
                 "batchtopk": (BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig)},
        LoggingConfig=LoggingConfig, SAETrainerConfig=SAETrainerConfig, trainer_module=trainer_module,
    )


def _check_supported(cfg: SAEConfig) -> None:
    if not isinstance(cfg, SAEConfig):
        raise HusaiError(f"expected an SAEConfig, got {type(cfg).__name__}")
    if cfg.transcoder:
        raise HusaiError("the sae_lens backend does not train transcoders; use backend='husai'")
    if cfg.architecture not in SAELENS_ARCH:
        raise HusaiError(
            f"the sae_lens backend cannot train architecture {cfg.architecture!r} (SAELens {SAELENS_PIN} "
            f"has no Matryoshka-TopK trainer); choose one of {', '.join(SAELENS_ARCH)} or use backend='husai'"
        )


def _with_overrides(kind: str, cls: Any, base: dict[str, Any], overrides: dict[str, Any] | None) -> Any:
    fields = {f.name for f in dataclasses.fields(cls)}
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise HusaiError(f"{kind}: unknown SAELens {cls.__name__} field(s): {', '.join(unknown)}")
    try:
        return cls(**{**base, **overrides})
    except (TypeError, ValueError) as exc:
        raise HusaiError(f"{kind}: SAELens rejected the settings ({exc})") from None


def saelens_training_config(cfg: SAEConfig, sl: SimpleNamespace | None = None, *, match_loss_scale: bool = True,
                            sae_overrides: dict[str, Any] | None = None) -> Any:
    """SAELens's training-SAE config for ``cfg`` (SAELens defaults for everything ours lacks)."""
    _check_supported(cfg)
    sl = sl or _load_sae_lens()
    sl_arch = SAELENS_ARCH[cfg.architecture]
    cfg_cls = sl.classes[sl_arch][1]
    scale = float(cfg.d_in) if match_loss_scale else 1.0
    base: dict[str, Any] = {"d_in": cfg.d_in, "d_sae": cfg.d_sae, "dtype": "float32", "device": "cpu"}
    if sl_arch == "topk":
        base["k"] = cfg.k
    elif sl_arch == "batchtopk":
        base["k"] = float(cfg.k)
    elif sl_arch == "standard":
        base["l1_coefficient"] = cfg.l1_coeff * scale
    else:  # jumprelu
        base.update(l0_coefficient=cfg.l0_coeff * scale, jumprelu_bandwidth=cfg.bandwidth,
                    jumprelu_init_threshold=cfg.jumprelu_init_threshold)
    return _with_overrides("sae_overrides", cfg_cls, base, sae_overrides)


def saelens_trainer_config(cfg: SAEConfig, device: torch.device, sl: SimpleNamespace | None = None, *,
                           trainer_overrides: dict[str, Any] | None = None) -> Any:
    """SAELens's ``SAETrainerConfig``: our steps, batch size, lr and betas; its runner's defaults
    otherwise (constant lr, no warm-up/decay, dead window 1000 steps); no wandb, no checkpoints."""
    sl = sl or _load_sae_lens()
    base = {
        "total_training_samples": cfg.steps * cfg.batch_size,
        "train_batch_size_samples": cfg.batch_size,
        "lr": cfg.lr,
        "lr_end": cfg.lr / 10,  # LanguageModelSAERunnerConfig's default (used by cosine schedules only)
        "adam_beta1": cfg.adam_betas[0],
        "adam_beta2": cfg.adam_betas[1],
        "device": str(device),
        "n_checkpoints": 0,
        "checkpoint_path": None,
        "save_final_checkpoint": False,
        "logger": sl.LoggingConfig(log_to_wandb=False),
    }
    out = _with_overrides("trainer_overrides", sl.SAETrainerConfig, base, trainer_overrides)
    if getattr(out.logger, "log_to_wandb", False):
        raise HusaiError("trainer_overrides: the sae_lens backend runs without wandb (log_to_wandb must stay False)")
    return out


class CachedRows(Iterator[Tensor]):
    """SAELens data provider: ``batch_size``-row batches of cached rows, in the same seeded
    shuffled-pass order as our trainer (``_RowSampler``), forever."""

    def __init__(self, x: Tensor, batch_size: int, seed: int):
        self.x = x
        self.batch_size = int(batch_size)
        self.sampler = _RowSampler(x.shape[0], seed)

    def __iter__(self) -> "CachedRows":
        return self

    def __next__(self) -> Tensor:
        return self.x[self.sampler.take(self.batch_size).to(self.x.device)]


def _item(v: Any) -> float:
    if callable(v):
        v = v()
    return float(v.detach().double().item()) if isinstance(v, Tensor) else float(v)


@dataclasses.dataclass
class SAELensRun:
    """The raw SAELens side of one run: its trained training-SAE, trainer and step log."""

    sae: Any
    trainer: Any
    history: pd.DataFrame
    seconds: float
    sae_lens_version: str


def fit_saelens(cfg: SAEConfig, x: Any, seed: int, device: str | torch.device = "auto", progress: bool = False, *,
                match_loss_scale: bool = True, sae_overrides: dict[str, Any] | None = None,
                trainer_overrides: dict[str, Any] | None = None) -> SAELensRun:
    """Train SAELens's training SAE for ``cfg`` with ``SAETrainer.fit`` on the rows ``x``."""
    _check_supported(cfg)
    sl = _load_sae_lens()
    x, _ = _check_data(cfg, x, None)
    derived_seed(seed, INIT_STREAM)  # validates the seed (HusaiError if not a non-negative integer)
    seed = int(seed)
    dev = pick_device(device)
    sl_cfg = saelens_training_config(cfg, sl, match_loss_scale=match_loss_scale, sae_overrides=sae_overrides)
    tr_cfg = saelens_trainer_config(cfg, dev, sl, trainer_overrides=trainer_overrides)
    sl_cfg.metadata.husai = {"architecture": cfg.architecture, "config": cfg.to_dict()}
    sae_cls = sl.classes[SAELENS_ARCH[cfg.architecture]][0]
    torch.manual_seed(derived_seed(seed, INIT_STREAM))  # SAELens initialises from the global generator
    sae = sae_cls(sl_cfg)  # built on CPU, so one seed gives the same init on every device
    xd = x.to(device=dev, dtype=torch.float32)
    trainer = sl.trainer_module.SAETrainer(cfg=tr_cfg, sae=sae, data_provider=CachedRows(xd, cfg.batch_size, seed))

    rows: list[dict[str, Any]] = []
    steps, B, d = tr_cfg.total_training_steps, tr_cfg.train_batch_size_samples, cfg.d_in
    spars_coef = {"standard": getattr(sl_cfg, "l1_coefficient", 0.0),
                  "jumprelu": getattr(sl_cfg, "l0_coefficient", 0.0)}.get(SAELENS_ARCH[cfg.architecture], 0.0)
    aux_coef = float(getattr(sl_cfg, "aux_loss_coefficient", 0.0))
    sl_step = trainer.step

    def logged_step(batch: Tensor) -> Any:  # SAETrainer.step plus our log line (fit() logs only to wandb)
        i = trainer.n_training_steps
        lr = float(trainer.optimizer.param_groups[0]["lr"])
        out = sl_step(batch)
        if i % cfg.log_every == 0 or i == steps - 1:
            with torch.no_grad():
                xin, xhat = out.sae_in.double(), out.sae_out.detach().double()
                acts = out.feature_acts.detach()
                acts = acts.to_dense() if acts.is_sparse else acts
                total = xin.var(0, unbiased=False).sum()
                ev = float(1 - (xin - xhat).var(0, unbiased=False).sum() / total.clamp_min(1e-300))
                since_tokens = trainer.n_forward_passes_since_fired * B
                losses = {k: _item(v) for k, v in out.losses.items()}
                mse_sum = losses.get("mse_loss", float("nan"))
                sparsity = losses.get("l1_loss", losses.get("l0_loss", 0.0))
                aux = losses.get("auxiliary_reconstruction_loss", 0.0)
                w = acts
                if SAELENS_ARCH[cfg.architecture] in ("standard", "jumprelu"):
                    w = acts * sae.W_dec.detach().norm(dim=-1)  # latents in unit-decoder units
                rows.append({
                    "seed": seed, "step": i, "tokens": (i + 1) * B, "lr": lr, "loss": _item(out.loss),
                    "mse": mse_sum / d, "l1": float(w.abs().sum(-1).mean()),
                    "l0": float((acts != 0).double().sum(-1).mean()),
                    "aux": aux / aux_coef / d if aux_coef > 0 else 0.0, "ev": ev,
                    "dead_fraction": float((since_tokens >= cfg.dead_tokens).double().mean()),
                    "dead_fraction_sae_lens": float(trainer.dead_neurons.double().mean()),
                    "sl_mse_loss": mse_sum, "sl_sparsity_loss": sparsity if spars_coef else 0.0,
                    "sl_aux_loss": aux,
                })
        return out

    trainer.step = logged_step
    module, real_tqdm = sl.trainer_module, sl.trainer_module.tqdm
    if not progress:  # SAETrainer.fit always opens a progress bar: a disabled one here
        module.tqdm = lambda *a, **k: real_tqdm(*a, **{**k, "disable": True})
    t0 = time.perf_counter()
    try:
        trained = trainer.fit()
    finally:
        module.tqdm = real_tqdm
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    seconds = time.perf_counter() - t0
    history = pd.DataFrame(rows, columns=HISTORY_COLUMNS)
    if rows and not math.isfinite(rows[-1]["loss"]):
        raise HusaiError(f"SAELens training diverged (final loss {rows[-1]['loss']}) for seed {seed}")
    return SAELensRun(trained, trainer, history, seconds, sl.version)


# ---------------------------------------------------------------------------- public API
def train_saelens(cfg: SAEConfig, x: Any, seed: int, device: str | torch.device = "auto", progress: bool = False,
                  workdir: str | Path | None = None, *, match_loss_scale: bool = True,
                  sae_overrides: dict[str, Any] | None = None,
                  trainer_overrides: dict[str, Any] | None = None) -> TrainResult:
    """Train one SAE of ``cfg`` on rows ``x`` with SAELens's trainer; return our ``TrainResult``.

    ``workdir``: keep SAELens's saved inference SAE in ``workdir`` (else a temporary folder).
    ``history`` has one row per ``cfg.log_every`` steps (``mse``/``l1``/``aux`` in our units,
    SAELens's raw loss terms as ``sl_*``); ``metrics`` is ``evaluate_sae`` on ``x`` plus
    ``dead_fraction_train`` (latents idle for ``cfg.dead_tokens`` tokens at the end);
    ``info`` records the backend, SAELens version and settings, time and the agreement checks.
    """
    _check_supported(cfg)
    x, _ = _check_data(cfg, x, None)
    # Input normalisation as SAELens's runner does it (expected_average_only_in): train on scaled
    # rows, then fold the factor into the saved SAE so it reads raw activations.
    scale = training_scale(cfg, x)
    run = fit_saelens(cfg, x * scale if scale != 1.0 else x, seed, device, progress,
                      match_loss_scale=match_loss_scale, sae_overrides=sae_overrides,
                      trainer_overrides=trainer_overrides)
    sl = _load_sae_lens()
    dev = pick_device(device)
    xd = x.to(device=dev, dtype=torch.float32) * scale
    n = xd.shape[0]
    check_x = xd if n <= CHECK_ROWS else xd[torch.linspace(0, n - 1, CHECK_ROWS).round().long().to(dev)]
    sl_sae, trainer, sl_cfg = run.sae, run.trainer, run.sae.cfg
    with tempfile.TemporaryDirectory(prefix="husai_saelens_") as tmp:
        folder = Path(workdir) if workdir is not None else Path(tmp) / "sae"
        sl_sae.save_inference_model(folder)
        ours = import_saelens(folder, device=dev)
        loaded = sl.SAE.load_from_disk(folder, device=str(dev))
        checks = {"loaded": compare_with_saelens(ours, loaded, check_x, "SAELens's SAE.load_from_disk")}
        if SAELENS_ARCH[cfg.architecture] in ("topk", "standard"):
            # training-mode encode equals inference for these two (not for BatchTopK's batch
            # selection, nor for JumpReLU's gate before its threshold is projected to >= 0)
            checks["trained"] = compare_with_saelens(ours, sl_sae, check_x, "the trained SAELens SAE")
    ours.eval()
    if scale != 1.0:
        ours.fold_input_scale(scale, scale)
        xd = xd / scale
    metrics = evaluate_sae(ours, xd, batch_size=max(cfg.batch_size, 4096))
    metrics["input_scale"] = [scale, scale]
    since_tokens = trainer.n_forward_passes_since_fired.double() * cfg.batch_size
    metrics["dead_fraction_train"] = float((since_tokens >= cfg.dead_tokens).double().mean())
    metrics["dead_window_tokens_train"] = cfg.dead_tokens
    metrics["dead_fraction_train_sae_lens"] = float(trainer.dead_neurons.double().mean())
    info: dict[str, Any] = {
        "backend": "sae_lens", "sae_lens_version": run.sae_lens_version, "seed": int(seed),
        "device": describe_device(dev), "mode": "sequential", "n_stack": 1,
        "train_seconds": run.seconds, "steps_per_second": cfg.steps / max(run.seconds, 1e-9),
        "sae_lens_architecture": sl_cfg.architecture(),
        "sae_lens_dir": str(folder) if workdir is not None else None,
        "match_loss_scale": bool(match_loss_scale),
        "lr_scheduler": trainer.cfg.lr_scheduler_name, "lr_warm_up_steps": trainer.cfg.lr_warm_up_steps,
        "lr_decay_steps": trainer.cfg.lr_decay_steps, "dead_feature_window_steps": trainer.cfg.dead_feature_window,
        "decoder_init_norm": sl_cfg.decoder_init_norm,
    }
    for field in ("rescale_acts_by_decoder_norm", "aux_loss_coefficient", "l1_coefficient", "l0_coefficient",
                  "jumprelu_bandwidth", "jumprelu_init_threshold", "topk_threshold_lr"):
        if hasattr(sl_cfg, field):
            info[field] = getattr(sl_cfg, field)
    for which, diffs in checks.items():
        for k, v in diffs.items():
            info[f"check_{which}_{k}"] = v
    history = run.history.reset_index(drop=True)
    return TrainResult(ours, history, metrics, info)


def train_with_backend(cfg: SAEConfig, x: Any, seeds: list[int], backend: str = "husai",
                       **kw: Any) -> list[TrainResult]:
    """Train ``cfg`` once per seed with our trainer (``"husai"``: ``train_saes``) or SAELens's
    (``"sae_lens"``: ``train_saelens`` per seed; ``workdir`` gets one ``seed_<s>`` folder each)."""
    if backend not in BACKENDS:
        raise HusaiError(f"unknown training backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "husai":
        return train_saes(cfg, x, seeds, **kw)
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise HusaiError("train_with_backend needs at least one seed")
    if len(set(seeds)) != len(seeds):
        raise HusaiError(f"train_with_backend: seeds must be distinct, got {seeds}")
    for name in ("x_target", "extra_loss"):
        if kw.get(name) is not None:
            raise HusaiError(f"the sae_lens backend does not support {name}; use backend='husai'")
        kw.pop(name, None)
    kw.pop("mode", None)  # sequential only
    workdir = kw.pop("workdir", None)
    return [train_saelens(cfg, x, s, workdir=None if workdir is None else Path(workdir) / f"seed_{s}", **kw)
            for s in seeds]


__all__ = ["BACKENDS", "CachedRows", "SAELensRun", "compare_with_saelens", "fit_saelens", "saelens_trainer_config",
           "saelens_training_config", "train_saelens", "train_with_backend"]
