"""DFT-Net against GANimation on held-out emotionet identities: figures and the comparison table.

The measurements are :mod:`facelib.evaluation.dftnet`'s (notebook 04 shows the same); this script saves
them as PNGs and prints the tables, for any saved generators (a recipe's run, not only the shipped ones):

- ``dftnet_fig4.png`` (Fig. 4), ``dftnet_eyelids.png`` (Fig. 3, with the eye-crop PSNR and the AU45 read
  on the edits printed), ``dftnet_interpolation.png`` (Fig. 5);
- ``dftnet_attention.png``: the mean attention over training, from each run's log;
- the table and each AU's PCC; ``--log-summary DIR`` also writes each run's log summary as ``NAME.csv``
  (docs/training_logs/ holds the shipped models').

    python scripts/dftnet_figures.py --dftnet runs/dftnet/dftnet \\
        [--ganimation runs/ganimation/ganimation] [--extra NAME=CHECKPOINT ...] [--out build/figures]

A checkpoint is a recipe's saved generator (the stem without suffix); the run folder of the same name
beside it holds its log.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
import torch

import facelib
from facelib.checkpoint import load_model
from facelib.evaluation.dftnet import comparison_table, eyelids, fig4, interpolation, test_faces, training_log_summary
from facelib.viz import show_images


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


def attention_curves(summaries: dict[str, pd.DataFrame], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 3.2))
    for name, summary in summaries.items():
        curve = summary[["step", "attention_mean"]].dropna()
        axes.plot(curve["step"], curve["attention_mean"], label=name)
    axes.set(xlabel="training step", ylabel="mean attention A", ylim=(0, 1))
    axes.legend()
    figure.savefig(out / "dftnet_attention.png", dpi=110, bbox_inches="tight")
    return out / "dftnet_attention.png"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dftnet", type=Path, required=True, help="a saved DFT-Net generator (stem)")
    parser.add_argument("--ganimation", type=Path, help="a saved GANimation generator (stem)")
    parser.add_argument("--extra", nargs="*", default=[], metavar="NAME=CHECKPOINT", help="more generators (ablations)")
    parser.add_argument("--out", type=Path, default=Path("build/figures"))
    parser.add_argument("--n", type=int, default=512, help="held-out pairs for the table (0: no table)")
    parser.add_argument("--n-eyelids", type=int, default=64, help="held-out faces per AU45 level")
    parser.add_argument("--log-summary", type=Path, help="write each run's log summary here as NAME.csv")
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
    runs = {name: Path(path).parent / Path(path).name.split(".")[0] for name, path in checkpoints.items()}
    summaries = {name: training_log_summary(run) for name, run in runs.items() if (run / "log.jsonl").exists()}
    if args.log_summary:
        args.log_summary.mkdir(parents=True, exist_ok=True)
        for name, summary in summaries.items():
            summary.to_csv(args.log_summary / f"{runs[name].name}.csv", index=False, float_format="%.5g")
    faces = test_faces()
    grid, columns, rows = fig4(editors, faces)
    print(save(grid, args.out / "dftnet_fig4.png", nrow=len(columns), column_labels=columns, row_labels=rows))
    table, picture, names = eyelids(editors, args.n_eyelids, faces)
    print(save(picture, args.out / "dftnet_eyelids.png", nrow=len(table), row_labels=names,
               column_labels=[f"AU45 = {v:.0f}" for v in table.index]))
    print("eye-crop PSNR (dB) against the true render and AU45 read on the edits, by AU45:\n", table.round(2).to_string())
    grid, columns, rows = interpolation(editors, faces)
    print(save(grid, args.out / "dftnet_interpolation.png", nrow=len(columns), column_labels=columns, row_labels=rows))
    if summaries:
        print(attention_curves(summaries, args.out))
    if not args.n:
        return
    rows, per_au = comparison_table(editors, args.n)
    pd.set_option("display.width", 200)
    print(f"held-out emotionet pairs (n = {args.n}), aus targets:\n", rows.round(4).to_string())
    print("per-AU PCC:\n", per_au.round(3).to_string())


if __name__ == "__main__":
    main()
