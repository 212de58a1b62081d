"""FVAE: Semantic Facial Expression Editing using Autoencoded Flow (Yeh et al. 2016).

Paper: Yeh, Liu, Goldman, Agarwala, arXiv:1611.09961, 2016 (docs/reference_notes.md).

A VAE whose decoder does not paint pixels: it predicts a dense *flow field* and
builds the output by sampling the source image along it (paper Sec. 3, Fig. 3).

- :class:`FVAE` - encoder f(T) -> (mu, logvar) of a spatial latent (the paper's central
  4x4 block), decoder g(S, Z) that receives the source features by concatenation
  (Fig. 3's blue arrows) and outputs a backward flow in pixels plus the warped source.
- :class:`PixelVAE` - the paper's "VAE" baseline (Sec. 6.1): the same architecture with
  the last layer predicting RGB directly.
- :class:`ConfidenceNet` - the confidence mask network M(S, Z) of Sec. 3.2 (Eq. 7-8),
  trained after the FVAE with the FVAE frozen.
- :class:`FVAEEditor` - Algorithm 1 behind the editor interface (``facelib.load_editor("fvae")``).

All three networks share :class:`FVAEConfig`; ``FVAEConfig()`` is the 64x64 CPU configuration
and ``FVAEConfig.paper()`` the paper's 128x128 one (4x4x1024 latent). Images are ``[B, 3, H, W]``
in ``[-1, 1]``; flows are backward pixel displacements ``[B, 2, H, W]`` (:mod:`facelib.conventions`).

Where the paper is computed (file: function):

=================================  =========================================================
Eq. 1 (the objective)              facelib/train/fvae.py: FVAETrainingTask.losses
Eq. 2 (reparameterisation)         facelib/models/fvae.py: _LatentVariableModel.reparameterize
Eq. 3 (KL prior)                   facelib/losses.py: fvae_kl
Eq. 4 (reconstruction)             facelib/losses.py: fvae_reconstruction
Eq. 5 (bilinear sampling)          facelib/warp.py: bilinear_sample (fast path: warp), in FVAE.decode
Eq. 6 (flow coherence)             facelib/losses.py: fvae_flow_coherence
Eq. 7-8 (confidence label, loss)   facelib/losses.py: fvae_confidence_label, fvae_confidence_loss;
                                   facelib/train/fvae.py: ConfidenceTrainingTask.losses
Algorithm 1 (expression edit)      facelib/models/fvae.py: FVAEEditor._edit; lines 2-3 (the
                                   expression latents): facelib/train/fvae.py: expression_latents
Algorithm 2 (interpolation)        facelib/models/fvae.py: interpolate, confidence_blend
Sec. 4.3 (flow upsampling)         facelib/models/fvae.py: flow_upsample; Editor.edit_highres
Sec. 5.2 (data preparation)        facelib/train/fvae.py: reinhard_color_transfer, random_horizontal_flip,
                                   ExpressionPairs
Sec. 5.3 (architecture)            facelib/models/fvae.py: FVAE, PixelVAE, ConfidenceNet;
                                   facelib/models/blocks.py: ConvEncoder, SkipDecoder
Sec. 5.4 (optimisation)            facelib/train/fvae.py: FVAETrainConfig, train_recipe
Table 1, Fig. 6-7 (measurements)   facelib/evaluation/fvae.py
=================================  =========================================================
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from facelib.conventions import check_image_shape, check_images
from facelib.editors import Editor, EditResult, Target
from facelib.models.blocks import ConvEncoder, SkipDecoder, init_truncated_normal
from facelib.warp import upsample_flow, warp, warp_kernel

#: The SynthFaces preset the FVAE is trained and measured on (Multi-PIE's six expressions, as in the paper).
PRESET = "multipie"

__all__ = [
    "FVAEConfig", "FVAE", "PixelVAE", "ConfidenceNet", "FVAEEditor", "confidence_blend", "interpolate",
    "flow_upsample", "load_fvae_editor", "load_pixel_vae_editor",
]


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
        check_image_shape(target, "target", size=self.config.image_size)
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
        check_image_shape(source, "source", size=self.config.image_size)
        raw = self.decoder(source, self.source_encoder(source), z)  # [B, 2, H, W]
        # Sec. 5.3: the flow head ends in tanh because it outputs normalised coordinates.
        # Departure: tanh gives the displacement from the pixel's own normalised position rather than
        # the absolute position, so a zero output is the identity warp and training starts from it.
        normalised = self.config.max_flow * torch.tanh(raw)  # [B, 2, H, W]; 1 = half the image side
        return normalised * (self.config.image_size - 1) / 2  # [B, 2, H, W] pixels

    def decode(self, source: torch.Tensor, z: torch.Tensor) -> dict[str, torch.Tensor]:
        """g(S, Z): the flow and the source warped by it."""
        flow = self.flow(source, z)
        # FVAE Eq. 5 (bilinear sampling of S at x + F(x)) through the grid_sample fast path (facelib.warp's
        # warp_kernel: warp without value checks), equal to the written-out bilinear_sample within 1e-5.
        return {"output": warp_kernel(source, flow), "flow": flow}


class PixelVAE(_LatentVariableModel):
    """The paper's "VAE" baseline (Sec. 6.1): the FVAE architecture, last layer predicting RGB.

    ``decode`` returns ``{"output": [B, 3, H, W]}`` (tanh, in [-1, 1]).
    """

    out_channels = 3

    def decode(self, source: torch.Tensor, z: torch.Tensor) -> dict[str, torch.Tensor]:
        check_image_shape(source, "source", size=self.config.image_size)
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
        check_image_shape(source, "source", size=self.config.image_size)
        return self.decoder(source, self.source_encoder(source), z)  # [B, 1, H, W] logits

    def mask(self, source: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """The confidence mask M in [0, 1], ``[B, 1, H, W]``."""
        return torch.sigmoid(self(source, z))




# ----------------------------------------------------------------------------------------
# Editing: Algorithm 1 (the editor), Algorithm 2 (interpolation), Sec. 4.3 (flow upsampling)
# ----------------------------------------------------------------------------------------
class FVAEEditor(Editor):
    """Algorithm 1 (Expression Edit) as an :class:`facelib.editors.Editor`, for the FVAE or the pixel VAE.

    ``latents``: Algorithm 1's averages Z_label of each expression (lines 2-3), stored with the
    checkpoint by the training recipe (``facelib.train.fvae.expression_latents``). An expression
    target moves Z(S) along Z_target - Z_source (line 5) with the intensity as the paper's i/K:
    below 0 suppresses, above 1 magnifies (Sec. 6.1). Z_source is the average of the known source
    expression, or Z(S) itself when it is unknown (Sec. 6.1's out-of-dataset variant, a user's
    photo). A reference target takes Z_target = Z(R): at intensity 1 and R = the true target this
    is Table 1's "true latent" setting. Extras: ``flow`` (FVAE only) and ``latent`` (Z_edit).
    """

    accepts = ("expression", "reference")
    intensity_range = (-1.0, 2.0)

    def __init__(self, model: _LatentVariableModel, latents: dict[str, torch.Tensor], *, name: str = "fvae",
                 paper: str = "FVAE (Yeh et al. 2016), Algorithm 1"):
        shape = (model.config.latent_channels, model.config.latent_size, model.config.latent_size)
        for expression, z in latents.items():
            if tuple(z.shape) != shape:
                raise ValueError(f"the latent of {expression!r} has shape {list(z.shape)}, the model's is {list(shape)}")
        self.model, self.name, self.paper = model.eval(), name, paper
        self.latents = {expression: z.float() for expression, z in latents.items()}
        self.expressions = tuple(self.latents)
        self.image_size = model.config.image_size

    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.model}

    def check_target(self, target: Target, batch: int) -> Target:
        target = super().check_target(target, batch)
        for name in target.source_expressions(batch) or ():
            if name not in self.latents:
                raise ValueError(f"{self.name} has no latent for the source expression {name!r}; it knows "
                                 f"{list(self.expressions)} (or pass source_expression=None)")
        return target

    def _stacked(self, names: list[str], like: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.latents[name] for name in names]).to(like)  # [B, C, h, w]

    def _edit(self, images: torch.Tensor, target: Target) -> EditResult:
        batch = len(images)
        z_of_source = self.model.latent(images)  # Z(S), [B, C, h, w]
        if target.kind == "reference":
            z_target, z_source = self.model.latent(target.reference), z_of_source
        else:
            # Algorithm 1, lines 2-3: the averaged latents of the target (and the source) label
            z_target = self._stacked(target.expressions(batch), z_of_source)
            sources = target.source_expressions(batch)
            z_source = z_of_source if sources is None else self._stacked(sources, z_of_source)
        factor = target.intensities(batch).to(z_of_source).view(-1, 1, 1, 1)
        # FVAE Algorithm 1, line 5: Z_edit = i (Z_target - Z_source) / K + Z(S), with i/K = the intensity
        z_edit = factor * (z_target - z_source) + z_of_source
        decoded = self.model.decode(images, z_edit)
        return EditResult(output=decoded["output"], flow=decoded.get("flow"), latent=z_edit)


def confidence_blend(outputs: list[torch.Tensor], mask_logits: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Blend outputs of several sources by their normalised confidence masks (Algorithm 2, line 10).

    The paper prints exp(M1) / exp(M1 + M2); the intended normaliser is exp(M1) + exp(M2), a
    softmax over the two masks. We take that softmax over the mask *logits* (M = sigmoid(logit)):
    with M itself in [0, 1] the weights could never leave [0.27, 0.73] and a confident source
    could not win a region outright.

    ``outputs``: N tensors ``[B, 3, H, W]``; ``mask_logits``: N tensors ``[B, 1, H, W]``.
    Returns ``(blended [B, 3, H, W], weights [N, B, 1, H, W])``.
    """
    if len(outputs) != len(mask_logits) or len(outputs) < 2:
        raise ValueError(f"need the same number (>= 2) of outputs and masks, got {len(outputs)} and {len(mask_logits)}")
    # FVAE Algorithm 2, line 10 (typo corrected): w_n = exp(M_n) / sum_m exp(M_m)
    weights = torch.softmax(torch.stack(list(mask_logits)), dim=0)  # [N, B, 1, H, W]
    return (weights * torch.stack(list(outputs))).sum(0), weights


