"""Activation sources: rows read by index from disk, whatever wrote them.

``open_source(spec, hook=None)`` detects the layout of ``spec`` and returns an
``ActivationSource`` that knows its rows (``n_rows``, ``d_in``, ``shape``), the dataset each
row came from (when the layout says so) and reads rows by index (``take``):

    husai_cache     this project's cache: a folder with ``metadata.json`` and
                    ``activations.safetensors`` (one tensor per hook, ``label.*`` row labels)
    foreign_folder  a folder of per-dataset files ``<dataset>_<hook>.pt|.safetensors``
                    (``(rows, d)`` or ``(rows, seq, d)``; the dataset name is kept per row),
                    or one such file
    saelens_cache   SAELens's ``CacheActivationsRunner`` output: a Hugging Face ``datasets``
                    dataset saved with ``save_to_disk`` (``state.json``, ``dataset_info.json``,
                    ``data-XXXXX-of-XXXXX.arrow``); one ``Array2D(context_size, d_in)`` column
                    named by the hook per sequence and a ``token_ids`` column. Rows are
                    (sequence, position) pairs, sequence-major — the order SAELens reads them.
    tensor          an in-memory tensor (``open_source(tensor)``), for uniform code paths

How rows are read. Every layout is reduced to *segments*: a row-major ``(rows, d)`` array at a
byte offset of a file (the safetensors header, the Arrow record batch's value buffer, the
storage of a ``torch.save`` zip). ``take(idx)`` sorts the asked rows, maps each touched
segment's file read-only for the duration of the call, copies the asked rows out and unmaps
it: only the asked rows' pages are read, and nothing stays mapped, so the process's memory
does not grow with the rows touched over a training run (the kernel's page cache, which it
reclaims at will, is not process memory). Sequential reads (``iter_chunks``, ``materialise``,
``fingerprint``, statistics) use plain buffered reads of at most ``CHUNK_BYTES``.

Memory of a source: its segment table (a few numbers per file/record batch) and, for a view
(``subset``), its int64 row index (8 bytes per row of the view). ``take`` of m rows holds at
most ~3 m x d_in x 4 bytes while it runs (the gathered rows in the storage dtype, their float32
copy, the output). A ``.pt`` file whose storage cannot be located in the file (not contiguous,
or a non-Linux system) falls back to ``torch.load(mmap=True)``; its touched pages then count
towards the process's memory until the source is dropped (stated in ``describe()``).
"""

from __future__ import annotations

import hashlib
import json
import math
import mmap
import os
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import HusaiError

# Evaluation subsets of streamed data (final training-row metrics, held-out rows of a streamed
# source, BatchTopK calibration): at most this many rows, evenly spaced ...
EVAL_MAX_ROWS = 65_536
# ... and at most this many bytes of float32 (rows = EVAL_MAX_BYTES // (4 * d_in) when smaller).
EVAL_MAX_BYTES = 32 * 2**20
# b_dec initialisation reads at most this many evenly spaced rows (geometric_median's own cap).
INIT_MAX_ROWS = 8192
# take() maps a file span only when the asked rows fill at least 1/DENSE of it (else preadv).
DENSE = 4
# Sequential reads move at most this many bytes at a time.
CHUNK_BYTES = 4 * 2**20

KINDS = ("husai_cache", "foreign_folder", "saelens_cache", "tensor")

_NP = {"float32": np.float32, "float16": np.float16, "float64": np.float64, "bfloat16": np.int16}
_ST_DTYPES = {"F32": "float32", "F16": "float16", "F64": "float64", "BF16": "bfloat16"}
_TORCH_DTYPES = {torch.float32: "float32", torch.float16: "float16", torch.float64: "float64",
                 torch.bfloat16: "bfloat16"}
_ARROW_DTYPES = {"float": "float32", "halffloat": "float16", "double": "float64"}

_UNKNOWN = ("expected this project's cache (metadata.json + activations.safetensors), a folder of "
            "<dataset>_<hook>.pt|.safetensors files, or a SAELens activation cache (a datasets "
            "save_to_disk folder: state.json, dataset_info.json, data-*.arrow)")


def _itemsize(dtype: str) -> int:
    return np.dtype(_NP[dtype]).itemsize


