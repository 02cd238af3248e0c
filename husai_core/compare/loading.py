"""Read the inputs of a comparison: any checkpoint ``sae.read_sae`` reads, or a SAELens pretrained
SAE from the local Hugging Face cache only, with its provenance.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ..errors import HusaiError


PRETRAINED_PREFIX = "saelens:"
_SEED_DIR = re.compile(r"^seed[_-]?(\d+)$")


# ====================================================================== loading
@dataclass
class LoadedSAE:
    """One input SAE, read into our ``BaseSAE``, with what its files say about its provenance."""

    path: str  # as given
    sae: Any  # husai_core.sae.BaseSAE
    format: str  # husai | saelens | sparsify | dictionary_learning | saelens_pretrained
    source: str  # the folder or file actually read (or release/sae_id)
    unit: str  # the seed's folder (its parent is the "source folder" used for grouping)
    hook: str | None = None  # TransformerLens hook name, when recorded
    model: str | None = None
    site: str | None = None  # dictionary_learning: lm_name / layer / submodule_name
    seed: int | None = None  # training seed, when recorded
    given_label: str | None = None  # from ``labels``
    label: str | None = None  # the group it ended up in

    @property
    def cfg(self):
        return self.sae.cfg

    def describe(self) -> dict[str, Any]:
        c = self.cfg
        return {"path": self.path, "label": self.label, "format": self.format,
                "source_class": c.extra.get("source_class"), "architecture": c.architecture, "d_in": c.d_in,
                "d_sae": c.d_sae, "k": c.k if c.architecture in ("topk", "batchtopk", "matryoshka") else None,
                "hook": self.hook, "model": self.model, "site": self.site, "seed": self.seed, "source": self.source}


def _one_line(exc: BaseException | str) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 300 else text[:297] + "..."


def pretrained_spec(path: str) -> tuple[str, str] | None:
    """``(release, sae_id)`` when ``path`` names a SAELens pretrained SAE rather than a file.

    ``saelens:release/sae_id`` always does; a bare ``release/sae_id`` does when it is not an
    existing path and ``release`` is in SAELens's pretrained directory.
    """
    text = str(path)
    explicit = text.startswith(PRETRAINED_PREFIX)
    if not explicit and (Path(text).exists() or "/" not in text):
        return None
    release, sep, sae_id = text.removeprefix(PRETRAINED_PREFIX).partition("/")
    if not sep or not release or not sae_id:
        if explicit:
            raise HusaiError(f"bad SAELens pretrained SAE {text!r}: expected saelens:<release>/<sae_id>")
        return None
    if not explicit:
        try:
            from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

            if release not in get_pretrained_saes_directory():
                return None
        except Exception:  # no sae_lens (or a broken directory): then it is just a missing path
            return None
    return release, sae_id


def load_pretrained(release: str, sae_id: str) -> tuple[Any, dict[str, Any]]:
    """A SAELens pretrained SAE from the local Hugging Face cache only (``HF_HUB_OFFLINE=1``).

    Returns (our SAE, SAELens cfg as a dict). Not cached, unknown, or not representable: one
    ``HusaiError`` line.
    """
    name = f"{release}/{sae_id}"
    old_env = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    hub_constants, old_flag = None, None
    try:
        try:
            import huggingface_hub.constants as hub_constants  # read at call time by the download code

            old_flag, hub_constants.HF_HUB_OFFLINE = hub_constants.HF_HUB_OFFLINE, True
            from sae_lens import SAE
        except ImportError as exc:
            raise HusaiError(f"cannot load SAELens pretrained SAE {name}: sae_lens is not installed ({exc})") from None
        try:
            sl = SAE.from_pretrained(release, sae_id, device="cpu")
            sl = sl[0] if isinstance(sl, tuple) else sl
        except Exception as exc:
            raise HusaiError(f"cannot load SAELens pretrained SAE {name} from the local Hugging Face cache "
                             f"(offline: HF_HUB_OFFLINE=1; fetch it once on a connected machine with "
                             f"SAE.from_pretrained): {type(exc).__name__}: {_one_line(exc)}") from None
    finally:
        if hub_constants is not None and old_flag is not None:
            hub_constants.HF_HUB_OFFLINE = old_flag
        if old_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old_env
    from ..sae import read_sae

    with tempfile.TemporaryDirectory(prefix="husai-pretrained-") as tmp:
        try:
            sl.save_model(tmp)
        except Exception as exc:
            raise HusaiError(f"cannot convert SAELens pretrained SAE {name}: {type(exc).__name__}: "
                             f"{_one_line(exc)}") from None
        raw = json.loads((Path(tmp) / "cfg.json").read_text())
        try:
            sae = read_sae(tmp, format="saelens")
        except HusaiError as exc:
            raise HusaiError(f"cannot read SAELens pretrained SAE {name}: {exc}") from None
    return sae, raw


def _json_or_none(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _provenance(fmt: str, target: Path) -> dict[str, Any]:
    """Hook / model / site / seed as recorded by the checkpoint's own files (None where silent)."""
    out: dict[str, Any] = {}
    folder = target if target.is_dir() else target.parent
    if fmt == "saelens":
        raw = _json_or_none(folder / "cfg.json") or {}
        meta = raw.get("metadata") if isinstance(raw.get("metadata"), dict) else {}
        out["hook"] = meta.get("hook_name") or raw.get("hook_name")
        out["model"] = meta.get("model_name") or raw.get("model_name")
        seed = raw.get("seed", meta.get("seed"))
        if isinstance(seed, int) and not isinstance(seed, bool):
            out["seed"] = seed
    elif fmt == "husai":
        # our phases keep SAEs in .../saes/<layout>/<hook>/<config_id>/seed<N>/ (conditions: one level more)
        parts = folder.resolve().parts
        for anchor, depth in (("saes", 4), ("conditions", 5)):
            if len(parts) > depth and parts[-depth - 1] == anchor:
                out["hook"] = parts[-3]
        metrics = _json_or_none(folder / "metrics.json")
        if isinstance(metrics, dict) and isinstance(metrics.get("seed"), int):
            out["seed"] = metrics["seed"]
    elif fmt == "dictionary_learning":
        cfg_dir = folder.parent if folder.name == "checkpoints" else folder
        raw = _json_or_none(cfg_dir / "config.json") or {}
        trainer = raw.get("trainer") if isinstance(raw.get("trainer"), dict) else {}
        out["model"] = trainer.get("lm_name")
        bits = [f"{k}={trainer[k]}" for k in ("lm_name", "layer", "submodule_name") if trainer.get(k) is not None]
        out["site"] = ", ".join(bits) or None
        if isinstance(trainer.get("seed"), int):
            out["seed"] = trainer["seed"]
    # sparsify's cfg.json records neither hookpoint nor seed (the hookpoint is only a folder name,
    # in the model's module naming, so it is not compared with TransformerLens hook names)
    if out.get("seed") is None:
        for p in (folder, folder.parent):
            m = _SEED_DIR.match(p.name)
            if m:
                out["seed"] = int(m.group(1))
                break
    return {k: v for k, v in out.items() if v is not None}


