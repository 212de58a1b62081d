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

All three share :class:`Config`; ``Config()`` is the 64x64 CPU configuration and
``Config.paper()`` the paper's 128x128 one (4x4x1024 latent). Images are ``[B, 3, H, W]``
in ``[-1, 1]``; flows are backward pixel displacements ``[B, 2, H, W]`` (DESIGN.md).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from facelib.train import TrainingTask
from facelib.warp import warp

__all__ = [
    "Config", "FVAE", "PixelVAE", "ConfidenceNet", "check_images",
    "reinhard_color_transfer", "random_horizontal_flip", "ExpressionPairs",
    "TrainConfig", "FVAETrainingTask", "ConfidenceTrainingTask", "train_recipe", "train_pixel_vae_recipe",
    "measure_table1", "measure_interpolation", "measure_upsampling",
]


@dataclass
class Config:
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
    def paper(cls) -> "Config":
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
            "resize it (facelib.edit resizes with a warning) or build a model with a matching Config.image_size"
        )


def _conv_bn_relu(in_channels: int, out_channels: int, kernel: int, stride: int) -> nn.Sequential:
    """Conv + batch norm + ReLU: every layer except the output one (Sec. 5.3)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def _init_weights(module: nn.Module) -> None:
    """Sec. 5.3: all weights from a truncated Gaussian with standard deviation 0.01."""
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            nn.init.trunc_normal_(layer.weight, std=0.01, a=-0.02, b=0.02)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


class ConvEncoder(nn.Module):
    """Stride-2 convolutions, channels doubling as the size halves (DCGAN style, Sec. 5.3).

    Returns the feature map of every stage, finest first, so the decoder can concatenate them.
    The first layer is 5x5, the others 3x3 (Sec. 5.3).
    """

    def __init__(self, config: Config):
        super().__init__()
        channels = config.stage_channels()
        layers, in_channels = [], 3
        for i, out_channels in enumerate(channels):
            layers.append(_conv_bn_relu(in_channels, out_channels, 5 if i == 0 else 3, stride=2))
            in_channels = out_channels
        self.stages = nn.ModuleList(layers)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        features, x = [], images
        for stage in self.stages:
            x = stage(x)
            features.append(x)  # [B, C_i, H / 2^(i+1), W / 2^(i+1)]
        return features


class SkipDecoder(nn.Module):
    """g(S, Z): from the latent block up to full resolution by nearest upsampling + 3x3 conv,
    concatenating the source features of the same size at every scale (Fig. 3's blue arrows).

    The last layer is a 5x5 convolution to ``out_channels`` without batch norm or ReLU (Sec. 5.3);
    the caller applies its own output nonlinearity.
    """

    def __init__(self, config: Config, out_channels: int):
        super().__init__()
        enc = config.stage_channels()  # source feature channels, finest first
        self.bottom = _conv_bn_relu(config.latent_channels + enc[-1], enc[-1], 3, stride=1)
        ups, in_channels = [], enc[-1]
        # Upsample from the latent size to image_size / 2, concatenating source features on the way.
        for skip_channels, out in zip(enc[-2::-1], enc[-2::-1]):
            ups.append(_conv_bn_relu(in_channels + skip_channels, out, 3, stride=1))
            in_channels = out
        self.ups = nn.ModuleList(ups)
        # The final upsample to full size meets the source image itself.
        self.head = nn.Conv2d(in_channels + 3, out_channels, 5, padding=2)

    def forward(self, source: torch.Tensor, source_features: list[torch.Tensor], z: torch.Tensor) -> torch.Tensor:
        x = self.bottom(torch.cat([z, source_features[-1]], dim=1))  # [B, C, 4, 4]
        for up, skip in zip(self.ups, source_features[-2::-1]):
            x = F.interpolate(x, scale_factor=2, mode="nearest")
            x = up(torch.cat([x, skip], dim=1))
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.head(torch.cat([x, source], dim=1))  # [B, out_channels, H, W]


class _LatentVariableModel(nn.Module):
    """Shared encoder f(T), Eq. 2 and decoder g(S, Z) of the FVAE and the pixel VAE."""

    out_channels: int = 2
    config_class = Config

    def __init__(self, config: Config | None = None):
        super().__init__()
        self.config = config if config is not None else Config()
        self.target_encoder = ConvEncoder(self.config)
        self.to_latent = nn.Conv2d(self.config.stage_channels()[-1], 2 * self.config.latent_channels, 3, padding=1)
        self.source_encoder = ConvEncoder(self.config)
        self.decoder = SkipDecoder(self.config, self.out_channels)
        _init_weights(self)
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

    config_class = Config

    def __init__(self, config: Config | None = None):
        super().__init__()
        self.config = config if config is not None else Config()
        self.source_encoder = ConvEncoder(self.config)
        self.decoder = SkipDecoder(self.config, 1)
        _init_weights(self)

    def forward(self, source: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        check_images(source, self.config.image_size, "source")
        return self.decoder(source, self.source_encoder(source), z)  # [B, 1, H, W] logits

    def mask(self, source: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """The confidence mask M in [0, 1], ``[B, 1, H, W]``."""
        return torch.sigmoid(self(source, z))


# ----------------------------------------------------------------------------------------
# Data preparation (Sec. 5.2)
# ----------------------------------------------------------------------------------------
# Reinhard et al. 2001's colour space: RGB -> LMS -> log10 -> l-alpha-beta (decorrelated axes).
_RGB_TO_LMS = torch.tensor([[0.3811, 0.5783, 0.0402], [0.1967, 0.7244, 0.0782], [0.0241, 0.1288, 0.8444]])
_LOG_LMS_TO_LAB = torch.diag(torch.tensor([3.0, 6.0, 2.0]).rsqrt()) @ torch.tensor(
    [[1.0, 1.0, 1.0], [1.0, 1.0, -2.0], [1.0, -1.0, 0.0]]
)


def _mix(matrix: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    return torch.einsum("ij,bjhw->bihw", matrix.to(images), images)


def reinhard_color_transfer(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Sec. 5.2 (the paper's [25], Reinhard et al. 2001): move the colours of S toward T.

    Each image pair's l-alpha-beta channels of the source get the target's mean and standard
    deviation; images ``[B, 3, H, W]`` in ``[-1, 1]``; returns the adjusted source, clamped.
    """
    if source.shape != target.shape:
        raise ValueError(f"source and target must have the same shape, got {list(source.shape)} and {list(target.shape)}")
    eps = 1e-3  # keeps log10 finite on black pixels

    def to_lab(images):
        lms = _mix(_RGB_TO_LMS, (images + 1) / 2).clamp_min(eps)
        return _mix(_LOG_LMS_TO_LAB, torch.log10(lms))

    src, tgt = to_lab(source), to_lab(target)
    src_mean, src_std = src.mean((2, 3), keepdim=True), src.std((2, 3), keepdim=True)
    tgt_mean, tgt_std = tgt.mean((2, 3), keepdim=True), tgt.std((2, 3), keepdim=True)
    matched = (src - src_mean) * (tgt_std / src_std.clamp_min(1e-6)) + tgt_mean
    lms = 10 ** _mix(torch.linalg.inv(_LOG_LMS_TO_LAB), matched)
    rgb = _mix(torch.linalg.inv(_RGB_TO_LMS), lms)
    return (rgb * 2 - 1).clamp(-1, 1)


def random_horizontal_flip(*images: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, ...]:
    """Sec. 5.2's augmentation: flip each pair (same decision for S and T) with probability 1/2."""
    flip = torch.rand(len(images[0]), generator=generator) < 0.5
    flip = flip.to(images[0].device).view(-1, 1, 1, 1)
    return tuple(torch.where(flip, x.flip(-1), x) for x in images)


class ExpressionPairs(torch.utils.data.Dataset):
    """Sec. 5.2's training pairs: every ordered (S, T) pair of expressions of each identity.

    Built from a single-image dataset (``SynthFaces(..., pairs=False)``): its images are rendered
    once, then pairs are indexed, so an epoch costs no rendering. Training needs no true flow;
    evaluation uses ``SynthFaces(..., pairs=True)``, which has it. Items: ``source``, ``target``
    ``[3, S, S]``, ``identity``, ``source_emotion``, ``target_emotion``.
    """

    def __init__(self, singles, batch_size: int = 128, progress: bool = True):
        loader = torch.utils.data.DataLoader(singles, batch_size=batch_size, shuffle=False)
        parts = [(b["image"], b["identity"], b["emotion"])
                 for b in tqdm(loader, desc="rendering training images", disable=not progress)]
        self.images = torch.cat([p[0] for p in parts])  # [N, 3, S, S]
        self.identity = torch.cat([p[1] for p in parts])  # [N]
        self.emotion = torch.cat([p[2] for p in parts])  # [N]
        same = (self.identity[:, None] == self.identity[None, :]) & ~torch.eye(len(self.identity), dtype=torch.bool)
        self.pairs = same.nonzero()  # [P, 2] (source index, target index)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitems__(self, indices) -> list[dict[str, torch.Tensor]]:
        pairs = self.pairs[torch.as_tensor(indices, dtype=torch.long)]
        return [{"source": self.images[i], "target": self.images[j], "identity": self.identity[i],
                 "source_emotion": self.emotion[i], "target_emotion": self.emotion[j]} for i, j in pairs.tolist()]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.__getitems__([index])[0]


# ----------------------------------------------------------------------------------------
# Training (Sec. 5.4): Eq. 1 for the FVAE and the pixel VAE, then Eq. 7-8 for the mask network
# ----------------------------------------------------------------------------------------
@dataclass
class TrainConfig:
    """Sec. 5.4's optimisation settings (CPU batch size; the paper uses 64)."""

    lambda_prior: float = 0.003  # lambda_1 of Eq. 1
    lambda_flow: float = 0.001  # lambda_2 of Eq. 1
    coherence_alpha: float = 10.0  # alpha of Eq. 6 (the paper does not give it)
    lr: float = 3e-4
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 5.0  # clipping by value at +-5
    color_transfer: bool = True
    flip: bool = True
    confidence_beta: float | None = None  # beta of Eq. 7; None: the losses module's default


class _EarlyStoppingTask(TrainingTask):
    """One Adam step on ``losses(...)["loss"]`` with gradients clipped by value (Sec. 5.4), and
    early stopping (Sec. 5.4): each validation compares the loss on a fixed held-out batch with
    the best so far and keeps the best weights in ``best_state``; those are what ships.
    """

    module_name = "model"

    def __init__(self, train: TrainConfig, dataset, val_batch: dict[str, torch.Tensor]):
        self.train, self.dataset, self.val_batch = train, dataset, val_batch
        self.best_val, self.best_step, self.best_state = math.inf, -1, None

    def losses(self, module, source: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError  # each task defines its objective

    def augment(self, source: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Sec. 5.2: horizontal flips of each pair."""
        return random_horizontal_flip(source, target) if self.train.flip else (source, target)

    def training_step(self, batch, step):
        source, target = self.augment(batch["source"], batch["target"])
        module = self.modules[self.module_name]
        terms = self.losses(module, source, target)
        optimizer = self.optimizers["adam"]
        optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        torch.nn.utils.clip_grad_value_(module.parameters(), self.train.grad_clip)
        optimizer.step()
        return {name: value.detach() for name, value in terms.items()}

    def validate(self, step):
        module = self.unwrap(self.module_name)
        batch = {k: v.to(self.device) for k, v in self.val_batch.items()}
        terms = self.losses(module, batch["source"], batch["target"])
        if float(terms["loss"]) < self.best_val:
            self.best_val, self.best_step = float(terms["loss"]), step
            self.best_state = {k: v.detach().clone() for k, v in module.state_dict().items()}
        return {f"val_{name}": float(value) for name, value in terms.items()}


class FVAETrainingTask(_EarlyStoppingTask):
    """Eq. 1: L = L_reconstruct + lambda_1 L_prior + lambda_2 L_flow, for the FVAE or the pixel VAE
    (which has no flow, so no L_flow)."""

    def __init__(self, model_class, config: Config, train: TrainConfig, dataset, val_batch: dict[str, torch.Tensor]):
        super().__init__(train, dataset, val_batch)
        self.model_class, self.config = model_class, config

    def build(self, device):
        model = self.model_class(self.config).to(device)
        return {"model": model}, {"adam": torch.optim.Adam(model.parameters(), lr=self.train.lr, betas=self.train.betas)}

    def augment(self, source, target):
        if self.train.color_transfer:
            # Sec. 5.2: colour transfer of S toward T (Reinhard et al.), before flipping the pair.
            source = reinhard_color_transfer(source, target)
        return super().augment(source, target)

    def losses(self, model, source, target):
        from facelib import losses

        out = model(source, target)
        terms = {
            # FVAE Eq. 4: reconstruction of T from S
            "reconstruct": losses.fvae_reconstruction(out["output"], target),
            # FVAE Eq. 3: KL divergence of the posterior from N(0, I)
            "prior": losses.fvae_kl(out["mu"], out["logvar"]),
        }
        if "flow" in out:
            # FVAE Eq. 6: flow coherence, 7x7 neighbourhood, bilateral weights on the target's colours
            terms["flow"] = losses.fvae_flow_coherence(out["flow"], target, alpha=self.train.coherence_alpha, window=7)
        # FVAE Eq. 1: L = L_reconstruct + lambda_1 L_prior + lambda_2 L_flow
        terms["loss"] = (terms["reconstruct"] + self.train.lambda_prior * terms["prior"]
                         + self.train.lambda_flow * terms.get("flow", 0.0))
        return terms


class ConfidenceTrainingTask(_EarlyStoppingTask):
    """Sec. 3.2: train M(S, Z(T)) on the frozen FVAE's errors with Eq. 7 labels and Eq. 8 cross-entropy."""

    module_name = "mask"

    def __init__(self, fvae: FVAE, train: TrainConfig, dataset, val_batch: dict[str, torch.Tensor]):
        super().__init__(train, dataset, val_batch)
        self.fvae = fvae

    def build(self, device):
        self.fvae.to(device).eval().requires_grad_(False)
        mask_net = ConfidenceNet(self.fvae.config).to(device)
        return {"mask": mask_net}, {"adam": torch.optim.Adam(mask_net.parameters(), lr=self.train.lr, betas=self.train.betas)}

    def losses(self, mask_net, source, target):
        from facelib import losses

        with torch.no_grad():
            z = self.fvae.latent(target)
            output = self.fvae.decode(source, z)["output"]
            beta = {} if self.train.confidence_beta is None else {"beta": self.train.confidence_beta}
            # FVAE Eq. 7: y = exp(-||T - g(S, Z(T))||^2 / beta), per pixel
            label = losses.fvae_confidence_label(output, target, **beta)
        # FVAE Eq. 8: per-pixel binary cross-entropy between M(S, Z(T)) and y
        loss = losses.fvae_confidence_loss(mask_net(source, z), label)
        return {"loss": loss, "label_mean": label.mean()}


# ----------------------------------------------------------------------------------------
# Recipes: `python -m facelib train fvae` (FVAE + confidence network), `... fvae_pixel_vae`
# ----------------------------------------------------------------------------------------
PRESET = "multipie"
FVAE_STEPS = 1500  # shipped run: about 20 min on one busy CPU core
MASK_STEPS = 300
PIXEL_VAE_STEPS = 1500
BATCH_SIZE = 32  # the paper's 64 halved for CPU
SMOKE_STEPS = 4


def _pairs(split: str, size: int):
    """Held-out pairs of the multipie preset with their true flow and visible mask."""
    from facelib.data import SynthFaces

    return SynthFaces(preset=PRESET, split=split, size=size, pairs=True, seed=0)


def _training_pairs(size: int, smoke: bool) -> ExpressionPairs:
    """All expression pairs per identity of the multipie training identities (Sec. 5.2)."""
    from facelib.data import SynthFaces

    singles = SynthFaces(preset=PRESET, split="train", size=size, seed=0)
    if smoke:
        singles = torch.utils.data.Subset(singles, range(12))  # two identities
    return ExpressionPairs(singles)


def _first_items(dataset, count: int) -> dict[str, torch.Tensor]:
    """The first ``count`` items of a dataset, collated into one batch."""
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, range(min(count, len(dataset)))),
                                         batch_size=count, shuffle=False)
    return next(iter(loader))


def _fit(task, *, steps: int, seed: int, out_dir, device: str, smoke: bool, name: str):
    """Run a task with facelib's Trainer and restore the weights of its best validation (early stopping)."""
    from facelib.train import Trainer

    trainer = Trainer(task, steps=steps, batch_size=4 if smoke else BATCH_SIZE, seed=seed, out_dir=out_dir / name,
                      device=device, log_every=1 if smoke else 10, validate_every=max(1, steps // 20),
                      checkpoint_every=0)
    result = trainer.fit()
    module = task.unwrap(task.module_name)
    if task.best_state is not None:
        module.load_state_dict(task.best_state)
    return module.eval(), result


def _steps(default: int, steps: int | None, smoke: bool) -> int:
    return SMOKE_STEPS if smoke else (default if steps is None else steps)


def train_recipe(*, steps: int | None, seed: int, out_dir, device: str, smoke: bool) -> dict:
    """Recipe ``fvae``: the FVAE with Eq. 1, then its confidence network with Eq. 7-8 (FVAE frozen)."""
    from pathlib import Path

    from facelib.checkpoint import save_model

    out_dir = Path(out_dir)
    size = Config().image_size
    train_set = _training_pairs(size, smoke)
    val_batch = _first_items(_pairs("val", size), 8 if smoke else 128)
    schedule = TrainConfig()
    fvae_steps = _steps(FVAE_STEPS, steps, smoke)
    fvae_task = FVAETrainingTask(FVAE, Config(), schedule, train_set, val_batch)
    fvae, _ = _fit(fvae_task, steps=fvae_steps, seed=seed, out_dir=out_dir, device=device, smoke=smoke, name="fvae")
    mask_steps = _steps(MASK_STEPS, None if steps is None else max(1, steps // 5), smoke)
    mask_task = ConfidenceTrainingTask(fvae, schedule, train_set, val_batch)
    mask_net, _ = _fit(mask_task, steps=mask_steps, seed=seed, out_dir=out_dir, device=device, smoke=smoke, name="mask")
    fvae_stem = save_model(fvae.cpu(), out_dir / "fvae", extra={"best_val_step": fvae_task.best_step})
    mask_stem = save_model(mask_net.cpu(), out_dir / "fvae_confidence", extra={"best_val_step": mask_task.best_step})
    table = measure_table1(fvae, mask_net=mask_net, split="val" if smoke else "test", n=8 if smoke else 256)
    metrics = {row.method: row for row in table.itertuples()}
    fvae_row, conf_row = metrics["FVAE (true latent)"], metrics["FVAE + confidence (true latent, 2 sources)"]
    return {
        "checkpoints": {"fvae": fvae_stem, "fvae_confidence": mask_stem},
        "metrics": {
            "fvae": {"psnr_visible_db": float(fvae_row.psnr_visible_db), "psnr_db": float(fvae_row.psnr_db),
                     "flow_epe_visible_px": float(fvae_row.flow_epe_visible_px), "n_test_pairs": table.attrs["n"]},
            "fvae_confidence": {"psnr_visible_db": float(conf_row.psnr_visible_db), "psnr_db": float(conf_row.psnr_db)},
        },
        "preset": PRESET,
        "steps": fvae_steps + mask_steps,
    }


def train_pixel_vae_recipe(*, steps: int | None, seed: int, out_dir, device: str, smoke: bool) -> dict:
    """Recipe ``fvae_pixel_vae``: the paper's "VAE" baseline, trained with Eq. 1 minus the flow term."""
    from pathlib import Path

    from facelib.checkpoint import save_model

    out_dir = Path(out_dir)
    size = Config().image_size
    val_batch = _first_items(_pairs("val", size), 8 if smoke else 128)
    total = _steps(PIXEL_VAE_STEPS, steps, smoke)
    task = FVAETrainingTask(PixelVAE, Config(), TrainConfig(), _training_pairs(size, smoke), val_batch)
    model, _ = _fit(task, steps=total, seed=seed, out_dir=out_dir, device=device, smoke=smoke, name="pixel_vae")
    stem = save_model(model.cpu(), out_dir / "fvae_pixel_vae", extra={"best_val_step": task.best_step})
    table = measure_table1(None, pixel_vae=model, split="val" if smoke else "test", n=8 if smoke else 256,
                           optical_flow_method=None)
    row = next(table[table.method == "Pixel VAE (true latent)"].itertuples())
    return {
        "checkpoints": {"fvae_pixel_vae": stem},
        "metrics": {"fvae_pixel_vae": {"psnr_visible_db": float(row.psnr_visible_db), "psnr_db": float(row.psnr_db),
                                       "sharpness": float(row.sharpness)}},
        "preset": PRESET,
        "steps": total,
    }


# ----------------------------------------------------------------------------------------
# Measuring: the paper's Table 1 on held-out identities, plus flow EPE and sharpness
# ----------------------------------------------------------------------------------------
def _other_expression_source(batch: dict[str, torch.Tensor], size: int) -> torch.Tensor:
    """A second photo of each source's person with a third expression (neither source nor target).

    Rendered with SynthFaces at the batch's identity, yaw and the preset's full intensity, so
    the confidence blend can pick, per pixel, whichever photo explains the target better.
    """
    from facelib.data import get_preset, render, emotion_aus
    from facelib.conventions import EXPRESSIONS

    names = [name for name in get_preset(PRESET).expressions]
    third = []
    for src, tgt in zip(batch["source_emotion"].tolist(), batch["target_emotion"].tolist()):
        candidates = [EXPRESSIONS.index(n) for n in names if EXPRESSIONS.index(n) not in (src, tgt)]
        third.append(candidates[(src + tgt) % len(candidates)])
    identity = batch["identity"].long()
    aus = torch.cat([emotion_aus(int(e), 5.0, identity=identity[i:i + 1]) for i, e in enumerate(third)])
    return render(identity, aus, batch["yaw"].float(), size=size)["image"]


@torch.no_grad()
def measure_table1(
    fvae: FVAE | None,
    *,
    mask_net: ConfidenceNet | None = None,
    pixel_vae: PixelVAE | None = None,
    split: str = "test",
    n: int = 256,
    batch_size: int = 64,
    optical_flow_method: str | None = "dis",
    average_flow=None,
    dataset=None,
    progress: bool = True,
):
    """Table 1 of the paper on held-out identities: PSNR with the true target's latent.

    One row per method with PSNR over the whole image and over ``visible`` (the target pixels
    the true flow explains), sharpness (variance of the Laplacian) and the flow's end-point
    error against the ground truth over ``visible`` (flow methods only). Rows:

    - FVAE (true latent): g(S, Z(T));
    - FVAE + confidence: g(S, Z(T)) and g(S2, Z(T)) from a second photo S2 of the person
      (a third expression), blended by the softmax of their confidence masks (Algorithm 2's blend);
    - Pixel VAE (true latent): the paper's VAE row;
    - optical flow S -> T (OpenCV DIS or Farneback; Table 1's EpicFlow analogue), computed with
      the true target, as in the paper;
    - with ``average_flow`` (a fitted ``facelib.models.baselines.AverageFlow``): Sec. 6.1's editing
      baseline, the training identities' average flow for the pair's two expressions;
    - oracle: S warped by the ground-truth flow, the ceiling of any warp-only method;
    - no edit (the source itself) and the real targets' sharpness, for reference.

    Returns a ``pandas.DataFrame`` (``.attrs["n"]`` = pairs measured).
    """
    import pandas as pd

    from facelib.edit import confidence_blend
    from facelib.metrics import flow_epe, psnr, sharpness
    from facelib.models.baselines import optical_flow

    reference = next(m for m in (fvae, pixel_vae) if m is not None)
    size = reference.config.image_size
    dataset = _pairs(split, size) if dataset is None else dataset
    count = min(n, len(dataset))
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, range(count)), batch_size=batch_size)
    outputs: dict[str, list[torch.Tensor]] = {}
    flows: dict[str, list[torch.Tensor]] = {}
    kept: dict[str, list[torch.Tensor]] = {"target": [], "visible": [], "flow": []}

    def add(name, output, flow=None):
        outputs.setdefault(name, []).append(output.float())
        if flow is not None:
            flows.setdefault(name, []).append(flow.float())

    for model in (fvae, mask_net, pixel_vae):
        if model is not None:
            model.eval()
    for batch in tqdm(loader, desc="Table 1", disable=not progress, leave=False):
        source, target = batch["source"], batch["target"]
        for key in kept:
            kept[key].append(batch[key].float())
        if fvae is not None:
            z = fvae.latent(target)
            first = fvae.decode(source, z)
            add("FVAE (true latent)", first["output"], first["flow"])
            if mask_net is not None:
                second_source = _other_expression_source(batch, size)
                second = fvae.decode(second_source, z)
                blended, _ = confidence_blend([first["output"], second["output"]],
                                              [mask_net(source, z), mask_net(second_source, z)])
                add("FVAE + confidence (true latent, 2 sources)", blended)
        if pixel_vae is not None:
            add("Pixel VAE (true latent)", pixel_vae.decode(source, pixel_vae.latent(target))["output"])
        if optical_flow_method is not None:
            estimated = optical_flow(source, target, method=optical_flow_method)
            add(f"Optical flow S->T ({optical_flow_method.upper()}, true target)", warp(source, estimated), estimated)
        if average_flow is not None:
            mean_flows = torch.stack([average_flow.flow(int(a), int(b)) for a, b in
                                      zip(batch["source_emotion"], batch["target_emotion"])])
            add("Average flow of the expression pair (Sec. 6.1)", warp(source, mean_flows), mean_flows)
        add("Oracle: warp by ground-truth flow", warp(source, batch["flow"]), batch["flow"])
        add("No edit (source itself)", source, torch.zeros_like(batch["flow"]))
    target, visible, true_flow = (torch.cat(kept[k]) for k in ("target", "visible", "flow"))
    rows = []
    for name, parts in outputs.items():
        output = torch.cat(parts).clamp(-1, 1)
        rows.append({
            "method": name,
            "psnr_db": psnr(output, target),
            "psnr_visible_db": psnr(output, target, mask=visible),
            "sharpness": sharpness(output),
            "flow_epe_visible_px": flow_epe(torch.cat(flows[name]), true_flow, mask=visible) if name in flows else math.nan,
        })
    rows.append({"method": "Real targets (reference)", "psnr_db": math.inf, "psnr_visible_db": math.inf,
                 "sharpness": sharpness(target), "flow_epe_visible_px": math.nan})
    table = pd.DataFrame(rows)
    table.attrs["n"] = count
    return table


@torch.no_grad()
def measure_interpolation(
    fvae: FVAE, mask_net: ConfidenceNet, *, split: str = "test", n: int = 64, factors=(0.25, 0.5, 0.75),
    batch_size: int = 32, dataset=None, progress: bool = True,
):
    """Algorithm 2 against the truth: PSNR of the in-between frames, blended and single-source.

    For held-out pairs (S1, S2) of one person, Algorithm 2 walks Z from Z(S1) to Z(S2); the
    reference at fraction t is SynthFaces' render of the same face with the AUs interpolated,
    (1 - t) AU(S1) + t AU(S2). Returns a ``pandas.DataFrame`` with PSNR (whole image) per factor
    for the confidence blend and for g(S1, Z_edit) and g(S2, Z_edit) alone.
    """
    import pandas as pd

    from facelib.data import render
    from facelib.edit import interpolate
    from facelib.metrics import psnr

    size = fvae.config.image_size
    dataset = _pairs(split, size) if dataset is None else dataset
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, range(min(n, len(dataset)))),
                                         batch_size=batch_size)
    kinds = {"outputs": "confidence blend (Algorithm 2)", "from_source1": "source 1 only", "from_source2": "source 2 only"}
    collected: dict[tuple[str, float], list[torch.Tensor]] = {}
    truths: dict[float, list[torch.Tensor]] = {}
    for batch in tqdm(loader, desc="Algorithm 2", disable=not progress, leave=False):
        result = interpolate(fvae, mask_net, batch["source"], batch["target"], factors=list(factors))
        for k, factor in enumerate(factors):
            aus = (1 - factor) * batch["source_aus"] + factor * batch["target_aus"]
            truths.setdefault(factor, []).append(render(batch["identity"].long(), aus, batch["yaw"].float(), size=size)["image"])
            for key in kinds:
                collected.setdefault((key, factor), []).append(result[key][k])
    rows = []
    for factor in factors:
        truth = torch.cat(truths[factor])
        row = {"t": factor}
        for key, name in kinds.items():
            row[name] = psnr(torch.cat(collected[(key, factor)]).clamp(-1, 1), truth)
        rows.append(row)
    table = pd.DataFrame(rows)
    table.attrs["n"] = len(truth)
    return table


