"""Answers in SQLite: one row per answer, committed as it is given, so nothing is lost if a page closes.

::

    with StudyDB("answers.sqlite", study) as db:
        trial, shown = db.next_trial("rater-7")        # where rater-7 stopped (None: done)
        db.record("rater-7", trial.id, [trial.methods[k] for k in shown], "fake", response_ms=1830)
        db.answers()                                   # a pandas.DataFrame, one row per answer

The database remembers the fingerprint of the study it belongs to and refuses another study,
so answers can never be matched to the wrong images.
"""
from __future__ import annotations

import json
import sqlite3
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import pandas as pd

from .trials import Study, Trial

__all__ = ["ANSWER_COLUMNS", "StudyDB", "check_rater"]

#: The columns of :meth:`StudyDB.answers` (``shown``: JSON list of the labels in shown order, left to right).
ANSWER_COLUMNS = ["rater", "trial", "kind", "position", "shown", "response", "response_ms", "answered_at", "simulated"]
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS answers (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    rater TEXT NOT NULL,
    trial TEXT NOT NULL,
    kind TEXT NOT NULL,
    position INTEGER NOT NULL,      -- index of the trial in the rater's plan
    shown TEXT NOT NULL,            -- JSON list of method labels in the order shown
    response TEXT NOT NULL,         -- 'real' / 'fake', or the label of the image picked
    response_ms INTEGER NOT NULL,   -- from the trial appearing to the click
    answered_at TEXT NOT NULL,      -- UTC, ISO 8601
    simulated INTEGER NOT NULL,     -- 1: a simulated rater (facelib.study.simulate_panel), 0: a person
    UNIQUE (rater, trial)
);
"""
_MAX_RATER = 64


def check_rater(rater) -> str:
    """A rater id: 1-64 printable characters, no surrounding spaces."""
    if not isinstance(rater, str) or not rater.strip() or rater != rater.strip() or len(rater) > _MAX_RATER \
            or not rater.isprintable():
        raise ValueError(f"a rater id is 1-{_MAX_RATER} printable characters without surrounding spaces, got {rater!r}")
    return rater


class StudyDB:
    """The answers of one study in an SQLite file (standard library ``sqlite3``).

    Several pages (one kernel per rater under Voila) may write to one file: WAL journaling lets
    them, and a 30 s busy timeout waits out another writer's commit.
    """

    def __init__(self, path: str | Path, study: Study):
        self.path, self.study = Path(path), study
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.connection = sqlite3.connect(self.path, timeout=30)
        self.connection.execute("PRAGMA journal_mode=WAL")
        self.connection.executescript(_SCHEMA)
        self._claim_study()
        self._positions = {}  # rater -> {trial id: (position, shown order)}

    def _claim_study(self) -> None:
        found = self.connection.execute("SELECT value FROM meta WHERE key = 'study'").fetchone()
        if found is None:
            with self.connection:
                self.connection.execute("INSERT INTO meta VALUES ('study', ?)", (self.study.fingerprint,))
        elif found[0] != self.study.fingerprint:
            self.connection.close()
            raise ValueError(f"{self.path} holds answers to another study (fingerprint {found[0][:12]}, this study is "
                             f"{self.study.fingerprint[:12]}); use a new database file for {self.study.folder}")

    def close(self) -> None:
        self.connection.close()

    def __enter__(self) -> "StudyDB":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _plan(self, rater: str) -> dict[str, tuple[int, tuple[int, ...]]]:
        if rater not in self._positions:
            self._positions[rater] = {trial.id: (i, shown) for i, (trial, shown) in enumerate(self.study.plan(rater))}
        return self._positions[rater]

    def answered(self, rater: str) -> set[str]:
        """The ids of the trials ``rater`` has answered."""
        rows = self.connection.execute("SELECT trial FROM answers WHERE rater = ?", (check_rater(rater),))
        return {row[0] for row in rows}

    def next_trial(self, rater: str) -> tuple[Trial, tuple[int, ...]] | None:
        """The first trial of ``rater``'s plan not yet answered, with its shown order; ``None`` when done."""
        done = self.answered(rater)
        return next(((trial, shown) for trial, shown in self.study.plan(rater) if trial.id not in done), None)

    def record(self, rater: str, trial_id: str, shown: Sequence[str], response: str, response_ms: int, *,
               simulated: bool = False) -> None:
        """Store one answer and commit it at once (one INSERT, one transaction)."""
        trial = self.study.trial(trial_id)
        position, order = self._plan(check_rater(rater))[trial_id]
        expected = [trial.methods[k] for k in order]
        if list(shown) != expected:
            raise ValueError(f"trial {trial_id} is shown to {rater} in the order {expected}, not {list(shown)}")
        if response not in trial.responses():
            raise ValueError(f"trial {trial_id} ({trial.kind}) accepts the responses {list(trial.responses())}, "
                             f"got {response!r}")
        if isinstance(response_ms, bool) or not isinstance(response_ms, int) or response_ms < 0:
            raise ValueError(f"response_ms must be an int >= 0 (milliseconds), got {response_ms!r}")
        stamp = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
        try:
            with self.connection:  # commits on success, rolls back on error
                self.connection.execute(
                    "INSERT INTO answers (rater, trial, kind, position, shown, response, response_ms, answered_at, "
                    "simulated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (rater, trial_id, trial.kind, position, json.dumps(expected), response, response_ms, stamp,
                     int(bool(simulated))))
        except sqlite3.IntegrityError:
            raise ValueError(f"{rater} has already answered trial {trial_id}; each trial is answered once") from None

    def answers(self, simulated: bool | None = None) -> pd.DataFrame:
        """Every answer (``simulated``: only simulated / only people's), columns :data:`ANSWER_COLUMNS`."""
        query = f"SELECT {', '.join(ANSWER_COLUMNS)} FROM answers"
        params: tuple = ()
        if simulated is not None:
            query, params = query + " WHERE simulated = ?", (int(simulated),)
        table = pd.read_sql_query(query + " ORDER BY id", self.connection, params=params)
        table["shown"] = table["shown"].map(json.loads)
        table["simulated"] = table["simulated"].astype(bool)
        return table
