"""The page people answer on: an ipywidgets app, in JupyterLab or served alone by Voila.

::

    python -m facelib.study serve --study build/study --db answers.sqlite    # http://localhost:8866

or, in a notebook, ``study_app("build/study", "answers.sqlite")``. The page asks for a rater id,
then shows one trial at a time; each click is one row in SQLite, committed at once, so closing
the page loses nothing and the same id resumes where it stopped. The logic lives in
:class:`StudySession` (plain methods a test calls); the widgets only draw it. Buttons carry CSS
classes (``facelib-study-answer``, ``facelib-study-start``, ...) for browser tests.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from .answers import StudyDB, check_rater
from .trials import PROMPTS, load_study

__all__ = ["StudySession", "study_app", "study_app_from_env", "write_study_page", "serve_command", "serve",
           "STUDY_ENV", "DB_ENV", "PAGE_NAME"]

#: The environment variables the served page reads: the study folder and the answers database.
STUDY_ENV, DB_ENV = "FACELIB_STUDY", "FACELIB_STUDY_DB"
PAGE_NAME = "study_page.ipynb"


class StudySession:
    """One rater working through their plan: what to show now, and recording what they answer.

    ``clock`` (seconds) times each answer from the moment its trial became current.
    """

    def __init__(self, db: StudyDB, rater: str, clock=time.monotonic):
        self.db, self.rater, self.clock = db, check_rater(rater), clock
        self.total = len(db.study.trials)
        self.current = None
        self.advance()

    def advance(self) -> None:
        """Move to the first trial not answered yet (``current`` is ``None`` when all are)."""
        self.current = self.db.next_trial(self.rater)
        self.started = self.clock()

    @property
    def answered(self) -> int:
        return len(self.db.answered(self.rater))

    def shown(self) -> list[str]:
        """The method labels of the current trial's images, in the order shown."""
        trial, order = self.current
        return [trial.methods[k] for k in order]

    def answer(self, response: str | int) -> None:
        """Record ``"real"``/``"fake"`` (real-or-fake) or the index, in shown order, of the image picked."""
        if self.current is None:
            raise ValueError(f"{self.rater} has answered all {self.total} trials")
        trial, _ = self.current
        shown = self.shown()
        if trial.kind != "real_or_fake":
            if isinstance(response, bool) or not isinstance(response, int) or not 0 <= response < len(shown):
                raise ValueError(f"trial {trial.id} ({trial.kind}) takes the index of the image picked, "
                                 f"0..{len(shown) - 1}, got {response!r}")
            response = shown[response]
        milliseconds = max(0, int(round((self.clock() - self.started) * 1000)))
        self.db.record(self.rater, trial.id, shown, response, milliseconds)
        self.advance()


def _trial_widgets(session: StudySession, on_answer):
    """The widgets of the current trial: the prompt, the image(s) and the answer buttons."""
    import ipywidgets as widgets

    trial, order = session.current
    images = [widgets.Image(value=session.db.study.image_path(trial, k).read_bytes(), format="png", width=192,
                            height=192) for k in order]
    for image in images:
        image.add_class("facelib-study-image")
    if trial.kind == "real_or_fake":
        buttons = [widgets.Button(description=text, layout=widgets.Layout(width="92px")) for text in ("Real", "Fake")]
        values = ["real", "fake"]
        body = widgets.VBox([images[0], widgets.HBox(buttons)])
    else:
        buttons = [widgets.Button(description=f"Image {i + 1}", layout=widgets.Layout(width="192px"))
                   for i in range(len(images))]
        values = list(range(len(images)))
        body = widgets.HBox([widgets.VBox([image, button]) for image, button in zip(images, buttons)])
    for button, value in zip(buttons, values):
        button.add_class("facelib-study-answer")
        button.on_click(lambda _button, value=value: on_answer(value))
    prompt = widgets.HTML(f"<b>{PROMPTS[trial.kind]}</b>")
    prompt.add_class("facelib-study-prompt")
    return [prompt, body], buttons


def _start_widgets(on_start):
    import ipywidgets as widgets

    rater = widgets.Text(description="rater id", placeholder="the id you were given")
    rater.add_class("facelib-study-rater")
    start = widgets.Button(description="Start")
    start.add_class("facelib-study-start")
    start.on_click(lambda _button: on_start(rater.value.strip()))
    return rater, start


