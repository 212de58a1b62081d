"""DFT-Net's measurements (Wang et al. 2019, Sec. 3.2-3.3) against GANimation, on held-out emotionet faces.

Notebook 04 and ``scripts/dftnet_figures.py`` call these; every method is reached through its editor only.

- :func:`fig4`: Fig. 4's columns: source, aligned image X_a, texture B, attention A, DFT-Net's output,
  then the other editors' outputs and the true render, one held-out face per discrete emotion.
- :func:`eyelids`: Fig. 3, AU45 from 0 to 5 on a face's own AUs: the eye-crop PSNR against the true
  render *and* the AU45 the AU regressor reads on each edit (a crop PSNR alone rewards not editing).
- :func:`interpolation`: Fig. 5, another face's AUs scaled by 0.5 ... 1.25.
- :func:`comparison_table`: the table (AU MSE / PCC, identity, FD, PSNR whole / mouth / eyes, SSIM,
  sharpness) through :func:`facelib.evaluation.evaluate`, and each AU's PCC.
- :func:`inference_seconds`: seconds per edit of each editor, timed in one run, interleaved.
- :func:`training_log_summary`: a run's log reduced to the attention mean and the learning curve per step.
"""
from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import torch

from facelib.conventions import AU_CODES, AU_MAX, EMOTIONS
from facelib.data import EYE_LANDMARKS, SynthFaces, landmark_box_mask, render
from facelib.data.synth import LANDMARK_NAMES
from facelib.editors import Editor, Target
from facelib.metrics import psnr

__all__ = ["PRESET", "EYELID_LEVELS", "SCALES", "ROWS", "test_faces", "true_render", "fig4", "eyelids",
           "interpolation", "comparison_table", "inference_seconds", "training_log_summary"]

PRESET = "emotionet"  # DFT-Net Sec. 3.1 trains and tests on EmotioNet's AU-labelled faces
EYELID_LEVELS = torch.linspace(0, AU_MAX, 6)  # Fig. 3: AU45 = 0, 1, ..., 5
SCALES = (0.5, 0.75, 1.0, 1.25)  # Fig. 5's 0.5, 0.75, 1.0, and one step beyond
#: The table's rows (facelib.evaluation.evaluate's metric names).
ROWS = ["AU PCC (facelib AU regressor)", "AU MSE (facelib AU regressor)", "identity verification (facelib embedder)",
        "FD (facelib expression features)", "PSNR (whole image, dB)", "PSNR (mouth crop, dB)", "PSNR (eye crop, dB)",
        "SSIM", "sharpness (edited)"]


def test_faces(size: int = 64) -> SynthFaces:
    """The held-out emotionet faces (test identities, never seen in training)."""
    return SynthFaces(PRESET, "test", size=size, seed=0)


def true_render(faces: SynthFaces, index: torch.Tensor, aus: torch.Tensor) -> dict[str, torch.Tensor]:
    """The faces ``index`` rendered again with ``aus`` (0-5): same identity, pose, light and background."""
    labels = faces.render_parameters(index)  # also each item's seed for its light and background
    return render(labels["identity"], aus, labels["yaw"], size=faces.size, light="random",
                  background=faces.preset.background, noise=faces.preset.noise, seeds=labels["seed"])


def _mask_image(mask: torch.Tensor) -> torch.Tensor:
    """A [0, 1] mask ``[B, 1, H, W]`` as a grey image in [-1, 1]."""
    return mask.expand(-1, 3, -1, -1) * 2 - 1


def _check_editors(editors: dict[str, Editor], first: str | None = None) -> None:
    if not editors or not all(isinstance(editor, Editor) for editor in editors.values()):
        raise TypeError(f"editors must map names to facelib Editors, got {editors!r}")
    if first is not None and first not in editors:
        raise ValueError(f"editors must hold {first!r} (the model whose maps are shown), got {list(editors)}")


