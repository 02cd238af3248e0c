"""Map EleutherAI sparsify and dictionary_learning checkpoints to our parameter names and classes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ...errors import HusaiError
from ...io import load_tensors, read_json
from ..base import BaseSAE
from .assemble import _assemble
from .formats import _DL_CFG, _DL_W, _SP_CFG, _SP_W, _check_keys, _check_shapes, _int_field, _torch_load


# ---------------------------------------------------------------------- sparsify
_SP_TENSORS = ("encoder.weight", "encoder.bias", "W_dec", "b_dec")


def _read_sparsify(folder: Path) -> BaseSAE:
    src = str(folder)
    raw = read_json(folder / _SP_CFG, "sparsify config")
    if not isinstance(raw, dict):
        raise HusaiError(f"corrupt sparsify config: {folder / _SP_CFG} (not a JSON object)")
    d_in = _int_field(raw, "d_in", folder / _SP_CFG, "sparsify config")
    activation = raw.get("activation", "topk")
    if activation != "topk":
        raise HusaiError(f"unsupported sparsify feature in {src}: activation={activation!r} "
                         f"(HUSAI SAEs have TopK, not group-max, latents)")
    k = _int_field(raw, "k", folder / _SP_CFG, "sparsify config", default=32)
    transcode = bool(raw.get("transcode", False))
    w = load_tensors(folder / _SP_W, "sparsify weights")
    if "W_dec" not in w and "encoder.weight" in w:
        raise HusaiError(f"unsupported sparsify checkpoint {src}: it has no decoder (W_dec); "
                         f"HUSAI SAEs need one")
    _check_keys(w, set(_SP_TENSORS), {"W_skip"}, src, "sparsify weights")
    enc, b_enc, dec, b_dec = (w[n] for n in _SP_TENSORS)
    dtype = enc.dtype
    if enc.dim() != 2 or enc.shape[1] != d_in:
        raise HusaiError(f"corrupt sparsify weights in {src}: encoder.weight has shape {tuple(enc.shape)}, "
                         f"expected (num_latents, d_in={d_in})")
    d_sae = enc.shape[0]
    n_lat = int(raw.get("num_latents") or 0) or d_in * int(raw.get("expansion_factor", 32))
    if n_lat != d_sae:
        raise HusaiError(f"corrupt sparsify checkpoint {src}: cfg.json implies {n_lat} latents but "
                         f"encoder.weight has {d_sae}")
    _check_shapes(src, "sparsify weights", {"encoder.bias": (b_enc, (d_sae,)), "W_dec": (dec, (d_sae, d_in)),
                                            "b_dec": (b_dec, (d_in,))})
    if "W_skip" in w:
        skip = w["W_skip"]
        if tuple(skip.shape) != (d_in, d_in):
            raise HusaiError(f"corrupt sparsify weights in {src}: W_skip has shape {tuple(skip.shape)}, "
                             f"expected ({d_in}, {d_in})")
        if bool(skip.ne(0).any()):
            raise HusaiError(f"unsupported sparsify feature in {src}: skip connection (W_skip, a dense "
                             f"input-to-output linear term) has no counterpart in HUSAI SAEs")
    if not 1 <= k <= d_sae:
        raise HusaiError(f"corrupt sparsify config: {folder / _SP_CFG} has k={k}, outside 1..{d_sae}")
    extra = {"source_format": "sparsify", "source_class": "SparseCoder"}
    return _assemble("topk", src, dtype, enc_rows=enc, b_enc=b_enc, dec_rows=dec, b_dec=b_dec,
                     pre_bias=None if transcode else "b_dec", k=k, transcoder=transcode, extra=extra)


# ---------------------------------------------------------------------- dictionary_learning
_DL_KEYS = {
    "AutoEncoder": {"bias", "encoder.weight", "encoder.bias", "decoder.weight"},
    "AutoEncoderNew": {"encoder.weight", "encoder.bias", "decoder.weight", "decoder.bias"},
    "AutoEncoderTopK": {"b_dec", "k", "threshold", "encoder.weight", "encoder.bias", "decoder.weight"},
    "BatchTopKSAE": {"b_dec", "k", "threshold", "encoder.weight", "encoder.bias", "decoder.weight"},
    "MatryoshkaBatchTopKSAE": {"W_enc", "b_enc", "W_dec", "b_dec", "k", "threshold", "group_sizes"},
    "JumpReluAutoEncoder": {"W_enc", "b_enc", "W_dec", "b_dec", "threshold"},
}
_DL_UNSUPPORTED = {
    "GatedAutoEncoder": "gated SAE (separate gate and magnitude paths)",
    "IdentityDict": "identity dictionary (no weights)",
}
_DL_GATED_KEYS = {"decoder_bias", "encoder.weight", "r_mag", "gate_bias", "mag_bias", "decoder.weight"}


def _read_dictionary_learning(target: Path) -> BaseSAE:
    if target.is_file():
        pt = target
        configs = [target.parent / _DL_CFG]  # ae.pt beside config.json, or checkpoints/ae_<step>.pt below it
        if target.parent.name == "checkpoints":
            configs.append(target.parent.parent / _DL_CFG)
    else:
        pt = target / _DL_W
        configs = [target / _DL_CFG]
    src = str(pt)
    cfg_path = next((c for c in configs if c.is_file()), None)
    trainer: dict[str, Any] = {}
    if cfg_path is not None:
        meta = read_json(cfg_path, "dictionary_learning config")
        trainer = meta.get("trainer") if isinstance(meta, dict) else None
        if not isinstance(trainer, dict):
            raise HusaiError(f"corrupt dictionary_learning config: {cfg_path} (no \"trainer\" object)")
    state = _torch_load(pt)
    dict_class = trainer.get("dict_class") or _infer_dl_class(state, src)
    if dict_class in _DL_UNSUPPORTED:
        raise HusaiError(f"unsupported dictionary_learning class in {src}: {dict_class} "
                         f"({_DL_UNSUPPORTED[dict_class]}) has no HUSAI counterpart")
    if dict_class not in _DL_KEYS:
        raise HusaiError(f"unsupported dictionary_learning class in {src}: {dict_class!r}; "
                         f"readable: {', '.join(_DL_KEYS)}")
    _check_keys(state, _DL_KEYS[dict_class], set(), src, f"dictionary_learning {dict_class} state")
    s = {n: t for n, t in state.items()}

    if dict_class in ("AutoEncoder", "AutoEncoderNew", "AutoEncoderTopK", "BatchTopKSAE"):
        enc, b_enc, dec = s["encoder.weight"], s["encoder.bias"], s["decoder.weight"]
        if enc.dim() != 2 or dec.dim() != 2:
            raise HusaiError(f"corrupt dictionary_learning state {src}: encoder/decoder weights must be matrices")
        d_sae, d_in = enc.shape
        _check_shapes(src, "dictionary_learning state", {"encoder.bias": (b_enc, (d_sae,)),
                                                          "decoder.weight": (dec, (d_in, d_sae))})
        dec_rows = dec.transpose(0, 1)  # nn.Linear(d_sae, d_in).weight is (d_in, d_sae)
        if dict_class == "AutoEncoder":
            b_dec, pre = s["bias"], "b_dec"  # one bias, subtracted before the encoder and added back
        elif dict_class == "AutoEncoderNew":
            b_dec, pre = s["decoder.bias"], None
        else:
            b_dec, pre = s["b_dec"], "b_dec"
        _check_shapes(src, "dictionary_learning state", {"decoder bias": (b_dec, (d_in,))})
    else:
        W_enc, b_enc, dec_rows, b_dec = s["W_enc"], s["b_enc"], s["W_dec"], s["b_dec"]
        if W_enc.dim() != 2:
            raise HusaiError(f"corrupt dictionary_learning state {src}: W_enc must be a matrix")
        d_in, d_sae = W_enc.shape
        _check_shapes(src, "dictionary_learning state", {"b_enc": (b_enc, (d_sae,)),
                                                          "W_dec": (dec_rows, (d_sae, d_in)),
                                                          "b_dec": (b_dec, (d_in,))})
        enc = W_enc.transpose(0, 1)
        # JumpReluAutoEncoder loaded from ae.pt has apply_b_dec_to_input=False
        pre = "b_dec" if dict_class == "MatryoshkaBatchTopKSAE" else None
    dtype = enc.dtype

    k = None
    if "k" in s:
        k = int(s["k"].reshape(-1)[0]) if s["k"].numel() == 1 else None
        if k is None:
            raise HusaiError(f"corrupt dictionary_learning state {src}: k must be one integer")
        if "k" in trainer and int(trainer["k"]) != k:
            raise HusaiError(f"inconsistent dictionary_learning checkpoint {src}: config k={trainer['k']} "
                             f"but ae.pt k={k}")
        if not 1 <= k <= d_sae:
            raise HusaiError(f"corrupt dictionary_learning state {src}: k={k} outside 1..{d_sae}")
    extra: dict[str, Any] = {"source_format": "dictionary_learning", "source_class": dict_class}
    threshold = None
    if dict_class in ("BatchTopKSAE", "MatryoshkaBatchTopKSAE"):
        th = s["threshold"]
        if th.numel() != 1:
            raise HusaiError(f"corrupt dictionary_learning state {src}: threshold must be one number")
        threshold = th.reshape(()).to(torch.float64).clamp_min(0.0).expand(d_sae)
        if dict_class == "MatryoshkaBatchTopKSAE":
            groups = [int(g) for g in s["group_sizes"].reshape(-1).tolist()]
            if sum(groups) != d_sae or any(g <= 0 for g in groups):
                raise HusaiError(f"corrupt dictionary_learning state {src}: group_sizes {groups} "
                                 f"do not split d_sae={d_sae}")
            extra["matryoshka_group_sizes"] = groups
    elif dict_class == "JumpReluAutoEncoder":
        threshold = s["threshold"]
        _check_shapes(src, "dictionary_learning state", {"threshold": (threshold, (d_sae,))})
        threshold = threshold.to(torch.float64).clamp_min(0.0)  # ReLU(pre * (pre > t)), t <= 0: ReLU
    arch = {"AutoEncoder": "relu", "AutoEncoderNew": "relu", "AutoEncoderTopK": "topk",
            "BatchTopKSAE": "batchtopk", "MatryoshkaBatchTopKSAE": "batchtopk",
            "JumpReluAutoEncoder": "jumprelu"}[dict_class]
    return _assemble(arch, src, dtype, enc_rows=enc, b_enc=b_enc, dec_rows=dec_rows, b_dec=b_dec,
                     pre_bias=pre, k=k, threshold=threshold, extra=extra)


def _infer_dl_class(state: dict[str, Tensor], src: str) -> str:
    keys = set(state)
    matches = [c for c, ks in _DL_KEYS.items() if ks == keys]
    if keys == _DL_GATED_KEYS:
        return "GatedAutoEncoder"
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise HusaiError(f"ambiguous dictionary_learning checkpoint {src}: its tensors fit "
                         f"{' and '.join(matches)}; put its config.json (with trainer.dict_class) beside it")
    raise HusaiError(f"unknown dictionary_learning checkpoint {src}: no config.json and tensors "
                     f"{', '.join(sorted(keys))} match no known class")
