"""SynthFaces rendering speed: images per second at 64, 128 and 256 pixels.

    python benchmarks/bench_synth.py [--threads 2] [--processes 1] [--images 2000] [--pairs] [--loader]

Faces are rendered as a dataset would (random identities, emotion prototypes at random
intensities, the multipie look). Besides wall-clock images/s the script prints images per CPU
second (process time), which is less sensitive to other programs sharing the machine, and the
ratio between sizes measured in the same run. ``--processes 2`` renders with two
single-threaded worker processes (as a DataLoader with ``num_workers=2`` would), which uses two
cores better than intra-op threads on these small tensors. ``--loader`` also times what training
sees: ``SynthFaces`` batches of each preset (64x64, batch 256) consumed by ``Trainer.fit`` with
its defaults (``facelib.data.loader``: a split that fits in memory rendered once and kept, else
render workers; several steps per render call; labels,
per-item light/background/noise, collation and the transfer between processes included,
from the start of ``fit`` to the last batch), beside a plain ``DataLoader`` with two workers
and one render call per step, and the ratio to bare rendering with two processes in the same
run (the figure to compare across runs when other programs share the machine).

The renderer lets glibc keep freed memory (``facelib.utils.keep_freed_memory``); run with
``FACELIB_MALLOC=system`` to measure glibc's default behaviour instead.
"""
from __future__ import annotations

import argparse
import time

import torch

from facelib.data import SynthFaces, emotion_aus, render, render_pair
from facelib.data.loader import keeps_in_memory
from facelib.train import Trainer, TrainingTask, batch_indices
from facelib.utils import keep_freed_memory


def workload(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 10**6, (n,), generator=g)
    emotions = torch.randint(0, 10, (n,), generator=g)
    aus = emotion_aus(emotions, 3 + 2 * torch.rand(n, generator=g), ids)
    other = emotion_aus(torch.randint(0, 10, (n,), generator=g), 3 + 2 * torch.rand(n, generator=g), ids)
    return ids, aus, other


def measure(fn, repeats: int = 3) -> tuple[float, float]:
    """Best (wall seconds, CPU seconds) over ``repeats`` runs."""
    best = (float("inf"), float("inf"))
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        best = min(best, (time.perf_counter() - wall, time.process_time() - cpu))
    return best


def reference_seconds() -> float:
    """A fixed elementwise workload timed in the same run: renders / reference is load-independent."""
    x = torch.rand(78, 64, 64)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(100):
            y = torch.exp(x * 0.5) * x + 0.25
        best = min(best, time.perf_counter() - start)
    return best + 0 * float(y[0, 0, 0])


def _render_part(args) -> int:
    ids, aus, size = args
    torch.set_num_threads(1)
    render(ids, aus, None, size)
    return len(ids)


def measure_processes(ids, aus, size: int, processes: int, repeats: int = 3) -> float:
    """Best wall seconds to render the batch split over ``processes`` single-threaded workers."""
    import multiprocessing as mp

    parts = [(i, a, size) for i, a in zip(ids.chunk(processes), aus.chunk(processes))]
    best = float("inf")
    with mp.get_context("fork").Pool(processes) as pool:
        pool.map(_render_part, [(i[:8], a[:8], size) for i, a, _ in parts])  # warm-up
        for _ in range(repeats):
            start = time.perf_counter()
            pool.map(_render_part, parts)
            best = min(best, time.perf_counter() - start)
    return best


class _Consume(TrainingTask):
    """A training task that only takes its batches: the loader's speed as the Trainer sees it."""

    def __init__(self, dataset):
        self.dataset, self.times, self.images = dataset, [], 0

    def build(self, device):
        self.times.append(time.perf_counter())  # just before the Trainer starts its loader
        return {}, {}

    def training_step(self, batch, step):
        self.images += len(batch["image"])
        self.times.append(time.perf_counter())
        return {}


