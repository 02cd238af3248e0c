"""Transcoders against SAEs: the MLP's input mapped to its output, trained like any SAE.

A transcoder encodes the MLP's input (``blocks.L.ln2.hook_normalized``, or
``blocks.L.hook_resid_mid`` in a model without LayerNorm, where the MLP reads the residual
stream itself) and decodes ``blocks.L.hook_mlp_out``. The trainer is our SAE trainer with a
target (``SAEConfig(transcoder=True, d_out=...)``, ``x_target``); EV is on the target.

Conditions (rows the transcoders of one config train on, split like the SAEs' rows):

    trained             the transformer's (input, target) rows
    gaussian_matched    Gaussian rows with the joint mean and covariance of [input, target]:
                        each side has its geometry and the target keeps its *best linear*
                        prediction from the input, but the MLP's nonlinear, sparse computation
                        (ReLU neurons firing on some inputs) is absent
    random_transformer  an untrained transformer's (input, target) rows: a random MLP's map
    isotropic           untrained transformers (the weakest null)

Transcoders live in ``<artifacts>/stress/transcoders/<condition>/<layout>/<input>__<target>/
<config_id>/seed<N>/`` (keyed like every SAE: config, seed, fingerprint of both row sets, code).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import torch

from .errors import HusaiError
from .experiments import SeedSAE, config_id, train_or_load_saes
from .metrics import evaluate_sae
from .nulls import check_null, gaussian_matched_rows, random_transformer_activations
from .sae import SAEConfig, build_sae


def mlp_hooks(model_cfg: Any, layer: int, input_hook: str | None = None,
              target_hook: str | None = None) -> tuple[str, str, str]:
    """(input hook, target hook, why) of layer ``layer``'s MLP for a transformer config
    (``model.ModelConfig``); explicit hooks win. Unknown hooks fail later, when rows are read."""
    n_layers = int(getattr(model_cfg, "n_layers", 1))
    if not 0 <= int(layer) < n_layers:
        raise HusaiError(f"layer {layer} does not exist in a {n_layers}-layer model")
    has_ln = getattr(model_cfg, "normalization_type", None) is not None
    default_in = f"blocks.{layer}.ln2.hook_normalized" if has_ln else f"blocks.{layer}.hook_resid_mid"
    why = ("the model has LayerNorm: the MLP reads ln2's output" if has_ln else
           "the model has no LayerNorm: the MLP reads the residual stream after attention (hook_resid_mid)")
    if input_hook:
        why = f"input hook given explicitly ({input_hook})"
    return input_hook or default_in, target_hook or f"blocks.{layer}.hook_mlp_out", why


def hook_rows(cache: Any, checkpoint: Any, hooks: list[str]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Rows of each hook: from the activation cache when it holds the hook, else extracted from
    the transformer checkpoint at the cache's position (same row order: every example of the
    task). An unknown hook raises one line naming it. Returns (rows, where each came from)."""
    from .activations import extract_activations
    from .task import make_task

    rows, where, missing = {}, {}, []
    for h in hooks:
        if h in cache.acts:
            rows[h], where[h] = cache.acts[h], "activation cache"
        else:
            missing.append(h)
    if missing:
        if checkpoint is None:
            raise HusaiError(f"hook(s) {missing} are not in the cache and there is no transformer to extract them from")
        data = make_task(checkpoint.task)
        got = extract_activations(checkpoint.model, data.tokens, missing, position=cache.meta.get("position", "answer"),
                                  answer_pos=data.answer_pos)
        n = next(iter(cache.acts.values())).shape[0] if cache.acts else None
        for h in missing:
            if n is not None and got[h].shape[0] != n:
                raise HusaiError(f"extracted {h} has {got[h].shape[0]} rows, the cache at {cache.path} has {n}")
            rows[h], where[h] = got[h], "extracted from the transformer checkpoint (not cached)"
    return rows, where


class TranscoderData(NamedTuple):
    name: str
    train: torch.Tensor
    train_target: torch.Tensor
    heldout: torch.Tensor
    heldout_target: torch.Tensor
    description: str


