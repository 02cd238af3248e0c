"""The one configuration object for every SAE architecture and its training run.

Only seed-independent settings live here: one ``SAEConfig`` trained under several seeds
gives the seed-to-seed comparison HUSAI studies. ``validate()`` runs on construction and
raises ``HusaiError`` naming the offending field.
"""

from __future__ import annotations

import dataclasses
import numbers
from dataclasses import dataclass, field
from typing import Any

from ..errors import HusaiError

ARCHITECTURES = ("relu", "topk", "batchtopk", "jumprelu", "matryoshka")
# Friendly spellings people use for the same published architectures.
ALIASES = {"standard": "relu", "relu_l1": "relu", "matryoshka_topk": "matryoshka"}
TOPK_FAMILY = ("topk", "batchtopk", "matryoshka")  # have k and use the AuxK loss
B_DEC_INITS = ("geometric_median", "mean", "zeros")
DECODE_IMPLS = ("sparse", "dense")
CALIBRATIONS = ("quantile", "batch_min")
# Input scaling before training (SAELens names). ``expected_average_only_in`` scales rows so the
# mean squared norm of the training rows is d_in; the trained SAE is folded back to the
# original units, so checkpoints always encode and decode raw activations.
NORMALIZATIONS = ("none", "expected_average_only_in")
# Decoder-row norms during training: ``unit`` pins every row to norm 1 (parallel gradient removed,
# renormalised after each step); ``free`` leaves the norms to the optimiser and selects/weights
# latents as if the rows were unit-norm (SAELens ``rescale_acts_by_decoder_norm``); the trained
# SAE is then folded to unit rows with identical outputs. TopK only.
DECODER_NORMS = ("unit", "free")


