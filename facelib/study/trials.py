"""The trials of a study: built once from any editors, stored as PNG files plus a JSON manifest.

Three kinds of trial (LEED Sec. 4.2 "User Studies", Table 3; FVAE Sec. 6.3, Table 2):

- ``real_or_fake``: one image, a method's edit or a real SynthFaces render; the rater answers
  "real" or "fake";
- ``which_more_real``: every method's edit of the *same* source side by side; the rater picks
  the most real one. The order the images are shown in is randomised per rater and recorded;
- ``attention``: a real render beside an obvious failure (noise, or the face cut into shuffled
  tiles). Anyone looking picks the real one; raters who do not are dropped (``filter_raters``).

Edits are of held-out identities (``facelib.evaluation.protocol.held_out_pairs(..., spread=True)``)
towards :func:`~facelib.evaluation.protocol.held_out_target`, the kind of target each editor
accepts (:func:`study_target_kind`). The "real" images are the pairs' true targets: the same
person showing the target expression, rendered by SynthFaces.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import shutil
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from facelib.editors import Editor, load_editor
from facelib.utils import atomic_write_bytes, atomic_write_text

__all__ = [
    "TRIAL_KINDS", "REAL", "FAILURE", "FAILURE_STYLES", "MANIFEST_NAME", "PROMPTS", "Trial", "Study",
    "study_target_kind", "obvious_failure", "build_study", "load_study",
]

#: The kinds of trial, in the order :func:`build_study` makes them.
TRIAL_KINDS = ("real_or_fake", "which_more_real", "attention")
#: The method label of a real SynthFaces render, and of an attention check's failure image.
REAL, FAILURE = "real", "failure"
#: How :func:`obvious_failure` breaks an image.
FAILURE_STYLES = ("noise", "scrambled")
MANIFEST_NAME = "study.json"
STUDY_FORMAT = 1
#: What the page asks for each kind of trial.
PROMPTS = {
    "real_or_fake": "Is this face real (an untouched image) or fake (edited by a computer)?",
    "which_more_real": "Which face looks most real? Click the button under it.",
    "attention": "Which face looks most real? Click the button under it.",
}
#: Target kinds in the order a study prefers them (LEED and FVAE edit by expression).
_KIND_PREFERENCE = ("expression", "reference", "aus")


@dataclass(frozen=True)
class Trial:
    """One trial. ``images``: PNG paths relative to the study folder; ``methods``: what each one is
    (an editor name, :data:`REAL` or :data:`FAILURE`), in the same (build) order; ``source``: the
    held-out pair the images come from."""

    id: str
    kind: str
    images: tuple[str, ...]
    methods: tuple[str, ...]
    source: int

    def to_json(self) -> dict:
        return {"id": self.id, "kind": self.kind, "images": list(self.images), "methods": list(self.methods),
                "source": self.source}

    @classmethod
    def from_json(cls, entry: dict) -> "Trial":
        return cls(str(entry["id"]), str(entry["kind"]), tuple(entry["images"]), tuple(entry["methods"]),
                   int(entry["source"]))

    def responses(self) -> tuple[str, ...]:
        """The answers this trial accepts: ``real``/``fake``, or the label of one shown image."""
        return ("real", "fake") if self.kind == "real_or_fake" else self.methods


@dataclass(frozen=True)
class Study:
    """A built study: its folder, trials, the editors' names and the target kind each one got."""

    folder: Path
    trials: tuple[Trial, ...]
    methods: tuple[str, ...]
    target_kinds: dict
    seed: int
    preset: str
    description: str
    fingerprint: str  # sha256 of the manifest: ties an answers database to this exact study

    def trial(self, trial_id: str) -> Trial:
        """The trial called ``trial_id``; an unknown id raises ``ValueError``."""
        for trial in self.trials:
            if trial.id == trial_id:
                return trial
        raise ValueError(f"this study has no trial {trial_id!r}; its trials are {self.trials[0].id} ... "
                         f"{self.trials[-1].id} ({len(self.trials)} in all)")

    def image_path(self, trial: Trial, index: int) -> Path:
        """The PNG file of ``trial``'s image ``index`` (build order)."""
        return self.folder / trial.images[index]

    def plan(self, rater: str) -> list[tuple[Trial, tuple[int, ...]]]:
        """The rater's trials in the order shown, each with the order its images are shown in.

        Both orders are random but a pure function of (study seed, rater id), so a rater who
        comes back gets the same sequence and resumes where they stopped.
        """
        rng = np.random.default_rng([self.seed, zlib.crc32(rater.encode("utf-8"))])
        order = rng.permutation(len(self.trials))
        return [(self.trials[i], tuple(int(k) for k in rng.permutation(len(self.trials[i].images)))) for i in order]


