"""`husai compare` / ``husai_core.compare``: foreign SAEs through phase 4's analysis.

Checkpoints are written by the real packages (SAELens ``SAE.save_model``, sparsify
``SparseCoder.save_to_disk``, dictionary_learning's ``ae.pt`` + ``config.json`` as ``trainSAE``
writes them) and the SAEs compare reads are checked against the packages' own loaders.
Everything is tiny (d_in 16, d_sae 48, 3 seeds, a few hundred rows, few resamples).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from husai_core.comparison import metric_keys
from husai_core.compare import check_inputs, compare_saes, load_input, load_inputs, group_inputs, pretrained_spec
from husai_core.errors import HusaiError
from husai_core.io import to_jsonable
from husai_core.matching import METRICS
from husai_core.sae.synthetic import planted_dictionary
from husai_core.stats import ABSENT, INCONCLUSIVE, PRESENT

os.environ.setdefault("SPARSIFY_DISABLE_TRITON", "1")
sae_lens = pytest.importorskip("sae_lens")
sparsify = pytest.importorskip("sparsify")
dl = pytest.importorskip("dictionary_learning")

from dictionary_learning.trainers.top_k import AutoEncoderTopK  # noqa: E402
from dictionary_learning.utils import load_dictionary  # noqa: E402
from sae_lens import TopKSAE, TopKSAEConfig  # noqa: E402
from sae_lens.saes.sae import SAEMetadata  # noqa: E402
from sparsify import SparseCoder, SparseCoderConfig  # noqa: E402

D_IN, D_SAE, K = 16, 48, 4
SEEDS = (0, 1, 2)
HOOK = "blocks.0.hook_resid_post"
TOL = 1e-5
FAST = dict(n_resamples=50, null_params={"steps": 40, "batch_size": 64, "warmup_steps": 5, "log_every": 20})


# ====================================================================== checkpoints written by the real packages
def write_saelens(root: Path, seeds=SEEDS, d_in: int = D_IN, hook: str | None = HOOK) -> list[Path]:
    out = []
    for s in seeds:
        torch.manual_seed(s)
        meta = SAEMetadata(hook_name=hook, model_name="toy") if hook else SAEMetadata()
        sae = TopKSAE(TopKSAEConfig(d_in=d_in, d_sae=D_SAE, k=K, metadata=meta))
        with torch.no_grad():
            sae.b_enc.normal_(0.0, 0.1)
            sae.b_dec.normal_(0.0, 0.3)
        sae.save_model(root / f"seed{s}")
        out.append(root / f"seed{s}")
    return out


def write_sparsify(root: Path, seeds=SEEDS, d_in: int = D_IN) -> list[Path]:
    """sparsify's layout: one run folder per seed, one folder per hookpoint inside (we pass the run folder)."""
    out = []
    for s in seeds:
        torch.manual_seed(s)
        sae = SparseCoder(d_in, SparseCoderConfig(num_latents=D_SAE, k=K))
        with torch.no_grad():
            sae.encoder.bias.normal_(0.0, 0.3)
            sae.b_dec.normal_(0.0, 0.3)
            sae.set_decoder_norm_to_unit_norm()
        sae.save_to_disk(root / f"run{s}" / "layers.0")
        out.append(root / f"run{s}")
    return out


def write_dictionary_learning(root: Path, seeds=SEEDS) -> list[Path]:
    """What trainSAE writes per trainer: ``ae.pt`` (state dict) + ``config.json`` {"trainer": {...}}."""
    out = []
    for s in seeds:
        torch.manual_seed(s)
        ae = AutoEncoderTopK(D_IN, D_SAE, K)
        with torch.no_grad():
            ae.encoder.bias.normal_(0.0, 0.3)
            ae.b_dec.normal_(0.0, 0.3)
            ae.decoder.weight.div_(ae.decoder.weight.norm(dim=0, keepdim=True))
        folder = root / f"seed{s}" / "trainer_0"
        folder.mkdir(parents=True)
        torch.save({k: v.cpu() for k, v in ae.state_dict().items()}, folder / "ae.pt")
        trainer = {"dict_class": "AutoEncoderTopK", "k": K, "seed": 100 + s, "lm_name": "toy", "layer": 0,
                   "submodule_name": "resid_post_layer_0"}
        (folder / "config.json").write_text(json.dumps({"trainer": trainer}))
        out.append(root / f"seed{s}")
    return out


WRITERS = {"saelens": write_saelens, "sparsify": write_sparsify, "dictionary_learning": write_dictionary_learning}