def load_input(path: str | os.PathLike) -> LoadedSAE:
    """Read one PATH (checkpoint or SAELens pretrained ``release/sae_id``) with its provenance."""
    from ..sae import read_sae
    from ..sae.readers import _locate

    text = str(path)
    spec = pretrained_spec(text)
    if spec is not None:
        sae, raw = load_pretrained(*spec)
        meta = raw.get("metadata") if isinstance(raw.get("metadata"), dict) else {}
        loaded = LoadedSAE(text, sae, "saelens_pretrained", f"{spec[0]}/{spec[1]}", f"{PRETRAINED_PREFIX}{spec[0]}/",
                           hook=meta.get("hook_name") or raw.get("hook_name"),
                           model=meta.get("model_name") or raw.get("model_name"))
    else:
        p = Path(text)
        if not p.exists():
            raise HusaiError(f"no SAE checkpoint at {p}: no such file or folder "
                             f"(nor a SAELens pretrained release/sae_id)")
        fmt, target = _locate(p)  # one-line errors for unreadable folders
        sae = read_sae(p)
        unit = p.resolve()
        if unit.is_file():
            unit = unit.parent
            if unit.name == "checkpoints":  # dictionary_learning checkpoints/ae_<step>.pt
                unit = unit.parent
        loaded = LoadedSAE(text, sae, fmt, str(target), str(unit), **_provenance(fmt, target))
    if loaded.cfg.transcoder:
        raise HusaiError(f"{text} is a transcoder: compare handles SAEs (a transcoder's reconstruction needs "
                         f"target activations, which compare does not take)")
    return loaded


def load_inputs(paths: Sequence[str | os.PathLike], labels: Sequence[str] | None = None) -> list[LoadedSAE]:
    """Every PATH read (see ``load_input``), labelled when ``labels`` are given (one per PATH)."""
    paths = [str(p) for p in paths]
    if not paths:
        raise HusaiError("compare needs at least 2 SAE paths (seeds of one configuration)")
    labels = _check_labels(paths, labels)
    dupes = [p for p, n in Counter(paths).items() if n > 1]
    if dupes:
        raise HusaiError(f"path given more than once: {dupes[0]} (each seed once)")
    out = []
    for i, p in enumerate(paths):
        item = load_input(p)
        item.given_label = item.label = labels[i] if labels else None
        out.append(item)
    return out


def _check_labels(paths: list[str], labels: Sequence[str] | None) -> list[str] | None:
    if not labels:
        return None
    flat = [s.strip() for lab in labels for s in str(lab).split(",") if s.strip()]
    if len(flat) != len(paths):
        raise HusaiError(f"--labels gives {len(flat)} label(s) for {len(paths)} path(s); give one label per path "
                         f"(equal labels = seeds of one configuration)")
    return flat
