"""`husai compare` on sparsify-made vs SAELens-made seeds, trained here on this project's activations.

One command (needs the main job's activation cache, i.e. `make run` or phases 01-02 full):

    nice -n 19 .venv/bin/python benchmarks/compare_libraries.py

It

1. reads the full-profile cache (``runs/artifacts/full/activations/default``), hook
   ``blocks.0.hook_resid_post`` (d_in 128), and splits its rows with
   ``husai_core.conditions.heldout_split(n, 0.2, 0)`` (the split ``husai compare`` uses); both
   libraries train on the training share only;
2. trains 3 seeds (42, 123, 456) with **sparsify's own trainer** (``sparsify.Trainer.fit``,
   eai-sparsify 1.3.3), TopK d_sae 512, k 32, 2000 steps x 1024 rows. Its trainer hooks a live
   model, so it is given a stand-in model (ours, ``CachedRowsModel``): one frozen layer,
   ``layers.0``, whose forward returns the cached training rows whose indices are the "token
   ids" of a batch; sparsify's forward hook on that layer sees exactly those rows. Everything
   else is sparsify's: ``SparseCoder`` init (under its ``torch.manual_seed(seed)``), b_dec set
   to the first batch's mean, decoder rows re-normalised before every forward, the gradient
   component parallel to the decoder rows removed, FVU + auxk_alpha * AuxK loss, its Adam
   path (lr warm-up and linear decay, ``transformers.get_linear_schedule_with_warmup``), its
   dead-latent bookkeeping, and ``save_to_disk`` (the Trainer's final ``save()``). The
   batches are the same row indices, in the same order, as the SAELens seed of the same
   number gets (``saelens_backend.CachedRows``). Settings that are not sparsify's defaults:
   ``optimizer="adam"`` and ``lr=3e-4`` (the SAELens group's optimiser and lr; sparsify's
   default is Signum with lr 5e-3/sqrt(d_sae/2^14)), ``auxk_alpha=1/32`` (sparsify 1.3.3's
   default is 0, i.e. no AuxK) with ``dead_feature_threshold=1_024_000`` tokens (= SAELens's
   1000-step dead window; sparsify's default 10M tokens would never trigger in 2.05M tokens),
   ``log_to_wandb=False``. One thing is added after ``fit``: the Trainer saves right after its
   last Adam step, which is not norm-preserving, so the saved decoder rows can be off unit
   norm (recorded as ``max_abs_norm_minus_1_as_saved``), and a TopK SAE with non-unit rows is
   refused by ``husai_core.sae.readers`` (tolerance 1e-5). The script loads the Trainer's
   checkpoint with ``SparseCoder.load_from_disk``, applies sparsify's own
   ``set_decoder_norm_to_unit_norm()`` (what its trainer does before every forward) and saves
   with ``save_to_disk`` to ``<workdir>/sparsify/seed<N>/layers.0`` (the Trainer's raw output
   stays in ``<workdir>/sparsify_trainer/seed<N>/``). With this schedule the lr has decayed to
   ~0 by the last step, so the drift measured was < 5e-7 and the step changes nothing that
   matters; a run that stops mid-schedule (e.g. 100 steps, lr still warming up) drifts by ~2e-5
   and needs it;
3. trains 3 seeds (42, 123, 456) with **SAELens's own trainer** through
   ``husai_core.sae.saelens_backend.train_saelens`` (``SAETrainer.fit``, sae_lens 6.54.12):
   TopK d_sae 512, k 32, 2000 steps x 1024 rows, lr 3e-4, ``normalize_activations="none"``
   (SAELens's default: raw rows), every other setting SAELens's default; saved by SAELens's
   ``save_inference_model`` to ``<workdir>/saelens/seed<N>``;
4. runs ``husai compare`` through the CLI on the six folders, labelled
   ``sparsify,sparsify,sparsify,saelens,saelens,saelens``, with ``--activations`` the same cache
   and ``--hook blocks.0.hook_resid_post``, ``-p n_resamples=2000``, ``--no-index`` (the report
   index is left alone) and ``HUSAI_RUNS_DIR=<workdir>/husai_runs`` (the run folder and the null
   SAEs it trains stay out of the main job's ``runs/``). The HTML report and results.json are
   copied to ``<workdir>/compare/``;
5. writes ``benchmarks/results/compare_libraries.json``: the compare ``results.json`` under
   ``"compare"`` plus ``"training"`` (versions, settings, wall times, per-seed checks, which
   code trained what) and ``"cross_library"`` (the metric family on held-out rows averaged over
   within-sparsify, within-SAELens and sparsify-vs-SAELens pairs: descriptive, no null).

Options: ``--seeds``, ``--steps``, ``--threads`` (torch threads for training, default 2),
``--n-resamples``, ``--workdir`` (default ``runs/bench/compare_libraries``), ``--activations``,
``--retrain`` (else finished seeds are reused), ``--results`` (output JSON path).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from husai_core.activations import load_cache  # noqa: E402
from husai_core.conditions import heldout_split  # noqa: E402
from husai_core.metrics import evaluate_sae  # noqa: E402
from husai_core.runner import runs_dir  # noqa: E402
from husai_core.store import tensor_fingerprint  # noqa: E402
from husai_core.sae import SAEConfig, read_sae  # noqa: E402
from husai_core.sae.saelens_backend import CachedRows, train_saelens  # noqa: E402

HOOK = "blocks.0.hook_resid_post"
D_SAE, K, BATCH, LR = 512, 32, 1024, 3e-4
AUXK_ALPHA = 1.0 / 32.0
DEAD_TOKENS = 1000 * BATCH  # SAELens's default dead window: 1000 steps
HELDOUT_FRACTION, SPLIT_SEED = 0.2, 0


# ====================================================================== sparsify
class RowTable(nn.Module):
    """The stand-in model's one layer: "token ids" are row indices into the cached rows."""

    def __init__(self, rows: torch.Tensor):
        super().__init__()
        self.rows = nn.Parameter(rows.float().clone(), requires_grad=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.rows[input_ids]  # (batch, seq, d_in)


class CachedRowsModel(nn.Module):
    """What sparsify's Trainer needs of a model, replaying cached rows: ``base_model``,
    ``device``, ``dummy_inputs`` (its width probe), a hookable submodule ``layers.0`` and
    ``model(input_ids)``. Nothing here trains or touches the SAE."""

    def __init__(self, rows: torch.Tensor):
        super().__init__()
        self.layers = nn.ModuleList([RowTable(rows)])

    @property
    def base_model(self) -> "CachedRowsModel":
        return self

    @property
    def device(self) -> torch.device:
        return self.layers[0].rows.device

    @property
    def dummy_inputs(self) -> dict[str, torch.Tensor]:
        return {"input_ids": torch.zeros(1, 4, dtype=torch.long)}

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.layers[0](input_ids)


def batch_indices(n_rows: int, steps: int, seed: int) -> list[torch.Tensor]:
    """The row indices of each of ``steps`` batches, exactly as SAELens's seed ``seed`` draws them
    in ``train_saelens`` (``CachedRows`` over the same rows)."""
    it = CachedRows(torch.arange(n_rows), BATCH, seed)
    return [next(it).clone() for _ in range(steps)]


def train_sparsify(x_train: torch.Tensor, seed: int, steps: int, workdir: Path) -> dict[str, Any]:
    import sparsify
    import sparsify.trainer
    from sparsify import SparseCoder, SparseCoderConfig, TrainConfig, Trainer
    from tqdm.auto import tqdm

    sparsify.trainer.tqdm = lambda *a, **kw: tqdm(*a, **{**kw, "disable": True})  # one bar update per step: off

    raw_dir = workdir / "sparsify_trainer"
    final = workdir / "sparsify" / f"seed{seed}" / "layers.0"
    dataset = [{"input_ids": idx} for idx in batch_indices(x_train.shape[0], steps, seed)]
    cfg = TrainConfig(
        sae=SparseCoderConfig(num_latents=D_SAE, k=K),
        batch_size=1,  # one "sequence" of BATCH rows per step
        optimizer="adam", lr=LR,
        auxk_alpha=AUXK_ALPHA, dead_feature_threshold=DEAD_TOKENS,
        hookpoints=["layers.0"], init_seeds=[seed],
        save_every=10 ** 9, log_to_wandb=False,
        save_dir=str(raw_dir), run_name=f"seed{seed}",
    )
    model = CachedRowsModel(x_train)
    precision = torch.get_float32_matmul_precision()
    t0 = time.perf_counter()
    trainer = Trainer(cfg, dataset, model)
    trainer.fit()
    seconds = time.perf_counter() - t0
    torch.set_float32_matmul_precision(precision)  # fit() sets "high" process-wide
    saved = raw_dir / f"seed{seed}" / "layers.0"
    sae = SparseCoder.load_from_disk(saved)
    norms = sae.W_dec.detach().double().norm(dim=1)
    drift = float((norms - 1).abs().max())
    sae.set_decoder_norm_to_unit_norm()  # sparsify's own helper (its trainer calls it before every forward)
    if final.exists():
        shutil.rmtree(final)
    sae.save_to_disk(final)
    dead = trainer.num_tokens_since_fired["layers.0"] > cfg.dead_feature_threshold
    return {"seed": seed, "path": str(final), "trainer_output": str(saved), "train_seconds": seconds,
            "steps": steps, "sparsify_version": sparsify.__version__,
            "max_abs_norm_minus_1_as_saved": drift,
            "dead_fraction_train_sparsify": float(dead.double().mean()),
            "optimizer": type(trainer.optimizers[0]).__module__ + "." + type(trainer.optimizers[0]).__name__,
            "train_config": cfg.to_dict()}


# ====================================================================== SAELens
def saelens_cfg(steps: int) -> SAEConfig:
    return SAEConfig(architecture="topk", d_in=128, d_sae=D_SAE, k=K, steps=steps, batch_size=BATCH, lr=LR,
                     normalize_activations="none")


def train_saelens_seed(x_train: torch.Tensor, seed: int, steps: int, workdir: Path) -> dict[str, Any]:
    folder = workdir / "saelens" / f"seed{seed}"
    if folder.exists():
        shutil.rmtree(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    res = train_saelens(saelens_cfg(steps), x_train, seed, device="cpu", workdir=folder)
    seconds = time.perf_counter() - t0
    keep = ("backend", "sae_lens_version", "train_seconds", "lr_scheduler", "lr_warm_up_steps", "lr_decay_steps",
            "dead_feature_window_steps", "decoder_init_norm", "rescale_acts_by_decoder_norm",
            "aux_loss_coefficient", "check_loaded_encode", "check_loaded_recon", "check_trained_encode",
            "check_trained_recon")
    return {"seed": seed, "path": str(folder), "wall_seconds": seconds, "steps": steps,
            **{k: res.info[k] for k in keep if k in res.info},
            "dead_fraction_train_sae_lens": res.metrics.get("dead_fraction_train_sae_lens")}


# ====================================================================== cross-library agreement
def cross_library(paths_a: list[str], paths_b: list[str], x_held: torch.Tensor) -> dict[str, Any]:
    """Do the two libraries' seeds agree with each other as much as with themselves? The metric
    family (``husai_core.matching.family_matrices``, held-out rows) over all 2n SAEs: mean of the
    within-a, within-b and a-vs-b pairs. Descriptive (no null, no CI); ``husai compare`` has those
    per group."""
    import numpy as np

    from husai_core.matching import family_matrices, view_of

    views = [view_of(read_sae(p), x_held) for p in paths_a + paths_b]
    mats = family_matrices(views)
    n = len(paths_a)
    iu = np.triu_indices(n, 1)
    out = {}
    for key, m in sorted(mats.items()):
        out[key] = {"within_sparsify": float(np.mean(m[:n, :n][iu])), "within_saelens": float(np.mean(m[n:, n:][iu])),
                    "sparsify_vs_saelens": float(np.mean(m[:n, n:])),
                    "sparsify_vs_saelens_pairs": m[:n, n:].round(4).tolist()}
    return out


# ====================================================================== main
def _held_metrics(path: str, x_held: torch.Tensor) -> dict[str, float]:
    m = evaluate_sae(read_sae(path), x_held)
    return {k: float(m[k]) for k in ("ev", "l0", "dead_fraction")}


def _versions() -> dict[str, str]:
    import sae_lens
    import sparsify
    import transformers

    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True,
                                text=True).stdout.strip())
    return {"python": platform.python_version(), "torch": torch.__version__, "sparsify (eai-sparsify)": sparsify.__version__,
            "sae_lens": str(sae_lens.__version__), "transformers": transformers.__version__,
            "git_commit": commit + (" (dirty)" if dirty else "")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--activations", default=str(runs_dir() / "artifacts" / "full" / "activations" / "default"))
    ap.add_argument("--hook", default=HOOK)
    ap.add_argument("--seeds", default="42,123,456")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-resamples", type=int, default=2000)
    ap.add_argument("--workdir", default=str(runs_dir() / "bench" / "compare_libraries"))
    ap.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "compare_libraries.json"))
    ap.add_argument("--retrain", action="store_true", help="retrain seeds whose folders already exist")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("SPARSIFY_DISABLE_TRITON", "1")
    seeds = [int(s) for s in args.seeds.split(",")]
    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    x = load_cache(args.activations).get(args.hook).reshape(-1, 128).float()
    train_idx, held_idx = heldout_split(x.shape[0], HELDOUT_FRACTION, SPLIT_SEED)
    x_train, x_held = x[train_idx].contiguous(), x[held_idx].contiguous()
    print(f"{x.shape[0]} rows: {len(train_idx)} training, {len(held_idx)} held out", flush=True)

    log_path = workdir / "training.json"
    previous = json.loads(log_path.read_text()) if log_path.is_file() else {}
    training: dict[str, Any] = {"sparsify": {}, "saelens": {}}
    for lib, fn, folder in (("sparsify", train_sparsify, lambda s: workdir / "sparsify" / f"seed{s}" / "layers.0"),
                            ("saelens", train_saelens_seed, lambda s: workdir / "saelens" / f"seed{s}")):
        for s in seeds:
            old = previous.get(lib, {}).get(str(s))
            if not args.retrain and old and old.get("steps") == args.steps and folder(s).is_dir():
                training[lib][str(s)] = old
                print(f"{lib} seed {s}: reused {folder(s)}", flush=True)
                continue
            print(f"{lib} seed {s}: training {args.steps} steps", flush=True)
            rec = fn(x_train, s, args.steps, workdir)
            rec["heldout_check"] = _held_metrics(rec["path"], x_held)
            training[lib][str(s)] = rec
            print(f"{lib} seed {s}: {json.dumps({k: v for k, v in rec.items() if k != 'train_config'})}", flush=True)
            log_path.write_text(json.dumps({**previous, **training}, indent=1))

    paths = [training["sparsify"][str(s)]["path"] for s in seeds] + [training["saelens"][str(s)]["path"] for s in seeds]
    print("cross-library agreement on held-out rows", flush=True)
    cross = cross_library(paths[:len(seeds)], paths[len(seeds):], x_held)
    print(json.dumps({k: {kk: round(vv, 4) for kk, vv in v.items() if kk != "sparsify_vs_saelens_pairs"}
                      for k, v in cross.items()}), flush=True)
    labels = ",".join(["sparsify"] * len(seeds) + ["saelens"] * len(seeds))
    out = workdir / "compare"
    env = {**os.environ, "HUSAI_RUNS_DIR": str(workdir / "husai_runs")}
    cmd = ["nice", "-n", "19", str(ROOT / ".venv" / "bin" / "husai"), "compare", *paths, "--labels", labels,
           "--activations", str(Path(args.activations).resolve()), "--hook", args.hook, "--out", str(out),
           "-p", f"n_resamples={args.n_resamples}", "--no-index", "--run-id", f"compare_libraries_{time.strftime('%Y%m%d-%H%M%S')}"]
    print(" ".join(cmd), flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    compare_seconds = time.perf_counter() - t0
    print(proc.stdout[-4000:], proc.stderr[-4000:], sep="\n", flush=True)
    if proc.returncode != 0:
        print(f"husai compare failed (exit {proc.returncode})", file=sys.stderr)
        return proc.returncode
    result = json.loads((out / "results.json").read_text())
    run_dir = proc.stdout.strip().splitlines()[0].split()[0] if proc.stdout.strip() else None
    summary = {
        "what": "husai compare of sparsify-made vs SAELens-made TopK seeds trained here on the full-profile "
                f"activations ({args.hook}), training share of heldout_split(n, {HELDOUT_FRACTION}, {SPLIT_SEED})",
        "command": "nice -n 19 .venv/bin/python benchmarks/compare_libraries.py",
        "compare_command": " ".join(cmd),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores (shared with other jobs), torch threads "
                   f"{args.threads} for training",
        "versions": _versions(),
        "data": {"activations": str(Path(args.activations).resolve()), "hook": args.hook,
                 "rows_fingerprint": tensor_fingerprint(x)[:16],
                 "transformer_sha256": json.loads((Path(args.activations) / "metadata.json").read_text()).get(
                     "source_sha256"),
                 "n_rows": int(x.shape[0]),
                 "n_train": int(len(train_idx)), "n_heldout": int(len(held_idx))},
        "training": {
            "seeds": seeds, "steps": args.steps, "batch_rows": BATCH, "d_sae": D_SAE, "k": K, "lr": LR,
            "sparsify": {
                "who_trained": "sparsify.Trainer.fit (eai-sparsify): SparseCoder init, b_dec = first batch mean, "
                               "decoder unit-norm before each forward, parallel-gradient removal, loss fvu + "
                               "auxk_alpha*auxk, Adam with linear warm-up (1000 steps) + linear decay to 0, dead "
                               "bookkeeping, save_to_disk. Ours: the stand-in model replaying cached rows (a frozen "
                               "row-lookup layer 'layers.0' that sparsify hooks), the batch order (same as SAELens's "
                               "seed), and one post-fit call of sparsify's set_decoder_norm_to_unit_norm() + "
                               "save_to_disk (the trainer saves after its last Adam step, off unit norm).",
                "non_default_settings": {"optimizer": "adam (default signum)", "lr": "3e-4 (default: automatic)",
                                         "auxk_alpha": "1/32 (default 0: no AuxK)",
                                         "dead_feature_threshold": f"{DEAD_TOKENS} tokens (default 10,000,000)",
                                         "log_to_wandb": False},
                "seeds": training["sparsify"],
            },
            "saelens": {
                "who_trained": "SAELens SAETrainer.fit on TopKTrainingSAE via husai_core.sae.saelens_backend."
                               "train_saelens (its optimiser, constant lr, grad clip 1, decoder init norm 0.1 with "
                               "free norms, rescale_acts_by_decoder_norm, AuxK coefficient 1 with a 1000-step dead "
                               "window, b_dec 0), saved with save_inference_model. Ours: the cached-row data provider "
                               "and the saving/import checks.",
                "husai_config": saelens_cfg(args.steps).to_dict(),
                "seeds": training["saelens"],
            },
        },
        "cross_library": cross,
        "compare_seconds": compare_seconds,
        "compare_run_dir": run_dir,
        "compare_report_html": str(out / "report.html"),
        "compare": result,
    }
    dest = Path(args.results)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(summary, indent=1, default=str))
    print(f"wrote {dest}; report {out / 'report.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
