"""A SIMULATED rater panel: answers made by facelib's evaluator networks plus noise, not by people.

CI and the notebook's run have no people, so the analysis is exercised on a panel whose every
answer comes from three cues measured on the very PNG files a person would see:

- typicality: minus the Mahalanobis distance of the image's features under facelib's
  expression classifier (``load_pretrained("expression_classifier").features``) from real
  SynthFaces renders of other held-out people (Ledoit-Wolf covariance);
- confidence: the classifier's log probability of its most likely expression;
- sharpness: minus ``|log(sharpness / median real sharpness)|`` (``facelib.metrics.sharpness``):
  blur and noise both look wrong.

Each cue is standardised on the real renders (mean 0, sd 1). A simulated rater weighs the cues
with their own weights, has their own bias (how readily they say "real") and noise; an
inattentive one answers at random without looking. The answers are written through the same
:class:`~facelib.study.StudyDB` as people's, flagged ``simulated=1``, with rater ids
``simulated-NN``: nothing they produce can be taken for a human result.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from .answers import StudyDB
from .trials import Study

__all__ = ["SimulatedRater", "simulated_panel", "simulated_realness_cues", "simulate_answers"]

CUES = ("typicality", "confidence", "sharpness")
#: A typical real render (realness 0) is judged real with probability sigmoid(SLOPE * OFFSET) ~ 0.86.
SLOPE, OFFSET = 1.5, 1.2


@dataclass(frozen=True)
class SimulatedRater:
    """One simulated rater: id, cue weights (sum 1), bias (logit of saying "real"), noise (> 0,
    larger = more random answers), whether they look at all, and their typical response time."""

    id: str
    weights: tuple[float, ...]
    bias: float
    noise: float
    attentive: bool
    typical_ms: float


def simulated_panel(raters: int = 20, inattentive: float = 0.2, seed: int = 0) -> list[SimulatedRater]:
    """``raters`` simulated raters, ``round(inattentive * raters)`` of them answering at random."""
    if not isinstance(raters, int) or raters < 2:
        raise ValueError(f"raters must be an int >= 2, got {raters!r}")
    if not 0.0 <= inattentive < 1.0:
        raise ValueError(f"inattentive must be a share in [0, 1), got {inattentive!r}")
    rng = np.random.default_rng(seed)
    careless = set(rng.choice(raters, round(inattentive * raters), replace=False).tolist())
    return [SimulatedRater(f"simulated-{i:02d}", tuple(float(w) for w in rng.dirichlet([4.0] * len(CUES))),
                           float(rng.normal(0.0, 0.5)), float(rng.uniform(0.7, 1.5)), i not in careless,
                           float(rng.uniform(1200, 3000) if i not in careless else rng.uniform(300, 600)))
            for i in range(raters)]


def _image_tensors(paths) -> torch.Tensor:
    from facelib.data.io import to_tensor

    return torch.cat([to_tensor(path) for path in paths])


def _raw_cues(images: torch.Tensor, classifier: torch.nn.Module):
    from facelib.metrics import sharpness

    with torch.no_grad():
        features = classifier.features(images).double().numpy()
        confidence = torch.log_softmax(classifier(images), dim=1).max(dim=1).values.double().numpy()
    sharp = sharpness(images, per_image=True).double().numpy()
    return features, confidence, sharp


def _reference_renders(study: Study, count: int, seed: int) -> torch.Tensor:
    """``count`` real renders (sources and targets of ``val`` pairs): people the study never shows."""
    from facelib.evaluation.protocol import held_out_pairs

    size = int(_image_tensors([study.image_path(study.trials[0], 0)]).shape[-1])
    pairs = held_out_pairs(study.preset, "val", size, max(2, count // 2), seed=seed, spread=True, progress=False)
    return torch.cat([pairs.truth("source"), pairs.truth("target")]).float()


def simulated_realness_cues(study: Study, reference: int = 128, classifier: torch.nn.Module | None = None,
                            seed: int = 0) -> pd.DataFrame:
    """The three cues (module docstring) of every image of ``study``, one row per image path.

    ``reference`` real renders of the ``val`` split are split in two: the first half fits the
    feature distribution (a Ledoit-Wolf covariance: shrinkage makes it invertible with fewer
    renders than features), the second half, unseen by that fit, gives each cue's mean and sd
    (an in-sample distance would be too small).
    """
    from sklearn.covariance import LedoitWolf

    from facelib import load_pretrained

    if not isinstance(reference, int) or reference < 8:
        raise ValueError(f"reference must be an int >= 8 (real renders to standardise the cues on), got {reference!r}")
    classifier = (classifier if classifier is not None else load_pretrained("expression_classifier")).eval()
    real = _reference_renders(study, reference, seed)
    fit, held = real[: len(real) // 2], real[len(real) // 2:]
    features, _, sharp = _raw_cues(fit, classifier)
    model, median = LedoitWolf().fit(features), float(np.median(sharp))

    def cues(images):
        f, c, s = _raw_cues(images, classifier)
        distance = np.sqrt(model.mahalanobis(f))
        return np.stack([-distance, c, -np.abs(np.log(np.maximum(s, 1e-12) / median))], 1)

    base = cues(held)
    paths = sorted({image for trial in study.trials for image in trial.images})
    values = np.concatenate([cues(_image_tensors([study.folder / p for p in paths[i:i + 64]]))
                             for i in range(0, len(paths), 64)])
    standard = (values - base.mean(0)) / base.std(0)
    return pd.DataFrame(standard, index=pd.Index(paths, name="image"), columns=list(CUES))


def _answer(rater: SimulatedRater, realness: np.ndarray, kind: str, rng: np.random.Generator) -> int:
    """The index (in shown order) a simulated rater picks; for real-or-fake, 0 = "real", 1 = "fake"."""
    if not rater.attentive:
        return int(rng.integers(2 if kind == "real_or_fake" else len(realness)))
    if kind == "real_or_fake":
        logit = SLOPE / rater.noise * (realness[0] + OFFSET) + rater.bias
        return int(rng.random() >= 1 / (1 + np.exp(-logit)))
    # Luce's choice model: the pick maximises scaled realness plus Gumbel noise
    return int(np.argmax(SLOPE / rater.noise * realness + rng.gumbel(size=len(realness))))


def simulate_answers(study: Study, db: StudyDB, panel: list[SimulatedRater], cues: pd.DataFrame,
                     seed: int = 0) -> int:
    """Every simulated rater answers every trial they have not answered yet, in their plan's order,
    through ``db.record(..., simulated=True)``. Returns the number of answers written."""
    rng = np.random.default_rng(seed)
    written = 0
    for rater in panel:
        weights = np.asarray(rater.weights)
        while (step := db.next_trial(rater.id)) is not None:
            trial, order = step
            realness = np.array([cues.loc[trial.images[k]].to_numpy() @ weights for k in order])
            pick = _answer(rater, realness, trial.kind, rng)
            shown = [trial.methods[k] for k in order]
            response = ("real", "fake")[pick] if trial.kind == "real_or_fake" else shown[pick]
            milliseconds = int(rater.typical_ms * rng.lognormal(0.0, 0.35))
            db.record(rater.id, trial.id, shown, response, milliseconds, simulated=True)
            written += 1
    return written
