"""Measure the generator held in a StarGAN training checkpoint (a run stopped before its end), as the recipe would.

    python scripts/measure_training_checkpoint.py runs/experiments/stargan_paper/checkpoints/step_00004000 [--cpu-network]

Reads the checkpoint's ``generator_ema`` weights where the run kept a moving average, else ``generator``,
and prints :func:`facelib.train.stargan.measure`'s figures (256 held-out rafd pairs) as JSON.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from facelib.checkpoint import checkpoint_files
from facelib.models.stargan import StarGANConfig, StarGANEditor, StarGANGenerator
from facelib.train.stargan import measure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, help="a training checkpoint's stem (…/checkpoints/step_NNNNNNNN)")
    parser.add_argument("--cpu-network", action="store_true", help="the CPU recipe's network (StarGANConfig.cpu())")
    args = parser.parse_args()
    tensors = load_file(str(checkpoint_files(args.checkpoint)[1]))
    name = "generator_ema" if any(key.startswith("module/generator_ema/") for key in tensors) else "generator"
    prefix = f"module/{name}/"
    generator = StarGANGenerator(StarGANConfig.cpu() if args.cpu_network else StarGANConfig())
    generator.load_state_dict({key[len(prefix):]: value for key, value in tensors.items() if key.startswith(prefix)})
    torch.set_num_threads(1)
    print(json.dumps({"checkpoint": str(args.checkpoint), "weights": name,
                      **measure(StarGANEditor(generator.eval()), n=256)}))


if __name__ == "__main__":
    main()
