"""The user-study kit (notebook 08): trials, a page for people, answers in SQLite, the statistics.

The two studies of LEED (Wu & Lu 2020, Sec. 4.2, Table 3) and FVAE's perception study (Yeh et
al. 2016, Sec. 6.3, Table 2), for any set of editors::

    from facelib import study

    kit = study.build_study(["fvae", "fvae_pixel_vae", "average_flow", "optical_flow"], "build/study")
    # people: python -m facelib.study serve --study build/study --db answers.sqlite
    with study.StudyDB("answers.sqlite", kit) as db:
        kept, quality = study.filter_raters(db.answers(simulated=False))
    study.real_or_fake_table(kept)          # proportion judged real, Wilson 95 % intervals
    study.pairwise_comparisons(kept)        # Fisher's exact test per pair, Holm-corrected
    study.which_more_real_ranking(kept)     # share picked and Bradley-Terry strengths
    study.agreement(kept)                   # Fleiss' kappa

Without people, :func:`simulated_panel` and :func:`simulate_answers` make a SIMULATED panel
from facelib's evaluator networks plus noise (``simulated=1`` in the database): the analysis
code is the same for both.

Modules: ``trials`` (building and loading a study), ``answers`` (:class:`StudyDB`),
``statistics``, ``plots``, ``simulated``, ``app`` (the ipywidgets page and the Voila launch).
"""
from __future__ import annotations

from .answers import ANSWER_COLUMNS, StudyDB, check_rater
from .app import StudySession, serve, serve_command, study_app, study_app_from_env, write_study_page
from .simulated import SimulatedRater, simulate_answers, simulated_panel, simulated_realness_cues
from .plots import plot_ranking, plot_real_or_fake
from .statistics import (MIN_CHECK_ACCURACY, MIN_REAL_ACCURACY, agreement, analyse, bradley_terry, filter_raters,
                         pairwise_comparisons, rater_quality, real_or_fake_table, which_more_real_ranking,
                         wilson_interval)
from .trials import (FAILURE, FAILURE_STYLES, PROMPTS, REAL, TRIAL_KINDS, Study, Trial, build_study, load_study,
                     obvious_failure, study_target_kind)

__all__ = [
    "ANSWER_COLUMNS", "StudyDB", "check_rater",
    "StudySession", "serve", "serve_command", "study_app", "study_app_from_env", "write_study_page",
    "SimulatedRater", "simulate_answers", "simulated_panel", "simulated_realness_cues",
    "plot_ranking", "plot_real_or_fake",
    "MIN_CHECK_ACCURACY", "MIN_REAL_ACCURACY", "agreement", "analyse", "bradley_terry", "filter_raters",
    "pairwise_comparisons", "rater_quality", "real_or_fake_table", "which_more_real_ranking", "wilson_interval",
    "FAILURE", "FAILURE_STYLES", "PROMPTS", "REAL", "TRIAL_KINDS", "Study", "Trial", "build_study", "load_study",
    "obvious_failure", "study_target_kind",
]
