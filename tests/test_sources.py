"""Activation sources (husai_core.sources): layouts, reads by index, streamed training, bounded memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from husai_core.errors import HusaiError
from husai_core.sae import SAEConfig, train_sae, train_saes
from husai_core.sources import ActivationSource, heldout_rows, open_source
from husai_core.store import tensor_fingerprint

REPO = Path(__file__).resolve().parents[1]
HOOK = "blocks.0.hook_resid_pre"


def _same_sae(a, b) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.sae.state_dict().values(), b.sae.state_dict().values()))


def _rows(n: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g) * torch.linspace(0.5, 2.0, d) + 0.3


@pytest.fixture
def foreign(tmp_path):
    """A per-dataset folder: one .safetensors file (rows, seq, d) and one .pt file (dict)."""
    x = _rows(900, 16, 0)
    folder = tmp_path / "foreign"
    folder.mkdir()
    save_file({"activations": x[:300].reshape(100, 3, 16).contiguous()}, str(folder / f"alpha_{HOOK}.safetensors"))
    torch.save({"activations": x[300:].clone(), "meta": torch.arange(3)}, folder / f"beta_{HOOK}.pt")
    (folder / "README.txt").write_text("not an activation file")
    return folder, x


# ---------------------------------------------------------------- layouts and reads

def test_foreign_folder_reads_rows_and_datasets_and_trains_like_memory(foreign):
    folder, x = foreign
    src = open_source(folder)
    assert (src.kind, src.hook, src.shape, src.datasets) == ("foreign_folder", HOOK, (900, 16), ["alpha", "beta"])
    assert "fallback" not in src.describe()  # the .pt storage was located in the file: read like the rest
    idx = torch.tensor([899, 0, 299, 300, 5, 5, 650])
    assert torch.equal(src.take(idx), x[idx])
    assert list(src.dataset_names(idx)) == ["beta", "alpha", "alpha", "beta", "alpha", "alpha", "beta"]
    assert torch.equal(src.materialise(), x)
    assert torch.equal(src.materialise(max_rows=10), x[torch.linspace(0, 899, 10).round().long()])
    view = src[torch.arange(100, 900, 2)]
    assert torch.equal(view.take([0, 399]), x[[100, 898]]) and len(view) == 400
    assert src.fingerprint() == tensor_fingerprint(x) and view.fingerprint() == tensor_fingerprint(x[100::2])
    # the loader's limits, as load_foreign_folder
    assert open_source(folder, max_rows_per_file=50).shape == (100, 16)
    assert open_source(folder, max_files=1).datasets == ["alpha"]
    # streamed training reproduces in-memory training bit for bit (same rows, same order)
    for extra in ({}, {"normalize_activations": "expected_average_only_in"}, {"architecture": "batchtopk"}):
        cfg = SAEConfig(**{"d_in": 16, "d_sae": 32, "architecture": "topk", "k": 4, "steps": 25, "batch_size": 64, **extra})
        assert _same_sae(train_sae(cfg, x[100::2], seed=7, device="cpu"), train_sae(cfg, view, seed=7, device="cpu"))
    tc = SAEConfig(d_in=16, d_sae=32, architecture="topk", k=4, steps=10, batch_size=32, transcoder=True, d_out=16)
    assert _same_sae(train_sae(tc, x, seed=2, x_target=2 * x, device="cpu"),
                     train_sae(tc, src, seed=2, x_target=2 * x, device="cpu"))
    cfg = SAEConfig(d_in=16, d_sae=32, architecture="topk", k=4, steps=10, batch_size=32)
    batched = train_saes(cfg, src, [1, 2], device="cpu", mode="batched")
    assert [r.info["seed"] for r in batched] == [1, 2] and all(np.isfinite(r.metrics["ev"]) for r in batched)


def test_streamed_nan_rows_are_a_clear_error(tmp_path):
    x = _rows(64, 8, 3)
    x[37, 2] = float("nan")
    save_file({"activations": x}, str(tmp_path / f"ds_{HOOK}.safetensors"))
    cfg = SAEConfig(d_in=8, d_sae=16, architecture="topk", k=2, steps=5, batch_size=32, b_dec_init="zeros")
    with pytest.raises(HusaiError, match="NaN or infinite"):
        train_sae(cfg, open_source(tmp_path), seed=0, device="cpu")
    with pytest.raises(HusaiError, match="width 8 but cfg.d_in is 16"):
        train_sae(cfg.replace(d_in=16), open_source(tmp_path), seed=0, device="cpu")


def test_our_cache_is_a_source(tmp_path):
    from husai_core.activations import load_cache, save_cache

    acts = {HOOK: _rows(200, 8, 1), "blocks.0.hook_resid_post": _rows(200, 8, 2)}
    labels = {"c": torch.arange(200) % 7}
    save_cache(tmp_path / "cache", acts, labels, {"note": "test"})
    with pytest.raises(HusaiError, match="pass hook="):
        open_source(tmp_path / "cache")
    src = open_source(tmp_path / "cache", hook=HOOK)
    assert src.kind == "husai_cache" and torch.equal(src.materialise(), load_cache(tmp_path / "cache").get(HOOK))
    assert torch.equal(src.label("c"), labels["c"]) and torch.equal(src[torch.arange(5, 10)].label("c"), labels["c"][5:10])
    held = torch.arange(0, 200, 5)
    assert torch.equal(heldout_rows(src, held), acts[HOOK][held])  # small: every held-out row


def test_unknown_missing_and_corrupt_sources_are_one_clear_line(tmp_path):
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("hello")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / f"ds_{HOOK}.safetensors").write_bytes(b"\xff" * 64)
    sl = tmp_path / "saelens"
    sl.mkdir()
    (sl / "state.json").write_text("{}")
    (sl / "dataset_info.json").write_text("{not json")
    for spec, pattern in [(tmp_path / "junk", "unknown activation source"), (tmp_path / "nope", "not found"),
                          (bad, "corrupt activation file"), (sl, "corrupt SAELens activation cache")]:
        with pytest.raises(HusaiError, match=pattern) as err:
            open_source(spec)
        assert "\n" not in str(err.value) and str(spec) in str(err.value)
    with pytest.raises(HusaiError, match="no activation files for hook"):
        open_source(tmp_path / "bad", hook="blocks.3.hook_resid_post")


# ---------------------------------------------------------------- a SAELens cache written by SAELens

@pytest.fixture(scope="module")
def saelens_cache(tmp_path_factory):
    """Run SAELens's own CacheActivationsRunner (its ActivationsStore, shard writer and shard
    consolidation) on a tiny HookedTransformer built from a config; only ``load_model`` is
    replaced (it would download a model)."""
    import sae_lens.cache_activations_runner as car
    from datasets import Dataset
    from sae_lens.config import CacheActivationsRunnerConfig
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    model = HookedTransformer(HookedTransformerConfig(n_layers=1, d_model=16, n_ctx=8, d_head=4, n_heads=4, d_vocab=50,
                                                      act_fn="relu", d_mlp=32, seed=0, device="cpu"))
    tokens = torch.randint(0, 50, (64, 8), generator=torch.Generator().manual_seed(0))
    out = tmp_path_factory.mktemp("saelens") / "cache"
    cfg = CacheActivationsRunnerConfig(
        dataset_path="local-tokens", model_name="tiny", model_batch_size=4, hook_name="blocks.0.hook_resid_post",
        d_in=16, training_tokens=8 * 48, context_size=8, new_cached_activations_path=str(out), shuffle=False,
        device="cpu", buffer_size_gb=8 * 16 * 4 * 16 / 1e9, prepend_bos=False, streaming=False)
    original = car.load_model
    car.load_model = lambda **_: model
    try:
        with pytest.warns(UserWarning):  # fewer prompts than tokens asked for: SAELens warns and cycles
            car.CacheActivationsRunner(cfg, override_dataset=Dataset.from_dict({"input_ids": tokens.tolist()})).run()
    finally:
        car.load_model = original
    return out


def test_saelens_cache_is_opened_and_trained_on(saelens_cache):
    import datasets

    assert sorted(p.name for p in saelens_cache.iterdir()) == [
        "data-00000-of-00003.arrow", "data-00001-of-00003.arrow", "data-00002-of-00003.arrow",
        "dataset_info.json", "state.json"]
    src = open_source(saelens_cache)
    ds = datasets.load_from_disk(str(saelens_cache)).with_format("numpy")
    ref = torch.from_numpy(ds[:]["blocks.0.hook_resid_post"].reshape(-1, 16).copy())
    assert (src.kind, src.hook, src.shape, len(src.segments)) == ("saelens_cache", "blocks.0.hook_resid_post", (384, 16), 3)
    idx = torch.randperm(384, generator=torch.Generator().manual_seed(1))[:100]
    assert torch.equal(src.take(idx), ref[idx]) and torch.equal(src.materialise(), ref)
    assert torch.equal(src.label("token_ids"), torch.from_numpy(ds[:]["token_ids"].reshape(-1).astype(np.int64)))
    with pytest.raises(HusaiError, match="not in the SAELens activation cache"):
        open_source(saelens_cache, hook="blocks.0.hook_resid_pre")
    cfg = SAEConfig(d_in=16, d_sae=32, architecture="topk", k=4, steps=40, batch_size=32)
    streamed = train_sae(cfg, src, seed=3, device="cpu")
    assert _same_sae(streamed, train_sae(cfg, ref, seed=3, device="cpu")) and streamed.metrics["ev"] > 0


# ---------------------------------------------------------------- phases and sweeps

def test_phase3_trains_on_a_foreign_folder(foreign):
    from husai_core.conditions import heldout_split
    from husai_core.runner import run_notebook

    folder, x = foreign
    run = run_notebook("03_sae_training", "smoke", {"activations": str(folder), "hook": HOOK, "seed": 1}, render=False)
    res = run.results
    assert res["activations"]["source"].startswith("foreign_folder") and res["hook"] == HOOK
    from husai_core.paths import runs_path

    ckpt = runs_path(res["checkpoint"])  # metadata stores paths relative to the runs folder
    assert ckpt.parts[-4].startswith("ext-foreign_folder-") and (ckpt / "metrics.json").is_file()
    m = json.loads((ckpt / "metrics.json").read_text())
    train_idx, _ = heldout_split(900, 0.2, 0)
    assert m["heldout"]["n_rows"] == 180 and m["n_rows"] == 720
    assert m["data_fingerprint"] == tensor_fingerprint(x[train_idx])  # streamed rows hash like the tensor


def test_sweep_points_take_an_activations_key(foreign, tmp_path):
    from husai_core.experiments import point_data, sweep_point_check, train_point
    from husai_core.conditions import source_condition_data

    folder, x = foreign
    spec = {"artifacts": str(tmp_path / "art"), "layout": "default", "hook": HOOK, "activations": str(folder),
            "architecture": "topk", "d_sae": 32, "k": 4, "steps": 20, "batch_size": 32, "seed": 0}
    sweep_point_check(16)({k: v for k, v in spec.items() if k != "seed"})
    out = train_point(spec)
    assert "ext-foreign_folder-" in out["checkpoint"] and out["condition"] == "trained" and np.isfinite(out["ev"])
    _, data, src = point_data({**spec, "condition": "gaussian_matched"})
    assert isinstance(src, ActivationSource) and data.train.shape == (720, 16) and data.heldout.shape == (180, 16)
    with pytest.raises(HusaiError, match="needs the transformer"):
        source_condition_data("random_transformer", src, (torch.arange(10), torch.arange(10, 20)))


# ---------------------------------------------------------------- bounded memory

def test_bijection_sampler_passes_are_permutations(monkeypatch):
    from husai_core.sae.trainer import data as trainer

    s = trainer._sampler(1000, 3, streamed=True)
    assert isinstance(s, trainer._RowSampler)  # small sources: the in-memory data order
    monkeypatch.setattr(trainer, "PERM_MAX_ROWS", 100)
    s = trainer._sampler(1000, 3, streamed=True)
    assert isinstance(s, trainer._BijectionSampler) and isinstance(trainer._sampler(1000, 3, False), trainer._RowSampler)
    first, second = s.take(700), s.take(1300)
    assert sorted(torch.cat([first, second[:300]]).tolist()) == list(range(1000))
    assert sorted(second[300:].tolist()) == list(range(1000)) and not torch.equal(second[300:], torch.cat([first, second[:300]]))


MEMORY_SCRIPT = textwrap.dedent("""
    import json, resource, sys
    import torch
    torch.set_num_threads(1)
    from husai_core.sae import SAEConfig, train_sae
    from husai_core.sources import open_source

    def status_mib(key):
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) for l in f if l.startswith(key + ":")) / 1024

    src = open_source(sys.argv[1])
    cfg = SAEConfig(d_in=src.d_in, d_sae=256, architecture="topk", k=16, steps=int(sys.argv[2]), batch_size=1024)
    imported = status_mib("VmRSS")
    # warm-up: 20 steps of the same config on 8192 in-memory rows pays torch's lazy initialisation
    # (~150 MiB on its own) and sizes the SAE/Adam state; none of it grows with the data
    train_sae(cfg.replace(steps=20), torch.randn(8192, src.d_in), seed=1, device="cpu")
    with open("/proc/self/clear_refs", "w") as f:  # reset the peak (VmHWM) to the current RSS
        f.write("5")
    base = status_mib("VmRSS")
    data = src if sys.argv[3] == "stream" else src.materialise()  # "memory": the contrast, all rows in RAM
    fp = src.fingerprint()                            # reads every row once, in chunks
    res = train_sae(cfg, data, seed=0, device="cpu")  # more than one full pass of random rows
    peak = status_mib("VmHWM")
    print(json.dumps({"imported_mib": imported, "base_mib": base, "peak_mib": peak, "growth_mib": peak - base,
                      "ru_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "data_mib": src.nbytes / 2**20, "rows": src.n_rows, "tokens": cfg.steps * cfg.batch_size,
                      "ev": res.metrics["ev"], "eval_rows": res.metrics["n_rows"], "fingerprint": fp}))