def transcoder_data(name: str, x: torch.Tensor, t: torch.Tensor, split: tuple[torch.Tensor, torch.Tensor], *,
                    data_seed: int = 1, checkpoint: Any = None, hooks: tuple[str, str] | None = None,
                    position: str | int = "answer") -> TranscoderData:
    """(input, target) rows of condition ``name`` (module docstring), split like the real rows."""
    if x.shape[0] != t.shape[0]:
        raise HusaiError(f"input rows ({x.shape[0]}) and target rows ({t.shape[0]}) differ in number")
    tr, he = split
    if name in ("trained", "isotropic"):
        xs, ts = x, t
        why = ("the transformer's (input, target) rows" if name == "trained" else
               "no training: untrained transcoders (i.i.d. isotropic decoder rows)")
    elif check_null(name) == "gaussian_matched":
        joint = gaussian_matched_rows(torch.cat([x[tr], t[tr]], dim=1), seed=data_seed, n_rows=x.shape[0])
        xs, ts = joint[:, : x.shape[1]], joint[:, x.shape[1]:]
        why = (f"Gaussian rows with the joint mean and covariance of [input, target] (data seed {data_seed}): "
               "linear relation kept, nonlinear MLP computation absent")
    else:
        if checkpoint is None or hooks is None:
            raise HusaiError("the random_transformer null needs the trained transformer checkpoint and both hooks")
        acts = random_transformer_activations(checkpoint, list(hooks), init_seed=data_seed, position=position)
        xs, ts = acts[hooks[0]], acts[hooks[1]]
        if xs.shape != x.shape or ts.shape != t.shape:
            raise HusaiError(f"random_transformer rows have shapes {tuple(xs.shape)}, {tuple(ts.shape)}; "
                             f"expected {tuple(x.shape)}, {tuple(t.shape)}")
        why = f"an untrained transformer's (input, target) rows (init seed {data_seed})"
    return TranscoderData(name, xs[tr], ts[tr], xs[he], ts[he], why)


def transcoder_dir(artifacts: str | Path, layout: str, hooks: tuple[str, str], cfg: SAEConfig,
                   condition: str = "trained") -> Path:
    if not cfg.transcoder:
        raise HusaiError(f"{config_id(cfg)} is not a transcoder config (transcoder=True)")
    return Path(artifacts) / "stress" / "transcoders" / condition / layout / f"{hooks[0]}__{hooks[1]}" / config_id(cfg)


def train_or_load_transcoders(artifacts: str | Path, layout: str, hooks: tuple[str, str], cfg: SAEConfig,
                              data: TranscoderData, seeds: list[int], *, progress: bool = False,
                              load_only: bool = False, device: str = "auto") -> list[SeedSAE]:
    """The transcoders of one condition for ``seeds``: loaded by key, else trained and stored
    (``load_only``: a missing or stale one raises, naming it); isotropic ones are built."""
    if data.name == "isotropic":
        out = []
        for s in seeds:
            sae = build_sae(cfg, s)
            sae.init_biases_from_data(data.train, data.train_target)
            sae.eval()
            metrics = {"heldout": evaluate_sae(sae, data.heldout, data.heldout_target), "seed": s}
            out.append(SeedSAE(s, sae, None, metrics, None))
        return out
    folder = transcoder_dir(artifacts, layout, hooks, cfg, data.name)
    return train_or_load_saes(folder, cfg, data.train, seeds, x_target=data.train_target, progress=progress,
                              device=device, heldout=data.heldout, heldout_target=data.heldout_target,
                              load_only=load_only)


def planted_map(n_rows: int, d_in: int, d_out: int, n_atoms: int, active: int, seed: int = 0,
                noise: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A planted transcoder: a sparse code c (``active`` of ``n_atoms`` non-zero per row,
    coefficients in [1, 2)) read through unit input atoms A and written through unit target
    atoms B, ``x = c A (+ noise)``, ``target = c B``: the map x -> target goes through the
    sparse code, as an MLP's does through its neurons. Returns (x, target, A, B)."""
    if not (0 < active <= n_atoms) or min(n_rows, d_in, d_out) <= 0:
        raise HusaiError(f"planted_map: need 0 < active <= n_atoms and positive sizes, got n_rows={n_rows}, "
                         f"d_in={d_in}, d_out={d_out}, n_atoms={n_atoms}, active={active}")
    g = torch.Generator().manual_seed(int(seed))
    a, b = torch.randn(n_atoms, d_in, generator=g), torch.randn(n_atoms, d_out, generator=g)
    a, b = a / a.norm(dim=1, keepdim=True), b / b.norm(dim=1, keepdim=True)
    which = torch.rand(n_rows, n_atoms, generator=g).argsort(dim=1)[:, :active]
    code = torch.zeros(n_rows, n_atoms).scatter(1, which, 1.0 + torch.rand(n_rows, active, generator=g))
    x = code @ a
    if noise > 0:
        x = x + noise * torch.randn(x.shape, generator=g)
    return x, code @ b, a, b


__all__ = ["mlp_hooks", "hook_rows", "TranscoderData", "transcoder_data", "transcoder_dir",
           "train_or_load_transcoders", "planted_map"]
