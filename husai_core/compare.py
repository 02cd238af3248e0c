"""Compare any SAEs (SAELens, sparsify, dictionary_learning, ours) through phase 4's analysis.

``compare_saes(paths, labels=None, activations=None, hook=None, ...)`` returns a JSON-able
dict; ``husai compare PATH...`` runs notebook ``10_compare`` (which calls it) through the
runner, so a comparison gets a run folder, ``results.json`` and ``report.html`` like any phase.

Inputs. A PATH is anything ``sae.read_sae`` reads (a checkpoint folder, a folder holding one,
a dictionary_learning ``.pt`` file) or a SAELens pretrained SAE ``release/sae_id`` (also
written ``saelens:release/sae_id``). A pretrained SAE is loaded with ``SAE.from_pretrained``
*only from the local Hugging Face cache*: ``HF_HUB_OFFLINE=1`` is set for the call, so it
never touches the network, and a miss is one line saying so. Transcoders are refused (their
reconstruction needs target activations).

Groups. Seeds of one configuration form a group. ``labels`` (one per PATH; equal labels =
one group) sets them explicitly. By default PATHs are grouped by their configuration (the
SAE config as read, which includes format, source class, architecture, d_in, d_sae, k and,
for our checkpoints, every training setting); a configuration found in several source
folders (the parent of each PATH's seed folder) is split by folder when every folder then
holds >= 2 seeds, and kept together otherwise (e.g. sparsify's ``run_seed0/layers.3``
layout, where each run folder holds one seed). A group needs >= 2 SAEs and one architecture
and width.

Compatibility. Every SAE must have the same d_in; where checkpoints record where they read
activations, those must agree too: the TransformerLens hook name (SAELens ``hook_name``; our
checkpoints' ``saes/<layout>/<hook>/...`` folder; the activations' hook), the
dictionary_learning site (``lm_name``, ``layer``, ``submodule_name``) among dictionary_learning
checkpoints, and the model name among checkpoints of one format. A mismatch is one
``HusaiError`` line naming both paths.

Analysis per group (as phase 4, ``comparison.compare_conditions``): every metric of
``matching.METRICS`` with a bootstrap-over-seeds CI, seed-level permutation tests, LCB and the
verdict against each null, and the headline against the strongest null.

- ``isotropic`` (always): untrained SAEs of the group's config (``build_sae``; b_dec from the
  training rows when activations are given), seeds disjoint from any seed the checkpoints
  record.
- ``gaussian_matched`` (only with ``activations``): SAEs of the group's config trained with our
  trainer on Gaussian rows with the activations' mean and full covariance (fitted on the
  training share of a seeded split), same null seeds. Foreign checkpoints record only
  architecture, width and k, so the training settings are ``SAEConfig``'s defaults unless
  ``null_params`` overrides them (our checkpoints, and SAELens files we exported, carry their
  own); the config used is reported. Null SAEs are cached under
  ``<artifacts>/compare/gaussian_matched/<activations fingerprint>/<config id>/``.

With ``activations`` (a HUSAI cache folder, which needs ``hook`` unless it holds one hook, or a
foreign folder of ``<dataset>_<hook>.pt`` files) a seeded split gives held-out rows: EV / L0 /
dead fraction of every SAE (trained and null) on held-out rows, activation matching, and the
alive-latent scope. The foreign SAEs were not trained by us, so their "held-out" rows are only
held out from the null SAEs' training; nothing says the foreign SAEs never saw them.
**Without activations** only the weight-based metrics over all latents are computed (PWMCC,
signed PWMCC, PW-MCC, shared-latent fraction: ``/all`` scope) against the isotropic null;
skipped, and listed in ``result["skipped"]``: activation matching, the alive scope (which
latents are alive needs rows), held-out EV/L0/dead, and the gaussian_matched null (it is fitted
to the activations). No Gaussian rows are invented to fill in for missing data.

Several groups are put side by side (``result["across"]``: one row per group with the headline
metric, its CI, the strongest null, LCB, p, a Holm-adjusted p across the groups, the verdict and
held-out EV/L0/dead).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .errors import HusaiError

NULLS = ("gaussian_matched", "isotropic")
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
    from .sae import read_sae

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
    from .sae import read_sae
    from .sae.readers import _locate

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


# ====================================================================== grouping and compatibility
def _signature(item: LoadedSAE) -> str:
    cfg = item.cfg.to_dict()
    return json.dumps({"format": item.format, "config": cfg}, sort_keys=True, default=str)


def _short(item: LoadedSAE) -> str:
    c = item.cfg
    fmt = {"saelens_pretrained": "SAELens pretrained", "dictionary_learning": "dictionary_learning"}.get(
        item.format, item.format)
    k = f" k={c.k}" if c.architecture in ("topk", "batchtopk", "matryoshka") else ""
    return f"{fmt} {c.architecture} d_sae={c.d_sae}{k}"


def group_inputs(items: list[LoadedSAE]) -> tuple[dict[str, list[LoadedSAE]], str]:
    """Groups of seeds (label -> members, in input order) and how they were formed.

    Labelled inputs group by label. Otherwise by configuration, split by source folder (the
    parent of each seed folder) only when every folder then holds >= 2 seeds. Each group is
    checked: >= 2 SAEs, one architecture and width.
    """
    if all(i.given_label is not None for i in items):
        groups: dict[str, list[LoadedSAE]] = {}
        for i in items:
            i.label = i.given_label
            groups.setdefault(i.label, []).append(i)
        how = "by the given labels"
    else:
        by_sig: dict[str, list[LoadedSAE]] = {}
        for i in items:
            by_sig.setdefault(_signature(i), []).append(i)
        raw: list[tuple[str, str | None, list[LoadedSAE]]] = []  # (short name, folder, members)
        split_any = False
        for members in by_sig.values():
            by_dir: dict[str, list[LoadedSAE]] = {}
            for i in members:
                by_dir.setdefault(str(Path(i.unit).parent) if not i.unit.startswith(PRETRAINED_PREFIX) else i.unit,
                                  []).append(i)
            if len(by_dir) > 1 and all(len(v) >= 2 for v in by_dir.values()):
                split_any = True
                raw += [(_short(v[0]), d, v) for d, v in by_dir.items()]
            else:
                raw.append((_short(members[0]), None, members))
        groups = {}
        for name, folder, members in raw:
            label = name if folder is None else f"{name} [{Path(folder).name}]"
            base, n = label, 2
            while label in groups:
                label, n = f"{base} #{n}", n + 1
            for i in members:
                i.label = label
            groups[label] = members
        how = ("by configuration, split by source folder" if split_any else "by configuration")
    for label, members in groups.items():
        if len(members) < 2:
            raise HusaiError(f"group {label!r} has a single SAE ({members[0].path}); seed consistency needs >= 2 "
                             f"seeds of one configuration: add seeds, or use --labels to group them")
        first = members[0]
        for other in members[1:]:
            a, b = first.cfg, other.cfg
            if (a.architecture, a.d_sae) != (b.architecture, b.d_sae):
                raise HusaiError(f"group {label!r} mixes configurations: {first.path} is {a.architecture} "
                                 f"d_sae={a.d_sae} but {other.path} is {b.architecture} d_sae={b.d_sae}; "
                                 f"seeds of one configuration must share architecture and width")
    return groups, how


def check_compatible(items: list[LoadedSAE]) -> dict[str, Any]:
    """Same d_in everywhere; recorded hooks (and dictionary_learning sites, models per format)
    agree. Returns ``{"d_in", "hook"}`` (hook None when no checkpoint records one)."""
    first = items[0]
    for other in items[1:]:
        if other.cfg.d_in != first.cfg.d_in:
            raise HusaiError(f"incompatible SAEs: {first.path} has d_in={first.cfg.d_in} but {other.path} has "
                             f"d_in={other.cfg.d_in} (SAEs compared must read the same activations)")
    for attr, what, same_format in (("hook", "hook", False), ("site", "dictionary_learning site", False),
                                    ("model", "model", True)):
        seen: dict[Any, LoadedSAE] = {}
        for i in items:
            value = getattr(i, attr)
            if value is None:
                continue
            scope = i.format if same_format else None
            ref = seen.setdefault(scope, i)
            if getattr(ref, attr) != value:
                raise HusaiError(f"incompatible SAEs: {ref.path} records {what} {getattr(ref, attr)!r} but {i.path} "
                                 f"records {value!r} (SAEs compared must read the same activations)")
    hooks = {i.hook for i in items if i.hook}
    return {"d_in": first.cfg.d_in, "hook": hooks.pop() if hooks else None}


# ====================================================================== activations
@dataclass
class Activations:
    x: torch.Tensor
    hook: str | None
    source: str
    kind: str  # "husai cache" | "foreign folder"
    datasets: dict[str, int] = field(default_factory=dict)
    n_total: int = 0


def activation_source_kind(source: str | os.PathLike) -> str:
    """``"husai cache"`` (a folder with metadata.json) or ``"foreign folder"`` (per-dataset
    ``<dataset>_<hook>.pt``/``.safetensors`` files); anything else is a one-line error."""
    from .activations import _foreign_files

    p = Path(source)
    if not p.exists():
        raise HusaiError(f"unknown activation source {p}: no such file or folder")
    if not p.is_dir():
        raise HusaiError(f"unknown activation source {p}: expected a folder (a HUSAI activation cache with "
                         f"metadata.json, or a folder of <dataset>_<hook>.pt files)")
    if (p / "metadata.json").is_file():
        return "husai cache"
    try:
        _foreign_files(p, None)
    except HusaiError as exc:
        if "several hooks" in str(exc):
            return "foreign folder"
        raise HusaiError(f"unknown activation source {p}: not a HUSAI activation cache (no metadata.json) and no "
                         f"activation files named like <dataset>_blocks.0.hook_resid_pre.pt") from None
    return "foreign folder"


def peek_activations(source: str | os.PathLike, hook: str | None = None) -> tuple[str, str | None, int]:
    """(kind, hook, width) of an activation source without loading its rows (for the CLI check)."""
    from .activations import _foreign_files, _read_rows
    from .io import read_json

    kind = activation_source_kind(source)
    p = Path(source)
    if kind == "husai cache":
        meta = read_json(p / "metadata.json", "activation metadata")
        hooks = meta.get("hooks") if isinstance(meta, dict) else None
        if not isinstance(hooks, dict) or not hooks:
            raise HusaiError(f"corrupt activation cache {p}: metadata.json lists no hooks")
        hook = _pick_hook(hook, sorted(hooks), p)
        shape = hooks[hook].get("shape") if isinstance(hooks[hook], dict) else None
        if not isinstance(shape, list) or len(shape) != 2:
            raise HusaiError(f"corrupt activation cache {p}: no (rows, d) shape for hook {hook!r}")
        return kind, hook, int(shape[1])
    files = _foreign_files(p, hook)
    return kind, files[0][1], int(_read_rows(files[0][2]).shape[1])


def _pick_hook(hook: str | None, hooks: list[str], where: Path) -> str:
    if hook is None:
        if len(hooks) == 1:
            return hooks[0]
        raise HusaiError(f"activation cache {where} holds hooks {', '.join(hooks)}: pass --hook to choose one")
    if hook not in hooks:
        raise HusaiError(f"hook {hook!r} is not in the activation cache {where}; cached: {', '.join(hooks)}")
    return hook


def load_activations(source: str | os.PathLike, hook: str | None = None, max_rows: int | None = None,
                     max_rows_per_file: int | None = None, seed: int = 0) -> Activations:
    """Rows from a HUSAI cache (``activations.load_cache``) or a foreign folder
    (``activations.load_foreign_folder``); more than ``max_rows`` rows: a seeded random subset
    (not the first rows, which may all come from one dataset or operand range)."""
    from .activations import load_cache, load_foreign_folder

    kind = activation_source_kind(source)
    datasets: dict[str, int] = {}
    if kind == "husai cache":
        cache = load_cache(source)
        hook = _pick_hook(hook, sorted(cache.acts), Path(source))
        x = cache.get(hook)
        names = None
    else:
        fa = load_foreign_folder(source, hook=hook, max_rows_per_file=max_rows_per_file)
        x, hook, names = fa.x, fa.hook, fa.dataset
    x = x.reshape(-1, x.shape[-1]).float()
    n_total = int(x.shape[0])
    if max_rows is not None and n_total > int(max_rows):
        idx = torch.randperm(n_total, generator=torch.Generator().manual_seed(int(seed)))[: int(max_rows)].sort().values
        x = x[idx]
        names = None if names is None else names[idx.numpy()]
    if names is not None:
        datasets = {str(k): int(v) for k, v in Counter(names.tolist()).items()}
    if not bool(torch.isfinite(x).all()):
        raise HusaiError(f"activations in {source} contain NaN or inf")
    return Activations(x.contiguous(), hook, str(source), kind, datasets, n_total)


# ====================================================================== checks (CLI pre-flight)
def check_inputs(paths: Sequence[str], labels: Sequence[str] | None = None, activations: str | None = None,
                 hook: str | None = None) -> dict[str, Any]:
    """Everything ``compare_saes`` checks before computing, cheaply: every PATH reads, groups
    have >= 2 SAEs of one configuration, SAEs are compatible, the activation source is known,
    holds the hook and has width d_in. Returns a short summary; bad input is one ``HusaiError``."""
    items = load_inputs(paths, labels)
    groups, how = group_inputs(items)
    compat = check_compatible(items)
    summary = {"groups": {k: [i.path for i in v] for k, v in groups.items()}, "grouping": how, **compat}
    if activations is not None:
        kind, act_hook, width = peek_activations(activations, hook)
        _check_against_activations(items, compat, act_hook, width, activations)
        summary["activations"] = {"source": str(activations), "kind": kind, "hook": act_hook, "d_in": width}
    elif hook is not None:
        raise HusaiError("--hook selects a hook of --activations; give --activations too")
    return summary


def _check_against_activations(items: list[LoadedSAE], compat: dict[str, Any], act_hook: str | None, width: int,
                               source: Any) -> None:
    if width != compat["d_in"]:
        raise HusaiError(f"incompatible activations: {source} has width {width} but the SAEs have d_in={compat['d_in']} "
                         f"(e.g. {items[0].path})")
    if act_hook and compat["hook"] and act_hook != compat["hook"]:
        who = next(i.path for i in items if i.hook)
        raise HusaiError(f"incompatible activations: {source} holds hook {act_hook!r} but {who} records hook "
                         f"{compat['hook']!r}")


# ====================================================================== the analysis
def _null_config(cfg, null_params: dict[str, Any] | None):
    """The group's config for its null SAEs: everything the checkpoint says, provenance notes
    dropped, ``null_params`` (SAEConfig fields) on top."""
    from .sae import SAEConfig
    from .experiments import SAE_FIELDS

    params = dict(null_params or {})
    unknown = sorted(set(params) - SAE_FIELDS)
    if unknown:
        raise HusaiError(f"unknown null_params field(s) {', '.join(unknown)}; known: {', '.join(sorted(SAE_FIELDS))}")
    for fixed in ("d_in", "d_sae", "architecture", "transcoder", "d_out"):
        if fixed in params and params[fixed] != getattr(cfg, fixed):
            raise HusaiError(f"null_params cannot change {fixed} (the nulls must have the group's shape)")
    d = {**cfg.to_dict(), "extra": {}, **params}
    return SAEConfig.from_dict(d)


def _recon(sae, rows) -> dict[str, float]:
    from .metrics import evaluate_sae

    m = evaluate_sae(sae, rows)
    return {k: float(m[k]) for k in ("ev", "l0", "mse", "dead_fraction")}


def _mean_recon(rows: list[dict[str, Any]]) -> dict[str, float]:
    return {k: float(np.mean([r[k] for r in rows])) for k in ("ev", "l0", "mse", "dead_fraction")}


def _keep_all_scope(comparison: dict[str, Any]) -> dict[str, Any]:
    """Drop the ``/alive`` keys (without rows every latent counts as alive, so they would only
    repeat ``/all`` under a misleading name)."""
    keep = lambda d: {k: v for k, v in d.items() if k.endswith("/all")}  # noqa: E731
    out = dict(comparison)
    out["table"] = {c: keep(v) for c, v in comparison["table"].items()}
    out["tests"] = {n: keep(v) for n, v in comparison["tests"].items()}
    out["strongest"] = keep(comparison["strongest"])
    out["matrices"] = {c: keep(v) for c, v in comparison["matrices"].items()}
    return out


def compare_group(label: str, members: list[LoadedSAE], acts: Activations | None,
                  split: tuple[torch.Tensor, torch.Tensor] | None, *, nulls: Sequence[str] = NULLS,
                  null_data_seed: int = 1, null_params: dict[str, Any] | None = None,
                  headline_metric: str = "pwmcc/all", threshold: float = 0.7, n_resamples: int = 10_000,
                  stats_seed: int = 0, alpha: float = 0.05, artifacts: str | os.PathLike | None = None,
                  device: str = "cpu", progress: bool = False, ground_truth: torch.Tensor | None = None) -> dict[str, Any]:
    """Phase 4's analysis for one group of seeds (see the module docstring)."""
    from .comparison import compare_conditions, ground_truth_recovery, headline_verdict
    from .conditions import condition_data
    from .consistency import disjoint_seeds
    from .experiments import config_id, train_or_load_saes
    from .matching import SAEView, view_of
    from .sae import build_sae
    from .store import tensor_fingerprint

    cfg = members[0].cfg
    recorded = [i.seed for i in members if i.seed is not None]
    null_seeds = disjoint_seeds(recorded, len(members))
    null_cfg = _null_config(cfg, null_params)
    use = [n for n in nulls if n == "isotropic" or acts is not None]
    descriptions = {"trained": f"the given checkpoints ({', '.join(sorted({i.format for i in members}))})"}
    saes: dict[str, list[Any]] = {"trained": [i.sae for i in members]}
    names: dict[str, list[str]] = {"trained": [i.path for i in members]}
    rows: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    recon: dict[str, list[dict[str, Any]]] = {}
    if acts is not None:
        real = condition_data("trained", acts.x, split)
        rows["trained"] = rows["isotropic"] = (real.train, real.heldout)
    if "isotropic" in use:
        iso = []
        for s in null_seeds:
            sae = build_sae(null_cfg, s)
            if acts is not None:
                sae.init_biases_from_data(rows["isotropic"][0])
                if null_cfg.architecture == "batchtopk":
                    sae.calibrate(rows["isotropic"][0])
            iso.append(sae.eval())
        saes["isotropic"] = iso
        names["isotropic"] = [f"untrained seed {s}" for s in null_seeds]
        descriptions["isotropic"] = "no training: our initialisation of the group's config (i.i.d. isotropic decoder rows)"
    if "gaussian_matched" in use:
        data = condition_data("gaussian_matched", acts.x, split, data_seed=null_data_seed)
        rows["gaussian_matched"] = (data.train, data.heldout)
        if artifacts is None:
            from .runner import artifacts_dir

            artifacts = artifacts_dir("interactive")
        folder = (Path(artifacts) / "compare" / "gaussian_matched" / tensor_fingerprint(acts.x)[:12]
                  / f"split-{split_seed_tag(split)}-data{null_data_seed}" / config_id(null_cfg))
        trained = train_or_load_saes(folder, null_cfg, data.train, null_seeds, progress=progress, device=device,
                                     heldout=data.heldout)
        saes["gaussian_matched"] = [t.sae.cpu().eval() for t in trained]
        names["gaussian_matched"] = [str(t.path) for t in trained]
        descriptions["gaussian_matched"] = data.description + " — SAEs of the group's config trained with our trainer"
    views: dict[str, list[SAEView]] = {}
    for cond, group in saes.items():
        if acts is None:
            views[cond] = [SAEView(s.W_dec.detach(), s.W_enc.detach().T, None,
                                   torch.ones(s.cfg.d_sae, dtype=torch.bool)) for s in group]
        else:
            held = rows[cond][1]
            views[cond] = [view_of(s, held) for s in group]
            recon[cond] = [{"name": n, **_recon(s, held)} for n, s in zip(names[cond], group)]
    warnings = []
    if "gaussian_matched" in recon:
        l0_t = float(np.mean([r["l0"] for r in recon["trained"]]))
        l0_n = float(np.mean([r["l0"] for r in recon["gaussian_matched"]]))
        if l0_t > 0 and not 0.5 <= l0_n / l0_t <= 2.0:
            warnings.append(f"the gaussian_matched null's held-out L0 ({l0_n:.3g}) is far from the given SAEs' "
                            f"({l0_t:.3g}): it is not a matched null at this sparsity; set null_params (k, "
                            f"l1_coeff, l0_coeff, steps, ...) so it trains like the given SAEs")
    null_names = [n for n in ("gaussian_matched", "isotropic") if n in use]
    comparison = compare_conditions(views, "trained", null_names, threshold=threshold, n_resamples=n_resamples,
                                    stats_seed=stats_seed, alpha=alpha, progress=progress)
    if acts is None:
        comparison = _keep_all_scope(comparison)
    headline = headline_verdict(comparison, headline_metric)
    alive_key = headline_metric.split("/")[0] + "/alive"
    alive = headline_verdict(comparison, alive_key) if acts is not None and alive_key in comparison["strongest"] else None
    out: dict[str, Any] = {
        "label": label, "members": [i.describe() for i in members], "n_seeds": len(members),
        "formats": sorted({i.format for i in members}), "config": cfg.to_dict(), "null_config": null_cfg.to_dict(),
        "recorded_seeds": recorded, "null_seeds": null_seeds, "nulls": null_names, "conditions": descriptions,
        "condition_members": names, "comparison": comparison, "headline": headline, "alive_headline": alive,
        "warnings": warnings, "reconstruction": recon or None,
        "reconstruction_mean": {c: _mean_recon(r) for c, r in recon.items()} or None,
    }
    if ground_truth is not None:
        out["ground_truth"] = ground_truth_recovery({c: [s.W_dec.detach() for s in g] for c, g in saes.items()},
                                                    ground_truth, threshold=threshold, n_resamples=n_resamples,
                                                    stats_seed=stats_seed)
    return out


