"""The user-study kit: statistics against published and constructed cases, SQLite answers, the page.

Independent references: the Wilson interval against Newcombe (1998, Table I) and its closed
form; Bradley-Terry on preference counts built from known strengths (the maximum-likelihood
equations then hold exactly at those strengths); Fleiss' kappa on the worked example of
Wikipedia's "Fleiss' kappa" article (10 subjects, 14 raters, 5 categories, kappa = 0.210).
"""
from __future__ import annotations

import itertools
import json
import math
import sqlite3

import numpy as np
import pandas as pd
import pytest

from facelib import study
from facelib.study import (REAL, StudyDB, agreement, bradley_terry, build_study, filter_raters, load_study,
                           real_or_fake_table, study_app, wilson_interval)


# ---------------------------------------------------------------------------- statistics
@pytest.mark.parametrize("successes, n, low, high", [
    (81, 263, 0.2553, 0.3662),  # Newcombe (1998), Statistics in Medicine 17:857, Table I, method 3
    (15, 148, 0.0624, 0.1605),
    (0, 20, 0.0000, 0.1611),
    (1, 29, 0.0061, 0.1718),
])
def test_wilson_interval_matches_newcombe_1998_and_the_closed_form(successes, n, low, high):
    got = wilson_interval(successes, n)
    assert got == pytest.approx((low, high), abs=5e-5)
    z, p = 1.959963984540054, successes / n
    centre, half = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    assert got == pytest.approx(((centre - half) / (1 + z * z / n), (centre + half) / (1 + z * z / n)), abs=1e-9)


STRENGTHS = {"a": 0.4, "b": 0.3, "c": 0.2, "d": 0.1}


def test_bradley_terry_recovers_known_strengths_from_a_preference_matrix():
    # wins[i][j] = 1000 * s_i / (s_i + s_j): the expected counts, at which the MLE is exactly s
    choices, weights = [], []
    for i, j in itertools.permutations(STRENGTHS, 2):
        choices.append(((i, j), i))
        weights.append(1000 * STRENGTHS[i] / (STRENGTHS[i] + STRENGTHS[j]))
    fitted = bradley_terry(choices, weights)
    assert fitted.to_dict() == pytest.approx(STRENGTHS, rel=1e-6)


def test_bradley_terry_luce_choices_of_three_recover_strengths_and_order():
    choices, weights = [], []
    for shown in itertools.combinations(STRENGTHS, 3):
        total = sum(STRENGTHS[m] for m in shown)
        for picked in shown:
            choices.append((shown, picked))
            weights.append(600 * STRENGTHS[picked] / total)
    assert bradley_terry(choices, weights).to_dict() == pytest.approx(STRENGTHS, rel=1e-6)
    # sampled answers: the order comes back, the ratios roughly
    rng = np.random.default_rng(0)
    sampled = []
    for _ in range(4000):
        shown = tuple(rng.choice(list(STRENGTHS), 3, replace=False))
        p = np.array([STRENGTHS[m] for m in shown])
        sampled.append((shown, shown[rng.choice(3, p=p / p.sum())]))
    fitted = bradley_terry(sampled)
    assert list(fitted.sort_values(ascending=False).index) == ["a", "b", "c", "d"]
    assert fitted["a"] / fitted["d"] == pytest.approx(4.0, rel=0.25)


def test_bradley_terry_prior_gives_finite_strengths_where_the_mle_does_not_exist():
    # "a" is never beaten and "c" never wins: the MLE puts all the strength on "a" and none on "c"
    choices = [(("a", "b"), "a")] * 3 + [(("b", "c"), "b")] * 3 + [(("a", "c"), "a")]
    mle = bradley_terry(choices)
    assert mle["a"] > 0.999 and mle["c"] < 1e-6
    fitted = bradley_terry(choices, prior=1.0)
    assert fitted.sum() == pytest.approx(1.0) and "\x00ghost" not in fitted.index
    assert fitted["a"] > fitted["b"] > fitted["c"] > 0.01 and fitted["a"] < 0.9
    # by hand: the ghost is one more player with one virtual win and one virtual loss against each
    ghost = [((m, "g"), w) for m in "abc" for w in (m, "g")]
    by_hand = bradley_terry(choices + ghost).drop("g")
    assert fitted.to_dict() == pytest.approx((by_hand / by_hand.sum()).to_dict(), rel=1e-6)
    # where the MLE exists, a prior of 0 is the MLE itself, and a small one moves it a little
    choices, weights = [], []
    for i, j in itertools.permutations(STRENGTHS, 2):
        choices.append(((i, j), i))
        weights.append(1000 * STRENGTHS[i] / (STRENGTHS[i] + STRENGTHS[j]))
    assert bradley_terry(choices, weights, prior=0.0).to_dict() == pytest.approx(STRENGTHS, rel=1e-6)
    assert bradley_terry(choices, weights, prior=1.0).to_dict() == pytest.approx(STRENGTHS, rel=0.05)
    with pytest.raises(ValueError, match="prior must be a finite number >= 0"):
        bradley_terry(choices, weights, prior=-1.0)


