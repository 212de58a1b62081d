"""Evaluator networks: facelib's own measuring instruments, trained on SynthFaces.

The papers measure with networks nobody can download here (VGG-Face and LightCNN
for identity, a ResNet trained on RAF-DB for expression features, OpenFace for AU
intensities, VGG/Inception for perceptual and Fréchet features). facelib trains
small CNNs on SynthFaces instead and names them for what they are:

- :class:`ExpressionClassifier`: logits over :data:`facelib.EXPRESSIONS`; its
  penultimate features (:meth:`ExpressionClassifier.features`) are LEED's
  expression features (the paper's Psi) and the features of facelib's Fréchet
  distance ("FD (facelib expression features)", never "FID").
- :class:`AURegressor`: the 17 AU intensities in ``[0, 5]`` (stands in for OpenFace).
- :class:`IdentityEmbedder`: an L2-normalised embedding for face verification
  (stands in for VGG-Face / LightCNN), with its verification threshold in its config.
- :class:`PerceptualFeatures`: feature maps at several depths of a trained
  evaluator, the pluggable ``features`` callable of :mod:`facelib.losses`.

All three share one trunk (:class:`ConvTrunk`: a stride-1 stem and four
residual stages that halve the resolution) and one feature layer (the last
4x4 map flattened into a fully connected layer of ``feature_dim`` units: faces
are aligned, so where a pattern sits matters); each adds its own linear head.
Inputs are ``[B, 3, H, W]`` in ``[-1, 1]``. Calling an evaluator (``classifier(images)``) or its
``features`` measures: that is the boundary, where :func:`facelib.conventions.check_images`
checks the values too. ``forward`` and ``feature_maps`` (which runs inside perceptual losses,
every training step) check the shape only. The networks are trained at
``config.image_size`` (64). Another size is still accepted: it is resized to
``image_size`` (area averaging to shrink, bilinear to enlarge) with a warning,
because the features are scale-dependent: a 128x128 face must look to the
network like the 64x64 faces it learned on. Measuring instruments are called
on every size the papers use, so they resize rather than refuse; a model's own
input (FVAE) refuses instead.

Training (``facelib.train.evaluators``, run by ``python -m facelib train evaluators``)
draws faces from a ``RenderPool`` that renders fresh faces every step
(unlimited data; the pool only keeps the renderer from setting the pace),
mixing every preset's conditions: studio faces (frontal or RaFD's yaw steps,
fixed light, plain background) and faces in the wild (any yaw within +-45
degrees, random light and background), sensor noise, emotion prototypes with
per-identity idiosyncrasy and random AU combinations, on identities of the
training split only. The identity embedder's threshold is chosen on validation
identities; the held-out figures (:func:`facelib.evaluation.evaluators.evaluate_evaluators`)
come from test identities. ``benchmarks/eval_evaluators.py`` prints them in detail.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..conventions import AU_MAX, EXPRESSIONS, NUM_AUS, check_image_shape, check_images
from .blocks import ConvTrunk


class Evaluator(nn.Module):
    """What the three evaluators share: config, trunk, feature layer, input checks, feature maps."""

    config: "ExpressionClassifierConfig | AURegressorConfig | IdentityEmbedderConfig"

    def __init__(self, config):
        super().__init__()
        config.channels = tuple(int(c) for c in config.channels)  # JSON gives lists back
        self.config = config
        self.trunk = ConvTrunk(config.channels)
        side = config.image_size // 2 ** (len(config.channels) - 1)
        # Faces are aligned, so where a pattern appears matters (a mouth corner up or down):
        # the last map is flattened into a fully connected layer instead of averaged away.
        self.feature_layer = nn.Sequential(
            nn.Flatten(),
            nn.Linear(config.channels[-1] * side * side, config.feature_dim, bias=False),
            nn.BatchNorm1d(config.feature_dim),
            nn.ReLU(inplace=True),
        )

    def _input(self, x: Tensor, *, check_values: bool = True) -> Tensor:
        """Check ``x`` and bring it to the training size; another size is resized with a warning.

        ``check_values=False``: the shape only (no device synchronisation), for inputs already checked.
        """
        who, size = type(self).__name__, self.config.image_size
        check = check_images if check_values else check_image_shape
        resized = check(x, f"{who} input", size=size, resize=True)
        if resized is not x:
            warnings.warn(f"{who} was trained on {size}x{size} images; resizing {x.shape[-2]}x{x.shape[-1]} "
                          f"input to {size}x{size}", stacklevel=3)
        return resized

    def __call__(self, x: Tensor, *args, **kwargs):
        """Measure ``x``: the instrument's boundary, where its values are checked before ``forward``."""
        return super().__call__(self._input(x), *args, **kwargs)

    def _features(self, x: Tensor) -> Tensor:
        check_image_shape(x, f"{type(self).__name__} input", size=self.config.image_size)
        return self.feature_layer(self.trunk(x))  # [B, feature_dim]

    def feature_maps(self, x: Tensor) -> list[Tensor]:
        """Trunk feature maps at every depth (see :class:`PerceptualFeatures`); checks the shape only."""
        return self.trunk.feature_maps(self._input(x, check_values=False))


