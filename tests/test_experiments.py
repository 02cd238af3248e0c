import pytest
import torch

from husai_core.errors import HusaiError
from husai_core.experiments import config_id, consistency_summary, load_saes, sae_config, sae_dir, train_or_load_saes


def test_sae_config_rejects_unknown_names_and_bad_k():
    with pytest.raises(HusaiError, match="unknown SAE parameter.*learning_rate"):
        sae_config(16, {"learning_rate": 1e-3})
    with pytest.raises(HusaiError, match="k=64 must be <= d_sae=32"):
        sae_config(16, {"d_sae": 32, "k": 64})


def test_config_id_names_the_settings_and_changes_with_any_of_them():
    a = sae_config(16, {"d_sae": 32, "k": 4})
    assert config_id(a).startswith("topk-d32-k4-")
    assert config_id(a) != config_id(sae_config(16, {"d_sae": 32, "k": 4, "lr": 1e-3}))
    assert config_id(sae_config(16, {"architecture": "relu", "d_sae": 32})).startswith("relu-d32-l1")


def test_train_or_load_reuses_finished_seeds(tmp_path):
    x = torch.randn(256, 16, generator=torch.Generator().manual_seed(0))
    cfg = sae_config(16, {"d_sae": 32, "k": 4, "steps": 20, "batch_size": 64, "warmup_steps": 2})
    folder = sae_dir(tmp_path, "default", "hook", cfg)
    first = train_or_load_saes(folder, cfg, x, [1, 2])
    mtime = (folder / "seed1" / "sae.safetensors").stat().st_mtime_ns
    again = train_or_load_saes(folder, cfg, x, [1, 2, 3])
    assert (folder / "seed1" / "sae.safetensors").stat().st_mtime_ns == mtime  # not retrained
    assert torch.equal(first[0].sae.W_dec, again[0].sae.W_dec) and len(again) == 3
    assert [s.seed for s in load_saes(folder, [3, 1])] == [3, 1]
    with pytest.raises(HusaiError, match="missing SAE checkpoint for seed 9"):
        load_saes(folder, [9])


def test_consistency_summary_on_identical_and_random_dictionaries():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(64, 16, generator=g)
    copies = [base[torch.randperm(64, generator=g)] * torch.sign(torch.randn(64, 1, generator=g)) for _ in range(4)]
    s = consistency_summary(copies, [1, 2, 3, 4], n_resamples=500)
    assert s["trained"]["mean"] == pytest.approx(1.0, abs=1e-5)
    assert s["random"]["mean"] < 0.8 and s["lcb"] > 0 and s["ratio"] > 1
    assert set(s["random_seeds"]).isdisjoint({1, 2, 3, 4})
    with pytest.raises(HusaiError, match="at least 2 seeds"):
        consistency_summary(copies[:1], [1])


def test_checkpoints_are_not_reused_after_the_activations_change(tmp_path):
    x = torch.randn(256, 16, generator=torch.Generator().manual_seed(0))
    cfg = sae_config(16, {"d_sae": 32, "k": 4, "steps": 10, "batch_size": 64, "warmup_steps": 2})
    folder = sae_dir(tmp_path, "default", "hook", cfg)
    (old,) = train_or_load_saes(folder, cfg, x, [1])
    (new,) = train_or_load_saes(folder, cfg, x * 2 + 1, [1])
    assert new.metrics["data_fingerprint"] != old.metrics["data_fingerprint"]
    assert not torch.equal(old.sae.b_dec, new.sae.b_dec)  # retrained on the new data
