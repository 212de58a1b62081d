"""Shared by the FVAE and editing tests: a small FVAE configuration and smooth test images."""
from __future__ import annotations

import torch

from facelib.models.fvae import FVAEConfig

SMALL = FVAEConfig(image_size=32, base_channels=8, max_channels=32, latent_channels=4)


def smooth_images(batch: int, size: int, seed: int = 0, coarse_divisor: int = 4) -> torch.Tensor:
    """Random images in [-1, 1], bicubically upsampled from a grid ``coarse_divisor`` times smaller."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, 3, size // coarse_divisor, size // coarse_divisor, generator=generator) * 2 - 1
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False).clamp(-1, 1)
