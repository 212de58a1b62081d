"""Notebook 09's photo editor in a real browser: JupyterLab and Voila, driven in Chromium.

JupyterLab: open the notebook, run all cells, move the intensity slider, check the edited
photo's pixels changed and no cell shows an error. Voila: the same on the app page, then
upload a photo through the file input and check that the download is a valid image of the
photo's size. Screenshots go to ``build/editor_jupyterlab.png`` and ``build/editor_voila.png``.
The kernels run in smoke mode (``FACELIB_SMOKE=1``). Slider moves are drawn in a background
thread (the newest position wins), so every check waits for the page to change.
"""
from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from browser import chromium_page, free_port, require_browser, running_server, voila_ready_url
from facelib.widgets import sample_photos

REPO = Path(__file__).resolve().parent.parent
NOTEBOOK = REPO / "notebooks" / "09_face_editor.ipynb"
RESULT = "img.facelib-photo-result"
#: A hash of the pixels of an <img> (drawn on a canvas; blob: URLs are same-origin), "" until it has loaded.
PIXELS = """image => {
    if (!image.complete || image.naturalWidth === 0) return "";
    const canvas = document.createElement("canvas");
    canvas.width = image.naturalWidth; canvas.height = image.naturalHeight;
    const context = canvas.getContext("2d");
    context.drawImage(image, 0, 0);
    const data = context.getImageData(0, 0, canvas.width, canvas.height).data;
    let hash = 0;
    for (let i = 0; i < data.length; i += 1) hash = (hash * 31 + data[i]) | 0;
    return `${canvas.width}x${canvas.height}:${hash}`;
}"""


def kernel_env(tmp_path: Path) -> dict:
    """Smoke-mode kernels, and Jupyter state (config, runtime, Lab settings) kept under ``tmp_path``."""
    settings = tmp_path / "lab-settings"
    # no news or update check popping up over the notebook
    notification = settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    notification.parent.mkdir(parents=True)
    notification.write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}), encoding="utf-8")
    # JupyterLab 4 lays out only the cells near the viewport ("windowing mode"): the edited photo sits
    # below the fold, has no layout box and counts as hidden. A person scrolls; the test lays out every cell.
    tracker = settings / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings"
    tracker.parent.mkdir(parents=True)
    tracker.write_text(json.dumps({"windowingMode": "none"}), encoding="utf-8")
    return {**os.environ, "FACELIB_SMOKE": "1", "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
            "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"), "JUPYTERLAB_SETTINGS_DIR": str(settings),
            "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "workspaces"), "PYTHONUNBUFFERED": "1"}


def watch(page) -> list[str]:
    """Collect the page's console errors and uncaught exceptions (for failure messages)."""
    problems: list[str] = []
    page.on("console", lambda message: problems.append(f"console {message.type}: {message.text}")
            if message.type == "error" else None)
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    return problems


def pixels(page) -> str:
    return page.locator(RESULT).first.evaluate(PIXELS)


def wait_for_pixels(page, unlike: str = "", timeout_ms: int = 60_000) -> str:
    """Wait until the edited photo has loaded and differs from ``unlike``; return its pixel hash."""
    page.locator(RESULT).first.wait_for(state="visible", timeout=timeout_ms)
    page.wait_for_function(f"([image, unlike]) => ({PIXELS})(image) !== '' && ({PIXELS})(image) !== unlike",
                           arg=[page.locator(RESULT).first.element_handle(), unlike], timeout=timeout_ms)
    return pixels(page)


def move_intensity_slider(page, presses: int = 6) -> None:
    """Move the intensity slider with the keyboard, one step per key press, as a person would."""
    handle = page.locator(".facelib-photo-intensity .noUi-handle").first
    handle.focus()
    for _ in range(presses):
        page.keyboard.press("ArrowLeft")


def errors_shown(page) -> list[str]:
    """Error outputs of cells, and the editor's own error message, as the page shows them."""
    shown = [text for text in page.locator('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')
             .all_inner_texts() if "Traceback" in text or "Error" in text]
    shown += page.locator(".jp-OutputArea-output.jp-mod-error, .jp-RenderedText[data-mime-type*=error]").all_inner_texts()
    return shown + page.locator(".facelib-photo-message .facelib-photo-error").all_inner_texts()


