"""One evaluation protocol for every editor: ``evaluate(editor, target_kind, ...)`` -> a tidy table.

Every method, paper or baseline, is measured the same way: the first ``n`` held-out
``SynthFaces(preset, split, size=editor.image_size, pairs=True, seed=seed)`` pairs (S, T) of
one person, each edit asked for through a :class:`facelib.editors.Target` built from what is
known about T, and every registered metric run on what came back::

    from facelib.evaluation import evaluate

    table = evaluate("fvae", "expression", n=256)     # or an Editor instance
    table.pivot(index="metric", columns="editor", values="value")

The three kinds of target (``target_kind``):

- ``"expression"``: T's emotion name at intensity 1, with ``source_expression`` = S's emotion
  (the labels are known, as FVAE's Algorithm 1 uses them);
- ``"aus"``: T's true 17 AU intensities;
- ``"reference"``: a render of *another* held-out identity showing T's AUs at T's yaw: the
  expression to copy, not the answer. Only ``oracle=True`` hands the editor the true target
  image itself (FVAE Table 1's "true latent" setting); the true target reaches an editor in
  no other way.

The table has one row per metric, the same rows in the same order for every editor (a metric
that cannot be measured, e.g. without its evaluator network, is a NaN row whose note says why),
with columns ``editor, target, metric, value, n, note``. Tables of several editors concatenate
(``pandas.concat``) into one long table.

Metrics are small functions registered with :func:`metric` (or :func:`register_metric`): each
takes the collected :class:`Bundle` and returns its rows. The pipeline's steps are public so
that a paper's own table can reuse them (``facelib.evaluation.fvae.table1``):
:func:`held_out_pairs` renders the pairs once, :func:`run_editor` collects one editor's edits
into a :class:`Bundle`, :func:`measure` runs the metrics on it.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import pandas as pd
import torch
from tqdm.auto import tqdm

from facelib import metrics as _metrics
from facelib.conventions import AU_MAX, EXPRESSIONS, check_images
from facelib.editors import TARGET_KINDS, Editor, Target
from facelib.metrics import FD_NAME, VERIFICATION_NAME, VERIFICATION_REAL_NAME
from facelib.utils import apply_in_batches, eval_mode, get_device

__all__ = [
    "EVALUATOR_NAMES", "COLUMNS", "Bundle", "HeldOutPairs", "MetricInfo", "metric", "register_metric",
    "list_metrics", "row", "resolve_evaluators", "held_out_pairs", "held_out_target", "run_editor", "measure",
    "target_label", "evaluate", "au_table", "Verification", "verification_pairs",
]

#: The evaluator networks the metrics use, by their ``facelib.load_pretrained`` names.
EVALUATOR_NAMES = ("expression_classifier", "au_regressor", "identity_embedder")
#: The columns of :func:`evaluate`'s table.
COLUMNS = ["editor", "target", "metric", "value", "n", "note"]


# ----------------------------------------------------------------------------------------
# What the metrics read: one bundle of edits and truths
# ----------------------------------------------------------------------------------------
@dataclass
class Bundle:
    """One editor's edits of ``N`` held-out pairs, with the truths to judge them by (all on the CPU).

    edited: ``[N, 3, S, S]`` in [-1, 1]; flow: the editor's ``EditResult.flow`` ``[N, 2, S, S]``
    or ``None``; source, target ``[N, 3, S, S]``; visible ``[N, 1, S, S]`` (target pixels the true
    flow explains); true_flow ``[N, 2, S, S]``; identity, target_emotion ``[N]`` (long);
    target_aus ``[N, 17]``. evaluators: the evaluator networks by name; missing: why each
    absent one is absent. description: where the pairs came from.
    """

    editor: str
    edited: torch.Tensor
    flow: torch.Tensor | None
    source: torch.Tensor
    target: torch.Tensor
    visible: torch.Tensor
    true_flow: torch.Tensor
    identity: torch.Tensor
    target_emotion: torch.Tensor
    target_aus: torch.Tensor
    description: str = ""
    target_landmarks: torch.Tensor | None = None  # [N, K, 2] pixel (x, y) of the target faces (the crop metrics)
    evaluators: dict[str, torch.nn.Module] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)
    batch_size: int = 32
    device: torch.device = torch.device("cpu")
    seed: int = 0

    @property
    def count(self) -> int:
        return len(self.edited)

    @classmethod
    def from_pairs(cls, pairs: "HeldOutPairs", editor: str, edited: torch.Tensor, flow: torch.Tensor | None) -> "Bundle":
        """The bundle of ``edited`` ``[count, 3, S, S]`` (and ``flow``) made from ``pairs``' sources."""
        if len(edited) != pairs.count:
            raise ValueError(f"{editor} gave {len(edited)} edits for {pairs.count} pairs")
        return cls(
            editor=editor, edited=edited, flow=flow, source=pairs.truth("source").float(),
            target=pairs.truth("target").float(), visible=pairs.truth("visible").float(),
            true_flow=pairs.truth("flow").float(), identity=pairs.truth("identity").long(),
            target_emotion=pairs.truth("target_emotion").long(), target_aus=pairs.truth("target_aus").float(),
            description=pairs.description, seed=pairs.dataset.seed,
            target_landmarks=pairs.truth("target_landmarks").float() if "target_landmarks" in pairs.batches[0] else None,
        )


