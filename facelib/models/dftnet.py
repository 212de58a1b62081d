"""DFT-Net: Deformation, Flow and Texture for facial expression editing (Wang et al. 2019).

DFT-Net is GANimation (:mod:`facelib.models.ganimation`) with the decoder split in two:

- a **flow decoder** F gives an appearance flow Phi and the attention mask A (Eq. 2); the source
  sampled along Phi is the *aligned* image X_a = f(Phi, X_s) (Eq. 3, :func:`facelib.warp.warp`,
  facelib.conventions' backward flow in pixels);
- a **texture decoder** T, with skip connections from the encoder (Sec. 2.1), gives the texture
  image B (Eq. 4): shading, creases and what the source hides (the mouth's interior);
- the output blends them, X_t = (1 - A) B + A X_a (Eq. 5): A weights the aligned *source*, the
  same side as GANimation's A (which weights the unwarped source), so
  :func:`facelib.models.ganimation.compose` computes both.

The encoder is GANimation's (7x7 stem with the 17 AUs tiled, two stride-2 convs, residual
blocks) and the critic is GANimation's PatchGAN with its AU head (Sec. 2.2). Two switches of
:class:`DFTNetConfig` give the ablations of notebook 04: ``flow=False`` (X_a = X_s: GANimation
with a skip-connected texture decoder) and ``texture=False`` (A = 1: a pure warp).

Paper: Wang, Zhang, Lu, Shan, "DFT-Net: Disentanglement of Face Deformation and Texture Synthesis
for Expression Editing", IEEE ICIP 2019, pp. 3881-3885 (docs/reference_notes.md).

Where the paper is computed (file: function):

==================================  =========================================================
Eq. 1 (encoder c = E(X_s, y_t))     facelib/models/dftnet.py: DFTNetGenerator.encode
Eq. 2 (flow decoder Phi, A = F(c))  facelib/models/dftnet.py: DFTNetGenerator.forward
Eq. 3 (aligned image X_a)           facelib/models/dftnet.py: DFTNetGenerator.forward
Eq. 4 (texture decoder B = T(c))    facelib/models/dftnet.py: DFTNetGenerator.forward
Eq. 5 (final image)                 facelib/models/ganimation.py: compose
Eq. 6 (adversarial, WGAN-GP)        facelib/train/gan.py: GANTask.adversarial_terms,
                                    generator_adversarial_loss (facelib/losses.py: wgan_*)
Eq. 7 (AU regression)               facelib/losses.py: au_regression_loss (GANimation's code's scale)
Eq. 8 (cycle)                       facelib/losses.py: cycle_loss
Eq. 6-8 (where they are summed)     facelib/train/ganimation.py: GANimationTask.generator_losses
Eq. 9 (flow TV)                     facelib/losses.py: dftnet_flow_tv
Eq. 10 (attention)                  facelib/losses.py: dftnet_attention
Sec. 2.2 (critic)                   facelib/models/ganimation.py: GANimationCritic
Sec. 3.1 (optimisation)             facelib/train/dftnet.py: DFTNetTask, train_recipe
==================================  =========================================================

The paper gives its layers only as a picture (Fig. 2): the decoders' depth mirrors
the encoder (two stride-2 transposed convs, 7x7 heads, as GANimation's), which is facelib's
reading, not a published number.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from facelib.conventions import check_images
from facelib.editors import EditResult, Target
from facelib.models.blocks import ResidualBlock, conv_norm_act, down_block, tile_condition, up_block
# PRESET: DFT-Net is trained and measured on GANimation's data (EmotioNet's 200,000 faces, Sec. 3.1).
from facelib.models.ganimation import (
    PRESET, GANimationConfig, GANimationCritic, GANimationEditor, check_generator_inputs, compose,
)
from facelib.warp import upsample_flow, warp, warp_kernel

__all__ = ["DFTNetConfig", "DFTNetGenerator", "DFTNetCritic", "DFTNetOutput", "DFTNetEditor", "load_dftnet_editor",
           "PRESET"]


@dataclass
class DFTNetConfig(GANimationConfig):
    """GANimation's widths (:class:`facelib.models.ganimation.GANimationConfig`) plus DFT-Net's switches.

    flow: the flow decoder's appearance flow (``False``: the no-flow ablation, X_a = X_s).
    texture: the texture decoder (``False``: the no-texture ablation, A = 1 and X_t = X_a).
    max_flow: the largest displacement, as a fraction of the image side (tanh-bounded, as the
        appearance flow of Zhou et al. 2016 that Sec. 2.1 cites); 0.125 is 8 px at 64x64.
    ``DFTNetConfig.paper()`` is the published 128x128 size (GANimation's network, Sec. 3.1).
    """

    flow: bool = True
    texture: bool = True
    max_flow: float = 0.125

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.flow, bool) or not isinstance(self.texture, bool):
            raise ValueError(f"DFTNetConfig: flow and texture must be True or False, got {self.flow!r}, {self.texture!r}")
        if not (self.flow or self.texture):
            raise ValueError("DFTNetConfig: flow=False and texture=False leaves nothing to edit with; "
                             "switch at most one decoder off")
        if not isinstance(self.max_flow, (int, float)) or not 0 < self.max_flow <= 1:
            raise ValueError(f"DFTNetConfig.max_flow must be in (0, 1] (a fraction of the image side), "
                             f"got {self.max_flow!r}")


@dataclass
class DFTNetOutput:
    """One pass of G: every map of Eq. 2-5, ``[B, C, H, W]``.

    output X_t in [-1, 1]; flow Phi in pixels (backward: X_a[y, x] = X_s[y + dy, x + dx]); aligned X_a;
    texture B in [-1, 1]; attention A in [0, 1] (A = 1 keeps the aligned source).
    """

    output: torch.Tensor
    flow: torch.Tensor
    aligned: torch.Tensor
    texture: torch.Tensor
    attention: torch.Tensor


class DFTNetGenerator(nn.Module):
    """G(X_s, y_t): GANimation's encoder, a flow decoder F and a skip-connected texture decoder T.

    ``forward(images, aus01)`` takes images ``[B, 3, H, W]`` in ``[-1, 1]`` and AUs ``[B, 17]`` in
    ``[0, 1]`` and returns a :class:`DFTNetOutput`.
    """

    config_class = DFTNetConfig

    def __init__(self, config: DFTNetConfig | None = None):
        super().__init__()
        self.config = config if config is not None else DFTNetConfig()
        track = {"track_running_stats": False}  # GANimation's instance norm: each image's own statistics
        width, aus = self.config.base_channels, self.config.num_aus
        self.stem = conv_norm_act(3 + aus, width, 7, norm="instance", **track)
        self.down = nn.ModuleList([down_block(width, 2 * width, **track), down_block(2 * width, 4 * width, **track)])
        self.bottleneck = nn.Sequential(*[ResidualBlock(4 * width, **track)
                                          for _ in range(self.config.residual_blocks)])
        # F: Phi (2 channels, if the flow is on) and A (1 channel) from one 7x7 head.
        self.flow_decoder = nn.Sequential(up_block(4 * width, 2 * width, **track), up_block(2 * width, width, **track))
        self.flow_head = nn.Conv2d(width, (2 if self.config.flow else 0) + 1, 7, padding=3, bias=False)
        if self.config.flow:
            # Start from the identity warp (Phi = 0), so early training sees the source itself.
            nn.init.zeros_(self.flow_head.weight[:2])
        if self.config.texture:
            # T: each up conv meets the encoder's map of its size (Sec. 2.1's skip connections).
            self.texture_up = nn.ModuleList([up_block(4 * width, 2 * width, **track),
                                             up_block(4 * width, width, **track)])
            self.texture_head = nn.Conv2d(2 * width, 3, 7, padding=3, bias=False)

    def encode(self, images: torch.Tensor, aus01: torch.Tensor) -> list[torch.Tensor]:
        """Eq. 1, c = E(X_s, y_t): the encoder's maps, finest first (the last is c)."""
        check_generator_inputs(self, images, aus01)
        maps = [self.stem(tile_condition(images, aus01))]  # [B, w, H, W]
        for layer in self.down:
            maps.append(layer(maps[-1]))  # [B, 2w, H/2, W/2], [B, 4w, H/4, W/4]
        maps[-1] = self.bottleneck(maps[-1])
        return maps

    def forward(self, images: torch.Tensor, aus01: torch.Tensor) -> DFTNetOutput:
        maps = self.encode(images, aus01)
        # Eq. 2: Phi, A = F(c)
        heads = self.flow_head(self.flow_decoder(maps[-1]))
        attention = torch.sigmoid(heads[:, -1:])  # [B, 1, H, W]
        if self.config.flow:
            flow = torch.tanh(heads[:, :2]) * (self.config.max_flow * self.config.image_size)  # pixels
            # Eq. 3: X_a = f(Phi, X_s), bilinear sampling along the backward flow
            aligned = warp_kernel(images, flow)  # warp without value checks (forward checks shapes only)
        else:
            flow, aligned = torch.zeros_like(images[:, :2]), images
        if self.config.texture:
            x = maps[-1]
            for up, skip in zip(self.texture_up, maps[-2::-1]):
                x = torch.cat([up(x), skip], dim=1)
            # Eq. 4: B = T(c)
            texture = torch.tanh(self.texture_head(x))  # [B, 3, H, W]
        else:
            texture, attention = torch.zeros_like(images), torch.ones_like(attention)  # A = 1: X_t = X_a
        # Eq. 5: X_t = (1 - A) * B + A * X_a
        output = compose(aligned, texture, attention)
        return DFTNetOutput(output=output, flow=flow, aligned=aligned, texture=texture, attention=attention)


class DFTNetCritic(GANimationCritic):
    """D = (D_A, D_C): GANimation's PatchGAN (Sec. 2.2) with the AU regression head, on a :class:`DFTNetConfig`."""

    config_class = DFTNetConfig

    def __init__(self, config: DFTNetConfig | None = None):
        super().__init__(config if config is not None else DFTNetConfig())


class DFTNetEditor(GANimationEditor):
    """DFT-Net behind :class:`facelib.editors.Editor`: ``aus`` or ``expression`` targets, as GANimation's.

    The targets are GANimation's (absolute AUs on the 0-5 scale; an expression is its mean ``rafd``
    AUs times the intensity). The result carries ``flow`` (Phi), ``aligned`` (X_a), ``texture`` (B)
    and ``attention`` (A, 1 = the aligned source).
    """

    name = "dftnet"
    paper = "DFT-Net (Wang et al. 2019), Eq. 5"
    generator_class = DFTNetGenerator

    def _edit(self, images: torch.Tensor, target: Target) -> EditResult:
        parts = self.generator(images, self.target_aus01(target, images))
        return EditResult(output=parts.output.clamp(-1, 1), flow=parts.flow, aligned=parts.aligned,
                          texture=parts.texture, attention=parts.attention)

    def edit_highres(self, images: torch.Tensor, target: Target) -> EditResult:
        """Edit a face larger than ``image_size``: Eq. 5 at the large size.

        The generator runs on the shrunk face; the flow is upsampled (vectors rescaled) and the large
        face itself is warped (its detail kept, FVAE Sec. 4.3), while the texture and the mask are
        enlarged (bilinear) and blended with it. The extras stay at ``image_size``.
        """
        images = check_images(images, "images")
        result = self.edit(check_images(images, "images", size=self.image_size, resize=True), target)
        size = tuple(images.shape[-2:])
        aligned = warp(images, upsample_flow(result.flow, size))
        texture, attention = (F.interpolate(x, size=size, mode="bilinear", align_corners=False)
                              for x in (result.texture, result.attention))
        output = compose(aligned, texture, attention).clamp(-1, 1)  # Eq. 5 at the photo's size
        return EditResult(output=output, flow=result.flow, aligned=result.aligned, texture=result.texture,
                          attention=result.attention)


def load_dftnet_editor(device="cpu") -> DFTNetEditor:
    """``facelib.load_editor("dftnet")``: the shipped generator (``python -m facelib train dftnet --ship``)."""
    from facelib.pretrained import load_pretrained

    return DFTNetEditor(load_pretrained("dftnet", device=device))
