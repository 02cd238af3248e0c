"""SAELens's ``CacheActivationsRunner`` output (a ``datasets`` folder of Arrow files) as segments."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..errors import HusaiError
from .segments import _ARROW_DTYPES, _FileSegment, _cap, _itemsize
from .source import ActivationSource


def _is_saelens(folder: Path) -> bool:
    return (folder / "state.json").is_file() and (folder / "dataset_info.json").is_file()


def _arrow_segments(path: Path, column: str, ctx: int, d: int) -> list[_FileSegment]:
    """One segment per record batch of an Arrow IPC stream file: the flat value buffer of
    ``column`` (Array2D storage: list<list<float>>), located by its address in the mapping."""
    import pyarrow as pa

    segs = []
    size = path.stat().st_size
    with pa.memory_map(str(path)) as mm:
        base = mm.read_buffer(1).address if size else 0
        mm.seek(0)
        for batch in pa.ipc.open_stream(mm):
            col = batch.column(column)
            if col.null_count:
                raise HusaiError(f"corrupt SAELens activation cache: {path.name} has missing rows in {column!r}")
            arr = col.storage if isinstance(col, pa.ExtensionArray) else col
            inner = arr.flatten()
            flat = inner.flatten()
            dtype = _ARROW_DTYPES.get(str(flat.type))
            if dtype is None:
                raise HusaiError(f"SAELens activation column {column!r} in {path} has dtype {flat.type}; "
                                 f"supported: {', '.join(_ARROW_DTYPES)}")
            for level, (a, width) in enumerate(((arr, ctx), (inner, d))):
                fixed = getattr(a.type, "list_size", None)
                lengths = a.value_lengths() if fixed is None and hasattr(a, "value_lengths") else None
                if (fixed is not None and fixed != width) or (
                        lengths is not None and len(a) and not (np.asarray(lengths) == width).all()):
                    raise HusaiError(f"corrupt SAELens activation cache: {path.name} has rows of the wrong "
                                     f"length in {column!r} (level {level})")
            if len(flat) != len(arr) * ctx * d or flat.null_count:
                raise HusaiError(f"corrupt SAELens activation cache: {path.name} holds {len(flat)} values in "
                                 f"{column!r}, expected {len(arr)} x {ctx} x {d}")
            if len(flat) == 0:
                continue
            offset = flat.buffers()[1].address - base + flat.offset * _itemsize(dtype)
            if not 0 <= offset <= size - len(flat) * _itemsize(dtype):
                raise HusaiError(f"cannot map the activations of {path}: the Arrow values are not stored "
                                 "contiguously in the file")
            segs.append(_FileSegment(path, offset, len(arr) * ctx, d, dtype, None))
    return segs


def _open_saelens(folder: Path, hook: str | None, max_rows: int | None) -> ActivationSource:
    import datasets

    try:
        ds = datasets.load_from_disk(str(folder))
    except Exception as exc:  # datasets/pyarrow raise many types for damaged folders
        raise HusaiError(f"corrupt SAELens activation cache {folder}: {exc.__class__.__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
    if isinstance(ds, datasets.DatasetDict):
        raise HusaiError(f"{folder} is a DatasetDict with splits {sorted(ds)}; pass the folder of one split")
    if getattr(ds, "_indices", None) is not None:
        raise HusaiError(f"the SAELens activation cache {folder} has an indices mapping; "
                         "save it with flatten_indices() first")
    cols = {name: f for name, f in ds.features.items() if isinstance(f, datasets.Array2D)}
    if not cols:
        raise HusaiError(f"unknown activation source {folder}: a datasets folder without an Array2D "
                         f"(context_size, d_in) activation column (columns: {ds.column_names})")
    if hook is None:
        if len(cols) != 1:
            raise HusaiError(f"the SAELens cache {folder} holds hooks {sorted(cols)}; pass hook= to choose one")
        hook = next(iter(cols))
    if hook not in cols:
        raise HusaiError(f"hook {hook!r} is not in the SAELens activation cache at {folder}; cached: {sorted(cols)}")
    ctx, d = (int(v) for v in cols[hook].shape)
    files = [Path(f["filename"]) for f in ds.cache_files]
    n_seq = len(ds)
    has_tokens = "token_ids" in ds.column_names
    del ds
    try:
        segs = [s for f in files for s in _arrow_segments(f, hook, ctx, d)]
    except HusaiError:
        raise
    except Exception as exc:
        raise HusaiError(f"corrupt SAELens activation cache {folder}: {exc.__class__.__name__}: {exc}") from None
    if sum(s.n_rows for s in segs) != n_seq * ctx:
        raise HusaiError(f"corrupt SAELens activation cache {folder}: {sum(s.n_rows for s in segs)} rows in the "
                         f"Arrow files, {n_seq} sequences x {ctx} positions in its metadata")
    if max_rows is not None:
        segs = _cap(segs, int(max_rows))

    def tokens() -> torch.Tensor:
        import datasets as _ds

        col = _ds.load_from_disk(str(folder)).data.column("token_ids")
        return torch.from_numpy(col.combine_chunks().flatten().to_numpy().astype(np.int64))

    n_keep = sum(s.n_rows for s in segs)
    labels = {"token_ids": (lambda: tokens()[:n_keep])} if has_tokens else {}
    return ActivationSource(segs, kind="saelens_cache", path=folder, hook=hook, labels=labels,
                            note=f"context_size {ctx}")
