"""LEED (Wu & Lu 2020): label-free expression editing via disentanglement.

The expression of a face is a *displacement* in a latent space: the code of the face minus the code
of the same face made neutral (Eq. 1). Editing adds the reference's displacement to the input's
neutral code (Eq. 5) and decodes. The parts, as in the paper's Fig. 1:

- a :class:`Neutraliser` makes the neutral faces I_N and R_N. The paper uses a pre-trained StarGAN;
  here it is a part that can be swapped: ``true_render`` (SynthFaces renders the same person and pose
  with a neutral face: an *oracle*, which isolates LEED's own contribution), ``fvae`` and ``stargan``
  (the shipped editors' neutral edits, the only ones a photo can use);
- the encoder E maps an image to a code C (Eq. 12-16), the decoder D maps a code back (Eq. 14);
- the extractor X takes (C_RB, C_RN) to the expression Delta exp (Eq. 1-2), and Q reads it back from
  the expression classifier's penultimate features F_RB (Eq. 3-4, the mutual-information bound);
- the interpolator I takes (C_IN, alpha Delta exp) to the edited code (Eq. 5-8), judged by a latent
  critic (Eq. 12-13);
- the siamese network S makes the edit's transform vector point where the reference's does (Eq. 9-11).

Departures from the paper, one per line (each measured in docs/leed.md):

- ``decoder="residual"``: D paints a residual on the neutral face it also sees, D(C, I_N) = I_N + r;
  the paper's D(C) decodes the code alone (``decoder="code"``), which at 64 px and minutes of CPU
  loses the identity of a held-out face.
- the reconstruction adds an L1 weighted on the mouth, eye and brow regions (``facelib.train.leed``).
- the interpolator is I(c, d) = c + d + MLP(c, d) with the MLP's last layer at zero: it starts at
  Eq. 5's linear interpolation (the paper's architecture is in its supplement, which we do not have).

Training (``facelib.train.leed``) sees images and their neutral faces only: no expression or AU label.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from facelib.conventions import check_image_shape
from facelib.editors import EditResult, Editor, Target
from facelib.models.blocks import ConvEncoder, LatentCritic, conv_norm_act, up_block
from facelib.warp import warp_kernel

__all__ = [
    "LEEDConfig", "LEED", "LEEDEncoder", "LEEDDecoder", "Extractor", "MutualInformationQ", "Interpolator",
    "SiameseNetwork", "LEEDCritic", "Neutraliser", "TrueRenderNeutraliser", "EditorNeutraliser", "NEUTRALISERS",
    "load_neutraliser", "LEEDEditor", "load_leed_editor", "load_leed_fvae_editor",
]

#: RaFD's eight emotions, the expressions of the ``rafd`` preset LEED trains on.
RAFD_EXPRESSIONS = ("neutral", "angry", "contemptuous", "disgusted", "fearful", "happy", "sad", "surprised")


@dataclass
class LEEDConfig:
    """LEED's networks. The defaults are the CPU size (64 px); :meth:`paper` is RaFD's 128 px."""

    image_size: int = 64
    code_dim: int = 128  # C, the latent code of Eq. 1
    channels: tuple[int, ...] = (16, 32, 64, 128)  # stride-2 stages of E (and of D's view of I_N)
    latent_channels: int = 32  # D: the code's channels tiled at every scale (the code decoder: [.., s, s])
    hidden: int = 256  # width of the MLPs X, Q, I
    feature_dim: int = 256  # F_RB: the expression classifier's penultimate features (Psi)
    siamese_dim: int = 64  # S's output
    decoder: str = "residual"  # "residual": I_N + r; "flow": warp(I_N, flow) + r (departures); "code": D(C), the paper's
    max_flow: float = 0.25  # decoder "flow": the largest displacement, as a fraction of the image side
    expressions: tuple[str, ...] = RAFD_EXPRESSIONS  # the stored references of ``expression`` targets

    def __post_init__(self) -> None:
        self.channels, self.expressions = tuple(self.channels), tuple(self.expressions)
        if self.decoder not in ("residual", "flow", "code"):
            raise ValueError(f"decoder must be 'residual', 'flow' or 'code', got {self.decoder!r}")
        if self.image_size % 2 ** len(self.channels):
            raise ValueError(f"image_size {self.image_size} must be divisible by 2**{len(self.channels)} "
                             f"(one halving per encoder stage)")

    @property
    def bottom_size(self) -> int:
        return self.image_size // 2 ** len(self.channels)

    @classmethod
    def cpu(cls) -> "LEEDConfig":
        """The CPU recipe's decoder: a flow that moves I_N's pixels plus a residual (departure, measured)."""
        return cls(decoder="flow")

    @classmethod
    def paper(cls) -> "LEEDConfig":
        """RaFD at 128x128 (Sec. 4.1), one more encoder stage."""
        return cls(image_size=128, channels=(32, 64, 128, 256, 512), code_dim=256)


def mlp(in_dim: int, hidden: int, out_dim: int, depth: int = 2) -> nn.Sequential:
    """``depth`` hidden Linear + LeakyReLU(0.2) layers, then a Linear to ``out_dim``."""
    layers, width = [], in_dim
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), nn.LeakyReLU(0.2, inplace=True)]
        width = hidden
    return nn.Sequential(*layers, nn.Linear(width, out_dim))


class LEEDEncoder(nn.Module):
    """E: image ``[B, 3, S, S]`` -> code C ``[B, code_dim]`` (stride-2 conv stages, then a linear layer)."""

    def __init__(self, config: LEEDConfig):
        super().__init__()
        self.stages = ConvEncoder(config.channels, first_kernel=3)
        self.code = nn.Linear(config.channels[-1] * config.bottom_size ** 2, config.code_dim)
        self.image_size = config.image_size

    def forward(self, images: Tensor) -> Tensor:
        check_image_shape(images, "images", size=self.image_size)
        return self.code(self.stages(images)[-1].flatten(1))


class LEEDDecoder(nn.Module):
    """D: code C (and the neutral face I_N it belongs to) -> image.

    ``residual`` (departure): reads I_N at every scale (FVAE's skip connections) with the code tiled
    beside it at every scale, so each place of the face can read the expression from the code and
    where it is from I_N; it paints a residual on I_N, D(C, I_N) = I_N + r, which starts at zero.
    ``code`` (the paper's D(C)): transposed-conv stages from the code alone, tanh.
    """

    def __init__(self, config: LEEDConfig):
        super().__init__()
        self.config = config
        side = config.bottom_size
        if config.decoder == "code":
            self.unflatten = nn.Sequential(nn.Linear(config.code_dim, config.latent_channels * side * side),
                                           nn.Unflatten(1, (config.latent_channels, side, side)))
            widths = (config.latent_channels, *config.channels[::-1])
            self.up = nn.Sequential(*[up_block(a, b) for a, b in zip(widths[:-1], widths[1:])],
                                    nn.Conv2d(widths[-1], 3, 3, padding=1))
            return
        skips = config.channels[::-1]  # coarsest first: I_N's features at 4, 8, 16, 32 px (for 64 px images)
        self.neutral_features = ConvEncoder(config.channels, first_kernel=3)
        self.code = nn.Linear(config.code_dim, config.latent_channels)  # what is tiled at every scale
        stages, width = [], 0
        for skip in skips:
            stages.append(conv_norm_act(width + skip + config.latent_channels, skip, 3))
            width = skip
        self.stages = nn.ModuleList(stages)
        # the residual's 3 channels, then (decoder "flow") 2 channels of a flow that moves I_N's pixels
        self.head = nn.Conv2d(width + 3, 5 if config.decoder == "flow" else 3, 3, padding=1)
        # the residual starts at zero: before training, D(C, I_N) = I_N (a random residual is noise to unlearn)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, codes: Tensor, neutral: Tensor | None = None) -> Tensor:
        if self.config.decoder == "code":
            return torch.tanh(self.up(self.unflatten(codes)))
        if neutral is None:
            raise ValueError("the residual decoder paints on the neutral face: pass neutral=[B, 3, S, S]")
        check_image_shape(neutral, "neutral", size=self.config.image_size)
        code = self.code(codes)[:, :, None, None]  # [B, latent_channels, 1, 1]
        x = None
        for stage, skip in zip(self.stages, self.neutral_features(neutral)[::-1]):
            if x is not None:
                x = F.interpolate(x, scale_factor=2, mode="nearest")
            parts = [skip, code.expand(-1, -1, *skip.shape[-2:])] + ([] if x is None else [x])
            x = stage(torch.cat(parts, dim=1))
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        out = self.head(torch.cat([x, neutral], dim=1))
        if self.config.decoder == "flow":
            # the flow in pixels, at most max_flow of the image side (FVAE Sec. 5.3's tanh output)
            flow = torch.tanh(out[:, 3:]) * self.config.max_flow * self.config.image_size
            return (warp_kernel(neutral, flow) + out[:, :3]).clamp(-1, 1)
        return (neutral + out).clamp(-1, 1)


class Extractor(nn.Module):
    """X: (C_RB, C_RN) -> Delta exp_RB (Eq. 2), an MLP on both codes."""

    def __init__(self, config: LEEDConfig):
        super().__init__()
        self.net = mlp(2 * config.code_dim, config.hidden, config.code_dim)

    def forward(self, expressive: Tensor, neutral: Tensor) -> Tensor:
        return self.net(torch.cat([expressive, neutral], dim=1))


class MutualInformationQ(nn.Module):
    """Q(Delta exp | F_RB) of Eq. 3: a Gaussian with unit variance whose mean is an MLP of F_RB, so
    -log Q = 1/2 ||Delta exp - mean(F_RB)||^2 + const (the variational bound of InfoGAN)."""

    def __init__(self, config: LEEDConfig):
        super().__init__()
        self.mean = mlp(config.feature_dim, config.hidden, config.code_dim)

    def forward(self, features: Tensor) -> Tensor:
        return self.mean(features)


class Interpolator(nn.Module):
    """I(C_IN, alpha Delta exp) -> C_IB (Eq. 6): Eq. 5's sum plus a learned correction that starts at zero."""

    def __init__(self, config: LEEDConfig):
        super().__init__()
        self.correction = mlp(2 * config.code_dim, config.hidden, config.code_dim)
        nn.init.zeros_(self.correction[-1].weight)
        nn.init.zeros_(self.correction[-1].bias)

    def forward(self, neutral_code: Tensor, expression: Tensor) -> Tensor:
        return neutral_code + expression + self.correction(torch.cat([neutral_code, expression], dim=1))


class SiameseNetwork(nn.Module):
    """S of Eq. 9-10: image -> vector; the transform vector of a face is S(expressive) - S(neutral)."""

    def __init__(self, config: LEEDConfig):
        super().__init__()
        channels = tuple(c // 2 for c in config.channels)
        self.stages = ConvEncoder(channels, first_kernel=3)
        self.out = nn.Linear(channels[-1] * config.bottom_size ** 2, config.siamese_dim)
        self.image_size = config.image_size

    def forward(self, images: Tensor) -> Tensor:
        check_image_shape(images, "images", size=self.image_size)
        return self.out(self.stages(images)[-1].flatten(1))


class LEEDCritic(LatentCritic):
    """The latent critic of Eq. 12-13: real codes E(I) against interpolated codes I(C_IN, alpha Delta exp)."""

    def __init__(self, config: LEEDConfig):
        super().__init__(config.code_dim, hidden=(256, 256, 128))


class LEED(nn.Module):
    """E, D, X, Q, I and S in one module (the latent critic is trained against it, ``LEEDCritic``).

    Buffers ``reference_images`` ``[E, 3, S, S]``, ``reference_identity`` and ``reference_yaw`` ``[E]``
    hold, for each of ``config.expressions``, the training face whose extracted expression is nearest
    that expression's mean: what an ``expression`` target copies (a convenience the paper does not have).
    """

    def __init__(self, config: LEEDConfig | None = None):
        super().__init__()
        self.config = config = config or LEEDConfig()
        self.encoder, self.decoder = LEEDEncoder(config), LEEDDecoder(config)
        self.extractor, self.q, self.interpolator = Extractor(config), MutualInformationQ(config), Interpolator(config)
        self.siamese = SiameseNetwork(config)
        n, size = len(config.expressions), config.image_size
        self.register_buffer("reference_images", torch.zeros(n, 3, size, size))
        self.register_buffer("reference_identity", torch.zeros(n, dtype=torch.long))
        self.register_buffer("reference_yaw", torch.zeros(n))

    def edit(self, neutral: Tensor, reference: Tensor, reference_neutral: Tensor, alpha: Tensor) -> dict[str, Tensor]:
        """The edit of Fig. 1: the input's neutral face I_N, the reference R_B and its neutral R_N, alpha ``[B]``."""
        codes = self.encoder(torch.cat([neutral, reference, reference_neutral]))
        c_in, c_rb, c_rn = codes.chunk(3)
        # LEED Eq. 2: the extractor's expression, Delta exp_RB = X(C_RB, C_RN)
        expression = self.extractor(c_rb, c_rn)
        # LEED Eq. 6: C_IB = I(C_IN, alpha Delta exp_RB); alpha > 1 extrapolates (Fig. 7)
        c_ib = self.interpolator(c_in, alpha.view(-1, 1) * expression)
        return {"output": self.decoder(c_ib, neutral), "neutral_code": c_in, "reference_code": c_rb,
                "reference_neutral_code": c_rn, "residual": c_rb - c_rn, "expression": expression, "code": c_ib}


# --------------------------------------------------------------------------- neutralisers


class Neutraliser:
    """Makes the neutral face of each image: ``neutral(images, **known) -> images``.

    ``known`` carries what is known about the images (``identity``, ``yaw``: SynthFaces' render
    parameters); only an oracle reads it. ``oracle``: it needs them, so it cannot run on a photo.
    """

    name = ""
    label = ""
    oracle = False

    def neutral(self, images: Tensor, **known) -> Tensor:
        raise NotImplementedError


class TrueRenderNeutraliser(Neutraliser):
    """The oracle: SynthFaces renders the same person in the same pose with every AU at 0.

    Exact on SynthFaces' ``rafd`` faces (fixed light, plain background), impossible on a photo.
    """

    name = "true_render"
    oracle = True

    def neutral(self, images: Tensor, identity: Tensor | None = None, yaw: Tensor | None = None, **_) -> Tensor:
        from facelib.conventions import NUM_AUS
        from facelib.data.synth import render

        if identity is None or yaw is None:
            raise ValueError("the true_render neutraliser is an oracle: it renders SynthFaces' own neutral face and "
                             "needs each image's identity and yaw (Target.known, which evaluate() and the benchmark "
                             "pass); a photo has neither: use the 'fvae' neutraliser (load_editor('leed_fvae'))")
        if len(identity) != len(images) or len(yaw) != len(images):
            raise ValueError(f"known identity and yaw need one value per image ({len(images)}), got "
                             f"{len(identity)} and {len(yaw)}")
        identity, yaw = identity.long().cpu(), yaw.float().cpu()
        aus = torch.zeros(len(identity), NUM_AUS)
        return render(identity, aus, yaw, size=images.shape[-1])["image"].to(images)


class EditorNeutraliser(Neutraliser):
    """A shipped editor's neutral edit (``expression="neutral"`` at intensity 1, source unknown)."""

    oracle = False

    def __init__(self, editor: Editor):
        if "neutral" not in editor.expressions or "expression" not in editor.accepts:
            raise ValueError(f"{editor.name} cannot make neutral faces (it accepts {list(editor.accepts)} targets "
                             f"and knows {list(editor.expressions)})")
        self.editor, self.name = editor, editor.name
        self.label = editor.paper.split(" (")[0]  # "FVAE", "StarGAN": the paper's name of the method

    def neutral(self, images: Tensor, **known) -> Tensor:
        return self.editor.edit(images, Target(expression="neutral", intensity=1.0)).output


#: The neutralisers by name: ``true_render`` (the oracle), and the shipped editors' neutral edits.
NEUTRALISERS = ("true_render", "fvae", "stargan")


def load_neutraliser(name: str, device: str | torch.device = "cpu") -> Neutraliser:
    """``true_render`` (oracle), ``fvae`` or ``stargan`` (the shipped editors, loaded with their weights)."""
    if name == "true_render":
        return TrueRenderNeutraliser()
    if name not in NEUTRALISERS:
        raise ValueError(f"unknown neutraliser {name!r}; the neutralisers are {list(NEUTRALISERS)}")
    from facelib.editors import load_editor

    return EditorNeutraliser(load_editor(name, device=device))


# --------------------------------------------------------------------------- the editor


class LEEDEditor(Editor):
    """LEED behind :class:`facelib.editors.Editor`: ``reference`` and ``expression`` targets.

    ``reference``: copy the reference's expression; the intensity is alpha (Eq. 6), above 1 it
    extrapolates (Fig. 7). ``expression``: copies the stored training face whose extracted
    expression is nearest that expression's mean (a convenience the paper does not have). Intensity
    0 gives the input's neutral face. The result's ``latent`` is the edited code C_IB and ``texture``
    the input's neutral face I_N.
    """

    accepts = ("expression", "reference")
    intensity_range = (0.0, 2.0)

    def __init__(self, model: LEED, neutraliser: Neutraliser, name: str | None = None):
        if not isinstance(model, LEED):
            raise TypeError(f"LEEDEditor needs a LEED model, got {type(model).__name__}")
        if not isinstance(neutraliser, Neutraliser):
            raise TypeError(f"neutraliser must be a facelib.models.leed.Neutraliser, got {type(neutraliser).__name__}")
        self.model, self.neutraliser = model.eval(), neutraliser
        self.name = name or ("leed" if neutraliser.name == "true_render" else f"leed_{neutraliser.name}")
        made = ("oracle neutral faces (SynthFaces' true renders)" if neutraliser.oracle
                else f"neutral faces by the shipped {neutraliser.label}")
        self.paper = f"LEED (Wu & Lu 2020), Fig. 1, {made}"  # as the registry says
        self.image_size = model.config.image_size
        self.expressions = model.config.expressions

    def modules(self) -> dict[str, nn.Module]:
        modules = {"model": self.model}
        if isinstance(self.neutraliser, EditorNeutraliser):
            modules.update({f"neutraliser_{k}": m for k, m in self.neutraliser.editor.modules().items()})
        return modules

    def _references(self, target: Target, batch: int, like: Tensor) -> tuple[Tensor, dict]:
        """The reference images of ``target`` and what is known about them."""
        known = target.known or {}
        if target.kind == "reference":
            return target.reference, {"identity": known.get("reference_identity"), "yaw": known.get("reference_yaw")}
        index = torch.tensor([self.expressions.index(name) for name in target.expressions(batch)])
        return (self.model.reference_images[index.to(self.model.reference_images.device)].to(like),
                {"identity": self.model.reference_identity.cpu()[index], "yaw": self.model.reference_yaw.cpu()[index]})

    def _edit(self, images: Tensor, target: Target) -> EditResult:
        batch, known = len(images), target.known or {}
        reference, reference_known = self._references(target, batch, images)
        neutral = self.neutraliser.neutral(images, identity=known.get("identity"), yaw=known.get("yaw"))
        reference_neutral = self.neutraliser.neutral(reference, **reference_known)
        alpha = target.intensities(batch).to(images)
        result = self.model.edit(neutral, reference, reference_neutral, alpha)
        return EditResult(output=result["output"], latent=result["code"], texture=neutral)


def _load(neutraliser: str, device) -> LEEDEditor:
    from facelib.checkpoint import load_pretrained

    return LEEDEditor(load_pretrained("leed", device=device), load_neutraliser(neutraliser, device=device))


def load_leed_editor(device="cpu") -> LEEDEditor:
    """``facelib.load_editor("leed")``: the shipped LEED with the oracle neutraliser (``true_render``)."""
    return _load("true_render", device)


def load_leed_fvae_editor(device="cpu") -> LEEDEditor:
    """``facelib.load_editor("leed_fvae")``: the shipped LEED with FVAE's neutral faces (works on photos)."""
    return _load("fvae", device)
