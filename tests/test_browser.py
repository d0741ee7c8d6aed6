"""Lab 00 as a learner meets it: JupyterLab in a real (headless) Chromium, every cell run, the
form's Run button clicked, its result drawn.

Needs Debian's chromium and the playwright package (which drives it; no browser download).
Skipped where either is missing.
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
TOKEN = "lablib-browser-test"
#: where the test leaves its screenshot, for a person to look at
SCREENSHOTS = Path(tempfile.gettempdir()) / "lablib-screenshots"

playwright = pytest.importorskip("playwright.sync_api")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")


@pytest.fixture(scope="module")
def jupyterlab():
    home = Path(tempfile.mkdtemp(prefix="lablib-jlab-"))
    argv = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", "--ServerApp.port=0",
            f"--IdentityProvider.token={TOKEN}", f"--ServerApp.root_dir={ROOT}",
            "--LabApp.expose_app_in_browser=True", "--ServerApp.port_retries=0"]
    if os.getuid() == 0:
        argv.append("--allow-root")
    env = {**os.environ, "HOME": str(home), "JUPYTER_CONFIG_DIR": str(home / ".jupyter")}
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    url = None
    deadline = time.monotonic() + 60
    log = []
    while time.monotonic() < deadline and url is None:
        line = proc.stdout.readline()
        if not line:
            break
        log.append(line)
        match = re.search(r"(http://127\.0\.0\.1:\d+)/lab", line)
        if match:
            url = match.group(1)
    try:
        assert url, "JupyterLab did not start:\n" + "".join(log[-20:])
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(home, ignore_errors=True)


def test_lab_00_runs_in_jupyterlab_and_its_form_runs_trials(jupyterlab):
    SCREENSHOTS.mkdir(exist_ok=True)
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--no-first-run", "--disable-sync"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{jupyterlab}/lab/tree/labs/00_close_basics.ipynb?token={TOKEN}")
            page.wait_for_function("window.jupyterapp && window.jupyterapp.shell.currentWidget"
                                   " && window.jupyterapp.shell.currentWidget.sessionContext"
                                   " && window.jupyterapp.shell.currentWidget.sessionContext.session", timeout=60_000)
            page.wait_for_function("window.jupyterapp.shell.currentWidget.sessionContext.session.kernel"
                                   ".connectionStatus === 'connected'", timeout=60_000)
            # clear the stored outputs first, so what we see below comes from this run
            page.evaluate("window.jupyterapp.commands.execute('notebook:clear-all-cell-outputs')")
            page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
            page.get_by_text("right: client_sees = eof").last.wait_for(timeout=180_000)

            errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
            texts = [t for t in errors.all_inner_texts() if "Traceback" in t or "Error" in t]
            assert texts == [], texts
            assert page.get_by_text("unread: 100 of 100 trials read all 100 reply bytes").count() == 1

            run = page.locator(".widget-button", has_text="Run")
            run.scroll_into_view_if_needed()
            run.click()
            page.get_by_text(re.compile(r"^20 trials in [\d.]+ s$")).wait_for(timeout=60_000)
            form_output = page.locator(".widget-output").last
            form_output.locator("img").nth(1).wait_for(timeout=30_000)  # the outcome bars, then the ladder
            assert form_output.locator("img").count() == 2
            assert form_output.get_by_text("econnreset").count() + form_output.get_by_text("eof").count() >= 1
            form_output.scroll_into_view_if_needed()
            page.screenshot(path=str(SCREENSHOTS / "lab00-form.png"))
        finally:
            browser.close()
