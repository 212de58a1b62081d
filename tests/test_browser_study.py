"""The study page in a real browser: served by the one-command launch, answered by clicking.

``python -m facelib.study serve`` (Voila) serves a small study; Chromium (Debian's package,
driven by Playwright) enters a rater id, answers five trials by clicking and the test reads
the five rows back from SQLite. A screenshot goes to ``build/study_page.png``.
"""
from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

import pytest

from browser import chromium_page, free_port, require_browser, running_server, voila_ready_url
from facelib.study import build_study

REPO = Path(__file__).resolve().parent.parent
ANSWERED = 5


@pytest.mark.slow
def test_a_rater_answers_five_trials_by_clicking_and_sqlite_holds_five_rows(tmp_path):
    executable = require_browser()
    study = build_study(["fvae", "average_flow"], tmp_path / "study", sources=2, checks=1)
    database, port = tmp_path / "answers.sqlite", free_port()
    url = f"http://127.0.0.1:{port}/"
    argv = [sys.executable, "-m", "facelib.study", "serve", "--study", str(study.folder), "--db", str(database),
            "--port", str(port)]
    with running_server(argv, voila_ready_url(port), log=tmp_path / "voila.log", timeout=90):
        with chromium_page(executable, tmp_path / "profile") as page:
            page.set_default_timeout(60_000)  # the first load starts a kernel that imports torch
            page.goto(url)
            page.locator(".facelib-study-rater input").fill("browser-rater")
            page.locator(".facelib-study-start").click()
            progress = page.locator(".facelib-study-progress")
            for step in range(ANSWERED):
                progress.get_by_text(f"Trial {step + 1} of {len(study.trials)}").wait_for()
                page.locator(".facelib-study-answer").first.click()
            progress.get_by_text(f"Trial {ANSWERED + 1} of").wait_for()  # the fifth answer is in
            (REPO / "build").mkdir(exist_ok=True)
            page.screenshot(path=str(REPO / "build" / "study_page.png"))
    with sqlite3.connect(database) as reader:
        rows = reader.execute("SELECT rater, trial, position, shown, response, response_ms, simulated FROM answers "
                              "ORDER BY id").fetchall()
    plan = study.plan("browser-rater")
    assert [row[1] for row in rows] == [trial.id for trial, _ in plan[:ANSWERED]]
    assert [row[2] for row in rows] == list(range(ANSWERED))
    for (rater, _, _, shown, response, milliseconds, simulated), (trial, order) in zip(rows, plan):
        first = "real" if trial.kind == "real_or_fake" else trial.methods[order[0]]
        assert (rater, response, simulated) == ("browser-rater", first, 0)  # the first button, every time
        assert milliseconds > 0 and shown.startswith("[")