# --------------------------------------------------------------------------- the three evaluators


@dataclass
class ExpressionClassifierConfig:
    image_size: int = 64
    channels: tuple[int, ...] = (16, 32, 64, 128, 128)
    feature_dim: int = 256
    expressions: tuple[str, ...] = EXPRESSIONS


class ExpressionClassifier(Evaluator):
    """Logits over ``config.expressions`` (default :data:`facelib.EXPRESSIONS`)."""

    def __init__(self, config: ExpressionClassifierConfig | None = None):
        config = config or ExpressionClassifierConfig()
        config.expressions = tuple(config.expressions)
        super().__init__(config)
        self.head = nn.Linear(config.feature_dim, len(config.expressions))

    def features(self, x: Tensor) -> Tensor:
        """Penultimate features ``[B, D]`` (LEED's Psi; the Fréchet-distance features)."""
        return self._features(self._input(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self._features(x))  # [B, len(expressions)]

    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        """Index into ``config.expressions`` of the most likely expression, ``[B]``."""
        return self(x).argmax(dim=1)


@dataclass
class AURegressorConfig:
    image_size: int = 64
    channels: tuple[int, ...] = (16, 32, 64, 128, 128)
    feature_dim: int = 256
    num_aus: int = NUM_AUS
    au_max: float = AU_MAX


class AURegressor(Evaluator):
    """The 17 AU intensities (order :data:`facelib.AU_CODES`) in ``[0, au_max]``."""

    def __init__(self, config: AURegressorConfig | None = None):
        super().__init__(config or AURegressorConfig())
        self.head = nn.Linear(self.config.feature_dim, self.config.num_aus)

    def forward(self, x: Tensor, clamp: bool = True) -> Tensor:
        """Intensities ``[B, 17]``; ``clamp=False`` gives the raw linear output that training fits."""
        intensities = self.head(self._features(x))
        # Clamped, not squashed: a sigmoid's vanishing gradient at 0 stalls the many absent AUs.
        return intensities.clamp(0.0, self.config.au_max) if clamp else intensities


@dataclass
class IdentityEmbedderConfig:
    image_size: int = 64
    channels: tuple[int, ...] = (16, 32, 64, 128, 128)
    feature_dim: int = 256
    embedding_dim: int = 128
    #: Two faces are "the same person" when the cosine of their embeddings exceeds
    #: this; chosen on validation identities after training.
    verification_threshold: float = 0.5


class IdentityEmbedder(Evaluator):
    """L2-normalised identity embedding ``[B, embedding_dim]`` for face verification."""

    def __init__(self, config: IdentityEmbedderConfig | None = None):
        super().__init__(config or IdentityEmbedderConfig())
        self.head = nn.Linear(self.config.feature_dim, self.config.embedding_dim)

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.head(self._features(x)), dim=1)  # [B, D], unit length

    @torch.no_grad()
    def similarity(self, a: Tensor, b: Tensor) -> Tensor:
        """Cosine similarity of the embeddings of paired images ``a[i]``, ``b[i]``: ``[B]``."""
        if a.shape[0] != b.shape[0]:
            raise ValueError(f"similarity needs as many images in a as in b, got {a.shape[0]} and {b.shape[0]}")
        return (self(a) * self(b)).sum(dim=1)

    @torch.no_grad()
    def verify(self, a: Tensor, b: Tensor) -> Tensor:
        """True where ``a[i]`` and ``b[i]`` show the same person: ``[B]`` bool."""
        return self.similarity(a, b) > self.config.verification_threshold


# --------------------------------------------------------------------------- perceptual features