def row(metric: str, value: float, n: int, note: str) -> dict:
    """One row of the table (the protocol adds ``editor`` and ``target``)."""
    return {"metric": metric, "value": float(value), "n": int(n), "note": note}


# ----------------------------------------------------------------------------------------
# The metric registry
# ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MetricInfo:
    """A registered metric: the rows it returns (``names``, in order), its function and the
    evaluator it needs (``None``: it needs only the images and the truths)."""

    names: tuple[str, ...]
    fn: Callable[[Bundle], list[dict]]
    needs: str | None = None


_METRICS: dict[str, MetricInfo] = {}


def register_metric(names: str | Sequence[str], fn: Callable[[Bundle], list[dict]], *, needs: str | None = None,
                    replace: bool = False) -> MetricInfo:
    """Add a metric: ``fn(bundle) -> rows`` returns one :func:`row` per name in ``names``, in order.

    ``needs``: an evaluator name from :data:`EVALUATOR_NAMES`; without that evaluator the protocol
    writes NaN rows for ``names`` with a note saying why, and ``fn`` is not called.
    """
    names = (names,) if isinstance(names, str) else tuple(names)
    if not names or not all(isinstance(name, str) and name for name in names):
        raise ValueError(f"a metric needs one or more non-empty row names, got {names!r}")
    if not callable(fn):
        raise TypeError(f"fn must be callable as fn(bundle) -> rows, got {type(fn).__name__}")
    if needs is not None and needs not in EVALUATOR_NAMES:
        raise ValueError(f"unknown evaluator {needs!r}; metrics may need one of {list(EVALUATOR_NAMES)}")
    taken = {name for key, info in _METRICS.items() if not (replace and key == names[0]) for name in info.names}
    if (names[0] in _METRICS and not replace) or taken & set(names):
        raise ValueError(f"a metric with a row named {sorted(taken & set(names)) or names[0]!r} is already registered "
                         "(pass replace=True to replace it)")
    info = MetricInfo(names, fn, needs)
    _METRICS[names[0]] = info
    return info


def metric(*names: str, needs: str | None = None):
    """Decorator form of :func:`register_metric`: ``@metric("SSIM")`` above ``def ssim_row(bundle)``."""
    def register(fn):
        register_metric(names, fn, needs=needs)
        return fn
    return register


def list_metrics() -> list[str]:
    """Every row name the registered metrics produce, in table order."""
    return [name for info in _METRICS.values() for name in info.names]