def _to_float32(arr: np.ndarray, dtype: str) -> torch.Tensor:
    """Rows read in the storage dtype -> a float32 tensor (no copy when already float32)."""
    t = torch.from_numpy(arr)
    if dtype == "bfloat16":
        t = t.view(torch.bfloat16)
    return t if t.dtype == torch.float32 else t.float()


# ---------------------------------------------------------------- segments

@dataclass
class _FileSegment:
    """``n_rows`` rows of width ``d`` stored row-major at byte ``offset`` of ``path``."""

    path: Path
    offset: int
    n_rows: int
    d: int
    dtype: str
    dataset: str | None = None

    @property
    def row_bytes(self) -> int:
        return self.d * _itemsize(self.dtype)

    def read_rows(self, local: np.ndarray) -> torch.Tensor:
        """Rows ``local`` (sorted, repeats allowed). Dense asks (the rows fill >= 1/DENSE of the
        span they cover) go through one read-only mapping of that span, closed before returning;
        sparse asks are read row-run by row-run (``os.preadv``) straight into the output, so no
        page beyond the asked rows is ever mapped (a mapping would also map the kernel's
        fault-around pages, up to 64 KiB per touched row)."""
        rb = self.row_bytes
        start = self.offset + int(local[0]) * rb
        stop = self.offset + (int(local[-1]) + 1) * rb
        try:
            if len(local) * rb * DENSE >= stop - start or not hasattr(os, "preadv"):
                base = start - start % mmap.ALLOCATIONGRANULARITY
                with open(self.path, "rb") as f, mmap.mmap(f.fileno(), stop - base, access=mmap.ACCESS_READ,
                                                            offset=base) as mm:
                    view = np.frombuffer(mm, dtype=_NP[self.dtype], count=(stop - start) // _itemsize(self.dtype),
                                         offset=start - base).reshape(-1, self.d)
                    rows = view[local - local[0]]  # fancy indexing copies out of the mapping
                    del view  # release the buffer export so the mapping can close
            else:
                rows = np.empty((len(local), self.d), dtype=_NP[self.dtype])
                out = memoryview(rows).cast("B")
                cuts = (np.flatnonzero(np.diff(local) != 1) + 1).tolist()
                fd = os.open(self.path, os.O_RDONLY)
                try:
                    for a, b in zip([0, *cuts], [*cuts, len(local)]):
                        if os.preadv(fd, [out[a * rb : b * rb]], self.offset + int(local[a]) * rb) != (b - a) * rb:
                            raise HusaiError(f"corrupt activation file {self.path}: it ends before row "
                                             f"{int(local[b - 1])} of {self.n_rows}")
                finally:
                    os.close(fd)
        except (OSError, ValueError) as exc:
            raise HusaiError(f"cannot read activation rows from {self.path}: {exc}") from None
        return _to_float32(rows, self.dtype)

    def read_range(self, lo: int, hi: int) -> torch.Tensor:
        buf = np.empty((hi - lo, self.d), dtype=_NP[self.dtype])
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset + lo * self.row_bytes)
                got = f.readinto(memoryview(buf).cast("B"))
        except OSError as exc:
            raise HusaiError(f"cannot read activation rows from {self.path}: {exc}") from None
        if got != buf.nbytes:
            raise HusaiError(f"corrupt activation file {self.path}: it ends before row {hi} of {self.n_rows}")
        return _to_float32(buf, self.dtype)


@dataclass
class _TensorSegment:
    """Rows held by a tensor (in memory, or a ``torch.load(mmap=True)`` fallback)."""

    x: torch.Tensor
    dataset: str | None = None
    path: Path | None = None

    @property
    def n_rows(self) -> int:
        return self.x.shape[0]

    @property
    def d(self) -> int:
        return self.x.shape[1]

    @property
    def dtype(self) -> str:
        return _TORCH_DTYPES.get(self.x.dtype, str(self.x.dtype).removeprefix("torch."))

    def read_rows(self, local: np.ndarray) -> torch.Tensor:
        return self.x[torch.from_numpy(local)].float()

    def read_range(self, lo: int, hi: int) -> torch.Tensor:
        return self.x[lo:hi].float()