def split_seed_tag(split: tuple[torch.Tensor, torch.Tensor]) -> str:
    """A short tag of the held-out split (null SAEs trained on one split are not reused for another)."""
    from .store import tensor_fingerprint

    return tensor_fingerprint(split[1].to(torch.int64))[:8]


def across_groups(groups: dict[str, dict[str, Any]], alpha: float = 0.05) -> list[dict[str, Any]]:
    """One row per group: headline metric with CI, strongest null, LCB, p (Holm-adjusted across
    the groups when there are several), verdict, held-out EV/L0/dead of the given SAEs."""
    from .stats import holm

    rows = []
    for label, g in groups.items():
        h = g["headline"]
        key = h["metric"]
        t = g["comparison"]["table"]["trained"][key]
        n = g["comparison"]["table"][h["strongest_null"]][key]
        c = g["config"]
        row = {"group": label, "n_seeds": g["n_seeds"], "formats": ", ".join(g["formats"]),
               "architecture": c["architecture"], "d_sae": c["d_sae"],
               "k": c["k"] if c["architecture"] in ("topk", "batchtopk", "matryoshka") else None,
               "metric": key, "trained": t["mean"], "ci_low": t["ci_low"], "ci_high": t["ci_high"],
               "strongest_null": h["strongest_null"], "null": n["mean"], "null_ci_high": n["ci_high"],
               "lcb": h["lcb"], "p": h["p_value"], "verdict": h["verdict"],
               "alive_verdict": g["alive_headline"]["verdict"] if g.get("alive_headline") else None}
        if g.get("reconstruction_mean"):
            r = g["reconstruction_mean"]["trained"]
            row |= {"heldout_ev": r["ev"], "heldout_l0": r["l0"], "heldout_dead_fraction": r["dead_fraction"]}
        rows.append(row)
    if len(rows) > 1:
        adj = holm([r["p"] for r in rows], alpha=alpha)
        for r, p, rej in zip(rows, adj.adjusted, adj.reject):
            r["p_holm"], r["significant_holm"] = float(p), bool(rej)
    return rows