""")


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc peak-RSS reset")
def test_cache_larger_than_the_memory_cap_trains_within_it(tmp_path):
    """200 MB of shards (4 x 50 MB safetensors) and a 120 MiB cap on the training process's peak
    RSS growth: VmHWM (the kernel's peak RSS, what ru_maxrss reports) at the end minus VmRSS when
    the peak was reset, after imports and a short in-memory warm-up. Held in memory, the same
    training grows by > 400 MiB (``"memory"`` mode of the script). Not ru_maxrss alone: in a
    child of a large process (pytest) Linux starts it at the parent's RSS (kept across exec)."""
    d, per_file, files = 256, 48_828, 4  # 4 x 50 MB of float32
    folder = tmp_path / "big"
    folder.mkdir()
    for i in range(files):
        g = torch.Generator().manual_seed(i)
        save_file({"activations": torch.randn(per_file, d, generator=g)}, str(folder / f"ds{i}_{HOOK}.safetensors"))
    data_mb = files * per_file * d * 4 / 1e6
    assert data_mb >= 199
    steps = 200  # 204,800 rows drawn: more than one full pass over the 195,312 rows
    proc = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(folder), str(steps), "stream"], capture_output=True,
                          text=True, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    print(out)
    assert out["rows"] == files * per_file and out["tokens"] > out["rows"]
    assert out["growth_mib"] < 120, out
    assert out["eval_rows"] == 8192  # FINAL_EVAL_ROWS evenly spaced rows, as in memory