def write_activations(folder: Path, d_in: int = D_IN, hook: str = HOOK, n: int = 480) -> Path:
    x, _ = planted_dictionary(n, d_in, 24, 3, seed=0, noise=0.05)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(x[: n // 2].clone(), folder / f"alpha_{hook}.pt")
    torch.save(x[n // 2 :].clone(), folder / f"beta_{hook}.pt")
    return folder


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    return {"root": root, "acts": write_activations(root / "acts"),
            **{fmt: [str(p) for p in w(root / fmt)] for fmt, w in WRITERS.items()}}


def one_line_error(fn, *needles: str) -> str:
    with pytest.raises(HusaiError) as info:
        fn()
    msg = str(info.value)
    assert msg.strip() and "\n" not in msg, msg
    for n in needles:
        assert n in msg, f"{n!r} not in {msg!r}"
    return msg


# ====================================================================== the loaded SAEs are the source library's
def _x(seed: int = 0) -> torch.Tensor:
    return torch.randn(40, D_IN, generator=torch.Generator().manual_seed(seed)) + 0.2


def test_loaded_saes_encode_and_decode_like_the_source_library(ckpts):
    x = _x()
    with torch.no_grad():
        for p in ckpts["saelens"]:
            theirs, ours = sae_lens.SAE.load_from_disk(p), load_input(p)
            assert ours.format == "saelens" and ours.hook == HOOK and ours.model == "toy"
            z = ours.sae.encode(x)
            assert float((z - theirs.encode(x)).abs().max()) < TOL
            assert float((ours.sae.decode(z) - theirs.decode(theirs.encode(x))).abs().max()) < TOL
        for p in ckpts["sparsify"]:
            theirs, ours = SparseCoder.load_from_disk(Path(p) / "layers.0"), load_input(p)
            assert ours.format == "sparsify" and ours.hook is None  # sparsify records no hook
            acts, idx, _ = theirs.encode(x)
            dense = torch.zeros(x.shape[0], D_SAE).scatter(-1, idx, acts)
            z = ours.sae.encode(x)
            assert float((z - dense).abs().max()) < TOL
            assert float((ours.sae.decode(z) - theirs.decode(acts, idx)).abs().max()) < TOL
        for s, p in zip(SEEDS, ckpts["dictionary_learning"]):
            theirs, _ = load_dictionary(str(Path(p) / "trainer_0"), "cpu")
            ours = load_input(p)
            assert ours.format == "dictionary_learning" and ours.seed == 100 + s
            assert ours.site == "lm_name=toy, layer=0, submodule_name=resid_post_layer_0"
            z = ours.sae.encode(x)
            assert float((z - theirs.encode(x)).abs().max()) < TOL
            assert float((ours.sae.decode(z) - theirs.decode(theirs.encode(x))).abs().max()) < TOL


# ====================================================================== the report
def assert_complete(result: dict, with_activations: bool, n_groups: int = 1) -> None:
    json.dumps(to_jsonable(result))  # JSON-able
    keys = metric_keys(with_activations)
    if not with_activations:
        keys = [k for k in keys if k.endswith("/all")]
    assert result["metric_keys"] == keys
    nulls = ["gaussian_matched", "isotropic"] if with_activations else ["isotropic"]
    assert result["nulls"] == nulls
    assert len(result["groups"]) == len(result["across"]) == n_groups
    for label, g in result["groups"].items():
        cmp = g["comparison"]
        assert set(cmp["table"]) == {"trained", *nulls}
        for cond in cmp["table"]:
            assert sorted(cmp["table"][cond]) == sorted(keys), cond
            for b in cmp["table"][cond].values():
                assert b["ci_low"] <= b["mean"] <= b["ci_high"] and b["n_seeds"] == 3
        for null in nulls:
            assert sorted(cmp["tests"][null]) == sorted(keys)
            for t in cmp["tests"][null].values():
                assert {"p_value", "lcb", "difference", "ratio", "verdict", "explanation", "test"} <= set(t)
                assert t["verdict"] in (PRESENT, ABSENT, INCONCLUSIVE)
        assert sorted(cmp["strongest"]) == sorted(keys)
        h = g["headline"]
        assert {"metric", "strongest_null", "verdict", "lcb", "p_value", "trained", "null", "by_null", "text"} <= set(h)
        assert set(h["by_null"]) == set(nulls)
        assert len(g["null_seeds"]) == 3 and not set(g["null_seeds"]) & set(g["recorded_seeds"])
        if with_activations:
            assert g["alive_headline"]["metric"].endswith("/alive")
            for cond in ("trained", *nulls):
                rows = g["reconstruction"][cond]
                assert len(rows) == 3 and all({"ev", "l0", "mse", "dead_fraction"} <= set(r) for r in rows)
            assert g["null_config"]["steps"] == 40
        else:
            assert g["alive_headline"] is None and g["reconstruction"] is None
    for row in result["across"]:
        assert {"group", "metric", "trained", "ci_low", "ci_high", "strongest_null", "lcb", "p", "verdict"} <= set(row)
        assert ("heldout_ev" in row) == with_activations
    assert {"verdict", "metric", "groups"} <= set(result["headline"])
    assert isinstance(result["verdict"], str) and result["verdict"]
    assert bool(result["skipped"]) != with_activations


@pytest.mark.parametrize("fmt", list(WRITERS))
def test_each_format_with_activations(ckpts, fmt, tmp_path):
    result = compare_saes(ckpts[fmt], activations=ckpts["acts"], artifacts=tmp_path / "art", **FAST)
    assert_complete(result, with_activations=True)
    assert result["grouping"] == "by configuration"  # one configuration; sparsify/dl run folders hold one seed each
    assert result["activations"]["kind"] == "foreign folder" and result["activations"]["hook"] == HOOK
    assert result["activations"]["datasets"] == {"alpha": 240, "beta": 240}
    assert result["d_in"] == D_IN and [i["format"] for i in result["inputs"]] == [fmt] * 3
    # the trained SAEs' reconstruction is the loaded SAE's own on the held-out rows
    (g,) = result["groups"].values()
    assert len({round(r["ev"], 6) for r in g["reconstruction"]["trained"]}) == 3


def test_without_activations_only_weight_metrics_against_isotropic(ckpts):
    result = compare_saes(ckpts["saelens"], n_resamples=50)
    assert_complete(result, with_activations=False)
    assert all(k.endswith("/all") and not k.startswith("activation_mcc") for k in result["metric_keys"])
    assert any("gaussian_matched" in s for s in result["skipped"])
    assert any("alive" in s for s in result["skipped"])
    assert result["activations"] is None and result["hook"] == HOOK
    assert {k.split("/")[0] for k in result["metric_keys"]} == set(METRICS) - {"activation_mcc"}
    one_line_error(lambda: compare_saes(ckpts["saelens"], n_resamples=50, headline_metric="activation_mcc/all"),
                   "activation_mcc/all", "without activations")


def test_mixed_formats_side_by_side_and_by_labels(ckpts, tmp_path):
    paths = ckpts["saelens"] + ckpts["sparsify"] + ckpts["dictionary_learning"]
    result = compare_saes(paths, activations=ckpts["acts"], artifacts=tmp_path / "art", **FAST)
    assert_complete(result, with_activations=True, n_groups=3)
    assert {tuple(g["formats"]) for g in result["groups"].values()} == {("saelens",), ("sparsify",),
                                                                        ("dictionary_learning",)}
    assert all("p_holm" in r for r in result["across"])  # several groups: Holm across them
    # labels regroup: one label per path, any mix of formats with one architecture and width
    labels = ["a", "b", "c"] * 3
    items = load_inputs(paths, labels)
    groups, how = group_inputs(items)
    assert how == "by the given labels" and list(groups) == ["a", "b", "c"]
    assert [i.format for i in groups["a"]] == ["saelens", "sparsify", "dictionary_learning"]
    assert check_inputs(paths, ",".join(labels).split(","))["groups"]["b"] == [paths[1], paths[4], paths[7]]
    one_line_error(lambda: load_inputs(paths, ["a", "b"]), "2 label(s)", "9 path(s)")


def test_same_config_in_two_folders_is_two_groups(ckpts, tmp_path):
    a = write_saelens(tmp_path / "runA", seeds=(0, 1))
    b = write_saelens(tmp_path / "runB", seeds=(0, 1))
    groups, how = group_inputs(load_inputs([str(p) for p in a + b]))
    assert how == "by configuration, split by source folder"
    assert [len(v) for v in groups.values()] == [2, 2]
    assert [lab.endswith("[runA]") for lab in groups] == [True, False]


# ====================================================================== bad input: one clear line
def test_incompatible_inputs(ckpts, tmp_path):
    wide = write_sparsify(tmp_path / "wide", seeds=(0, 1), d_in=8)
    msg = one_line_error(lambda: check_inputs(ckpts["saelens"] + [str(p) for p in wide]), "d_in=16", "d_in=8")
    assert ckpts["saelens"][0] in msg and str(wide[0]) in msg
    other_hook = write_saelens(tmp_path / "hook", seeds=(5, 6), hook="blocks.1.hook_resid_post")
    one_line_error(lambda: check_inputs(ckpts["saelens"] + [str(p) for p in other_hook]),
                   "blocks.0.hook_resid_post", "blocks.1.hook_resid_post", str(other_hook[0]))
    # activations of another width or hook
    narrow = write_activations(tmp_path / "narrow", d_in=8)
    one_line_error(lambda: check_inputs(ckpts["saelens"], activations=str(narrow)), "width 8", "d_in=16")
    elsewhere = write_activations(tmp_path / "elsewhere", hook="blocks.3.hook_mlp_out")
    one_line_error(lambda: check_inputs(ckpts["saelens"], activations=str(elsewhere)), "blocks.3.hook_mlp_out")
    one_line_error(lambda: compare_saes(ckpts["saelens"], activations=str(elsewhere), n_resamples=50),
                   "blocks.3.hook_mlp_out")


def test_unreadable_and_missing_inputs(ckpts, tmp_path):
    one_line_error(lambda: check_inputs([str(tmp_path / "nowhere"), ckpts["saelens"][0]]), "nowhere",
                   "no such file")
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("hello")
    one_line_error(lambda: check_inputs([str(junk)] + ckpts["saelens"]), "junk")
    broken = tmp_path / "broken"
    write_saelens(broken, seeds=(0,))
    (broken / "seed0" / "sae_weights.safetensors").write_bytes(b"not safetensors")
    one_line_error(lambda: check_inputs([str(broken / "seed0")] + ckpts["saelens"]), "broken")
    # a group with one SAE
    one_line_error(lambda: check_inputs(ckpts["saelens"][:1]), "single SAE", "2")
    one_line_error(lambda: check_inputs(ckpts["saelens"][:2] + ckpts["sparsify"][:1]), "single SAE",
                   ckpts["sparsify"][0])
    one_line_error(lambda: check_inputs(ckpts["saelens"][:1] * 2), "more than once")
    # activation sources
    one_line_error(lambda: check_inputs(ckpts["saelens"], activations=str(tmp_path / "none")),
                   "unknown activation source", "none")
    one_line_error(lambda: check_inputs(ckpts["saelens"], activations=str(junk)), "unknown activation source")
    one_line_error(lambda: check_inputs(ckpts["saelens"], hook=HOOK), "--activations")


def test_husai_cache_as_activation_source(ckpts, tmp_path):
    from husai_core.activations import save_cache

    x, _ = planted_dictionary(300, D_IN, 24, 3, seed=1)
    save_cache(tmp_path / "cache", {HOOK: x, "blocks.1.hook_resid_post": x.clone()}, {"c": torch.zeros(300)}, {})
    one_line_error(lambda: check_inputs(ckpts["saelens"], activations=str(tmp_path / "cache")), "--hook")
    one_line_error(lambda: check_inputs(ckpts["saelens"], activations=str(tmp_path / "cache"), hook="blocks.1.hook_resid_post"),
                   "blocks.1.hook_resid_post", HOOK)
    res = compare_saes(ckpts["saelens"], activations=tmp_path / "cache", hook=HOOK, artifacts=tmp_path / "art",
                       max_rows=200, **FAST)
    assert res["activations"]["kind"] == "husai cache"
    assert res["activations"]["n_rows"] == 200 and res["activations"]["n_rows_available"] == 300


# ====================================================================== SAELens pretrained: local cache only
def test_pretrained_saelens_only_from_the_local_cache(tmp_path, monkeypatch):
    import huggingface_hub.constants as hc
    from sae_lens import StandardSAE, StandardSAEConfig

    release, sae_id = "gpt2-small-res-jb", "blocks.0.hook_resid_pre"
    assert pretrained_spec(f"{release}/{sae_id}") == (release, sae_id)
    assert pretrained_spec(f"saelens:{release}/{sae_id}") == (release, sae_id)
    assert pretrained_spec("not-a-release/x") is None
    # a fake Hugging Face cache holding one tiny SAE under the release's repo
    repo = tmp_path / "hub" / "models--jbloom--GPT2-Small-SAEs-Reformatted"
    snap = repo / "snapshots" / ("a" * 40) / sae_id
    torch.manual_seed(0)
    theirs = StandardSAE(StandardSAEConfig(d_in=D_IN, d_sae=D_SAE, metadata=SAEMetadata(hook_name=sae_id,
                                                                                         model_name="gpt2-small")))
    theirs.save_model(snap)
    from safetensors.torch import save_file

    save_file({"sparsity": torch.zeros(D_SAE)}, snap / "sparsity.safetensors")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    loaded = load_input(f"{release}/{sae_id}")
    assert loaded.format == "saelens_pretrained" and loaded.hook == sae_id and loaded.model == "gpt2-small"
    x = _x()
    with torch.no_grad():
        assert float((loaded.sae.decode(loaded.sae.encode(x)) - theirs.decode(theirs.encode(x))).abs().max()) < TOL
    assert "HF_HUB_OFFLINE" not in os.environ  # restored after the call
    # not in the cache: one line, no network (offline mode)
    one_line_error(lambda: load_input(f"{release}/blocks.1.hook_resid_pre"), "local Hugging Face cache",
                   "HF_HUB_OFFLINE=1", "blocks.1.hook_resid_pre")
    one_line_error(lambda: load_input(f"saelens:{release}/no-such-id"), "no-such-id")


# ====================================================================== the CLI
@pytest.mark.parametrize("case", ["missing", "mixed_d_in", "single", "unreadable", "unknown_activations", "labels"])
def test_cli_bad_input_is_one_line_and_nonzero(ckpts, tmp_path, capsys, case):
    from husai_core.cli import main

    sl = ckpts["saelens"]
    junk = tmp_path / "junk"
    junk.mkdir()
    wide = [str(p) for p in write_sparsify(tmp_path / "wide", seeds=(0, 1), d_in=8)] if case == "mixed_d_in" else []
    argv = {"missing": sl + [str(tmp_path / "missing")], "mixed_d_in": sl + wide, "single": sl[:1],
            "unreadable": sl + [str(junk)], "unknown_activations": sl + ["--activations", str(junk)],
            "labels": sl + ["--labels", "a", "b"]}[case]
    assert main(["compare", *argv, "--profile", "smoke", "--no-index"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("husai: error: ") and "\n" not in err, err
    assert "Traceback" not in err


def test_cli_end_to_end_through_papermill(ckpts, tmp_path, capsys):
    from husai_core import runner
    from husai_core.cli import main

    out = tmp_path / "out"
    rc = main(["compare", *ckpts["saelens"], "--activations", str(ckpts["acts"]), "--out", str(out),
               "--profile", "smoke", "--no-index", "-p", "n_resamples=50",
               "-p", "null_params={steps: 40, batch_size: 64, warmup_steps: 5}", "--run-id", "cli-e2e"])
    assert rc == 0, capsys.readouterr().err
    run_dir = runner.runs_dir() / "10_compare" / "cli-e2e"
    for folder in (run_dir, out):
        assert (folder / "results.json").is_file() and (folder / "report.html").is_file()
    res = json.loads((out / "results.json").read_text())
    assert res["headline"]["verdict"] and res["verdict"] and res["headline"]["groups"] == 1
    assert res["paths"] == [str(Path(p).resolve()) for p in ckpts["saelens"]] and not res["demo"]
    assert res["nulls"] == ["gaussian_matched", "isotropic"]
    assert json.loads((run_dir / "manifest.json").read_text())["status"] == "ok"
    html = (out / "report.html").read_text()
    assert "plotly" in html.lower() and "Phase 10" in html
    assert str(run_dir) in capsys.readouterr().out


def test_demo_notebook_runs_self_contained(tmp_path):
    """`husai run 10_compare --profile smoke` on a fresh clone: no paths -> the demo (SAEs trained
    here on planted-dictionary rows, exported as SAELens files, compared with both nulls)."""
    from husai_core import runner

    res = runner.run_notebook("10_compare", "smoke", {"demo_steps": 60, "n_resamples": 50}, run_id="demo")
    r = res.results
    assert r["demo"] and r["headline"]["verdict"] and r["nulls"] == ["gaussian_matched", "isotropic"]
    assert r["paths"] == [f"demo/topk/seed{s}" for s in (0, 1, 2)]  # relative to the run folder
    for p in r["paths"]:
        assert (res.run_dir / p / "cfg.json").is_file()
    (g,) = r["groups"].values()
    assert g["ground_truth"]["n_directions"] == 32 and g["ground_truth"]["trained"]["counts"]
    assert (res.run_dir / "report.html").is_file()


def test_gaussian_null_with_another_sparsity_is_flagged(ckpts, tmp_path):
    res = compare_saes(ckpts["saelens"], activations=ckpts["acts"], artifacts=tmp_path / "art", n_resamples=50,
                       null_params={**FAST["null_params"], "k": 12})
    assert res["warnings"] and "not a matched null" in res["warnings"][0]
    assert not compare_saes(ckpts["saelens"], activations=ckpts["acts"], artifacts=tmp_path / "art", **FAST)["warnings"]