def screenshot(page, name: str) -> None:
    """The whole editor widget (controls, message, photos, tiles, download link) as the page shows it."""
    (REPO / "build").mkdir(exist_ok=True)
    page.locator(".facelib-photo-editor").first.screenshot(path=str(REPO / "build" / name))


@pytest.mark.slow
def test_jupyterlab_runs_notebook_09_and_the_slider_edits_the_photo(tmp_path):
    executable = require_browser()
    port = free_port()
    argv = [sys.executable, "-m", "jupyter", "lab", f"--port={port}", "--no-browser", "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.root_dir={NOTEBOOK.parent}", "--IdentityProvider.token=", "--LabApp.expose_app_in_browser=True",
            "--ServerApp.open_browser=False"] + (["--allow-root"] if os.geteuid() == 0 else [])
    with running_server(argv, f"http://127.0.0.1:{port}/api/status", log=tmp_path / "lab.log", env=kernel_env(tmp_path),
                        timeout=90):
        with chromium_page(executable, tmp_path / "profile", viewport=(1400, 1000)) as page:
            problems = watch(page)
            page.set_default_timeout(90_000)
            page.goto(f"http://127.0.0.1:{port}/lab/tree/{NOTEBOOK.name}")
            page.locator(".jp-Notebook .jp-Cell").first.wait_for()
            # wait for the kernel, then the same command as Run > Run All Cells
            page.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell.currentWidget"
                                   " && window.jupyterapp.shell.currentWidget.sessionContext?.session?.kernel")
            page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
            page.get_by_text("edit + paste back").first.wait_for(timeout=240_000)  # the last cell's output
            before = wait_for_pixels(page)
            move_intensity_slider(page)
            after = wait_for_pixels(page, unlike=before)
            screenshot(page, "editor_jupyterlab.png")
            log = (tmp_path / "lab.log").read_text(errors="replace")[-3000:]
            assert after != before, f"the photo did not change; page problems: {problems}"
            assert not errors_shown(page), f"errors in the notebook: {errors_shown(page)}\n{problems}\n{log}"
            assert "redrawn in" in page.locator(".facelib-photo-message").first.inner_text()


@pytest.mark.slow
def test_voila_app_edits_an_uploaded_photo_and_downloads_it_at_its_size(tmp_path):
    executable = require_browser()
    hopper = sample_photos()["Grace Hopper (matplotlib)"]()
    photo = tmp_path / "my_photo.png"
    Image.fromarray(np.pad(hopper, ((20, 30), (70, 118), (0, 0)), mode="edge")).save(photo)  # 700 x 650
    port = free_port()
    argv = [sys.executable, "-m", "voila", str(NOTEBOOK), f"--port={port}", "--Voila.ip=127.0.0.1", "--no-browser",
            "--show_tracebacks=True"]
    with running_server(argv, voila_ready_url(port), log=tmp_path / "voila.log", env=kernel_env(tmp_path),
                        timeout=90):
        with chromium_page(executable, tmp_path / "profile", viewport=(1400, 1000)) as page:
            problems = watch(page)
            page.set_default_timeout(120_000)  # Voila runs the whole notebook before the page is complete
            page.goto(f"http://127.0.0.1:{port}/")
            before = wait_for_pixels(page, timeout_ms=240_000)
            move_intensity_slider(page)
            moved = wait_for_pixels(page, unlike=before)
            assert moved != before and not errors_shown(page), (errors_shown(page), problems)

            # ipywidgets' FileUpload keeps its <input type=file> out of the page and clicks it from the
            # button, so the upload goes through the file chooser the click opens, as for a person
            with page.expect_file_chooser() as chooser:
                page.locator(".facelib-photo-upload").first.click()
            chooser.value.set_files(str(photo))
            message = page.locator(".facelib-photo-message").first
            message.get_by_text("uploaded: my_photo.png (700x650)").wait_for()
            uploaded = wait_for_pixels(page, unlike=moved)
            link = page.locator('a.facelib-photo-download-link[data-width="700"]')
            link.wait_for()
            with page.expect_download() as download:
                link.click()
            target = tmp_path / "downloaded.png"
            download.value.save_as(target)
            screenshot(page, "editor_voila.png")
            assert uploaded != moved and not errors_shown(page), (errors_shown(page), problems)
    with Image.open(io.BytesIO(target.read_bytes())) as image:
        image.load()
        assert image.format == "PNG" and image.size == (700, 650)
