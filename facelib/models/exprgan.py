"""ExprGAN (Ding et al. 2018): expression type *and* continuous intensity from an expression code.

An encoder maps the face x to an identity code g(x) (Eq. 6-7 keep the identity); the expression
controller F_ctrl turns the one-hot label y and noise z_y into an expression code c with K blocks
of d elements (Eq. 3); the decoder paints G_dec(g(x), c) with c tiled into every layer. A
regulariser Q, sharing the image discriminator's trunk, recovers c from the generated face
(Eq. 4-5), so that each element of c must change the face: at test time one element of the
target block set to 1 (the others -1) picks one of d intensity levels (Fig. 3), and every
block at -1 gives a neutral face, a class the model never saw. Trained on the ``oulu`` preset
(Oulu-CASIA's six expressions, the last three frames of each onset sequence).

Paper: Ding, Sricharan, Chellappa, "ExprGAN: Facial Expression Editing with Controllable
Expression Intensity", AAAI 2018, arXiv:1709.03842. Settings the paper leaves out follow its
public code (HuiDingUMD/ExprGAN; docs/reference_notes.md).

Where the paper is computed (file: function):

=================================  =========================================================
Eq. 3 (expression controller)      facelib/models/exprgan.py: expression_code
Eq. 5 (L_Q, factored Gaussian)     facelib/losses.py: exprgan_q_loss; Q is ExprGANCritic.image
Eq. 6 (L_pixel)                    facelib/losses.py: exprgan_pixel
Eq. 7 (L_id)                       facelib/losses.py: exprgan_identity, on facelib's
                                   IdentityEmbedder (standing in for VGG-Face)
Eq. 8 (D_z against U(-1, 1))       facelib/losses.py: exprgan_latent_discriminator, _encoder
Eq. 9 (D_img with the label)       facelib/losses.py: exprgan_image_discriminator, _generator
Eq. 10 (the full objective), the   facelib/train/exprgan.py: ExprGANTask
three-stage incremental training
Fig. 1c (networks)                 facelib/models/exprgan.py: ExprGAN, ExprGANCritic
Fig. 3 (intensity levels)          facelib/models/exprgan.py: ExprGAN.level_code
Fig. 4 (expression transfer)       facelib/models/exprgan.py: ExprGANEditor (reference targets)
=================================  =========================================================
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from facelib.conventions import check_image_shape
from facelib.data.presets import get_preset
from facelib.editors import Editor, EditResult, Target
from facelib.models.blocks import LatentCritic, conv_norm_act, tile_condition

__all__ = ["CLASSES", "ExprGANConfig", "ExprGAN", "ExprGANCritic", "ExprGANEditor", "expression_code",
           "load_exprgan_editor", "load_caae_editor"]

#: The K = 6 expression classes, in the ``oulu`` preset's order (Oulu-CASIA's six).
CLASSES: tuple[str, ...] = get_preset("oulu").expressions


@dataclass
class ExprGANConfig:
    """The ExprGAN networks (Fig. 1c; widths of the public code in ``paper()``).

    image_size: square side. encoder_channels: the 5x5 stride-2 convolutions of G_enc (one per
    halving down to 4x4). identity_dim: g(x) (the paper: 50). num_classes, code_dim: K blocks of
    d elements of the code c (the paper: 6 x 5). decoder_channels: G_dec's map at 4x4, then after
    each nearest-upsample + 3x3 conv (one per doubling back to ``image_size``). critic_channels:
    D_img's 5x5 stride-2 convolutions; critic_hidden: its FC layer; q_hidden, q_class_hidden: the
    Q head (FC, then one FC per class to d elements). latent_critic_hidden: D_z's MLP.
    controller: ``False`` builds the CAAE-style baseline (Zhang et al. 2017, the paper's Fig. 2
    comparison): the one-hot label goes into the decoder instead of the code c.
    """

    image_size: int = 64
    encoder_channels: tuple[int, ...] = (32, 64, 128, 256)  # CPU width (public code: 64 ... 1024 at 128 px)
    identity_dim: int = 50
    num_classes: int = len(CLASSES)
    code_dim: int = 5
    decoder_channels: tuple[int, ...] = (256, 128, 64, 32, 16)  # CPU width (public code: 1024 ... 32 at 128 px)
    critic_channels: tuple[int, ...] = (16, 32, 64, 128)
    critic_hidden: int = 256  # CPU width (public code: 1024)
    q_hidden: int = 128
    q_class_hidden: int = 64
    latent_critic_hidden: tuple[int, ...] = (64, 32, 16)
    controller: bool = True
    output: str = "image"  # "image": the paper's tanh face; "residual": the source plus a change (CPU recipe)
    skips: bool = False  # G_dec also sees G_enc's feature maps of the source at each scale (CPU recipe)

    def __post_init__(self) -> None:
        self.encoder_channels, self.decoder_channels = tuple(self.encoder_channels), tuple(self.decoder_channels)
        self.critic_channels, self.latent_critic_hidden = tuple(self.critic_channels), tuple(self.latent_critic_hidden)
        for name in ("image_size", "identity_dim", "num_classes", "code_dim", "critic_hidden", "q_hidden",
                     "q_class_hidden"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        halvings = len(self.encoder_channels)
        if self.image_size != 4 * 2**halvings:
            raise ValueError(f"image_size must be 4 * 2**len(encoder_channels) (G_enc halves down to 4x4): got "
                             f"image_size={self.image_size} with {halvings} encoder layers (e.g. 64 with 4, 128 with 5)")
        if len(self.decoder_channels) != halvings + 1:
            raise ValueError(f"decoder_channels needs {halvings + 1} entries (the 4x4 map, then one per doubling), "
                             f"got {len(self.decoder_channels)}")
        if self.image_size % 2**len(self.critic_channels):
            raise ValueError(f"image_size {self.image_size} must be divisible by 2**len(critic_channels)")
        if self.output not in ("image", "residual"):
            raise ValueError(f"output must be 'image' (the paper's face) or 'residual' (the source plus a change), "
                             f"got {self.output!r}")
        if self.skips and self.output != "residual":
            raise ValueError("skips need the source at decoding time: use them with output='residual'")

    @classmethod
    def cpu(cls) -> "ExprGANConfig":
        """The CPU recipe's networks: the CPU widths, and a decoder that adds a change to its source."""
        return cls(output="residual",  # departure: G_dec paints a change on the source, not a whole face
                   skips=True)  # departure: G_dec sees G_enc's maps of the source, so it can place the change

    @property
    def code_size(self) -> int:
        """The length of what the decoder is conditioned on: K*d for c, K for the baseline's one-hot."""
        return self.num_classes * self.code_dim if self.controller else self.num_classes

    @classmethod
    def paper(cls) -> "ExprGANConfig":
        """The published 128x128 networks: G_enc 64-1024, FC 50; G_dec from 4x4x1024; D_img 16-128, FC 1024."""
        return cls(image_size=128, encoder_channels=(64, 128, 256, 512, 1024), identity_dim=50,
                   decoder_channels=(1024, 512, 256, 128, 64, 32), critic_channels=(16, 32, 64, 128),
                   critic_hidden=1024, q_hidden=128, q_class_hidden=64)


