"""The explore notebook as a person sees it: a real JupyterLab, driven in headless Chromium.

JupyterLab serves the repository root from the project's venv, on loopback with a token, the
way the README starts it; Chromium is Debian's `chromium` (scripts/test-apt-packages.txt),
driven by Playwright's Python package pointed at that binary (no downloaded browser). The
notebook reads the runs committed under results/ and writes nothing; autosave is switched off
and the test checks that the notebook file is left as it was.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from mateperf.host import REPO_ROOT

pytestmark = pytest.mark.slow

NOTEBOOK = "notebooks/00_explore.ipynb"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",  # CI runs as root, where Chromium's sandbox refuses to start
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# JupyterLab settings for the test's own user: no autosave (running cells makes the notebook
# dirty, and the tracked file must stay as committed), and every cell in the DOM (by default
# cells scrolled out of view are not rendered, so their widgets could not be found).
LAB_SETTINGS = {
    "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
        "fetchNews": "false",
        "checkForUpdates": False,
    },
}
START_S = 90
RUN_S = 120


def chromium_path() -> str | None:
    found = os.environ.get("MATEPERF_CHROMIUM") or shutil.which("chromium")
    if found:
        return found
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").is_file() else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def jupyterlab(tmp_path_factory):
    """A JupyterLab server on a free loopback port; yields its base URL and token."""
    tmp_path = tmp_path_factory.mktemp("jupyterlab")
    port, token = free_port(), secrets.token_hex(16)
    home = tmp_path / "jupyter"
    settings = home / "settings"
    for name, value in LAB_SETTINGS.items():
        path = settings / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value), encoding="utf-8")
    env = {
        **os.environ,
        "JUPYTER_CONFIG_DIR": str(home / "config"),
        "JUPYTER_DATA_DIR": str(home / "data"),
        "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
        "JUPYTER_PLATFORM_DIRS": "1",
    }
    log_path = tmp_path / "jupyterlab.log"
    cmd = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        "--allow-root",  # CI runs as root
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={REPO_ROOT}",
        f"--LabApp.user_settings_dir={settings}",
        f"--LabApp.workspaces_dir={home / 'workspaces'}",
        "--LabApp.expose_app_in_browser=True",  # window.jupyterapp: the model's dirty flag
        "--LabApp.news_url=",
    ]
    with open(log_path, "w", encoding="utf-8") as log:
        server = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=log, stderr=log)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_S
        while True:
            if server.poll() is not None:
                pytest.fail(f"JupyterLab exited: {log_path.read_text(encoding='utf-8')[-3000:]}")
            try:
                with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=5):
                    break
            except (urllib.error.URLError, OSError):
                if time.monotonic() > deadline:
                    pytest.fail(f"JupyterLab did not answer on {base} within {START_S} s")
                time.sleep(0.5)
        yield base, token
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@pytest.fixture(scope="module")
def chromium_page(tmp_path_factory):
    """A page in headless Chromium with a fresh profile; skips where Chromium cannot start."""
    tmp_path = tmp_path_factory.mktemp("chromium")
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    exe = chromium_path()
    if exe is None:
        pytest.skip("no Chromium: install Debian's chromium (scripts/test-apt-packages.txt)")
    with sync_playwright() as pw:
        try:
            context = pw.chromium.launch_persistent_context(
                str(tmp_path / "chromium-profile"),
                executable_path=exe,
                headless=True,
                args=CHROMIUM_ARGS,
                viewport={"width": 1400, "height": 1100},
            )
        except PlaywrightError as exc:
            pytest.skip(f"Chromium at {exe} did not start: {str(exc).splitlines()[0]}")
        try:
            page = context.pages[0] if context.pages else context.new_page()
            yield page
        finally:
            context.close()


# The notebook panel in front, through the app JupyterLab exposes to the page.
PANEL = "window.jupyterapp.shell.currentWidget"
KERNEL_READY = f"""async () => {{
  const w = {PANEL};
  if (!w || !w.sessionContext) return false;
  await w.context.ready;
  await w.sessionContext.ready;
  const kernel = w.sessionContext.session && w.sessionContext.session.kernel;
  if (!kernel) return false;
  await kernel.info;
  await kernel.spec;
  return kernel.status === "idle";
}}"""
# Every code cell executed (a number, not "*"), the kernel idle again.
ALL_RAN = f"""() => {{
  const w = {PANEL};
  const cells = Array.from(w.model.cells).filter(c => c.type === "code");
  const kernel = w.sessionContext.session.kernel;
  return kernel.status === "idle" && cells.every(c => typeof c.executionCount === "number")
    && w.content.widgets.every(c => !c.node.querySelector(".jp-InputPrompt")
      || !c.node.querySelector(".jp-InputPrompt").textContent.includes("*"));
}}"""
ERRORS = f"""() => {{
  const w = {PANEL};
  const out = [];
  for (const c of w.model.cells) {{
    if (c.type !== "code") continue;
    for (const o of c.outputs.toJSON()) {{
      if (o.output_type === "error") out.push(o.ename + ": " + o.evalue);
      if (o.output_type === "stream" && o.name === "stderr") out.push("stderr: " + o.text);
    }}
  }}
  return out;
}}"""


def open_unmodified(page, path: str, committed: bytes) -> None:
    """Open a notebook in the running JupyterLab, wait for its kernel, and check that opening
    did not modify it.

    JupyterLab writes the kernel's kernelspec and language_info into the notebook's metadata
    when the kernel connects; a committed notebook whose metadata differs is marked modified
    at once, and autosave would rewrite it.
    """
    page.evaluate(
        "async p => { await window.jupyterapp.commands.execute('docmanager:open', {path: p}); }",
        path,
    )
    page.wait_for_function(
        f"p => {PANEL} && {PANEL}.context && {PANEL}.context.path === p", arg=path
    )
    page.wait_for_selector(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Cell")
    page.wait_for_function(KERNEL_READY, timeout=START_S * 1000, polling=500)
    page.wait_for_timeout(500)  # the metadata update follows the kernel's info reply
    opened = page.evaluate(f"{PANEL}.model.toJSON().metadata")
    on_disk = json.loads(committed)["metadata"]
    if opened["language_info"]["version"] == on_disk["language_info"]["version"]:
        assert page.evaluate(f"{PANEL}.model.dirty") is False, f"opening modified {path}"
        assert page.locator(".lm-TabBar-tab.jp-mod-current.jp-mod-dirty").count() == 0
    else:  # a kernel on another Python than the committed notebooks': only its version differs
        on_disk["language_info"]["version"] = opened["language_info"]["version"]
        assert opened == on_disk


def open_lab(page, base: str, token: str) -> None:
    page.goto(f"{base}/lab?token={token}&reset")
    page.wait_for_function("() => window.jupyterapp", timeout=START_S * 1000)
    page.evaluate("async () => { await window.jupyterapp.restored; }")
    page.wait_for_selector("#jp-main-dock-panel", timeout=START_S * 1000)


def test_opening_the_phase_notebooks_leaves_them_unmodified(jupyterlab, chromium_page):
    base, token = jupyterlab
    page = chromium_page
    open_lab(page, base, token)
    for path in sorted((REPO_ROOT / "notebooks").glob("0[1-9]_*.ipynb")):
        committed = path.read_bytes()
        open_unmodified(page, path.relative_to(REPO_ROOT).as_posix(), committed)
        # close it and shut its kernel down, unsaved: the next notebook starts its own
        page.evaluate(f"{PANEL}.sessionContext.shutdown()")
        page.evaluate(f"{PANEL}.dispose()")
        assert path.read_bytes() == committed


def test_explore_notebook_runs_in_jupyterlab(jupyterlab, chromium_page, tmp_path):
    base, token = jupyterlab
    page = chromium_page
    notebook = REPO_ROOT / NOTEBOOK
    committed = notebook.read_bytes()
    started = time.perf_counter()

    open_lab(page, base, token)
    open_unmodified(page, NOTEBOOK, committed)

    page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
    page.wait_for_function(ALL_RAN, timeout=RUN_S * 1000, polling=500)

    assert page.evaluate(ERRORS) == []
    assert page.locator('[data-mime-type="application/vnd.jupyter.stderr"]').count() == 0
    # the newest reports, linked for JupyterLab to open
    assert page.locator('.jp-RenderedMarkdown a[href*="FINAL_RESULTS.md"]').count() == 1

    # the three dropdowns of the last cell render as widgets, and so does its plot
    last = page.locator(".jp-Notebook .jp-CodeCell").last
    selects = last.locator(".widget-dropdown select")
    selects.first.wait_for(timeout=30_000)
    assert selects.count() == 3
    plot = last.locator(".jp-OutputArea-output img").first
    try:
        plot.wait_for(timeout=30_000)
    except Exception:
        page.screenshot(path=str(tmp_path / "no_plot.png"))  # what a person would have seen
        raise
    before = plot.get_attribute("src")
    assert before and before.startswith("data:image/png")
    # a static plot of the default metric too (the cell above the widgets)
    assert page.locator(".jp-Notebook .jp-CodeCell img").count() >= 2

    # another metric, then another x: the widget redraws its plot each time
    metric, by = selects.nth(0), selects.nth(1)
    options = metric.locator("option").all_text_contents()
    assert "ttft_ms" in options and metric.input_value() != "ttft_ms"
    for select, value in ((metric, "ttft_ms"), (by, "n_batch")):
        select.select_option(value)
        page.wait_for_function(
            """([cell, before]) => {
                 const img = cell.querySelector('.jp-OutputArea-output img');
                 return img && img.src !== before;
               }""",
            arg=[last.element_handle(), before],
            timeout=30_000,
        )
        before = plot.get_attribute("src")
    assert page.evaluate(ERRORS) == []
    elapsed = time.perf_counter() - started

    last.scroll_into_view_if_needed()
    shot = tmp_path / "explore_notebook.png"
    page.screenshot(path=str(shot))
    assert shot.stat().st_size > 10_000
    print(f"explore notebook in JupyterLab: {elapsed:.1f} s; screenshot {shot}")
    # nothing saved: the tracked notebook is byte for byte as committed
    assert notebook.read_bytes() == committed
