"""A small classifier trained in memory: the measurements that train one (LEED Table 2, ExprGAN Table 1).

:func:`facelib.metrics.expression_accuracy` (LEED's R / G / R+G) and
:func:`facelib.evaluation.exprgan.augmentation_table` train a fresh classifier on a few thousand
images held in memory, for a few hundred steps, many times over. That is a measurement, not a
model to keep: no checkpoints, no log folder, no resume, so it runs this short loop rather than
the :class:`facelib.train.Trainer`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from facelib.utils import get_device

__all__ = ["train_classifier"]


def train_classifier(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, *, steps: int = 300,
                     batch_size: int = 64, lr: float = 1e-3, seed: int = 0, device: str | torch.device = "cpu",
                     desc: str = "classifier", progress: bool = True) -> torch.nn.Module:
    """Train ``model`` (logits) with cross-entropy and Adam on random mini-batches; returns it."""
    device = get_device(device)
    model.to(device).train()
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    for _ in tqdm(range(steps), desc=f"training {desc}", leave=False, disable=not progress):
        index = torch.randint(images.shape[0], (min(batch_size, images.shape[0]),), generator=generator)
        loss = F.cross_entropy(model(images[index].to(device)), labels[index].to(device))
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
    return model.eval()
