"""GAN speed: milliseconds per training iteration and per edited image, beside a reference workload.

One training iteration = ``n_critic`` critic updates and one generator update (StarGAN and
GANimation: 5 + 1) at batch 16, 64x64, on one pre-rendered batch (in training, rendering runs
in the Trainer's loader workers, or once for rafd's 2,000 faces kept in memory, and is not
counted). One edit = ``editor.edit`` of one 64x64 face. Both are medians after a warm-up, with
the thread count given (default 2, this project's CPU), and each is printed beside a reference
convolution workload timed in the same run (4 stacked 3x3 convolutions, 16 -> 16 channels, on a
[1, 16, 64, 64] tensor, no gradients) as a ratio, which varies less with the
machine's load than the milliseconds do.

    python benchmarks/bench_gan.py [--threads 2] [--iterations 3] [--repeats 20] [--only ganimation]

With both GANimation and DFT-Net in the run it also prints DFT-Net's edit time over GANimation's,
the two timed in this one run (DFT-Net Sec. 3.1 reports 7.32 / 12.11 ms = 0.60 on its GPU).

A model is one entry of ``MODELS``: name -> (task factory, editor factory). The task factory
returns a built ``GANTask``'s ingredients ``(task, batch)``; the editor factory ``(editor, target)``.
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch
from torch import nn

import facelib
from facelib.conventions import NUM_AUS
from facelib.editors import Target
from facelib.metrics import latency

BATCH_SIZE, IMAGE_SIZE = 16, 64


def ganimation_task():
    """GANimation's task (CPU config) and a batch of 16 emotionet faces."""
    from facelib.data import SynthFaces
    from facelib.models.ganimation import PRESET, GANimationConfig
    from facelib.train.ganimation import GANimationTask

    batch = SynthFaces(PRESET, "train", size=IMAGE_SIZE, seed=0).batch(range(BATCH_SIZE))
    return GANimationTask(GANimationConfig()), {"image": batch["image"], "aus": batch["aus"]}


def ganimation_editor():
    """A GANimation editor (randomly initialised: speed does not depend on the weights) and an AU target."""
    from facelib.models.ganimation import GANimationConfig, GANimationEditor, GANimationGenerator

    editor = GANimationEditor(GANimationGenerator(GANimationConfig()))
    return editor, Target(aus=torch.full((1, NUM_AUS), 2.0))


def dftnet_task():
    """DFT-Net's task (CPU config) and GANimation's batch of 16 emotionet faces."""
    from facelib.models.dftnet import DFTNetConfig
    from facelib.train.dftnet import DFTNetTask

    _, batch = ganimation_task()
    return DFTNetTask(DFTNetConfig()), batch


def dftnet_editor():
    """A DFT-Net editor (randomly initialised) and GANimation's AU target."""
    from facelib.models.dftnet import DFTNetConfig, DFTNetEditor, DFTNetGenerator

    return DFTNetEditor(DFTNetGenerator(DFTNetConfig())), Target(aus=torch.full((1, NUM_AUS), 2.0))


def stargan_task():
    """StarGAN's task (CPU config, its training settings) and a batch of 16 rafd faces."""
    from facelib.data import SynthFaces
    from facelib.models.stargan import StarGANConfig
    from facelib.train.stargan import PRESET, StarGANTask, StarGANTrainConfig

    batch = SynthFaces(PRESET, "train", size=IMAGE_SIZE, seed=0).batch(range(BATCH_SIZE))
    return StarGANTask(StarGANConfig(), StarGANTrainConfig(), None), {"image": batch["image"], "emotion": batch["emotion"]}


def stargan_editor():
    """A StarGAN editor (randomly initialised) and an expression target."""
    from facelib.models.stargan import StarGANConfig, StarGANEditor, StarGANGenerator

    return StarGANEditor(StarGANGenerator(StarGANConfig())), Target(expression="happy")


#: name -> (task factory, editor factory).
MODELS: dict[str, tuple[Callable, Callable]] = {
    "stargan": (stargan_task, stargan_editor),
    "ganimation": (ganimation_task, ganimation_editor),
    "dftnet": (dftnet_task, dftnet_editor),
}


def reference_workload() -> tuple[Callable, torch.Tensor]:
    """A fixed convolution stack and its input: the yardstick every timing is divided by."""
    torch.manual_seed(0)
    stack = nn.Sequential(*[nn.Conv2d(16, 16, 3, padding=1) for _ in range(4)]).eval()
    return stack, torch.randn(1, 16, IMAGE_SIZE, IMAGE_SIZE)


def ms_per_iteration(task, batch: dict, iterations: int) -> float:
    """Median milliseconds of one iteration (n_critic training steps, the last one with the generator)."""
    task.total_steps = 10**6  # no learning-rate decay inside the benchmark
    task.modules, task.optimizers = task.build(torch.device("cpu"))
    task.device = torch.device("cpu")
    step, times = 0, []
    for repeat in range(iterations + 1):  # the first iteration warms up
        start = time.perf_counter()
        for _ in range(task.n_critic):
            task.training_step(batch, step)
            step += 1
        if repeat:
            times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=3, help="timed training iterations (after one warm-up)")
    parser.add_argument("--repeats", type=int, default=20, help="timed edits (after three warm-ups)")
    parser.add_argument("--only", choices=sorted(MODELS), help="benchmark one model")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    facelib.set_seed(0)

    stack, reference_input = reference_workload()
    edit_times = {}
    for name in [args.only] if args.only else MODELS:
        make_task, make_editor = MODELS[name]
        task, batch = make_task()
        train_reference_ms = latency(stack, reference_input, repeats=args.repeats)
        train_ms = ms_per_iteration(task, batch, args.iterations)
        print(f"{name:12s} training iteration ({task.n_critic} critic + 1 generator steps, batch {BATCH_SIZE}, "
              f"{IMAGE_SIZE}x{IMAGE_SIZE}): {train_ms:9.1f} ms = {train_ms / train_reference_ms:8.0f} x reference "
              f"({train_reference_ms:.2f} ms)")
        editor, target = make_editor()
        face = torch.rand(1, 3, IMAGE_SIZE, IMAGE_SIZE) * 2 - 1
        edit_ms = latency(lambda images: editor.edit(images, target), face, repeats=args.repeats)
        reference_ms = latency(stack, reference_input, repeats=args.repeats)
        print(f"{name:12s} one edit (batch 1, {IMAGE_SIZE}x{IMAGE_SIZE}): {edit_ms:9.1f} ms = "
              f"{edit_ms / reference_ms:8.1f} x reference")
        print(f"{'':12s} reference (4 conv3x3 16->16 on [1, 16, {IMAGE_SIZE}, {IMAGE_SIZE}]): {reference_ms:.2f} ms; "
              f"{args.threads} threads")
        edit_times[name] = edit_ms
    if {"ganimation", "dftnet"} <= set(edit_times):
        ratio = edit_times["dftnet"] / edit_times["ganimation"]
        print(f"DFT-Net / GANimation, one edit: {ratio:.2f} (this run; the paper's GPU figure: 7.32 / 12.11 = 0.60)")


if __name__ == "__main__":
    main()
