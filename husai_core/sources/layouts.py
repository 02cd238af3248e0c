"""``open_source``: detect a layout (this project's cache, foreign per-dataset ``.pt`` /
``.safetensors`` files, a SAELens cache, a tensor) and open it as an :class:`ActivationSource`.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import re
import struct
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import HusaiError
from ..io import load_tensors
from .arrow import _is_saelens, _open_saelens
from .segments import _FileSegment, _ST_DTYPES, _TORCH_DTYPES, _TensorSegment, _UNKNOWN, _cap, _itemsize, _truncate
from .source import ActivationSource, as_source, is_source


def storage_layout(layout: str, source: ActivationSource | None) -> str:
    """The ``layout`` folder SAEs of a source are kept under: ``layout`` for this project's
    cache, ``ext-<source tag>`` for any other source (so they never overwrite ours)."""
    return layout if source is None else f"ext-{source.tag}"


# ---------------------------------------------------------------- layouts

def _safetensors_header(path: Path) -> tuple[dict, int]:
    """(header dict, byte offset of the data) of a safetensors file, checked against its size."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ValueError("shorter than a header")
            n = struct.unpack("<Q", head)[0]
            if n > min(size - 8, 100 * 2**20):
                raise ValueError(f"header length {n} does not fit the file")
            header = json.loads(f.read(n))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise HusaiError(f"corrupt activation file {path}: not a safetensors file ({exc})") from None
    if not isinstance(header, dict):
        raise HusaiError(f"corrupt activation file {path}: safetensors header is not a table")
    data = 8 + n
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            a, b = info["data_offsets"]
            ok = 0 <= a <= b and data + b <= size
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            raise HusaiError(f"corrupt activation file {path}: tensor {name!r} lies outside the file")
    return header, data


def _st_segment(path: Path, header: dict, data: int, name: str, dataset: str | None) -> _FileSegment:
    info = header[name]
    dtype = _ST_DTYPES.get(info.get("dtype"))
    shape = [int(v) for v in info.get("shape", [])]
    if dtype is None:
        raise HusaiError(f"activation tensor {name!r} in {path} has dtype {info.get('dtype')}; "
                         f"supported: {', '.join(_ST_DTYPES)}")
    if len(shape) < 2:
        raise HusaiError(f"activation file {path} holds no (rows, d) or (rows, seq, d) tensor ({name!r}: {shape})")
    d, n = shape[-1], math.prod(shape[:-1])
    a, b = info["data_offsets"]
    if b - a != n * d * _itemsize(dtype):
        raise HusaiError(f"corrupt activation file {path}: tensor {name!r} has {b - a} bytes for shape {shape}")
    return _FileSegment(path, data + a, n, d, dtype, dataset)


def _open_husai_cache(folder: Path, hook: str | None) -> ActivationSource:
    from ..io import read_json

    meta = read_json(folder / "metadata.json", "activation metadata")
    path = folder / "activations.safetensors"
    if not path.is_file():
        raise HusaiError(f"corrupt activation cache {folder}: metadata.json but no activations.safetensors")
    header, data = _safetensors_header(path)
    hooks = sorted(k for k in header if k != "__metadata__" and not k.startswith("label."))
    if hook is None:
        if len(hooks) != 1:
            raise HusaiError(f"the activation cache {folder} holds hooks {hooks}; pass hook= to choose one")
        hook = hooks[0]
    if hook not in hooks:
        raise HusaiError(f"hook {hook!r} is not in the activation cache at {folder}; cached: {hooks}")
    seg = _st_segment(path, header, data, hook, None)
    want = (meta.get("hooks") or {}).get(hook, {}).get("shape")
    if want is not None and list(header[hook]["shape"]) != list(want):
        raise HusaiError(f"corrupt activation cache {folder}: hook {hook!r} has shape {header[hook]['shape']}, "
                         f"metadata says {want}")

    def loader(name: str):
        def load() -> torch.Tensor:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                return f.get_tensor(f"label.{name}")
        return load

    labels = {k.removeprefix("label."): loader(k.removeprefix("label.")) for k in header if k.startswith("label.")}
    return ActivationSource([seg], kind="husai_cache", path=folder, hook=hook, labels=labels)


