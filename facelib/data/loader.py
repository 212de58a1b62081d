"""Training batches by step: rendered ahead in background workers, several steps per render call.

``step_batches`` is what ``facelib.train.Trainer`` iterates. The batch of step ``t`` is
``collate_fn`` of the items ``indices_of_step(t)``, exactly as a ``DataLoader`` with a batch
sampler would give it; two things make it fast for a dataset that renders its items
(``SynthFaces``):

- **Render ahead.** A ``DataLoader`` with ``num_workers`` processes renders while the training
  step runs, so rendering and the model's compute overlap on different cores.
- **Several steps per render call.** The renderer groups the faces of one call by pose and
  active AUs and renders about 78 faces (64x64) at a time; a call of 1,024 faces groups far
  better than one of 256 (20-35 % less CPU time per face for the multipie and rafd presets,
  measured in one process). A dataset says how many pixels one item renders in its
  ``render_pixels`` attribute; the loader then fetches the items of ``steps_per_group`` consecutive steps in one call (about ``RENDER_PIXELS_PER_CALL``
  pixels) and collates each step's batch separately. A dataset without ``render_pixels`` (or
  with 0: a cached SynthFaces, in-memory tensors) is fetched one step at a time.

- **Render once, keep in memory.** Items of SynthFaces are a fixed function of their index, so
  a training split small enough to keep (at most ``MEMORY_CACHE_BYTES``, estimated from
  ``render_pixels``: every preset's train split at 64x64 except emotionet's 200,000 faces) is
  rendered once, in the training process, as its items are first asked for, and every later
  epoch reads them from memory. Such a dataset gets no workers by default: after the first
  epoch there is nothing left to render ahead.

Groups are aligned to absolute step numbers (group ``g`` holds steps ``g*K .. g*K+K-1``), so
which items share a render call never depends on where a run was resumed: a run resumed in
workers gets the same batches bit for bit. (A split kept in memory is rendered in the order its
items are first asked for, so a run resumed after its first epoch renders them in other calls.)
Against one render call per step the batches agree up to float rounding only: SynthFaces renders a face the same whatever else is in its batch up to
rounding (about 1e-7 here; on some CPUs the matrix kernels round differently for other batch
sizes), which ``tests/test_loader.py`` checks with the renderer's own tolerance.

Memory: the in-memory copy costs about 20 bytes per rendered pixel (rafd's train split at 64x64:
2,000 faces, about 160 MB); a group of 64x64 single images is about 50 MB (image, landmarks, labels; pairs with
flow and mask about 75 MB); at most ``num_workers + 1`` groups exist at a time (one being
rendered by each worker and the one being consumed).

Workers are stopped when the generator is closed (``close()``, which the Trainer calls in a
``finally`` block: at the end of training, on an exception and on ``KeyboardInterrupt``) or
garbage collected; a worker also exits by itself when its parent process dies.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, default_collate

# 1,024 faces at 64x64: about 13 of the renderer's chunks of 320,000 pixels per call.
RENDER_PIXELS_PER_CALL = 1024 * 64 * 64
# A dataset whose items (estimated at BYTES_PER_RENDERED_PIXEL) fit in this is rendered once and kept.
MEMORY_CACHE_BYTES = 1 << 30
# image (3 floats) + flow and mask for pairs, landmarks and labels: a generous 5 float32 per pixel.
BYTES_PER_RENDERED_PIXEL = 20
# Background render workers the Trainer starts by default, at most (each one holds one group).
MAX_DEFAULT_WORKERS = 4

__all__ = ["step_batches", "steps_per_group", "default_num_workers", "keeps_in_memory", "RenderedOnce",
           "RENDER_PIXELS_PER_CALL", "MEMORY_CACHE_BYTES"]


def _render_pixels(dataset: Dataset) -> int:
    return int(getattr(dataset, "render_pixels", 0) or 0)


def keeps_in_memory(dataset: Dataset | None, budget: int | None = None) -> bool:
    """Whether ``dataset`` renders its items and all of them fit in ``budget`` bytes (``MEMORY_CACHE_BYTES``)."""
    pixels = _render_pixels(dataset) if dataset is not None else 0
    budget = MEMORY_CACHE_BYTES if budget is None else budget
    return pixels > 0 and len(dataset) * pixels * BYTES_PER_RENDERED_PIXEL <= budget


class RenderedOnce(Dataset):
    """``dataset`` with each item kept the first time it is rendered (items must be a function of the index).

    ``render_pixels`` falls to 0 once every item is kept, so the loader stops grouping steps.
    """

    def __init__(self, dataset: Dataset):
        self.dataset = dataset
        self.items: dict[int, Any] = {}

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def render_pixels(self) -> int:
        return 0 if len(self.items) == len(self.dataset) else _render_pixels(self.dataset)

    def __getitems__(self, indices: list[int]) -> list:
        missing = [i for i in dict.fromkeys(indices) if i not in self.items]
        if missing:
            # Copies, so that a kept item does not hold on to the whole batch tensor it was sliced from.
            rendered = _fetch(self.dataset, missing)
            for i, item in zip(missing, rendered):
                self.items[i] = ({key: value.clone() if isinstance(value, torch.Tensor) else value
                                  for key, value in item.items()} if isinstance(item, dict) else item)
        return [self.items[i] for i in indices]

    def __getitem__(self, index: int):
        return self.__getitems__([index])[0]


def steps_per_group(dataset: Dataset, batch_size: int) -> int:
    """Consecutive steps fetched in one call: about ``RENDER_PIXELS_PER_CALL`` rendered pixels (1 if nothing renders)."""
    pixels = _render_pixels(dataset)
    if pixels <= 0:
        return 1
    return max(1, RENDER_PIXELS_PER_CALL // (batch_size * pixels))


def _available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))  # the cores this process may use (containers, taskset)
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def default_num_workers(dataset: Dataset | None) -> int:
    """Render workers for a dataset: the cores of this process's share (at most 4) if it renders, else 0.

    A split that ``keeps_in_memory`` gets 0: it is rendered once in this process and then read.

    A dataset that only indexes tensors in memory is faster without workers (no start-up, no
    transfer between processes). Under torchrun the local ranks share the machine's cores.
    """
    if dataset is None or _render_pixels(dataset) <= 0 or keeps_in_memory(dataset):
        return 0
    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    return max(1, min(MAX_DEFAULT_WORKERS, _available_cores() // max(1, local_ranks)))


def _fetch(dataset: Dataset, indices: list[int]) -> list:
    """Items ``indices``, through ``__getitems__`` when the dataset has one (as ``DataLoader`` does)."""
    getitems = getattr(dataset, "__getitems__", None)
    if getitems:
        return getitems(indices)
    return [dataset[i] for i in indices]


class _StepGroups(Dataset):
    """Item ``g``: the list of collated batches of the ``g``-th group of ``steps`` (one task of a worker)."""

    def __init__(self, dataset: Dataset, indices_of_step: Callable[[int], torch.Tensor],
                 collate_fn: Callable[[list], Any], steps: range, group: int):
        self.dataset, self.indices_of_step, self.collate_fn = dataset, indices_of_step, collate_fn
        self.steps, self.group = steps, group

    def __len__(self) -> int:
        return -(-len(self.steps) // self.group)

    def __getitem__(self, g: int) -> list:
        per_step = [self.indices_of_step(step).tolist() for step in self.steps[g * self.group:(g + 1) * self.group]]
        items = _fetch(self.dataset, [i for indices in per_step for i in indices])
        batches, at = [], 0
        for indices in per_step:
            batches.append(self.collate_fn(items[at:at + len(indices)]))
            at += len(indices)
        return batches


def _as_is(group: list) -> list:
    """The DataLoader's collate_fn: each "sample" is already a list of collated batches."""
    return group


