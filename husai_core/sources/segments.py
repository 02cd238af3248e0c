"""Segments: a row-major ``(rows, d)`` array at a byte offset of a file (or an in-memory tensor),
read by row index through a short-lived read-only map, or sequentially in ``CHUNK_BYTES`` reads.
"""

from __future__ import annotations

import json
import mmap
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import HusaiError


# take() maps a file span only when the asked rows fill at least 1/DENSE of it (else preadv).
DENSE = 4
# Sequential reads move at most this many bytes at a time.
CHUNK_BYTES = 4 * 2**20

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


def _truncate(seg: Any, n: int) -> Any:
    if n >= seg.n_rows:
        return seg
    if isinstance(seg, _FileSegment):
        return _FileSegment(seg.path, seg.offset, n, seg.d, seg.dtype, seg.dataset)
    return _TensorSegment(seg.x[:n], seg.dataset, seg.path)


def _cap(segs: list, max_rows: int) -> list:
    out, left = [], max_rows
    for s in segs:
        if left <= 0:
            break
        out.append(_truncate(s, min(s.n_rows, left)))
        left -= out[-1].n_rows
    return out