def study_target_kind(editor: Editor, preset: str | None = None) -> str:
    """The target kind a study asks of ``editor``: ``expression`` where accepted, else ``reference``, else ``aus``.

    With ``preset``, only a kind the editor can take for every held-out pair of that preset
    (:func:`facelib.benchmark.takes_targets`: GANimation knows eight expressions, not multipie's scream,
    so it is asked for the AUs there)."""
    from facelib.benchmark import takes_targets

    for kind in _KIND_PREFERENCE:
        if kind in editor.accepts and (preset is None or takes_targets(editor, kind, preset)):
            return kind
    where = "" if preset is None else f" for every pair of {preset}"
    raise ValueError(f"{editor.name} takes none of the target kinds {list(_KIND_PREFERENCE)}{where}")


def obvious_failure(image: torch.Tensor, style: str, seed: int = 0, tiles: int = 4) -> torch.Tensor:
    """An unmistakably broken version of ``image`` ``[3, S, S]`` for an attention check.

    ``noise``: uniform noise in [-1, 1]; ``scrambled``: the face cut into ``tiles`` x ``tiles``
    squares put back in a random order (colours kept, the face destroyed).
    """
    if style not in FAILURE_STYLES:
        raise ValueError(f"unknown failure style {style!r}; accepted are {list(FAILURE_STYLES)}")
    generator = torch.Generator().manual_seed(seed)
    if style == "noise":
        return torch.rand(image.shape, generator=generator) * 2 - 1
    channels, size = image.shape[0], image.shape[-1]
    step = size // tiles
    blocks = image[:, :step * tiles, :step * tiles].reshape(channels, tiles, step, tiles, step)
    blocks = blocks.permute(1, 3, 0, 2, 4).reshape(tiles * tiles, channels, step, step)
    # a derangement-like shuffle: retry until no tile keeps its place (few tries at 16 tiles)
    order = torch.randperm(tiles * tiles, generator=generator)
    while bool((order == torch.arange(tiles * tiles)).any()):
        order = torch.randperm(tiles * tiles, generator=generator)
    shuffled = blocks[order].reshape(tiles, tiles, channels, step, step).permute(2, 0, 3, 1, 4)
    out = image.clone()
    out[:, :step * tiles, :step * tiles] = shuffled.reshape(channels, step * tiles, step * tiles)
    return out


def _resolve_editors(editors: Sequence[Editor | str]) -> list[Editor]:
    if isinstance(editors, (str, Editor)) or not editors:
        raise ValueError("editors must be a non-empty list of Editors or registered names (facelib.list_editors())")
    resolved = [load_editor(e) if isinstance(e, str) else e for e in editors]
    for editor in resolved:
        if not isinstance(editor, Editor):
            raise TypeError(f"editors must be facelib.editors.Editor instances or registered names, got "
                            f"{type(editor).__name__}")
    names = [editor.name for editor in resolved]
    if len(set(names)) != len(names) or REAL in names or FAILURE in names:
        raise ValueError(f"editor names must be distinct and not {REAL!r} or {FAILURE!r}, got {names}")
    sizes = {editor.image_size for editor in resolved}
    if len(sizes) != 1:
        raise ValueError(f"the editors edit at different sizes {sorted(sizes)}; a study shows them side by side at one size")
    return resolved


def _check_counts(sources: int, checks: int, side_by_side: int, methods: int) -> None:
    if not isinstance(side_by_side, int) or isinstance(side_by_side, bool) or not 2 <= side_by_side <= methods:
        raise ValueError(f"side_by_side must be an int in 2..{methods} (methods shown together in a which-more-real "
                         f"trial; which-more-real needs two or more editors), got {side_by_side!r}")
    if not isinstance(sources, int) or isinstance(sources, bool) or sources < 2:
        raise ValueError(f"sources must be an int >= 2 (held-out pairs to edit), got {sources!r}")
    if not isinstance(checks, int) or isinstance(checks, bool) or not 0 <= checks <= sources:
        raise ValueError(f"checks must be an int in 0..sources ({sources}) (attention-check trials), got {checks!r}")


def _check_folder(folder: Path, overwrite: bool) -> None:
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{folder} is a file; a study needs a folder")
    if (folder / MANIFEST_NAME).exists() and not overwrite:
        raise FileExistsError(f"{folder} already holds a study ({MANIFEST_NAME}); answers recorded against it "
                              "would no longer match: choose another folder or pass overwrite=True")


def _prepare_folder(folder: Path) -> None:
    if (folder / MANIFEST_NAME).exists():
        (folder / MANIFEST_NAME).unlink()  # first, so a half-rebuilt folder is never taken for a study
    if (folder / "images").exists():
        shutil.rmtree(folder / "images")
    (folder / "images").mkdir(parents=True, exist_ok=True)


def _save(folder: Path, name: str, image: torch.Tensor) -> str:
    from facelib.photo import image_png

    relative = f"images/{name}.png"
    atomic_write_bytes(folder / relative, image_png(image))
    return relative


