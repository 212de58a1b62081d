"""GANimation: Anatomically-aware Facial Animation from a Single Image (Pumarola et al. 2018).

A generator conditioned on 17 target AU intensities paints two maps instead of a face: a
*colour* image C (tanh) and an *attention* mask A (sigmoid). The output keeps the source where
A is high and takes the colour where A is low, so the generator only has to paint what the
expression changes. A PatchGAN critic scores realism and regresses the AUs it sees.
DFT-Net (Wang et al. 2019) is this generator plus a flow decoder.

- :class:`GANimationConfig` - ``GANimationConfig()`` is the 64x64 CPU width, ``.paper()`` the
  published 128x128 network (64 base channels, 6 residual blocks, a 6-layer critic).
- :class:`GANimationGenerator` - ``(images, aus01) -> (colour, attention)``.
- :func:`compose` - the one place the two are blended with the source.
- :class:`GANimationCritic` - :class:`facelib.models.blocks.PatchCritic` with the AU head.
- :class:`GANimationEditor` - the generator behind the editor interface.

AUs enter the networks divided by ``facelib.AU_MAX`` (5), in ``[0, 1]`` (the paper's
normalisation); editor targets stay on the 0-5 scale of ``facelib.editors.Target``.

Where the paper is computed (file: function). Equation numbers are those of Pumarola et al.,
ECCV 2018, arXiv:1807.09251 (docs/reference_notes.md); DFT-Net's Eq. 6-8 restate Eq. 2, 4 and 5:

==================================  =========================================================
Eq. 1 (composition with A and C)    facelib/models/ganimation.py: compose
Eq. 2 (image adversarial, WGAN-GP)  facelib/train/ganimation.py: GANimationTask.critic_losses,
                                    generator_losses (facelib/losses.py: gradient_penalty)
Eq. 3 (attention loss: TV + norm)   facelib/train/ganimation.py: attention_loss
Eq. 4 (conditional AU loss)         facelib/losses.py: au_regression_loss
Eq. 5 (identity / cycle loss)       facelib/losses.py: cycle_loss
Eq. 6 (full generator loss)         facelib/train/ganimation.py: GANimationTask.generator_losses
Sec. 4.1 (architecture)             facelib/models/ganimation.py: GANimationGenerator,
                                    GANimationCritic; facelib/models/blocks.py
Sec. 5 (optimisation)               facelib/train/ganimation.py: GANimationTask, train_recipe
==================================  =========================================================
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import nn

from facelib.conventions import AU_MAX, NUM_AUS
from facelib.editors import Editor, EditResult, Target
from facelib.models.blocks import PatchCritic, ResidualBlock, conv_norm_act, down_block, tile_condition, up_block

#: The SynthFaces preset GANimation is trained and measured on (EmotioNet's random AU combinations).
PRESET = "emotionet"
#: The preset whose per-expression mean AUs are an ``expression`` target (DFT-Net Sec. 3.2: RaFD).
EXPRESSION_AUS_PRESET = "rafd"

__all__ = ["GANimationConfig", "GANimationGenerator", "GANimationCritic", "GANimationEditor", "compose",
           "normalise_aus", "load_ganimation_editor", "PRESET"]


@dataclass
class GANimationConfig:
    """Architecture of GANimation's generator and critic (Sec. 4.1 and the public code).

    image_size: square side; the critic halves it ``critic_layers`` times (64 / 2**5 = 2, the
        same 2x2 final map as the published 128 px with 6 layers).
    base_channels: channels after the 7x7 stem; doubled by each of the two stride-2 down convs.
    residual_blocks: residual blocks at the bottleneck (6 in the paper).
    critic_base_channels, critic_layers, critic_max_channels: the PatchGAN critic.
    num_aus: the condition's length (17 AUs, ``facelib.AU_CODES``).
    attention_start: 0 for the paper's bias-free attention head; otherwise the head starts with zero
        weights and this bias, so every mask starts at sigmoid(attention_start) (the CPU recipe: 4,
        A = 0.98: the generator starts as the identity mapping).
    """

    image_size: int = 64
    base_channels: int = 16  # CPU width: a quarter of the published 64
    residual_blocks: int = 6
    critic_base_channels: int = 16
    critic_layers: int = 5
    critic_max_channels: int = 2048
    num_aus: int = NUM_AUS
    attention_start: float = 0.0  # the paper's bias-free head; CPU recipe: 4.0 (a departure)
    upsample: str = "transposed"  # the paper's; "resize": nearest + 3x3 conv, no checkerboard (CPU recipe)
    residual_colour: bool = False  # the paper's painted colour map; True: the source + a change (CPU recipe)

    def __post_init__(self) -> None:
        if self.upsample not in ("transposed", "resize"):
            raise ValueError(f"GANimationConfig.upsample must be 'transposed' (the paper) or 'resize', got {self.upsample!r}")
        if not isinstance(self.attention_start, (int, float)) or isinstance(self.attention_start, bool):
            raise ValueError(f"GANimationConfig.attention_start must be a number, got {self.attention_start!r}")
        for name in ("base_channels", "residual_blocks", "critic_base_channels", "critic_layers",
                     "critic_max_channels", "num_aus"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"GANimationConfig.{name} must be a positive int, got {value!r}")
        if self.image_size % 4 or self.image_size % 2**self.critic_layers:
            raise ValueError(f"GANimationConfig: image_size must be divisible by 4 (two down convs) and by "
                             f"2**critic_layers = {2**self.critic_layers}; got image_size={self.image_size} "
                             "(use 64 with 5 critic layers, or the paper's 128 with 6)")

    @classmethod
    def paper(cls) -> "GANimationConfig":
        """The published 128x128 network: 64 base channels, 6 residual blocks, 6-layer critic."""
        return cls(image_size=128, base_channels=64, residual_blocks=6, critic_base_channels=64, critic_layers=6)


def normalise_aus(aus: torch.Tensor) -> torch.Tensor:
    """AU intensities on facelib's 0-5 scale -> GANimation's condition in ``[0, 1]`` (divided by 5)."""
    return aus / AU_MAX


def check_generator_inputs(generator: nn.Module, images: torch.Tensor, aus01: torch.Tensor) -> None:
    """Refuse inputs other than images ``[B, 3, S, S]`` and AUs ``[B, 17]`` (GANimation's and DFT-Net's generators)."""
    name, size, count = type(generator).__name__, generator.config.image_size, generator.config.num_aus
    if images.dim() != 4 or images.shape[1] != 3 or tuple(images.shape[-2:]) != (size, size):
        raise ValueError(f"{name} expects images [B, 3, {size}, {size}], got {list(images.shape)}")
    if aus01.dim() != 2 or aus01.shape != (len(images), count):
        raise ValueError(f"{name} expects AUs [B={len(images)}, {count}] in [0, 1], got {list(aus01.shape)}")


def compose(source: torch.Tensor, colour: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
    """GANimation Eq. 1: blend the source and the colour map with the attention mask.

    ``source`` and ``colour`` ``[B, 3, H, W]``, ``attention`` ``[B, 1, H, W]`` in ``[0, 1]``.
    """
    # GANimation Eq. 1, the public code's side: A weights the SOURCE (A = 1 returns the source
    # unchanged, A = 0 takes the colour map). The paper's wording reads the other way round
    # (users were confused: GANimation issues #21, #115); facelib keeps the code's side, and
    # DFT-Net's Eq. 5, (1 - A) * B + A * warped source, puts A on the same (source) side.
    return attention * source + (1 - attention) * colour  # [B, 3, H, W]


class GANimationGenerator(nn.Module):
    """G(I, y): 7x7 stem, two stride-2 down convs, residual blocks, two up convs, two 7x7 heads.

    Instance norm is affine without running statistics (GANimation's code), so eval mode
    normalises with each image's own statistics, as in training. ``forward(images, aus01)``
    takes images ``[B, 3, H, W]`` in ``[-1, 1]`` and AUs ``[B, 17]`` in ``[0, 1]`` and returns
    ``(colour [B, 3, H, W] in [-1, 1], attention [B, 1, H, W] in [0, 1])``.
    """

    config_class = GANimationConfig

    def __init__(self, config: GANimationConfig | None = None):
        super().__init__()
        self.config = config if config is not None else GANimationConfig()
        width, aus = self.config.base_channels, self.config.num_aus
        layers = [conv_norm_act(3 + aus, width, 7, norm="instance", track_running_stats=False)]
        for _ in range(2):  # two stride-2 down convs
            layers.append(down_block(width, 2 * width, track_running_stats=False))
            width *= 2
        layers += [ResidualBlock(width, track_running_stats=False) for _ in range(self.config.residual_blocks)]
        for _ in range(2):
            layers.append(up_block(width, width // 2, track_running_stats=False, mode=self.config.upsample))
            width //= 2
        self.body = nn.Sequential(*layers)
        # Both heads without a bias, as the public code.
        self.colour_head = nn.Conv2d(width, 3, 7, padding=3, bias=False)
        self.attention_head = nn.Conv2d(width, 1, 7, padding=3, bias=bool(self.config.attention_start))
        if self.config.attention_start:
            # Departure (CPU recipe): every mask starts at sigmoid(attention_start), the source kept
            nn.init.zeros_(self.attention_head.weight)
            nn.init.constant_(self.attention_head.bias, float(self.config.attention_start))
        if self.config.residual_colour:
            nn.init.zeros_(self.colour_head.weight)  # the change starts at 0

    def forward(self, images: torch.Tensor, aus01: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_generator_inputs(self, images, aus01)
        features = self.body(tile_condition(images, aus01))  # [B, base, H, W]
        colour = torch.tanh(self.colour_head(features))
        if self.config.residual_colour:
            # departure (CPU recipe): the colour map is the source plus a change, not a face painted from
            # scratch (an untrained colour map paints smears where the mask lets it in)
            colour = (images + colour).clamp(-1, 1)
        return colour, torch.sigmoid(self.attention_head(features))

    def animate(self, images: torch.Tensor, aus01: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(output, colour, attention)``: the generator's maps composed with the source (Eq. 1)."""
        colour, attention = self(images, aus01)
        return compose(images, colour, attention), colour, attention


class GANimationCritic(PatchCritic):
    """D(I) -> (patch scores ``[B, 1, S, S]``, AUs ``[B, 17]`` in [0, 1] units): GANimation's PatchGAN.

    4x4 stride-2 convs with LeakyReLU(0.01), no norm, a 3x3 realness head and an AU regression
    head whose kernel covers the final map (:class:`facelib.models.blocks.PatchCritic`).
    """

    config_class = GANimationConfig

    def __init__(self, config: GANimationConfig | None = None):
        config = config if config is not None else GANimationConfig()
        super().__init__(config.image_size, config.num_aus, base_channels=config.critic_base_channels,
                         num_layers=config.critic_layers, max_channels=config.critic_max_channels)
        self.config = config


@lru_cache(maxsize=1)
def _expression_aus() -> dict[str, torch.Tensor]:
    from facelib.data import expression_aus

    return expression_aus(EXPRESSION_AUS_PRESET)


class GANimationEditor(Editor):
    """GANimation behind :class:`facelib.editors.Editor`: ``aus`` or ``expression`` targets.

    An ``aus`` target ``[B, 17]`` on the 0-5 scale, times the intensity, is what the generator is
    conditioned on (divided by 5). An ``expression`` target takes that expression's mean AUs over the
    ``rafd`` preset's training identities (DFT-Net Sec. 3.2 takes its expression AUs from RaFD;
    :func:`facelib.data.expression_aus`) times the intensity. The AUs are absolute, not a change:
    intensity 0 asks for a face with every AU at 0 (a neutral face), not for the source.
    The result carries the attention mask (A = 1 keeps the source) and the colour map as ``texture``.
    """

    name = "ganimation"
    paper = "GANimation (Pumarola et al. 2018), Eq. 1"
    accepts = ("aus", "expression")
    intensity_range = (0.0, 1.0)

    generator_class = GANimationGenerator  # DFT-Net's editor (facelib.models.dftnet) takes its own

    def __init__(self, generator: nn.Module, expression_aus: dict[str, torch.Tensor] | None = None):
        if not isinstance(generator, self.generator_class):
            raise TypeError(f"{type(self).__name__} needs a {self.generator_class.__name__}, "
                            f"got {type(generator).__name__}")
        self.generator = generator
        self.image_size = generator.config.image_size
        self.expression_aus = dict(_expression_aus() if expression_aus is None else expression_aus)
        self.expressions = tuple(self.expression_aus)

    def modules(self) -> dict[str, nn.Module]:
        return {"generator": self.generator}

    def target_aus(self, target: Target, batch: int) -> torch.Tensor:
        """The AUs ``[batch, 17]`` on the 0-5 scale that ``target`` asks for."""
        if target.kind == "aus":
            wanted = target.au_targets(batch).float()
        else:
            wanted = torch.stack([self.expression_aus[name] for name in target.expressions(batch)])  # [B, 17]
        return (target.intensities(batch)[:, None].to(wanted) * wanted).clamp(0, AU_MAX)

    def target_aus01(self, target: Target, images: torch.Tensor) -> torch.Tensor:
        """The generator's condition for ``images``: :meth:`target_aus` divided by 5, ``[B, 17]`` in [0, 1]."""
        return normalise_aus(self.target_aus(target, len(images)).to(images))

    def _edit(self, images: torch.Tensor, target: Target) -> EditResult:
        output, colour, attention = self.generator.animate(images, self.target_aus01(target, images))
        return EditResult(output=output.clamp(-1, 1), attention=attention, texture=colour)


def load_ganimation_editor(device="cpu") -> GANimationEditor:
    """``facelib.load_editor("ganimation")``: the shipped generator (``python -m facelib train ganimation --ship``)."""
    from facelib.checkpoint import load_pretrained

    return GANimationEditor(load_pretrained("ganimation", device=device))
