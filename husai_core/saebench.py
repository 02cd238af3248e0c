"""The external harness: PyPI ``sae-bench`` (SAEBench) evaluations of real-language-model SAEs.

SAEBench's ``core`` (L0, loss recovered, KL) and ``sparse_probing`` evaluations load the language
model (TransformerLens ``from_pretrained``) and text datasets from the Hugging Face hub. Nothing
is downloaded here: runs are offline (``HF_HUB_OFFLINE=1``, ``HF_DATASETS_OFFLINE=1``) and a
preflight names, in one line, everything missing locally (the package, the model, a dataset, an
SAE folder); when anything is missing nothing runs. Each SAE and evaluation runs in its own
subprocess, given as an argument list (never through a shell):
``python -m husai_core.saebench <eval> <SAELens folder> <output folder> --model M``, which loads
the folder with SAELens and calls SAEBench's Python entry points (its command line only takes
SAELens registry releases, not folders).

sae-bench 0.6.0 declares numpy<2, datasets<4 and torchvision (which would replace the CPU torch),
so it is installed with ``--no-deps`` (requirements-nodeps.txt); of its dependencies, the two
evaluations used here import scikit-learn and tabulate beyond this project's requirements.
The modular-addition transformer is not a hub model: this harness is for SAEs of real LMs
(``husai compare`` inputs, exported SAELens folders), not for this task's SAEs.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import HusaiError
from .io import read_json

EVALS: dict[str, tuple[str, ...]] = {
    "core": ("Skylion007/openwebtext",),
    "sparse_probing": ("LabHC/bias_in_bios_class_set1", "LabHC/bias_in_bios_class_set2",
                       "LabHC/bias_in_bios_class_set3", "canrager/amazon_reviews_mcauley_1and5",
                       "canrager/amazon_reviews_mcauley_1and5_sentiment", "codeparrot/github-code",
                       "fancyzhx/ag_news", "Helsinki-NLP/europarl"),
}
PACKAGES = {"sae_bench": "sae-bench (pip install --no-deps sae-bench==0.6.0)", "sae_lens": "sae-lens",
            "sklearn": "scikit-learn", "tabulate": "tabulate"}
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def hub_cache() -> Path:
    """The Hugging Face hub cache, where models and datasets land (its environment variables first)."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var])
    return Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface") / "hub"


def datasets_cache() -> Path:
    if os.environ.get("HF_DATASETS_CACHE"):
        return Path(os.environ["HF_DATASETS_CACHE"])
    return Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface") / "datasets"


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _snapshot(kind: str, repo: str) -> bool:
    """A hub-cache folder ``<kind>s--org--name`` with at least one downloaded snapshot."""
    snaps = hub_cache() / f"{kind}s--{repo.replace('/', '--')}" / "snapshots"
    return snaps.is_dir() and any(snaps.iterdir())


def hub_model_id(model_name: str) -> str:
    """TransformerLens's hub id for a model name or alias (``pythia-70m-deduped`` ->
    ``EleutherAI/pythia-70m-deduped``); the name itself when TransformerLens does not know it."""
    try:
        from transformer_lens.loading_from_pretrained import get_official_model_name

        return get_official_model_name(model_name)
    except Exception:  # an unknown name: look for it as given
        return model_name


def model_available(model_name: str) -> bool:
    return Path(model_name, "config.json").is_file() or _snapshot("model", hub_model_id(model_name))


def dataset_available(name: str) -> bool:
    prepared = datasets_cache() / name.replace("/", "___")
    return _snapshot("dataset", name) or prepared.is_dir()


def sae_folder_info(folder: str | os.PathLike) -> dict[str, Any]:
    """Model and hook an SAELens folder was trained on (``cfg.json``, its ``metadata`` in SAELens 6)."""
    folder = Path(folder)
    if not (folder / "cfg.json").is_file() or not (folder / "sae_weights.safetensors").is_file():
        raise HusaiError(f"{folder} is not an SAELens folder (cfg.json + sae_weights.safetensors)")
    cfg = read_json(folder / "cfg.json", "SAELens config")
    meta = cfg.get("metadata") or {}
    return {"model_name": meta.get("model_name") or cfg.get("model_name"),
            "hook_name": meta.get("hook_name") or cfg.get("hook_name")}


