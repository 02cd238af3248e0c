"""Resumable sweeps of seeds x configurations, in a local process pool or on a Dask cluster.

Each point (one configuration, one seed) is a call ``fn(spec) -> dict`` of a top-level
function, so it can run in another process. Its result travels back to the client, which
writes it atomically to ``<out>/points/<key>.json`` as it arrives; a rerun skips every point
that has one, so an interrupted sweep resumes without redoing work and never sees a
half-written result. Workers never write point files.

On a Dask cluster (``scheduler=<address>``, e.g. ``SLURMCluster(...).scheduler_address``
from dask-jobqueue; see docs/dask.md) the point files stay on the client's disk, but what
``fn`` itself reads and writes does not travel: ``experiments.train_point`` reads the
activations and writes SAE checkpoints under ``artifacts``, and the client loads those
checkpoints later. So every absolute path in a point's configuration that exists on the
client must exist on the worker too (a shared filesystem mounted at the same path); each
task checks this first and fails naming the path and the worker's host otherwise.

A point's key names what its result depends on besides the seed: the configuration, the
identity of the data it trains on (``data_id``, e.g. ``store.tensor_fingerprint`` of the
activations) and optionally the version of the code that computes it (``code_id``, e.g.
``store.code_version("all")``). New data or new code give new keys, so a stale result is
never reused: the point is computed again.

Point files name no machine's folders: an absolute path inside the runs folder (in the
configuration or the result) is stored relative to it, listed under the record's
``runs_relative``, and resolved again by ``collect``; keys are computed on the relative form,
so a copied or moved runs folder reuses its points.
"""

from __future__ import annotations

import itertools
import os
import socket
import uuid
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from multiprocessing import get_context
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd
from .progress import tqdm

from .errors import HusaiError
from .paths import runs_path, runs_relative
from .io import atomic_write_text, config_hash, read_json, to_jsonable, write_json


class SweepPoint(NamedTuple):
    config: dict[str, Any]  # the settings that vary (and the fixed ones), JSON-able
    seed: int
    data_id: str  # identity of the data the point trains on (e.g. the activations' fingerprint)
    code_id: str = ""  # version of the code that computes it ("" when not tracked)

    @property
    def key(self) -> str:
        ident = {"config": _relative(dict(self.config))[0], "data": self.data_id, "code": self.code_id}
        return f"{config_hash(ident)[:12]}-seed{self.seed}"


_ID_HINT = {"data_id": "the data the points train on (e.g. store.tensor_fingerprint of the activations)",
            "code_id": "the version of the code that computes the points (e.g. store.code_version('all'))"}


def _check_id(name: str, value: Any, required: bool) -> str:
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value):
        raise HusaiError(f"sweep {name} must be a non-empty string naming {_ID_HINT[name]}; got {value!r}")
    return value


def expand_grid(base: dict[str, Any], grid: dict[str, list], seeds: list[int],
                check: Callable[[dict[str, Any]], None] | None = None, *, data_id: str,
                code_id: str | None = None) -> list[SweepPoint]:
    """Cartesian product of ``grid`` over ``base`` for every seed, validated up front.

    ``check(config)`` raises HusaiError for an invalid point (e.g. k > d_sae), so a bad
    spec fails before any training starts, naming the point. ``data_id`` (required) names the
    data every point trains on and ``code_id`` the code version; both are part of each point's
    key, so a finished point is reused only for the same configuration, data and code.
    """
    data_id = _check_id("data_id", data_id, required=True)
    code_id = _check_id("code_id", code_id, required=False)
    if not seeds:
        raise HusaiError("sweep has no seeds")
    for name, values in grid.items():
        if not isinstance(values, (list, tuple)) or not values:
            raise HusaiError(f"sweep grid entry {name!r} is empty; give at least one value")
    names = list(grid)
    configs = [{**base, **dict(zip(names, combo))} for combo in itertools.product(*(grid[n] for n in names))]
    if not configs:
        raise HusaiError("sweep grid is empty")
    for cfg in configs:
        if check is not None:
            try:
                check(cfg)
            except HusaiError as exc:
                varying = {n: cfg[n] for n in names}
                raise HusaiError(f"invalid sweep point {varying}: {exc}") from None
    return [SweepPoint(cfg, int(s), data_id, code_id) for cfg in configs for s in seeds]


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)


def _call(fn: Callable[[dict], dict], point: SweepPoint, shared: tuple[str, ...] = ()) -> dict:
    """Run one point where it was sent; return its record (the client writes it)."""
    for path in shared:
        if not os.path.exists(path):
            raise HusaiError(f"sweep worker on {socket.gethostname()} cannot see {path}, which the client has: the "
                             f"point reads or writes there, so workers need the client's filesystem at the same path")
    result = fn({**point.config, "seed": point.seed})
    return to_jsonable({"key": point.key, "seed": point.seed, "config": point.config, "data_id": point.data_id,
                        "code_id": point.code_id, "result": result})


