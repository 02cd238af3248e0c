"""Visible progress: a notebook's bars and printed lines reach the terminal of `husai run`, not the tests'."""

import io

import nbformat
import pytest

from husai_core import progress, runner

TINY = '''# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% tags=["parameters"]
profile = "smoke"
run_dir = None
artifacts_dir = None
progress = False

# %%
from husai_core.progress import tqdm
from husai_core.report import record_results

for _ in tqdm(range(3), desc="tiny bar", disable=not progress):
    pass
print("hello from the kernel")
record_results(run_dir, {"headline": {"progress": progress}, "artifacts": artifacts_dir})
'''


@pytest.fixture
def tiny(tmp_path):
    path = tmp_path / "99_tiny.py"
    path.write_text(TINY)
    return path


def test_kernel_output_reaches_the_terminal_only_when_asked(tiny, capfd):
    loud = runner.run_notebook(str(tiny), "smoke", render=False, log_output=True)
    out, err = capfd.readouterr()
    assert loud.results["headline"]["progress"] is True
    assert "hello from the kernel" in out and "tiny bar" in err
    assert "without encryption" not in out + err  # the kernel's channels are encrypted
    # the executed notebook keeps each stream once, the bar in its final state
    cell = nbformat.read(loud.run_dir / "notebook.ipynb", as_version=4).cells[-1]
    streams = [o for o in cell.outputs if o.output_type == "stream"]
    assert len({o.name for o in streams}) == len(streams) and all("\r" not in o.text[:-1] for o in streams)

    quiet = runner.run_notebook(str(tiny), "smoke", render=False)
    out, err = capfd.readouterr()
    assert quiet.results["headline"]["progress"] is False
    assert "hello from the kernel" not in out + err and "tiny bar" not in out + err
    assert not quiet.results["artifacts"].startswith("/")  # stored relative to the runs folder


def test_text_bars_only_inside_a_runner_kernel(monkeypatch):
    from tqdm.std import tqdm as text_bar

    monkeypatch.setenv("HUSAI_PROGRESS", "text")
    with progress.tqdm(range(2), file=io.StringIO()) as bar:
        assert type(bar) is text_bar and bar.mininterval == progress.MININTERVAL and not bar.leave
    monkeypatch.delenv("HUSAI_PROGRESS")
    with progress.tqdm(range(2), file=io.StringIO()) as bar:
        assert bar.mininterval != progress.MININTERVAL
