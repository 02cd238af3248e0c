import pytest
import torch

from husai_core.errors import HusaiError
from husai_core.model import (ModelConfig, TrainConfig, answer_logits, build_model, grokking_step, load_checkpoint,
                              save_checkpoint, train_model, train_or_load)
from husai_core.task import TaskConfig, make_task

TINY = ModelConfig(d_model=16, n_heads=2, d_mlp=32)


@pytest.mark.parametrize("layout,n_layers", [("default", 1), ("default", 2), ("legacy", 1)])
def test_answer_logits_equal_the_full_forward(layout, n_layers):
    task = TaskConfig(p=11, layout=layout)
    data = make_task(task)
    model = build_model(task, ModelConfig(n_layers=n_layers, d_model=16, n_heads=2, d_mlp=32), seed=3)
    with torch.no_grad():
        full = model(data.tokens)[:, data.answer_pos]
        fast = answer_logits(model, data.tokens, data.answer_pos)
    assert torch.allclose(full, fast, atol=1e-5)


def test_training_is_deterministic_on_cpu_and_logs_curves():
    task = TaskConfig(p=11)
    train = TrainConfig(steps=20, eval_every=10, seed=1)
    a = train_model(task, TINY, train, device="cpu", progress=False)
    b = train_model(task, TINY, train, device="cpu", progress=False)
    for (k, va), vb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(va, vb), k
    assert list(a.history.step) == [0, 10, 20]
    assert {"train_loss", "test_loss", "train_acc", "test_acc"} <= set(a.history.columns)
    assert a.history.train_loss.iloc[-1] < a.history.train_loss.iloc[0]


def test_training_gives_the_same_weights_on_every_run_and_any_thread_count():
    # two CPU threads made two runs of the full-size model differ (a backward kernel accumulated
    # in a run-dependent order), and everything downstream with them
    task, train = TaskConfig(p=23), TrainConfig(steps=30, eval_every=1000, lr=3e-3, seed=0)
    threads = torch.get_num_threads()
    weights = []
    try:
        for n in (2, 2, 1):
            torch.set_num_threads(n)
            ckpt = train_model(task, ModelConfig(), train, device="cpu", progress=False)
            weights.append(torch.cat([p.detach().flatten() for p in ckpt.model.parameters()]))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(weights[0], weights[1]) and torch.equal(weights[0], weights[2])
    assert not torch.are_deterministic_algorithms_enabled()  # the caller's setting is restored


def test_two_layers_train():
    ckpt = train_model(TaskConfig(p=11), ModelConfig(n_layers=2, d_model=16, n_heads=2, d_mlp=32),
                       TrainConfig(steps=5, eval_every=5), progress=False)
    assert ckpt.model.cfg.n_layers == 2 and len(ckpt.history) == 2


def test_checkpoint_round_trip_and_reuse(tmp_path):
    task, train = TaskConfig(p=11), TrainConfig(steps=5, eval_every=5)
    ckpt = train_or_load(tmp_path / "m", task, TINY, train, progress=False)
    loaded = load_checkpoint(tmp_path / "m")
    assert loaded.sha256 == ckpt.sha256 and loaded.task == task and loaded.train_cfg == train
    for (k, va), vb in zip(ckpt.model.state_dict().items(), loaded.model.state_dict().values()):
        assert torch.equal(va, vb), k
    again = train_or_load(tmp_path / "m", task, TINY, train, progress=False)
    assert again.path == loaded.path and len(again.history) == len(ckpt.history)


def test_missing_and_corrupt_checkpoints(tmp_path):
    with pytest.raises(HusaiError, match="missing transformer checkpoint"):
        load_checkpoint(tmp_path / "nope")
    ckpt = train_model(TaskConfig(p=11), TINY, TrainConfig(steps=1, eval_every=1), progress=False)
    save_checkpoint(ckpt, tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(HusaiError, match="corrupt transformer weights"):
        load_checkpoint(tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text("{not json")
    with pytest.raises(HusaiError, match="corrupt transformer config"):
        load_checkpoint(tmp_path / "m")


def test_grokking_step():
    import pandas as pd

    hist = pd.DataFrame({"step": [0, 10, 20], "test_acc": [0.1, 0.995, 1.0]})
    assert grokking_step(hist) == 10 and grokking_step(hist, 1.01) is None


def test_bad_model_config():
    with pytest.raises(HusaiError, match="not divisible"):
        ModelConfig(d_model=10, n_heads=4)
