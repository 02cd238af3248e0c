"""09_explorer in a real JupyterLab, driven by Playwright with the system Chromium (Debian package).

JupyterLab serves a copy of the notebook whose parameters point at test_explorer's tiny artifacts
tree; the test runs all cells from the Run menu, moves the k slider with the keyboard and checks
that the live FigureWidget now shows what ``husai_core.explorer`` computes for the new k.
Screenshots (and the server log on failure) go to ``tests/artifacts/`` (gitignored).
Locally the test skips when no ``chromium`` is installed; under CI (``CI`` set) that is a failure.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest
from papermill.iorw import load_notebook_node
from papermill.parameterize import parameterize_notebook
from playwright.sync_api import sync_playwright

from husai_core.experiments import config_id
from husai_core.explorer import config_summary
from test_explorer import SEEDS, TRAIN, build_tree, cfg_of, folder_of

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "tests" / "artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# No sandbox (root in a container), no GPU, and nothing that phones home.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
STATS = {"n_resamples": 200, "stats_seed": 0, "alpha": 0.05, "match_limit": 4096}
PARAMS = {"seeds": SEEDS, "architecture": "topk", "d_sae": 32, "k": 4, "steps": TRAIN["steps"],
          "batch_size": TRAIN["batch_size"], "lr": TRAIN["lr"], "sae_params": {"warmup_steps": TRAIN["warmup_steps"]},
          "k_values": [4, 8], "d_sae_values": [32, 64], "progress": False, **STATS}
# JupyterLab user settings: every cell stays in the DOM, no news / update toasts (no network).
LAB_SETTINGS = {"@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
                "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False}}

# The explorer's live figure: the plotly div inside the widget box (the static snapshot is not in one).
READ_FIGURE = """() => {
  const gd = [...document.querySelectorAll('.js-plotly-plot')].find(e => e.closest('.widget-vbox'));
  if (!gd || !gd.data) return null;
  const arr = v => (v == null ? [] : Array.from(v));
  return {title: (gd.layout.title && gd.layout.title.text) || '',
          traces: Object.fromEntries(gd.data.map(t => [t.name, {x: arr(t.x), y: arr(t.y),
            plus: arr(t.error_y && t.error_y.array), minus: arr(t.error_y && t.error_y.arrayminus)}]))};
}"""
ALL_CELLS_RAN = """() => {
  const p = [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')];
  return p.length > 0 && p.every(e => /\\[\\d+\\]/.test(e.textContent));
}"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare_root(root: Path, art: Path) -> Path:
    """The notebook twin with an injected parameters cell (as papermill does), in a folder of its own."""
    nb = load_notebook_node(str(REPO / "notebooks" / "09_explorer.ipynb"))  # papermill's reader: cells get tags
    nb.metadata.pop("jupytext", None)  # no pairing: JupyterLab must not write a .py beside it
    nb = parameterize_notebook(nb, {"artifacts_dir": str(art), **PARAMS})
    root.mkdir(parents=True)
    nbformat.write(nb, root / "09_explorer.ipynb")
    return root / "09_explorer.ipynb"


def lab_env(base: Path) -> dict[str, str]:
    """Jupyter config/data/runtime and JupyterLab settings in ``base``: the user's own never interfere."""
    for name, values in LAB_SETTINGS.items():
        path = base / "settings" / f"{name.replace(':', '/')}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    config = {"LabApp": {"news_url": None, "check_for_updates_class": "jupyterlab.NeverCheckForUpdate",
                         "extension_manager": "readonly",
                         "user_settings_dir": str(base / "settings"), "workspaces_dir": str(base / "workspaces")}}
    (base / "config").mkdir(parents=True, exist_ok=True)
    (base / "config" / "jupyter_server_config.json").write_text(json.dumps(config))
    env = {k: v for k, v in os.environ.items() if k != "PLOTLY_RENDERER"}  # the kernel picks as for a user
    env.update(JUPYTER_CONFIG_DIR=str(base / "config"), JUPYTER_DATA_DIR=str(base / "data"),
               JUPYTER_RUNTIME_DIR=str(base / "runtime"), IPYTHONDIR=str(base / "ipython"),
               JUPYTER_PREFER_ENV_PATH="1", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1",
               HUSAI_RUNS_DIR=str(base / "runs"), HUSAI_REPORTS_DIR=str(base / "reports"))
    return env


