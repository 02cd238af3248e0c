"""Phase 12: loss recovered on hand-built cases (and against SAELens's own splice), sparse probes on
planted latents, the sae-bench preflight on local fixtures, and the notebook on the smoke profile."""

import math
import shutil
import subprocess

import numpy as np
import pytest
import torch
import yaml

from husai_core import saebench
from husai_core.errors import HusaiError
from husai_core.faithfulness import answer_loss, loss_recovered, patched_logits, sae_patch, splice_saes
from husai_core.probing import (balanced_rows, parse_task, probe_features, task_labels, task_splits,
                                top_k_mean_diff)
from husai_core.sae import SAEConfig, build_sae, export_saelens
from conftest import REPO, runs_env

HOOK = "blocks.0.hook_resid_post"


def tiny_model(d_vocab: int = 7, d_vocab_out: int = 5, seed: int = 0):
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(n_layers=1, d_model=8, d_head=4, n_heads=2, d_mlp=16, d_vocab=d_vocab,
                                  d_vocab_out=d_vocab_out, n_ctx=6, act_fn="relu", normalization_type=None, seed=seed,
                                  device="cpu")
    return HookedTransformer(cfg).eval()


class Reconstruct:
    """An SAE stand-in whose reconstruction is fixed: the input itself, zeros, or a constant row."""

    n_stack, device, dtype = 1, torch.device("cpu"), torch.float32

    def __init__(self, kind: str, row: torch.Tensor | None = None):
        self.kind, self.row = kind, row

    def encode(self, x):
        return x

    def decode(self, z):
        if self.kind == "row":
            return self.row.expand_as(z)
        return z if self.kind == "identity" else torch.zeros_like(z)


@pytest.fixture(scope="module")
def task_case():
    model = tiny_model()
    tokens = torch.randint(0, 7, (64, 3), generator=torch.Generator().manual_seed(0))
    labels = model(tokens)[:, 2].argmax(-1)  # the model's own answers: clean CE < log(5) = zero-ablated CE
    return model, tokens, labels


def test_identity_reconstruction_recovers_everything_and_zero_nothing(task_case):
    model, tokens, labels = task_case
    mean = torch.randn(8, generator=torch.Generator().manual_seed(1))
    saes = [Reconstruct("identity"), Reconstruct("zero"), Reconstruct("row", mean)]
    res = splice_saes(model, tokens, labels, 2, HOOK, saes, mean)
    ident, zero, mean_row = res["per_sae"]
    assert res["ablated"]["zero"]["ce"] == pytest.approx(math.log(5))  # zeroed residual: logits = b_U = 0
    assert res["clean"]["ce"] < math.log(5) and res["clean"]["accuracy"] == 1.0
    assert ident["loss_recovered_zero"] == pytest.approx(1.0) and ident["loss_recovered_mean"] == pytest.approx(1.0)
    assert ident["accuracy_spliced"] == 1.0
    assert zero["loss_recovered_zero"] == pytest.approx(0.0, abs=1e-12)
    assert mean_row["loss_recovered_mean"] == pytest.approx(0.0, abs=1e-12)
    assert zero["ce_spliced"] == pytest.approx(res["ablated"]["zero"]["ce"])


def test_only_the_answer_position_is_patched(task_case):
    model, tokens, _ = task_case
    clean = patched_logits(model, tokens, HOOK, None, 2)
    zeroed = patched_logits(model, tokens, HOOK, torch.zeros_like, 2)
    assert torch.equal(clean[:, :2], zeroed[:, :2]) and not torch.allclose(clean[:, 2], zeroed[:, 2])


def test_loss_recovered_formula_and_undefined_case():
    assert loss_recovered(1.0, 2.0, 3.0) == pytest.approx(0.5)
    assert loss_recovered(1.0, 4.0, 3.0) == pytest.approx(-0.5)  # worse than ablating
    assert loss_recovered(2.0, 1.0, 2.0) is None and loss_recovered(3.0, 1.0, 2.0) is None


def test_unknown_hook_is_one_line(task_case):
    model, tokens, labels = task_case
    with pytest.raises(HusaiError, match="unknown hook 'blocks.0.hook_resid_pots'") as err:
        answer_loss(model, tokens, labels, 2, "blocks.0.hook_resid_pots")
    assert "\n" not in str(err.value) and "did you mean" in str(err.value)
    with pytest.raises(HusaiError, match="splice one SAE"):
        sae_patch(type("Stacked", (), {"n_stack": 2})())