def test_bradley_terry_refuses_bad_choices():
    with pytest.raises(ValueError, match="one or more"):
        bradley_terry([])
    with pytest.raises(ValueError, match="must be one of two or more shown"):
        bradley_terry([(("a", "b"), "c")])


WIKIPEDIA_FLEISS = [  # subjects x categories: how many of the 14 raters chose each category
    [0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
    [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7],
]


def _answers(rows: list[dict]) -> pd.DataFrame:
    defaults = {"position": 0, "response_ms": 1000, "answered_at": "", "simulated": False}
    return pd.DataFrame([{**defaults, **row} for row in rows], columns=study.ANSWER_COLUMNS)


def test_fleiss_kappa_on_the_textbook_example():
    rows = []
    for subject, counts in enumerate(WIKIPEDIA_FLEISS):
        labels = [f"category {c + 1}" for c, count in enumerate(counts) for _ in range(count)]
        rows += [{"rater": f"r{r}", "trial": f"s{subject}", "kind": "real_or_fake", "shown": ["x"], "response": label}
                 for r, label in enumerate(labels)]
    result = agreement(_answers(rows))
    assert result["kappa"] == pytest.approx(0.210, abs=5e-4)
    assert (result["trials"], result["raters"]) == (10, 14)
    with pytest.raises(ValueError, match="'real_or_fake' or 'which_more_real'"):
        agreement(_answers(rows), kind="attention")


def test_filtering_drops_raters_who_fail_checks_or_call_real_images_fake():
    rows = []
    for rater, check_answers, real_answers in [
        ("careful", [REAL] * 5 + ["failure"], ["real"] * 3 + ["fake"]),   # 5/6 checks (>= 0.8), 3/4 real
        ("random", [REAL] * 3 + ["failure"] * 3, ["real"] * 4),           # 3/6 checks
        ("sceptic", [REAL] * 6, ["real"] + ["fake"] * 3),                  # 1/4 real: FVAE Sec. 6.3 drops
    ]:
        rows += [{"rater": rater, "trial": f"ac-{i}", "kind": "attention", "shown": [REAL, "failure"], "response": r}
                 for i, r in enumerate(check_answers)]
        rows += [{"rater": rater, "trial": f"rf-{i}", "kind": "real_or_fake", "shown": [REAL], "response": r}
                 for i, r in enumerate(real_answers)]
        rows.append({"rater": rater, "trial": "rf-9", "kind": "real_or_fake", "shown": ["fvae"], "response": "real"})
    kept, quality = filter_raters(_answers(rows))
    assert list(quality.loc[quality["kept"], "rater"]) == ["careful"]
    reasons = dict(zip(quality["rater"], quality["reason"]))
    assert reasons["random"] == "passed 3 of 6 attention checks"
    assert reasons["sceptic"] == "judged 1 of 4 real images real"
    assert set(kept["rater"]) == {"careful"} and "attention" not in set(kept["kind"])
    table = real_or_fake_table(kept).set_index("method")
    assert table.loc["real", ["n", "judged_real"]].tolist() == [4, 3]
    assert table.loc["fvae", "ci_low"] == pytest.approx(wilson_interval(1, 1)[0])
    with pytest.raises(ValueError, match=r"min_check_accuracy must be a share in \[0, 1\]"):
        filter_raters(_answers(rows), min_check_accuracy=80)
    with pytest.raises(ValueError, match="answers must be a DataFrame with the columns"):
        filter_raters(pd.DataFrame({"rater": ["x"]}))


# ---------------------------------------------------------------------------- a small real study
@pytest.fixture(scope="module")
def small_study(tmp_path_factory):
    folder = tmp_path_factory.mktemp("study")
    return build_study(["fvae", "average_flow", "optical_flow"], folder, sources=3, checks=2, side_by_side=2)


def test_build_writes_every_kind_of_trial_with_a_target_each_editor_accepts(small_study):
    kinds = [trial.kind for trial in small_study.trials]
    assert kinds.count("real_or_fake") == 3 * 4 and kinds.count("which_more_real") == 3 and kinds.count("attention") == 2
    assert small_study.target_kinds == {"fvae": "expression", "average_flow": "expression", "optical_flow": "reference"}
    shown = [trial.methods for trial in small_study.trials if trial.kind == "which_more_real"]
    assert shown == [("fvae", "average_flow"), ("fvae", "optical_flow"), ("average_flow", "optical_flow")]
    for trial in small_study.trials:
        for index in range(len(trial.images)):
            assert small_study.image_path(trial, index).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    manifest = json.loads((small_study.folder / "study.json").read_text())
    assert manifest["methods"][2] == {"name": "optical_flow", "paper": study.trials.load_editor("optical_flow").paper,
                                      "target_kind": "reference"}
    assert load_study(small_study.folder) == small_study


def test_build_refuses_bad_input_naming_what_is_accepted(small_study, tmp_path):
    with pytest.raises(FileExistsError, match="already holds a study"):
        build_study(["fvae", "average_flow"], small_study.folder, sources=2, checks=2)
    with pytest.raises(ValueError, match="sources must be an int >= 2"):
        build_study(["fvae", "average_flow"], tmp_path, sources=1)
    with pytest.raises(ValueError, match=r"side_by_side must be an int in 2..2"):
        build_study(["fvae", "average_flow"], tmp_path, sources=2, side_by_side=3)
    with pytest.raises(ValueError, match="unknown editor 'nope'; registered editors are"):
        build_study(["fvae", "nope"], tmp_path)
    with pytest.raises(ValueError, match="non-empty list"):
        build_study("fvae", tmp_path)
    with pytest.raises(FileNotFoundError, match="holds no study"):
        load_study(tmp_path)
    with pytest.raises(ValueError, match="unknown failure style 'blur'; accepted are"):
        study.obvious_failure(np.zeros(1), "blur")


def test_orders_are_random_per_rater_reproducible_and_recorded(small_study, tmp_path):
    first, again, other = small_study.plan("ann"), small_study.plan("ann"), small_study.plan("bob")
    assert [(t.id, o) for t, o in first] == [(t.id, o) for t, o in again]
    assert [(t.id, o) for t, o in first] != [(t.id, o) for t, o in other]
    assert sorted(t.id for t, _ in first) == sorted(t.id for t in small_study.trials)
    with StudyDB(tmp_path / "a.sqlite", small_study) as db:
        trial, order = next((t, o) for t, o in first if t.kind == "attention")
        shown = [trial.methods[k] for k in order]
        db.record("ann", trial.id, shown, REAL, 900)
        assert db.answers()["shown"].tolist() == [shown]
        with pytest.raises(ValueError, match="is shown to ann in the order"):
            db.record("ann", first[1][0].id, [*first[1][0].methods, "extra"], "real", 1)


def test_each_answer_is_a_committed_row_and_a_reopened_app_resumes(small_study, tmp_path):
    path = tmp_path / "answers.sqlite"
    app = study_app(small_study.folder, path)
    app.start("ann")
    assert app.progress.value.startswith(f"Trial 1 of {len(small_study.trials)}")
    plan = small_study.plan("ann")
    for step in range(3):
        app.buttons[0].click()
        # another connection sees the row at once: it was committed, not held in a transaction
        with sqlite3.connect(path) as reader:
            assert reader.execute("SELECT COUNT(*) FROM answers").fetchone()[0] == step + 1
    app.db.close()
    del app  # the page closes mid-way
    reopened = study_app(small_study.folder, path, rater="ann")
    assert reopened.progress.value.startswith("Trial 4 of")
    assert reopened.session.current[0].id == plan[3][0].id
    rows = reopened.db.answers()
    assert rows["trial"].tolist() == [trial.id for trial, _ in plan[:3]]
    assert rows["position"].tolist() == [0, 1, 2] and (rows["response_ms"] >= 0).all() and not rows["simulated"].any()
    first = plan[0][0]
    expected = "real" if first.kind == "real_or_fake" else first.methods[plan[0][1][0]]
    assert rows["response"][0] == expected  # the first button: "Real", or the leftmost image
    while reopened.session.current is not None:
        reopened.buttons[-1].click()
    assert reopened.progress.value.startswith("Done: all") and len(reopened.db.answers()) == len(small_study.trials)
    with pytest.raises(ValueError, match="has answered all"):
        reopened.session.answer("real")


def test_the_database_refuses_bad_answers_and_another_study(small_study, tmp_path):
    with StudyDB(tmp_path / "b.sqlite", small_study) as db:
        trial, order = db.next_trial("bob")
        shown = [trial.methods[k] for k in order]
        with pytest.raises(ValueError, match="accepts the responses"):
            db.record("bob", trial.id, shown, "maybe", 10)
        with pytest.raises(ValueError, match="response_ms must be an int >= 0"):
            db.record("bob", trial.id, shown, trial.responses()[0], -1)
        with pytest.raises(ValueError, match="a rater id is 1-64 printable characters"):
            db.next_trial(" bob")
        with pytest.raises(ValueError, match="has no trial 'xx-1'"):
            db.record("bob", "xx-1", shown, "real", 10)
        db.record("bob", trial.id, shown, trial.responses()[0], 10)
        with pytest.raises(ValueError, match="already answered trial"):
            db.record("bob", trial.id, shown, trial.responses()[0], 10)
    other = small_study.__class__(**{**small_study.__dict__, "fingerprint": "0" * 64})
    with pytest.raises(ValueError, match="holds answers to another study"):
        StudyDB(tmp_path / "b.sqlite", other)


def test_simulated_panel_answers_through_the_database_and_the_analysis_runs(small_study, tmp_path):
    cues = study.simulated_realness_cues(small_study, reference=16)
    assert list(cues.columns) == ["typicality", "confidence", "sharpness"]
    panel = study.simulated_panel(raters=6, inattentive=0.34, seed=1)
    assert sum(not rater.attentive for rater in panel) == 2 and all(r.id.startswith("simulated-") for r in panel)
    with StudyDB(tmp_path / "sim.sqlite", small_study) as db:
        written = study.simulate_answers(small_study, db, panel, cues)
        assert written == 6 * len(small_study.trials) and db.answers(simulated=True)["simulated"].all()
        assert db.answers(simulated=False).empty
        answers = db.answers()
    kept, quality = filter_raters(answers)
    assert len(quality) == 6
    table = real_or_fake_table(kept)
    assert set(table["method"]) == {"fvae", "average_flow", "optical_flow", REAL}
    assert ((table["ci_low"] <= table["proportion"]) & (table["proportion"] <= table["ci_high"])).all()
    pairs = study.pairwise_comparisons(kept)
    assert len(pairs) == 6 and (pairs["p_holm"] >= pairs["p_value"] - 1e-12).all()
    ranking = study.which_more_real_ranking(kept, bootstrap=20)
    assert sorted(ranking["method"]) == ["average_flow", "fvae", "optical_flow"]
    assert ranking["strength"].sum() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="raters must be an int >= 2"):
        study.simulated_panel(raters=1)


def test_the_command_line_builds_analyses_and_refuses_with_one_line_errors(small_study, tmp_path, capsys):
    from facelib.study.__main__ import main

    assert main(["build", "--out", str(small_study.folder), "--editors", "fvae,average_flow"]) == 2
    assert "already holds a study" in capsys.readouterr().err
    assert main(["analyse", "--study", str(small_study.folder), "--db", str(tmp_path / "none.sqlite")]) == 2
    assert "no answers yet" in capsys.readouterr().err
    database = tmp_path / "cli.sqlite"
    with StudyDB(database, small_study) as db:
        study.simulate_answers(small_study, db, study.simulated_panel(raters=3, inattentive=0.0),
                               study.simulated_realness_cues(small_study, reference=16))
    assert main(["analyse", "--study", str(small_study.folder), "--db", str(database)]) == 0
    assert "no answers from people" in capsys.readouterr().out
    assert main(["analyse", "--study", str(small_study.folder), "--db", str(database), "--simulated"]) == 0
    printed = capsys.readouterr().out
    assert "answers from SIMULATED raters" in printed and "proportion" in printed and "Fleiss' kappa" in printed