def measure(bundle: Bundle, metrics: Sequence[str] | None = None) -> list[dict]:
    """Run the registered metrics (only those producing a row in ``metrics``, when given) on ``bundle``."""
    if metrics is not None:
        unknown = set(metrics) - set(list_metrics())
        if unknown:
            raise ValueError(f"unknown metrics {sorted(unknown)}; registered metrics are {list_metrics()}")
    rows = []
    for info in _METRICS.values():
        wanted = [name for name in info.names if metrics is None or name in metrics]
        if not wanted:
            continue
        if info.needs is not None and info.needs not in bundle.evaluators:
            note = bundle.missing.get(info.needs, f"skipped: no {info.needs!r} given")
            produced = [row(name, math.nan, 0, note) for name in info.names]
        else:
            produced = info.fn(bundle)
            if [r["metric"] for r in produced] != list(info.names):
                raise RuntimeError(f"the metric {info.names[0]!r} returned rows {[r['metric'] for r in produced]}, "
                                   f"not the rows it registered, {list(info.names)}")
        rows.extend(r for r in produced if r["metric"] in wanted)
    return rows


# ----------------------------------------------------------------------------------------
# The metrics: pixel fidelity, sharpness, flow, expression, AUs, identity
# ----------------------------------------------------------------------------------------
def _psnr_row(bundle: Bundle, name: str, mask: torch.Tensor | None, note: str) -> list[dict]:
    # a mean over images turns into inf as soon as one edit is exact: average the finite ones, count the rest
    values = _metrics.psnr(bundle.edited, bundle.target, mask=mask, per_image=True)
    finite = torch.isfinite(values)
    value = float(values[finite].mean()) if finite.any() else math.inf
    if not finite.all():
        note += f"; {int((~finite).sum())} of {bundle.count} edits equal the target exactly (PSNR inf), not averaged"
    return [row(name, value, bundle.count, note)]


@metric("PSNR (whole image, dB)")
def _psnr_whole(bundle: Bundle) -> list[dict]:
    return _psnr_row(bundle, "PSNR (whole image, dB)", None, f"vs ground-truth target; {bundle.description}")


@metric("PSNR (visible mask, dB)")
def _psnr_visible(bundle: Bundle) -> list[dict]:
    return _psnr_row(bundle, "PSNR (visible mask, dB)", bundle.visible, "over pixels the true flow explains")


def _crop_psnr(bundle: Bundle, name: str, landmarks: tuple[str, ...], what: str) -> list[dict]:
    from facelib.data import landmark_box_mask

    if bundle.target_landmarks is None:
        return [row(name, math.nan, bundle.count, "the pairs carry no target landmarks")]
    mask = landmark_box_mask(bundle.target_landmarks, landmarks, bundle.target.shape[-1])
    return _psnr_row(bundle, name, mask, f"box around the target's {what} landmarks + 3 px (DFT-Net's crops)")


@metric("PSNR (mouth crop, dB)")
def _psnr_mouth(bundle: Bundle) -> list[dict]:
    from facelib.data import MOUTH_LANDMARKS

    return _crop_psnr(bundle, "PSNR (mouth crop, dB)", MOUTH_LANDMARKS, "mouth")


@metric("PSNR (eye crop, dB)")
def _psnr_eyes(bundle: Bundle) -> list[dict]:
    from facelib.data import EYE_LANDMARKS

    return _crop_psnr(bundle, "PSNR (eye crop, dB)", EYE_LANDMARKS, "eye")


@metric("SSIM")
def _ssim(bundle: Bundle) -> list[dict]:
    return [row("SSIM", _metrics.ssim(bundle.edited, bundle.target), bundle.count,
                "11x11 Gaussian window, sigma 1.5, on [0, 1]")]


@metric("MS-SSIM")
def _ms_ssim(bundle: Bundle) -> list[dict]:
    size = min(bundle.edited.shape[-2:])
    return [row("MS-SSIM", _metrics.ms_ssim(bundle.edited, bundle.target), bundle.count,
                f"{_metrics.ms_ssim_scales(size)} scales at {size} px (5 need >= 161 px), on [0, 1]")]