def study_app(study_folder: str | Path, db_path: str | Path, rater: str | None = None):
    """The study page: a ``VBox`` that asks for a rater id (unless ``rater`` is given), then shows
    trials one at a time and records each answer. Attributes: ``session`` (the
    :class:`StudySession`, ``None`` before the start), ``progress`` (Label), ``buttons`` (the
    current answer buttons), ``start(rater)`` and ``answer(value)`` (what the buttons call)."""
    import ipywidgets as widgets

    db = StudyDB(db_path, load_study(study_folder))
    progress, message = widgets.Label(), widgets.HTML()
    progress.add_class("facelib-study-progress")
    message.add_class("facelib-study-message")
    content = widgets.VBox()
    box = widgets.VBox([widgets.HTML("<h3>Real or fake? A face study</h3>"), progress, content, message])
    box.session, box.buttons, box.progress = None, [], progress

    def draw() -> None:
        session = box.session
        if session.current is None:
            progress.value = f"Done: all {session.total} trials answered. Thank you, {session.rater}."
            content.children, box.buttons = [], []
            return
        progress.value = f"Trial {session.answered + 1} of {session.total} (rater {session.rater})"
        children, box.buttons = _trial_widgets(session, answer)
        content.children = children
        session.started = session.clock()  # time from when the trial is drawn

    def answer(value) -> None:
        for button in box.buttons:
            button.disabled = True  # a double click answers once
        try:
            box.session.answer(value)
            message.value = ""
        except ValueError as err:  # e.g. the same rater answered in another tab
            message.value = f"<span style='color:#a00'>{err}</span>"
            box.session.advance()
        draw()

    def start(rater_id: str) -> None:
        try:
            box.session = StudySession(db, rater_id)
        except ValueError as err:
            message.value = f"<span style='color:#a00'>{err}</span>"
            return
        message.value = ""
        draw()

    box.start, box.answer, box.db = start, answer, db
    if rater is None:
        content.children = list(_start_widgets(start))
        progress.value = "Enter your rater id and press Start."
    else:
        start(rater)
    return box


def study_app_from_env():
    """The served page's one call: :func:`study_app` of ``$FACELIB_STUDY`` and ``$FACELIB_STUDY_DB``."""
    missing = [name for name in (STUDY_ENV, DB_ENV) if not os.environ.get(name)]
    if missing:
        raise ValueError(f"the study page needs the environment variables {missing} (the study folder and the "
                         "answers database); start it with python -m facelib.study serve --study ... --db ...")
    return study_app(os.environ[STUDY_ENV], os.environ[DB_ENV])


def write_study_page(path: str | Path) -> Path:
    """Write the page Voila serves: a notebook whose one code cell displays :func:`study_app_from_env`."""
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    from facelib.utils import atomic_write_text

    notebook = new_notebook(cells=[new_code_cell("from facelib.study import study_app_from_env\n"
                                                 "study_app_from_env()")],
                            metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                     "language": "python"}})
    atomic_write_text(path, nbformat.writes(notebook))
    return Path(path)


def serve_command(study_folder: str | Path, db_path: str | Path, port: int = 8866,
                  ip: str = "127.0.0.1") -> tuple[list[str], dict[str, str]]:
    """``(argv, environment)`` that serve the study page with Voila (the page is written into the
    study folder). The study and the database are checked first, so a mistake fails here."""
    study = load_study(study_folder)
    StudyDB(db_path, study).close()  # refuses a database of another study now, not in the page
    if not isinstance(port, int) or not 0 < port < 65536:
        raise ValueError(f"port must be an int in 1..65535, got {port!r}")
    page = write_study_page(Path(study_folder) / PAGE_NAME)
    environment = {**os.environ, STUDY_ENV: str(Path(study_folder).resolve()), DB_ENV: str(Path(db_path).resolve())}
    argv = [sys.executable, "-m", "voila", str(page), f"--port={port}", f"--Voila.ip={ip}", "--no-browser",
            "--show_tracebacks=True"]
    return argv, environment


def serve(study_folder: str | Path, db_path: str | Path, port: int = 8866, ip: str = "127.0.0.1") -> int:
    """Serve the study page until interrupted (Ctrl-C); returns Voila's exit status."""
    import subprocess

    argv, environment = serve_command(study_folder, db_path, port, ip)
    print(f"serving the study at http://{ip}:{port}/ (answers go to {db_path}); stop with Ctrl-C", flush=True)
    try:
        return subprocess.run(argv, env=environment).returncode
    except KeyboardInterrupt:
        return 0
