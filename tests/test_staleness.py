"""Nothing stale is reused or shown (issue 8, point 10).

- resume reruns a phase when its parameters, its code or any upstream run changed, and says why;
- reports of other profiles never replace the full profile's index;
- the explorer never pools seeds trained on different data, and its persisted summaries are
  keyed on the checkpoints' contents.

The runner tests replace papermill's execution with a stub that writes ``results.json`` (the
real notebooks only provide their parameter cells), so they check the bookkeeping in seconds.
"""

import os
import re
import shutil

import nbformat
import numpy as np
import pytest
import torch

from husai_core import explorer as ex_mod
from husai_core import report, runner, store
from husai_core.activations import save_cache
from husai_core.errors import HusaiError
from husai_core.io import read_json, write_json

# ---------------------------------------------------------------- stub runs

# the main job's phases: transformer, activations, the per-seed SAE phase, the analysis
P1, P2, P3, P4 = (name for name, _ in runner.MAIN_JOB)
assert [per_seed for _, per_seed in runner.MAIN_JOB] == [False, False, True, False]


@pytest.fixture
def stub_runs(tmp_path, monkeypatch):
    """Runs and reports in tmp_path; papermill and HTML rendering replaced by fast stubs."""
    import papermill

    monkeypatch.setenv("HUSAI_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("HUSAI_REPORTS_DIR", str(tmp_path / "reports"))
    calls = []

    def execute(nb, output_path, parameters, **kwargs):
        work = os.path.dirname(output_path)
        name = os.path.basename(os.path.dirname(work))
        label = name + (f"-seed{parameters['seed']}" if name == P3 else "")
        calls.append(label)
        nbformat.write(nbformat.v4.new_notebook(), output_path)
        write_json(os.path.join(parameters["run_dir"], "results.json"),
                   {"headline": {"phase": label, "profile": parameters["profile"], "call": len(calls)}})

    def render(notebook_path, html_path, title=None):
        with open(html_path, "w") as f:
            f.write(f"<html>{title}</html>")

    monkeypatch.setattr(papermill, "execute_notebook", execute)
    monkeypatch.setattr(report, "render_html", render)
    return {"calls": calls, "base": tmp_path}


def main_job(profile="smoke", resume=False):
    lines = []
    results = runner.run_main_job(profile, resume=resume, echo=lines.append)
    return results, {line.split(": ", 1)[0].removeprefix("[husai] "): line.split(": ", 1)[1]
                     for line in lines if "done in" not in line and "report index" not in line}


def by_name(results):
    return {r.manifest["notebook"] + (f"-seed{r.manifest['seed']}" if r.manifest.get("seed") is not None else ""): r
            for r in results}


def test_manifest_records_code_version_and_upstream_runs(stub_runs):
    results, _ = main_job()
    runs = by_name(results)
    seeds = runner.pipeline_seeds("smoke")
    assert len(stub_runs["calls"]) == len(runs) == 3 + len(seeds)
    ids = {k: r.manifest["run_id"] for k, r in runs.items()}
    assert runs[P1].manifest["upstream"] == {}
    assert runs[P2].manifest["upstream"] == {P1: [ids[P1]]}
    for s in seeds:
        assert runs[f"{P3}-seed{s}"].manifest["upstream"] == {
            P1: [ids[P1]], P2: [ids[P2]]}
    assert runs[P4].manifest["upstream"] == {
        P1: [ids[P1]], P2: [ids[P2]],
        P3: [ids[f"{P3}-seed{s}"] for s in seeds]}
    for r in runs.values():
        path = runner.resolve_notebook(r.manifest["notebook"])
        assert r.manifest["code_version"] == store.run_code_version(path)
        assert read_json(r.run_dir / "manifest.json")["upstream"] == r.manifest["upstream"]
    # a standalone run records the latest finished upstream runs, the same ids
    alone = runner.run_notebook(P4, "smoke", {"seeds": seeds})
    assert alone.manifest["upstream"] == runs[P4].manifest["upstream"]
    assert alone.manifest["run_id"] != ids[P4]  # run ids are unique per notebook, even within one second


def test_resume_skips_only_what_is_unchanged_and_says_why(stub_runs, monkeypatch):
    calls = stub_runs["calls"]
    first, _ = main_job()
    n = len(calls)

    results, lines = main_job(resume=True)
    assert len(calls) == n and lines == {name: "skipped (unchanged)" for name, _ in runner.MAIN_JOB}
    assert [r.run_dir for r in results] == [r.run_dir for r in first]
    assert all(r.resume == runner.SKIPPED for r in results)

    # phase 01 reran on its own (same parameters): everything after it reruns
    runner.run_notebook(P1, "smoke")
    n = len(calls)
    _, lines = main_job(resume=True)
    assert lines[P1] == "skipped (unchanged)"
    assert lines[P2] == f"rerun: upstream changed ({P1})"
    assert lines[P3] == f"rerun: upstream changed ({P1}, {P2})"
    assert lines[P4] == f"rerun: upstream changed ({P1}, {P2}, {P3})"
    assert sorted(calls[n:]) == sorted([P2, P4]
                                       + [f"{P3}-seed{s}" for s in runner.pipeline_seeds("smoke")])

    # one seed of the per-seed phase reran: only that phase's consumer reruns
    seeds = runner.pipeline_seeds("smoke")
    runner.run_notebook(P3, "smoke", {"seed": seeds[0]})
    n = len(calls)
    _, lines = main_job(resume=True)
    assert lines[P3] == "skipped (unchanged)"
    assert lines[P4] == f"rerun: upstream changed ({P3})"
    assert calls[n:] == [P4]

    # other parameters for one seed: that seed reruns, and the line names it
    runner.run_notebook(P3, "smoke", {"seed": seeds[-1], "k": 3})
    _, lines = main_job(resume=True)
    others = ", ".join(map(str, seeds[:-1]))
    assert lines[P3] == (f"rerun: seed {seeds[-1]}: parameters changed; "
                                        f"seed{'s' if len(seeds) > 2 else ''} {others} skipped (unchanged)")

    # the notebook of phase 02 was edited: 02 reruns for its code, 03 and 04 for their upstream
    real = store.run_code_version
    monkeypatch.setattr(store, "run_code_version",
                        lambda *files: "edited" if any(P2 in str(f) for f in files) else real(*files))
    n = len(calls)
    _, lines = main_job(resume=True)
    assert lines[P1] == "skipped (unchanged)" and lines[P2] == "rerun: code changed"
    assert lines[P3] == f"rerun: upstream changed ({P2})"
    assert calls[n] == P2 and P1 not in calls[n:]

    # library code changed: every phase reruns
    monkeypatch.setattr(store, "run_code_version", real)
    monkeypatch.setattr(store, "code_version", lambda kind: "library-edited")
    _, lines = main_job(resume=True)
    assert lines == {name: "rerun: code changed" for name, _ in runner.MAIN_JOB}


def test_resume_of_a_single_notebook_and_the_cli_line(stub_runs, capsys):
    from husai_core import cli

    main_job()
    before = len(stub_runs["calls"])
    res = runner.run_notebook(P2, "smoke", resume=True)
    assert res.resume == runner.SKIPPED and len(stub_runs["calls"]) == before
    assert runner.plan_run(P2, "smoke", {"spectrum_components": 8}) == (None, "rerun: parameters changed")
    assert cli.main(["run", P2, "--profile", "smoke", "--resume", "--no-index"]) == 0
    assert f"{P2}: skipped (unchanged)" in capsys.readouterr().out
    runner.run_notebook(P1, "smoke")
    assert cli.main(["run", P2, "--profile", "smoke", "--resume", "--no-index"]) == 0
    assert f"{P2}: rerun: upstream changed ({P1})" in capsys.readouterr().out
    # a run without code version (made before this bookkeeping) is never reused
    latest = runner.finished_runs(P2, "smoke")[0][0]
    m = read_json(latest / "manifest.json")
    write_json(latest / "manifest.json", {k: v for k, v in m.items() if k != "code_version"})
    assert runner.plan_run(P2, "smoke") == (None, "rerun: no code version recorded")


def test_a_smoke_run_never_replaces_the_full_report_index(stub_runs, monkeypatch):
    reports = stub_runs["base"] / "reports"
    real = runner.load_profile  # both profiles take the smoke values: only the bookkeeping differs
    monkeypatch.setattr(runner, "load_profile", lambda notebook, profile: real(notebook, "smoke"))
    main_job("full")
    index = (reports / "index.html").read_text()
    full_report = (reports / f"{P1}.html").read_text()
    assert "full-" in full_report and "smoke" not in index.replace("smoke profile", "")
    stamp = (reports / "index.html").stat().st_mtime_ns

    main_job("smoke")
    assert (reports / "index.html").read_text() == index and (reports / "index.html").stat().st_mtime_ns == stamp
    assert (reports / f"{P1}.html").read_text() == full_report
    smoke_index = (reports / "smoke" / "index.html").read_text()
    assert f'href="{P1}.html"' in smoke_index and "smoke-" in (reports / "smoke" / f"{P1}.html").read_text()
    assert "<td>smoke</td>" in smoke_index and "<td>full</td>" not in smoke_index

    def content(text):  # the index without its build time
        return re.sub(r"Built [0-9: -]+\.", "", text)

    paths = report.build_indexes()  # `husai index`: every profile rebuilt, still separate
    assert paths == {"full": reports / "index.html", "smoke": reports / "smoke" / "index.html"}
    assert content((reports / "index.html").read_text()) == content(index)
    assert "<td>smoke</td>" not in (reports / "index.html").read_text()
    assert (reports / f"{P1}.html").read_text() == full_report
    with pytest.raises(HusaiError, match="cannot name a reports folder"):
        report.profile_reports_dir("../x", reports)


# ---------------------------------------------------------------- explorer: never pool seeds across data

HOOK = "blocks.0.hook_resid_post"
TRAIN = {"steps": 30, "batch_size": 64, "lr": 1e-3, "warmup_steps": 5}
D_IN = 16


def _data(seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(256, D_IN, generator=g) @ torch.randn(D_IN, D_IN, generator=g)


@pytest.fixture
def retrained_tree(tmp_path):
    """Seeds 1-3 trained on cache A; then the cache became B and only seed 2 was retrained."""
    from husai_core.experiments import sae_config, sae_dir, train_or_load_saes

    ex_mod.clear_summary_memo()
    art = tmp_path / "artifacts"
    cfg = sae_config(D_IN, {**TRAIN, "architecture": "topk", "d_sae": 32, "k": 4})
    folder = sae_dir(art, "default", HOOK, cfg)
    a, b = _data(0), _data(1)
    save_cache(art / "activations" / "default", {HOOK: a}, {"c": torch.arange(256)}, {"note": "cache A"})
    train_or_load_saes(folder, cfg, a, [1, 2, 3])
    save_cache(art / "activations" / "default", {HOOK: b}, {"c": torch.arange(256)}, {"note": "cache B"})
    train_or_load_saes(folder, cfg, b, [2])
    return {"art": art, "folder": folder, "a": store.tensor_fingerprint(a), "b": store.tensor_fingerprint(b)}


def test_explorer_never_pools_seeds_trained_on_different_data(retrained_tree):
    t, folder = retrained_tree, retrained_tree["folder"]
    assert read_json(folder / "seed2" / "metrics.json")["data_fingerprint"] == t["b"]
    with pytest.warns(UserWarning, match=r"seed\(s\) \[1, 3\] were trained on other data"):
        grid = ex_mod.scan_grid(t["art"])
    row = grid.iloc[0]
    assert len(grid) == 1 and row.seeds == [2] and row.stale_seeds == [1, 3] and row.data_fingerprint == t["b"]
    assert row.ev == pytest.approx(read_json(folder / "seed2" / "metrics.json")["ev"])  # seed 2 alone
    assert [g["seeds"] for g in ex_mod.seed_groups(folder)] == [[2], [1, 3]]
    with pytest.raises(HusaiError, match=r"needs at least 2 finished seeds.*seeds \[1, 3\] were trained on other data"):
        ex_mod.config_summary(folder, n_resamples=100)
    with pytest.raises(HusaiError, match="trained on different data or code.*never pools"):
        ex_mod.config_summary(folder, [1, 2, 3], n_resamples=100)
    old = ex_mod.config_summary(folder, [1, 3], n_resamples=100)  # one training: fine
    assert old["data_fingerprint"] == t["a"]

    # the explorer shows seed 2 only; Train retrains seeds 1 and 3 on the current cache
    with pytest.warns(UserWarning, match="trained on other data"):
        ex = ex_mod.Explorer(t["art"], "default", HOOK, seeds=[1, 2, 3], train_params=TRAIN, n_resamples=100,
                             architecture="topk", d_sae=32, k=4)
    assert ex.state["seeds_cached"] == [2] and ex.state["seeds_missing"] == [1, 3]
    assert ex.state["stale_seeds"] == [1, 3] and ex.state["status"] == "not cached" and not ex.train_button.disabled
    ex.train_button.click()
    assert ex.state["status"] == "cached" and ex.state["seeds_cached"] == [1, 2, 3] and ex.state["stale_seeds"] == []
    assert ex.state["data_fingerprint"] == ex.summary["data_fingerprint"] == t["b"]
    assert {read_json(folder / f"seed{s}" / "metrics.json")["data_fingerprint"] for s in (1, 2, 3)} == {t["b"]}
    assert ex.summary["trained"]["mean"] != pytest.approx(old["trained"]["mean"])


def test_persisted_summary_is_keyed_on_checkpoint_contents(retrained_tree, monkeypatch):
    from husai_core.consistency import pwmcc_matrix
    from husai_core.sae import load_sae

    folder = retrained_tree["folder"]
    first = ex_mod.config_summary(folder, [1, 3], n_resamples=100)
    stored = read_json(folder / ex_mod.SUMMARY_FILE)["fingerprint"]
    assert sorted(stored["data"]) == ["seed1", "seed3"]
    assert {v[0] for v in stored["data"].values()} == {retrained_tree["a"]}  # the data fingerprints
    assert set(stored["files"]) == {f"seed{s}/{f}" for s in (1, 3) for f in ("sae.safetensors", "metrics.json")}
    calls = []
    real = ex_mod.summary._compute_summary
    monkeypatch.setattr(ex_mod.summary, "_compute_summary", lambda *a: calls.append(a) or real(*a))
    # seed 3 is replaced by another checkpoint of the same size, with size and mtime restored
    path = folder / "seed3" / "sae.safetensors"
    st = path.stat()
    shutil.copyfile(folder / "seed1" / "sae.safetensors", path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns
    again = ex_mod.config_summary(folder, [1, 3], n_resamples=100)  # not the memo, not the file
    assert len(calls) == 1
    decs = [load_sae(folder / f"seed{s}").W_dec.detach() for s in (1, 3)]
    assert again["trained"]["mean"] == pytest.approx(float(pwmcc_matrix(decs)[0, 1]), abs=1e-6)
    assert again["trained"]["mean"] != pytest.approx(first["trained"]["mean"])
    ex_mod.clear_summary_memo()
    assert ex_mod.config_summary(folder, [1, 3], n_resamples=100)["trained"] == again["trained"] and len(calls) == 1
    assert np.isfinite(again["ratio"])


def test_main_job_says_when_each_phase_starts_and_ends_and_what_is_left(stub_runs):
    seeds = runner.pipeline_seeds("smoke")
    first = []
    runner.run_main_job("smoke", echo=first.append)
    for name, _ in runner.MAIN_JOB:
        assert sum(line.startswith(f"[husai] {name}: start (phase ") for line in first) == 1, name
        assert sum(line.startswith(f"[husai] {name}: done in ") for line in first) == 1, name
    assert "time left unknown: no earlier smoke run of " + ", ".join(n for n, _ in runner.MAIN_JOB) in first[0]
    assert sum(f"[husai] {P3}: seed " in line for line in first) == len(seeds)
    # the next run estimates from this one's manifests
    walls = runner.phase_estimates("smoke", seeds)
    assert walls[P3] == pytest.approx(sum(runner.finished_runs(P3, "smoke", s, per_seed=True)[0][1]["wall_seconds"]
                                          for s in seeds))
    second = []
    runner.run_main_job("smoke", echo=second.append)
    assert "left, from the last smoke run's times)" in second[0]
    assert second[-1].startswith("[husai] report index: ") and "(main job took " in second[-1]