def preflight(sae_folders: Sequence[str | os.PathLike], evals: Sequence[str] = ("core", "sparse_probing"),
              model_name: str | None = None) -> list[str]:
    """Everything the harness would need and cannot find locally (empty: ready to run)."""
    unknown = [e for e in evals if e not in EVALS]
    if unknown:
        raise HusaiError(f"unknown sae-bench evaluation(s) {', '.join(unknown)}; choose from {', '.join(EVALS)}")
    missing = [why for module, why in PACKAGES.items() if not _installed(module)]
    if not sae_folders:
        missing.append("SAELens folders of a real-LM SAE (none given)")
    models = {model_name} if model_name else set()
    for folder in sae_folders:
        try:
            info = sae_folder_info(folder)
        except HusaiError as exc:
            missing.append(str(exc))
            continue
        if not model_name:
            if info["model_name"]:
                models.add(info["model_name"])
            else:
                missing.append(f"the model name of {folder} (no model_name in its cfg.json; pass one)")
    missing += [f"model {m!r} in the local Hugging Face cache {hub_cache()}" for m in sorted(models)
                if not model_available(m)]
    datasets = [d for d in dict.fromkeys(d for e in evals for d in EVALS[e]) if not dataset_available(d)]
    if datasets:
        missing.append(f"dataset{'s' if len(datasets) > 1 else ''} {', '.join(datasets)} in the local Hugging Face caches")
    return missing


def missing_line(missing: Sequence[str]) -> str:
    return "sae-bench harness not run; missing: " + "; ".join(missing)


def commands(sae_folders: Sequence[str | os.PathLike], out_dir: str | os.PathLike,
             evals: Sequence[str] = ("core", "sparse_probing"), model_name: str | None = None,
             device: str = "cpu") -> list[list[str]]:
    """The subprocess argument lists, one per SAE folder and evaluation."""
    cmds = []
    for folder in sae_folders:
        model = model_name or sae_folder_info(folder)["model_name"]
        for ev in evals:
            out = Path(out_dir) / ev / Path(folder).name
            cmds.append([sys.executable, "-m", "husai_core.saebench", ev, str(folder), str(out),
                         "--model", str(model), "--device", device])
    return cmds


def run_saebench(sae_folders: Sequence[str | os.PathLike], out_dir: str | os.PathLike,
                 evals: Sequence[str] = ("core", "sparse_probing"), model_name: str | None = None,
                 device: str = "cpu", timeout: float | None = None) -> dict[str, Any]:
    """Preflight, then each evaluation in its own offline subprocess. Returns ``{"ran": False,
    "missing": line}`` when anything is missing (nothing runs), else one record per command with
    its exit code, the result files it wrote and the last line of its error output."""
    missing = preflight(sae_folders, evals, model_name)
    if missing:
        return {"ran": False, "missing": missing_line(missing)}
    env = {**os.environ, **OFFLINE}
    runs = []
    for cmd in commands(sae_folders, out_dir, evals, model_name, device):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
        err = [line for line in proc.stderr.splitlines() if line.strip()]
        ev, sae, out = cmd[3], cmd[4], Path(cmd[5])
        runs.append({"eval": ev, "sae": sae, "returncode": proc.returncode,
                     "results": sorted(str(p) for p in out.glob("**/*.json")) if out.is_dir() else [],
                     "error": err[-1] if proc.returncode and err else None})
    return {"ran": True, "runs": runs}


def _worker(argv: Sequence[str] | None = None) -> None:
    """Inside the subprocess: load the SAELens folder and call SAEBench's Python entry points."""
    ap = argparse.ArgumentParser(prog="python -m husai_core.saebench")
    ap.add_argument("eval", choices=sorted(EVALS))
    ap.add_argument("sae")
    ap.add_argument("out")
    ap.add_argument("--model", required=True)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batches", type=int, default=20)
    args = ap.parse_args(argv)
    from sae_lens import SAE

    sae = SAE.load_from_disk(args.sae, device=args.device)
    name = Path(args.sae).name
    if args.eval == "core":
        from sae_bench.evals.core.main import multiple_evals

        multiple_evals([(name, sae)], n_eval_reconstruction_batches=args.batches,
                       n_eval_sparsity_variance_batches=args.batches, dataset=EVALS["core"][0],
                       output_folder=args.out, device=args.device)
    else:
        from sae_bench.evals.sparse_probing.eval_config import SparseProbingEvalConfig
        from sae_bench.evals.sparse_probing.main import run_eval

        config = SparseProbingEvalConfig(model_name=args.model, llm_batch_size=32, llm_dtype="float32")
        run_eval(config, [(name, sae)], args.device, args.out, artifacts_path=str(Path(args.out) / "artifacts"))


if __name__ == "__main__":
    _worker()


__all__ = ["EVALS", "commands", "dataset_available", "hub_cache", "missing_line", "model_available", "preflight",
           "run_saebench", "sae_folder_info"]
