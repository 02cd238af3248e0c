"""Read SAEs trained by other libraries into our common ``BaseSAE``, and detect their format.

``detect_format(path)`` names the on-disk format; ``read_sae(path)`` returns an SAE of ours
whose ``encode`` / ``decode`` reproduce the source library's own model loaded from the same
files. Formats (``FORMATS``):

``husai``                ``config.json`` (``"format": "husai.sae"``) + ``sae.safetensors``
                         (``checkpoint.save_sae``)
``saelens``              ``cfg.json`` + ``sae_weights.safetensors`` (``saelens.import_saelens``)
``sparsify``             EleutherAI sparsify (``eai-sparsify``): one folder per hookpoint with
                         ``cfg.json`` + ``sae.safetensors`` (``SparseCoder.save_to_disk``)
``dictionary_learning``  saprmarks/dictionary_learning: ``ae.pt`` (a ``torch.save``'d state
                         dict) + ``config.json`` (``{"trainer": {"dict_class": ...}}``)

A folder holding exactly one checkpoint folder (a sparsify run folder with one hookpoint,
a dictionary_learning ``save_dir`` with one ``trainer_0``) is accepted in its place; with
several, a ``HusaiError`` lists them. A dictionary_learning ``.pt`` file (``ae.pt``,
``checkpoints/ae_<step>.pt``) may be given directly.

Mapping (ours computes ``pre = (x - b_in) W_enc + b_enc`` with ``b_in = b_dec`` for an SAE,
decoder rows ``W_dec`` (d_sae, d_out) of unit norm, ``x_hat = z W_dec + b_dec``):

=====================================  ==========  ===========================================
source class                           ours        notes
=====================================  ==========  ===========================================
sparsify SparseCoder, topk             topk        ``encoder.weight`` is (d_sae, d_in) rows;
                                                   ``W_dec`` (d_sae, d_in) as ours; ``b_dec``
                                                   subtracted before the encoder as ours
sparsify, ``transcode=True``           topk,       no input bias (our ``b_in`` = 0), d_out = d_in
                                       transcoder
dl AutoEncoder                         relu        pre-bias ``bias`` = our ``b_dec``;
                                                   ``decoder.weight`` is (d_in, d_sae): transposed
dl AutoEncoderNew                      relu        no pre-bias: folded into ``b_enc``
dl AutoEncoderTopK                     topk        its default top-k encode (the ``threshold``
                                                   buffer, used only on request, is dropped)
dl BatchTopKSAE                        batchtopk   calibrated threshold = max(threshold, 0)
dl MatryoshkaBatchTopKSAE              batchtopk   (all groups active, as when loaded)
dl JumpReluAutoEncoder                 jumprelu    ae.pt never subtracts ``b_dec`` before the
                                                   encoder (``apply_b_dec_to_input=False``): folded
                                                   into ``b_enc``; threshold <= 0 acts as ReLU and
                                                   becomes a threshold of exactly 0
=====================================  ==========  ===========================================

Both libraries' TopK takes the k largest of ReLU(pre) (ties among zeros give zeros), which is
ours: ReLU(TopK(pre)). dictionary_learning's BatchTopK/Matryoshka inference is
``r * (r > threshold)`` with ``r = ReLU(pre)``: for threshold >= 0 that is our
``pre * (pre > threshold)``; a negative (never calibrated, the default -1) threshold keeps
every positive latent, i.e. our threshold 0.

Decoder norms. Our rows are unit-norm. When the source rows already are (within float32
rounding: ``allclose(norms, 1)``, rtol 1e-5, the test dictionary_learning itself uses;
for a bf16/fp16 checkpoint within that dtype's epsilon) the weights are taken as they are.
Otherwise each row's norm ``n_j`` is folded into the encoder: ``W_enc[:, j] *= n_j``,
``b_enc[j] *= n_j``, threshold ``*= n_j``, ``W_dec[j] /= n_j``. ReLU and JumpReLU commute
with that positive scale, so reconstructions are unchanged and latent ``j`` reads ``n_j``
times the source's (what dictionary_learning's ``AutoEncoder.from_pretrained`` does too).
A BatchTopK SAE with non-unit rows gets one threshold per latent and so is read as
``jumprelu`` (exact). TopK selection compares raw pre-activations, which a per-latent scale
would reorder, so a TopK SAE (sparsify, or dl AutoEncoderTopK) with non-unit rows raises a
``HusaiError`` instead of being approximated; so does a zero decoder row that would need it.
Sparsify transcoders are trained without decoder normalisation, so in practice only those
whose rows happen to be unit-norm can be read.

Not representable, each a one-line ``HusaiError`` naming it: sparsify ``groupmax``
activation, a non-zero sparsify skip connection ``W_skip``, dictionary_learning
``GatedAutoEncoder``; unknown classes too.

Provenance (constant across seeds of one configuration, so seeds still stack) goes in
``cfg.extra``: ``source_format``, ``source_class`` (and ``matryoshka_group_sizes``, or a
``note`` when BatchTopK is read as JumpReLU).

Reading needs only torch and safetensors: neither sparsify nor dictionary_learning is
imported here (the tests use them to check the readers against the real packages).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..device import pick_device
from ..errors import HusaiError
from ..io import load_tensors, read_json
from .base import BaseSAE
from .config import SAEConfig

FORMATS = ("husai", "saelens", "sparsify", "dictionary_learning")

# husai / SAELens / sparsify / dictionary_learning file names
_HUSAI_CFG, _HUSAI_W = "config.json", "sae.safetensors"
_SL_CFG, _SL_W = "cfg.json", "sae_weights.safetensors"
_SP_CFG, _SP_W = "cfg.json", "sae.safetensors"
_DL_W, _DL_CFG = "ae.pt", "config.json"

_EXPECTED = (
    "config.json + sae.safetensors (husai), cfg.json + sae_weights.safetensors (saelens), "
    "cfg.json + sae.safetensors (sparsify) or ae.pt (dictionary_learning)"
)

# log-threshold whose exp() is exactly 0 in every float dtype (a JumpReLU that is a ReLU)
_ZERO_LOG_THRESHOLD = -1000.0


# ====================================================================== detection
def detect_format(path: str | os.PathLike) -> str:
    """The format of the SAE checkpoint at ``path``: one of ``FORMATS``.

    ``path`` is a checkpoint folder, a folder holding exactly one checkpoint folder, or a
    dictionary_learning ``.pt`` file. Anything else is a one-line ``HusaiError`` naming the
    path and what was missing.
    """
    return _locate(path)[0]


def _locate(path: str | os.PathLike) -> tuple[str, Path]:
    """(format, the folder or file to read) for ``path``."""
    p = Path(path)
    if not p.exists():
        raise HusaiError(f"no SAE checkpoint at {p}: no such file or folder")
    if p.is_file():
        if p.suffix == ".pt":
            return "dictionary_learning", p
        if p.name in (_HUSAI_CFG, _HUSAI_W, _SL_CFG, _SL_W):
            p = p.parent
        else:
            raise HusaiError(f"{p} is not an SAE checkpoint file: give its folder ({_EXPECTED}) or an ae.pt file")
    if not p.is_dir():
        raise HusaiError(f"no SAE checkpoint at {p}: not a file or folder")
    fmt = _leaf_format(p)
    if fmt is not None:
        return fmt, p
    children = _checkpoint_children(p)
    if len(children) == 1:
        return children[0][1], children[0][0]
    if len(children) > 1:
        listing = ", ".join(f"{c.name} ({f})" for c, f in children)
        raise HusaiError(f"{p} holds {len(children)} SAE checkpoints: {listing}; give the path of one of them")
    raise HusaiError(_missing_message(p))


def _leaf_format(p: Path) -> str | None:
    """The format of the checkpoint directly in folder ``p``, or None if there is none.

    Raises only when a husai config.json is unreadable (it must be read to be recognised).
    """
    has = {n for n in (_HUSAI_CFG, _HUSAI_W, _SL_CFG, _SL_W, _DL_W) if (p / n).is_file()}
    if {_HUSAI_CFG, _HUSAI_W} <= has and _SL_CFG not in has:
        meta = read_json(p / _HUSAI_CFG, "SAE config")
        if isinstance(meta, dict) and meta.get("format") == "husai.sae":
            return "husai"
    if _SL_CFG in has and _SL_W in has:
        return "saelens"
    if _SP_CFG in has and _SP_W in has:
        return "sparsify"
    if _DL_W in has:
        return "dictionary_learning"
    return None


def _checkpoint_children(p: Path) -> list[tuple[Path, str]]:
    out = []
    try:
        entries = sorted(p.iterdir())
    except OSError as exc:
        raise HusaiError(f"cannot list SAE checkpoint folder {p}: {_one_line(exc)}") from None
    for child in entries:
        if not child.is_dir():
            continue
        try:
            fmt = _leaf_format(child)
        except HusaiError:
            fmt = None
        if fmt is not None:
            out.append((child, fmt))
    return out


def _missing_message(p: Path) -> str:
    has = lambda n: (p / n).is_file()  # noqa: E731
    if has(_SP_CFG):
        return (f"incomplete SAE checkpoint {p}: has cfg.json but neither sae_weights.safetensors (saelens) "
                f"nor sae.safetensors (sparsify)")
    if has(_HUSAI_CFG) and has(_HUSAI_W):
        return (f"unknown SAE checkpoint {p}: config.json is not a husai SAE config (no \"format\": "
                f"\"husai.sae\") and there is no cfg.json (sparsify) or ae.pt (dictionary_learning)")
    if has(_HUSAI_CFG):
        return (f"incomplete SAE checkpoint {p}: has config.json but neither sae.safetensors (husai) "
                f"nor ae.pt (dictionary_learning)")
    if has(_HUSAI_W):
        return (f"incomplete SAE checkpoint {p}: has sae.safetensors but neither config.json (husai) "
                f"nor cfg.json (sparsify)")
    if has(_SL_W):
        return f"incomplete SAE checkpoint {p}: has sae_weights.safetensors but no cfg.json (saelens)"
    return f"no SAE checkpoint in {p}: expected {_EXPECTED}, or one folder holding them"


# ====================================================================== reading
def read_sae(path: str | os.PathLike, format: str = "auto", device: str | torch.device = "cpu") -> BaseSAE:
    """Read the SAE at ``path`` (any of ``FORMATS``; ``"auto"`` detects it) as our ``BaseSAE``.

    The result is in ``eval()`` mode on ``device``. Its ``encode`` / ``decode`` match the
    source library's model (see the module docstring for each convention mapped, and for
    the decoder-norm folding that rescales latents when source decoder rows are not
    unit-norm). Anything missing, corrupt or not representable is a one-line ``HusaiError``.
    """
    if format != "auto" and format not in FORMATS:
        raise HusaiError(f"unknown SAE format {format!r}; choose 'auto' or one of {', '.join(FORMATS)}")
    try:
        fmt, target = _locate(path)
        if format != "auto" and fmt != format:
            raise HusaiError(f"{path} holds a {fmt} SAE checkpoint, not {format}")
        if fmt == "husai":
            from .checkpoint import load_sae

            return load_sae(target, device=device)
        if fmt == "saelens":
            from .saelens import import_saelens

            return import_saelens(target, device=device)
        sae = _read_sparsify(target) if fmt == "sparsify" else _read_dictionary_learning(target)
        return sae.to(pick_device(device)).eval()
    except HusaiError as exc:
        msg = str(exc)
        if "\n" in msg or "\r" in msg:
            raise HusaiError(_one_line(msg)) from None
        raise


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


def _torch_load(pt: Path) -> dict[str, Tensor]:
    if not pt.is_file():
        raise HusaiError(f"missing dictionary_learning weights: {pt}")
    try:
        state = torch.load(str(pt), map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and torch errors alike mean an unreadable file
        raise HusaiError(f"corrupt dictionary_learning weights: {pt} "
                         f"({type(exc).__name__}: {_one_line(exc)})") from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, Tensor)
                                              for k, v in state.items()):
        raise HusaiError(f"corrupt dictionary_learning weights: {pt} (not a state dict of tensors)")
    return state


# ====================================================================== shared conversion
def _assemble(arch: str, src: str, dtype: torch.dtype, *, enc_rows: Tensor, b_enc: Tensor, dec_rows: Tensor,
              b_dec: Tensor, pre_bias: Tensor | str | None, k: int | None = None, threshold: Tensor | None = None,
              transcoder: bool = False, extra: dict[str, Any]) -> BaseSAE:
    """Our SAE from source tensors: encoder rows (d_sae, d_in), decoder rows (d_sae, d_out).

    ``pre_bias`` is what the source subtracts before the encoder: ``"b_dec"`` (b_dec itself,
    our convention), a tensor, or None (nothing). For an SAE
    ours subtracts ``b_dec``, so a different pre-bias is folded into ``b_enc``; a transcoder
    keeps its own input bias ``b_in``. ``threshold`` (d_sae,) >= 0 for batchtopk/jumprelu.
    """
    from .checkpoint import sae_from_public

    for name, t in (("encoder", enc_rows), ("encoder bias", b_enc), ("decoder", dec_rows), ("decoder bias", b_dec)):
        if not t.is_floating_point() or not bool(torch.isfinite(t).all()):
            raise HusaiError(f"corrupt SAE weights in {src}: the {name} has non-finite or non-float values")
    d_sae, d_in = enc_rows.shape
    d_out = dec_rows.shape[1]
    # Matrices stay float32 (an SAE with 10^5 latents is gigabytes); vectors are worked in float64.
    E, D = enc_rows.to(torch.float32), dec_rows.to(torch.float32)
    be, bd = b_enc.to(torch.float64), b_dec.to(torch.float64)
    th = None if threshold is None else threshold.to(torch.float64)
    tensors: dict[str, Tensor] = {}
    if isinstance(pre_bias, str) and pre_bias != "b_dec":
        raise ValueError(f"pre_bias must be 'b_dec', a tensor or None, got {pre_bias!r}")
    if transcoder:
        if isinstance(pre_bias, str):
            raise ValueError("a transcoder has its own input bias")
        tensors["b_in"] = torch.zeros(d_in, dtype=torch.float64) if pre_bias is None else pre_bias.to(torch.float64)
    elif not isinstance(pre_bias, str):
        pb = torch.zeros_like(bd) if pre_bias is None else pre_bias.to(torch.float64)
        # (x - pb) E^T + be == (x - bd) E^T + (be + E (bd - pb))
        be = be + _matvec64(enc_rows, bd - pb)

    norms = D.norm(dim=1)
    if not _unit(norms, dtype):
        worst = float((norms.double() - 1).abs().max())
        if arch == "topk":
            raise HusaiError(f"unsupported SAE in {src}: TopK with decoder rows that are not unit-norm "
                             f"(max |norm - 1| = {worst:.3g}); folding the norms into the encoder would "
                             f"change which latents are selected")
        n = torch.cat([r.to(torch.float64).norm(dim=1) for r in dec_rows.split(4096)])
        if bool((n == 0).any()):
            raise HusaiError(f"unsupported SAE in {src}: decoder row {int((n == 0).nonzero()[0])} is zero, "
                             f"so it cannot be normalised to unit norm")
        n32 = n.to(torch.float32)[:, None]
        E, D = E * n32, D / n32
        be = be * n
        if th is not None:
            th = th * n
        if arch == "batchtopk":
            arch = "jumprelu"  # one threshold per latent now
            extra = {**extra, "note": "BatchTopK with non-unit decoder rows: read as JumpReLU"}
    kw: dict[str, Any] = {"architecture": arch, "d_in": d_in, "d_sae": d_sae, "extra": extra}
    if arch in ("topk", "batchtopk"):
        kw["k"] = k
    if transcoder:
        kw.update(transcoder=True, d_out=d_out)
    try:
        cfg = SAEConfig(**kw)
    except HusaiError as exc:
        raise HusaiError(f"cannot represent the SAE in {src}: {exc}") from None
    tensors.update({"W_enc": E.transpose(0, 1), "b_enc": be, "W_dec": D, "b_dec": bd})
    if arch == "jumprelu":
        tensors["log_threshold"] = torch.where(th > 0, th.clamp_min(1e-300).log(),
                                               torch.full_like(th, _ZERO_LOG_THRESHOLD))
    elif arch == "batchtopk":
        tensors["batchtopk_threshold"] = th[0].reshape(())
        tensors["batchtopk_calibrated"] = torch.tensor(True)
    out = {n: (t.to(torch.float32) if t.is_floating_point() else t) for n, t in tensors.items()}
    return sae_from_public(cfg, out, src)


def _matvec64(rows: Tensor, v: Tensor, chunk: int = 4096) -> Tensor:
    """rows (m, d) @ v (d,) in float64, a block of rows at a time (no float64 copy of the matrix)."""
    return torch.cat([r.to(torch.float64) @ v for r in rows.split(chunk)])


def _unit(norms: Tensor, dtype: torch.dtype) -> bool:
    """Decoder rows count as unit-norm at float32 rounding (low-precision dtypes: their eps)."""
    rtol = 1e-5 if torch.finfo(dtype).bits >= 32 else float(torch.finfo(dtype).eps)
    return bool(torch.allclose(norms, torch.ones_like(norms), rtol=rtol, atol=1e-8))


# ====================================================================== small helpers
def _check_keys(w: dict[str, Tensor], need: set[str], optional: set[str], src: str, what: str) -> None:
    missing = sorted(need - set(w))
    if missing:
        raise HusaiError(f"corrupt {what} in {src}: missing tensor(s) {', '.join(missing)}")
    extra = sorted(set(w) - need - optional)
    if extra:
        raise HusaiError(f"corrupt {what} in {src}: unexpected tensor(s) {', '.join(extra)}")


def _check_shapes(src: str, what: str, items: dict[str, tuple[Tensor, tuple[int, ...]]]) -> None:
    for name, (t, shape) in items.items():
        if tuple(t.shape) != shape:
            raise HusaiError(f"corrupt {what} in {src}: {name} has shape {tuple(t.shape)}, expected {shape}")


def _int_field(raw: dict, name: str, path: Path, what: str, default: int | None = None) -> int:
    v = raw.get(name, default)
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise HusaiError(f"corrupt {what}: {path} has {name}={v!r}, expected a positive integer")
    return v


def _one_line(exc: BaseException | str) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 300 else text[:297] + "..."


__all__ = ["FORMATS", "detect_format", "read_sae"]
