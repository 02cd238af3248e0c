"""Phase 1: the modular-addition transformer(s), their held-out accuracy and Fourier structure.

``checkpoints`` trains or loads one transformer per layout (the default ``[a, b, =]`` and, with
``compare_legacy``, the answer-leaking legacy layout); ``summarise`` computes the phase's
numbers from the weights: accuracies by evaluating the model on the task's pairs, the Fourier
concentration of its number embedding against an untrained control, the weights' sha256. The
grokking step comes from the training history stored with the checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import HusaiError
from ..fourier import fourier_summary
from ..io import file_sha256, to_jsonable
from ..model import (Checkpoint, ModelConfig, TrainConfig, build_model, evaluate, grokking_step, load_checkpoint,
                     number_embedding, train_or_load)
from ..task import TaskConfig, answer_leak_positions, make_task

NOTEBOOK = "01_transformer"
PARAMS = ("p", "train_frac", "split_seed", "seed", "n_layers", "d_model", "n_heads", "d_mlp", "steps", "lr",
          "weight_decay", "eval_every", "fourier_top", "compare_legacy", "legacy_steps", "reuse_checkpoint")
# results.json entries ``husai verify`` compares besides the headline.
VERIFIED = ("weights_sha256", "legacy")
CONTROL_SEED_OFFSET = 10_000  # the untrained control's init seed is seed + this


def configs(params: dict[str, Any]) -> dict[str, tuple[TaskConfig, ModelConfig, TrainConfig]]:
    """Task, model and training settings per layout."""
    model_cfg = ModelConfig(n_layers=params["n_layers"], d_model=params["d_model"], n_heads=params["n_heads"],
                            d_mlp=params["d_mlp"])
    layouts = {"default": params["steps"]} | ({"legacy": params["legacy_steps"]} if params["compare_legacy"] else {})
    return {layout: (TaskConfig(p=params["p"], train_frac=params["train_frac"], split_seed=params["split_seed"],
                                layout=layout),
                     model_cfg,
                     TrainConfig(steps=n_steps, lr=params["lr"], weight_decay=params["weight_decay"],
                                 eval_every=params["eval_every"], seed=params["seed"]))
            for layout, n_steps in layouts.items()}


def checkpoints(params: dict[str, Any], art: Path, *, progress: bool = False,
                load_only: bool = False) -> dict[str, Checkpoint]:
    """One checkpoint per layout, trained or loaded (``load_only``: loaded, or a HusaiError)."""
    out = {}
    for layout, (task, model_cfg, train) in configs(params).items():
        folder = Path(art) / "transformer" / layout
        if load_only:
            ckpt = load_checkpoint(folder)
            if (ckpt.task, ckpt.model_cfg, ckpt.train_cfg) != (task, model_cfg, train):
                raise HusaiError(f"stale transformer checkpoint {folder}: trained with other settings than the run's")
        else:
            ckpt = train_or_load(folder, task, model_cfg, train, reuse=params["reuse_checkpoint"], progress=progress)
        out[layout] = ckpt
    return out


def layout_summary(ckpt: Checkpoint, top: int) -> dict[str, Any]:
    """Accuracies evaluated from the weights, Fourier summary, grokking step (from the history)."""
    data = make_task(ckpt.task)
    _, train_acc = evaluate(ckpt.model, data, data.train_idx)
    _, test_acc = evaluate(ckpt.model, data, data.test_idx)
    return {"train_acc": train_acc, "test_acc": test_acc, "leaks": answer_leak_positions(data),
            "fourier": fourier_summary(number_embedding(ckpt.model, ckpt.task.p), top=top),
            "grokking_step": grokking_step(ckpt.history) if len(ckpt.history) else None}


def summarise(params: dict[str, Any], runs: dict[str, Checkpoint]) -> dict[str, Any]:
    """The results dict of the phase (what the notebook records)."""
    top, ckpt = params["fourier_top"], runs["default"]
    main = layout_summary(ckpt, top)
    control = fourier_summary(number_embedding(build_model(ckpt.task, ckpt.model_cfg,
                                                           seed=params["seed"] + CONTROL_SEED_OFFSET), ckpt.task.p),
                              top=top)
    trained = main["fourier"]
    headline = {
        "held-out accuracy": main["test_acc"], "train accuracy": main["train_acc"],
        f"Fourier top-{top} concentration": trained.concentration,
        "random-control concentration": control.concentration,
        "key frequencies": trained.key_frequencies, "steps": ckpt.train_cfg.steps,
    }
    legacy = None
    if "legacy" in runs:
        leg = layout_summary(runs["legacy"], top)
        legacy = {"held-out accuracy": leg["test_acc"], "fourier_concentration": leg["fourier"].concentration,
                  "answer_in_input_at": leg["leaks"], "steps_to_99pct": leg["grokking_step"],
                  "train accuracy": leg["train_acc"], "key_frequencies": leg["fourier"].key_frequencies}
        headline["legacy held-out accuracy"] = leg["test_acc"]
        headline[f"legacy Fourier top-{top} concentration"] = leg["fourier"].concentration
    return {
        "headline": headline,
        "task": ckpt.task.to_dict(),
        "checkpoint": str(ckpt.path), "weights_sha256": file_sha256(Path(ckpt.path) / "model.safetensors"),
        "fourier": {"trained_energy": trained.energy.tolist(), "control_energy": control.energy.tolist(),
                    "key_frequencies": trained.key_frequencies, "concentration": trained.concentration,
                    "control_concentration": control.concentration, "top": top},
        "grokking_step": main["grokking_step"],
        "legacy": legacy,
    }


def run(params: dict[str, Any], art: Path, *, progress: bool = False, load_only: bool = False) -> dict[str, Any]:
    """The phase's results dict; ``load_only`` trains nothing."""
    return to_jsonable(summarise(params, checkpoints(params, art, progress=progress, load_only=load_only)))


__all__ = ["configs", "checkpoints", "layout_summary", "summarise", "run"]