@torch.no_grad()
def interpolate(fvae: FVAE, mask_net: ConfidenceNet, source1: torch.Tensor, source2: torch.Tensor,
                factors: list[float]) -> dict[str, torch.Tensor]:
    """Algorithm 2 (Expression Interpolate) between two photos of one person, at each of ``factors``.

    Z_edit walks from Z(S1) to Z(S2) (the paper's i / K); at each step both sources are warped
    with g(S_n, Z_edit) and blended by the softmax of their confidence masks M(S_n, Z_edit).
    Returns ``{"outputs": [K, B, 3, H, W] (blended), "from_source1", "from_source2":
    [K, B, 3, H, W], "weight1": [K, B, 1, H, W] (the weight of source 1)}``.
    """
    size = fvae.config.image_size
    source1, source2 = check_images(source1, "source1", size=size), check_images(source2, "source2", size=size)
    if source1.shape != source2.shape:
        raise ValueError(f"source1 and source2 must have the same shape, got {list(source1.shape)} and {list(source2.shape)}")
    fvae.eval(), mask_net.eval()
    # Algorithm 2, lines 2-3: Z1 = Z(S1), Z2 = Z(S2)
    z1, z2 = fvae.latent(source1), fvae.latent(source2)
    steps: dict[str, list[torch.Tensor]] = {"outputs": [], "from_source1": [], "from_source2": [], "weight1": []}
    for factor in factors:
        # FVAE Algorithm 2, line 5: Z_edit = i (Z2 - Z1) / K + Z1
        z_edit = factor * (z2 - z1) + z1
        # Algorithm 2, lines 6-9: O_n = g(S_n, Z_edit), M_n = M(S_n, Z_edit)
        out1, out2 = fvae.decode(source1, z_edit)["output"], fvae.decode(source2, z_edit)["output"]
        blended, weights = confidence_blend([out1, out2], [mask_net(source1, z_edit), mask_net(source2, z_edit)])
        for key, value in zip(steps, (blended, out1, out2, weights[0])):
            steps[key].append(value)
    return {key: torch.stack(values) for key, values in steps.items()}


