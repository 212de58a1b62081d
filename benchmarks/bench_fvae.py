"""FVAE speed: training wall time of the shipped checkpoints and the latency of one edit.

One edit = encode Z(S) at 64x64, move it along an expression direction (Algorithm 1), decode
the flow, upsample the flow 4x and sample the 256x256 source (Sec. 4.3). Median over repeated
runs after warm-up, batch 1, with the thread count given (default 2, this project's CPU).

    python benchmarks/bench_fvae.py [--threads 2] [--repeats 50]
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

import facelib
from facelib.pretrained import available_pretrained, pretrained_info
from facelib.editors import Target
from facelib.metrics import latency
from facelib.models.fvae import FVAE, FVAEEditor
from facelib.warp import upsample_flow, warp


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    facelib.set_seed(0)

    shipped = set(available_pretrained())
    for name in ("fvae", "fvae_confidence", "fvae_pixel_vae"):
        if name in shipped:
            info = pretrained_info(name)
            print(f"training wall time {name:16s}: {info['wall_time_s'] / 60:6.1f} min "
                  f"({info['steps']} steps; command: {info['command']})")
        else:
            print(f"training wall time {name:16s}: not shipped")

    model = facelib.load_pretrained("fvae") if "fvae" in shipped else FVAE().eval()
    size = model.config.image_size
    highres = torch.rand(1, 3, 4 * size, 4 * size) * 2 - 1
    with torch.no_grad():
        z = model.latent(F.interpolate(highres, size=(size, size), mode="area"))
    editor = facelib.load_editor("fvae") if "fvae" in shipped else FVAEEditor(
        model, {"neutral": torch.zeros_like(z[0]), "happy": 0.5 * torch.ones_like(z[0])})
    target = Target(expression="happy", source_expression="neutral")

    def edit(source_highres):
        return editor.edit_highres(source_highres, target).output

    lowres = F.interpolate(highres, size=(size, size), mode="area")
    with torch.no_grad():
        flow = model.flow(lowres, z)
    parts = {
        "encode Z(S) at 64": latency(lambda s: model.latent(s), lowres, repeats=args.repeats),
        "decode flow at 64": latency(lambda s: model.flow(s, z), lowres, repeats=args.repeats),
        "upsample flow 4x + warp 256": latency(lambda s: warp(s, upsample_flow(flow, 4 * size)), highres,
                                               repeats=args.repeats),
    }
    total = latency(edit, highres, repeats=args.repeats)
    print(f"\nweights: {'shipped fvae' if 'fvae' in shipped else 'random init (no checkpoint shipped)'}; "
          f"threads: {args.threads}")
    for name, ms in parts.items():
        print(f"  {name:30s} {ms:7.2f} ms  ({ms / total:5.1%} of one edit)")
    print(f"one edit, 64 -> 256 (median of {args.repeats}): {total:.2f} ms  (target <= 30 ms)")


if __name__ == "__main__":
    main()
