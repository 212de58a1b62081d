"""SynthFaces ground truth: how well the true flow explains the target, per preset.

    python benchmarks/bench_ground_truth.py [--pairs 228] [--size 64]

For random test-split pairs of every preset, warps the source by the ground-truth flow and
prints the PSNR against the target over the ``visible`` mask (min / 5th percentile / median),
and the largest |flow|. Presets with sensor noise are re-rendered without it (noise is drawn
independently for the two images, so no flow can explain it). Then, for pairs whose two
expressions keep the mouth closed (random identities, yaw and light), the share of the face
that ``visible`` covers. The tests assert >= 35 dB and >= 70 %; this prints the distribution.
"""
from __future__ import annotations

import argparse

import torch

from facelib.conventions import EXPRESSIONS
from facelib.data import PRESETS, SynthFaces, emotion_aus, get_preset, render_pair
from facelib.data.synth import identity_params
from facelib.metrics import psnr
from facelib.warp import warp

#: Expressions without AU10/25/26: the lips stay together.
MOUTH_CLOSED = ("neutral", "angry", "contemptuous", "sad", "squint")


def preset_pairs(preset: str, count: int, size: int) -> dict[str, torch.Tensor]:
    data = SynthFaces(preset, "test", size=size, pairs=True, seed=1)
    index = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))[:count]
    batch = data.batch(index)
    if get_preset(preset).noise:
        clean = render_pair(batch["identity"], batch["source_aus"], batch["target_aus"], batch["yaw"], size,
                            light="random", background="random", seeds=data.render_parameters(index)["seed"])
        batch = {**batch, **clean}
    return batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=228, help="random test pairs per preset (default 228)")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    args = parser.parse_args()
    worst = float("inf")
    total = 0
    for preset in sorted(PRESETS):
        batch = preset_pairs(preset, args.pairs, args.size)
        values = psnr(warp(batch["source"], batch["flow"]), batch["target"], mask=batch["visible"], per_image=True)
        q = torch.quantile(values, torch.tensor([0.0, 0.05, 0.5]))
        worst, total = min(worst, float(q[0])), total + len(values)
        unwarped = psnr(batch["source"], batch["target"], per_image=True).median()
        print(f"{preset:10s} {len(values):4d} pairs: PSNR over visible min {q[0]:.2f} / p5 {q[1]:.2f} / median {q[2]:.2f} dB "
              f"(unwarped source vs target, whole image: median {unwarped:.2f} dB); max |flow| {batch['flow'].abs().max():.1f} px")
    print(f"worst over all {total} pairs: {worst:.2f} dB")

    g = torch.Generator().manual_seed(3)
    n = args.pairs
    ids = torch.randint(0, 10**6, (n,), generator=g)
    closed = torch.tensor([EXPRESSIONS.index(name) for name in MOUTH_CLOSED])
    src, tgt = closed[torch.randint(0, 5, (n,), generator=g)], closed[torch.randint(0, 5, (n,), generator=g)]
    yaw = (torch.rand(n, generator=g) - 0.5) * 90
    out = render_pair(ids, emotion_aus(src, 5.0, ids), emotion_aus(tgt, 5.0, ids), yaw, args.size,
                      background="random", light="random", generator=g)
    face = out["face_mask"]
    coverage = (out["visible"] * face).sum((1, 2, 3)) / face.sum((1, 2, 3)).clamp_min(1)
    # glasses stay put while the face moves under them, so their wearers lose the skin around the frames
    glasses = identity_params(ids)["glasses"] > 0
    print(f"mouth-closed pairs ({n}, yaw +-45, random light and background): share of the face that visible covers")
    for name, keep in (("all", torch.ones_like(glasses)), ("without glasses", ~glasses), ("with glasses", glasses)):
        q = torch.quantile(coverage[keep], torch.tensor([0.05, 0.5]))
        print(f"  {name:16s} {int(keep.sum()):4d} pairs: p5 {q[0]:.1%} / median {q[1]:.1%}; "
              f"{float((coverage[keep] >= 0.7).float().mean()):.1%} of pairs >= 70 %")


if __name__ == "__main__":
    main()
