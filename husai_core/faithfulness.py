"""Faithfulness: splice an SAE's reconstruction into the transformer and measure the loss recovered.

The published definition (SAEBench's core evaluation, SAELens ``evals`` ``ce_loss_score``):

    loss recovered = (CE_ablated - CE_spliced) / (CE_ablated - CE_clean)

``CE_clean`` is the transformer as trained; ``CE_spliced`` has the activation at the SAE's hook
replaced (TransformerLens ``run_with_hooks``) by the SAE's reconstruction decode(encode(x));
``CE_ablated`` has it replaced by zeros (zero ablation, SAELens's and SAEBench's form) or by the
mean activation over the SAE's training rows (mean ablation). 1 = the reconstruction serves the
model as well as the activation itself, 0 = no better than ablating the hook, < 0 = worse.

On the modular-addition task CE is the model's training loss: the cross-entropy of the answer c
at the answer position ("="), and only that position is patched (the SAEs were trained on it).
SAELens's own ``evals.get_recons_loss`` does not run on this model: it scores next-token
prediction at every position, and the task model's output vocabulary (the numbers 0..p-1) has no
"=" token to predict, so its loss gathers an out-of-range index. The splice here follows the
definition above; on a language model, where SAELens's code does run, ``patched_logits`` with
``position=slice(None)`` gives SAELens's clean, spliced and zero-ablated losses (a test checks it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .activations import check_hooks
from .errors import HusaiError

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

ABLATIONS = ("zero", "mean")
Patch = Callable[[Tensor], Tensor]  # (rows, d) activations -> (rows, d) replacement


def sae_patch(sae: Any) -> Patch:
    """Replace activations by the SAE's reconstruction (inference semantics)."""
    if getattr(sae, "n_stack", 1) != 1:
        raise HusaiError("splice one SAE at a time; call .unstack() on a stacked SAE")
    return lambda x: sae.decode(sae.encode(x.to(sae.device, sae.dtype))).to(x.device, x.dtype)


def ablation_patch(kind: str, mean: Tensor | None = None) -> Patch:
    """``zero``: zeros; ``mean``: the given mean activation (d,) on every row."""
    if kind == "zero":
        return torch.zeros_like
    if kind != "mean":
        raise HusaiError(f"unknown ablation {kind!r}; choose one of {', '.join(ABLATIONS)}")
    if mean is None:
        raise HusaiError("mean ablation needs the mean activation")
    return lambda x: mean.to(x.device, x.dtype).expand_as(x)


@torch.no_grad()
def patched_logits(model: HookedTransformer, tokens: Tensor, hook: str, patch: Patch | None,
                   position: int | slice) -> Tensor:
    """Logits (batch, seq, vocab) with the activation at ``hook`` and ``position`` replaced by
    ``patch`` (None: the clean model). Every other position and hook is left as it is."""
    check_hooks(model, [hook])
    if patch is None:
        return model(tokens)

    def replace(act: Tensor, hook: Any) -> Tensor:  # ``hook``: the TransformerLens HookPoint
        act = act.clone()
        rows = act[:, position]
        new = patch(rows.reshape(-1, rows.shape[-1]))
        if new.shape != rows.reshape(-1, rows.shape[-1]).shape:
            raise HusaiError(f"the replacement at {hook.name} has shape {tuple(new.shape)}, the activation "
                             f"{tuple(rows.reshape(-1, rows.shape[-1]).shape)} (is the SAE for this hook?)")
        act[:, position] = new.reshape(rows.shape).to(act.dtype)
        return act

    return model.run_with_hooks(tokens, fwd_hooks=[(hook, replace)])


@torch.no_grad()
def answer_loss(model: HookedTransformer, tokens: Tensor, labels: Tensor, answer_pos: int, hook: str,
                patch: Patch | None = None, batch_size: int = 4096) -> dict[str, float]:
    """Mean cross-entropy of ``labels`` at ``answer_pos`` and accuracy, with ``patch`` applied at
    ``hook`` on the answer position only."""
    if tokens.shape[0] != labels.shape[0] or tokens.shape[0] == 0:
        raise HusaiError(f"need as many labels as token rows (> 0), got {tokens.shape[0]} rows and {labels.shape[0]} labels")
    dev = model.cfg.device
    ce_sum, hits = 0.0, 0
    for lo in range(0, tokens.shape[0], batch_size):
        logits = patched_logits(model, tokens[lo : lo + batch_size].to(dev), hook, patch, answer_pos)[:, answer_pos]
        y = labels[lo : lo + batch_size].to(dev)
        ce_sum += float(F.cross_entropy(logits.double(), y, reduction="sum"))
        hits += int((logits.argmax(-1) == y).sum())
    return {"ce": ce_sum / tokens.shape[0], "accuracy": hits / tokens.shape[0]}


def loss_recovered(ce_clean: float, ce_spliced: float, ce_ablated: float) -> float | None:
    """(CE_ablated - CE_spliced) / (CE_ablated - CE_clean); None when ablating the hook does not
    raise the loss (the ratio then measures nothing)."""
    gap = float(ce_ablated) - float(ce_clean)
    if not gap > 1e-9:
        return None
    return (float(ce_ablated) - float(ce_spliced)) / gap


def splice_saes(model: HookedTransformer, tokens: Tensor, labels: Tensor, answer_pos: int, hook: str,
                saes: Sequence[Any], mean: Tensor, batch_size: int = 4096) -> dict[str, Any]:
    """Clean, zero- and mean-ablated losses once, then per SAE: spliced CE and accuracy and the loss
    recovered under each ablation (None where that ablation does not raise the loss)."""
    clean = answer_loss(model, tokens, labels, answer_pos, hook, None, batch_size)
    ablated = {kind: answer_loss(model, tokens, labels, answer_pos, hook, ablation_patch(kind, mean), batch_size)
               for kind in ABLATIONS}
    per_sae = []
    for sae in saes:
        spliced = answer_loss(model, tokens, labels, answer_pos, hook, sae_patch(sae), batch_size)
        per_sae.append({"ce_spliced": spliced["ce"], "accuracy_spliced": spliced["accuracy"],
                        **{f"loss_recovered_{kind}": loss_recovered(clean["ce"], spliced["ce"], ablated[kind]["ce"])
                           for kind in ABLATIONS}})
    return {"clean": clean, "ablated": ablated, "per_sae": per_sae, "n_rows": int(tokens.shape[0])}


__all__ = ["ABLATIONS", "ablation_patch", "answer_loss", "loss_recovered", "patched_logits", "sae_patch", "splice_saes"]