def _relative(values: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """``values`` with absolute paths inside the runs folder made relative to it; the changed keys."""
    rel = {k: runs_relative(v) for k, v in values.items() if isinstance(v, str) and os.path.isabs(v)}
    changed = {k: r for k, r in rel.items() if r != values[k]}
    return {**values, **changed}, list(changed)


def _save(out: Path, record: dict) -> None:
    (config, in_config), (result, in_result) = _relative(record["config"]), _relative(record["result"])
    where = [f"config.{k}" for k in in_config] + [f"result.{k}" for k in in_result]
    write_json(out / "points" / f"{record['key']}.json",
               {**record, "config": config, "result": result, "runs_relative": where})


def point_path(out: str | os.PathLike, point: SweepPoint) -> Path:
    """Where ``run_sweep`` keeps the finished ``point``'s record."""
    return Path(out) / "points" / f"{point.key}.json"


def read_point(path: str | os.PathLike) -> dict:
    """A point record as ``run_sweep`` wrote it, its runs-relative paths absolute again (this machine's)."""
    record = read_json(path, "sweep point result")
    record = {**record, "config": dict(record["config"]), "result": dict(record["result"])}
    for entry in record.get("runs_relative", []):
        section, key = entry.split(".", 1)
        record[section][key] = str(runs_path(record[section][key]))
    return record


def _client_paths(point: SweepPoint) -> tuple[str, ...]:
    """Absolute paths in a point's configuration that exist here, on the client."""
    return tuple(sorted({v for v in point.config.values() if isinstance(v, str) and os.path.isabs(v)
                         and os.path.exists(v)}))


def run_sweep(
    fn: Callable[[dict], dict],
    points: list[SweepPoint],
    out: str | os.PathLike,
    workers: int | None = None,
    threads_per_worker: int | None = None,
    scheduler: str | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Run every unfinished point; return one tidy row per point (config columns + results).

    Locally in ``workers`` processes (default one per core, ``threads_per_worker`` torch threads
    each), or on the Dask cluster whose scheduler listens at ``scheduler`` (e.g.
    ``"tcp://10.0.0.5:8786"``); either way the results come back here and are written under ``out``.
    """
    out = Path(out)
    (out / "points").mkdir(parents=True, exist_ok=True)
    for p in points:
        _check_id("data_id", p.data_id, required=True)
    keys = [p.key for p in points]
    if len(set(keys)) != len(keys):
        raise HusaiError("sweep has duplicate points (same configuration, data and seed)")
    todo = [p for p in points if not point_path(out, p).is_file()]
    bar = tqdm(total=len(points), initial=len(points) - len(todo), disable=not progress, desc="sweep")
    if todo:
        if scheduler:
            _run_dask(fn, todo, out, scheduler, bar)
        else:
            # Default: one worker per core, one thread each, so workers never fight over cores.
            cores = os.cpu_count() or 1
            workers = min(workers or cores, len(todo))
            threads = threads_per_worker or max(1, cores // workers)
            if workers == 1:
                _init_worker(threads)
                for p in todo:
                    _save(out, _call(fn, p))
                    bar.update()
            else:
                _run_pool(fn, todo, out, workers, threads, bar)
    bar.close()
    return collect(out, points)


def _run_pool(fn, todo, out, workers, threads, bar) -> None:
    # spawn, not fork: forking a process that already runs torch threads can deadlock.
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_init_worker,
                             initargs=(threads,)) as pool:
        pending = {pool.submit(_call, fn, p) for p in todo}
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                _save(out, fut.result())  # fut.result() re-raises a worker's error here, with its message
                bar.update()


def _run_dask(fn, todo, out, address, bar) -> None:
    from distributed import Client, as_completed

    with Client(address) as client:
        futures = [client.submit(_call, fn, p, _client_paths(p), key=f"sweep-{p.key}-{uuid.uuid4().hex[:8]}")
                   for p in todo]
        for fut in as_completed(futures):
            _save(out, fut.result())  # the result travels back; the client writes it
            bar.update()


def collect(out: str | os.PathLike, points: list[SweepPoint]) -> pd.DataFrame:
    """Tidy table of the given points' results (paths absolute); also written as ``table.csv`` and
    ``table.json`` (paths inside the runs folder relative to it, like the point files)."""
    out = Path(out)
    rows = []
    for p in points:
        rec = read_point(point_path(out, p))
        rows.append({**rec["config"], "seed": rec["seed"], "key": rec["key"], "data_id": rec.get("data_id"),
                     **rec["result"]})
    table = pd.DataFrame(rows)
    stored = pd.DataFrame([_relative(r)[0] for r in rows])
    write_json(out / "table.json", stored.to_dict(orient="records"))
    atomic_write_text(out / "table.csv", stored.to_csv(index=False))
    return table
