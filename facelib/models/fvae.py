"""FVAE: Semantic Facial Expression Editing using Autoencoded Flow (Yeh et al. 2016).

A VAE whose decoder does not paint pixels: it predicts a dense *flow field* and
builds the output by sampling the source image along it (paper Sec. 3, Fig. 3).

    Z(T) = mu(T) + sigma(T) * eps                      Eq. 2  (encoder f sees the target T)
    F    = flow head of g(S, Z)                        Sec. 5.3 (tanh, normalised coordinates)
    out  = bilinear sample of S at x + F(x)            Eq. 5
    M    = sigmoid(M(S, Z))                            Sec. 3.2 (confidence network)

Classes:

- :class:`FVAE` - encoder f(T) -> (mu, logvar) of a spatial latent (the paper's central
  4x4 block), decoder g(S, Z) that receives the source features by concatenation
  (Fig. 3's blue arrows) and outputs a backward flow in pixels plus the warped source.
- :class:`PixelVAE` - the paper's "VAE" baseline (Sec. 6.1): the same architecture with
  the last layer predicting RGB directly.
- :class:`ConfidenceNet` - the confidence mask network M(S, Z) of Sec. 3.2 (Eq. 7-8),
  trained after the FVAE with the FVAE frozen.

All three share :class:`FVAEConfig`; ``FVAEConfig()`` is the 64x64 CPU configuration and
``FVAEConfig.paper()`` the paper's 128x128 one (4x4x1024 latent). Images are ``[B, 3, H, W]``
in ``[-1, 1]``; flows are backward pixel displacements ``[B, 2, H, W]`` (DESIGN.md).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from facelib.models.blocks import ConvEncoder, SkipDecoder, init_truncated_normal
from facelib.warp import warp

__all__ = ["FVAEConfig", "FVAE", "PixelVAE", "ConfidenceNet", "check_images"]


@dataclass
class FVAEConfig:
    """Architecture of the FVAE, the pixel VAE and the confidence network (paper Fig. 3).

    image_size: square input/output size; the encoder halves it down to ``latent_size``.
    base_channels: channels of the first encoder layer; they double as the size halves.
    max_channels: cap on the doubling (the paper reaches 1024 at 4x4).
    latent_channels: channels of the spatial latent Z (``latent_size`` x ``latent_size``).
    latent_size: spatial side of Z; the paper's central block is 4x4.
    max_flow: range of the flow head's tanh in normalised coordinates (1 = half the image side,
        the paper's full range); 0.25 (8 px at 64x64) covers SynthFaces' expression flows (under
        5 px) with four times finer steps per unit of network output.
    """

    image_size: int = 64
    base_channels: int = 16  # CPU width (measured: 2x faster than 32 per step and better at equal wall time)
    max_channels: int = 256
    latent_channels: int = 16
    latent_size: int = 4
    max_flow: float = 0.25

    def __post_init__(self) -> None:
        ratio = self.image_size / self.latent_size
        if self.image_size < 8 or ratio < 2 or ratio != 2 ** round(math.log2(ratio)):
            raise ValueError(
                f"image_size/latent_size must be a power of two >= 2 (got image_size={self.image_size}, "
                f"latent_size={self.latent_size}); use e.g. 64/4 (default) or 128/4 (the paper's)"
            )
        for name in ("base_channels", "max_channels", "latent_channels"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if not 0 < self.max_flow <= 2:
            raise ValueError(f"max_flow must be in (0, 2] (normalised units, 1 = half the image side), got {self.max_flow}")

    @classmethod
    def paper(cls) -> "FVAEConfig":
        """The paper's 128x128 network: 64 -> 1024 channels, latent the central 4x4x1024 block."""
        return cls(image_size=128, base_channels=64, max_channels=1024, latent_channels=1024, latent_size=4, max_flow=1.0)

    @property
    def num_stages(self) -> int:
        """Number of stride-2 stages between the image and the latent block."""
        return int(round(math.log2(self.image_size / self.latent_size)))

    def stage_channels(self) -> list[int]:
        """Channels after each encoder stage, from full resolution / 2 down to the latent size."""
        return [min(self.base_channels * 2**i, self.max_channels) for i in range(self.num_stages)]