def step_batches(
    dataset: Dataset,
    indices_of_step: Callable[[int], torch.Tensor],
    start: int,
    stop: int,
    *,
    batch_size: int,
    num_workers: int = 0,
    collate_fn: Callable[[Sequence], Any] | None = None,
    pin_memory: bool = False,
    generator: torch.Generator | None = None,
) -> Iterator[Any]:
    """The batches of steps ``start .. stop-1``: ``collate_fn(items of indices_of_step(t))`` for each ``t``.

    ``indices_of_step(t)`` returns the dataset indices of step ``t`` (``batch_size`` of them);
    ``num_workers`` background processes fetch groups of ``steps_per_group`` steps ahead.
    ``generator`` seeds the workers (as ``DataLoader(generator=...)``). The generator's
    ``close()`` stops the workers at once.
    """
    collate_fn = collate_fn or default_collate
    if num_workers == 0 and keeps_in_memory(dataset):
        dataset = RenderedOnce(dataset)
    group = steps_per_group(dataset, batch_size)
    first = start - start % group  # groups begin at multiples of ``group`` whatever the start
    loader = DataLoader(
        _StepGroups(dataset, indices_of_step, collate_fn, range(first, stop), group),
        batch_size=None, collate_fn=_as_is, num_workers=num_workers, pin_memory=pin_memory,
        generator=generator, prefetch_factor=1 if num_workers else None,
    )
    groups = iter(loader)
    try:
        step = first
        for batches in groups:
            for batch in batches:
                if step >= start:
                    yield batch
                step += 1
    finally:
        # Stop the workers now, not when the iterator is garbage collected (a traceback or a
        # notebook's last exception can keep it alive). DataLoader has no public call for this.
        shutdown = getattr(groups, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
