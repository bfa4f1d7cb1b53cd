"""The explore notebook as a person sees it: a real JupyterLab, driven in headless Chromium.

JupyterLab serves the repository root from the project's venv, on loopback with a token, the
way the README starts it, with the settings override scripts/setup.sh ships into the venv;
Chromium is Debian's `chromium` (scripts/test-apt-packages.txt), driven by Playwright's Python
package pointed at that binary (no downloaded browser). Autosave is on, as JupyterLab's default:
the explore notebook is run from the copy `mateperf explore` makes, and the tracked notebook
must be left as committed after JupyterLab's autosave interval has passed.
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

from mateperf import explore_cli
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
# JupyterLab settings for the test's own user: autosave on (JupyterLab's default) every 15 s
# instead of the default 120 s: the test waits for autosave to have written the opened copy,
# outputs and all, so a shorter interval checks the same thing without two idle minutes; and
# every cell in the DOM (by default cells scrolled out of view are not rendered, so their
# widgets could not be found).
AUTOSAVE_S = 15
LAB_SETTINGS = {
    "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {
        "autosave": True,
        "autosaveInterval": AUTOSAVE_S,
    },
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


def test_final_results_opens_as_a_preview_by_double_click(jupyterlab, chromium_page, tmp_path):
    """The project's settings override (scripts/jupyterlab/overrides.json, installed into the
    venv by setup.sh): a double-click on a Markdown file renders it."""
    override = Path(sys.prefix) / "share/jupyter/lab/settings/overrides.json"
    assert override.is_file(), f"{override} missing: run scripts/setup.sh"
    base, token = jupyterlab
    page = chromium_page
    open_lab(page, base, token)
    page.evaluate("window.jupyterapp.commands.execute('filebrowser:activate')")
    page.evaluate(
        "async () => { await window.jupyterapp.commands.execute("
        "'filebrowser:go-to-path', {path: 'results/'}); }"
    )
    item = page.locator(".jp-DirListing-item", has_text="FINAL_RESULTS.md").first
    item.wait_for(timeout=30_000)
    item.dblclick()
    page.wait_for_function(
        f"() => {PANEL} && {PANEL}.context && {PANEL}.context.path === 'results/FINAL_RESULTS.md'",
        timeout=30_000,
    )
    viewer = page.locator(".jp-MarkdownViewer:not(.lm-mod-hidden) .jp-RenderedMarkdown h1")
    viewer.first.wait_for(timeout=30_000)
    assert "final results" in viewer.first.inner_text()
    assert page.locator(".jp-FileEditor:not(.lm-mod-hidden)").count() == 0  # not the source
    page.screenshot(path=str(tmp_path / "final_results_preview.png"))
    page.evaluate(f"{PANEL}.dispose()")


# The caption the explore widgets write under the plot (explore.caption): what it shows.
CAPTION = ".jp-Notebook .jp-CodeCell .widget-html-content code"


def test_explore_notebook_runs_in_jupyterlab(jupyterlab, chromium_page, tmp_path):
    base, token = jupyterlab
    page = chromium_page
    tracked = REPO_ROOT / NOTEBOOK
    committed = tracked.read_bytes()
    copy = explore_cli.fresh_copy()  # what `mateperf explore` opens
    path = copy.relative_to(REPO_ROOT).as_posix()
    started = time.perf_counter()
    try:
        open_lab(page, base, token)
        open_unmodified(page, path, copy.read_bytes())

        page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
        page.wait_for_function(ALL_RAN, timeout=RUN_S * 1000, polling=500)
        ran = time.monotonic()

        assert page.evaluate(ERRORS) == []
        assert page.locator('[data-mime-type="application/vnd.jupyter.stderr"]').count() == 0
        # the newest reports, linked for JupyterLab to open
        assert page.locator('.jp-RenderedMarkdown a[href*="FINAL_RESULTS.md"]').count() == 1

        # the run picker, the four dropdowns and the plot of the last cell render as widgets
        last = page.locator(".jp-Notebook .jp-CodeCell").last
        selects = last.locator(".widget-dropdown select")
        selects.first.wait_for(timeout=30_000)
        assert selects.count() == 4
        assert last.locator(".widget-select-multiple select option").count() >= 1
        plot = last.locator(".jp-OutputArea-output img").first
        try:
            plot.wait_for(timeout=30_000)
        except Exception:
            page.screenshot(path=str(tmp_path / "no_plot.png"))  # what a person would have seen
            raise
        before = plot.get_attribute("src")
        assert before and before.startswith("data:image/png")
        assert page.locator(".jp-Notebook .jp-CodeCell img").count() >= 2  # the static one too

        metric, by = selects.nth(0), selects.nth(1)
        # "by" offers the phase's declared factors, not every column
        factors = by.locator("option").all_text_contents()
        print(f"by offers: {factors}")
        assert {"run_id", "host", "scenario", "arm"} <= set(factors)
        assert not {"error", "reply_text", "model_file", "seed", "trial"} & set(factors)

        # ttft_ms by default: cold and warm apart (the series the caption names)
        options = metric.locator("option").all_text_contents()
        assert "ttft_ms" in options and metric.input_value() != "ttft_ms"
        metric.select_option("ttft_ms")
        page.wait_for_function(
            """([cell, before]) => {
                 const img = cell.querySelector('.jp-OutputArea-output img');
                 return img && img.src !== before;
               }""",
            arg=[last.element_handle(), before],
            timeout=30_000,
        )
        caption = page.locator(CAPTION).last
        page.wait_for_function(
            "sel => { const c = document.querySelectorAll(sel); "
            "return c.length && c[c.length - 1].textContent.startsWith('ttft_ms'); }",
            arg=CAPTION,
            timeout=30_000,
        )
        print(f"ttft_ms by default: {caption.inner_text()}")
        assert "series arm: cold, warm" in caption.inner_text()
        assert page.evaluate(ERRORS) == []
        elapsed = time.perf_counter() - started

        last.scroll_into_view_if_needed()
        shot = tmp_path / "explore_notebook.png"
        page.screenshot(path=str(shot))
        assert shot.stat().st_size > 10_000
        print(f"explore notebook in JupyterLab: {elapsed:.1f} s; screenshot {shot}")

        # JupyterLab's autosave has had its interval and more: it saved the copy, outputs and
        # all, and never wrote the tracked notebook
        page.wait_for_timeout(max(0.0, AUTOSAVE_S + 10 - (time.monotonic() - ran)) * 1000)
        saved = json.loads(copy.read_text(encoding="utf-8"))
        assert any(c.get("outputs") for c in saved["cells"]), "autosave did not run"
        assert tracked.read_bytes() == committed
    finally:
        copy.unlink(missing_ok=True)
