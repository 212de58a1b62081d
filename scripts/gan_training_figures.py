"""The GAN-training figures: learning curves of the papers' schedules against the CPU recipes.

    python scripts/gan_training_figures.py --run "StarGAN, paper's schedule=runs/experiments/stargan_paper:5:0" \
        --run "StarGAN, CPU recipe=runs/experiments/stargan_cpu:1:1500" --model stargan --out build/figures

Each ``--run`` is ``LABEL=FOLDER[:N_CRITIC:WARMUP]``: a training folder whose ``log.jsonl`` holds the
learning curve's ``"val"`` lines. Runs logged before the curve recorded ``generator_updates`` get
it from their schedule (``(step - WARMUP) // N_CRITIC``). Writes ``gan_curves_MODEL.png``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from facelib.metrics import VERIFICATION_NAME
from facelib.train import read_log
from facelib.viz import plot_learning_curves

#: model -> (the curve's metrics, their floors)
MODELS = {
    "stargan": (["expression accuracy (facelib classifier)", VERIFICATION_NAME],
                {"expression accuracy (facelib classifier)": 0.85, VERIFICATION_NAME: 0.95}),
    "ganimation": (["AU PCC (facelib AU regressor)", VERIFICATION_NAME],
                   {"AU PCC (facelib AU regressor)": 0.75, VERIFICATION_NAME: 0.95}),
    "exprgan": (["expression accuracy (facelib classifier)", VERIFICATION_NAME],
                {"expression accuracy (facelib classifier)": 0.85, VERIFICATION_NAME: 0.95}),
}
#: model -> the number of held-out pairs its learning curve measures
CURVE_PAIRS = {"stargan": 192, "ganimation": 192, "exprgan": 96}


def curve_of(spec: str):
    label, _, where = spec.partition("=")
    folder, *schedule = where.split(":")
    frame = read_log(folder, kind="val")
    if "generator_updates" not in frame.columns:
        if len(schedule) != 2:
            raise SystemExit(f"{folder}: its log has no generator_updates; give LABEL=FOLDER:N_CRITIC:WARMUP")
        n_critic, warmup = (int(value) for value in schedule)
        frame["generator_updates"] = (frame["step"] - warmup).clip(lower=0) // n_critic
    return label, frame


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="append", required=True, help="LABEL=FOLDER[:N_CRITIC:WARMUP]")
    parser.add_argument("--model", choices=sorted(MODELS), required=True)
    parser.add_argument("--out", type=Path, default=Path("build/figures"))
    args = parser.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    metrics, floors = MODELS[args.model]
    axes = plot_learning_curves(dict(curve_of(spec) for spec in args.run), metrics, floors=floors,
                                labels={VERIFICATION_NAME: "identity verification"})
    axes[0, 0].figure.suptitle(f"{args.model}: held-out learning curves ({CURVE_PAIRS[args.model]} test pairs)")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"gan_curves_{args.model}.png"
    axes[0, 0].figure.savefig(path, dpi=90)
    print(path)


if __name__ == "__main__":
    main()