def test_splice_matches_saelens_get_recons_loss_on_a_language_model(tmp_path):
    """Where SAELens's evaluation runs (a language model: next-token loss at every position), our
    splice at every position gives its clean, spliced and zero-ablated losses and its score."""
    from sae_lens import SAE
    from sae_lens.evals import get_recons_loss
    from sae_lens.training.activation_scaler import ActivationScaler

    model = tiny_model(d_vocab=11, d_vocab_out=11, seed=3)
    tokens = torch.randint(0, 11, (5, 6), generator=torch.Generator().manual_seed(4))
    for t in range(5):  # greedy continuations: the clean loss is below the zero-ablated log(11)
        tokens[:, t + 1] = model(tokens)[:, t].argmax(-1)
    ours = build_sae(SAEConfig(architecture="topk", d_in=8, d_sae=16, k=3), seed=0)
    ours.eval()
    theirs = SAE.load_from_disk(export_saelens(ours, tmp_path / "sl", model_name="tiny", hook_name=HOOK))
    ref = get_recons_loss(theirs, model, ActivationScaler(), tokens, compute_kl=False, compute_ce_loss=True,
                          hook_name=HOOK)

    def lm_loss(patch):
        return float(model.loss_fn(patched_logits(model, tokens, HOOK, patch, slice(None)), tokens, per_token=True).mean())

    clean, spliced, zero = lm_loss(None), lm_loss(sae_patch(ours)), lm_loss(torch.zeros_like)
    assert clean == pytest.approx(float(ref["ce_loss_without_sae"].mean()), rel=1e-5)
    assert spliced == pytest.approx(float(ref["ce_loss_with_sae"].mean()), rel=1e-5)
    assert zero == pytest.approx(float(ref["ce_loss_with_ablation"].mean()), rel=1e-5)
    assert spliced != pytest.approx(clean)  # the splice changed something
    score = (ref["ce_loss_with_ablation"].mean() - ref["ce_loss_with_sae"].mean()) / (
        ref["ce_loss_with_ablation"].mean() - ref["ce_loss_without_sae"].mean())
    assert loss_recovered(clean, spliced, zero) == pytest.approx(float(score), rel=1e-4)


def test_per_seed_bootstrap_and_permutation_p():
    from husai_core.stats import bootstrap_seed_values, seed_values_permutation_p

    b = bootstrap_seed_values([0.5, 0.5, 0.5], n_resamples=200)
    assert (b.mean, b.ci_low, b.ci_high, b.n_seeds) == (0.5, 0.5, 0.5, 3)
    b = bootstrap_seed_values([0.0, 1.0, 2.0, 3.0], n_resamples=2000, seed=1)
    assert 0.0 <= b.ci_low < b.mean == 1.5 < b.ci_high <= 3.0
    assert seed_values_permutation_p([3, 4, 5], [0, 1, 2]) == pytest.approx(1 / 20)  # exact: C(6, 3) splits
    assert seed_values_permutation_p([0, 1, 2], [3, 4, 5]) == 1.0
    with pytest.raises(HusaiError, match="per-seed values"):
        bootstrap_seed_values([])


# ---------------------------------------------------------------- sparse probing