def expression_code(labels: Tensor, noise: Tensor) -> Tensor:
    """Eq. 3, F_ctrl: ``c_i = |z_y| (2 y_i - 1)``: the label's block positive, every other block negative.

    ``labels`` ``[B]`` class indices into :data:`CLASSES` (or ``[B, K]`` one-hot), ``noise`` z_y
    ``[B, d]`` from U(-1, 1). Returns c ``[B, K*d]``: block i is ``|z_y|`` for the label, ``-|z_y|`` else.
    """
    if labels.dim() == 2:
        labels = labels.argmax(1)
    if noise.dim() != 2 or len(noise) != len(labels):
        raise ValueError(f"noise z_y must be [B, d] with B = {len(labels)}, got {list(noise.shape)}")
    num_classes = len(CLASSES)
    sign = 2 * F.one_hot(labels.long(), num_classes).to(noise) - 1  # [B, K]: 2 y_i - 1
    # ExprGAN Eq. 3: c_i = |z_y| * (2 y_i - 1), i = 1..K
    return (sign[:, :, None] * noise.abs()[:, None, :]).flatten(1)  # [B, K*d]


class ExprGAN(nn.Module):
    """G = (G_enc, G_dec): ``forward(images, code)`` = G_dec(G_enc(x), c) in [-1, 1].

    ``encode(images [B, 3, S, S])`` -> g(x) ``[B, identity_dim]`` in (-1, 1) (tanh, the prior's
    range); ``decode(identity, code [B, code_size], source)`` -> ``[B, 3, S, S]`` (``source``, the
    input faces, is needed with ``output="residual"`` only: the output is then the source plus the
    decoded change, clamped to [-1, 1]; the change's head starts at zero, so G starts as the
    identity mapping). ``intensity_order``
    ``[K, d]`` is the order of the d elements of each block from the weakest to the strongest
    expression, read off on training identities after training
    (:func:`facelib.evaluation.exprgan.calibrate_intensity_order`); the paper's Fig. 3 shows its levels in an order it does not say how
    it found, since Q's information objective names no order.
    """

    config_class = ExprGANConfig

    def __init__(self, config: ExprGANConfig | None = None):
        super().__init__()
        self.config = config = config if config is not None else ExprGANConfig()
        layers, channels = [], 3
        for out in config.encoder_channels:  # 5x5 stride-2 convs with ReLU and no norm (public code)
            layers.append(conv_norm_act(channels, out, 5, stride=2, norm=None))
            channels = out
        self.encoder = nn.Sequential(*layers, nn.Flatten(), nn.Linear(channels * 16, config.identity_dim))
        first, code = config.decoder_channels[0], config.code_size
        self.decoder_input = nn.Linear(config.identity_dim + code, first * 16)
        # Batch norm in G_dec, as the CAAE code ExprGAN's builds on (enable_bn): without it the
        # controller-learning stage collapsed here within 500 steps to one saturated image for every
        # input, while D_img's loss fell to 0.0007.
        self.decoder_input_norm = nn.BatchNorm2d(first)
        # Each decoder layer sees the code again, tiled as extra channels (the public code); with
        # skips also G_enc's map of the source at its scale (the source itself at full size).
        skip_channels = self.skip_channels() if config.skips else [0] * len(config.encoder_channels)
        self.decoder_layers = nn.ModuleList(
            conv_norm_act(c_in + code + skip, c_out, 3, norm="batch")
            for c_in, c_out, skip in zip(config.decoder_channels[:-1], config.decoder_channels[1:], skip_channels))
        self.decoder_head = nn.Conv2d(config.decoder_channels[-1] + code, 3, 3, padding=1)
        if config.output == "residual":
            # departure (CPU recipe): the change starts at zero, so the first edits are the source itself
            nn.init.zeros_(self.decoder_head.weight)
            nn.init.zeros_(self.decoder_head.bias)
        default_order = torch.arange(config.code_dim).repeat(config.num_classes, 1)
        self.register_buffer("intensity_order", default_order)  # [K, d], saved with the weights

    def skip_channels(self) -> list[int]:
        """Channels of the source map each decoder layer sees with skips: G_enc's at 8, 16, ... px, then the image."""
        encoder = self.config.encoder_channels
        return [encoder[len(encoder) - 2 - i] if len(encoder) - 2 - i >= 0 else 3 for i in range(len(encoder))]

    def source_maps(self, source: Tensor) -> list[Tensor]:
        """G_enc's feature maps of the source, one per decoder layer (coarsest first), the image last."""
        maps, h = [], source
        for layer in list(self.encoder)[:len(self.config.encoder_channels)]:
            h = layer(h)
            maps.append(h)  # S/2, S/4, ..., 4 px
        return maps[-2::-1] + [source]  # 8 px, 16 px, ..., S/2, then S px: the decoder's order

    def encode(self, images: Tensor) -> Tensor:
        check_image_shape(images, "images", size=self.config.image_size)
        return torch.tanh(self.encoder(images))  # g(x): [B, identity_dim], the U(-1, 1) prior's range

    def decode(self, identity: Tensor, code: Tensor, source: Tensor | None = None) -> Tensor:
        config = self.config
        if identity.dim() != 2 or identity.shape[1] != config.identity_dim:
            raise ValueError(f"identity codes must be [B, {config.identity_dim}], got {list(identity.shape)}")
        if code.shape != (len(identity), config.code_size):
            raise ValueError(f"codes must be [B, {config.code_size}] with B = {len(identity)} "
                             f"({'K*d expression code' if config.controller else 'one-hot label'}), got {list(code.shape)}")
        x = self.decoder_input(torch.cat([identity, code], 1)).view(len(code), -1, 4, 4)  # [B, C0, 4, 4]
        x = F.relu(self.decoder_input_norm(x))
        if config.skips and (source is None or source.shape != (len(code), 3, config.image_size, config.image_size)):
            raise ValueError(f"a decoder with skips reads the source faces: pass source [B, 3, {config.image_size}, "
                             f"{config.image_size}] with B = {len(code)}, got {None if source is None else list(source.shape)}")
        maps = self.source_maps(source) if config.skips else [None] * len(self.decoder_layers)
        for layer, skip in zip(self.decoder_layers, maps):
            x = F.interpolate(x, scale_factor=2, mode="nearest")
            x = tile_condition(x, code) if skip is None else torch.cat([tile_condition(x, code), skip], 1)
            x = layer(x)
        painted = torch.tanh(self.decoder_head(tile_condition(x, code)))  # [B, 3, S, S]
        if config.output == "image":
            return painted
        if source is None or source.shape != painted.shape:
            raise ValueError(f"a residual decoder (output='residual') adds its change to the source faces: pass "
                             f"source [B, 3, {config.image_size}, {config.image_size}] with B = {len(code)}, got "
                             f"{None if source is None else list(source.shape)}")
        # departure (CPU recipe): the source plus a change, so everything the code does not change stays
        return (source + painted).clamp(-1, 1)

    def forward(self, images: Tensor, code: Tensor) -> Tensor:
        return self.decode(self.encode(images), code, images)

    def label_code(self, labels: Tensor) -> Tensor:
        """The baseline's condition: one-hot labels ``[B, K]`` (``controller=False``)."""
        return F.one_hot(labels.long(), self.config.num_classes).float()

    def level_code(self, labels: Tensor, levels: Tensor) -> Tensor:
        """Fig. 3's codes: level ``l`` in [0, d] of class ``labels``, ``[B, K*d]``.

        Level 0 is every element -1 (neutral, Sec. "Expression Editing"); an integer level i >= 1
        sets the i-th element of the label's block (in :attr:`intensity_order`) to 1 and all others to
        -1; a fractional level blends the two neighbouring integer levels' codes linearly.
        """
        config = self.config
        levels = levels.to(torch.float32).clamp(0, config.code_dim).view(-1)
        labels = labels.long().view(-1)
        below, fraction = levels.floor(), levels - levels.floor()

        def integer_level(level: Tensor) -> Tensor:
            code = -torch.ones(len(labels), config.num_classes, config.code_dim, device=labels.device)
            active = level >= 1
            rows = torch.nonzero(active).squeeze(1)
            element = self.intensity_order.to(labels.device)[labels[rows], (level[rows] - 1).long()]
            code[rows, labels[rows], element] = 1.0
            return code.flatten(1)

        low, high = integer_level(below), integer_level((below + 1).clamp(max=config.code_dim))
        return (1 - fraction[:, None]) * low + fraction[:, None] * high  # [B, K*d]

    def full_code(self, labels: Tensor) -> Tensor:
        """Fig. 2's code: the label's block all 1, every other block -1 (Sec. "Expression Editing")."""
        sign = 2 * F.one_hot(labels.long(), self.config.num_classes).float() - 1
        return sign[:, :, None].expand(-1, -1, self.config.code_dim).flatten(1)