class PerceptualFeatures(nn.Module):
    """Frozen feature maps at several depths of a trained evaluator.

    A callable ``images [B, 3, H, W] in [-1, 1] -> list[Tensor]``: the feature
    network that :mod:`facelib.losses`' perceptual and identity losses accept
    (ExprGAN Eq. 7, LEED Eq. 14-15, EGGAN Eq. 5). Gradients flow to the input,
    never to the evaluator, which stays in eval mode even inside a model put in
    training mode.

    ``network``: an :class:`ExpressionClassifier`, :class:`AURegressor` or
    :class:`IdentityEmbedder`, or the name of a shipped one (loaded with
    :func:`facelib.load_pretrained`). ``depths``: which trunk maps to return
    (0 = stem at full resolution, 1.. = after each stage); default all.
    """

    def __init__(self, network: Evaluator | str = "identity_embedder", depths: tuple[int, ...] | None = None):
        super().__init__()
        if isinstance(network, str):
            from ..pretrained import load_pretrained

            network = load_pretrained(network)
        if not isinstance(network, Evaluator):
            raise TypeError(
                "PerceptualFeatures wraps an ExpressionClassifier, AURegressor or IdentityEmbedder "
                f"(or the name of a shipped one), got {type(network).__name__}"
            )
        n_maps = len(network.config.channels)
        depths = tuple(range(n_maps)) if depths is None else tuple(int(d) for d in depths)
        if not depths or any(d < 0 or d >= n_maps for d in depths):
            raise ValueError(f"depths must be a non-empty subset of {list(range(n_maps))}, got {list(depths)}")
        self.network = network.eval().requires_grad_(False)
        self.depths = depths

    def train(self, mode: bool = True) -> "PerceptualFeatures":
        super().train(mode)
        self.network.eval()  # batch-norm statistics stay those the evaluator was trained with
        return self

    def forward(self, x: Tensor) -> list[Tensor]:
        maps = self.network.feature_maps(x)
        return [maps[d] for d in self.depths]


# --------------------------------------------------------------------------- training and held-out data