def check_images(images: torch.Tensor, size: int, name: str = "images") -> None:
    """Raise a clear error unless ``images`` is a float ``[B, 3, size, size]`` tensor."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor [B, 3, {size}, {size}], got {type(images).__name__}")
    if not images.is_floating_point():
        raise TypeError(f"{name} must be a float tensor in [-1, 1], got dtype {images.dtype}")
    if images.dim() != 4 or images.shape[1] != 3 or tuple(images.shape[-2:]) != (size, size):
        raise ValueError(
            f"{name} must have shape [B, 3, {size}, {size}] for this model, got {list(images.shape)}; "
            "resize it (facelib.edit resizes with a warning) or build a model with a matching FVAEConfig.image_size"
        )


class _LatentVariableModel(nn.Module):
    """Shared encoder f(T), Eq. 2 and decoder g(S, Z) of the FVAE and the pixel VAE."""

    out_channels: int = 2
    config_class = FVAEConfig

    def __init__(self, config: FVAEConfig | None = None):
        super().__init__()
        self.config = config if config is not None else FVAEConfig()
        stages = self.config.stage_channels()
        self.target_encoder = ConvEncoder(stages)
        self.to_latent = nn.Conv2d(stages[-1], 2 * self.config.latent_channels, 3, padding=1)
        self.source_encoder = ConvEncoder(stages)
        self.decoder = SkipDecoder(stages, self.config.latent_channels, self.out_channels)
        init_truncated_normal(self)  # Sec. 5.3: truncated Gaussian, std 0.01
        # Departure from Sec. 5.3's init: the output layer starts at zero, so the FVAE starts from the
        # identity warp (and the pixel VAE from grey) instead of a random flow of several pixels.
        nn.init.zeros_(self.decoder.head.weight)

    def encode(self, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """f(T) -> (mu, logvar), each ``[B, latent_channels, latent_size, latent_size]``."""
        check_images(target, self.config.image_size, "target")
        mu, logvar = self.to_latent(self.target_encoder(target)[-1]).chunk(2, dim=1)
        return mu, logvar

    @staticmethod
    def reparameterize(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """Z = mu + sigma * eps with eps ~ N(0, I) (in eval mode Z = mu, the posterior mean)."""
        eps = torch.randn_like(mu)
        # FVAE Eq. 2: Z(T) = mu(T) + sigma(T) (.) eps
        return mu + torch.exp(0.5 * logvar) * eps

    def latent(self, images: torch.Tensor) -> torch.Tensor:
        """Z(I) used for editing: the posterior mean mu(I) (Algorithms 1-2 take Z of a given image)."""
        return self.encode(images)[0]

    def decode(self, source: torch.Tensor, z: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError  # defined by FVAE and PixelVAE

    def forward(self, source: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """Training pass: encode T, sample Z (Eq. 2; Z = mu in eval mode), decode g(S, Z)."""
        mu, logvar = self.encode(target)
        z = self.reparameterize(mu, logvar) if self.training else mu
        out = self.decode(source, z)
        out.update(mu=mu, logvar=logvar, z=z)
        return out


class FVAE(_LatentVariableModel):
    """Flow VAE (Sec. 3.1): g(S, Z) is a flow field F and the output is S sampled along F (Eq. 5).

    ``decode`` returns ``{"output": [B, 3, H, W], "flow": [B, 2, H, W] backward pixel flow}``.
    """

    out_channels = 2

    def flow(self, source: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """The decoder's flow field in pixels, ``[B, 2, H, W]`` (ch 0 = dx, ch 1 = dy)."""
        check_images(source, self.config.image_size, "source")
        raw = self.decoder(source, self.source_encoder(source), z)  # [B, 2, H, W]
        # Sec. 5.3: the flow head ends in tanh because it outputs normalised coordinates.
        # Departure: tanh gives the displacement from the pixel's own normalised position rather than
        # the absolute position, so a zero output is the identity warp and training starts from it.
        normalised = self.config.max_flow * torch.tanh(raw)  # [B, 2, H, W]; 1 = half the image side
        return normalised * (self.config.image_size - 1) / 2  # [B, 2, H, W] pixels

    def decode(self, source: torch.Tensor, z: torch.Tensor) -> dict[str, torch.Tensor]:
        """g(S, Z): the flow and the source warped by it."""
        flow = self.flow(source, z)
        # FVAE Eq. 5 (bilinear sampling of S at x + F(x)) through the grid_sample fast path,
        # facelib.warp.warp, equal to the written-out facelib.warp.bilinear_sample within 1e-5.
        return {"output": warp(source, flow), "flow": flow}


class PixelVAE(_LatentVariableModel):
    """The paper's "VAE" baseline (Sec. 6.1): the FVAE architecture, last layer predicting RGB.

    ``decode`` returns ``{"output": [B, 3, H, W]}`` (tanh, in [-1, 1]).
    """

    out_channels = 3

    def decode(self, source: torch.Tensor, z: torch.Tensor) -> dict[str, torch.Tensor]:
        check_images(source, self.config.image_size, "source")
        rgb = self.decoder(source, self.source_encoder(source), z)  # [B, 3, H, W]
        return {"output": torch.tanh(rgb)}


class ConfidenceNet(nn.Module):
    """M(S, Z) of Sec. 3.2: per-pixel confidence that g(S, Z) reproduces the target there.

    It sees only the source and the latent because the target is unknown at test time.
    ``forward`` returns logits ``[B, 1, H, W]``; the mask is ``sigmoid(logits)`` (Eq. 8 is a
    per-pixel binary cross-entropy against the soft label of Eq. 7).
    """

    config_class = FVAEConfig

    def __init__(self, config: FVAEConfig | None = None):
        super().__init__()
        self.config = config if config is not None else FVAEConfig()
        self.source_encoder = ConvEncoder(self.config.stage_channels())
        self.decoder = SkipDecoder(self.config.stage_channels(), self.config.latent_channels, 1)
        init_truncated_normal(self)  # Sec. 5.3: truncated Gaussian, std 0.01

    def forward(self, source: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        check_images(source, self.config.image_size, "source")
        return self.decoder(source, self.source_encoder(source), z)  # [B, 1, H, W] logits

    def mask(self, source: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """The confidence mask M in [0, 1], ``[B, 1, H, W]``."""
        return torch.sigmoid(self(source, z))


