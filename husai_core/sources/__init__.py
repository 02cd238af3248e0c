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

The package: ``segments`` (row-major arrays at a file offset, read by index), ``source``
(:class:`ActivationSource`), ``rows`` (evaluation / held-out rows, fingerprints, statistics,
the condition data of phase 04), ``layouts`` (``open_source``: this project's cache and
foreign per-dataset files) and ``arrow`` (SAELens's Arrow activation caches).
"""

from .segments import DENSE, CHUNK_BYTES
from .source import KINDS, ActivationSource, is_source, as_source, evenly_spaced, fingerprint
from .rows import (
    EVAL_MAX_ROWS, EVAL_MAX_BYTES, INIT_MAX_ROWS, eval_rows, heldout_rows, mean_rows, mean_sq_norm,
)
from .layouts import storage_layout, open_source

__all__ = [
    "ActivationSource", "open_source", "is_source", "as_source", "heldout_rows", "eval_rows", "evenly_spaced",
    "fingerprint", "mean_rows", "mean_sq_norm", "storage_layout", "KINDS", "EVAL_MAX_ROWS",
    "EVAL_MAX_BYTES", "INIT_MAX_ROWS", "CHUNK_BYTES",
]
