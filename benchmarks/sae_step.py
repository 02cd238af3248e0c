"""Benchmark one SAE training step: ours (sparse-aware TopK) vs SAELens, plus the floor.

Run:  .venv/bin/python benchmarks/sae_step.py            (writes benchmarks/results/sae_step.json)

Methods, each a full training step on one fp32 batch of 4096 rows, all CPU threads:
- ``ours_topk``: husai_core's TopK step as the trainer runs it (``trainer.train_step``: forward
  with the AuxK dead mask, backward, decoder-gradient projection, fused Adam, decoder
  renormalisation, dead-latent bookkeeping).
- ``sae_lens_topk`` / ``sae_lens_standard``: SAELens's own ``SAETrainer._train_step`` on its
  ``TopKTrainingSAE`` / ``StandardTrainingSAE`` (default configs): ``training_forward_pass``,
  firing statistics, backward, grad-norm clipping, Adam, schedulers.
- ``floor``: what any TopK SAE step must at least do: the dense encoder matmul + top-k
  selection (forward only, no gradients, no update), with the same exact top-k routine our
  step uses (``husai_core.sae.topk_kernel.topk_last``); ``floor_torch_topk`` is the same with
  ``torch.topk``, for reference.
The methods are timed round-robin (one step each per round) so that load from other
processes hits them alike; we report the median over rounds after warm-up. The seed-batched
training probe (sequential vs batched, 4 seeds) is recorded too: it backs ``mode="auto"``.

``--fit`` adds the end-to-end fit benchmark (JSON key ``fit``): a whole training call on the
same 65,536 structured rows (``structured_rows``), batch 4096, fp32 CPU, same steps both sides:
- ``ours``: ``husai_core.sae.train_sae(cfg, x, seed)``, wall clock of the call: input checks,
  input normalisation (scale factor, scaled copy), b_dec geometric-median init, every step
  (logging every ``log_every`` steps), folding, the final ``evaluate_sae`` metrics (on
  ``trainer.data.FINAL_EVAL_ROWS`` = 8192 evenly spaced rows of the 65,536) and the history table.
- ``sae_lens``: ``husai_core.sae.saelens_backend.fit_saelens(cfg, x * scale, seed)``, wall clock
  of the input normalisation (``training_scale`` and the scaled copy, as ``train_saelens`` does
  it; our default ``normalize_activations="expected_average_only_in"``) and the call: input
  checks, SAELens config + ``TopKTrainingSAE`` construction, ``SAETrainer``
  construction, ``SAETrainer.fit`` (every step, our log line every ``log_every`` steps), the
  history table. SAELens's fit computes no final metrics, so none are added on its side.
Both sides are warmed up once per size (a 2-step call) and then timed round-robin
(ours, sae_lens, ours, ...); ratio = sae_lens seconds / ours seconds (medians over rounds;
also the median of the per-round ratios, the ratio of the min times and of process CPU times).
``--skip-step`` keeps the step results already in ``--out`` and only (re)writes the ``fit`` key;
fit cells (size, steps) not run this time keep their earlier results (each cell records when it
was measured and the load average around it).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from importlib.metadata import version
from pathlib import Path
from typing import Callable

# On a shared machine the default OpenMP policy (threads spin while waiting) collapses as soon
# as another process wants a core: every parallel op then waits for a descheduled spinner.
# Passive waiting applies to every method alike; it must be set before torch starts OpenMP.
# Pass --omp-wait-policy=default to measure with the runtime's default instead.
if "--omp-wait-policy=default" not in sys.argv:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from husai_core.io import read_json, write_json  # noqa: E402
from husai_core.sae import SAEConfig, build_sae, probe_modes, train_sae  # noqa: E402
from husai_core.sae.topk_kernel import topk_last  # noqa: E402
from husai_core.sae.trainer import make_optimizer, train_step  # noqa: E402

SIZES = [(128, 1024, 32), (512, 4096, 64)]
steps_order = ("ours_topk", "sae_lens_topk", "sae_lens_standard", "floor", "floor_torch_topk")
BATCH = 4096


def ours_step(d_in: int, d_sae: int, k: int, x: torch.Tensor):
    cfg = SAEConfig(architecture="topk", d_in=d_in, d_sae=d_sae, k=k, batch_size=BATCH, lr=1e-4)
    sae = build_sae(cfg, seed=0)
    sae.init_biases_from_data(x)
    opt = make_optimizer(list(sae.parameters()), cfg)
    since = torch.zeros(1, d_sae, dtype=torch.long)
    xb = x.unsqueeze(0)
    return lambda: train_step(sae, opt, xb, None, since)


def sae_lens_step(arch: str, d_in: int, d_sae: int, k: int, x: torch.Tensor):
    from sae_lens import (StandardTrainingSAE, StandardTrainingSAEConfig, TopKTrainingSAE,
                          TopKTrainingSAEConfig)
    from sae_lens.config import SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    torch.manual_seed(0)
    if arch == "topk":
        sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=d_in, d_sae=d_sae, k=k))
    else:
        sae = StandardTrainingSAE(StandardTrainingSAEConfig(d_in=d_in, d_sae=d_sae))
    cfg = SAETrainerConfig(total_training_samples=BATCH * 10**6, train_batch_size_samples=BATCH, lr=1e-4,
                           lr_end=1e-4)
    trainer = SAETrainer(cfg=cfg, sae=sae, data_provider=iter(()))
    return lambda: trainer._train_step(sae=trainer.sae, sae_in=x)


def floor_step(d_in: int, d_sae: int, k: int, x: torch.Tensor, select=topk_last):
    g = torch.Generator().manual_seed(0)
    W = torch.randn(d_sae, d_in, generator=g) / d_in**0.5
    b = torch.zeros(d_sae)

    def step():
        with torch.no_grad():
            pre = torch.addmm(b, x, W.t())
            return select(pre, k)

    return step


def torch_topk(pre: torch.Tensor, k: int):
    return pre.topk(k, dim=-1, sorted=False)


def bench_size(d_in: int, d_sae: int, k: int, warmup: int, rounds: int) -> dict:
    x = torch.randn(BATCH, d_in, generator=torch.Generator().manual_seed(1))
    steps = {
        "ours_topk": ours_step(d_in, d_sae, k, x),
        "sae_lens_topk": sae_lens_step("topk", d_in, d_sae, k, x),
        "sae_lens_standard": sae_lens_step("standard", d_in, d_sae, k, x),
        "floor": floor_step(d_in, d_sae, k, x),
        "floor_torch_topk": floor_step(d_in, d_sae, k, x, select=torch_topk),
    }
    for _ in range(warmup):
        for fn in steps.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, fn in steps.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    res: dict = {"d_in": d_in, "d_sae": d_sae, "k": k, "batch": BATCH, "rounds": rounds, "warmup": warmup}
    for name, ts in times.items():
        med = statistics.median(ts)
        res[name] = {"median_s": med, "min_s": min(ts), "samples_per_s": BATCH / med,
                     "samples_per_s_best": BATCH / min(ts)}
    sps = {n: res[n]["samples_per_s"] for n in steps}
    best = {n: res[n]["samples_per_s_best"] for n in steps}
    res["ratios"] = {
        "ours_over_sae_lens_topk": sps["ours_topk"] / sps["sae_lens_topk"],
        "ours_over_sae_lens_standard": sps["ours_topk"] / sps["sae_lens_standard"],
        "floor_over_ours": sps["floor"] / sps["ours_topk"],
    }
    res["ratios_from_best_times"] = {
        "ours_over_sae_lens_topk": best["ours_topk"] / best["sae_lens_topk"],
        "ours_over_sae_lens_standard": best["ours_topk"] / best["sae_lens_standard"],
        "floor_over_ours": best["floor"] / best["ours_topk"],
    }
    return res


# ---------------------------------------------------------------------------- end-to-end fit
FIT_ROWS = 65536
FIT_STEPS = (20, 1000)


def structured_rows(n: int, d_in: int, seed: int = 0) -> torch.Tensor:
    """Random but structured rows: each is a non-negative, heavy-tailed combination of 16 of
    4*d_in random unit atoms, plus a common offset (so b_dec matters) and small noise."""
    g = torch.Generator().manual_seed(seed)
    n_atoms, active = 4 * d_in, 16
    atoms = torch.randn(n_atoms, d_in, generator=g)
    atoms /= atoms.norm(dim=1, keepdim=True)
    offset = 0.5 * torch.randn(d_in, generator=g)
    which = torch.randint(n_atoms, (n, active), generator=g)
    coef = torch.empty(n, active).exponential_(1.0, generator=g)
    x = torch.nn.functional.embedding_bag(which, atoms, per_sample_weights=coef, mode="sum")
    return x + offset + 0.05 * torch.randn(n, d_in, generator=g)


def fit_config(d_in: int, d_sae: int, k: int, steps: int) -> SAEConfig:
    return SAEConfig(architecture="topk", d_in=d_in, d_sae=d_sae, k=k, batch_size=BATCH, steps=steps,
                     lr=3e-4, warmup_steps=min(100, max(1, steps // 10)))


def fit_ours(cfg: SAEConfig, x: torch.Tensor) -> dict:
    t0, c0 = time.perf_counter(), time.process_time()
    res = train_sae(cfg, x, seed=0, device="cpu")
    total, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"total_s": total, "cpu_s": cpu, "loop_s": res.info["train_seconds"], "ev": res.metrics["ev"],
            "l0": res.metrics["l0"], "eval_rows": res.metrics["n_rows"]}


def fit_sae_lens(cfg: SAEConfig, x: torch.Tensor) -> dict:
    from husai_core.sae.saelens_backend import fit_saelens
    from husai_core.sae.trainer import training_scale

    t0, c0 = time.perf_counter(), time.process_time()
    scale = training_scale(cfg, x)  # the input normalisation train_saelens applies before fit_saelens
    run = fit_saelens(cfg, x * scale if scale != 1.0 else x, seed=0, device="cpu")
    total, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"total_s": total, "cpu_s": cpu, "loop_s": run.seconds,
            "ev_last_logged_batch": float(run.history["ev"].iloc[-1])}


def bench_fit(d_in: int, d_sae: int, k: int, steps: int, rounds: int, x: torch.Tensor) -> dict:
    cfg = fit_config(d_in, d_sae, k, steps)
    methods = {"ours": fit_ours, "sae_lens": fit_sae_lens}
    runs: dict[str, list[dict]] = {m: [] for m in methods}
    load_before = _loadavg()
    for _ in range(rounds):
        for name, fn in methods.items():
            runs[name].append(fn(cfg, x))
    res: dict = {"d_in": d_in, "d_sae": d_sae, "k": k, "steps": steps, "batch": BATCH, "rows": x.shape[0],
                 "rounds": rounds, "measured": time.strftime("%Y-%m-%d %H:%M:%S"),
                 "loadavg_before": load_before, "loadavg_after": _loadavg()}
    for name, rs in runs.items():
        tot = [r["total_s"] for r in rs]
        res[name] = {"median_s": statistics.median(tot), "min_s": min(tot), "all_s": tot,
                     "loop_median_s": statistics.median(r["loop_s"] for r in rs),
                     "fixed_median_s": statistics.median(r["total_s"] - r["loop_s"] for r in rs),
                     "cpu_median_s": statistics.median(r["cpu_s"] for r in rs), "cpu_all_s": [r["cpu_s"] for r in rs],
                     **{key: v for key, v in rs[-1].items() if key not in ("total_s", "loop_s", "cpu_s")}}
    res["ratio_sae_lens_over_ours"] = res["sae_lens"]["median_s"] / res["ours"]["median_s"]
    res["ratio_per_round"] = [b["total_s"] / a["total_s"] for a, b in zip(runs["ours"], runs["sae_lens"])]
    res["ratio_median_of_rounds"] = statistics.median(res["ratio_per_round"])
    res["ratio_from_min_times"] = res["sae_lens"]["min_s"] / res["ours"]["min_s"]
    res["ratio_cpu_time"] = res["sae_lens"]["cpu_median_s"] / res["ours"]["cpu_median_s"]
    res["ratio_loop_only"] = res["sae_lens"]["loop_median_s"] / res["ours"]["loop_median_s"]
    return res


def run_fit(sizes: list[tuple[int, int, int]], steps_list: list[int], rounds: dict[int, int],
            on_result: Callable[[dict], None] | None = None) -> dict:
    """The fit benchmark; ``on_result(partial)`` is called after each (size, steps) cell."""
    results: list[dict] = []
    out = _fit_header(results)
    data = {}
    for d_in, d_sae, k in sizes:  # rows and a warm-up call per size, before any timing
        data[d_in] = x = structured_rows(FIT_ROWS, d_in)
        warm = fit_config(d_in, d_sae, k, 2)
        fit_ours(warm, x[: 2 * BATCH])
        fit_sae_lens(warm, x[: 2 * BATCH])
    for steps in steps_list:  # the short cells first
        for d_in, d_sae, k in sizes:
            x = data[d_in]
            r = bench_fit(d_in, d_sae, k, steps, rounds.get(steps, 1), x)
            print(f"fit d_in={d_in} d_sae={d_sae} k={k} steps={steps}: ours {r['ours']['median_s']:.2f}s "
                  f"(loop {r['ours']['loop_median_s']:.2f}s), sae_lens {r['sae_lens']['median_s']:.2f}s "
                  f"(fit loop {r['sae_lens']['loop_median_s']:.2f}s), ratio {r['ratio_sae_lens_over_ours']:.2f} "
                  f"(per round {', '.join(f'{v:.2f}' for v in r['ratio_per_round'])}; from min times "
                  f"{r['ratio_from_min_times']:.2f}; cpu time {r['ratio_cpu_time']:.2f})", flush=True)
            results.append(r)
            if on_result is not None:
                on_result(out)
    return out


def _fit_header(results: list[dict]) -> dict:
    return {
        "description": "end-to-end training call on the same rows, same steps, batch 4096, fp32 CPU; "
                       "ratio = sae_lens seconds / ours seconds (wall clock medians over rounds; also from the "
                       "min wall times and from the process CPU times, which load from other processes "
                       "inflates less)",
        "ours": "train_sae(cfg, x, seed): input checks, input normalisation (scale, scaled copy), "
                "geometric-median b_dec init, all steps with logging every log_every, folding, final "
                "evaluate_sae metrics (on metrics['n_rows'] evenly spaced rows), history table",
        "sae_lens": "training_scale(cfg, x) and x * scale (as train_saelens), then fit_saelens(cfg, x * scale, "
                    "seed): input checks, SAELens config + TopKTrainingSAE + SAETrainer construction, "
                    "SAETrainer.fit (all steps, our log line every log_every), history table; "
                    "SAELens computes no final metrics",
        "data": f"structured_rows({FIT_ROWS}, d_in): 16 of 4*d_in unit atoms per row, exponential coefficients, "
                "offset, noise 0.05",
        "config": "topk, lr 3e-4, warmup min(100, steps//10), log_every 50, other SAEConfig defaults "
                  "(normalize_activations expected_average_only_in); seed 0",
        "warmup": "one 2-step call per method and size before timing",
        "target": "ratio >= 3 at both sizes, 20 and 1000 steps",
        "results": results,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--probe-seeds", type=int, default=4)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: all cores)")
    ap.add_argument("--omp-wait-policy", choices=["passive", "default"], default="passive",
                    help="OpenMP wait policy (read at import; see the top of this file)")
    ap.add_argument("--sizes", default="all", help="'all' or comma-separated indices into SIZES")
    ap.add_argument("--fit", action="store_true", help="also run the end-to-end fit benchmark (key 'fit')")
    ap.add_argument("--skip-step", action="store_true",
                    help="skip the step benchmark and keep the step results already in --out")
    ap.add_argument("--fit-steps", default=",".join(map(str, FIT_STEPS)), help="comma-separated step counts")
    ap.add_argument("--fit-rounds", default="20:3,1000:1",
                    help="rounds per step count, 'steps:rounds,...' (default 1 round)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "sae_step.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    sizes = SIZES if args.sizes == "all" else [SIZES[int(i)] for i in args.sizes.split(",")]
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    results = []
    for d_in, d_sae, k in ([] if args.skip_step else sizes):
        r = bench_size(d_in, d_sae, k, args.warmup, args.rounds)
        print(f"d_in={d_in} d_sae={d_sae} k={k}: " + ", ".join(
            f"{n} {r[n]['samples_per_s']:.0f}/s" for n in steps_order)
            + " | " + ", ".join(f"{n} {v:.2f}" for n, v in r["ratios"].items()), flush=True)
        probe = probe_modes(SAEConfig(architecture="topk", d_in=d_in, d_sae=d_sae, k=k, batch_size=BATCH),
                            args.probe_seeds, "cpu", steps=3)
        r["seed_batching_probe"] = {
            "n_seeds": probe["n_stack"],
            "sequential_s_per_step_per_seed": probe["sequential"],
            "batched_s_per_step_per_seed": probe["batched"],
            "batched_speedup": probe["sequential"] / probe["batched"],
        }
        print(f"  seed batching x{probe['n_stack']}: speedup {r['seed_batching_probe']['batched_speedup']:.2f}", flush=True)
        results.append(r)
    previous = read_json(args.out) if Path(args.out).is_file() else {}
    out = {
        "benchmark": "sae_step",
        "description": "one fp32 training step, batch 4096; samples/s = 4096 / median step time",
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.is_available(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "runtime default"),
            "loadavg_at_start": load,
            "loadavg_at_end": os.getloadavg() if load is not None else None,
        },
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "sae_lens": version("sae-lens"), "husai": version("husai") if _has("husai") else None},
        "targets": {"ours_over_sae_lens_topk": ">= 2.5", "floor_over_ours": "<= 1.5 (ours within 1.5x of floor)"},
        "results": results,
    }
    if args.skip_step:  # keep the step benchmark's earlier results (and their machine record)
        for key in ("machine", "versions", "results"):
            if key in previous:
                out[key] = previous[key]
    if args.fit:
        rounds = dict(tuple(int(v) for v in item.split(":")) for item in args.fit_rounds.split(",") if item)
        fit_machine = {**machine_now(), "loadavg_at_start": os.getloadavg() if load is not None else None}

        kept = [r for r in previous.get("fit", {}).get("results", [])]

        def save(fit: dict) -> None:  # after every cell, so a long run leaves its finished cells
            fit_machine["loadavg_at_end"] = os.getloadavg() if load is not None else None
            new = {_cell(r) for r in fit["results"]}  # cells not run this time keep their earlier results
            merged = [r for r in kept if _cell(r) not in new] + fit["results"]
            merged.sort(key=lambda r: (r["steps"], r["d_in"]))
            out["fit"] = {**fit, "results": merged, "machine": fit_machine}
            write_json(args.out, out)

        save(run_fit(sizes, [int(v) for v in args.fit_steps.split(",")], rounds, on_result=save))
    elif "fit" in previous:
        out["fit"] = previous["fit"]
    write_json(args.out, out)
    print(f"wrote {args.out}")


def _loadavg() -> list[float] | None:
    try:
        return list(os.getloadavg())
    except OSError:
        return None


def _cell(r: dict) -> tuple:
    return (r["d_in"], r["d_sae"], r["k"], r["steps"])


def machine_now() -> dict:
    return {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "runtime default"),
            "torch": torch.__version__, "sae_lens": version("sae-lens")}


def _has(dist: str) -> bool:
    try:
        version(dist)
        return True
    except Exception:
        return False


if __name__ == "__main__":
    main()
