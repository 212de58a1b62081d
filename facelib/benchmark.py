"""Every shipped editor on the same held-out identities: one tidy table, with 95 % intervals.

No paper compares these methods on the same data with the same instruments. This module does::

    from facelib import benchmark

    result = benchmark.run(n=600)                  # every editor whose weights ship
    result.table                                   # editor, target, metric, value, low, high, ...
    result.pairwise("expression accuracy (facelib classifier)", "expression")

How it is measured:

- **The same edits for everyone.** The held-out pairs are :func:`facelib.evaluation.protocol.held_out_pairs`
  (``spread=True``: evenly over the split's identities), rendered once per image size; each editor
  is asked, through :func:`~facelib.evaluation.protocol.run_editor`, for every target kind it accepts
  (``expression``, ``aus``, ``reference``). The value of a metric is the one ``evaluate()`` prints
  for the same edits (a test checks it).
- **Scores per edit, statistics per set.** Each edit gets its own scores (PSNR, SSIM, MS-SSIM,
  sharpness, whether the expression classifier finds the target, AU squared error, whether the
  verification pairs it is in are decided right); AU PCC and the Fréchet distance are statistics of
  a whole set and are recomputed on every resampled set.
- **Intervals over identities.** Edits of one person are not independent, so the unit resampled is
  the identity: a 95 % BCa interval from ``scipy.stats.bootstrap`` over the held-out identities
  (the verification threshold stays the one chosen on all real pairs).
- **Tests between methods.** Two editors edited the same pairs, so :meth:`BenchmarkResult.pairwise`
  runs a paired permutation test (``scipy.stats.permutation_test``: which editor made a person's
  edits is swapped, person by person), Holm-corrected over the pairs of editors compared.
- **Costs.** Milliseconds per 1-image edit (:func:`facelib.metrics.latency`, all editors timed in
  one run), parameters, and training minutes from the weights manifest.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from . import metrics as _metrics
from .conventions import AU_MAX
from .editors import TARGET_KINDS, Editor, Target, editor_info, list_editors, load_editor
from .evaluation import protocol
from .metrics import FD_NAME, VERIFICATION_NAME
from .utils import apply_in_batches, eval_mode, get_device

__all__ = [
    "QUALITY_METRICS", "COST_METRICS", "COLUMNS", "EditScores", "BenchmarkResult", "shipped_editors",
    "takes_targets", "edits_preset",
    "score_edits", "interval", "paired_test", "costs", "run", "expression_grid",
]

#: The quality rows, each ``(name, higher_is_better)``, in table order.
QUALITY_METRICS = (
    ("expression accuracy (facelib classifier)", True),
    ("AU MSE (facelib AU regressor)", False),
    ("AU PCC (facelib AU regressor)", True),
    (VERIFICATION_NAME, True),
    (FD_NAME, False),
    ("PSNR (whole image, dB)", True),
    ("SSIM", True),
    ("MS-SSIM", True),
    ("sharpness (edited)", True),
)
#: The cost rows (no interval: one measurement each).
COST_METRICS = ("ms per edit (1 image, CPU)", "parameters", "training minutes")
#: The columns of :attr:`BenchmarkResult.table`.
COLUMNS = ["editor", "target", "metric", "value", "low", "high", "n_edits", "n_identities", "note"]
_HIGHER_IS_BETTER = dict(QUALITY_METRICS)


# ----------------------------------------------------------------------------------------
# Scores of one editor's edits, and the statistics computed from them
# ----------------------------------------------------------------------------------------
@dataclass
class EditScores:
    """One editor's edits of ``N`` held-out pairs for one target kind, scored edit by edit.

    identity: ``[N]`` the person of each edit (the unit the intervals resample). per_edit: name ->
    ``[N]`` float (NaN where an evaluator is missing). au_predicted, au_true: ``[N, 17]``;
    features, real_features: ``[N, D]`` expression features of the edits and of the real targets
    (``None`` without the expression classifier).
    """

    editor: str
    target: str
    identity: np.ndarray
    per_edit: dict[str, np.ndarray]
    au_predicted: np.ndarray | None
    au_true: np.ndarray
    features: np.ndarray | None
    real_features: np.ndarray | None
    real_sharpness: float

    @property
    def count(self) -> int:
        return len(self.identity)

    def people(self) -> tuple[np.ndarray, list[np.ndarray]]:
        """The identities, and for each the indices of its edits."""
        people = np.unique(self.identity)
        return people, [np.flatnonzero(self.identity == person) for person in people]

    def statistic(self, name: str, edits: np.ndarray) -> float:
        """The metric ``name`` of the edits with indices ``edits`` (repeats allowed: a bootstrap sample)."""
        if name == "AU PCC (facelib AU regressor)":
            if self.au_predicted is None:
                return math.nan
            return float(_metrics.au_mse_pcc(torch.from_numpy(self.au_predicted[edits]),
                                             torch.from_numpy(self.au_true[edits])).loc["Avg", "PCC"])
        if name == FD_NAME:
            if self.features is None:
                return math.nan
            # the exact SVD route: the same value as evaluate()'s sqrtm to ~1e-5, several times faster
            return _metrics.frechet_distance(torch.from_numpy(self.features[edits]),
                                             torch.from_numpy(self.real_features[edits]), method="svd")
        values = self.per_edit[name][edits]
        # PSNR is inf for an exact edit: averaged over the others, as evaluate() does
        finite = values[np.isfinite(values)]
        return float(finite.mean()) if len(finite) else math.nan

    def concatenated(self, other: "EditScores") -> "EditScores":
        """Both editors' scores in one set (``other``'s edits after these), for a paired test."""
        def join(a, b):
            return None if a is None or b is None else np.concatenate([a, b])

        return EditScores(
            f"{self.editor}+{other.editor}", self.target, np.concatenate([self.identity, other.identity]),
            {name: np.concatenate([values, other.per_edit[name]]) for name, values in self.per_edit.items()},
            join(self.au_predicted, other.au_predicted), np.concatenate([self.au_true, other.au_true]),
            join(self.features, other.features), join(self.real_features, other.real_features), self.real_sharpness)


def _per_edit_verification(bundle: protocol.Bundle) -> np.ndarray:
    """``[N]`` the fraction of each edit's verification pairs (its own, and one against another
    person where there is one) decided right, at the threshold chosen on the real pairs."""
    pairs = protocol.verification_pairs(bundle)
    if pairs is None:
        return np.full(bundle.count, math.nan)
    correct = pairs.edited_correct().double()
    # pair k belongs to the edit it compares the source with: others[k] for same pairs, anchors[k] for different
    owner = torch.where(pairs.same, pairs.others, pairs.anchors)
    totals = torch.zeros(bundle.count, dtype=torch.float64).index_add_(0, owner, correct)
    counts = torch.zeros(bundle.count, dtype=torch.float64).index_add_(0, owner, torch.ones_like(correct))
    return (totals / counts).numpy()


@torch.no_grad()
def score_edits(bundle: protocol.Bundle, target: str) -> EditScores:
    """Score every edit of ``bundle`` (which carries its evaluators) on its own."""
    edited, real, size, device = bundle.edited, bundle.target, bundle.batch_size, bundle.device
    nan = np.full(bundle.count, math.nan)
    scales = _metrics.ms_ssim_scales(min(edited.shape[-2:]))
    per_edit = {
        "PSNR (whole image, dB)": _metrics.psnr(edited, real, per_image=True).double().numpy(),
        "SSIM": _metrics.ssim(edited, real, per_image=True).double().numpy(),
        "MS-SSIM": _metrics.ms_ssim_per_image(edited, real, scales=scales).double().numpy(),
        "sharpness (edited)": _metrics.sharpness(edited, per_image=True).double().numpy(),
        "expression accuracy (facelib classifier)": nan, "AU MSE (facelib AU regressor)": nan, VERIFICATION_NAME: nan,
    }
    features = real_features = au_predicted = None
    if "expression_classifier" in bundle.evaluators:
        classifier = bundle.evaluators["expression_classifier"]
        with eval_mode(classifier):
            logits = apply_in_batches(classifier, edited, size, device)
            if hasattr(classifier, "features"):
                features = apply_in_batches(classifier.features, edited, size, device).double().numpy()
                real_features = apply_in_batches(classifier.features, real, size, device).double().numpy()
        per_edit["expression accuracy (facelib classifier)"] = (logits.argmax(1) == bundle.target_emotion).double().numpy()
    if "au_regressor" in bundle.evaluators:
        regressor = bundle.evaluators["au_regressor"]
        with eval_mode(regressor):
            au_predicted = apply_in_batches(regressor, edited, size, device).clamp(0, AU_MAX).double().numpy()
        per_edit["AU MSE (facelib AU regressor)"] = ((au_predicted - bundle.target_aus.double().numpy()) ** 2).mean(1)
    if "identity_embedder" in bundle.evaluators:
        per_edit[VERIFICATION_NAME] = _per_edit_verification(bundle)
    return EditScores(bundle.editor, target, bundle.identity.numpy(), per_edit, au_predicted,
                      bundle.target_aus.double().numpy(), features, real_features,
                      float(_metrics.sharpness(real)))


# ----------------------------------------------------------------------------------------
# Uncertainty: intervals over identities, paired tests between editors
# ----------------------------------------------------------------------------------------
def interval(scores: EditScores, name: str, *, resamples: int = 1000, confidence: float = 0.95,
             seed: int = 0) -> tuple[float, float, float]:
    """``(value, low, high)``: the metric on all edits, and its BCa bootstrap interval over identities."""
    from scipy import stats

    value = scores.statistic(name, np.arange(scores.count))
    people, edits_of = scores.people()
    if not math.isfinite(value) or len(people) < 3:
        return value, math.nan, math.nan  # too few people to say anything about the spread

    def over_people(sample):
        return scores.statistic(name, np.concatenate([edits_of[int(i)] for i in sample]))

    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)  # handled below
        result = stats.bootstrap((np.arange(len(people)),), over_people, n_resamples=resamples, vectorized=False,
                                 confidence_level=confidence, method="BCa", rng=np.random.default_rng(seed))
    low, high = result.confidence_interval
    if not (math.isfinite(low) and math.isfinite(high)):  # BCa degenerates when the resamples barely vary
        return value, value, value
    return value, float(low), float(high)


def paired_test(a: EditScores, b: EditScores, name: str, *, resamples: int = 2000, seed: int = 0) -> dict:
    """Paired permutation test of ``metric(a) - metric(b)`` with identities as the pairing unit.

    Under the null hypothesis the two editors are exchangeable, so for each person whose edits
    they made, whose edits are whose is swapped at random; the p-value is two-sided. ``a`` and
    ``b`` must have edited the same pairs.
    """
    from scipy import stats

    if a.target != b.target or not np.array_equal(a.identity, b.identity):
        raise ValueError(f"{a.editor} and {b.editor} did not edit the same pairs ({a.target} vs {b.target}); "
                         "a paired test needs the same held-out pairs for both")
    both = a.concatenated(b)
    people, edits_of = a.people()
    offset = a.count

    def edits(side):  # an entry i < P is person i's edits by a, P + i the same person's edits by b
        return np.concatenate([edits_of[i] if i < len(people) else edits_of[i - len(people)] + offset
                               for i in map(int, side)])

    def difference(x, y):
        return both.statistic(name, edits(x)) - both.statistic(name, edits(y))

    with np.errstate(all="ignore"):
        result = stats.permutation_test((np.arange(len(people)), np.arange(len(people)) + len(people)), difference,
                                        permutation_type="samples", vectorized=False, n_resamples=resamples,
                                        alternative="two-sided", rng=np.random.default_rng(seed))
    return {"difference": float(result.statistic), "p": float(result.pvalue)}


# ----------------------------------------------------------------------------------------
# Costs: speed, size, training time
# ----------------------------------------------------------------------------------------
def costs(editor: Editor, images: torch.Tensor, target) -> list[dict]:
    """The cost rows of one editor: ms per edit of ``images`` (``[1, 3, S, S]``: one image) toward
    ``target``, parameters, training minutes."""
    from .pretrained import read_manifest

    milliseconds = _metrics.latency(lambda x: editor.edit(x, target), images, warmup=2, repeats=15)
    parameters = sum(_metrics.count_parameters(module) for module in editor.modules().values())
    try:
        weights = editor_info(editor.name).weights
    except ValueError:  # an editor built by hand, not registered: no manifest entry to read
        weights = None
    manifest = read_manifest()
    if weights is None:
        minutes, note = math.nan, "not a registered editor: no manifest entry"
    elif not weights:
        minutes, note = 0.0, "nothing is trained"
    else:
        minutes = sum(manifest[name]["wall_time_s"] for name in weights) / 60
        note = "wall time of " + ", ".join(f"{name} ({manifest[name]['command']})" for name in weights)
    return [
        {"metric": COST_METRICS[0], "value": milliseconds, "note": "median of 15, one image at the model size"},
        {"metric": COST_METRICS[1], "value": float(parameters), "note": "all networks the editor runs"},
        {"metric": COST_METRICS[2], "value": minutes, "note": note},
    ]


# ----------------------------------------------------------------------------------------
# The benchmark
# ----------------------------------------------------------------------------------------
def shipped_editors() -> list[str]:
    """The registered editors whose weights ship, in registry order: what :func:`run` measures."""
    table = list_editors()
    return list(table.loc[table["weights_shipped"], "name"])


def takes_targets(editor: Editor, kind: str, preset: str) -> bool:
    """Whether ``editor`` can edit every held-out pair of ``preset`` toward ``kind`` targets: it accepts
    the kind, and for ``"expression"`` it knows every expression of the preset (StarGAN knows rafd's
    eight emotions, not multipie's squint and scream)."""
    from .data.presets import get_preset

    if kind not in editor.accepts:
        return False
    return kind != "expression" or set(get_preset(preset).expressions) <= set(editor.expressions)


def edits_preset(editor: str | Editor, preset: str) -> bool:
    """Whether ``editor`` (an Editor or a registered name) takes some kind of target for every held-out
    pair of ``preset`` (:func:`takes_targets`): who can be compared on that preset's pairs."""
    editor = load_editor(editor) if isinstance(editor, str) else editor
    return any(takes_targets(editor, kind, preset) for kind in TARGET_KINDS)


@dataclass
class BenchmarkResult:
    """What :func:`run` measured: ``table`` (tidy, :data:`COLUMNS`) and the per-edit ``scores``
    by ``(editor, target)``, kept for :meth:`pairwise`."""

    table: pd.DataFrame
    scores: dict[tuple[str, str], EditScores]
    description: str

    def wide(self, column: str = "value") -> pd.DataFrame:
        """One row per (target, editor), one column per metric."""
        order = [name for name, _ in QUALITY_METRICS] + ["sharpness (real targets)", *COST_METRICS]
        wide = self.table.pivot_table(index=["target", "editor"], columns="metric", values=column, sort=False)
        return wide[[name for name in order if name in wide.columns]]

    def summary(self, digits: int = 3) -> pd.DataFrame:
        """:meth:`wide` with each quality number written ``value [low, high]`` (its 95 % interval)."""
        def written(value, low, high):
            if not math.isfinite(value):
                return "n/a"
            if math.isfinite(low) and math.isfinite(high):
                return f"{value:.{digits}g} [{low:.{digits}g}, {high:.{digits}g}]"
            return f"{value:.{digits}g}"

        text = self.table.assign(text=[written(*values) for values in
                                       self.table[["value", "low", "high"]].itertuples(index=False)])
        wide = text.pivot(index=["target", "editor"], columns="metric", values="text")
        order = [name for name, _ in QUALITY_METRICS] + ["sharpness (real targets)", *COST_METRICS]
        return wide.loc[self.wide().index, [name for name in order if name in wide.columns]]

    def pairwise(self, metric: str, target: str, *, resamples: int = 2000, alpha: float = 0.05) -> pd.DataFrame:
        """Every pair of editors measured on ``target``, tested on ``metric`` (Holm-corrected).

        Columns: ``a, b, difference`` (metric(a) - metric(b)), ``p``, ``p_holm``, ``verdict`` (which
        editor is better, only where ``p_holm < alpha``; "no significant difference" otherwise).
        """
        from statsmodels.stats.multitest import multipletests

        if metric not in _HIGHER_IS_BETTER:
            raise ValueError(f"unknown metric {metric!r}; the tested metrics are {list(_HIGHER_IS_BETTER)}")
        editors = [editor for (editor, kind) in self.scores if kind == target]
        if len(editors) < 2:
            raise ValueError(f"fewer than two editors were measured on {target!r} targets (found {editors}); "
                             f"targets measured: {sorted({kind for _, kind in self.scores})}")
        rows = [{"a": a, "b": b, **paired_test(self.scores[a, target], self.scores[b, target], metric,
                                               resamples=resamples)}
                for a, b in itertools.combinations(editors, 2)]
        table = pd.DataFrame(rows)
        table["p_holm"] = multipletests(table["p"], method="holm")[1]
        higher = _HIGHER_IS_BETTER[metric]
        table["verdict"] = [
            "no significant difference" if not p < alpha else
            f"{a if (difference > 0) == higher else b} better"
            for a, b, difference, p in zip(table["a"], table["b"], table["difference"], table["p_holm"])
        ]
        table.insert(0, "metric", metric)
        return table


def _rows(scores: EditScores, resamples: int, seed: int) -> list[dict]:
    people = len(np.unique(scores.identity))
    rows = []
    for name, _ in QUALITY_METRICS:
        value, low, high = interval(scores, name, resamples=resamples, seed=seed)
        rows.append({"metric": name, "value": value, "low": low, "high": high, "n_edits": scores.count,
                     "n_identities": people, "note": "" if math.isfinite(value) else "not measured: evaluator missing"})
    rows.append({"metric": "sharpness (real targets)", "value": scores.real_sharpness, "low": math.nan,
                 "high": math.nan, "n_edits": scores.count, "n_identities": people,
                 "note": "reference for sharpness (edited)"})
    return rows


def run(editors: Sequence[str | Editor] | None = None, *, target_kinds: Sequence[str] = TARGET_KINDS,
        preset: str = "multipie", split: str = "test", n: int = 600, resamples: int = 1000, seed: int = 0,
        batch_size: int = 32, device: str | torch.device = "cpu", progress: bool = True) -> BenchmarkResult:
    """Measure ``editors`` (default: :func:`shipped_editors`) on ``n`` held-out pairs spread over
    the split's identities, for each target kind in ``target_kinds`` that an editor accepts.

    Every editor edits the same pairs (per image size); ``resamples`` bootstrap resamples give each
    quality number its 95 % interval over identities. Returns a :class:`BenchmarkResult`.
    """
    unknown = [kind for kind in target_kinds if kind not in TARGET_KINDS]
    if unknown or not target_kinds:
        raise ValueError(f"target_kinds must be a non-empty subset of {list(TARGET_KINDS)}, got {list(target_kinds)}")
    if not isinstance(resamples, int) or resamples < 100:
        raise ValueError(f"resamples must be an int >= 100 (BCa intervals need them), got {resamples!r}")
    device = get_device(device)
    names = shipped_editors() if editors is None else list(editors)
    if not names:
        raise ValueError("no editors to measure: none is registered with shipped weights (facelib.list_editors())")
    loaded = [load_editor(e, device=device) if isinstance(e, str) else e.to(device) for e in names]
    found, missing = protocol.resolve_evaluators(None)
    for module in found.values():
        module.to(device)
    pairs_by_size: dict[int, protocol.HeldOutPairs] = {}
    rows, scores = [], {}
    jobs = [(editor, kind) for editor in loaded for kind in target_kinds if takes_targets(editor, kind, preset)]
    skipped = [f"{editor.name}: {kind} targets (it does not know every expression of {preset})"
               for editor in loaded for kind in target_kinds
               if kind in editor.accepts and not takes_targets(editor, kind, preset)]
    for editor, kind in tqdm(jobs, desc="benchmark", disable=not progress):
        if editor.image_size not in pairs_by_size:
            pairs_by_size[editor.image_size] = protocol.held_out_pairs(
                preset, split, editor.image_size, n, batch_size=batch_size, seed=seed, spread=True, progress=False)
        pairs = pairs_by_size[editor.image_size]
        bundle = protocol.run_editor(editor, kind, pairs, progress=False)
        bundle = dataclasses.replace(bundle, evaluators=found, missing=missing, batch_size=batch_size, device=device)
        scores[editor.name, kind] = score_edits(bundle, kind)
        one = {key: value[:1] for key, value in pairs.batches[0].items()}  # time one-image edits
        target = protocol.held_out_target(kind, one, partners=pairs.partners[:1])
        measured = _rows(scores[editor.name, kind], resamples, seed) + [
            {**cost, "low": math.nan, "high": math.nan, "n_edits": 1, "n_identities": 1}
            for cost in costs(editor, one["source"], target)]
        rows += [{"editor": editor.name, "target": kind, **r} for r in measured]
    description = next(iter(pairs_by_size.values())).description if pairs_by_size else ""
    table = pd.DataFrame(rows, columns=COLUMNS)
    table.attrs.update(description=description, n=n, resamples=resamples, skipped=skipped)
    return BenchmarkResult(table, scores, description)



# ----------------------------------------------------------------------------------------
# The figure a reader looks at first: the same faces, every expression, every method
# ----------------------------------------------------------------------------------------
@torch.no_grad()
def expression_grid(editors: Sequence[str | Editor] | None = None, *, faces: int = 6, preset: str = "multipie",
                    split: str = "test", size: int = 64, seed: int = 0) -> dict:
    """``faces`` held-out people (neutral, frontal) edited to every expression of ``preset`` by every
    editor, beside the true renders of the same person making it.

    An ``expression`` editor is asked for the name (intensity 1, source "neutral"); an editor that
    only takes ``reference`` targets gets the expression rendered on another held-out person.
    Returns ``images`` ``[faces * (1 + editors), 1 + expressions, 3, S, S]`` (column 0: the
    source), ``row_labels`` and ``column_labels``, for :func:`facelib.viz.show_images`.
    """
    from .data import SynthFaces, emotion_asymmetry, emotion_aus, render

    loaded = [load_editor(e) if isinstance(e, str) else e for e in (shipped_editors() if editors is None else editors)]
    if any(editor.image_size != size for editor in loaded):
        raise ValueError(f"every editor must edit {size}x{size} images for one grid; got "
                         f"{[(editor.name, editor.image_size) for editor in loaded]}")
    identities = SynthFaces(preset, split, size=size, seed=seed).identities
    if len(identities) < faces + 1:
        raise ValueError(f"the {split!r} split of {preset!r} has {len(identities)} identities; {faces} faces need "
                         f"{faces + 1} (one more shows reference targets)")
    people = torch.tensor(identities[:faces])
    partners = torch.tensor(identities[1:faces + 1])  # each face's reference is the next person's
    expressions = [name for name in SynthFaces(preset, split, size=size).expressions if name != "neutral"]
    yaw = torch.zeros(faces)
    neutral = render(people, emotion_aus("neutral", identity=people), yaw, size=size)["image"]  # [F, 3, S, S]
    columns = {"truth": [], **{editor.name: [] for editor in loaded}}
    for name in expressions:
        aus, reference_aus = emotion_aus(name, identity=people), emotion_aus(name, identity=partners)
        columns["truth"].append(render(people, aus, yaw, size=size, asymmetry=emotion_asymmetry(name, people))["image"])
        reference = render(partners, reference_aus, yaw, size=size, asymmetry=emotion_asymmetry(name, partners))["image"]
        known = {"identity": people, "yaw": yaw, "reference_identity": partners, "reference_yaw": yaw}
        for editor in loaded:
            if "expression" in editor.accepts and name in editor.expressions:
                target = Target(expression=name, intensity=1.0, source_expression="neutral", known=known)
            elif "reference" in editor.accepts:
                target = Target(reference=reference, known=known)
            else:
                columns[editor.name].append(torch.full_like(neutral, 1.0))  # cannot edit to it: a blank tile
                continue
            columns[editor.name].append(editor.edit(neutral, target).output.clamp(-1, 1))
    rows, labels = [], []
    for face in range(faces):
        for method, tiles in columns.items():
            rows.append(torch.stack([neutral[face]] + [tile[face] for tile in tiles]))
            labels.append(f"{method} (person {face + 1})" if method == "truth" else method)
    return {"images": torch.stack(rows), "row_labels": labels, "column_labels": ["source", *expressions]}