@metric("sharpness (edited)")
def _sharpness_edited(bundle: Bundle) -> list[dict]:
    return [row("sharpness (edited)", _metrics.sharpness(bundle.edited), bundle.count,
                "variance of the Laplacian of luminance")]


@metric("sharpness (real targets)")
def _sharpness_real(bundle: Bundle) -> list[dict]:
    return [row("sharpness (real targets)", _metrics.sharpness(bundle.target), bundle.count,
                "reference for the row above")]


@metric("flow EPE (visible mask, px)")
def _flow_epe(bundle: Bundle) -> list[dict]:
    if bundle.flow is None:
        return [row("flow EPE (visible mask, px)", math.nan, 0, f"skipped: {bundle.editor} returns no flow")]
    return [row("flow EPE (visible mask, px)", _metrics.flow_epe(bundle.flow, bundle.true_flow, mask=bundle.visible),
                bundle.count, "the editor's flow vs the true flow, over pixels it explains")]


@metric("expression accuracy (facelib classifier)", "expression accuracy on real targets (facelib classifier)",
        FD_NAME, needs="expression_classifier")
def _expression(bundle: Bundle) -> list[dict]:
    classifier, count = bundle.evaluators["expression_classifier"], bundle.count
    labels, size, device = bundle.target_emotion.long(), bundle.batch_size, bundle.device
    rows = [
        row("expression accuracy (facelib classifier)",
            _metrics.classification_accuracy(classifier, bundle.edited, labels, size, device), count,
            "edited images vs the target emotion"),
        row("expression accuracy on real targets (facelib classifier)",
            _metrics.classification_accuracy(classifier, bundle.target, labels, size, device), count,
            "ceiling: the classifier on the true target images"),
    ]
    if not hasattr(classifier, "features"):
        return rows + [row(FD_NAME, math.nan, 0, "skipped: the expression classifier has no .features(x)")]
    with eval_mode(classifier):
        edited = apply_in_batches(classifier.features, bundle.edited, size, device)
        real = apply_in_batches(classifier.features, bundle.target, size, device)
    return rows + [row(FD_NAME, _metrics.frechet_distance(edited, real), count,
                       f"edited vs real targets, {edited.shape[1]}-d penultimate features; not FID; biased upwards at small n")]


@metric("AU MSE (facelib AU regressor)", "AU PCC (facelib AU regressor)", needs="au_regressor")
def _aus(bundle: Bundle) -> list[dict]:
    table = au_table(bundle)
    note = "Avg over 17 AUs (EGGAN Table 1): regressor(edited) vs true target AUs, 0-5 scale"
    flat = int(table["PCC"].iloc[:-1].isna().sum())
    return [row("AU MSE (facelib AU regressor)", table.loc["Avg", "MSE"], bundle.count, note),
            row("AU PCC (facelib AU regressor)", table.loc["Avg", "PCC"], bundle.count,
                note + f"; {flat} AUs without variance left out")]


def au_table(bundle: Bundle, regressor: torch.nn.Module | None = None) -> pd.DataFrame:
    """Per-AU MSE and PCC of the AU regressor on the edits against the true target AUs (EGGAN Table 1).

    Rows ``AU1 ... AU45`` and ``Avg`` (:func:`facelib.metrics.au_mse_pcc`); the regressor is the
    bundle's ``"au_regressor"`` unless one is given.
    """
    regressor = bundle.evaluators["au_regressor"] if regressor is None else regressor
    with eval_mode(regressor):
        predicted = apply_in_batches(regressor, bundle.edited, bundle.batch_size, bundle.device).clamp(0, AU_MAX)
    return _metrics.au_mse_pcc(predicted, bundle.target_aus.float())


