import numpy as np
import pytest
import torch

from husai_core.activations import (effective_rank, extract_activations, iter_foreign_folder, load_cache,
                                    load_foreign_folder, save_cache)
from husai_core.errors import HusaiError
from husai_core.model import ModelConfig, build_model
from husai_core.task import TaskConfig, make_task


def test_effective_rank_identity_and_rank_one():
    d = 8
    eye = torch.eye(d)
    balanced = torch.cat([eye, -eye])  # zero mean, so centring keeps all d equal singular values
    assert effective_rank(balanced) == pytest.approx(d, rel=1e-9)
    assert effective_rank(eye) == pytest.approx(d - 1, rel=1e-9)  # centring removes one direction
    u = torch.randn(50, 1, generator=torch.Generator().manual_seed(0))
    v = torch.randn(1, 6, generator=torch.Generator().manual_seed(1))
    assert effective_rank(u @ v) == pytest.approx(1.0, abs=1e-6)


@pytest.fixture(scope="module")
def tiny():
    task = TaskConfig(p=11)
    return build_model(task, ModelConfig(d_model=16, n_heads=2, d_mlp=32), seed=0), make_task(task)


def test_extraction_positions(tiny):
    model, data = tiny
    hook = "blocks.0.hook_resid_post"
    answer = extract_activations(model, data.tokens, [hook], "answer", data.answer_pos, batch_size=50)[hook]
    every = extract_activations(model, data.tokens, [hook], "all", data.answer_pos)[hook]
    first = extract_activations(model, data.tokens, [hook], 0, data.answer_pos)[hook]
    assert answer.shape == (121, 16) and every.shape == (121 * 3, 16)
    _, cache = model.run_with_cache(data.tokens)
    assert torch.allclose(answer, cache[hook][:, 2], atol=1e-6)
    assert torch.allclose(every.view(121, 3, 16)[:, 0], first)


def test_unknown_hook_and_position(tiny):
    model, data = tiny
    with pytest.raises(HusaiError, match=r"unknown hook 'blocks.0.hook_resid_pst'.*did you mean blocks.0.hook_resid_post"):
        extract_activations(model, data.tokens, ["blocks.0.hook_resid_pst"])
    with pytest.raises(HusaiError, match="outside a sequence"):
        extract_activations(model, data.tokens, ["blocks.0.hook_resid_post"], position=7)


def test_cache_round_trip_and_corruption(tmp_path, tiny):
    model, data = tiny
    acts = extract_activations(model, data.tokens, ["blocks.0.hook_resid_post", "blocks.0.hook_mlp_out"], "answer", 2)
    save_cache(tmp_path / "c", acts, {"c": data.labels}, {"layout": "default"})
    cache = load_cache(tmp_path / "c")
    assert torch.equal(cache.get("blocks.0.hook_mlp_out"), acts["blocks.0.hook_mlp_out"])
    assert torch.equal(cache.labels["c"], data.labels)
    assert cache.meta["hooks"]["blocks.0.hook_resid_post"]["shape"] == [121, 16]
    with pytest.raises(HusaiError, match="not in the cache"):
        cache.get("blocks.0.hook_resid_mid")
    blob = (tmp_path / "c" / "activations.safetensors").read_bytes()
    (tmp_path / "c" / "activations.safetensors").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(HusaiError, match="corrupt activation cache"):
        load_cache(tmp_path / "c")
    with pytest.raises(HusaiError, match="missing activation cache"):
        load_cache(tmp_path / "elsewhere")


def _foreign(tmp_path, sizes=(("wiki", 30), ("code", 20), ("chat", 10)), d=4):
    for i, (name, n) in enumerate(sizes):
        torch.save(torch.full((n, d), float(i)), tmp_path / f"{name}_blocks.0.hook_resid_pre.pt")
    return tmp_path


def test_foreign_folder_limits_and_dataset_names(tmp_path):
    folder = _foreign(tmp_path)
    everything = load_foreign_folder(folder)
    assert everything.x.shape == (60, 4) and everything.hook == "blocks.0.hook_resid_pre"
    assert sorted(set(everything.dataset)) == ["chat", "code", "wiki"]
    # files are read in name order: chat (2.0), code (1.0), wiki (0.0); the label follows each row
    assert all(everything.x[everything.dataset == "code", 0] == 1.0)
    assert load_foreign_folder(folder, max_files=2).x.shape[0] == 30
    per_file = load_foreign_folder(folder, max_rows_per_file=5)
    assert per_file.x.shape[0] == 15 and (per_file.dataset == "wiki").sum() == 5
    capped = load_foreign_folder(folder, max_rows=25)
    assert capped.x.shape[0] == 25 and list(np.unique(capped.dataset)) == ["chat", "code"]
    chunks = list(iter_foreign_folder(folder, chunk_rows=7))
    assert max(c.shape[0] for _, c in chunks) == 7 and sum(c.shape[0] for _, c in chunks) == 60


def test_foreign_folder_bad_input(tmp_path):
    with pytest.raises(HusaiError, match="missing activation folder"):
        load_foreign_folder(tmp_path / "none")
    folder = _foreign(tmp_path)
    with pytest.raises(HusaiError, match="no activation files for hook"):
        load_foreign_folder(folder, hook="blocks.3.hook_resid_pre")
    torch.save(torch.zeros(3, 5), folder / "zzz_blocks.0.hook_resid_pre.pt")
    with pytest.raises(HusaiError, match="shape mismatch"):
        load_foreign_folder(folder)
    (folder / "zzz_blocks.0.hook_resid_pre.pt").write_bytes(b"not a tensor file")
    with pytest.raises(HusaiError, match="corrupt activation file"):
        load_foreign_folder(folder)