def measure_trainer(preset: str, size: int = 64, steps: int = 32, batch_size: int = 256) -> float:
    """Images/s of ``SynthFaces(preset)`` batches through ``Trainer.fit`` with its default loader."""
    import tempfile

    task = _Consume(SynthFaces(preset, "train", size=size))
    with tempfile.TemporaryDirectory() as out_dir:
        # from the call of fit (the first batch's rendering counts) to the last batch
        start = time.perf_counter()
        Trainer(task, steps=steps, batch_size=batch_size, out_dir=out_dir, progress=False, log_every=steps).fit()
    return task.images / (task.times[-1] - start)


def measure_dataloader(preset: str, size: int = 64, steps: int = 32, batch_size: int = 256, workers: int = 2) -> float:
    """Images/s of the same batches through a plain DataLoader: one render call per step (the old default path)."""
    from torch.utils.data import DataLoader

    data = SynthFaces(preset, "train", size=size)
    sampler = [batch_indices(len(data), batch_size, step, seed=0).tolist() for step in range(steps)]
    start, seen = time.perf_counter(), 0
    for batch in DataLoader(data, batch_sampler=sampler, num_workers=workers):
        seen += len(batch["image"])
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    parser.add_argument("--processes", type=int, default=1, help="worker processes (1 thread each) for a second measurement")
    parser.add_argument("--images", type=int, default=2000, help="images rendered at 64x64 (fewer at larger sizes)")
    parser.add_argument("--pairs", action="store_true", help="also time render_pair (pairs with flow)")
    parser.add_argument("--loader", action="store_true", help="also time SynthFaces presets through the Trainer's loader")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    render(*workload(64)[:2], None, 64)  # warm-up
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, allocator: {keep_freed_memory()}")
    rates = {}
    for size in (64, 128, 256):
        n = max(32, args.images * 64 * 64 // (size * size))
        ids, aus, other = workload(n, seed=size)
        wall, cpu = measure(lambda: render(ids, aus, None, size))
        rates[size] = n / wall
        print(f"render {size:4d}x{size:<4d}: {n / wall:8.0f} images/s   {n / cpu:8.0f} images per CPU-second   ({n} images)")
        if args.processes > 1:
            wall = measure_processes(ids, aus, size, args.processes)
            print(f"render {size:4d}x{size:<4d}: {n / wall:8.0f} images/s with {args.processes} worker processes")
        if args.pairs:
            wall, cpu = measure(lambda: render_pair(ids, aus, other, None, size), repeats=1)
            print(f"pairs  {size:4d}x{size:<4d}: {n / wall:8.0f} pairs/s    {n / cpu:8.0f} pairs per CPU-second")
    print(f"same-run ratios: 64/128 = {rates[64] / rates[128]:.2f}, 64/256 = {rates[64] / rates[256]:.2f} "
          f"(pixel ratios 4 and 16)")
    if args.loader:
        # Interleaved and best of two: the three figures of a preset see the same machine load.
        ids, aus, _ = workload(max(32, args.images), seed=64)
        for preset in ("multipie", "rafd", "oulu", "emotionet"):
            bare = max(len(ids) / measure_processes(ids, aus, 64, 2, repeats=1) for _ in range(2))
            trainer = max(measure_trainer(preset) for _ in range(2))
            plain = max(measure_dataloader(preset) for _ in range(2))
            split = SynthFaces(preset, "train", size=64)
            path = "rendered once, kept in memory" if keeps_in_memory(split) else "render workers"
            print(f"SynthFaces({preset!r:11}) 64x64, batch 256 (images/s): Trainer default loader {trainer:5.0f} "
                  f"= {trainer / bare:.2f} x bare render (2 processes, {bare:5.0f}); plain DataLoader, 2 workers, "
                  f"one render call per step {plain:5.0f} = {plain / bare:.2f} x   "
                  f"[{path}; 32 steps = {32 * 256 / len(split):.2f} epochs of {len(split)} faces]")
    ref = reference_seconds()
    print(f"reference workload (100 x exp/mul/add on 78x64x64): {ref * 1e3:.0f} ms; "
          f"64x64 images rendered per reference workload: {rates[64] * ref:.0f}")


if __name__ == "__main__":
    main()