class Lab:
    """A JupyterLab server on a free local port; ``stop()`` shuts its kernels down too."""

    def __init__(self, root: Path, base: Path):
        self.port, self.token = free_port(), secrets.token_hex(16)
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = base / "jupyterlab.log"
        cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
               f"--ServerApp.port={self.port}", "--ServerApp.port_retries=0", f"--ServerApp.root_dir={root}",
               f"--IdentityProvider.token={self.token}", "--allow-root"]  # CI runs as root
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=lab_env(base), cwd=root)

    def api(self, path: str, method: str = "GET") -> bytes:
        req = urllib.request.Request(f"{self.url}/api/{path}", method=method,
                                     headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.read()

    def wait_ready(self, timeout: float = 120) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise AssertionError(f"JupyterLab exited with {self.proc.returncode}:\n{self.log()}")
            try:
                self.api("status")
                return
            except OSError:
                time.sleep(0.5)
        raise AssertionError(f"JupyterLab did not answer within {timeout:.0f} s:\n{self.log()}")

    def log(self, tail: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-tail:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.api("shutdown", "POST")  # stops the kernels, then the server
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()


@pytest.fixture
def chromium():
    if CHROMIUM:
        return CHROMIUM
    reason = "no system chromium on PATH (Debian: apt-get install -y chromium; .ci/run installs it)"
    if os.environ.get("CI"):
        pytest.fail(f"{reason}: CI must run the JupyterLab browser test")
    pytest.skip(reason)


def expected_view(art: Path, k: int) -> dict:
    """What the explorer shows for (topk, d_sae 32, k), from the library, without writing a summary file."""
    s = config_summary(folder_of(art, "topk", 32, k), seeds=SEEDS, persist=False, **STATS)
    return {"config_id": config_id(cfg_of("topk", 32, k)),
            "trained PWMCC": s["trained"], "random PWMCC": s["random"],
            "EV": s["per_seed"]["ev"], "L0": s["per_seed"]["l0"],
            "trained matched |cos|": s["match"]["trained"]["similarities"],
            "random matched |cos|": s["match"]["random"]["similarities"]}


def wait_for_title(page, text: str) -> None:
    """Until the live figure's title names ``text`` (the widget renders, and re-renders, asynchronously)."""
    page.wait_for_function(f"() => ({READ_FIGURE})()?.title.includes({json.dumps(text)})", timeout=60_000)


def assert_figure_shows(fig: dict, want: dict) -> None:
    assert want["config_id"] in fig["title"]
    t = fig["traces"]
    for name in ("trained PWMCC", "random PWMCC"):
        b = want[name]
        assert t[name]["y"] == pytest.approx([b["mean"]], abs=1e-6), name
        assert t[name]["plus"] == pytest.approx([b["ci_high"] - b["mean"]], abs=1e-6), name
        assert t[name]["minus"] == pytest.approx([b["mean"] - b["ci_low"]], abs=1e-6), name
    for name in ("EV", "L0"):
        assert t[name]["y"] == pytest.approx(want[name], abs=1e-6), name
        assert t[name]["x"] == [f"seed {s}" for s in SEEDS]
    for name in ("trained matched |cos|", "random matched |cos|"):
        assert t[name]["x"] == pytest.approx(want[name], abs=1e-6), name


def test_explorer_in_jupyterlab_follows_the_k_slider(chromium, tmp_path):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for old in ARTIFACTS.glob("lab_explorer_*"):  # no stale screenshot or failure log from an earlier run
        old.unlink()
    art = build_tree(tmp_path / "artifacts")
    before, after = expected_view(art, 4), expected_view(art, 8)
    assert before["trained PWMCC"]["mean"] != pytest.approx(after["trained PWMCC"]["mean"])  # the move is visible
    prepare_root(tmp_path / "lab", art)
    lab = Lab(tmp_path / "lab", tmp_path)
    try:
        lab.wait_ready()
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1500})
            page.set_default_timeout(120_000)
            try:
                page.goto(f"{lab.url}/lab/tree/09_explorer.ipynb?token={lab.token}")
                page.locator("#jp-main-statusbar").get_by_text(re.compile(r"\|\s*Idle")).wait_for()
                page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
                page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()
                page.wait_for_function(ALL_CELLS_RAN)

                # the last cell wrote results.json: every cell ran without an error
                results = json.loads((tmp_path / "runs" / "09_explorer" / "interactive" / "results.json").read_text())
                assert results["explorer_state"]["config_id"] == before["config_id"]
                box = page.locator(".widget-vbox").filter(has=page.locator(".js-plotly-plot")).first
                box.scroll_into_view_if_needed()
                wait_for_title(page, before["config_id"])
                assert_figure_shows(page.evaluate(READ_FIGURE), before)
                box.screenshot(path=ARTIFACTS / "lab_explorer_k4.png")

                k = box.locator(".widget-slider").filter(has=page.locator(".widget-label", has_text=re.compile(r"^k$")))
                k.locator(".noUi-handle").focus()
                k.locator(".noUi-handle").press("ArrowRight")
                wait_for_title(page, after["config_id"])
                assert k.locator(".widget-readout").inner_text().strip() == "8"
                assert_figure_shows(page.evaluate(READ_FIGURE), after)
                box.screenshot(path=ARTIFACTS / "lab_explorer_k8.png")
                page.screenshot(path=ARTIFACTS / "lab_explorer_page.png")
            except Exception:
                page.screenshot(path=ARTIFACTS / "lab_explorer_failure.png")
                raise
            finally:
                browser.close()
    except Exception:
        shutil.copy(lab.log_path, ARTIFACTS / "lab_explorer_jupyterlab.log")
        raise
    finally:
        lab.stop()
    print(f"screenshots: {ARTIFACTS}/lab_explorer_k4.png, lab_explorer_k8.png, lab_explorer_page.png")
