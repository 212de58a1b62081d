"""Learning curves: one fixed held-out sample, edited and measured every N training steps.

A GAN's losses say little about whether it edits (a critic's classifier can be satisfied by
texture it reads as the expression), so every adversarial recipe measures its generator on the
same held-out pairs while it trains, through the same metrics as :func:`facelib.evaluation.evaluate`::

    curve = LearningCurve("rafd", "expression", n=192, metrics=["expression accuracy (facelib classifier)"])
    curve(editor)   # {"expression accuracy (facelib classifier)": 0.41, ...}: seconds, not minutes

The pairs are rendered once (test identities, spread over the split), so consecutive points
differ only by the generator. A recipe calls it from its task's ``validate`` (the Trainer logs
the result as a ``"val"`` line of ``log.jsonl``); :func:`facelib.viz.plot_learning_curves` draws it.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Sequence

from facelib.editors import Editor
from facelib.evaluation.protocol import held_out_pairs, measure, resolve_evaluators, run_editor

__all__ = ["LearningCurve"]


class LearningCurve:
    """``n`` held-out pairs of ``preset``'s ``split`` and the metrics to take on an editor's edits of them.

    ``metrics``: row names of :func:`facelib.evaluation.list_metrics`; each value is returned under
    its row name (rows that come out NaN are left out). The evaluators are the shipped ones.
    """

    def __init__(self, preset: str, target_kind: str, *, metrics: Sequence[str], n: int = 192, size: int = 64,
                 split: str = "test", seed: int = 0):
        if not metrics:
            raise ValueError("LearningCurve needs at least one metric (see facelib.evaluation.list_metrics())")
        self.target_kind, self.metrics = target_kind, list(metrics)
        self.pairs = held_out_pairs(preset, split, size, n, seed=seed, spread=True, progress=False)
        self.evaluators, self.missing = resolve_evaluators(None)

    def __call__(self, editor: Editor) -> dict[str, float]:
        bundle = run_editor(editor, self.target_kind, self.pairs, progress=False)
        bundle = dataclasses.replace(bundle, evaluators=self.evaluators, missing=self.missing)
        return {r["metric"]: float(r["value"]) for r in measure(bundle, self.metrics)
                if r["metric"] in self.metrics and math.isfinite(r["value"])}