@torch.no_grad()
def fig4(editors: dict[str, Editor], faces: SynthFaces | None = None, intensity: float = 1.0,
         dftnet: str = "DFT-Net") -> tuple[torch.Tensor, list[str], list[str]]:
    """Fig. 4: ``(grid, column_labels, row_labels)`` for :func:`facelib.viz.show_images` (``nrow`` = columns).

    One held-out face per emotion (its ``rafd`` mean AUs times ``intensity``): the source, DFT-Net's
    X_a, B and A (white: the aligned source kept), its output, each other editor's output, the true render.
    """
    _check_editors(editors, dftnet)
    faces = test_faces() if faces is None else faces
    index = torch.arange(len(EMOTIONS)) * 37  # eight different test faces
    sources = faces.batch(index)["image"]
    target = Target(expression=list(EMOTIONS), intensity=intensity)
    parts = editors[dftnet].edit(sources, target)
    columns = [sources, parts.aligned, parts.texture, _mask_image(parts.attention), parts.output]
    names = ["source", "aligned X_a", "texture B", "attention A", dftnet]
    for name, editor in editors.items():
        if name != dftnet:
            columns.append(editor.edit(sources, target).output)
            names.append(name)
    columns.append(true_render(faces, index, editors[dftnet].target_aus(target, len(index)))["image"])
    names.append("true render")
    return torch.stack(columns, 1).flatten(0, 1), names, list(EMOTIONS)


