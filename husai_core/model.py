"""The modular-addition transformer: a TransformerLens HookedTransformer, trained full batch.

Defaults follow Nanda et al. 2023 (d_model 128, 4 heads, d_mlp 512, ReLU, no LayerNorm,
AdamW lr 1e-3, weight decay 1.0, betas (0.9, 0.98)). Every hook point keeps its standard
TransformerLens name, e.g. ``blocks.0.hook_resid_post``.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from .progress import tqdm
from transformer_lens import HookedTransformer, HookedTransformerConfig

from .device import deterministic, pick_device, seed_everything
from .errors import HusaiError
from .io import file_sha256, load_tensors, read_json, save_tensors, write_json
from .task import TaskConfig, TaskData, make_task


@dataclass(frozen=True)
class ModelConfig:
    n_layers: int = 1
    d_model: int = 128
    n_heads: int = 4
    d_mlp: int = 512
    act_fn: str = "relu"
    normalization_type: str | None = None

    def __post_init__(self) -> None:
        if self.n_layers < 1 or self.d_model < 1 or self.d_mlp < 1:
            raise HusaiError(f"model sizes must be positive: {self}")
        if self.d_model % self.n_heads:
            raise HusaiError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 10_000
    lr: float = 1e-3
    weight_decay: float = 1.0
    betas: tuple[float, float] = (0.9, 0.98)
    eval_every: int = 100
    seed: int = 0


@dataclass
class Checkpoint:
    model: HookedTransformer
    task: TaskConfig
    model_cfg: ModelConfig
    train_cfg: TrainConfig
    history: pd.DataFrame = field(default_factory=pd.DataFrame)
    path: Path | None = None
    sha256: str | None = None


def build_model(task: TaskConfig, cfg: ModelConfig, seed: int = 0, device: str = "auto") -> HookedTransformer:
    data_shape = make_task(task)  # cheap; gives the vocab size and context length
    seed_everything(seed)
    tl_cfg = HookedTransformerConfig(
        n_layers=cfg.n_layers,
        d_model=cfg.d_model,
        d_head=cfg.d_model // cfg.n_heads,
        n_heads=cfg.n_heads,
        d_mlp=cfg.d_mlp,
        d_vocab=data_shape.d_vocab,
        d_vocab_out=task.p,
        n_ctx=data_shape.tokens.shape[1],
        act_fn=cfg.act_fn,
        normalization_type=cfg.normalization_type,
        seed=seed,
        device=str(pick_device(device)),
    )
    return HookedTransformer(tl_cfg)


def answer_logits(model: HookedTransformer, tokens: torch.Tensor, answer_pos: int) -> torch.Tensor:
    """Logits at the answer position, computing the last block only where it is needed.

    Only the answer position enters the loss, so the last block's query, MLP and unembed
    run on that one position (keys/values still come from every position it attends to).
    The result equals ``model(tokens)[:, answer_pos]`` (a test checks it) at roughly a
    third of the cost, which is what makes CPU grokking runs practical.
    """
    resid = model.embed(tokens) + model.pos_embed(tokens)
    for block in model.blocks[:-1]:
        resid = block(resid)
    block = model.blocks[-1]
    attn = block.attn
    ctx = block.ln1(resid[:, : answer_pos + 1])  # causal: the answer sees positions <= answer_pos
    q = torch.einsum("nd,hde->nhe", ctx[:, answer_pos], attn.W_Q) + attn.b_Q
    k = torch.einsum("nsd,hde->nshe", ctx, attn.W_K) + attn.b_K
    v = torch.einsum("nsd,hde->nshe", ctx, attn.W_V) + attn.b_V
    pattern = (torch.einsum("nhe,nshe->nhs", q, k) / attn.attn_scale).softmax(dim=-1)
    z = torch.einsum("nhs,nshe->nhe", pattern, v)
    r = resid[:, answer_pos] + torch.einsum("nhe,hed->nd", z, attn.W_O) + attn.b_O
    r = r + block.mlp(block.ln2(r[:, None]))[:, 0]
    if hasattr(model, "ln_final"):  # absent when normalization_type is None
        r = model.ln_final(r[:, None])[:, 0]
    return model.unembed(r[:, None])[:, 0]


@torch.no_grad()
def evaluate(model: HookedTransformer, data: TaskData, idx: torch.Tensor) -> tuple[float, float]:
    dev = model.cfg.device
    logits = answer_logits(model, data.tokens[idx].to(dev), data.answer_pos)
    labels = data.labels[idx].to(dev)
    return F.cross_entropy(logits, labels).item(), (logits.argmax(-1) == labels).float().mean().item()


def train_model(
    task: TaskConfig,
    cfg: ModelConfig = ModelConfig(),
    train: TrainConfig = TrainConfig(),
    device: str = "auto",
    progress: bool = True,
) -> Checkpoint:
    """Full-batch AdamW on the training pairs; logs train/test loss and accuracy. Deterministic
    kernels (``device.deterministic``): the same configs give bit-identical weights on every run."""
    with deterministic():
        return _train_model(task, cfg, train, device, progress)


def _train_model(task: TaskConfig, cfg: ModelConfig, train: TrainConfig, device: str, progress: bool) -> Checkpoint:
    data = make_task(task)
    model = build_model(task, cfg, seed=train.seed, device=device)
    dev = model.cfg.device
    x, y = data.tokens[data.train_idx].to(dev), data.labels[data.train_idx].to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=train.lr, weight_decay=train.weight_decay, betas=train.betas)
    rows, start = [], time.perf_counter()
    for step in tqdm(range(train.steps + 1), disable=not progress, desc=f"transformer ({task.layout})"):
        if step % train.eval_every == 0 or step == train.steps:
            model.eval()
            tr_loss, tr_acc = evaluate(model, data, data.train_idx)
            te_loss, te_acc = evaluate(model, data, data.test_idx)
            rows.append(dict(step=step, train_loss=tr_loss, test_loss=te_loss, train_acc=tr_acc,
                             test_acc=te_acc, seconds=time.perf_counter() - start))
            model.train()
        if step == train.steps:
            break
        loss = F.cross_entropy(answer_logits(model, x, data.answer_pos), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()
    return Checkpoint(model, task, cfg, train, pd.DataFrame(rows))


def grokking_step(history: pd.DataFrame, threshold: float = 0.99) -> int | None:
    """First logged step at which held-out accuracy reaches ``threshold`` (None if never)."""
    hit = history.loc[history["test_acc"] >= threshold, "step"]
    return int(hit.iloc[0]) if len(hit) else None


def train_or_load(
    folder: str | Path,
    task: TaskConfig,
    cfg: ModelConfig = ModelConfig(),
    train: TrainConfig = TrainConfig(),
    reuse: bool = True,
    device: str = "auto",
    progress: bool = True,
) -> Checkpoint:
    """Load the checkpoint in ``folder`` if it was trained with exactly these configs, else train and save.

    This is what makes re-running a phase (or an interrupted main job) cheap.
    """
    folder = Path(folder)
    if reuse and (folder / "config.json").is_file():
        ckpt = load_checkpoint(folder, device=device)
        if (ckpt.task, ckpt.model_cfg, ckpt.train_cfg) == (task, cfg, train):
            return ckpt
    ckpt = train_model(task, cfg, train, device=device, progress=progress)
    save_checkpoint(ckpt, folder)
    return ckpt


def number_embedding(model: HookedTransformer, p: int) -> torch.Tensor:
    """Rows of W_E for the number tokens 0..p-1 (special tokens excluded)."""
    return model.W_E[:p].detach()


def save_checkpoint(ckpt: Checkpoint, folder: str | Path) -> Path:
    folder = Path(folder)
    weights = save_tensors(folder / "model.safetensors", dict(ckpt.model.state_dict()))
    ckpt.path, ckpt.sha256 = folder, file_sha256(weights)
    write_json(folder / "history.json", ckpt.history.to_dict(orient="list"))
    # config last: its presence marks a complete checkpoint
    write_json(folder / "config.json", {
        "task": ckpt.task.to_dict(), "model": asdict(ckpt.model_cfg), "train": asdict(ckpt.train_cfg),
        "weights_sha256": ckpt.sha256,
    })
    return folder


def load_checkpoint(folder: str | Path, device: str = "auto") -> Checkpoint:
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise HusaiError(f"missing transformer checkpoint: {folder} has no config.json (run 01_transformer first)")
    meta = read_json(folder / "config.json", "transformer config")
    try:
        task, cfg = TaskConfig(**meta["task"]), ModelConfig(**meta["model"])
        train = TrainConfig(**{**meta["train"], "betas": tuple(meta["train"]["betas"])})
    except (KeyError, TypeError) as exc:
        raise HusaiError(f"corrupt transformer config: {folder / 'config.json'} ({exc})") from None
    model = build_model(task, cfg, seed=train.seed, device=device)
    state = load_tensors(folder / "model.safetensors", "transformer weights")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise HusaiError(f"transformer weights do not match config in {folder}: {str(exc).splitlines()[0]}") from None
    model.eval()
    hist_path = folder / "history.json"
    history = pd.DataFrame(read_json(hist_path, "training history")) if hist_path.exists() else pd.DataFrame()
    return Checkpoint(model, task, cfg, train, history, folder, meta.get("weights_sha256"))
