"""StarGAN (Choi et al. 2018): one generator for every expression domain, conditioned on a target label.

The generator G(x, c) sees the image with the one-hot target domain ``c`` tiled as extra
channels (depth-wise concatenation) and paints the edited face; a PatchGAN critic scores
real/fake patches and classifies the domain with an auxiliary head. Here the domains are
RaFD's eight emotions (``facelib.EMOTIONS``), trained on the ``rafd`` preset. It is the
baseline of LEED and EGGAN, and LEED's "pre-trained GAN" neutraliser (``expression="neutral"``).

Paper: Choi, Choi, Kim, Ha, Kim, Choo, "StarGAN: Unified Generative Adversarial Networks for
Multi-Domain Image-to-Image Translation", CVPR 2018, arXiv:1711.09020; settings it leaves out
follow its public code (yunjey/stargan; docs/reference_notes.md).

Where the paper is computed (file: function):

=================================  =========================================================
Eq. 1 (adversarial loss, as        facelib/train/stargan.py: StarGANTask.critic_losses,
WGAN-GP, Sec. 4)                   generator_losses (facelib/losses.py: gradient_penalty)
Eq. 2 (domain classification,      facelib/train/stargan.py: StarGANTask.critic_losses
real images, for D)
Eq. 3 (domain classification,      facelib/train/stargan.py: StarGANTask.generator_losses
fake images, for G)
Eq. 4 (reconstruction / cycle)     facelib/train/stargan.py: StarGANTask.generator_losses
Eq. 5 (the full objectives)        facelib/train/stargan.py: StarGANTask.critic_losses, generator_losses
Sec. 4 / Fig. 3 (networks)         facelib/models/stargan.py: StarGANGenerator, StarGANCritic;
                                   facelib/models/blocks.py: down_block, ResidualBlock, up_block
=================================  =========================================================
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from facelib.conventions import EMOTIONS, check_image_shape
from facelib.editors import Editor, EditResult, Target
from facelib.models.blocks import PatchCritic, ResidualBlock, conv_norm_act, down_block, tile_condition, up_block
from facelib.models.ganimation import compose

__all__ = ["StarGANConfig", "StarGANGenerator", "StarGANCritic", "StarGANEditor", "load_stargan_editor", "DOMAINS"]

#: The domains: RaFD's eight emotions, in ``facelib.EMOTIONS`` order (a label's index is its domain).
DOMAINS: tuple[str, ...] = EMOTIONS


@dataclass
class StarGANConfig:
    """Generator and critic of StarGAN.

    image_size: square input size. base_channels: the generator's first layer (it doubles at each of
    the two down-samplings). residual_blocks: at the bottleneck (StarGAN: 6). critic_channels and
    critic_layers: the PatchGAN critic (channels double per stride-2 layer). num_domains: labels.
    skips: additive U-Net shortcuts from the down-sampling path to the up-sampling path (0: none,
    the published generator; 1: at half resolution; 2: also at full resolution).
    """

    image_size: int = 64
    base_channels: int = 16  # CPU width (StarGAN: 64)
    residual_blocks: int = 6
    critic_channels: int = 32  # CPU width (StarGAN: 64)
    critic_layers: int = 5  # 64 px -> a 2x2 final map, as StarGAN's 6 layers at 128 px
    num_domains: int = len(DOMAINS)
    skips: int = 0  # as StarGAN; 1 or 2 add U-Net shortcuts (measured in StarGANGenerator's docstring)
    output: str = "image"  # "image": StarGAN's tanh face; "attention": GANimation's colour + mask (CPU recipe)
    per_domain_critic: bool = False  # True: one real/fake map per domain, as StarGAN v2's D (CPU recipe)
    fake_class: bool = False  # True: the domain head has a ninth class, "generated" (CPU recipe)
    upsample: str = "transposed"  # StarGAN's; "resize": nearest + 3x3 conv, no checkerboard (CPU recipe)
    residual_colour: bool = False  # output="attention" only: the colour map is the source + a change (CPU recipe)

    def __post_init__(self) -> None:
        for name in ("image_size", "base_channels", "residual_blocks", "critic_channels", "critic_layers", "num_domains"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.skips not in (0, 1, 2) or isinstance(self.skips, bool):
            raise ValueError(f"skips must be 0 (StarGAN), 1 (a shortcut at half resolution) or 2 (also at full "
                             f"resolution), got {self.skips!r}")
        if self.output not in ("image", "attention"):
            raise ValueError(f"output must be 'image' (StarGAN) or 'attention' (GANimation's colour and mask "
                             f"composed with the source), got {self.output!r}")
        for name in ("per_domain_critic", "fake_class", "residual_colour"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.upsample not in ("transposed", "resize"):
            raise ValueError(f"upsample must be 'transposed' (StarGAN) or 'resize', got {self.upsample!r}")
        if self.image_size % 4 or self.image_size % 2**self.critic_layers:
            raise ValueError(f"image_size must be divisible by 4 and by 2**critic_layers; got image_size="
                             f"{self.image_size}, critic_layers={self.critic_layers} (e.g. 64 with 5, or 128 with 6)")

    @classmethod
    def cpu(cls) -> "StarGANConfig":
        """The CPU recipe's network: the 64x64 CPU width, with three departures from StarGAN.

        ``upsample="resize"`` and ``residual_colour=True`` were tried on top and stopped early
        (docs/gan_training.md, rows S5 and S7).
        """
        return cls(output="attention",  # departure: GANimation's colour + mask, starting near the identity
                   per_domain_critic=True,  # departure: StarGAN v2's one real/fake map per domain
                   fake_class=True)  # departure: the domain head also learns to name generated faces

    @classmethod
    def paper(cls) -> "StarGANConfig":
        """The published 128x128 network: 64 channels, 6 residual blocks, a 6-layer critic from 64 channels."""
        return cls(image_size=128, base_channels=64, residual_blocks=6, critic_channels=64, critic_layers=6, skips=0,
                   output="image", per_domain_critic=False, fake_class=False, upsample="transposed",
                   residual_colour=False)


class StarGANGenerator(nn.Module):
    """G(x, c): 7x7 conv, two stride-2 down-samplings, residual blocks, two up-samplings, 7x7 conv + tanh.

    ``forward(images [B, 3, S, S] in [-1, 1], labels [B, num_domains])`` -> ``[B, 3, S, S]`` in [-1, 1].
    ``labels`` are the target domains, one-hot (or any vector of that length).

    ``config.skips`` can add shortcuts the published generator does not have: the down-sampling
    path's features at half (1) and also at full resolution (2) added to the up-sampling path's
    (no parameters, the same cost). They were tried because a quarter-width network learns slowly
    to pass a whole face through the 16x16 bottleneck. Measured here (rafd test identities, 96
    pairs, lr 2e-4, 8,000-step schedule), after 4,000 critic steps: none (the default), 61 % of
    edits classified as the target, 65 % identity verification, 57 % of neutralised faces neutral,
    PSNR 24.2 dB; one shortcut, 42 %, 64 %, 24 %, 25.0 dB: sharper, but it edits less. Two edited
    less still (the generator's domain loss after about 1,800 steps 1.14, against 0.42 with one,
    0.47 with none). The trade-off AttGAN (He et al. 2019) measured between reconstruction and
    attribute editing.
    """

    config_class = StarGANConfig

    def __init__(self, config: StarGANConfig | None = None):
        super().__init__()
        self.config = config if config is not None else StarGANConfig()
        c = self.config.base_channels
        # Instance norm normalises each image by its own statistics at training and at edit time. The
        # public code also tracks running statistics; used in eval mode they replace the image's own
        # and, measured here, tint every edit with a colour cast per target domain: so none are kept.
        keep = {"track_running_stats": False}
        self.stem = conv_norm_act(3 + self.config.num_domains, c, 7, norm="instance", **keep)
        self.down = nn.Sequential(down_block(c, 2 * c, **keep), down_block(2 * c, 4 * c, **keep))
        self.bottleneck = nn.Sequential(*[ResidualBlock(4 * c, **keep) for _ in range(self.config.residual_blocks)])
        up = {**keep, "mode": self.config.upsample}
        self.up = nn.Sequential(up_block(4 * c, 2 * c, **up), up_block(2 * c, c, **up))
        self.head = nn.Conv2d(c, 3, 7, padding=3, bias=False)  # bias-free, as the public code
        if self.config.output == "attention":
            # Departure (CPU recipe): GANimation's mask beside the colour head. Its bias starts at 4
            # (A = 0.98), so the first edits are nearly the source and the updates go to what changes.
            self.attention_head = nn.Conv2d(c, 1, 7, padding=3)
            nn.init.zeros_(self.attention_head.weight)
            nn.init.constant_(self.attention_head.bias, 4.0)
            if self.config.residual_colour:
                nn.init.zeros_(self.head.weight)  # the change starts at 0: the edit starts as the source

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The edited faces ``[B, 3, S, S]`` in [-1, 1]."""
        return self.translate(images, labels)[0]

    def translate(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(edited [B, 3, S, S], attention [B, 1, S, S] or None)``; the mask exists with ``output="attention"``."""
        check_image_shape(images, "images", size=self.config.image_size)
        if labels.dim() != 2 or labels.shape != (len(images), self.config.num_domains):
            raise ValueError(f"labels must be [B, {self.config.num_domains}] (one target domain per image), "
                             f"got {list(labels.shape)}")
        full = self.stem(tile_condition(images, labels))  # [B, c, S, S]: the label as extra input channels
        half = self.down[0](full)  # [B, 2c, S/2, S/2]
        x = self.up[0](self.bottleneck(self.down[1](half)))  # [B, 2c, S/2, S/2]
        if self.config.skips >= 1:
            x = x + half  # the optional shortcut at half resolution (see the class docstring)
        x = self.up[1](x)  # [B, c, S, S]
        if self.config.skips == 2:
            x = x + full
        painted = torch.tanh(self.head(x))  # [B, 3, S, S]
        if self.config.output == "image":
            return painted, None
        if self.config.residual_colour:
            # departure (CPU recipe): where the mask lets colour in, it is the source plus a change, not a
            # face painted from scratch (an untrained colour map paints smears and speckles there)
            painted = (images + painted).clamp(-1, 1)
        attention = torch.sigmoid(self.attention_head(x))  # [B, 1, S, S]
        # GANimation Eq. 1 (facelib.models.ganimation.compose): A keeps the source, 1 - A takes the colour
        return compose(images, painted, attention), attention


class StarGANCritic(PatchCritic):
    """D: a PatchGAN critic whose auxiliary head classifies the domain (``forward`` -> scores, logits).

    The scores are ``[B, 1, s, s]``; with ``per_domain_critic`` they are ``[B, num_domains, s, s]``,
    one real/fake map per domain (StarGAN v2's discriminator), read at the image's own or target
    domain by :meth:`domain_scores`. With ``fake_class`` the domain head has ``num_domains + 1``
    logits, the last one "generated": the head learns to name the generator's faces, so texture
    that its domain classes read as an expression becomes evidence of a fake (the weakness of an
    auxiliary classifier trained on real images alone; ReACGAN, NeurIPS 2021).
    """

    config_class = StarGANConfig

    def __init__(self, config: StarGANConfig | None = None):
        config = config if config is not None else StarGANConfig()
        super().__init__(config.image_size, config.num_domains + int(config.fake_class),
                         base_channels=config.critic_channels, num_layers=config.critic_layers)
        self.config = config
        if config.per_domain_critic:
            self.patch = nn.Conv2d(self.patch.in_channels, config.num_domains, 3, padding=1, bias=False)

    @staticmethod
    def domain_scores(scores: torch.Tensor, domains: torch.Tensor) -> torch.Tensor:
        """The score maps ``[B, 1, s, s]`` of each image's domain (the only map of a one-map critic)."""
        if scores.shape[1] == 1:
            return scores
        return scores.gather(1, domains.view(-1, 1, 1, 1).expand(-1, 1, *scores.shape[2:]))


def one_hot(names: list[str], device=None) -> torch.Tensor:
    """One-hot domain labels ``[B, num_domains]`` of expression names from :data:`DOMAINS`."""
    index = torch.tensor([DOMAINS.index(name) for name in names], device=device)
    return nn.functional.one_hot(index, len(DOMAINS)).float()


class StarGANEditor(Editor):
    """StarGAN behind the editor interface: expression targets among RaFD's eight emotions.

    StarGAN is trained on one-hot labels; an intensity t feeds the label ``t * target + (1 - t) *
    source`` (the source's own label where ``source_expression`` is known, else neutral), which the
    network never saw during training: intensities between 0 and 1 are an extrapolation of the
    method, not part of it. Intensity 1 is StarGAN's edit.
    """

    name = "stargan"
    paper = "StarGAN (Choi et al. 2018), baseline of LEED and EGGAN"
    accepts = ("expression",)
    expressions = DOMAINS
    intensity_range = (0.0, 1.0)

    def __init__(self, generator: StarGANGenerator):
        self.generator = generator.eval()
        self.image_size = generator.config.image_size

    def modules(self) -> dict[str, nn.Module]:
        return {"generator": self.generator}

    def check_target(self, target: Target, batch: int) -> Target:
        target = super().check_target(target, batch)
        unknown = sorted(set(target.source_expressions(batch) or ()) - set(DOMAINS))
        if unknown:
            raise ValueError(f"stargan's domains are {list(DOMAINS)}; source_expression {unknown} is not one of them")
        return target

    def _edit(self, images: torch.Tensor, target: Target) -> EditResult:
        batch = len(images)
        sources = target.source_expressions(batch) or ["neutral"] * batch
        t = target.intensities(batch).to(images).view(-1, 1)
        labels = t * one_hot(target.expressions(batch), images.device) + (1 - t) * one_hot(sources, images.device)
        output, attention = self.generator.translate(images, labels)
        return EditResult(output=output, attention=attention)  # the mask exists with output="attention"


def load_stargan_editor(device="cpu") -> StarGANEditor:
    """``facelib.load_editor("stargan")``: the shipped generator."""
    from facelib.checkpoint import load_pretrained

    return StarGANEditor(load_pretrained("stargan", device=device))