def _different_identity_partner(identity: torch.Tensor, seed: int) -> torch.Tensor:
    """For each item, the index of an item with another identity (-1 where none exists)."""
    generator = torch.Generator().manual_seed(seed)
    partner = torch.full((len(identity),), -1, dtype=torch.long)
    for i in range(len(identity)):
        candidates = torch.nonzero(identity != identity[i]).flatten()
        if candidates.numel():
            partner[i] = candidates[torch.randint(candidates.numel(), (1,), generator=generator)]
    return partner


@dataclass
class Verification:
    """The verification pairs of one bundle (EGGAN Table 2) and how each was decided.

    Pairs ``k`` = (source[anchors[k]], X[others[k]]) with X the edits or the real targets; ``same[k]``
    says whether they show one person. The first ``count`` pairs are each item's own (same), the
    rest (source_i, X_j) with j of another identity. threshold: the cosine similarity best on the
    real pairs; edited_scores, real_scores: the pairs' cosine similarities.
    """

    anchors: torch.Tensor
    others: torch.Tensor
    same: torch.Tensor
    threshold: float
    source: torch.Tensor
    target: torch.Tensor
    edited: torch.Tensor

    def edited_correct(self) -> torch.Tensor:
        """``[pairs]`` bool: the edited pair decided right at the real pairs' threshold."""
        scores = torch.nn.functional.cosine_similarity(self.source[self.anchors].double(),
                                                       self.edited[self.others].double(), dim=1)
        return (scores > self.threshold) == self.same


def verification_pairs(bundle: Bundle) -> Verification | None:
    """Balanced pairs (source_i, edited_i) as same and (source_i, edited_j), j of another identity, as
    different, with the threshold best on the real pairs (source, real target); ``None`` when every
    pair shows one identity (no different pairs exist)."""
    embedder, count, size, device = bundle.evaluators["identity_embedder"], bundle.count, bundle.batch_size, bundle.device
    with eval_mode(embedder):
        source, target, edited = (apply_in_batches(embedder, images, size, device)
                                  for images in (bundle.source, bundle.target, bundle.edited))
    partner = _different_identity_partner(bundle.identity.long(), bundle.seed)
    has_partner = partner >= 0
    if not has_partner.any():
        return None
    anchors = torch.cat([torch.arange(count), torch.nonzero(has_partner).flatten()])
    others = torch.cat([torch.arange(count), partner[has_partner]])
    same = torch.cat([torch.ones(count, dtype=torch.bool), torch.zeros(int(has_partner.sum()), dtype=torch.bool)])
    threshold = _metrics.best_verification_threshold(source[anchors], target[others], same)
    return Verification(anchors, others, same, threshold, source, target, edited)


@metric(VERIFICATION_NAME, VERIFICATION_REAL_NAME, needs="identity_embedder")
def _identity(bundle: Bundle) -> list[dict]:
    """EGGAN Table 2, on the pairs of :func:`verification_pairs`."""
    pairs = verification_pairs(bundle)
    if pairs is None:
        return [row(name, math.nan, 0, "skipped: all pairs show one identity, no different pairs")
                for name in (VERIFICATION_NAME, VERIFICATION_REAL_NAME)]
    count, same = bundle.count, pairs.same
    described = f"{count} same + {len(same) - count} different pairs"
    folds = min(10, len(same))
    real_a, real_b = pairs.source[pairs.anchors], pairs.target[pairs.others]
    return [
        row(VERIFICATION_NAME, float(pairs.edited_correct().double().mean()), len(same),
            f"source vs edited, {described}, threshold {pairs.threshold:.3f} from real pairs"),
        row(VERIFICATION_REAL_NAME, _metrics.verification_accuracy(real_a, real_b, same, folds=folds),
            len(same), f"source vs real target, {described}, {folds}-fold cross-validated threshold"),
    ]


