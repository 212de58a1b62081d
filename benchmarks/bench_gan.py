"""GAN speed: milliseconds per critic update, per generator update and per edited image, for each
adversarial objective, beside a reference workload timed in the same run.

Each model is timed under each objective of ``facelib.train.gan.OBJECTIVES``: ``wgan-gp`` with the
paper's settings (the gradient penalty on every critic step), ``non-saturating`` and ``hinge`` with
its CPU recipe's (one critic step per generator step, lazy R1 every 16 critic steps, colour
augmentation, the EMA update after each generator step). A critic update is the mean over 16
consecutive critic steps (so a lazy R1 step is counted once in 16, as in training); a generator
update is the median of ``--updates`` (EMA update included). Batch 16, 64x64, on one
pre-rendered batch (in training, rendering runs in the Trainer's loader workers, or once for
rafd's 2,000 faces kept in memory, and is not counted). One edit = ``editor.edit`` of one 64x64
face. Each figure is printed beside a reference convolution workload timed in the same run (4
stacked 3x3 convolutions, 16 -> 16 channels, on a [1, 16, 64, 64] tensor, no gradients) as a
ratio, which varies less with the machine's load than the milliseconds do.

    python benchmarks/bench_gan.py [--threads 2] [--updates 5] [--repeats 20] [--only ganimation]

With both GANimation and DFT-Net in the run it also prints DFT-Net's edit time over GANimation's,
the two timed in this one run (DFT-Net Sec. 3.1 reports 7.32 / 12.11 ms = 0.60 on its GPU).

A model is one entry of ``MODELS``: name -> (task factory, editor factory). The task factory takes
an objective and returns ``(task, batch)``; the editor factory ``(editor, target)``.
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
from facelib.train.gan import OBJECTIVES

BATCH_SIZE, IMAGE_SIZE = 16, 64


def ganimation_options(objective: str) -> dict:
    """GANimationTask's options: the paper's for WGAN-GP, the CPU recipe's (with ``objective``) otherwise."""
    from facelib.train.ganimation import CPU_RECIPE

    return {} if objective == "wgan-gp" else {**CPU_RECIPE, "objective": objective, "warmup_steps": 0}


def ganimation_task(objective: str):
    """GANimation's task (CPU config) and a batch of 16 emotionet faces."""
    from facelib.data import SynthFaces
    from facelib.models.ganimation import PRESET, GANimationConfig
    from facelib.train.ganimation import GANimationTask

    batch = SynthFaces(PRESET, "train", size=IMAGE_SIZE, seed=0).batch(range(BATCH_SIZE))
    batch = {key: batch[key] for key in ("image", "aus", "landmarks")}
    return GANimationTask(GANimationConfig(), **ganimation_options(objective)), batch


def ganimation_editor():
    """A GANimation editor (randomly initialised: speed does not depend on the weights) and an AU target."""
    from facelib.models.ganimation import GANimationConfig, GANimationEditor, GANimationGenerator

    editor = GANimationEditor(GANimationGenerator(GANimationConfig()))
    return editor, Target(aus=torch.full((1, NUM_AUS), 2.0))


def dftnet_task(objective: str):
    """DFT-Net's task (CPU config) and GANimation's batch of 16 emotionet faces."""
    from facelib.models.dftnet import DFTNetConfig
    from facelib.train.dftnet import DFTNetTask

    _, batch = ganimation_task(objective)
    return DFTNetTask(DFTNetConfig(), **ganimation_options(objective)), batch


def dftnet_editor():
    """A DFT-Net editor (randomly initialised) and GANimation's AU target."""
    from facelib.models.dftnet import DFTNetConfig, DFTNetEditor, DFTNetGenerator

    return DFTNetEditor(DFTNetGenerator(DFTNetConfig())), Target(aus=torch.full((1, NUM_AUS), 2.0))


