"""Why do our trainer and SAELens's give differently consistent dictionaries? Ablations, one run.

Trains the same SAE config on the same cached rows (the main job's full-profile activations,
training share of the phase-4 split) with our trainer and with SAELens's own trainer, each
under several variants that move one setting at a time towards the other trainer, and
reports for every variant: held-out EV, held-out dead fraction, consistency over all latents,
over alive latents, and at an equal number of live latents (each dictionary's N most
frequently firing held-out latents, N = the smallest live count over all variants).

    .venv/bin/python benchmarks/trainer_agreement.py                # every variant, 3 seeds
    .venv/bin/python benchmarks/trainer_agreement.py --variants husai,sae_lens --seeds 4
    .venv/bin/python benchmarks/trainer_agreement.py --data gaussian_matched   # the same on the null's rows

Writes benchmarks/results/trainer_agreement.json. Needs `make run` (or phases 01-02 full) first.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from husai_core.activations import load_cache  # noqa: E402
from husai_core.comparison import top_firing  # noqa: E402
from husai_core.conditions import condition_data, heldout_split  # noqa: E402
from husai_core.matching import family_matrices, view_of  # noqa: E402
from husai_core.metrics import evaluate_sae  # noqa: E402
from husai_core.runner import runs_dir  # noqa: E402
from husai_core.sae import SAEConfig, train_saes  # noqa: E402
from husai_core.stats import pair_values  # noqa: E402

# name -> (backend, SAEConfig changes | SAELens (sae_overrides, trainer_overrides))
VARIANTS = {
    "husai": ("husai", {}),
    "husai_saelens_like": ("husai", {"decoder_init_norm": 0.1, "decoder_norm": "free", "aux_coeff": 1.0,
                                     "dead_tokens": 1000 * 1024, "warmup_steps": 0, "decay_start_frac": 1.0,
                                     "b_dec_init": "zeros", "grad_clip": 1.0}),
    "husai_free_decoder": ("husai", {"decoder_init_norm": 0.1, "decoder_norm": "free"}),
    "husai_no_schedule": ("husai", {"warmup_steps": 0, "decay_start_frac": 1.0}),
    "husai_dead_window_1000_steps": ("husai", {"dead_tokens": 1000 * 1024}),
    "husai_aux_1": ("husai", {"aux_coeff": 1.0}),
    "husai_normalized": ("husai", {"normalize_activations": "expected_average_only_in"}),
    "husai_grad_clip": ("husai", {"grad_clip": 1.0}),
    "husai_lr_3e-3": ("husai", {"lr": 3e-3}),
    "husai_free_decoder_aux_1": ("husai", {"decoder_init_norm": 0.1, "decoder_norm": "free", "aux_coeff": 1.0}),
    "husai_free_decoder_unit_init": ("husai", {"decoder_norm": "free"}),
    "husai_free_decoder_aux_1_no_schedule": ("husai", {"decoder_init_norm": 0.1, "decoder_norm": "free", "aux_coeff": 1.0,
                                                       "warmup_steps": 0, "decay_start_frac": 1.0}),
    "sae_lens": ("sae_lens", ({}, {})),
    "sae_lens_unit_init": ("sae_lens", ({"decoder_init_norm": 1.0}, {})),
    "sae_lens_no_rescale": ("sae_lens", ({"rescale_acts_by_decoder_norm": False}, {})),
    "sae_lens_dead_window_98": ("sae_lens", ({}, {"dead_feature_window": 98})),
}


def train_variant(name: str, cfg: SAEConfig, x: torch.Tensor, seeds: list[int], cache: Path):
    """The variant's SAEs, trained once and cached (keyed on variant, config, seed and data)."""
    from husai_core.io import config_hash
    from husai_core.sae import load_sae, save_sae
    from husai_core.store import code_version, tensor_fingerprint

    backend, change = VARIANTS[name]
    key = config_hash({"variant": name, "change": change, "cfg": cfg.to_dict(), "data": tensor_fingerprint(x),
                       "code": code_version("sae")})
    out = []
    for s in seeds:
        folder = cache / name / f"{key[:12]}-seed{s}"
        if (folder / "config.json").is_file():
            out.append(load_sae(folder))
            continue
        if backend == "husai":
            sae = train_saes(cfg.replace(**change), x, [s])[0].sae
        else:
            from husai_core.sae.saelens_backend import train_saelens

            sae_over, trainer_over = change
            sae = train_saelens(cfg, x, s, sae_overrides=sae_over, trainer_overrides=trainer_over).sae
        save_sae(sae, folder)
        out.append(sae)
    return out


