"""EGGAN: Expression-Guided GAN for fine-grained expression manipulation (Tang et al. 2020).

An adversarial autoencoder (AAE) maps the source face I_i to a structured latent code
l_i = E(I_i), which a latent discriminator D_z pushes towards N(0, I) (Eq. 1); a conditional
generator G(l_i | u_t) paints the face with the target's 17 continuous AU intensities u_t; an image
critic D_img keeps it realistic (Eq. 2), an AU-intensity classifier C_exp (17 AUs x (m + 1) levels,
Eq. 3) checks the expression and a frozen identity classifier C_id (Eq. 4) the person; a perceptual
loss (Eq. 5) and L1 + (1 - MS-SSIM) on the self-reconstruction (Eq. 6) keep the rest. Editing between
the source's AUs u_i and the target's is the straight line of Eq. 8, with alpha = ``intensity``.

- :class:`EGGANConfig` - ``EGGANConfig()`` the 64x64 CPU widths of the paper's networks,
  ``.cpu()`` the shipped recipe's networks (two named departures), ``.paper()`` the published 128x128.
- :class:`EGGAN` - the generator player: the encoder E and the generator G.
- :class:`EGGANCritics` - the other player: D_img, D_z and C_exp.
- :class:`EGGANClassifier` - the architecture C_exp and C_id share (Sec. 3.3: "the same architecture").
- :class:`EGGANEditor` - the model behind :class:`facelib.editors.Editor`.

Paper: Tang, Shao, Ma, "Fine-Grained Expression Manipulation via Structured Latent Space", IEEE ICME 2020,
arXiv:2004.09769 (docs/reference_notes.md). Settings the paper leaves out follow its public code (junshutang/EGGAN).

Where the paper is computed (file: function):

==================================  =========================================================
Eq. 1 (latent adversarial, D_z)     facelib/losses.py: eggan_latent_discriminator, eggan_latent_encoder
Eq. 2 (image adversarial, D_img)    facelib/losses.py: eggan_image_critic, eggan_image_generator
                                    (the CPU recipe: facelib/train/gan.py's non-saturating objective)
Eq. 3 (AU intensity levels, C_exp)  facelib/losses.py: eggan_au_levels, eggan_au_intensity
Eq. 4 (identity, frozen C_id)       facelib/losses.py: eggan_identity
Eq. 5 (perceptual)                  facelib/losses.py: eggan_perceptual on PerceptualFeatures
Eq. 6 (L1 + (1 - MS-SSIM))          facelib/losses.py: eggan_reconstruction (facelib.metrics' MS-SSIM)
Eq. 7 (full objective)              facelib/train/eggan.py: EGGANTask.generator_losses, critic_losses
Eq. 8 (interpolation, alpha)        facelib/models/eggan.py: EGGANEditor.target_aus
Sec. 4.1 (networks)                 facelib/models/eggan.py: EGGAN, EGGANCritics, EGGANClassifier
==================================  =========================================================
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from facelib.conventions import AU_MAX, NUM_AUS, check_image_shape
from facelib.editors import Editor, EditResult, Target
from facelib.models.blocks import LatentCritic, tile_condition

__all__ = ["EGGANConfig", "EGGAN", "EGGANCritics", "EGGANClassifier", "UpResidualBlock", "EGGANEditor",
           "load_eggan_editor", "PRESET"]

#: The SynthFaces preset EGGAN trains and is measured on (RaFD, Sec. 4.1).
PRESET = "rafd"


@dataclass
class EGGANConfig:
    """The EGGAN networks (Sec. 4.1; the public code where the paper is silent).

    image_size: square side. encoder_channels: E's stride-2 convolutions (the paper: five, 16-256),
        each 4x4 + instance norm + PReLU (public code), then one FC to ``latent_dim``.
    latent_dim: the code l (public code: 512). generator_channels: G's map at the size E ends
        (``image_size / 2**len(encoder_channels)``), then after each up-sampling residual block
        (the paper: 6 blocks at 128 px; here one block per doubling back to ``image_size``).
    latent_critic_hidden: D_z's FC widths before its output (the paper: 256-128-64-32-16-1).
    critic_channels: D_img's stride-2 convolutions (the paper: six at 128 px).
    classifier_channels: C_exp's and C_id's stride-2 convolutions (one architecture, Sec. 3.3).
    num_aus, levels: 17 AUs, m = 5 (Eq. 3: m + 1 = 6 classes per AU).
    skips: G's blocks also see E's maps of the source at their size (a departure: the CPU recipe).
    output: ``"image"`` (the paper: G paints the face) or ``"residual"`` (the source plus a change
        whose head starts at zero, so G starts as the identity mapping: the CPU recipe).
    tile_aus: the AUs enter every block of G as constant maps, not only with the code.
    film: the AUs scale and shift every instance norm of G (the CPU recipe: FiLM, conditional instance norm).
    """

    image_size: int = 64
    encoder_channels: tuple[int, ...] = (16, 32, 64, 128, 256)
    latent_dim: int = 128
    generator_channels: tuple[int, ...] = (256, 128, 64, 32, 32, 16)
    latent_critic_hidden: tuple[int, ...] = (256, 128, 64, 32, 16)
    critic_channels: tuple[int, ...] = (16, 32, 64, 128, 256)
    classifier_channels: tuple[int, ...] = (16, 32, 64, 128)
    num_aus: int = NUM_AUS
    levels: int = 5
    skips: bool = False
    output: str = "image"
    tile_aus: bool = False
    film: bool = False

    def __post_init__(self) -> None:
        self.encoder_channels, self.generator_channels = tuple(self.encoder_channels), tuple(self.generator_channels)
        self.latent_critic_hidden, self.critic_channels = tuple(self.latent_critic_hidden), tuple(self.critic_channels)
        self.classifier_channels = tuple(self.classifier_channels)
        for name in ("image_size", "latent_dim", "num_aus", "levels"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"EGGANConfig.{name} must be a positive int, got {value!r}")
        for name in ("encoder_channels", "generator_channels", "critic_channels", "classifier_channels"):
            widths = getattr(self, name)
            if not widths or not all(isinstance(w, int) and w > 0 for w in widths):
                raise ValueError(f"EGGANConfig.{name} must be positive ints, got {widths!r}")
        halvings = len(self.encoder_channels)
        if self.image_size % 2**halvings:
            raise ValueError(f"EGGANConfig: image_size {self.image_size} must be divisible by 2**{halvings} "
                             f"(one halving per encoder conv)")
        if len(self.generator_channels) != len(self.encoder_channels) + 1:
            raise ValueError(f"EGGANConfig.generator_channels needs {halvings + 1} entries (the "
                             f"{self.image_size // 2**halvings}x{self.image_size // 2**halvings} map, then one per "
                             f"up-sampling block), got {len(self.generator_channels)}")
        for name in ("critic_channels", "classifier_channels"):
            if self.image_size % 2**len(getattr(self, name)):
                raise ValueError(f"EGGANConfig: image_size {self.image_size} must be divisible by 2**len({name})")
        if self.output not in ("image", "residual"):
            raise ValueError(f"EGGANConfig.output must be 'image' (the paper) or 'residual' (the source plus a "
                             f"change), got {self.output!r}")
        for name in ("skips", "tile_aus", "film"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"EGGANConfig.{name} must be True or False, got {getattr(self, name)!r}")

    @property
    def start_size(self) -> int:
        """The side of E's last map and of G's first: ``image_size / 2**len(encoder_channels)``."""
        return self.image_size // 2**len(self.encoder_channels)

    @classmethod
    def cpu(cls) -> "EGGANConfig":
        """The shipped CPU recipe's networks: the paper's, with each departure on its own line."""
        return cls(skips=True,  # departure: G's blocks see E's maps of the source (E is skip-connected to G)
                   output="residual",  # departure: G paints a change on the source, starting at zero
                   film=True)  # departure: the AUs scale and shift every instance norm of G, not only enter at its input

    @classmethod
    def paper(cls) -> "EGGANConfig":
        """The published 128x128 networks: E 16-256 + FC to 512, G from 4x4 by 5 blocks, D_img 6 convs, D_z 6 FCs."""
        return cls(image_size=128, encoder_channels=(16, 32, 64, 128, 256), latent_dim=512,
                   generator_channels=(512, 256, 128, 64, 32, 16), latent_critic_hidden=(256, 128, 64, 32, 16),
                   critic_channels=(16, 32, 64, 128, 256, 512), classifier_channels=(32, 64, 128, 256, 256))


def _conv_in_prelu(in_channels: int, out_channels: int, kernel: int, stride: int = 1) -> nn.Sequential:
    """Convolution + affine instance norm (each image's own statistics) + PReLU (the public code's E and G)."""
    padding = (kernel - stride + 1) // 2 if stride == 2 else kernel // 2
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel, stride, padding, bias=False),
                         nn.InstanceNorm2d(out_channels, affine=True), nn.PReLU(out_channels))


class UpResidualBlock(nn.Module):
    """G's block (Sec. 4.1): nearest up-sampling x2, then ``PReLU(x + IN(conv(PReLU(IN(conv(x))))))`` with a
    1x1 projection of the shortcut: ``[B, C_in, H, W] -> [B, C_out, 2H, 2W]``.

    ``condition_dim`` > 0 (the CPU recipe): each instance norm is followed by a scale and shift computed from
    the condition (FiLM, Perez et al. 2018; conditional instance norm), starting at the identity (1, 0).
    Instance norm removes a constant map per channel, so AUs tiled as constant maps barely reach past it.
    """

    def __init__(self, in_channels: int, out_channels: int, condition_dim: int = 0):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.norm1, self.act1 = nn.InstanceNorm2d(out_channels, affine=True), nn.PReLU(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.norm2 = nn.InstanceNorm2d(out_channels, affine=True)
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.activation = nn.PReLU(out_channels)
        self.film = nn.Linear(condition_dim, 4 * out_channels) if condition_dim else None
        if self.film is not None:
            nn.init.zeros_(self.film.weight)
            nn.init.zeros_(self.film.bias)

    def forward(self, x: Tensor, condition: Tensor | None = None) -> Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        h1, h2 = self.norm1(self.conv1(x)), None
        if self.film is not None:
            scale1, shift1, scale2, shift2 = self.film(condition)[:, :, None, None].chunk(4, 1)
            h1 = h1 * (1 + scale1) + shift1
        h2 = self.norm2(self.conv2(self.act1(h1)))
        if self.film is not None:
            h2 = h2 * (1 + scale2) + shift2
        return self.activation(self.shortcut(x) + h2)  # [B, C_out, 2H, 2W]


class EGGAN(nn.Module):
    """The generator player: E (Eq. 1's encoder) and G (the cGAN's generator).

    ``encode(images [B, 3, S, S])`` -> ``(l [B, latent_dim], maps)``: E's maps finest first (the skips).
    ``generate(l, aus01 [B, 17] in [0, 1], maps, source)`` -> ``[B, 3, S, S]`` in [-1, 1].
    ``forward(images, aus01)`` = G(E(images) | aus01). AUs enter divided by ``facelib.AU_MAX`` (5).
    """

    config_class = EGGANConfig

    def __init__(self, config: EGGANConfig | None = None):
        super().__init__()
        self.config = config = config if config is not None else EGGANConfig()
        layers, channels = [], 3
        for out in config.encoder_channels:  # Sec. 4.1: five stride-2 convolutions, 16-256 channels
            layers.append(_conv_in_prelu(channels, out, 4, stride=2))
            channels = out
        self.encoder_convs = nn.ModuleList(layers)
        start = config.start_size
        # Sec. 4.1: "followed by 1 fully-connected layer"
        self.encoder_fc = nn.Linear(channels * start * start, config.latent_dim)
        first = config.generator_channels[0]
        # G's input: (l, u) reshaped to the start map (the public code: 4x4 at 128 px)
        self.generator_fc = nn.Linear(config.latent_dim + config.num_aus, first * start * start)
        self.generator_input = nn.Sequential(nn.InstanceNorm2d(first, affine=True), nn.PReLU(first))
        skips = self.skip_channels() if config.skips else [0] * len(config.encoder_channels)
        aus = config.num_aus if config.tile_aus else 0
        self.generator_blocks = nn.ModuleList(
            UpResidualBlock(c_in + aus + skip, c_out, config.num_aus if config.film else 0)
            for c_in, c_out, skip in zip(config.generator_channels[:-1], config.generator_channels[1:], skips))
        last = config.generator_channels[-1] + (3 if config.skips else 0)
        self.generator_head = nn.Conv2d(last, 3, 3, padding=1)
        if config.output == "residual":
            # departure (CPU recipe): the change starts at zero, so G starts as the identity mapping
            nn.init.zeros_(self.generator_head.weight)
            nn.init.zeros_(self.generator_head.bias)

    def skip_channels(self) -> list[int]:
        """Channels of E's map each block of G meets (at its input size): none at the start map, then E's maps."""
        encoder = self.config.encoder_channels
        return [0] + [encoder[len(encoder) - 1 - i] for i in range(1, len(encoder))]

    def encode(self, images: Tensor) -> tuple[Tensor, list[Tensor]]:
        check_image_shape(images, "images", size=self.config.image_size)
        maps, x = [], images
        for conv in self.encoder_convs:
            x = conv(x)
            maps.append(x)  # [B, C_i, S / 2^(i+1), S / 2^(i+1)]
        return self.encoder_fc(x.flatten(1)), maps  # l: [B, latent_dim]

    def generate(self, code: Tensor, aus01: Tensor, maps: list[Tensor] | None = None,
                 source: Tensor | None = None) -> Tensor:
        config = self.config
        if code.dim() != 2 or code.shape[1] != config.latent_dim:
            raise ValueError(f"EGGAN: codes must be [B, {config.latent_dim}], got {list(code.shape)}")
        if aus01.shape != (len(code), config.num_aus):
            raise ValueError(f"EGGAN: AUs must be [B={len(code)}, {config.num_aus}] in [0, 1] (intensities / 5), "
                             f"got {list(aus01.shape)}")
        needs_source = config.skips or config.output == "residual"
        if needs_source and (source is None or source.shape != (len(code), 3, config.image_size, config.image_size)):
            raise ValueError(f"this EGGAN (skips={config.skips}, output={config.output!r}) reads the source faces: "
                             f"pass source [B={len(code)}, 3, {config.image_size}, {config.image_size}], got "
                             f"{None if source is None else list(source.shape)}")
        if config.skips and maps is None:
            raise ValueError("a skip-connected EGGAN needs E's maps of the source: use forward(images, aus01) or "
                             "pass the maps encode() returns")
        start = config.start_size
        x = self.generator_fc(torch.cat([code, aus01], 1)).view(len(code), -1, start, start)
        x = self.generator_input(x)  # [B, C0, s, s]
        skips = ([None] + maps[-2::-1]) if config.skips else [None] * len(self.generator_blocks)
        for block, skip in zip(self.generator_blocks, skips):
            if config.tile_aus:
                x = tile_condition(x, aus01)
            if skip is not None:
                x = torch.cat([x, skip], 1)
            x = block(x, aus01)  # [B, C_out, 2s, 2s]
        if config.skips:
            x = torch.cat([x, source], 1)
        painted = torch.tanh(self.generator_head(x))  # [B, 3, S, S]
        if config.output == "image":
            return painted
        # departure (CPU recipe): the source plus a change, so what the AUs do not move stays
        return (source + painted).clamp(-1, 1)

    def forward(self, images: Tensor, aus01: Tensor) -> Tensor:
        code, maps = self.encode(images)
        return self.generate(code, aus01, maps, images)


def _stride2_trunk(channels: tuple[int, ...]) -> nn.Sequential:
    """4x4 stride-2 convolutions with LeakyReLU(0.2) and no norm (a critic's trunk; a gradient penalty and
    batch statistics do not mix)."""
    layers, c_in = [], 3
    for c_out in channels:
        layers += [nn.Conv2d(c_in, c_out, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True)]
        c_in = c_out
    return nn.Sequential(*layers)


class EGGANClassifier(nn.Module):
    """C_exp and C_id (Sec. 3.3: one architecture, VGG-inspired; here stride-2 convs and one FC).

    ``outputs``: ``num_aus * (levels + 1)`` for C_exp (``forward`` then returns ``[B, 17, m + 1]`` logits),
    or the number of training identities for C_id (``[B, n]``).
    """

    config_class = EGGANConfig

    def __init__(self, config: EGGANConfig | None = None, outputs: int | None = None):
        super().__init__()
        self.config = config = config if config is not None else EGGANConfig()
        self.outputs = config.num_aus * (config.levels + 1) if outputs is None else int(outputs)
        self.trunk = _stride2_trunk(config.classifier_channels)
        side = config.image_size // 2**len(config.classifier_channels)
        self.head = nn.Linear(config.classifier_channels[-1] * side * side, self.outputs)

    def forward(self, images: Tensor) -> Tensor:
        check_image_shape(images, "images", size=self.config.image_size)
        logits = self.head(self.trunk(images).flatten(1))
        if self.outputs == self.config.num_aus * (self.config.levels + 1):
            return logits.view(len(images), self.config.num_aus, self.config.levels + 1)  # [B, 17, m + 1]
        return logits  # [B, n]


class EGGANCritics(nn.Module):
    """The other player: D_img (Eq. 2, ``forward``), D_z (Eq. 1, ``latent``) and C_exp (Eq. 3, ``expression``)."""

    config_class = EGGANConfig

    def __init__(self, config: EGGANConfig | None = None):
        super().__init__()
        self.config = config = config if config is not None else EGGANConfig()
        # D_img, Sec. 4.1: stride-2 convolutions (six at 128 px), then one score per image
        self.image_trunk = _stride2_trunk(config.critic_channels)
        side = config.image_size // 2**len(config.critic_channels)
        self.image_score = nn.Linear(config.critic_channels[-1] * side * side, 1)
        # D_z, Sec. 4.1: 6 FC layers, 256-128-64-32-16-1
        self.latent_critic = LatentCritic(config.latent_dim, config.latent_critic_hidden)
        self.classifier = EGGANClassifier(config)  # C_exp

    def forward(self, images: Tensor) -> Tensor:
        check_image_shape(images, "images", size=self.config.image_size)
        return self.image_score(self.image_trunk(images).flatten(1)).squeeze(1)  # [B]

    def latent(self, codes: Tensor) -> Tensor:
        return self.latent_critic(codes)  # [B]

    def expression(self, images: Tensor) -> Tensor:
        return self.classifier(images)  # [B, 17, m + 1]


@lru_cache(maxsize=1)
def _expression_aus() -> dict[str, Tensor]:
    from facelib.data import expression_aus

    return expression_aus(PRESET, "train")


class EGGANEditor(Editor):
    """EGGAN behind :class:`facelib.editors.Editor`: ``aus``, ``expression`` or ``reference`` targets.

    The target AUs u_t are the ``aus`` given, the expression's mean AUs over rafd's training faces
    (:func:`facelib.data.expression_aus`, the expression-to-AUs function), or the reference's AUs as the
    AU regressor reads them (the paper reads them with OpenFace). Eq. 8 then edits along the line from
    the source's own AUs u_i (read by the same regressor) with alpha = ``intensity``: alpha = 1 asks for
    u_t, alpha = 0 for u_i (the source reconstructed). ``latent`` holds the code l = E(I) and the AUs used.
    """

    name = "eggan"
    paper = "EGGAN (Tang et al. 2020), Eq. 8"
    accepts = ("aus", "expression", "reference")
    intensity_range = (0.0, 1.0)

    def __init__(self, model: EGGAN, au_regressor: nn.Module, expression_aus: dict[str, Tensor] | None = None,
                 name: str = "eggan"):
        if not isinstance(model, EGGAN):
            raise TypeError(f"EGGANEditor needs an EGGAN, got {type(model).__name__}")
        self.model, self.au_regressor = model.eval(), au_regressor.eval()
        self.name = name
        self.image_size = model.config.image_size
        self.expression_aus = dict(_expression_aus() if expression_aus is None else expression_aus)
        self.expressions = tuple(self.expression_aus)

    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.model, "au_regressor": self.au_regressor}

    def read_aus(self, images: Tensor) -> Tensor:
        """AU intensities ``[B, 17]`` on the 0-5 scale of faces, by the AU regressor (at its own size)."""
        size = self.au_regressor.config.image_size
        if images.shape[-1] != size:
            images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        return self.au_regressor(images).clamp(0, AU_MAX)

    def target_aus(self, target: Target, images: Tensor) -> Tensor:
        """Eq. 8's condition ``u_i + alpha (u_t - u_i)``, ``[B, 17]`` on the 0-5 scale."""
        batch = len(images)
        if target.kind == "aus":
            wanted = target.au_targets(batch).to(images)
        elif target.kind == "expression":
            wanted = torch.stack([self.expression_aus[name] for name in target.expressions(batch)]).to(images)
        else:
            wanted = self.read_aus(target.reference)
        alpha = target.intensities(batch).to(images)[:, None]
        if bool((alpha == 1).all()):  # alpha = 1: u_t itself (the source's AUs drop out of Eq. 8)
            return wanted.clamp(0, AU_MAX)
        source = self.read_aus(images)
        # EGGAN Eq. 8: G(l_i | u_i + alpha (u_t - u_i))
        return (source + alpha * (wanted - source)).clamp(0, AU_MAX)

    def _edit(self, images: Tensor, target: Target) -> EditResult:
        if target.kind == "reference":
            check_image_shape(target.reference, "reference", size=self.image_size)
        aus = self.target_aus(target, images)
        code, maps = self.model.encode(images)
        output = self.model.generate(code, aus / AU_MAX, maps, images)
        return EditResult(output=output.clamp(-1, 1), latent=torch.cat([code, aus], 1))


def load_eggan_editor(device="cpu") -> EGGANEditor:
    """``facelib.load_editor("eggan")``: the shipped E and G (``python -m facelib train eggan --ship``) and the
    shipped AU regressor (which reads the source's and a reference's AUs)."""
    from facelib.pretrained import load_pretrained

    return EGGANEditor(load_pretrained("eggan", device=device), load_pretrained("au_regressor", device=device))