def compare_saes(paths: Sequence[str | os.PathLike], labels: Sequence[str] | None = None,
                 activations: str | os.PathLike | None = None, hook: str | None = None, *,
                 nulls: Sequence[str] = NULLS, heldout_fraction: float = 0.2, split_seed: int = 0,
                 null_data_seed: int = 1, null_params: dict[str, Any] | None = None,
                 headline_metric: str = "pwmcc/all", threshold: float = 0.7, n_resamples: int = 10_000,
                 stats_seed: int = 0, alpha: float = 0.05, max_rows: int | None = 200_000,
                 max_rows_per_file: int | None = None, artifacts: str | os.PathLike | None = None,
                 device: str = "cpu", progress: bool = False, ground_truth: torch.Tensor | None = None) -> dict[str, Any]:
    """Load, group and check the SAEs at ``paths``, then run phase 4's analysis per group.

    Returns a JSON-able dict: ``inputs`` (one entry per PATH), ``grouping``, ``d_in``, ``hook``,
    ``activations`` (source, kind, rows, split; None without), ``nulls``, ``metric_keys``,
    ``skipped`` (what could not be computed, and why), ``warnings`` (e.g. a gaussian_matched null
    whose L0 is not within 2x of the given SAEs'), ``groups[label]`` (``compare_group``),
    ``across`` (one row per group), ``headline`` (numbers for the index) and ``verdict`` (text).
    """
    from .comparison import metric_keys
    from .conditions import heldout_split

    for n in nulls:
        if n not in NULLS:
            raise HusaiError(f"unknown null {n!r} for compare; choose from {', '.join(NULLS)} "
                             f"(random_transformer needs our transformer checkpoint: use phase 04)")
    if "isotropic" not in nulls and activations is None:
        raise HusaiError("without activations the isotropic null is the only one; keep it in nulls")
    items = load_inputs(paths, labels)
    groups, how = group_inputs(items)
    compat = check_compatible(items)
    if hook is not None and activations is None:
        raise HusaiError("hook selects a hook of the activations; give activations too")
    keys = metric_keys(with_activations=activations is not None)
    if activations is None:
        keys = [k for k in keys if k.endswith("/all")]
    if headline_metric not in keys:
        raise HusaiError(f"headline metric {headline_metric!r} is not computed "
                         f"{'without activations' if activations is None else ''}; available: {', '.join(keys)}")
    acts, split, act_info = None, None, None
    skipped: list[str] = []
    if activations is not None:
        acts = load_activations(activations, hook, max_rows=max_rows, max_rows_per_file=max_rows_per_file,
                                seed=split_seed)
        _check_against_activations(items, compat, acts.hook, int(acts.x.shape[1]), activations)
        split = heldout_split(acts.x.shape[0], heldout_fraction, split_seed)
        act_info = {"source": acts.source, "kind": acts.kind, "hook": acts.hook, "n_rows_available": acts.n_total,
                    "n_rows": int(acts.x.shape[0]), "max_rows": max_rows, "datasets": acts.datasets or None,
                    "heldout_fraction": heldout_fraction, "split_seed": split_seed,
                    "n_train": int(len(split[0])), "n_heldout": int(len(split[1])),
                    "note": "held-out rows are held out from the null SAEs' training; the given SAEs were trained "
                            "elsewhere and may have seen them"}
    else:
        skipped = ["activation_mcc (activation matching needs rows)",
                   "alive-latent scope (which latents are alive needs rows)",
                   "held-out EV / L0 / dead fraction",
                   "gaussian_matched null (it is fitted to the activations' mean and covariance)"]
    used_nulls = [n for n in nulls if n == "isotropic" or acts is not None]
    results = {label: compare_group(label, members, acts, split, nulls=used_nulls, null_data_seed=null_data_seed,
                                    null_params=null_params, headline_metric=headline_metric, threshold=threshold,
                                    n_resamples=n_resamples, stats_seed=stats_seed, alpha=alpha, artifacts=artifacts,
                                    device=device, progress=progress, ground_truth=ground_truth)
               for label, members in groups.items()}
    across = across_groups(results, alpha=alpha)
    headline, verdict_text = _overall(results, across, headline_metric, acts is not None)
    return {"inputs": [i.describe() for i in items], "grouping": how, "d_in": compat["d_in"], "hook": compat["hook"],
            "activations": act_info, "nulls": used_nulls, "metric_keys": keys, "headline_metric": headline_metric,
            "skipped": skipped, "threshold": threshold, "n_resamples": n_resamples, "stats_seed": stats_seed,
            "alpha": alpha, "groups": results, "across": across, "headline": headline, "verdict": verdict_text,
            "warnings": [f"[{label}] {w}" for label, g in results.items() for w in g["warnings"]]}


