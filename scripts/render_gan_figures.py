"""Figures of the shipped StarGAN and GANimation editors, on held-out identities, for looking at.

- ``stargan_grid.png``: 8 held-out rafd faces (one per test identity, mixed poses and source
  expressions) x the eight emotions. Each face has two rows: StarGAN's edits, and below them
  the true renders of that face with each emotion (SynthFaces renders every emotion of a test
  identity), so what should have come out is beside what did.
- ``ganimation_sweep.png``: one held-out emotionet face; one row pair per AU (edit, true render)
  with that AU swept 0 .. 5 on top of the face's own AUs, and the attention masks (white = the
  source kept, A = 1).

    python scripts/render_gan_figures.py [--out build/figures] [--only stargan|ganimation]
        [--stargan CHECKPOINT] [--ganimation CHECKPOINT]

Without a checkpoint the shipped weights are drawn; ``--stargan runs/stargan/stargan_generator``
(a recipe's saved generator, the stem without suffix) draws a model you trained.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

import facelib
from facelib.checkpoint import load_model
from facelib.conventions import AU_CODES, AU_MAX, EMOTIONS
from facelib.data import SynthFaces, render
from facelib.editors import Target
from facelib.viz import show_images

SWEEP_AUS = (1, 4, 6, 12, 15, 26)  # brow raiser, brow lowerer, cheek raiser, smile, lip corner down, jaw drop
SWEEP_STEPS = 6  # 0, 1, ..., 5


def save(images: torch.Tensor, path: Path, **labels) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    axes = show_images(images, **labels)
    axes.figure.savefig(path, dpi=100, bbox_inches="tight")
    return path


def stargan_grid(out: Path, checkpoint: Path | None = None) -> Path:
    from facelib.models.stargan import StarGANEditor, StarGANGenerator

    editor = (facelib.load_editor("stargan") if checkpoint is None
              else StarGANEditor(load_model(checkpoint, cls=StarGANGenerator)))
    faces = SynthFaces("rafd", "test", size=editor.image_size, seed=0)
    labels = faces.labels()
    identities = labels["identity"].unique()[:8]
    rows, names = [], []
    for row, identity in enumerate(identities):
        mine = torch.nonzero(labels["identity"] == identity).flatten()
        yaw = labels["yaw"][mine].unique()[row % 5]
        pose = mine[labels["yaw"][mine] == yaw]  # this face at one yaw: one item per emotion
        by_emotion = {int(labels["emotion"][i]): int(i) for i in pose}
        truths = faces.batch([by_emotion[EMOTIONS.index(name)] for name in EMOTIONS])["image"]  # [8, 3, S, S]
        source = truths[(row * 3) % len(EMOTIONS)][None]  # a different source emotion per face
        edits = editor.edit(source.expand(len(EMOTIONS), -1, -1, -1), Target(expression=list(EMOTIONS))).output
        rows += [torch.cat([source, edits]), torch.cat([source, truths])]
        names += [f"face {row + 1}: StarGAN", f"face {row + 1}: true"]
    return save(torch.cat(rows), out / "stargan_grid.png", nrow=len(EMOTIONS) + 1, row_labels=names,
                column_labels=["source", *EMOTIONS])


def ganimation_sweep(out: Path, checkpoint: Path | None = None) -> Path:
    from facelib.models.ganimation import GANimationEditor, GANimationGenerator

    editor = (facelib.load_editor("ganimation") if checkpoint is None
              else GANimationEditor(load_model(checkpoint, cls=GANimationGenerator)))
    faces = SynthFaces("emotionet", "test", size=editor.image_size, seed=0)
    index = torch.tensor([3])
    item, labels = faces.batch(index), faces.render_parameters(index)  # also the seed of its light and background
    levels = torch.linspace(0, AU_MAX, SWEEP_STEPS)
    rows, names = [], []
    for code in SWEEP_AUS:
        aus = labels["target_aus"].repeat(SWEEP_STEPS, 1)
        aus[:, AU_CODES.index(code)] = levels  # the others stay the face's own
        result = editor.edit(item["image"].expand(SWEEP_STEPS, -1, -1, -1), Target(aus=aus))
        truth = render(labels["identity"].repeat(SWEEP_STEPS), aus, labels["yaw"].repeat(SWEEP_STEPS),
                       size=editor.image_size, light="random", background=faces.preset.background,
                       noise=faces.preset.noise, seeds=labels["seed"].repeat(SWEEP_STEPS))["image"]
        rows += [result.output, truth, result.attention.expand(-1, 3, -1, -1) * 2 - 1]
        names += [f"AU{code}: GANimation", f"AU{code}: true", f"AU{code}: mask A"]
    return save(torch.cat(rows), out / "ganimation_sweep.png", nrow=SWEEP_STEPS, row_labels=names,
                column_labels=[f"{v:.0f}" for v in levels])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("build/figures"))
    parser.add_argument("--only", choices=("stargan", "ganimation"))
    parser.add_argument("--stargan", type=Path, help="a StarGAN generator checkpoint (default: the shipped one)")
    parser.add_argument("--ganimation", type=Path, help="a GANimation generator checkpoint (default: the shipped one)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for name, make in (("stargan", stargan_grid), ("ganimation", ganimation_sweep)):
        if args.only in (None, name):
            print(make(args.out, getattr(args, name)))


if __name__ == "__main__":
    main()