def corrupt_file(path: Path, exc: Exception) -> HusaiError:
    """The one-line error for an activation file that cannot be read."""
    return HusaiError(f"corrupt activation file {path}: {exc.__class__.__name__}: {str(exc).splitlines()[0]}")


def activation_tensor(obj: Any, path: Path) -> torch.Tensor:
    """The (rows, d) or (rows, seq, d) tensor of a loaded activation file: the object itself, or a
    dict's ``activations`` entry (else its first tensor)."""
    if isinstance(obj, dict):
        obj = obj.get("activations", next((v for v in obj.values() if torch.is_tensor(v)), None))
    if not torch.is_tensor(obj) or obj.ndim < 2:
        raise HusaiError(f"activation file {path} holds no (rows, d) or (rows, seq, d) tensor")
    return obj


def load_pt(path: Path) -> torch.Tensor:
    """A ``torch.save``'d activation file's tensor, loaded with mmap (rows are read when touched)."""
    try:
        obj = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged pickle/zip
        raise corrupt_file(path, exc) from None
    return activation_tensor(obj, path)


def _foreign_files(folder: Path, hook: str | None) -> list[tuple[str, str, Path]]:
    """(dataset, hook, path) for files named ``<dataset>_<hook>.pt`` / ``.safetensors``."""
    if not folder.is_dir():
        raise HusaiError(f"missing activation folder: {folder}")
    found = []
    for path in sorted(folder.iterdir()):
        m = re.match(r"^(?P<dataset>.+?)_(?P<hook>(blocks\.\d+\.)?hook_[\w.]+|blocks\.\d+\.[\w.]+)\.(pt|safetensors)$", path.name)
        if m and (hook is None or m["hook"] == hook):
            found.append((m["dataset"], m["hook"], path))
    if not found:
        raise HusaiError(f"no activation files{f' for hook {hook!r}' if hook else ''} in {folder} "
                         "(expected names like <dataset>_blocks.0.hook_resid_pre.pt)")
    hooks = {h for _, h, _ in found}
    if len(hooks) > 1:
        raise HusaiError(f"{folder} holds several hooks {sorted(hooks)}; pass hook= to choose one")
    return found


def _read_rows(path: Path) -> torch.Tensor:
    if path.suffix != ".safetensors":  # mmap keeps large files out of memory until rows are touched
        obj = load_pt(path)
    else:
        try:
            tensors = load_tensors(path)
        except HusaiError:
            raise
        except Exception as exc:
            raise corrupt_file(path, exc) from None
        obj = activation_tensor(tensors[next(iter(tensors))] if len(tensors) == 1 else tensors.get("activations"), path)
    return obj.reshape(-1, obj.shape[-1])


def _locate_pt(path: Path) -> tuple[torch.Tensor, int | None]:
    """(rows tensor loaded with mmap, byte offset of its data in the file or None)."""
    obj = load_pt(path)
    rows = obj.reshape(-1, obj.shape[-1])
    if not obj.is_contiguous() or obj.dtype not in _TORCH_DTYPES:
        return rows, None
    ptr = obj.untyped_storage().data_ptr() + obj.storage_offset() * obj.element_size()
    target = str(path.resolve())
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                parts = line.split(maxsplit=5)
                if len(parts) == 6 and parts[5].strip() == target:
                    lo, hi = (int(v, 16) for v in parts[0].split("-"))
                    if lo <= ptr < hi:
                        return rows, ptr - lo + int(parts[2], 16)
    except OSError:
        pass
    return rows, None


def _pt_segment(path: Path, dataset: str) -> Any:
    rows, offset = _locate_pt(path)
    if offset is not None:
        seg = _FileSegment(path, offset, rows.shape[0], rows.shape[1], _TORCH_DTYPES[rows.dtype], dataset)
        probe = np.array([0, seg.n_rows - 1])
        if torch.equal(seg.read_rows(probe), rows[torch.from_numpy(probe)].float()):
            return seg
    return _TensorSegment(rows, dataset, path)  # torch's own mmap; its touched pages stay mapped