def mean_pairs(views, keys=("pwmcc/all", "pwmcc/alive", "pw_mcc/all", "pw_mcc/alive")) -> dict[str, float]:
    mats = family_matrices(views)
    return {k: float(pair_values(mats[k]).mean()) for k in keys}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, from: " + ", ".join(VARIANTS))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--d-sae", type=int, default=1024)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--cache", default=str(runs_dir() / "artifacts" / "full" / "activations" / "default"))
    ap.add_argument("--hook", default="blocks.0.hook_resid_post")
    ap.add_argument("--data", default="trained", choices=["trained", "gaussian_matched"],
                    help="train on the activations, or on the gaussian_matched null's rows (same split)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "trainer_agreement.json"))
    ap.add_argument("--cache-dir", default=str(runs_dir() / "bench" / "trainer_agreement"),
                    help="trained SAEs are kept here and reused by later runs")
    args = ap.parse_args()
    torch.set_num_threads(2)
    x = load_cache(args.cache).get(args.hook)
    split = heldout_split(x.shape[0], 0.2, 0)
    data = condition_data(args.data, x, split, data_seed=1)  # the real rows, or a null's rows split the same way
    xt, xh = data.train, data.heldout
    cfg = SAEConfig(d_in=x.shape[1], d_sae=args.d_sae, k=args.k, steps=args.steps, batch_size=1024, lr=args.lr)
    seeds = [42, 123, 456, 789, 1011, 2022][: args.seeds]
    names = [v for v in args.variants.split(",") if v]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        print(f"unknown variant(s): {', '.join(unknown)}", file=sys.stderr)
        return 1
    trained, views, out = {}, {}, {}
    for name in names:
        t0 = time.perf_counter()
        trained[name] = train_variant(name, cfg, xt, seeds, Path(args.cache_dir))
        views[name] = [view_of(s, xh) for s in trained[name]]
        evals = [evaluate_sae(s, xh) for s in trained[name]]
        out[name] = {"seconds": time.perf_counter() - t0, "heldout_ev": float(np.mean([e["ev"] for e in evals])),
                     "heldout_dead": float(np.mean([e["dead_fraction"] for e in evals])),
                     "live": [int(v.alive.sum()) for v in views[name]], **mean_pairs(views[name])}
        print(name, {k: round(v, 4) if isinstance(v, float) else v for k, v in out[name].items()}, flush=True)
    n_live = min(min(o["live"]) for o in out.values())
    for name in names:
        top = mean_pairs([top_firing(v, n_live) for v in views[name]], keys=("pwmcc/all", "pw_mcc/all"))
        out[name].update({f"top{n_live}_{k}": v for k, v in top.items()})
    header = ["variant", "EV(held)", "dead(held)", "PWMCC all", "PWMCC alive", f"PWMCC top{n_live}", "PW-MCC all",
              f"PW-MCC top{n_live}", "s"]
    print("\n" + " | ".join(header))
    for name in names:
        o = out[name]
        print(" | ".join([name, f"{o['heldout_ev']:.4f}", f"{o['heldout_dead']:.3f}", f"{o['pwmcc/all']:.4f}",
                          f"{o['pwmcc/alive']:.4f}", f"{o[f'top{n_live}_pwmcc/all']:.4f}", f"{o['pw_mcc/all']:.4f}",
                          f"{o[f'top{n_live}_pw_mcc/all']:.4f}", f"{o['seconds']:.0f}"]))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"config": cfg.to_dict(), "seeds": seeds, "n_live_compared": n_live,
                                          "data": args.data,
                                          "torch": torch.__version__, "variants": out}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