def stargan_task(objective: str):
    """StarGAN's task and a batch of 16 rafd faces: the paper's network and schedule for WGAN-GP,
    the CPU recipe's (with ``objective``) otherwise."""
    import dataclasses

    from facelib.data import SynthFaces
    from facelib.models.stargan import StarGANConfig
    from facelib.train.stargan import PRESET, StarGANTask, StarGANTrainConfig

    batch = SynthFaces(PRESET, "train", size=IMAGE_SIZE, seed=0).batch(range(BATCH_SIZE))
    if objective == "wgan-gp":
        config, train = StarGANConfig(), StarGANTrainConfig()
    else:
        config = StarGANConfig.cpu()
        train = dataclasses.replace(StarGANTrainConfig.cpu(), objective=objective, classifier_warmup=0)
    return StarGANTask(config, train, None), {key: batch[key] for key in ("image", "emotion", "landmarks")}


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


def ms_per_update(task, batch: dict, updates: int) -> tuple[float, float]:
    """``(critic ms, generator ms)``: the mean of 16 consecutive critic steps (lazy R1 once among them)
    and the median generator step (with its EMA update), after a warm-up of each."""
    task.total_steps = 10**6  # no learning-rate decay inside the benchmark
    task.modules, task.optimizers = task.build(torch.device("cpu"))
    task.device = torch.device("cpu")
    prepared = task.prepare(batch, 0)
    task.critic_step(prepared, 1)  # warm-up (step 1: no R1)
    start = time.perf_counter()
    for step in range(16):
        task.critic_step(prepared, step)
    critic_ms = (time.perf_counter() - start) * 1000 / 16
    times = []
    for repeat in range(updates + 1):  # the first one warms up
        start = time.perf_counter()
        task.generator_step(prepared, 0)
        if task.ema_decay is not None:
            task.update_ema(0)
        if repeat:
            times.append((time.perf_counter() - start) * 1000)
    return critic_ms, statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--updates", type=int, default=5, help="timed generator updates (after one warm-up)")
    parser.add_argument("--repeats", type=int, default=20, help="timed edits (after three warm-ups)")
    parser.add_argument("--only", choices=sorted(MODELS), help="benchmark one model")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    facelib.set_seed(0)

    stack, reference_input = reference_workload()
    edit_times = {}
    for name in [args.only] if args.only else MODELS:
        make_task, make_editor = MODELS[name]
        for objective in OBJECTIVES:
            task, batch = make_task(objective)
            reference_ms = latency(stack, reference_input, repeats=args.repeats)
            critic_ms, generator_ms = ms_per_update(task, batch, args.updates)
            per_generator_update = task.n_critic * critic_ms + generator_ms
            print(f"{name:11s} {objective:15s} critic update {critic_ms:7.1f} ms = {critic_ms / reference_ms:6.0f} x ref; "
                  f"generator update {generator_ms:7.1f} ms = {generator_ms / reference_ms:6.0f} x ref; "
                  f"n_critic {task.n_critic}: {per_generator_update:7.1f} ms per generator update "
                  f"({per_generator_update / reference_ms:.0f} x ref)")
        editor, target = make_editor()
        face = torch.rand(1, 3, IMAGE_SIZE, IMAGE_SIZE) * 2 - 1
        edit_ms = latency(lambda images: editor.edit(images, target), face, repeats=args.repeats)
        reference_ms = latency(stack, reference_input, repeats=args.repeats)
        print(f"{name:11s} one edit (batch 1, {IMAGE_SIZE}x{IMAGE_SIZE}): {edit_ms:9.1f} ms = "
              f"{edit_ms / reference_ms:8.1f} x reference")
        print(f"{'':11s} reference (4 conv3x3 16->16 on [1, 16, {IMAGE_SIZE}, {IMAGE_SIZE}]): {reference_ms:.2f} ms; "
              f"{args.threads} threads; batch {BATCH_SIZE}, {IMAGE_SIZE}x{IMAGE_SIZE}")
        edit_times[name] = edit_ms
    if {"ganimation", "dftnet"} <= set(edit_times):
        ratio = edit_times["dftnet"] / edit_times["ganimation"]
        print(f"DFT-Net / GANimation, one edit: {ratio:.2f} (this run; the paper's GPU figure: 7.32 / 12.11 = 0.60)")


if __name__ == "__main__":
    main()
