"""Time FVAE Eq. 6 (facelib.losses.fvae_flow_coherence) against one 7x7 conv2d over the same tensor.

    python benchmarks/bench_flow_coherence.py [--batch 32] [--size 64] [--repeats 21] [--threads N]

Both are measured in the same run, after warm-up, alternately, as the median of ``--repeats`` calls
each, so the ratio stays meaningful on a busy machine. The reference is ``conv2d(flow, weight[2, 2, 7, 7], padding=3)``:
one dense 7x7 filter over the flow the loss regularises. The ratio target is <= 3 (issue 2).
Forward + backward (gradient w.r.t. the flow, as in training) is printed too, against the conv's.
On a shared machine use ``--threads 1``: with several threads, other processes' load distorts the
many small element-wise passes of the loss far more than the single conv call.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from facelib.losses import fvae_flow_coherence


def interleaved_medians(first, second, repeats: int, warmup: int = 3) -> tuple[float, float]:
    """Median seconds of two callables, timed alternately so both see the same machine load."""
    for _ in range(warmup):
        first()
        second()
    first_times, second_times = [], []
    for _ in range(repeats):
        for fn, times in ((first, first_times), (second, second_times)):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return statistics.median(first_times), statistics.median(second_times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    generator = torch.Generator().manual_seed(0)
    flow = torch.randn(args.batch, 2, args.size, args.size, generator=generator) * 2  # [B, 2, H, W]
    target = torch.rand(args.batch, 3, args.size, args.size, generator=generator) * 2 - 1  # [B, 3, H, W]
    weight = torch.randn(2, 2, 7, 7, generator=generator)

    with torch.no_grad():
        coherence, conv = interleaved_medians(lambda: fvae_flow_coherence(flow, target, window=7),
                                              lambda: F.conv2d(flow, weight, padding=3), args.repeats)

    def coherence_step():
        leaf = flow.clone().requires_grad_(True)
        fvae_flow_coherence(leaf, target, window=7).backward()

    def conv_step():
        leaf = flow.clone().requires_grad_(True)
        F.conv2d(leaf, weight, padding=3).sum().backward()

    coherence_train, conv_train = interleaved_medians(coherence_step, conv_step, args.repeats)

    print(f"flow coherence (FVAE Eq. 6, 7x7) vs one 7x7 conv2d, batch {args.batch}, "
          f"{args.size}x{args.size}, {torch.get_num_threads()} thread(s), median of {args.repeats}")
    print(f"  forward            coherence {coherence * 1e3:8.2f} ms   conv2d {conv * 1e3:8.2f} ms   "
          f"ratio {coherence / conv:5.2f}  (target <= 3)")
    print(f"  forward + backward coherence {coherence_train * 1e3:8.2f} ms   conv2d {conv_train * 1e3:8.2f} ms   "
          f"ratio {coherence_train / conv_train:5.2f}")


if __name__ == "__main__":
    main()
