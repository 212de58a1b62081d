"""The CPU-recipe experiments of the GAN-training issue: one named variant per run, with its learning curve.

    python scripts/gan_experiments.py stargan_cpu --steps 3000 --threads 1 --out runs/experiments

Each variant is the paper's schedule or the CPU recipe with named changes; its log (``log.jsonl``,
with the curve's ``"val"`` lines) and measured figures land in ``OUT/VARIANT``. The table of every
variant tried, failures included, is in ``docs/gan_training.md``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch

from facelib.models.ganimation import GANimationConfig, GANimationEditor
from facelib.models.stargan import StarGANConfig
from facelib.train.ganimation import CPU_CONFIG, CPU_RECIPE, CPU_WEIGHTS, LR, GANimationTask, train_au_editor
from facelib.train.stargan import StarGANTrainConfig, train_stargan

PAPER, CPU = StarGANTrainConfig(), StarGANTrainConfig.cpu()
#: name -> (network config, training config)
VARIANTS = {
    "stargan_paper": (StarGANConfig(), PAPER),
    "stargan_cpu": (StarGANConfig.cpu(), CPU),
    "stargan_cpu_resize": (dataclasses.replace(StarGANConfig.cpu(), upsample="resize"), CPU),
    "stargan_cpu_resize_residual_colour": (dataclasses.replace(StarGANConfig.cpu(), upsample="resize",
                                                               residual_colour=True), CPU),
    "stargan_cpu_no_fake_class": (dataclasses.replace(StarGANConfig.cpu(), fake_class=False), CPU),
    "stargan_cpu_no_keep": (StarGANConfig.cpu(), dataclasses.replace(CPU, lambda_keep=0.0)),
    "stargan_cpu_no_augment": (StarGANConfig.cpu(), dataclasses.replace(CPU, augment="")),
    "stargan_cpu_translation": (StarGANConfig.cpu(), dataclasses.replace(CPU, augment="colour,translation")),
    "stargan_cpu_no_warmup": (StarGANConfig.cpu(), dataclasses.replace(CPU, classifier_warmup=0)),
    "stargan_cpu_one_map": (dataclasses.replace(StarGANConfig.cpu(), per_domain_critic=False), CPU),
    "stargan_cpu_image_output": (dataclasses.replace(StarGANConfig.cpu(), output="image"), CPU),
    "stargan_cpu_400_ids": (StarGANConfig.cpu(), dataclasses.replace(CPU, identities=400)),
    "stargan_cpu_g_lr_5e-4": (StarGANConfig.cpu(), dataclasses.replace(CPU, lr=5e-4, critic_lr=2e-4)),
    "stargan_cpu_g_lr_5e-4_cycle_2.5": (StarGANConfig.cpu(), dataclasses.replace(CPU, lr=5e-4, critic_lr=2e-4,
                                                                                  lambda_rec=2.5)),
}
#: GANimation's variants: name -> a function making the task
GANIMATION_VARIANTS = {
    "ganimation": lambda: GANimationTask(GANimationConfig(), lr=LR),  # the paper's schedule (shipped)
    "ganimation_cpu_v2": lambda: GANimationTask(GANimationConfig(), lr=LR, **CPU_RECIPE),
    "ganimation_cpu_identity_start_keep": lambda: GANimationTask(
        dataclasses.replace(CPU_CONFIG, upsample="transposed", residual_colour=False), weights=CPU_WEIGHTS, lr=LR,
        **CPU_RECIPE),
    "ganimation_cpu_resize": lambda: GANimationTask(
        dataclasses.replace(CPU_CONFIG, residual_colour=False), weights=CPU_WEIGHTS, lr=LR, **CPU_RECIPE),
    "ganimation_cpu": lambda: GANimationTask(CPU_CONFIG, weights=CPU_WEIGHTS, lr=LR, **CPU_RECIPE),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variant", choices=sorted(VARIANTS) + sorted(GANIMATION_VARIANTS))
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/experiments"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    if args.variant in GANIMATION_VARIANTS:
        result = train_au_editor(args.variant, GANIMATION_VARIANTS[args.variant](), GANimationEditor, steps=args.steps,
                                 seed=args.seed, out_dir=args.out, device="cpu", smoke=False)
    else:
        config, train = VARIANTS[args.variant]
        result = train_stargan(args.variant, config, train, steps=args.steps, seed=args.seed, out_dir=args.out,
                               device="cpu", smoke=False, default_steps=args.steps)
    summary = {"variant": args.variant, "steps": args.steps, "threads": args.threads,
               "wall_time_s": round(time.perf_counter() - start, 1), **result["metrics"][args.variant]}
    (args.out / f"{args.variant}.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