def _foreign_segments(files: list[tuple[str, str, Path]], max_rows_per_file: int | None,
                      max_rows: int | None) -> list:
    segs: list = []
    remaining = max_rows
    for dataset, _, path in files:
        if path.suffix == ".safetensors":
            header, data = _safetensors_header(path)
            names = [k for k in header if k != "__metadata__"]
            name = names[0] if len(names) == 1 else ("activations" if "activations" in names else None)
            if name is None:
                raise HusaiError(f"activation file {path} holds no (rows, d) or (rows, seq, d) tensor "
                                 f"(several tensors {names[:5]} and none named 'activations')")
            seg = _st_segment(path, header, data, name, dataset)
        else:
            seg = _pt_segment(path, dataset)
        if segs and seg.d != segs[0].d:
            raise HusaiError(f"shape mismatch: {path.name} has width {seg.d}, earlier files have {segs[0].d}")
        n = seg.n_rows if max_rows_per_file is None else min(seg.n_rows, int(max_rows_per_file))
        if remaining is not None:
            n = min(n, remaining)
        if n > 0:
            segs.append(_truncate(seg, n))
        if remaining is not None:
            remaining -= n
            if remaining <= 0:
                break
    return segs


def _open_foreign(folder: Path, hook: str | None, max_files: int | None, max_rows_per_file: int | None,
                  max_rows: int | None) -> ActivationSource:
    if folder.is_file():
        files = [f for f in _foreign_files(folder.parent, hook) if f[2] == folder]
        if not files:
            raise HusaiError(f"unknown activation source {folder}: a single file must be named "
                             f"<dataset>_<hook>.pt|.safetensors{f' for hook {hook!r}' if hook else ''}")
    else:
        files = _foreign_files(folder, hook)[:max_files]
    segs = _foreign_segments(files, max_rows_per_file, max_rows)
    note = "torch mmap fallback for some .pt files" if any(isinstance(s, _TensorSegment) for s in segs) else ""
    return ActivationSource(segs, kind="foreign_folder", path=folder, hook=files[0][1], note=note)


def open_source(spec: Any, hook: str | None = None, *, max_files: int | None = None,
                max_rows_per_file: int | None = None, max_rows: int | None = None) -> ActivationSource:
    """Open activations at ``spec`` (a path, an ``ActivationSource`` or a tensor) for ``hook``.

    The layout is detected (module docstring); ``hook`` picks the tensor of a multi-hook source
    (required when there are several; checked when given). ``max_rows`` keeps the first rows;
    ``max_files`` and ``max_rows_per_file`` limit a per-dataset folder (as ``load_foreign_folder``).
    A missing, unknown or corrupt source raises one ``HusaiError`` line naming it.
    """
    if is_source(spec):
        if hook is not None and getattr(spec, "hook", None) not in (None, hook):
            raise HusaiError(f"the activation source holds hook {spec.hook!r}, not {hook!r}")
        return spec
    if isinstance(spec, (torch.Tensor, np.ndarray)):
        return as_source(spec)
    if not isinstance(spec, (str, os.PathLike)):
        raise HusaiError(f"activations must be a path, an ActivationSource or a tensor, got {type(spec).__name__}")
    path = Path(spec).expanduser()
    if not path.exists():
        raise HusaiError(f"activation source not found: {path}")
    folder_only = (max_files, max_rows_per_file)
    if path.is_dir() and (path / "metadata.json").is_file():
        kind = "husai_cache"
    elif path.is_dir() and _is_saelens(path):
        kind = "saelens_cache"
    elif path.is_file() and path.suffix in (".pt", ".safetensors"):
        kind = "foreign_folder"
    elif path.is_dir() and any(p.suffix in (".pt", ".safetensors") for p in path.iterdir()):
        kind = "foreign_folder"
    else:
        raise HusaiError(f"unknown activation source {path}: {_UNKNOWN}")
    if kind != "foreign_folder" and any(v is not None for v in folder_only):
        raise HusaiError(f"max_files / max_rows_per_file apply to per-dataset folders, not to a {kind} ({path})")
    if kind == "husai_cache":
        src = _open_husai_cache(path, hook)
        if max_rows is not None:
            src = ActivationSource(_cap(src.segments, int(max_rows)), kind=src.kind, path=src.path, hook=src.hook,
                                   labels={k: (lambda k=k: src.label(k)[: int(max_rows)]) for k in src.label_names})
        return src
    if kind == "saelens_cache":
        return _open_saelens(path, hook, max_rows)
    return _open_foreign(path, hook, max_files, max_rows_per_file, max_rows)