@torch.no_grad()
def measure_upsampling(fvae: FVAE, pixel_vae: PixelVAE | None = None, *, scale: int = 4, split: str = "test",
                       n: int = 32, batch_size: int = 16, progress: bool = True):
    """Fig. 7 against the truth: flow upsampling (Sec. 4.3) versus pixel upsampling at ``scale``x.

    The FVAE runs at its own size with the true target's latent; its flow is upsampled and
    applied to SynthFaces' render of the same source at ``scale`` times the size, and compared
    with the render of the target at that size. Pixel upsampling enlarges g(S, Z) itself
    (bicubic); with ``pixel_vae`` its output is enlarged too. Returns ``(table, example)``: a
    ``pandas.DataFrame`` of PSNR and sharpness at high resolution per method, and a dict of the
    first pair's images (``source_highres``, ``target_highres``, ``flow`` and one per method).
    """
    import pandas as pd

    from facelib.edit import flow_upsample, pixel_upsample
    from facelib.metrics import psnr, sharpness

    size = fvae.config.image_size
    low, high = _pairs(split, size), _pairs(split, size * scale)
    count = min(n, len(low))
    outputs: dict[str, list[torch.Tensor]] = {}
    targets = []
    example = {}
    for start in tqdm(range(0, count, batch_size), desc="Fig. 7", disable=not progress, leave=False):
        indices = list(range(start, min(start + batch_size, count)))
        small = torch.utils.data.default_collate(low.__getitems__(indices))
        big = torch.utils.data.default_collate(high.__getitems__(indices))
        decoded = fvae.decode(small["source"], fvae.latent(small["target"]))
        methods = {
            "flow upsampling (Sec. 4.3)": flow_upsample(big["source"], decoded["flow"]),
            "pixel upsampling of the FVAE output (bicubic)": pixel_upsample(decoded["output"], size * scale),
        }
        if pixel_vae is not None:
            vae_out = pixel_vae.decode(small["source"], pixel_vae.latent(small["target"]))["output"]
            methods["pixel upsampling of the pixel VAE output (bicubic)"] = pixel_upsample(vae_out, size * scale)
        for name, images in methods.items():
            outputs.setdefault(name, []).append(images)
        targets.append(big["target"])
        if not example:
            example = {"source_highres": big["source"][0], "target_highres": big["target"][0],
                       "flow": decoded["flow"][0], **{name: images[0] for name, images in methods.items()}}
    target = torch.cat(targets)
    rows = [{"method": name, "psnr_db": psnr(torch.cat(parts).clamp(-1, 1), target), "sharpness": sharpness(torch.cat(parts))}
            for name, parts in outputs.items()]
    rows.append({"method": "high-resolution target render (reference)", "psnr_db": math.inf, "sharpness": sharpness(target)})
    table = pd.DataFrame(rows)
    table.attrs["n"] = count
    return table, example