def flow_upsample(highres_source: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Sec. 4.3: upsample a low-resolution flow ``[B, 2, h, w]`` to the high-resolution source
    ``[B, 3, H, W]`` (vectors rescaled with the size, ``facelib.warp.upsample_flow``) and sample it there."""
    highres_source = check_images(highres_source, "highres_source")
    return warp(highres_source, upsample_flow(flow, tuple(highres_source.shape[-2:])))


def _load_latent_editor(name: str, device) -> FVAEEditor:
    """A shipped FVAE or pixel VAE with the expression latents its checkpoint stores."""
    from facelib.pretrained import load_pretrained, pretrained_metadata

    model = load_pretrained(name, device=device)
    stored = pretrained_metadata(name).get("extra", {}).get("expression_latents")
    if not stored:
        raise ValueError(f"the shipped {name!r} checkpoint stores no expression latents; re-ship it with "
                         f"python -m facelib train {name} --ship")
    latents = {expression: torch.tensor(values).view(stored["shape"]) for expression, values in stored["values"].items()}
    return FVAEEditor(model, latents, name=name,
                      paper="FVAE (Yeh et al. 2016), " + ("Algorithm 1" if name == "fvae" else "Sec. 6.1 'VAE' baseline"))


def load_fvae_editor(device="cpu") -> FVAEEditor:
    """``facelib.load_editor("fvae")``: the shipped FVAE with its expression latents."""
    return _load_latent_editor("fvae", device)


def load_pixel_vae_editor(device="cpu") -> FVAEEditor:
    """``facelib.load_editor("fvae_pixel_vae")``: the shipped pixel VAE with its expression latents."""
    return _load_latent_editor("fvae_pixel_vae", device)