def planted(n: int = 600, d: int = 12, informative: int = 7, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = rng.random(n) < 0.5
    z = np.abs(rng.normal(size=(n, d)))
    z[:, informative] = y * 2.0 + rng.normal(scale=0.3, size=n)
    return z, y


def test_mean_difference_rule_finds_the_informative_latent():
    z, y = planted()
    assert top_k_mean_diff(z, y, 1).tolist() == [7]
    assert top_k_mean_diff(z, y, 3)[0] == 7 and len(set(top_k_mean_diff(z, y, 3))) == 3
    with pytest.raises(HusaiError, match="probe k=13"):
        top_k_mean_diff(z, y, 13)


def test_probe_on_the_informative_latent_beats_chance_and_noise():
    z, y = planted()
    c = np.where(y, 0, 1)  # a fake variable whose "c:0" task is y
    splits = task_splits({"c": torch.from_numpy(c)}, ["c:0"], np.arange(400), np.arange(400, 600), seed=0)
    rows = {r["k"]: r for r in probe_features(z, splits, [1, "all"])}
    assert rows[1]["features"] == [7] and rows[1]["accuracy"] > 0.95 and rows[1]["auc"] > 0.95
    noise = probe_features(np.delete(z, 7, axis=1), splits, [1])[0]
    assert noise["accuracy"] < 0.7 and rows[1]["accuracy"] > noise["accuracy"]
    s = splits["c:0"]
    assert s["y"][s["train"]].sum() * 2 == len(s["train"]) and s["y"][s["test"]].sum() * 2 == len(s["test"])


def test_task_parsing_labels_and_balance():
    values = {"a": torch.tensor([0, 1, 2, 3]), "b": torch.tensor([0, 0, 0, 0]), "c": torch.tensor([0, 1, 2, 3])}
    assert parse_task("c%3:0") == ("c", 3, ":", 0)
    assert task_labels(values, "c%2:0").tolist() == [True, False, True, False]
    assert task_labels(values, "c:3").tolist() == [False, False, False, True]
    assert task_labels(values, "a<2").tolist() == [True, True, False, False]
    rows = balanced_rows(np.array([True, False, False, False]), np.arange(4), 100, np.random.default_rng(0))
    assert len(rows) == 2 and 0 in rows
    for bad in ("d:1", "c%1:0", "c>3", "c==0"):
        with pytest.raises(HusaiError) as err:
            parse_task(bad)
        assert "\n" not in str(err.value)
    with pytest.raises(HusaiError, match="too few rows"):
        task_splits(values, ["b:1"], np.arange(2), np.arange(2, 4))


# ---------------------------------------------------------------- external harness (sae-bench)

@pytest.fixture
def hf_caches(tmp_path, monkeypatch):
    hub, ds = tmp_path / "hub", tmp_path / "datasets"
    hub.mkdir()
    ds.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(ds))
    folder = export_saelens(build_sae(SAEConfig(architecture="topk", d_in=8, d_sae=16, k=2)), tmp_path / "sae",
                            model_name="pythia-70m-deduped", hook_name="blocks.3.hook_resid_post")
    return hub, ds, folder


def _no_subprocess(*args, **kwargs):
    raise AssertionError("the preflight failed, so nothing may run")


def test_preflight_names_everything_missing_in_one_line(hf_caches, monkeypatch):
    hub, _, folder = hf_caches
    monkeypatch.setattr(saebench, "_installed", lambda module: module != "sae_bench")
    monkeypatch.setattr(subprocess, "run", _no_subprocess)
    res = saebench.run_saebench([folder, hub / "not-an-sae"], hub.parent / "out", ["core"])
    assert res["ran"] is False
    line = res["missing"]
    assert "\n" not in line and line.startswith("sae-bench harness not run; missing: sae-bench")
    assert "pythia-70m-deduped" in line and "Skylion007/openwebtext" in line and "not-an-sae" in line
    assert not (hub.parent / "out").exists()
    assert "none given" in saebench.missing_line(saebench.preflight([], ["core"]))
    with pytest.raises(HusaiError, match="unknown sae-bench evaluation"):
        saebench.preflight([folder], ["absorption"])


def test_harness_runs_offline_argument_lists_when_everything_is_local(hf_caches, monkeypatch):
    hub, ds, folder = hf_caches
    (hub / "models--EleutherAI--pythia-70m-deduped" / "snapshots" / "abc").mkdir(parents=True)
    (hub / "datasets--Skylion007--openwebtext" / "snapshots" / "abc").mkdir(parents=True)
    for name in saebench.EVALS["sparse_probing"]:
        (ds / name.replace("/", "___")).mkdir()
    monkeypatch.setattr(saebench, "_installed", lambda module: True)
    assert saebench.preflight([folder]) == []
    calls = []

    def fake_run(cmd, **kwargs):
        calls.append((cmd, kwargs))
        return subprocess.CompletedProcess(cmd, 0 if cmd[3] == "core" else 1, "", "trace\nValueError: boom\n")

    monkeypatch.setattr(subprocess, "run", fake_run)
    res = saebench.run_saebench([folder], hub.parent / "out")
    assert res["ran"] and [r["eval"] for r in res["runs"]] == ["core", "sparse_probing"]
    assert res["runs"][0]["error"] is None and res["runs"][1]["error"] == "ValueError: boom"
    for cmd, kwargs in calls:
        assert isinstance(cmd, list) and all(isinstance(a, str) for a in cmd) and not kwargs.get("shell")
        assert cmd[1:3] == ["-m", "husai_core.saebench"] and cmd[cmd.index("--model") + 1] == "pythia-70m-deduped"
        assert kwargs["env"]["HF_HUB_OFFLINE"] == "1" and kwargs["env"]["HF_DATASETS_OFFLINE"] == "1"