def _eye_crop(image: torch.Tensor, landmarks: torch.Tensor, height: int = 14, width: int = 40) -> torch.Tensor:
    """A fixed-size box ``[1, 3, height, width]`` centred on both eyes, doubled (for the picture; PSNR uses the mask)."""
    points = landmarks[0, [LANDMARK_NAMES.index(name) for name in EYE_LANDMARKS]]
    cx, cy = points.mean(0).round().long().tolist()
    size = image.shape[-1]
    top, left = min(max(cy - height // 2, 0), size - height), min(max(cx - width // 2, 0), size - width)
    crop = image[..., top:top + height, left:left + width]
    return torch.nn.functional.interpolate(crop, scale_factor=2, mode="nearest")


@torch.no_grad()
def eyelids(editors: dict[str, Editor], n: int = 64, faces: SynthFaces | None = None
            ) -> tuple[pd.DataFrame, torch.Tensor, list[str]]:
    """Fig. 3: AU45 set to 0 .. 5 on ``n`` held-out faces' own AUs; returns ``(table, picture, row_labels)``.

    ``table`` (index AU45): ``PSNR <editor>`` the mean eye-crop PSNR (dB) of the edits against the true
    render of the same AUs, ``AU45 <editor>`` the mean AU45 the AU regressor reads on the edits, and
    ``AU45 true render`` the same on the true renders (the instrument's own reading of the level), and
    ``PSNR source (no edit)`` the unedited source's eye-crop PSNR (what the PSNR gives an editor that does nothing).
    ``picture``: the first face's eye crops, one row per editor plus the true render, one column per level.
    """
    from facelib.pretrained import load_pretrained

    _check_editors(editors)
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive number of faces, got {n!r}")
    faces = test_faces() if faces is None else faces
    regressor, au45 = load_pretrained("au_regressor").eval(), AU_CODES.index(45)
    index = torch.arange(n) * max(1, len(faces) // n)
    sources = faces.batch(index)["image"]
    own = faces.render_parameters(index)["target_aus"]
    rows, crops = [], []
    for level in EYELID_LEVELS:
        aus = own.clone()
        aus[:, au45] = level
        truth = true_render(faces, index, aus)
        mask = landmark_box_mask(truth["landmarks"], EYE_LANDMARKS, faces.size)
        row = {"AU45": float(level)}
        for name, editor in editors.items():
            edited = editor.edit(sources, Target(aus=aus)).output
            row[f"PSNR {name}"] = float(psnr(edited, truth["image"], mask=mask))
            row[f"AU45 {name}"] = float(regressor(edited)[:, au45].mean())
            crops.append(_eye_crop(edited[:1], truth["landmarks"][:1]))
        # the unedited source: what a crop PSNR gives an editor that changes nothing
        row["PSNR source (no edit)"] = float(psnr(sources, truth["image"], mask=mask))
        row["AU45 true render"] = float(regressor(truth["image"])[:, au45].mean())
        crops.append(_eye_crop(truth["image"][:1], truth["landmarks"][:1]))
        rows.append(row)
    names = [*editors, "true render"]
    picture = torch.cat(crops).view(len(EYELID_LEVELS), len(names), *crops[0].shape[1:]).transpose(0, 1).flatten(0, 1)
    return pd.DataFrame(rows).set_index("AU45"), picture, names


@torch.no_grad()
def interpolation(editors: dict[str, Editor], faces: SynthFaces | None = None
                  ) -> tuple[torch.Tensor, list[str], list[str]]:
    """Fig. 5: three held-out faces given another face's AUs times each of :data:`SCALES`.

    Returns ``(grid, column_labels, row_labels)``: source, one edit per scale, the face whose AUs are used.
    """
    _check_editors(editors)
    faces = test_faces() if faces is None else faces
    index, partner = torch.tensor([5, 61, 117]), torch.tensor([400, 800, 1200])
    sources, targets = faces.batch(index)["image"], faces.batch(partner)["image"]
    target_aus = faces.render_parameters(partner)["target_aus"]
    rows, names = [], []
    for name, editor in editors.items():
        edits = [editor.edit(sources, Target(aus=(scale * target_aus).clamp(0, AU_MAX))).output for scale in SCALES]
        rows.append(torch.stack([sources, *edits, targets], 1).flatten(0, 1))
        names += [f"{name}, face {i + 1}" for i in range(len(index))]
    return torch.cat(rows), ["source", *[f"x {s}" for s in SCALES], "AUs of"], names


def comparison_table(editors: dict[str, Editor], n: int = 512, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The table on ``n`` held-out pairs with AU targets: ``(rows, per_au)``; ``rows`` is :data:`ROWS` x
    editors, ``per_au`` each AU's PCC (rows AU1 ... AU45, Avg) x editors."""
    from facelib.evaluation import au_table, evaluate, held_out_pairs, run_editor
    from facelib.pretrained import load_pretrained

    _check_editors(editors)
    tables, per_au = {}, {}
    pairs = held_out_pairs(PRESET, "test", 64, n, seed=seed, progress=False)
    for name, editor in editors.items():
        table = evaluate(editor, "aus", preset=PRESET, n=n, seed=seed, metrics=ROWS, progress=False)
        tables[name] = table.set_index("metric")["value"]
        per_au[name] = au_table(run_editor(editor, "aus", pairs, progress=False), load_pretrained("au_regressor"))["PCC"]
    return pd.DataFrame(tables).loc[ROWS], pd.DataFrame(per_au)


@torch.no_grad()
def inference_seconds(editors: dict[str, Editor], batch: int = 16, repeats: int = 10) -> pd.Series:
    """Seconds per 64x64 edit of each editor, timed in one run: the editors take turns on the same faces
    (so a slower moment of a shared machine falls on all of them); the median over ``repeats`` turns."""
    _check_editors(editors)
    faces = test_faces().batch(range(batch))["image"]
    aus = Target(aus=torch.rand(batch, len(AU_CODES), generator=torch.Generator().manual_seed(0)) * AU_MAX)
    times: dict[str, list[float]] = {name: [] for name in editors}
    for editor in editors.values():
        editor.edit(faces, aus)  # warm-up: the first call allocates
    for _ in range(repeats):
        for name, editor in editors.items():
            start = time.perf_counter()
            editor.edit(faces, aus)
            times[name].append((time.perf_counter() - start) / batch)
    return pd.Series({name: float(torch.tensor(t).median()) for name, t in times.items()}, name="seconds per edit")


def training_log_summary(run: str | Path) -> pd.DataFrame:
    """A GAN run's log (a folder or ``log.jsonl``) reduced to one row per logged step: ``step``, ``seconds``,
    ``attention_mean`` (the mean mask of the edits), the generator's logged terms (``attention``, ``au``,
    ``cycle``, ``adversarial``, ``flow_magnitude`` where logged; unweighted except ``attention``) and the
    learning curve's metrics where measured."""
    from facelib.train.trainer import read_log

    log = read_log(run, kind=None)
    kept = ["step", "seconds", "attention_mean", "attention", "au", "cycle", "adversarial", "flow_magnitude"]
    train = log[log["kind"] == "train"][[name for name in kept if name in log.columns]]
    curve = log[log["kind"] == "val"].drop(columns=["kind", "seconds"]).dropna(axis=1, how="all")
    return train.merge(curve, on="step", how="outer").sort_values("step").reset_index(drop=True)
