"""Export to / import from the SAELens 6.x on-disk format (``cfg.json`` + ``sae_weights.safetensors``).

SAELens computes ``hidden_pre = (x - b_dec * apply_b_dec_to_input) @ W_enc + b_enc`` with
``W_enc`` (d_in, d_sae) and ``W_dec`` (d_sae, d_in), then its activation:

==============  ====================  ================================================
ours            SAELens architecture  notes
==============  ====================  ================================================
relu            standard              transcoder: ``transcoder``
topk            topk                  ``k``; ``rescale_acts_by_decoder_norm`` = False
matryoshka      topk                  inference is plain TopK
jumprelu        jumprelu              ``threshold`` = exp(log_threshold);
                                      transcoder: ``jumprelu_transcoder``
batchtopk       jumprelu              every ``threshold`` = the calibrated global one
                                      (what SAELens itself saves BatchTopK as)
==============  ====================  ================================================

SAELens transcoders do not subtract a bias before the encoder, so our transcoder input bias
is folded into ``b_enc`` (b_enc - b_in @ W_enc); the result is exact. Our own config rides
along in ``metadata["husai"]`` so ``import_saelens`` restores the architecture (Matryoshka,
BatchTopK) and training settings; files from elsewhere are mapped by architecture.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ..errors import HusaiError
from ..io import load_tensors, read_json, save_tensors, write_json
from .base import BaseSAE
from .build import SAE_CLASSES
from .checkpoint import public_tensors
from .config import SAEConfig

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"


def _saelens_version() -> str:
    try:
        from importlib.metadata import version

        return version("sae-lens")
    except Exception:  # not installed: any 6.x version string keeps SAELens on the 6.x path
        return "6.0.0"


def export_saelens(sae: BaseSAE, directory: str | os.PathLike, *, model_name: str | None = None,
                   hook_name: str | None = None) -> Path:
    """Write ``sae`` in the SAELens on-disk format; load it with ``sae_lens.SAE.load_from_disk``."""
    cfg = sae.cfg
    pub = public_tensors(sae)
    W_enc, b_enc, W_dec, b_dec = pub["W_enc"], pub["b_enc"], pub["W_dec"], pub["b_dec"]
    arch = cfg.architecture
    threshold = None
    if arch == "jumprelu":
        threshold = pub["log_threshold"].exp()
    elif arch == "batchtopk":
        if not bool(pub["batchtopk_calibrated"]):
            raise HusaiError("export_saelens: calibrate the BatchTopK threshold first (sae.calibrate(x))")
        threshold = torch.full_like(b_enc, float(pub["batchtopk_threshold"]))
    if cfg.transcoder:
        names = {"relu": "transcoder", "jumprelu": "jumprelu_transcoder", "batchtopk": "jumprelu_transcoder"}
        if arch not in names:
            raise HusaiError(f"SAELens has no {arch} transcoder format; export relu, jumprelu or batchtopk transcoders")
        sl_arch = names[arch]
        b_enc = b_enc - pub["b_in"].double() @ W_enc.double()
        b_enc = b_enc.float()
    else:
        sl_arch = {"relu": "standard", "topk": "topk", "matryoshka": "topk",
                   "jumprelu": "jumprelu", "batchtopk": "jumprelu"}[arch]
    version = _saelens_version()
    cfg_json: dict[str, Any] = {
        "architecture": sl_arch,
        "d_in": cfg.d_in,
        "d_sae": cfg.d_sae,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": not cfg.transcoder,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {
            "sae_lens_version": version,
            "sae_lens_training_version": version,
            "model_name": model_name,
            "hook_name": hook_name,
            "husai": {"architecture": arch, "config": cfg.to_dict()},
        },
    }
    if sl_arch == "topk":
        cfg_json["k"] = cfg.k
        cfg_json["rescale_acts_by_decoder_norm"] = False
    if cfg.transcoder:
        cfg_json["d_out"] = cfg.d_target
    weights = {"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec}
    if threshold is not None:
        weights["threshold"] = threshold
    directory = Path(directory)
    save_tensors(directory / WEIGHTS_FILE, {k: v.float().contiguous() for k, v in weights.items()})
    write_json(directory / CFG_FILE, cfg_json)
    return directory


def import_saelens(directory: str | os.PathLike, device: str | torch.device = "cpu") -> BaseSAE:
    """Read an SAELens-format SAE (standard, topk, jumprelu, transcoder, jumprelu_transcoder).

    Decoder rows are made unit-norm by folding their norms into the encoder (and threshold)
    wherever that leaves the SAE's function unchanged (all but TopK without
    ``rescale_acts_by_decoder_norm``, which is kept as is).
    """
    from .checkpoint import sae_from_public

    directory = Path(directory)
    if not directory.is_dir():
        raise HusaiError(f"missing SAELens folder: {directory}")
    raw = read_json(directory / CFG_FILE, "SAELens config")
    if not isinstance(raw, dict):
        raise HusaiError(f"corrupt SAELens config: {directory / CFG_FILE} (not a JSON object)")
    w = load_tensors(directory / WEIGHTS_FILE, "SAELens weights")
    src = str(directory)
    sl_arch = raw.get("architecture", "standard")
    supported = ("standard", "topk", "jumprelu", "transcoder", "jumprelu_transcoder")
    if sl_arch not in supported:
        raise HusaiError(f"import_saelens: unsupported SAELens architecture {sl_arch!r} in {src}")
    for key, ok in (("normalize_activations", "none"), ("reshape_activations", "none")):
        if raw.get(key, "none") not in (ok, None):
            raise HusaiError(f"import_saelens: {key}={raw[key]!r} is not supported ({src})")
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        if name not in w:
            raise HusaiError(f"corrupt SAELens weights in {src}: missing tensor {name!r}")
    W_enc, b_enc = w["W_enc"].double(), w["b_enc"].double()
    W_dec, b_dec = w["W_dec"].double(), w["b_dec"].double()
    if W_enc.dim() != 2 or W_dec.dim() != 2:
        raise HusaiError(f"corrupt SAELens weights in {src}: W_enc/W_dec must be matrices")
    d_in, d_sae = W_enc.shape
    transcoder = sl_arch.endswith("transcoder")
    jump = sl_arch.startswith("jumprelu")
    threshold = w.get("threshold")
    if jump and threshold is None:
        raise HusaiError(f"corrupt SAELens weights in {src}: jumprelu needs a 'threshold' tensor")
    threshold = None if threshold is None else threshold.double()
    if tuple(W_dec.shape[:1]) != (d_sae,) or b_enc.shape != (d_sae,):
        raise HusaiError(f"corrupt SAELens weights in {src}: inconsistent shapes W_enc {tuple(W_enc.shape)}, "
                         f"W_dec {tuple(W_dec.shape)}, b_enc {tuple(b_enc.shape)}")

    if not transcoder and not raw.get("apply_b_dec_to_input", True):
        b_enc = b_enc + b_dec @ W_enc  # (x - b_dec) W + (b_enc + b_dec W) == x W + b_enc
    norms = W_dec.norm(dim=1).clamp_min(1e-12)
    fold = sl_arch != "topk" or bool(raw.get("rescale_acts_by_decoder_norm", False))
    if fold:  # a positive per-latent scale commutes with ReLU / JumpReLU / the rescaled TopK
        W_enc, b_enc, W_dec = W_enc * norms, b_enc * norms, W_dec / norms[:, None]
        if threshold is not None:
            threshold = threshold * norms

    ours = (raw.get("metadata") or {}).get("husai") or {}
    cfg = _config_from(raw, ours, sl_arch, d_in, d_sae, W_dec.shape[1], transcoder)
    if cfg.architecture == "batchtopk" and not torch.allclose(threshold, threshold[:1].expand_as(threshold)):
        cfg = cfg.replace(architecture="jumprelu")  # per-latent thresholds: no longer one global one
    tensors = {"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec}
    if transcoder:
        tensors["b_in"] = torch.zeros(d_in, dtype=torch.float64)
    if cfg.architecture == "jumprelu":
        tensors["log_threshold"] = threshold.clamp_min(1e-30).log()
    elif cfg.architecture == "batchtopk":
        tensors["batchtopk_threshold"] = threshold[:1].reshape(())
        tensors["batchtopk_calibrated"] = torch.tensor(True)
    sae = sae_from_public(cfg, {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}, src)
    from ..device import pick_device

    return sae.to(pick_device(device)).eval()


def _config_from(raw: dict, ours: dict, sl_arch: str, d_in: int, d_sae: int, d_out: int,
                 transcoder: bool) -> SAEConfig:
    base = {"standard": "relu", "topk": "topk", "jumprelu": "jumprelu",
            "transcoder": "relu", "jumprelu_transcoder": "jumprelu"}[sl_arch]
    saved = ours.get("config") if isinstance(ours, dict) else None
    if isinstance(saved, dict):
        try:
            cfg = SAEConfig.from_dict(saved)
        except (HusaiError, TypeError):
            cfg = None
        # trust the saved config only where it agrees with the weights actually on disk
        if cfg is not None and (cfg.d_in, cfg.d_sae, cfg.d_target, cfg.transcoder) == (d_in, d_sae, d_out, transcoder):
            if SAE_CLASSES[cfg.architecture] is SAE_CLASSES[base] or (base, cfg.architecture) in (
                ("topk", "matryoshka"), ("jumprelu", "batchtopk")):
                return cfg
    kw: dict[str, Any] = {"architecture": base, "d_in": d_in, "d_sae": d_sae}
    if transcoder:
        kw.update(transcoder=True, d_out=d_out)
    if base == "topk":
        kw["k"] = int(raw.get("k", 100))
        if kw["k"] > d_sae:
            raise HusaiError(f"corrupt SAELens config: k={kw['k']} > d_sae={d_sae}")
    return SAEConfig(**kw)
