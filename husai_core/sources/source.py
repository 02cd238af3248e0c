"""``ActivationSource``: the rows of one or more segments, with their datasets, read by index."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import HusaiError
from .segments import CHUNK_BYTES, _TensorSegment


KINDS = ("husai_cache", "foreign_folder", "saelens_cache", "tensor")


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


def evenly_spaced(n: int, m: int) -> torch.Tensor:
    """round(linspace(0, n-1, m)) — the evenly spaced rows rule — or arange(n) when m >= n."""
    return torch.arange(n) if m >= n else torch.linspace(0, n - 1, int(m)).round().long()


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