# ----------------------------------------------------------------------------------------
# The evaluators, the held-out pairs and the targets
# ----------------------------------------------------------------------------------------
def resolve_evaluators(evaluators: Mapping[str, torch.nn.Module | None] | None) -> tuple[dict, dict]:
    """``(found, missing)``: evaluators given explicitly win (``None`` skips one); the others come
    from ``facelib.load_pretrained`` where shipped. ``missing`` says why each absent one is absent."""
    evaluators = dict(evaluators or {})
    unknown = set(evaluators) - set(EVALUATOR_NAMES)
    if unknown:
        raise ValueError(f"unknown evaluators {sorted(unknown)}; accepted names are {list(EVALUATOR_NAMES)}")
    found, missing = {}, {}
    for name in EVALUATOR_NAMES:
        if name in evaluators:
            if evaluators[name] is None:
                missing[name] = f"skipped: evaluators[{name!r}] is None"
            elif not isinstance(evaluators[name], torch.nn.Module):
                raise TypeError(f"evaluators[{name!r}] must be a torch.nn.Module or None, got "
                                f"{type(evaluators[name]).__name__}")
            else:
                found[name] = evaluators[name]
            continue
        try:
            from facelib import load_pretrained

            found[name] = load_pretrained(name)
        except (ImportError, OSError, KeyError, ValueError, RuntimeError) as err:
            missing[name] = f"skipped: no shipped {name!r} ({type(err).__name__}: {err})"
    return found, missing


@dataclass
class HeldOutPairs:
    """The first ``count`` held-out pairs, rendered once in batches (several editors can share them).

    batches: ``SynthFaces.batch`` dicts; partners: ``[count]`` the renderer id of another held-out
    identity per pair, whose face shows the expression of a ``reference`` target.
    """

    dataset: object
    batches: list[dict[str, torch.Tensor]]
    partners: torch.Tensor
    description: str

    @property
    def count(self) -> int:
        return len(self.partners)

    def truth(self, key: str) -> torch.Tensor:
        """One item field of every pair, concatenated: ``truth("target")`` ``[count, 3, S, S]``."""
        return torch.cat([batch[key] for batch in self.batches])


