"""Layers that two or more of the five papers share, written once.

Each block's docstring names the papers (or facelib networks) that use it. Shapes are
``[B, C, H, W]`` for maps and ``[B, D]`` for vectors.

=================================  ==================================================
block                              used by
=================================  ==================================================
:func:`conv_norm_act`              every convolutional network here (FVAE, the
                                   evaluators, StarGAN-style generators)
:class:`ResidualBlock`             StarGAN's generator (LEED's neutraliser), GANimation's
                                   (DFT-Net's base)
:func:`down_block`, :func:`up_block`  StarGAN's and GANimation's generators
:class:`PatchCritic`               StarGAN's and GANimation's discriminators (DFT-Net's
                                   D_A / D_C; LEED's and EGGAN's image critics)
:class:`LatentCritic`              LEED's latent critic, ExprGAN's D_z, EGGAN's D_z
:func:`tile_condition`             StarGAN (domain labels), GANimation / DFT-Net (AUs),
                                   ExprGAN (expression code at every decoder layer)
:class:`ConvEncoder`,              FVAE's f(T) and g(S, Z) (Sec. 5.3), the pixel VAE and the
:class:`SkipDecoder`               confidence network
:class:`ResidualStage`,            the evaluators (expression classifier, AU regressor,
:class:`ConvTrunk`                 identity embedder)
=================================  ==================================================

Settings the papers leave out come from the public code of StarGAN and GANimation (see the
comments and docs/reference_notes.md); no code is copied.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "conv_norm_act", "ResidualBlock", "down_block", "up_block", "PatchCritic", "LatentCritic",
    "tile_condition", "init_truncated_normal", "ConvEncoder", "SkipDecoder", "ResidualStage", "ConvTrunk",
]

NORMS = ("batch", "instance", None)
ACTIVATIONS = ("relu", "leaky_relu", None)


def _choice(value, accepted: tuple, what: str):
    if value not in accepted:
        raise ValueError(f"{what} must be one of {list(accepted)}, got {value!r}")
    return value


# --------------------------------------------------------------------------- conv + norm + activation


def conv_norm_act(in_channels: int, out_channels: int, kernel: int, stride: int = 1, *,
                  norm: str | None = "batch", activation: str | None = "relu", padding: int | None = None,
                  transposed: bool = False, negative_slope: float = 0.01,
                  track_running_stats: bool = True) -> nn.Sequential:
    """A convolution, then a normalisation, then an activation: ``[B, C_in, H, W] -> [B, C_out, H', W']``.

    Used by every convolutional network here: FVAE (batch norm + ReLU, Sec. 5.3), the evaluators'
    trunk (batch norm), StarGAN's and GANimation's generators (instance norm + ReLU).

    ``norm``: ``"batch"``, ``"instance"`` (affine, as StarGAN's and GANimation's code) or ``None``.
    ``activation``: ``"relu"``, ``"leaky_relu"`` (``negative_slope``; StarGAN's 0.01) or ``None``.
    ``padding`` defaults to ``kernel // 2`` (3x3 and 5x5 keep the size at stride 1; 4x4 stride 2
    with padding 1 halves it). ``transposed``: a transposed convolution (4x4, stride 2, padding 1
    doubles the size). The convolution has a bias only without a norm (a norm's shift replaces it).
    ``track_running_stats`` applies to instance norm: StarGAN's code tracks running statistics
    (used in eval mode), GANimation's does not.

    The layers are ``Sequential`` indices 0 (conv), 1 (norm, if any), then the activation, so
    checkpoints written with that layout load unchanged.
    """
    _choice(norm, NORMS, "norm")
    _choice(activation, ACTIVATIONS, "activation")
    padding = kernel // 2 if padding is None else padding
    conv_class = nn.ConvTranspose2d if transposed else nn.Conv2d
    layers: list[nn.Module] = [conv_class(in_channels, out_channels, kernel, stride=stride, padding=padding,
                                          bias=norm is None)]
    if norm == "batch":
        layers.append(nn.BatchNorm2d(out_channels))
    elif norm == "instance":
        layers.append(nn.InstanceNorm2d(out_channels, affine=True, track_running_stats=track_running_stats))
    if activation == "relu":
        layers.append(nn.ReLU(inplace=True))
    elif activation == "leaky_relu":
        layers.append(nn.LeakyReLU(negative_slope, inplace=True))
    return nn.Sequential(*layers)


# --------------------------------------------------------------------------- StarGAN / GANimation generator parts


class ResidualBlock(nn.Module):
    """``x + IN(conv3x3(ReLU(IN(conv3x3(x)))))``: the residual block of StarGAN's and GANimation's generators.

    Used by LEED (its StarGAN neutraliser) and DFT-Net (GANimation's generator, 6 blocks).
    Shape-preserving: ``[B, C, H, W] -> [B, C, H, W]``. Instance norm is affine with running
    statistics tracked, as StarGAN's public code (``track_running_stats=False`` for GANimation's).
    No activation after the sum, as in both codes.
    """

    def __init__(self, channels: int, track_running_stats: bool = True):
        super().__init__()
        self.body = nn.Sequential(
            conv_norm_act(channels, channels, 3, norm="instance", track_running_stats=track_running_stats),
            conv_norm_act(channels, channels, 3, norm="instance", activation=None,
                          track_running_stats=track_running_stats),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)  # [B, C, H, W]


def down_block(in_channels: int, out_channels: int, track_running_stats: bool = True) -> nn.Sequential:
    """4x4 stride-2 conv + instance norm + ReLU, ``[B, C_in, H, W] -> [B, C_out, H/2, W/2]``.

    The down-sampling layers of StarGAN's and GANimation's generators (LEED, DFT-Net).
    """
    return conv_norm_act(in_channels, out_channels, 4, 2, norm="instance", padding=1,
                         track_running_stats=track_running_stats)


def up_block(in_channels: int, out_channels: int, track_running_stats: bool = True,
             mode: str = "transposed") -> nn.Sequential:
    """Up-sampling by 2 + instance norm + ReLU, ``[B, C_in, H, W] -> [B, C_out, 2H, 2W]``.

    The up-sampling layers of StarGAN's and GANimation's generators (LEED, DFT-Net). ``mode``:
    ``"transposed"``, the published 4x4 stride-2 transposed convolution; ``"resize"``, nearest
    up-sampling then a 3x3 convolution, which cannot paint the checkerboard a transposed
    convolution's uneven overlap paints (Odena et al. 2016, "Deconvolution and Checkerboard
    Artifacts"; the CPU recipes, whose early edits showed it).
    """
    if mode == "transposed":
        return conv_norm_act(in_channels, out_channels, 4, 2, norm="instance", padding=1, transposed=True,
                             track_running_stats=track_running_stats)
    if mode == "resize":
        return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                             *conv_norm_act(in_channels, out_channels, 3, norm="instance",
                                            track_running_stats=track_running_stats))
    raise ValueError(f"up_block: mode must be 'transposed' or 'resize', got {mode!r}")


def tile_condition(images: Tensor, condition: Tensor) -> Tensor:
    """Append a condition vector to every pixel: ``[B, C, H, W]`` and ``[B, K]`` -> ``[B, C + K, H, W]``.

    StarGAN's depth-wise concatenation of the target domain label (LEED's neutraliser), GANimation's
    and DFT-Net's target AUs, ExprGAN's expression code at every decoder layer. Channel ``C + k``
    is the constant map ``condition[:, k]``.
    """
    if not isinstance(images, Tensor) or images.dim() != 4:
        raise ValueError(f"images must be a tensor [B, C, H, W], got "
                         f"{list(images.shape) if isinstance(images, Tensor) else type(images).__name__}")
    if not isinstance(condition, Tensor) or condition.dim() != 2 or condition.shape[0] != images.shape[0]:
        raise ValueError(f"condition must be a tensor [B, K] with B = {images.shape[0]} (one vector per image), got "
                         f"{list(condition.shape) if isinstance(condition, Tensor) else type(condition).__name__}")
    batch, _, height, width = images.shape
    tiled = condition.to(images.dtype)[:, :, None, None].expand(batch, condition.shape[1], height, width)
    return torch.cat([images, tiled], dim=1)  # [B, C + K, H, W]


# --------------------------------------------------------------------------- critics


class PatchCritic(nn.Module):
    """PatchGAN critic with an auxiliary head: StarGAN's and GANimation's discriminator.

    Used by DFT-Net (D_A real/fake and D_C AU regression), LEED and StarGAN baselines (domain
    classification), and any WGAN-GP image critic here. ``num_layers`` 4x4 stride-2 convs with
    LeakyReLU(0.01) and no normalisation (both public codes: 6 layers at 128 px), channels
    doubling from ``base_channels`` up to ``max_channels``. Two heads read the last map
    ``[B, C, S, S]`` with ``S = image_size / 2**num_layers``:

    - ``patch``: 3x3 conv to one score per patch, ``[B, 1, S, S]`` (real/fake or WGAN scores);
    - ``aux``: a conv whose S x S kernel covers the whole map, ``[B, n_aux]``: class logits
      (StarGAN's domains, LEED's expressions) or AU regressions (GANimation, DFT-Net's D_C).

    ``forward`` returns ``(patch_scores, aux)``.
    """

    def __init__(self, image_size: int = 128, n_aux: int = 17, *, base_channels: int = 64, num_layers: int = 6,
                 max_channels: int = 2048, in_channels: int = 3):
        super().__init__()
        if num_layers < 1 or image_size % 2**num_layers:
            raise ValueError(f"image_size must be divisible by 2**num_layers; got image_size={image_size}, "
                             f"num_layers={num_layers} (StarGAN: 128 px with 6 layers, a 2x2 final map)")
        if n_aux < 1:
            raise ValueError(f"n_aux (classes or AUs of the auxiliary head) must be >= 1, got {n_aux}")
        layers, channels = [], in_channels
        for i in range(num_layers):
            out = min(base_channels * 2**i, max_channels)
            layers.append(conv_norm_act(channels, out, 4, 2, norm=None, activation="leaky_relu", padding=1))
            channels = out
        self.trunk = nn.Sequential(*layers)
        self.final_size = image_size // 2**num_layers
        # Both public codes leave the two heads without a bias.
        self.patch = nn.Conv2d(channels, 1, 3, padding=1, bias=False)
        self.aux = nn.Conv2d(channels, n_aux, self.final_size, bias=False)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        h = self.trunk(images)  # [B, C, S, S]
        if h.shape[-1] != self.final_size or h.shape[-2] != self.final_size:
            raise ValueError(f"PatchCritic was built for {self.final_size * 2**len(self.trunk)} px images, "
                             f"got {list(images.shape)}")
        return self.patch(h), self.aux(h).flatten(1)  # [B, 1, S, S], [B, n_aux]


class LatentCritic(nn.Module):
    """An MLP from a latent code to one score: ``[B, D] -> [B]``.

    LEED's latent critic (WGAN-GP: keep ``batch_norm=False``, a per-sample gradient penalty and
    batch norm do not mix), ExprGAN's D_z (64-32-16 with batch norm in the public code) and
    EGGAN's D_z (512-128-64-32-16-1). Hidden layers are Linear + LeakyReLU(``negative_slope``).
    """

    def __init__(self, latent_dim: int, hidden: Sequence[int] = (128, 64, 32, 16), *, negative_slope: float = 0.2,
                 batch_norm: bool = False):
        super().__init__()
        layers: list[nn.Module] = []
        width = latent_dim
        for out in hidden:
            layers.append(nn.Linear(width, out, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm1d(out))
            layers.append(nn.LeakyReLU(negative_slope, inplace=True))
            width = out
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)
        self.latent_dim = latent_dim

    def forward(self, codes: Tensor) -> Tensor:
        if codes.dim() != 2 or codes.shape[1] != self.latent_dim:
            raise ValueError(f"LatentCritic expects codes [B, {self.latent_dim}], got {list(codes.shape)}")
        return self.net(codes).squeeze(1)  # [B]


# --------------------------------------------------------------------------- FVAE trunks (Sec. 5.3)


def init_truncated_normal(module: nn.Module, std: float = 0.01) -> None:
    """FVAE Sec. 5.3: every conv weight from a Gaussian with ``std`` truncated at 2 std; biases zero."""
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            nn.init.trunc_normal_(layer.weight, std=std, a=-2 * std, b=2 * std)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


class ConvEncoder(nn.Module):
    """Stride-2 conv + batch norm + ReLU stages, one per entry of ``stage_channels`` (DCGAN style).

    FVAE's encoders f(T) and of the source S (Sec. 5.3), shared by the pixel VAE and the
    confidence network. The first layer is ``first_kernel`` (FVAE: 5x5), the others 3x3.
    Returns the feature map of every stage, finest first, ``[B, C_i, H / 2^(i+1), W / 2^(i+1)]``,
    so a :class:`SkipDecoder` can concatenate them.
    """

    def __init__(self, stage_channels: Sequence[int], in_channels: int = 3, first_kernel: int = 5):
        super().__init__()
        layers, channels = [], in_channels
        for i, out_channels in enumerate(stage_channels):
            layers.append(conv_norm_act(channels, out_channels, first_kernel if i == 0 else 3, stride=2))
            channels = out_channels
        self.stages = nn.ModuleList(layers)

    def forward(self, images: Tensor) -> list[Tensor]:
        features, x = [], images
        for stage in self.stages:
            x = stage(x)
            features.append(x)  # [B, C_i, H / 2^(i+1), W / 2^(i+1)]
        return features


class SkipDecoder(nn.Module):
    """From a latent block up to full resolution, concatenating source features at every scale.

    FVAE's g(S, Z) (Fig. 3's blue arrows), also the pixel VAE's and the confidence network's.
    ``stage_channels``: the :class:`ConvEncoder`'s channels, finest first; ``latent_channels``:
    channels of Z, at the coarsest stage's size. Each step is nearest upsampling + 3x3 conv + batch
    norm + ReLU; the last layer is a 5x5 convolution to ``out_channels`` after meeting the
    ``image_channels`` of the source image, without norm or activation (Sec. 5.3): the caller
    applies its own output nonlinearity.
    """

    def __init__(self, stage_channels: Sequence[int], latent_channels: int, out_channels: int,
                 image_channels: int = 3):
        super().__init__()
        enc = list(stage_channels)  # source feature channels, finest first
        self.bottom = conv_norm_act(latent_channels + enc[-1], enc[-1], 3, stride=1)
        ups, in_channels = [], enc[-1]
        # Upsample from the latent size to image_size / 2, concatenating source features on the way.
        for skip_channels in enc[-2::-1]:
            ups.append(conv_norm_act(in_channels + skip_channels, skip_channels, 3, stride=1))
            in_channels = skip_channels
        self.ups = nn.ModuleList(ups)
        # The final upsample to full size meets the source image itself.
        self.head = nn.Conv2d(in_channels + image_channels, out_channels, 5, padding=2)

    def forward(self, source: Tensor, source_features: list[Tensor], z: Tensor) -> Tensor:
        x = self.bottom(torch.cat([z, source_features[-1]], dim=1))  # [B, C, 4, 4]
        for up, skip in zip(self.ups, source_features[-2::-1]):
            x = F.interpolate(x, scale_factor=2, mode="nearest")
            x = up(torch.cat([x, skip], dim=1))
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.head(torch.cat([x, source], dim=1))  # [B, out_channels, H, W]


# --------------------------------------------------------------------------- evaluator trunk


class ResidualStage(nn.Module):
    """Halve the resolution with a stride-2 conv, then one residual 3x3 conv (batch norm).

    The stages of the evaluators' :class:`ConvTrunk`: ``[B, C_in, H, W] -> [B, C_out, H/2, W/2]``.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.down = conv_norm_act(in_channels, out_channels, 3, stride=2)
        self.conv = conv_norm_act(out_channels, out_channels, 3, activation=None)

    def forward(self, x: Tensor) -> Tensor:
        x = self.down(x)  # [B, C_out, H/2, W/2]
        return F.relu(x + self.conv(x))


class ConvTrunk(nn.Module):
    """Stem at full resolution plus one :class:`ResidualStage` per entry of ``channels[1:]``.

    The trunk of facelib's evaluators (expression classifier, AU regressor, identity embedder).
    """

    def __init__(self, channels: Sequence[int], in_channels: int = 3):
        super().__init__()
        self.stem = conv_norm_act(in_channels, channels[0], 3)
        self.stages = nn.ModuleList(
            ResidualStage(c_in, c_out) for c_in, c_out in zip(channels[:-1], channels[1:])
        )

    def feature_maps(self, x: Tensor) -> list[Tensor]:
        """Feature maps after the stem and after every stage: ``[B, C_i, H / 2**i, W / 2**i]``."""
        maps = [self.stem(x)]
        for stage in self.stages:
            maps.append(stage(maps[-1]))
        return maps

    def forward(self, x: Tensor) -> Tensor:
        return self.feature_maps(x)[-1]  # [B, C_last, H / 2**stages, W / 2**stages]