def _make_trials(folder: Path, edits: dict[str, torch.Tensor], real: torch.Tensor, checks: int,
                 side_by_side: int, seed: int) -> list[Trial]:
    """Write every trial's images and return the trials (real-or-fake, which-more-real, attention)."""
    methods, trials = list(edits), []
    # which-more-real shows side_by_side methods: source i gets the i-th subset, in turn (a balanced design)
    subsets = list(itertools.combinations(methods, side_by_side))
    for i in range(len(real)):
        for method in [*methods, REAL]:
            trial_id = f"rf-{len(trials):03d}"
            image = real[i] if method == REAL else edits[method][i]
            trials.append(Trial(trial_id, "real_or_fake", (_save(folder, trial_id, image),), (method,), i))
    for i in range(len(real)):
        trial_id = f"wm-{i:03d}"
        shown = subsets[i % len(subsets)]
        images = tuple(_save(folder, f"{trial_id}-{k}", edits[m][i]) for k, m in enumerate(shown))
        trials.append(Trial(trial_id, "which_more_real", images, shown, i))
    # checks use every k-th real target, spread over the identities
    for c, i in enumerate(np.linspace(0, len(real) - 1, checks).round().astype(int) if checks else []):
        trial_id, style = f"ac-{c:03d}", FAILURE_STYLES[c % len(FAILURE_STYLES)]
        broken = obvious_failure(real[i], style, seed=seed + c)
        images = (_save(folder, f"{trial_id}-0", real[i]), _save(folder, f"{trial_id}-1", broken))
        trials.append(Trial(trial_id, "attention", images, (REAL, FAILURE), int(i)))
    return trials


def build_study(editors: Sequence[Editor | str], folder: str | Path, *, sources: int = 12, checks: int = 6,
                side_by_side: int | None = None, preset: str = "multipie", seed: int = 0, overwrite: bool = False,
                progress: bool = False) -> Study:
    """Edit ``sources`` held-out pairs with every editor and write the study's trials to ``folder``.

    editors: :class:`facelib.editors.Editor` instances or registered names (one image size).
    Makes ``sources * (len(editors) + 1)`` real-or-fake trials (every edit, and every real
    target), ``sources`` which-more-real trials and ``checks`` attention checks. A which-more-real
    trial shows ``side_by_side`` of the methods (default all, as LEED shows its three); fewer
    rotate through every subset in turn. Images go to
    ``folder/images/*.png``; the manifest ``folder/study.json`` is written last, atomically, so
    a folder with a manifest always holds a complete study.
    """
    from facelib.evaluation.protocol import held_out_pairs, run_editor

    resolved = _resolve_editors(editors)
    side_by_side = len(resolved) if side_by_side is None else side_by_side
    _check_counts(sources, checks, side_by_side, len(resolved))
    folder = Path(folder)
    _check_folder(folder, overwrite)
    kinds = {editor.name: study_target_kind(editor, preset) for editor in resolved}
    pairs = held_out_pairs(preset, "test", resolved[0].image_size, sources, seed=seed, spread=True, progress=progress)
    edits = {editor.name: run_editor(editor, kinds[editor.name], pairs, progress=progress).edited
             for editor in resolved}
    _prepare_folder(folder)
    trials = _make_trials(folder, edits, pairs.truth("target").float(), checks, side_by_side, seed)
    manifest = {
        "format": STUDY_FORMAT, "seed": seed, "preset": preset, "description": pairs.description,
        "methods": [{"name": e.name, "paper": e.paper, "target_kind": kinds[e.name]} for e in resolved],
        "trials": [trial.to_json() for trial in trials],
    }
    atomic_write_text(folder / MANIFEST_NAME, json.dumps(manifest, indent=1) + "\n")
    return load_study(folder)


def load_study(folder: str | Path) -> Study:
    """The study built into ``folder`` by :func:`build_study`."""
    folder = Path(folder)
    path = folder / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{folder} holds no study ({MANIFEST_NAME} is missing); build one with "
                                "facelib.study.build_study(editors, folder) or python -m facelib.study build")
    text = path.read_text(encoding="utf-8")
    manifest = json.loads(text)
    if manifest.get("format") != STUDY_FORMAT:
        raise ValueError(f"{path} has format {manifest.get('format')!r}; this facelib reads format {STUDY_FORMAT}")
    trials = tuple(Trial.from_json(entry) for entry in manifest["trials"])
    missing = [image for trial in trials for image in trial.images if not (folder / image).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder}: {len(missing)} trial images are missing (first: {missing[0]}); rebuild the study")
    return Study(folder, trials, tuple(m["name"] for m in manifest["methods"]),
                 {m["name"]: m["target_kind"] for m in manifest["methods"]}, int(manifest["seed"]),
                 str(manifest["preset"]), manifest["description"], hashlib.sha256(text.encode("utf-8")).hexdigest())