@dataclass(frozen=True)
class SAEConfig:
    """Architecture, loss and optimisation settings (everything except the seed).

    Loss terms (all per seed, averaged over the batch rows):
      ``mse``  mean over all elements of (x_hat - target)^2 (the ``metrics.mse`` definition);
      ``l1``   mean over rows of sum_j |z_j| (decoder rows are unit-norm, so no norm factor);
      ``l0``   mean number of active latents per row (JumpReLU: straight-through estimate);
      ``aux``  AuxK: mse of the residual re-predicted by the top-``aux_k`` dead latents,
               scaled by min(n_dead / aux_k, 1) as in Gao et al.;
      ``matryoshka`` mean of the prefix reconstructions' mse.
    ``loss = mse + l1_coeff*l1 (relu) + l0_coeff*l0 (jumprelu) + aux_coeff*aux (topk family)``;
    Matryoshka uses ``matryoshka`` in place of ``mse``.

    JumpReLU's ``bandwidth`` and ``jumprelu_init_threshold`` are in the units the SAE trains in:
    raw activations with ``normalize_activations="none"``, rows scaled to mean squared norm
    d_in with ``"expected_average_only_in"`` (the units the published 1e-3 assumes);
    ``dead_tokens`` is in tokens (rows), not steps. ``grad_clip`` is in the units of SAELens's
    loss (MSE summed over the d features), i.e. our gradient norm is clipped at grad_clip / d.
    """

    architecture: str = "topk"
    d_in: int = 128
    d_sae: int = 1024
    # Transcoder: encode activations from one hook, decode to a target from another.
    transcoder: bool = False
    d_out: int | None = None  # target width for a transcoder; None means d_in
    # Sparsity
    k: int = 32  # topk / batchtopk (mean per row) / matryoshka
    l1_coeff: float = 1e-3  # relu
    l0_coeff: float = 1e-3  # jumprelu
    bandwidth: float = 1e-3  # jumprelu: width of the rectangle kernel of the pseudo-derivative
    jumprelu_init_threshold: float = 1e-3
    # Dead latents and AuxK (topk family)
    aux_k: int | None = None  # None: d_in // 2 (Gao et al.)
    aux_coeff: float = 1.0 / 32.0
    dead_tokens: int = 100_000  # a latent is dead after this many tokens without firing
    # Matryoshka: nested dictionary prefixes; empty means (d_sae/8, d_sae/4, d_sae/2, d_sae)
    matryoshka_prefixes: tuple[int, ...] = ()
    # BatchTopK inference threshold calibration after training
    batchtopk_calibration: str = "quantile"
    # Initialisation and input scaling
    b_dec_init: str = "geometric_median"
    # Default chosen by measurement (benchmarks/trainer_agreement.py, README "Trainer defaults"):
    # scaled inputs gave higher held-out EV, fewer dead latents and the largest margin over the
    # gaussian_matched null of the settings tried.
    normalize_activations: str = "expected_average_only_in"
    decoder_norm: str = "unit"
    decoder_init_norm: float = 1.0  # initial decoder row norm (SAELens: 0.1); needs decoder_norm="free" if != 1
    grad_clip: float | None = None  # max gradient norm per seed, in SAELens loss units (see below)
    # Optimisation (step based)
    steps: int = 2000
    batch_size: int = 1024
    lr: float = 3e-4
    warmup_steps: int = 100
    decay_start_frac: float = 0.8  # linear decay to 0 from this fraction of steps on
    adam_betas: tuple[float, float] = (0.9, 0.999)
    log_every: int = 50
    # Implementation detail that does not change results (beyond float rounding)
    decode_impl: str = "sparse"  # topk / matryoshka: sparse gathers or dense matmuls
    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes, saved with the SAE

    def __post_init__(self) -> None:
        arch = ALIASES.get(str(self.architecture).lower(), str(self.architecture).lower())
        object.__setattr__(self, "architecture", arch)
        object.__setattr__(self, "matryoshka_prefixes", tuple(int(p) for p in self.matryoshka_prefixes))
        object.__setattr__(self, "adam_betas", tuple(float(b) for b in self.adam_betas))
        self.validate()

    # ------------------------------------------------------------------ derived values
    @property
    def d_target(self) -> int:
        """Width of what the decoder reconstructs (d_out for transcoders, else d_in)."""
        return int(self.d_out) if (self.transcoder and self.d_out is not None) else self.d_in

    @property
    def k_aux(self) -> int:
        return int(self.aux_k) if self.aux_k is not None else max(1, self.d_in // 2)

    @property
    def prefixes(self) -> tuple[int, ...]:
        """Matryoshka prefix sizes, increasing, ending at d_sae."""
        if self.matryoshka_prefixes:
            p = list(self.matryoshka_prefixes)
        else:
            p = [self.d_sae // 8, self.d_sae // 4, self.d_sae // 2]
        p = sorted({x for x in p if 0 < x < self.d_sae}) + [self.d_sae]
        return tuple(p)

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        def positive_int(name: str) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v <= 0:
                raise HusaiError(f"SAEConfig.{name} must be a positive integer, got {v!r}")
            object.__setattr__(self, name, int(v))  # numpy integers become plain ints

        if self.architecture not in ARCHITECTURES:
            raise HusaiError(
                f"SAEConfig.architecture: unknown architecture {self.architecture!r}; "
                f"choose one of {', '.join(ARCHITECTURES)}"
            )
        for name in ("d_in", "d_sae", "k", "steps", "batch_size", "dead_tokens", "log_every"):
            positive_int(name)
        if self.d_out is not None:
            positive_int("d_out")
        if self.aux_k is not None:
            positive_int("aux_k")
        if self.architecture in TOPK_FAMILY and self.k > self.d_sae:
            raise HusaiError(f"SAEConfig.k={self.k} must be <= d_sae={self.d_sae}")
        for name in ("l1_coeff", "l0_coeff", "aux_coeff"):
            v = getattr(self, name)
            if isinstance(v, bool) or not (isinstance(v, numbers.Real) and v >= 0):
                raise HusaiError(f"SAEConfig.{name} must be a number >= 0, got {v!r}")
        for name in ("bandwidth", "jumprelu_init_threshold", "lr"):
            v = getattr(self, name)
            if isinstance(v, bool) or not (isinstance(v, numbers.Real) and v > 0):
                raise HusaiError(f"SAEConfig.{name} must be a number > 0, got {v!r}")
        if isinstance(self.warmup_steps, bool) or not isinstance(self.warmup_steps, numbers.Integral) \
                or self.warmup_steps < 0:
            raise HusaiError(f"SAEConfig.warmup_steps must be an integer >= 0, got {self.warmup_steps!r}")
        if not (0.0 <= float(self.decay_start_frac) <= 1.0):
            raise HusaiError(f"SAEConfig.decay_start_frac must be in [0, 1], got {self.decay_start_frac!r}")
        if len(self.adam_betas) != 2 or not all(0.0 <= b < 1.0 for b in self.adam_betas):
            raise HusaiError(f"SAEConfig.adam_betas must be two numbers in [0, 1), got {self.adam_betas!r}")
        if self.b_dec_init not in B_DEC_INITS:
            raise HusaiError(f"SAEConfig.b_dec_init must be one of {B_DEC_INITS}, got {self.b_dec_init!r}")
        if self.normalize_activations not in NORMALIZATIONS:
            raise HusaiError(f"SAEConfig.normalize_activations must be one of {NORMALIZATIONS}, "
                             f"got {self.normalize_activations!r}")
        if self.decoder_norm not in DECODER_NORMS:
            raise HusaiError(f"SAEConfig.decoder_norm must be one of {DECODER_NORMS}, got {self.decoder_norm!r}")
        if self.decoder_norm == "free" and self.architecture != "topk":
            raise HusaiError(f"SAEConfig.decoder_norm='free' is implemented for topk only, got {self.architecture!r}")
        if isinstance(self.decoder_init_norm, bool) or not (isinstance(self.decoder_init_norm, numbers.Real)
                                                           and self.decoder_init_norm > 0):
            raise HusaiError(f"SAEConfig.decoder_init_norm must be a number > 0, got {self.decoder_init_norm!r}")
        if self.decoder_init_norm != 1.0 and self.decoder_norm != "free":
            raise HusaiError("SAEConfig.decoder_init_norm != 1 needs decoder_norm='free' (unit rows would undo it)")
        if self.grad_clip is not None and (isinstance(self.grad_clip, bool) or not (
                isinstance(self.grad_clip, numbers.Real) and self.grad_clip > 0)):
            raise HusaiError(f"SAEConfig.grad_clip must be a number > 0 or None, got {self.grad_clip!r}")
        if self.decode_impl not in DECODE_IMPLS:
            raise HusaiError(f"SAEConfig.decode_impl must be one of {DECODE_IMPLS}, got {self.decode_impl!r}")
        if self.batchtopk_calibration not in CALIBRATIONS:
            raise HusaiError(
                f"SAEConfig.batchtopk_calibration must be one of {CALIBRATIONS}, "
                f"got {self.batchtopk_calibration!r}"
            )
        if self.d_out is not None and not self.transcoder:
            raise HusaiError("SAEConfig.d_out is only meaningful with transcoder=True")
        for p in self.matryoshka_prefixes:
            if p <= 0 or p > self.d_sae:
                raise HusaiError(
                    f"SAEConfig.matryoshka_prefixes: prefix {p} must be in 1..d_sae={self.d_sae}"
                )
        if not isinstance(self.extra, dict):
            raise HusaiError("SAEConfig.extra must be a dict")

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["matryoshka_prefixes"] = list(self.matryoshka_prefixes)
        d["adam_betas"] = list(self.adam_betas)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SAEConfig":
        if not isinstance(d, dict):
            raise HusaiError(f"SAE config must be a JSON object, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise HusaiError(f"SAE config has unknown field(s): {', '.join(unknown)}")
        kw = dict(d)
        for name in ("matryoshka_prefixes", "adam_betas"):
            if name in kw:
                kw[name] = tuple(kw[name])
        return cls(**kw)

    def replace(self, **changes: Any) -> "SAEConfig":
        return dataclasses.replace(self, **changes)
