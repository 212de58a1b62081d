"""Browser tests' plumbing: a local server started and stopped cleanly, and Debian's Chromium driven by Playwright.

Playwright's Python wheel bundles its driver; its own browser downloads are never used (no
``playwright install``): the system ``chromium`` package is launched instead (``.ci/run``
installs it where it is missing). Reusable for any page: the study page under Voila today,
JupyterLab and the photo editor later::

    executable = require_browser()                       # skips, saying why, when one is missing
    port = free_port()
    with running_server([sys.executable, "-m", "voila", page, f"--port={port}", "--no-browser"],
                        voila_ready_url(port), log=tmp_path / "server.log"):
        with chromium_page(executable, tmp_path / "profile") as page:
            page.goto(f"http://127.0.0.1:{port}/")
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

#: Where Debian's ``chromium`` package puts the browser.
CHROMIUM = "/usr/bin/chromium"
#: Headless, no sandbox (CI runs as root in a container), and nothing that calls home.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium_executable() -> str | None:
    """The system Chromium, or ``None``."""
    if os.access(CHROMIUM, os.X_OK):
        return CHROMIUM
    return shutil.which("chromium") or shutil.which("chromium-browser")


def require_browser() -> str:
    """The Chromium executable; skips the test, naming what is missing, when Chromium or Playwright is."""
    executable = chromium_executable()
    if executable is None:
        pytest.skip(f"no Chromium at {CHROMIUM} or on PATH (Debian: apt-get install chromium; .ci/run installs it)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip("the playwright package is not installed (pip install -r requirements.txt)")
    return executable


def free_port() -> int:
    """A TCP port on localhost that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def voila_ready_url(port: int) -> str:
    """A static file of Voila's on ``port``: it answers once the server is up, without running a notebook."""
    return f"http://127.0.0.1:{port}/voila/static/voila.js"


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


def _stop(process: subprocess.Popen) -> None:
    """End the server and its children (its own process group), politely first."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


@contextlib.contextmanager
def running_server(argv: list[str], url: str, *, log: Path, env: dict | None = None, timeout: float = 60.0):
    """Run ``argv`` (output to ``log``) until ``url`` answers 200, yield the process, then stop it.

    For Voila, pass a static file as ``url`` (:func:`voila_ready_url`), not the page: every GET of a
    Voila page starts a kernel and runs the whole notebook, so polling the page would start one
    kernel per poll that outlives its 5 s timeout.

    The server gets its own process group, so stopping it also stops the kernels it started.
    Fails with the log's tail if the server exits or does not answer within ``timeout`` seconds.
    """
    with open(log, "wb") as output:
        process = subprocess.Popen(argv, stdout=output, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while not _answers(url):
            if process.poll() is not None or time.monotonic() > deadline:
                tail = Path(log).read_text(errors="replace")[-3000:]
                state = f"exited with status {process.returncode}" if process.poll() is not None else "did not answer"
                raise RuntimeError(f"the server {state} ({url}, {timeout:.0f} s); its log ends:\n{tail}")
            time.sleep(0.25)
        yield process
    finally:
        _stop(process)


@contextlib.contextmanager
def chromium_page(executable: str, profile: Path, viewport: tuple[int, int] = (1100, 800)):
    """A Playwright page of ``executable`` (Chromium) with a fresh profile folder ``profile``."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile), executable_path=executable, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": viewport[0], "height": viewport[1]})
        try:
            yield context.pages[0] if context.pages else context.new_page()
        finally:
            context.close()