# ---------------------------------------------------------------- the source

class ActivationSource:
    """Rows of one hook's activations, read by index (see the module docstring).

    ``take(idx)`` returns those rows as float32 ``(len(idx), d_in)``; ``x[idx]`` /
    ``subset(idx)`` is a lazy view on some rows (nothing is read; the trainer and
    ``experiments.train_or_load_saes`` accept views); ``materialise()`` reads everything.
    """

    def __init__(self, segments: list, *, kind: str, path: Path | None, hook: str | None,
                 labels: dict[str, Any] | None = None, note: str = "", index: torch.Tensor | None = None):
        if not segments or sum(s.n_rows for s in segments) == 0:
            raise HusaiError(f"activation source {path} has no rows")
        widths = {s.d for s in segments}
        if len(widths) > 1:
            raise HusaiError(f"shape mismatch in activation source {path}: row widths {sorted(widths)}")
        self.segments = segments
        self.kind, self.path, self.hook, self.note = kind, path, hook, note
        self._labels = labels or {}  # name -> tensor, or a zero-argument loader
        self._starts = np.cumsum([0] + [s.n_rows for s in segments]).astype(np.int64)
        self._index = index
        self._fp: str | None = None

    # ------------------------------------------------------------ shape
    @property
    def n_total(self) -> int:
        """Rows of the underlying source (a view may select fewer)."""
        return int(self._starts[-1])

    @property
    def n_rows(self) -> int:
        return self.n_total if self._index is None else int(self._index.shape[0])

    @property
    def d_in(self) -> int:
        return int(self.segments[0].d)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.n_rows, self.d_in)

    def __len__(self) -> int:
        return self.n_rows

    @property
    def dtype(self) -> str:
        """The storage dtype (``take`` always returns float32)."""
        return self.segments[0].dtype

    @property
    def nbytes(self) -> int:
        return self.n_rows * self.d_in * 4

    # ------------------------------------------------------------ reading
    def _global(self, idx: Any) -> np.ndarray:
        idx = torch.as_tensor(idx).reshape(-1).cpu()
        if idx.dtype == torch.bool:
            if idx.numel() != self.n_rows:
                raise HusaiError(f"a boolean row mask needs {self.n_rows} entries, got {idx.numel()}")
            idx = idx.nonzero().reshape(-1)
        idx = idx.long()
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.n_rows):
            bad = int(idx.min()) if int(idx.min()) < 0 else int(idx.max())
            raise HusaiError(f"row index {bad} is outside the {self.n_rows} rows of {self.describe()}")
        if self._index is not None:
            idx = self._index[idx]
        return idx.numpy()

    def _read(self, rows: np.ndarray) -> torch.Tensor:
        out = torch.empty(len(rows), self.d_in, dtype=torch.float32)
        if len(rows) == 0:
            return out
        order = np.argsort(rows, kind="stable")
        srt = rows[order]
        seg_of = np.searchsorted(self._starts, srt, side="right") - 1
        cuts = np.flatnonzero(np.diff(seg_of)) + 1
        for lo, hi in zip(np.r_[0, cuts], np.r_[cuts, len(srt)]):
            s = int(seg_of[lo])
            out[torch.from_numpy(order[lo:hi])] = self.segments[s].read_rows(srt[lo:hi] - self._starts[s])
        return out

    def take(self, idx: Any) -> torch.Tensor:
        """Rows ``idx`` (any integer array/tensor, any order, repeats allowed) as float32 (len, d_in)."""
        return self._read(self._global(idx))

    def rows(self, start: int, stop: int) -> torch.Tensor:
        """Rows ``start:stop`` (sequential reads for a whole source)."""
        start, stop = max(0, int(start)), min(self.n_rows, int(stop))
        if self._index is not None:
            return self.take(torch.arange(start, stop))
        parts = [(s, max(start, int(self._starts[s])), min(stop, int(self._starts[s + 1])))
                 for s in range(len(self.segments))]
        parts = [(s, a, b) for s, a, b in parts if a < b]
        if len(parts) == 1:
            s, a, b = parts[0]
            return self.segments[s].read_range(a - int(self._starts[s]), b - int(self._starts[s]))
        out = torch.empty(max(0, stop - start), self.d_in)
        for s, a, b in parts:
            out[a - start : b - start] = self.segments[s].read_range(a - int(self._starts[s]), b - int(self._starts[s]))
        return out

    def chunk_rows(self) -> int:
        return max(1, CHUNK_BYTES // (4 * self.d_in))

    def iter_chunks(self, chunk_rows: int | None = None) -> Iterator[torch.Tensor]:
        """Every row in order, ``chunk_rows`` (default: ``CHUNK_BYTES`` of float32) at a time."""
        step = int(chunk_rows or self.chunk_rows())
        for lo in range(0, self.n_rows, step):
            yield self.rows(lo, lo + step)

    def evenly_spaced(self, m: int) -> torch.Tensor:
        """Indices of ``m`` evenly spaced rows (all rows when m >= n): round(linspace(0, n-1, m)),
        the rule of ``geometric_median`` and BatchTopK calibration."""
        return evenly_spaced(self.n_rows, m)

    def materialise(self, max_rows: int | None = None) -> torch.Tensor:
        """All rows as one float32 tensor; with ``max_rows`` < n, ``max_rows`` evenly spaced rows."""
        if max_rows is not None and int(max_rows) < self.n_rows:
            return self.take(self.evenly_spaced(int(max_rows)))
        return self.rows(0, self.n_rows)

    def __array__(self, dtype=None, copy=None):  # np.asarray(source): explicit, whole-source read
        out = self.materialise().numpy()
        return out if dtype is None else out.astype(dtype)

    # ------------------------------------------------------------ views
    def subset(self, idx: Any) -> ActivationSource:
        """A lazy view on rows ``idx`` (of this source or view); nothing is read."""
        if isinstance(idx, slice):
            idx = torch.arange(self.n_rows)[idx]
        g = torch.from_numpy(self._global(idx).copy())
        view = ActivationSource(self.segments, kind=self.kind, path=self.path, hook=self.hook,
                                labels=self._labels, note=self.note, index=g)
        return view

    def __getitem__(self, idx: Any) -> Any:
        if isinstance(idx, (int, np.integer)):
            return self.take([int(idx)])[0]
        return self.subset(idx)

    # ------------------------------------------------------------ labels
    @property
    def datasets(self) -> list[str] | None:
        """The datasets of this source in row order (None when the layout has none)."""
        names = [s.dataset for s in self.segments]
        if all(n is None for n in names):
            return None
        return list(dict.fromkeys(names))

    def dataset_names(self, idx: Any = None) -> np.ndarray | None:
        """The dataset name of rows ``idx`` (default: every row), or None without datasets."""
        if self.datasets is None:
            return None
        rows = self._global(torch.arange(self.n_rows) if idx is None else idx)
        names = np.array([s.dataset for s in self.segments], dtype=object)
        return names[np.searchsorted(self._starts, rows, side="right") - 1]

    @property
    def label_names(self) -> list[str]:
        return sorted(self._labels)

    def label(self, name: str) -> torch.Tensor:
        """A per-row label (our cache: ``a``, ``b``, ``c``, ``split``; SAELens: ``token_ids``)."""
        if name not in self._labels:
            raise HusaiError(f"activation source {self.path} has no row label {name!r}; it has {self.label_names}")
        value = self._labels[name]
        if callable(value):
            value = self._labels[name] = value()
        return value if self._index is None else value[self._index]

    # ------------------------------------------------------------ identity
    def fingerprint(self) -> str:
        """Content hash equal to ``store.tensor_fingerprint(self.materialise())``, streamed."""
        if self._fp is None:
            self._fp = fingerprint(self)
        return self._fp

    @property
    def tag(self) -> str:
        """A folder-name-safe id of this source (kind, name, hash of path and hook)."""
        name = re.sub(r"[^A-Za-z0-9_.-]+", "-", self.path.name if self.path else "tensor")[:40]
        ident = json.dumps([self.kind, str(self.path.resolve()) if self.path else None, self.hook,
                            [s.n_rows for s in self.segments]])
        return f"{self.kind}-{name}-{hashlib.sha256(ident.encode()).hexdigest()[:8]}"

    def describe(self) -> str:
        ds = self.datasets
        parts = [f"{self.kind} {self.path}" if self.path else self.kind,
                 f"hook {self.hook}" if self.hook else None,
                 f"{self.n_rows:,} rows x {self.d_in} ({self.dtype})",
                 f"{len(self.segments)} segment(s)",
                 f"view of {self.n_total:,}" if self._index is not None else None,
                 f"datasets {', '.join(ds[:5])}{' ...' if len(ds) > 5 else ''}" if ds else None, self.note or None]
        return "; ".join(p for p in parts if p)

    def __repr__(self) -> str:
        return f"ActivationSource({self.describe()})"


# ---------------------------------------------------------------- helpers for callers

def is_source(x: Any) -> bool:
    """True for an ``ActivationSource`` or any object with ``take``, ``shape`` and ``__len__``
    (arrays and tensors, which also have ``take``, are not sources)."""
    return (x is not None and not isinstance(x, (torch.Tensor, np.ndarray))
            and all(hasattr(x, a) for a in ("take", "shape", "__len__")))


def as_source(x: Any) -> Any:
    """A source as is; a tensor/array wrapped as a ``tensor`` source."""
    if is_source(x):
        return x
    t = torch.as_tensor(x)
    if t.dim() < 2:
        raise HusaiError(f"activations must have shape (rows, d_in), got {tuple(t.shape)}")
    return ActivationSource([_TensorSegment(t.reshape(-1, t.shape[-1]))], kind="tensor", path=None, hook=None)


def eval_rows(n: int, d_in: int) -> int:
    """Rows of an evaluation subset of streamed data: min(n, EVAL_MAX_ROWS, EVAL_MAX_BYTES / (4 d_in))."""
    return max(1, min(int(n), EVAL_MAX_ROWS, EVAL_MAX_BYTES // (4 * int(d_in))))


def evenly_spaced(n: int, m: int) -> torch.Tensor:
    """round(linspace(0, n-1, m)) — the evenly spaced rows rule — or arange(n) when m >= n."""
    return torch.arange(n) if m >= n else torch.linspace(0, n - 1, int(m)).round().long()


def heldout_rows(x: Any, idx: torch.Tensor) -> torch.Tensor:
    """Held-out rows to evaluate on, in memory: ``x[idx]`` for a tensor (as before); for a source,
    ``eval_rows`` evenly spaced rows of ``idx`` (all of them when they fit EVAL_MAX_BYTES)."""
    if not is_source(x):
        return x[idx]
    idx = torch.as_tensor(idx)
    return x.take(idx[evenly_spaced(len(idx), eval_rows(len(idx), x.shape[1]))])


def fingerprint(*items: Any) -> str:
    """``store.tensor_fingerprint`` for tensors and sources alike (sources hashed in chunks:
    shape, then the float32 bytes of every row in order — the same digest as the tensor)."""
    h = hashlib.sha256()
    for t in items:
        if t is None:
            continue
        if is_source(t):
            h.update(str(tuple(int(v) for v in t.shape)).encode())
            for chunk in t.iter_chunks():
                h.update(memoryview(chunk.contiguous().numpy()).cast("B"))  # no bytes copy
        else:
            h.update(str(tuple(t.shape)).encode())
            h.update(t.detach().cpu().float().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def mean_rows(x: Any, scale: float = 1.0) -> torch.Tensor:
    """float64 mean of ``x * scale`` over all rows of a source, streamed."""
    total = torch.zeros(x.shape[1], dtype=torch.float64)
    for chunk in x.iter_chunks():
        total += (chunk * scale if scale != 1.0 else chunk).double().sum(0)
    return total / x.shape[0]


def mean_sq_norm(x: Any) -> float:
    """Mean squared row norm of a source, streamed (float64)."""
    total = 0.0
    for chunk in x.iter_chunks():
        total += float(chunk.double().pow(2).sum())
    return total / x.shape[0]


def _available_memory() -> int | None:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def source_condition_data(name: str, source: Any, split: tuple[torch.Tensor, torch.Tensor], *,
                          data_seed: int = 0) -> Any:
    """``conditions.ConditionData`` of condition ``name`` for rows read from a source.

    ``trained``: training rows are a lazy view of the source (the trainer streams them); the
    held-out rows are read into memory (``heldout_rows``: all of them up to EVAL_MAX_BYTES,
    else an evenly spaced subset). ``gaussian_matched``: fitted on all training rows and drawn
    in memory exactly as for our cache (``nulls.gaussian_matched_rows``: n_rows x d_in float32,
    ~3x that while drawing; refused with a clear error when that exceeds the free memory).
    ``isotropic`` (untrained SAEs): the <= 8192 evenly spaced training rows their b_dec init
    reads. ``random_transformer`` needs the transformer that made the activations: refused.
    """
    from .conditions import ConditionData
    from .nulls import check_null, gaussian_matched_rows

    train_idx, held_idx = split
    where = source.describe()
    if name == "trained":
        return ConditionData(name, source.subset(train_idx), heldout_rows(source, held_idx),
                             f"activations streamed from {where}")
    if name == "isotropic":
        rows = source.take(train_idx[evenly_spaced(len(train_idx), INIT_MAX_ROWS)])
        return ConditionData(name, rows, heldout_rows(source, held_idx),
                             "no training: our initialisation (i.i.d. isotropic decoder rows)")
    if check_null(name) != "gaussian_matched":
        raise HusaiError(f"the {name} null needs the transformer that made the activations; it does not exist for "
                         f"foreign activations ({where})")
    n, d = source.shape
    need, free = 12 * n * d + 4 * len(train_idx) * d, _available_memory()
    if free is not None and need > free:
        raise HusaiError(f"the gaussian_matched null of {n:,} x {d} rows needs ~{need / 2**30:.1f} GiB in memory, "
                         f"{free / 2**30:.1f} GiB are free; drop it from the nulls for this source")
    fit = source.take(train_idx)
    rows = gaussian_matched_rows(fit, seed=data_seed, n_rows=n)
    del fit
    return ConditionData(name, rows[train_idx], _held_like(rows, source, held_idx),
                         f"Gaussian rows with the activations' mean and covariance (data seed {data_seed})")


def _held_like(rows: torch.Tensor, source: Any, held_idx: torch.Tensor) -> torch.Tensor:
    """Held-out rows of an in-memory null, capped like the source's (same count, same positions)."""
    held_idx = torch.as_tensor(held_idx)
    return rows[held_idx[evenly_spaced(len(held_idx), eval_rows(len(held_idx), source.shape[1]))]]


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
    from .io import read_json

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


def _locate_pt(path: Path) -> tuple[torch.Tensor, int | None]:
    """(rows tensor loaded with mmap, byte offset of its data in the file or None)."""
    try:
        obj = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged pickle/zip
        raise HusaiError(f"corrupt activation file {path}: {exc.__class__.__name__}: {str(exc).splitlines()[0]}") from None
    if isinstance(obj, dict):
        obj = obj.get("activations", next((v for v in obj.values() if torch.is_tensor(v)), None))
    if not torch.is_tensor(obj) or obj.ndim < 2:
        raise HusaiError(f"activation file {path} holds no (rows, d) or (rows, seq, d) tensor")
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


def _truncate(seg: Any, n: int) -> Any:
    if n >= seg.n_rows:
        return seg
    if isinstance(seg, _FileSegment):
        return _FileSegment(seg.path, seg.offset, n, seg.d, seg.dtype, seg.dataset)
    return _TensorSegment(seg.x[:n], seg.dataset, seg.path)


def _open_foreign(folder: Path, hook: str | None, max_files: int | None, max_rows_per_file: int | None,
                  max_rows: int | None) -> ActivationSource:
    from .activations import _foreign_files

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


def _cap(segs: list, max_rows: int) -> list:
    out, left = [], max_rows
    for s in segs:
        if left <= 0:
            break
        out.append(_truncate(s, min(s.n_rows, left)))
        left -= out[-1].n_rows
    return out


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


__all__ = ["ActivationSource", "open_source", "is_source", "as_source", "heldout_rows", "eval_rows", "evenly_spaced",
           "fingerprint", "mean_rows", "mean_sq_norm", "storage_layout", "source_condition_data", "KINDS", "EVAL_MAX_ROWS", "EVAL_MAX_BYTES",
           "INIT_MAX_ROWS", "CHUNK_BYTES"]