class FaceSampler:
    """Fresh SynthFaces renders of a pool of identities under mixed conditions.

    Every batch mixes what the presets vary: yaw (frontal as in Multi-PIE or
    anywhere in +-45 degrees), light, background and sensor noise; expressions are
    emotion prototypes with per-identity idiosyncrasy (RaFD, Multi-PIE, Oulu) or
    random AU combinations (EmotioNet). Training samples the identities of the
    training split; :func:`facelib.evaluation.evaluators.evaluate_evaluators` those of the test split.
    """

    def __init__(self, identities: Tensor, size: int = 64, generator: torch.Generator | None = None):
        self.identities = identities.long()
        self.size = size
        self.generator = generator

    def _rand(self, *shape: int) -> Tensor:
        return torch.rand(*shape, generator=self.generator)

    def _randint(self, high: int, n: int) -> Tensor:
        return torch.randint(high, (n,), generator=self.generator)

    def pick_identities(self, n: int, distinct: bool = False) -> Tensor:
        if distinct:
            return self.identities[torch.randperm(len(self.identities), generator=self.generator)[:n]]
        return self.identities[self._randint(len(self.identities), n)]

    def random_aus(self, n: int, p_active: float = 0.3) -> Tensor:
        """EmotioNet-style random AU combinations: each AU on with ``p_active``, intensity U(0, 5)."""
        active = self._rand(n, NUM_AUS) < p_active
        return active * AU_MAX * self._rand(n, NUM_AUS)  # [N, 17]

    def emotions(self, n: int, identity: Tensor, min_intensity: float = 0.0) -> dict[str, Tensor]:
        """Random emotion prototypes on ``identity``: emotion, intensity, aus ``[N, 17]``, asymmetry."""
        from ..data.synth import emotion_asymmetry, emotion_aus

        emotion = self._randint(len(EXPRESSIONS), n)
        intensity = min_intensity + (AU_MAX - min_intensity) * self._rand(n)
        return {"emotion": emotion, "intensity": intensity,
                "aus": emotion_aus(emotion, intensity, identity=identity),
                "asymmetry": emotion_asymmetry(emotion, identity)}

    def expressive(self, identity: Tensor, p_random: float) -> tuple[Tensor, Tensor]:
        """``(aus, asymmetry)``: an emotion prototype or, with ``p_random``, a random AU combination."""
        from ..data.synth import emotion_asymmetry

        n = len(identity)
        prototype = self.emotions(n, identity)
        use_random = self._rand(n, 1) < p_random
        aus = torch.where(use_random, self.random_aus(n), prototype["aus"])
        # a random combination keeps the person's own mild asymmetry (that of "neutral")
        asymmetry = torch.where(use_random, emotion_asymmetry(0, identity), prototype["asymmetry"])
        return aus, asymmetry

    def render(self, identity: Tensor, aus: Tensor, asymmetry: Tensor) -> Tensor:
        """Images ``[N, 3, S, S]`` in ``[-1, 1]``: about half in the studio, half in the wild."""
        from ..data.synth import render

        n = len(identity)
        studio = self._rand(n) < 0.5
        # Studio (Multi-PIE frontal, RaFD's yaw steps): default light and background.
        # Wild (EmotioNet): random light and background, any yaw within +-45 degrees.
        rafd_yaw = 22.5 * (self._randint(5, n) - 2).float()
        studio_yaw = torch.where(self._rand(n) < 0.4, torch.zeros(n), rafd_yaw)
        yaw = torch.where(studio, studio_yaw, 90.0 * self._rand(n) - 45.0)
        image = torch.empty(n, 3, self.size, self.size)
        for chosen, scene in ((studio, {}), (~studio, {"light": "random", "background": "random"})):
            if chosen.any():
                image[chosen] = render(identity[chosen], aus[chosen], yaw[chosen], self.size,
                                       asymmetry=asymmetry[chosen], generator=self.generator, **scene)["image"]
        # Sensor noise on half of the faces, its strength drawn per face.
        sigma = 0.02 * self._rand(n) * (self._rand(n) < 0.5)
        return (image + sigma[:, None, None, None] * torch.randn(image.shape, generator=self.generator)).clamp(-1, 1)

    def expression_batch(self, n: int, min_intensity: float = 0.5) -> dict[str, Tensor]:
        identity = self.pick_identities(n)
        face = self.emotions(n, identity, min_intensity)
        return {"image": self.render(identity, face["aus"], face["asymmetry"]),
                "emotion": face["emotion"], "intensity": face["intensity"]}

    def au_batch(self, n: int) -> dict[str, Tensor]:
        identity = self.pick_identities(n)
        aus, asymmetry = self.expressive(identity, p_random=0.5)
        return {"image": self.render(identity, aus, asymmetry), "aus": aus}

    def identity_batch(self, num_identities: int, views: int) -> dict[str, Tensor]:
        """``views`` renders of each of ``num_identities`` distinct identities, grouped by identity."""
        identity = self.pick_identities(num_identities, distinct=True).repeat_interleave(views)
        return {"image": self.render(identity, *self.expressive(identity, p_random=0.3)), "identity": identity}

    def verification_pairs(self, n: int) -> dict[str, Tensor]:
        """``n`` image pairs, half of one person and half of two, each side under its own conditions."""
        first = self.pick_identities(n)
        second = self.pick_identities(n)
        same = torch.arange(n) % 2 == 0
        # A "different" pair must really show two people.
        clash = ~same & (second == first)
        while clash.any():
            second[clash] = self.pick_identities(int(clash.sum()))
            clash = ~same & (second == first)
        second = torch.where(same, first, second)
        return {
            "a": self.render(first, *self.expressive(first, p_random=0.3)),
            "b": self.render(second, *self.expressive(second, p_random=0.3)),
            "same": same,
        }


# --------------------------------------------------------------------------- losses


def centroid_margin_softmax(embeddings: Tensor, views: int, scale: float = 16.0, margin: float = 0.25) -> Tensor:
    """CosFace-style margin softmax over in-batch identity centroids (a GE2E loss with a margin).

    ``embeddings`` ``[P * views, D]`` (unit length) hold ``views`` consecutive renders of
    each of ``P`` identities. Each embedding is scored by cosine against every identity's
    centroid (its own centroid leaves it out, so it cannot match itself) and must beat the
    others by ``margin``. Departs from CosFace's learned class weights on purpose: the
    centroids of fresh identities every step train on unlimited identities without a
    classifier over all of them.
    """
    num_identities = embeddings.shape[0] // views
    e = embeddings.view(num_identities, views, -1)  # [P, V, D]
    total = e.sum(dim=1, keepdim=True)  # [P, 1, D]
    centroids = F.normalize(total.squeeze(1) / views, dim=-1)  # [P, D]
    own_centroids = F.normalize((total - e) / (views - 1), dim=-1)  # [P, V, D], leave-one-out
    cosine = embeddings @ centroids.T  # [P*V, P]
    labels = torch.arange(num_identities, device=embeddings.device).repeat_interleave(views)
    own = (e * own_centroids).sum(dim=-1).reshape(-1)  # [P*V]
    cosine = cosine.scatter(1, labels[:, None], (own - margin)[:, None])
    return F.cross_entropy(scale * cosine, labels)
