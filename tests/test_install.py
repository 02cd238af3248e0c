"""`make install` with and without TORCH=cuXXX, read from `make -n` (a dry run: nothing installs)."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
TORCH = re.search(r"^torch==(\S+)$", (REPO / "requirements.txt").read_text(), re.M).group(1)


def dry_run(*args: str) -> subprocess.CompletedProcess:
    # -B: print every install command even where .venv is already installed
    return subprocess.run(["make", "-n", "-B", "-C", str(REPO), "install", *args], capture_output=True, text=True)


def pip_lines(*args: str) -> list[str]:
    out = dry_run(*args)
    assert out.returncode == 0, out.stderr
    return [line.strip() for line in out.stdout.splitlines() if "pip install" in line or "constraint" in line]


def test_default_install_is_the_pinned_requirements():
    assert pip_lines() == [
        ".venv/bin/python -m pip install -q --upgrade pip",
        ".venv/bin/python -m pip install -q -r requirements.txt",
        ".venv/bin/python -m pip install -q --no-deps -r requirements-nodeps.txt",
        ".venv/bin/python -m pip install -q --no-deps -e .",
    ]


@pytest.mark.parametrize("build", ["cu130", "cu126"])
def test_torch_build_is_installed_first_and_kept(build):
    index = f"https://download.pytorch.org/whl/{build}"
    assert pip_lines(f"TORCH={build}") == [
        ".venv/bin/python -m pip install -q --upgrade pip",
        f".venv/bin/python -m pip install -q torch=={TORCH}+{build} --index-url {index}",
        f"echo torch=={TORCH}+{build} > .venv/torch-constraint.txt",
        ".venv/bin/python -m pip install -q -r requirements.txt -c .venv/torch-constraint.txt",
        ".venv/bin/python -m pip install -q --no-deps -r requirements-nodeps.txt",
        ".venv/bin/python -m pip install -q --no-deps -e .",
    ]
    # its own stamp: switching TORCH reinstalls instead of trusting the CPU install
    assert f"touch .venv/.installed-{build}" in dry_run(f"TORCH={build}").stdout


def test_unknown_torch_build_fails_naming_the_choices():
    out = dry_run("TORCH=cu128")
    assert out.returncode != 0
    assert f"TORCH=cu128 is not a build of torch {TORCH}; choose one of cpu cu126 cu129 cu130 cu132" in out.stderr