class ExprGANCritic(nn.Module):
    """D_img with the Q head on its trunk, and D_z (Fig. 1c).

    ``image(images, labels)`` -> (real/fake logits ``[B]``, Q's mean of c ``[B, K*d]`` in (-1, 1)):
    the label is tiled onto the image and given again to the FC layer (public code); Q reads the
    FC features (one FC, then one small FC per class to its d elements, tanh).
    ``latent(identity)`` -> D_z's logits ``[B]`` (an MLP with batch norm, public code).
    ``forward`` is ``image``.
    """

    config_class = ExprGANConfig

    def __init__(self, config: ExprGANConfig | None = None):
        super().__init__()
        self.config = config = config if config is not None else ExprGANConfig()
        layers, channels = [], 3 + config.num_classes
        for i, out in enumerate(config.critic_channels):  # 5x5 stride-2 convs with batch norm (public code)
            layers.append(conv_norm_act(channels, out, 5, stride=2, norm=None if i == 0 else "batch",
                                        activation="leaky_relu", negative_slope=0.2))
            channels = out
        final = config.image_size // 2**len(config.critic_channels)
        self.trunk = nn.Sequential(*layers, nn.Flatten())
        self.features = nn.Sequential(nn.Linear(channels * final * final + config.num_classes, config.critic_hidden),
                                      nn.LeakyReLU(0.2))
        self.score = nn.Linear(config.critic_hidden, 1)
        self.q_trunk = nn.Sequential(nn.Linear(config.critic_hidden, config.q_hidden), nn.LeakyReLU(0.2))
        self.q_classes = nn.ModuleList(
            nn.Sequential(nn.Linear(config.q_hidden, config.q_class_hidden), nn.LeakyReLU(0.2),
                          nn.Linear(config.q_class_hidden, config.code_dim), nn.Tanh())
            for _ in range(config.num_classes))
        self.latent_critic = LatentCritic(config.identity_dim, config.latent_critic_hidden, batch_norm=True)

    def image(self, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        check_image_shape(images, "images", size=self.config.image_size)
        one_hot = F.one_hot(labels.long(), self.config.num_classes).to(images.dtype)
        h = self.features(torch.cat([self.trunk(tile_condition(images, one_hot)), one_hot], 1))  # [B, hidden]
        q = self.q_trunk(h)
        return self.score(h).squeeze(1), torch.cat([head(q) for head in self.q_classes], 1)

    def latent(self, identity: Tensor) -> Tensor:
        return self.latent_critic(identity)

    def forward(self, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        return self.image(images, labels)


def _class_indices(names: list[str], device) -> Tensor:
    unknown = sorted(set(names) - set(CLASSES))
    if unknown:
        raise ValueError(f"exprgan knows the expressions {list(CLASSES)} (and 'neutral' as every code -1); "
                         f"got {unknown}")
    return torch.tensor([CLASSES.index(name) for name in names], device=device)


class ExprGANEditor(Editor):
    """ExprGAN behind the editor interface.

    - ``expression`` at ``intensity`` t in [0, 1]: Fig. 3's codes at level ``t * d`` (t = 1: the
      strongest of the d levels; t = 0: every element -1, the neutral face); ``"neutral"`` is the
      all -1 code at any intensity. Fig. 2's all-ones code is ``model.full_code``.
    - ``reference`` (Fig. 4): the expression classifier's label of the reference (facelib's
      classifier, restricted to the six classes) and Q's code of the reference, blended toward the
      all -1 neutral code by ``1 - t``.

    The baseline (``controller=False``, CAAE-style) has no code: intensity t blends the one-hot
    label toward zero, and it accepts no reference.
    """

    paper = "ExprGAN (Ding et al. 2018), Fig. 2-4"
    expressions = CLASSES + ("neutral",)
    intensity_range = (0.0, 1.0)

    def __init__(self, model: ExprGAN, critic: ExprGANCritic | None = None, classifier: nn.Module | None = None,
                 name: str = "exprgan"):
        self.model = model.eval()
        self.critic = None if critic is None else critic.eval()
        self.classifier = None if classifier is None else classifier.eval()
        self.name = name
        self.image_size = model.config.image_size
        self.accepts = ("expression", "reference") if model.config.controller and critic is not None else ("expression",)
        if not model.config.controller:
            self.paper = "CAAE-style baseline of ExprGAN's Fig. 2 (Zhang et al. 2017: the one-hot label into the decoder)"
            self.expressions = CLASSES

    def modules(self) -> dict[str, nn.Module]:
        found = {"model": self.model, "critic": self.critic, "classifier": self.classifier}
        return {name: module for name, module in found.items() if module is not None}

    def expression_codes(self, names: list[str], intensities: Tensor) -> Tensor:
        """The decoder condition for expression names at intensities ``[B]``."""
        device = intensities.device
        neutral = torch.tensor([name == "neutral" for name in names], device=device)
        labels = _class_indices([CLASSES[0] if name == "neutral" else name for name in names], device)
        if not self.model.config.controller:
            return intensities[:, None] * self.model.label_code(labels)
        levels = torch.where(neutral, torch.zeros_like(intensities), intensities * self.model.config.code_dim)
        return self.model.level_code(labels, levels)

    def reference_codes(self, references: Tensor) -> tuple[Tensor, Tensor]:
        """Fig. 4: (labels ``[B]`` from the expression classifier, Q's code ``[B, K*d]`` given that label)."""
        from facelib.conventions import EXPRESSIONS

        logits = self.classifier(references)  # over facelib.EXPRESSIONS
        columns = torch.tensor([EXPRESSIONS.index(name) for name in CLASSES], device=logits.device)
        labels = logits[:, columns].argmax(1)
        _, code = self.critic.image(references, labels)
        return labels, code

    def _edit(self, images: Tensor, target: Target) -> EditResult:
        batch = len(images)
        t = target.intensities(batch).to(images)
        identity = self.model.encode(images)
        if target.kind == "reference":
            _, code = self.reference_codes(target.reference)
            code = -1 + t[:, None] * (code + 1)  # t = 0: every element -1 (neutral)
        else:
            code = self.expression_codes(target.expressions(batch), t)
        return EditResult(output=self.model.decode(identity, code, images), latent=torch.cat([identity, code], 1))


def load_exprgan_editor(device="cpu") -> ExprGANEditor:
    """``facelib.load_editor("exprgan")``: the shipped G, D_img's Q and facelib's expression classifier."""
    from facelib.pretrained import load_pretrained

    editor = ExprGANEditor(load_pretrained("exprgan"), load_pretrained("exprgan_critic"),
                           load_pretrained("expression_classifier"))
    return editor.to(device)


def load_caae_editor(device="cpu") -> ExprGANEditor:
    """``facelib.load_editor("exprgan_caae")``: the CAAE-style baseline (no controller, Q or D_img)."""
    from facelib.pretrained import load_pretrained

    return ExprGANEditor(load_pretrained("exprgan_caae"), name="exprgan_caae").to(device)
