"""DFT-Net against GANimation on held-out emotionet identities: figures and the comparison table.

- ``dftnet_fig4.png`` (the paper's Fig. 4): one held-out face per discrete emotion (the ``rafd``
  mean AUs of that emotion, DFT-Net Sec. 3.2): source, aligned image X_a, texture B, attention A
  (white = the aligned source kept), DFT-Net's output, GANimation's, and the true render.
- ``dftnet_eyelids.png`` (Fig. 3): AU45 from 0 to 5 on top of a face's own AUs, the eye crop of
  each method and of the true render; the eye-crop PSNR per level over ``--n-eyelids`` faces is printed.
- ``dftnet_interpolation.png`` (Fig. 5): another test face's AUs scaled by 0.5, 0.75, 1.0, 1.25.
- ``dftnet_attention.png``: the mean attention over training, from each run's ``log.csv``.
- the table: :func:`facelib.evaluation.evaluate` with ``aus`` targets (AU MSE / PCC, identity
  verification, FD, PSNR whole / mouth / eyes, SSIM, sharpness), and each AU's PCC.

    python scripts/dftnet_figures.py --dftnet runs/dftnet/dftnet/generator \\
        [--ganimation runs/ganimation/ganimation/generator] [--extra NAME=CHECKPOINT ...] [--out build/figures]

A checkpoint is a recipe's saved generator (the stem without suffix); its ``log (the run folder of the same name) beside it
gives the attention curve. The methods are edited through their editors only.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
import torch

import facelib
from facelib.checkpoint import load_model
from facelib.conventions import AU_CODES, AU_MAX, EMOTIONS
from facelib.data import EYE_LANDMARKS, SynthFaces, landmark_box_mask, render
from facelib.data.synth import LANDMARK_NAMES
from facelib.editors import Target
from facelib.metrics import psnr
from facelib.viz import show_images

PRESET = "emotionet"
EYELID_LEVELS = torch.linspace(0, AU_MAX, 6)  # AU45 = 0, 1, ..., 5
SCALES = (0.5, 0.75, 1.0, 1.25)  # Fig. 5's 0.5, 0.75, 1.0, and beyond
ROWS = ["AU PCC (facelib AU regressor)", "AU MSE (facelib AU regressor)", "identity verification (facelib embedder)",
        "FD (facelib expression features)", "PSNR (whole image, dB)", "PSNR (mouth crop, dB)", "PSNR (eye crop, dB)",
        "SSIM", "sharpness (edited)"]


def load_editor_from(checkpoint: Path):
    """The editor of a saved DFT-Net or GANimation generator."""
    from facelib.models.dftnet import DFTNetEditor, DFTNetGenerator
    from facelib.models.ganimation import GANimationEditor

    generator = load_model(checkpoint)
    return (DFTNetEditor if isinstance(generator, DFTNetGenerator) else GANimationEditor)(generator.eval())


def save(images: torch.Tensor, path: Path, **labels) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    axes = show_images(images, **labels)
    axes.figure.savefig(path, dpi=110, bbox_inches="tight")
    return path


def true_render(faces: SynthFaces, index: torch.Tensor, aus: torch.Tensor) -> dict[str, torch.Tensor]:
    """The held-out faces ``index`` rendered with ``aus`` (same identity, pose, light, background)."""
    labels = faces.render_parameters(index)  # also each item's seed for its light and background
    return render(labels["identity"], aus, labels["yaw"], size=faces.size, light="random",
                  background=faces.preset.background, noise=faces.preset.noise, seeds=labels["seed"])


def to_image(mask: torch.Tensor) -> torch.Tensor:
    return mask.expand(-1, 3, -1, -1) * 2 - 1


def fig4(editors: dict, faces: SynthFaces, out: Path) -> Path:
    dftnet = editors["DFT-Net"]
    index = torch.arange(len(EMOTIONS)) * 37  # eight different test faces
    sources = faces.batch(index)["image"]
    target = Target(expression=list(EMOTIONS), intensity=1.0)
    parts = dftnet.edit(sources, target)
    truth = true_render(faces, index, dftnet.target_aus(target, len(EMOTIONS)))["image"]
    columns = [sources, parts.aligned, parts.texture, to_image(parts.attention), parts.output]
    names = ["source", "aligned X_a", "texture B", "attention A", "DFT-Net"]
    for name, editor in editors.items():
        if name != "DFT-Net":
            columns.append(editor.edit(sources, target).output)
            names.append(name)
    columns.append(truth)
    names.append("true render")
    grid = torch.stack(columns, 1).flatten(0, 1)
    return save(grid, out / "dftnet_fig4.png", nrow=len(columns), column_labels=names, row_labels=list(EMOTIONS))


def eyelids(editors: dict, faces: SynthFaces, out: Path, n: int) -> tuple[Path, pd.DataFrame]:
    index = torch.arange(n) * max(1, len(faces) // n)
    sources = faces.batch(index)["image"]
    own = faces.render_parameters(index)["target_aus"]
    psnrs, picture = [], []
    for level in EYELID_LEVELS:
        aus = own.clone()
        aus[:, AU_CODES.index(45)] = level
        truth = true_render(faces, index, aus)
        mask = landmark_box_mask(truth["landmarks"], EYE_LANDMARKS, faces.size)
        row = {"AU45": float(level)}
        for name, editor in editors.items():
            edited = editor.edit(sources, Target(aus=aus)).output
            row[name] = float(psnr(edited, truth["image"], mask=mask))
            picture.append(eye_crop(edited[:1], truth["landmarks"][:1]))
        picture.append(eye_crop(truth["image"][:1], truth["landmarks"][:1]))
        psnrs.append(row)
    names = [*editors, "true render"]
    grid = torch.cat(picture).view(len(EYELID_LEVELS), len(names), *picture[0].shape[1:]).transpose(0, 1).flatten(0, 1)
    path = save(grid, out / "dftnet_eyelids.png", nrow=len(EYELID_LEVELS), row_labels=names,
                column_labels=[f"AU45 = {v:.0f}" for v in EYELID_LEVELS])
    return path, pd.DataFrame(psnrs).set_index("AU45")


def eye_crop(image: torch.Tensor, landmarks: torch.Tensor, height: int = 14, width: int = 40) -> torch.Tensor:
    """A fixed-size box ``[1, 3, height, width]`` centred on both eyes (for the picture; PSNR uses the mask)."""
    points = landmarks[0, [LANDMARK_NAMES.index(name) for name in EYE_LANDMARKS]]
    cx, cy = points.mean(0).round().long().tolist()
    size = image.shape[-1]
    top, left = min(max(cy - height // 2, 0), size - height), min(max(cx - width // 2, 0), size - width)
    crop = image[..., top:top + height, left:left + width]
    return torch.nn.functional.interpolate(crop, scale_factor=2, mode="nearest")


def interpolation(editors: dict, faces: SynthFaces, out: Path) -> Path:
    index, partner = torch.tensor([5, 61, 117]), torch.tensor([400, 800, 1200])
    sources, targets = faces.batch(index)["image"], faces.batch(partner)["image"]
    target_aus = faces.render_parameters(partner)["target_aus"]
    rows, names = [], []
    for name, editor in editors.items():
        edits = [editor.edit(sources, Target(aus=(scale * target_aus).clamp(0, AU_MAX))).output for scale in SCALES]
        rows.append(torch.stack([sources, *edits, targets], 1).flatten(0, 1))
        names += [f"{name}, face {i + 1}" for i in range(len(index))]
    return save(torch.cat(rows), out / "dftnet_interpolation.png", nrow=len(SCALES) + 2, row_labels=names,
                column_labels=["source", *[f"x {s}" for s in SCALES], "target"])


def attention_curves(checkpoints: dict[str, Path], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 3.2))
    from facelib.train.trainer import read_log

    for name, checkpoint in checkpoints.items():
        run = Path(checkpoint).parent / Path(checkpoint).name.split(".")[0]  # the recipe's run folder, beside its model
        curve = read_log(run)[["step", "attention_mean"]].dropna()
        axes.plot(curve["step"], curve["attention_mean"], label=name)
    axes.set(xlabel="training step", ylabel="mean attention A (1 = source / aligned source kept)", ylim=(0, 1))
    axes.legend()
    figure.savefig(out / "dftnet_attention.png", dpi=110, bbox_inches="tight")
    return out / "dftnet_attention.png"


def comparison_table(editors: dict, n: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    from facelib.pretrained import load_pretrained
    from facelib.evaluation import au_table, evaluate, held_out_pairs, run_editor

    tables, per_au = {}, {}
    pairs = held_out_pairs(PRESET, "test", 64, n, progress=False)
    for name, editor in editors.items():
        table = evaluate(editor, "aus", preset=PRESET, n=n, metrics=ROWS, progress=False)
        tables[name] = table.set_index("metric")["value"]
        per_au[name] = au_table(run_editor(editor, "aus", pairs, progress=False), load_pretrained("au_regressor"))["PCC"]
    return pd.DataFrame(tables).loc[ROWS], pd.DataFrame(per_au)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dftnet", type=Path, required=True, help="a saved DFT-Net generator (stem)")
    parser.add_argument("--ganimation", type=Path, help="a saved GANimation generator (stem)")
    parser.add_argument("--extra", nargs="*", default=[], metavar="NAME=CHECKPOINT", help="more generators (ablations)")
    parser.add_argument("--out", type=Path, default=Path("build/figures"))
    parser.add_argument("--n", type=int, default=512, help="held-out pairs for the table (0: no table)")
    parser.add_argument("--n-eyelids", type=int, default=64, help="held-out faces per AU45 level")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    facelib.set_seed(0)
    checkpoints = {"DFT-Net": args.dftnet}
    if args.ganimation:
        checkpoints["GANimation"] = args.ganimation
    for item in args.extra:
        name, _, path = item.partition("=")
        checkpoints[name] = Path(path)
    editors = {name: load_editor_from(path) for name, path in checkpoints.items()}
    faces = SynthFaces(PRESET, "test", size=64, seed=0)
    with torch.no_grad():
        print(fig4(editors, faces, args.out))
        path, table = eyelids(editors, faces, args.out, args.n_eyelids)
        print(path, "\neye-crop PSNR (dB) against the true render, by AU45:\n", table.round(2).to_string())
        print(interpolation(editors, faces, args.out))
        print(attention_curves(checkpoints, args.out))
        if not args.n:
            return
        rows, per_au = comparison_table(editors, args.n)
    pd.set_option("display.width", 200)
    print(f"held-out emotionet pairs (n = {args.n}), aus targets:\n", rows.round(4).to_string())
    print("per-AU PCC:\n", per_au.round(3).to_string())


if __name__ == "__main__":
    main()