# ---------------------------------------------------------------- the notebook, smoke profile

@pytest.fixture(scope="module")
def smoke_run(smoke_runs, tmp_path_factory):
    """Phase 12 on a copy of the main job's smoke artifacts: phase 4's SAEs load by key."""
    from husai_core import runner

    base = tmp_path_factory.mktemp("evaluation")
    shutil.copytree(smoke_runs["base"] / "runs" / "artifacts" / "smoke", base / "runs" / "artifacts" / "smoke")
    with runs_env(base):
        res = runner.run_notebook("12_evaluation", "smoke")
    return {"base": base, "art": base / "runs" / "artifacts" / "smoke", "run": res}


def test_notebook_results_are_coherent(smoke_run):
    res, params = smoke_run["run"].results, yaml.safe_load((REPO / "params/smoke/12_evaluation.yaml").read_text())
    assert res["eval_rows"]["sae_heldout"] > 0 and res["eval_rows"]["task_test"] > 0
    faith, probes = res["faithfulness"]["sae_heldout"], res["probing"]
    conditions = ["trained", "gaussian_matched", "random_transformer"]
    assert list(faith["summary"]) == conditions and res["seeds"] == params["seeds"]
    gap = faith["ablated"]["zero"]["ce"] - faith["clean"]["ce"]
    for r in faith["per_seed"]:
        expected = (faith["ablated"]["zero"]["ce"] - r["ce_spliced"]) / gap if gap > 1e-9 else None
        assert r["loss_recovered_zero"] == pytest.approx(expected)
        assert 0 <= r["accuracy_spliced"] <= 1
    lr = faith["summary"]["trained"]["loss_recovered_zero"]
    gate = res["gate_inputs"]["loss_recovered"]
    assert gate["value"] == pytest.approx(lr["mean"]) and gate["ci"] == pytest.approx([lr["ci_low"], lr["ci_high"]])
    assert lr["ci_low"] <= lr["mean"] <= lr["ci_high"]
    assert res["gate_inputs"]["loss_recovered_mean_ablation"]["value"] == pytest.approx(
        faith["summary"]["trained"]["loss_recovered_mean"]["mean"])
    assert res["headline"]["loss recovered (zero abl.)"] == pytest.approx(lr["mean"])
    n_tasks, ks = len(probes["tasks"]), probes["k"]
    assert len(probes["per_seed"]) == len(conditions) * len(params["seeds"]) * n_tasks * len(ks)
    assert all(0 <= r["accuracy"] <= 1 and 0 <= r["auc"] <= 1 for r in probes["per_seed"] + probes["raw"])
    assert res["headline"]["probe accuracy (raw, all dims)"] == pytest.approx(probes["raw_mean"]["all"]["accuracy"])
    assert all(t["p_holm"] >= t["p"] - 1e-12 for t in probes["tests"].values() if t)
    assert res["external_harness"]["ran"] is False and "none given" in res["external_harness"]["missing"]
    html = (smoke_run["run"].run_dir / "report.html").read_text()
    assert html.count("Plotly.newPlot") >= 3


def test_rerun_with_load_only_gives_the_same_numbers(smoke_run, tmp_path):
    from husai_core.phases import evaluation

    params = yaml.safe_load((smoke_run["run"].run_dir / "params.yaml").read_text())
    again = evaluation.run(params, smoke_run["art"], load_only=True)
    assert again["headline"] == pytest.approx(smoke_run["run"].results["headline"])
    with pytest.raises(HusaiError, match="SAE .*seed") as err:
        evaluation.run({**params, "seeds": [7]}, smoke_run["art"], load_only=True)  # never trained
    assert "\n" not in str(err.value)
    with pytest.raises(HusaiError, match="eval_rows 'sae_heldout_task_test' is empty"):
        evaluation.run({**params, "eval_rows": ["sae_heldout_task_test"]}, smoke_run["art"], load_only=True)
    with pytest.raises(HusaiError, match="'blocks.0.hook_resid_pots'") as err:
        evaluation.run({**params, "hook": "blocks.0.hook_resid_pots"}, smoke_run["art"], load_only=True)
    assert "\n" not in str(err.value)