def _overall(results: dict[str, dict[str, Any]], across: list[dict[str, Any]], metric: str,
             with_acts: bool) -> tuple[dict[str, Any], str]:
    from .stats import PRESENT

    verdicts = [r["verdict"] for r in across]
    overall = verdicts[0] if len(set(verdicts)) == 1 else "mixed"
    head: dict[str, Any] = {"verdict": overall, "metric": metric, "groups": len(across),
                            "present": f"{verdicts.count(PRESENT)} of {len(verdicts)}",
                            "activations": "given" if with_acts else "none (weight metrics, isotropic null only)"}
    if len(across) == 1:
        r = across[0]
        head |= {"against (strongest null)": r["strongest_null"], "trained": r["trained"],
                 "strongest null": r["null"], "LCB": r["lcb"], "p": r["p"]}
        if r.get("alive_verdict"):
            head["alive-latent verdict"] = r["alive_verdict"]
        if "heldout_ev" in r:
            head["held-out EV"] = r["heldout_ev"]
    else:
        for r in across:
            head[f"{r['group']}"] = f"{r['verdict']} ({r['trained']:.3g} vs {r['strongest_null']} {r['null']:.3g})"
    text = " ".join(f"[{label}] {g['headline']['text']}" for label, g in results.items())
    if not with_acts:
        text += (" No activations were given: only weight-based metrics over all latents, against the isotropic "
                 "null (the weakest null) — pass activations for the gaussian_matched null.")
    return head, text


