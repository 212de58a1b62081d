"""Evaluation: one protocol for every editor (:func:`evaluate`), and each paper's own tables.

- :mod:`facelib.evaluation.protocol`: ``evaluate(editor, target_kind, ...)`` -> a tidy table, the
  same rows for every method; the metric registry (:func:`metric`, :func:`register_metric`).
- :mod:`facelib.evaluation.fvae`: FVAE's Table 1 over editors, Algorithm 2 and Fig. 7 against
  SynthFaces' ground truth.
- :mod:`facelib.evaluation.exprgan`: ExprGAN's Fig. 3 measured (levels against AU-regressor intensity),
  Table 1 (synthesised faces as training data) and Fig. 7 (retrieval precision).
- :mod:`facelib.evaluation.eggan`: EGGAN's Table 1 (per-AU MSE and PCC, the paper's protocol), Fig. 3
  (interpolation along Eq. 8) and a single-AU control test.
- :mod:`facelib.evaluation.real`: an editor's edits of real photos, measured with the real-photo instruments.
- :mod:`facelib.evaluation.evaluators`: the SynthFaces evaluators' own held-out figures.
- :mod:`facelib.evaluation.curves`: :class:`LearningCurve`, a fixed held-out sample measured while a model trains.
"""
from __future__ import annotations

from .protocol import (
    COLUMNS, EVALUATOR_NAMES, Bundle, HeldOutPairs, MetricInfo, au_table, evaluate, held_out_pairs, held_out_target,
    list_metrics, measure, metric, register_metric, resolve_evaluators, row, run_editor,
)
from .curves import LearningCurve

__all__ = [
    "COLUMNS", "EVALUATOR_NAMES", "Bundle", "LearningCurve", "HeldOutPairs", "MetricInfo", "au_table", "evaluate", "held_out_pairs",
    "held_out_target", "list_metrics", "measure", "metric", "register_metric", "resolve_evaluators", "row",
    "run_editor",
]