def held_out_pairs(preset: str = "multipie", split: str = "test", size: int = 64, n: int = 256, *,
                   batch_size: int = 32, seed: int = 0, spread: bool = False, progress: bool = True) -> HeldOutPairs:
    """Render ``n`` pairs of ``SynthFaces(preset, split, size, pairs=True, seed=seed)``.

    The first ``n`` (``spread=False``, what the FVAE tables use), or ``n`` evenly spaced over the
    split (``spread=True``): pairs are ordered by identity, so the first 256 of rafd (280 pairs per
    person) are all one person, and a table over several people needs ``spread``.

    Each pair's reference partner is drawn (with ``seed``) uniformly from the split's other identities.
    """
    from facelib.data import SynthFaces

    if not isinstance(n, int) or isinstance(n, bool) or n < 2:
        raise ValueError(f"n must be an int of at least 2 (correlations, covariances and verification pairs need it), got {n!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    dataset = SynthFaces(preset, split, size=size, pairs=True, seed=seed)
    count = min(n, len(dataset))
    if count < 2:
        raise ValueError(f"SynthFaces({preset!r}, {split!r}) has {len(dataset)} pairs; at least 2 are needed")
    identities = torch.tensor(dataset.identities, dtype=torch.long)
    if len(identities) < 2:
        raise ValueError(f"the {split!r} split of {preset!r} has one identity: reference targets need another one")
    indices = torch.linspace(0, len(dataset) - 1, count).round().long() if spread else torch.arange(count)
    own = dataset.labels(indices)["identity"]
    position = (identities[None, :] == own[:, None]).long().argmax(1)
    # another identity of the split, uniformly: shift one's own position by 1 .. len - 1
    shift = torch.randint(1, len(identities), (count,), generator=torch.Generator().manual_seed(seed))
    partners = identities[(position + shift) % len(identities)]
    batches = [dataset.batch(indices[start:start + batch_size])
               for start in tqdm(range(0, count, batch_size), desc="rendering held-out pairs", disable=not progress,
                                 leave=False)]
    return HeldOutPairs(dataset, batches, partners, f"SynthFaces({preset!r}, {split!r}, size={size}, seed={seed})")


def held_out_target(kind: str, batch: dict[str, torch.Tensor], *, oracle: bool = False,
                    partners: torch.Tensor | None = None) -> Target:
    """The :class:`Target` of one batch of held-out pairs (see the module docstring for each kind).

    ``partners``: ``[B]`` renderer ids of the identities whose faces show a ``reference`` target's
    expression (not used with ``oracle=True``, where the reference is the true target).
    """
    _check_kind(kind, oracle)
    # the render parameters of the faces: only oracle editors read them (Target.known)
    known = {"identity": batch["identity"].long(), "yaw": batch["yaw"].float()}
    if kind == "expression":
        names = [EXPRESSIONS[int(i)] for i in batch["target_emotion"]]
        sources = [EXPRESSIONS[int(i)] for i in batch["source_emotion"]]
        return Target(expression=names, intensity=1.0, source_expression=sources, known=known)
    if kind == "aus":
        return Target(aus=batch["target_aus"].float(), known=known)
    if oracle:
        return Target(reference=batch["target"],
                      known={**known, "reference_identity": known["identity"], "reference_yaw": known["yaw"]})
    from facelib.data import emotion_asymmetry, render

    if partners is None or len(partners) != len(batch["target"]):
        raise ValueError("a reference target needs one partner identity per pair (or oracle=True)")
    # the target's expression on another face, in the same pose, drawn as SynthFaces draws that emotion
    asymmetry = emotion_asymmetry(batch["target_emotion"], partners)
    reference = render(partners, batch["target_aus"].float(), batch["yaw"].float(), size=batch["target"].shape[-1],
                       asymmetry=asymmetry)["image"]
    return Target(reference=reference, known={**known, "reference_identity": partners.long(), "reference_yaw": known["yaw"]})


def _check_kind(kind: str, oracle: bool) -> None:
    if kind not in TARGET_KINDS:
        raise ValueError(f"unknown target kind {kind!r}; the kinds are {list(TARGET_KINDS)}")
    if not isinstance(oracle, bool):
        raise TypeError(f"oracle must be True or False, got {oracle!r}")
    if oracle and kind != "reference":
        raise ValueError(f"oracle=True hands the editor the true target image, which only a 'reference' target can "
                         f"carry; got target_kind={kind!r} (use target_kind='reference', or oracle=False)")


def _check_accepts(editor: Editor, kind: str) -> None:
    """Refuse, before anything is rendered, a target kind the editor does not accept."""
    if kind not in editor.accepts:
        raise ValueError(f"{editor.name} does not accept {kind} targets; it accepts {list(editor.accepts)}")


def _resolve_editor(editor, device) -> Editor:
    if isinstance(editor, str):
        from facelib.editors import load_editor

        return load_editor(editor, device=device)
    if not isinstance(editor, Editor):
        raise TypeError(f"editor must be a facelib.editors.Editor or a registered name (facelib.list_editors()), "
                        f"got {type(editor).__name__}")
    return editor.to(device)


@torch.no_grad()
def run_editor(editor: Editor, target_kind: str, pairs: HeldOutPairs, *, oracle: bool = False,
               progress: bool = True) -> Bundle:
    """Edit every pair's source toward its :func:`held_out_target`; the edits and the truths as a :class:`Bundle`."""
    _check_kind(target_kind, oracle)
    _check_accepts(editor, target_kind)
    size = pairs.batches[0]["source"].shape[-1]
    if size != editor.image_size:
        raise ValueError(f"the pairs are {size}x{size} but {editor.name} edits {editor.image_size}x{editor.image_size} "
                         f"images; render them with held_out_pairs(..., size={editor.image_size})")
    edited, flows, start = [], [], 0
    for batch in tqdm(pairs.batches, desc=f"evaluate {editor.name}", disable=not progress, leave=False):
        partners = pairs.partners[start:start + len(batch["source"])]
        start += len(batch["source"])
        result = editor.edit(batch["source"], held_out_target(target_kind, batch, oracle=oracle, partners=partners))
        output = check_images(result.output, f"{editor.name}'s output")
        if output.shape != batch["source"].shape:
            raise ValueError(f"{editor.name} returned images {list(output.shape)}, not shaped like the sources "
                             f"{list(batch['source'].shape)}")
        edited.append(output.float().cpu().clamp(-1, 1))
        flows.append(None if result.flow is None else result.flow.float().cpu())
    flow = None if any(f is None for f in flows) else torch.cat(flows)
    return Bundle.from_pairs(pairs, editor.name, torch.cat(edited), flow)


def target_label(target_kind: str, oracle: bool) -> str:
    """The ``target`` column: the kind, and whether the true target was handed over."""
    return f"{target_kind} (oracle: the true target)" if oracle else target_kind


def evaluate(editor: Editor | str, target_kind: str = "expression", preset: str = "multipie", split: str = "test",
             n: int = 256, *, oracle: bool = False, evaluators: Mapping[str, torch.nn.Module | None] | None = None,
             metrics: Sequence[str] | None = None, batch_size: int = 32, seed: int = 0, spread: bool = False,
             device: str | torch.device = "cpu", progress: bool = True) -> pd.DataFrame:
    """Every registered metric of one editor on ``n`` held-out SynthFaces pairs (``spread``: see
    :func:`held_out_pairs`; the first ``n`` by default).

    editor: a :class:`facelib.editors.Editor` (moved to ``device``) or a registered name, loaded
        with its shipped weights.
    target_kind: ``"expression"``, ``"aus"`` or ``"reference"`` (module docstring); the editor must
        accept it. ``oracle=True`` (``reference`` only) gives the editor the true target image.
    evaluators: ``"expression_classifier"``, ``"au_regressor"``, ``"identity_embedder"`` modules; a
        missing key loads the shipped one, ``None`` skips it (its rows are NaN with a note).
    metrics: only these rows (names from :func:`list_metrics`); default all.

    Returns a ``pandas.DataFrame`` with columns :data:`COLUMNS`, one row per metric, the same rows
    for every editor (``.attrs``: ``n``, ``editor``, ``target``). Rows, as in the papers' tables:

    - PSNR over the whole image, over ``visible`` (where the true flow explains the target) and
      over the mouth and eye boxes of the target's landmarks (DFT-Net's crops), SSIM, MS-SSIM against the ground-truth target. PSNR is averaged over the edits that are not
      exact; the note counts the exact ones (PSNR inf), and the value is inf only when all are;
    - sharpness (variance of the Laplacian) of the edits and, for reference, of the real targets;
    - flow EPE over ``visible`` against the true flow (editors that return a flow);
    - with the expression classifier: accuracy on the target emotion (and of the real targets,
      the ceiling), and "FD (facelib expression features)" between edits and real targets;
    - with the AU regressor: AU MSE and PCC (EGGAN Table 1's Avg) against the true target AUs;
    - with the identity embedder: "identity verification (facelib embedder)" (EGGAN Table 2) at
      the threshold best on the real pairs, and the real pairs' own 10-fold accuracy.
    """
    _check_kind(target_kind, oracle)
    device = get_device(device)
    editor = _resolve_editor(editor, device)
    _check_accepts(editor, target_kind)
    found, missing = resolve_evaluators(evaluators)
    for module in found.values():
        module.to(device)
    pairs = held_out_pairs(preset, split, editor.image_size, n, batch_size=batch_size, seed=seed, spread=spread,
                           progress=progress)
    bundle = run_editor(editor, target_kind, pairs, oracle=oracle, progress=progress)
    bundle = dataclasses.replace(bundle, evaluators=found, missing=missing, batch_size=batch_size, device=device)
    label = target_label(target_kind, oracle)
    table = pd.DataFrame([{"editor": editor.name, "target": label, **r} for r in measure(bundle, metrics)],
                         columns=COLUMNS)
    table.attrs.update(n=pairs.count, editor=editor.name, target=label)
    return table