def relative_paths(obj: Any, root: str | os.PathLike) -> Any:
    """``obj`` (JSON-able) with every string path under ``root`` made relative to it (the demo's
    checkpoints live in the run folder, which the runner renames when the run completes)."""
    from .io import to_jsonable

    prefix = str(Path(root)).rstrip(os.sep) + os.sep

    def walk(v: Any) -> Any:
        if isinstance(v, str):
            return v[len(prefix):] if v.startswith(prefix) else v
        if isinstance(v, dict):
            return {walk(k): walk(x) for k, x in v.items()}
        if isinstance(v, list):
            return [walk(x) for x in v]
        return v

    return walk(to_jsonable(obj))


# ====================================================================== the CLI entry
def run_compare(paths: Sequence[str], labels: Sequence[str] | None = None, activations: str | None = None,
                hook: str | None = None, out: str | os.PathLike | None = None, profile: str = "full",
                params: dict[str, Any] | None = None, run_id: str | None = None, index: bool = True):
    """``husai compare``: check the inputs here (one-line errors before any notebook starts),
    run notebook ``10_compare`` through the runner, and copy ``results.json`` and ``report.html``
    into ``out`` when given. Returns the ``runner.RunResult``."""
    import shutil

    from . import runner

    def absolute(p: str) -> str:
        return p if pretrained_spec(p) is not None and not Path(p).exists() else str(Path(p).resolve())

    paths = [str(p) for p in paths]
    if not paths:
        raise HusaiError("husai compare needs SAE paths")
    check_inputs(paths, labels, activations, hook)
    overrides = dict(params or {})
    clash = sorted({"paths", "labels", "activations", "hook", "out"} & set(overrides))
    if clash:
        raise HusaiError(f"give {', '.join(clash)} as command arguments, not -p")
    overrides.update(paths=[absolute(p) for p in paths], labels=_check_labels(paths, labels) or [],
                     activations=str(Path(activations).resolve()) if activations else None, hook=hook,
                     out=str(Path(out).resolve()) if out else None)
    res = runner.run_notebook("10_compare", profile, overrides, run_id=run_id)
    if out:
        dest = Path(out)
        dest.mkdir(parents=True, exist_ok=True)
        for name in ("results.json", "report.html"):
            if (res.run_dir / name).is_file():
                shutil.copyfile(res.run_dir / name, dest / name)
    if index:
        from .report import build_index

        build_index(profile=profile)
    return res


__all__ = ["NULLS", "LoadedSAE", "Activations", "pretrained_spec", "load_pretrained", "load_input", "load_inputs",
           "group_inputs", "check_compatible", "activation_source_kind", "peek_activations", "load_activations",
           "check_inputs", "compare_group", "across_groups", "compare_saes", "relative_paths", "run_compare"]
