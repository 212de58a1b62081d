"""SynthFaces presets: synthetic stand-ins for the datasets the five papers train on.

Each preset mirrors one real dataset's design (which expressions, which head poses, how the
light and background vary, how it is split) so a model trained here sees the same kind of data
as in its paper. The real datasets' facts are in each preset's ``description``.

Splits are by identity, as in every paper: each (preset, split) owns a disjoint range of
renderer identity ids, fixed forever, so a test face never appears in training and two presets
never share a person.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..conventions import EXPRESSIONS

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Preset:
    """How one synthetic dataset is drawn.

    Attributes:
        name: preset name.
        paper: the paper(s) in this repository that use the real dataset, and for what.
        description: the real dataset's facts (subjects, expressions, poses, sizes, protocol).
        expressions: expression names (from ``facelib.EXPRESSIONS``) the preset renders.
        identities: number of identities per split.
        identity_offset: first renderer id of the preset; splits follow one another.
        yaws: head yaw angles in degrees (each identity is rendered at every one).
        intensity: (low, high) range of expression intensity for non-neutral items (0-5 scale).
        light: "fixed" (one studio light) or "random" (direction and strength vary per item).
        background: "plain" or a renderer background kind ("gradient", "textured", "random").
        noise: sensor-noise standard deviation in [-1, 1] units.
        sequence_length: frames of an onset sequence (neutral -> peak), 0 if the preset has none.
        last_frames: how many final (near-peak) frames of each sequence are single-image items.
        random_aus: items are random AU combinations instead of emotion prototypes.
        samples_per_identity: items per identity for ``random_aus`` presets.
    """

    name: str
    paper: str
    description: str
    expressions: tuple[str, ...]
    identities: dict[str, int]
    identity_offset: int
    yaws: tuple[float, ...] = (0.0,)
    intensity: tuple[float, float] = (3.0, 5.0)
    light: str = "fixed"
    background: str = "plain"
    noise: float = 0.0
    sequence_length: int = 0
    last_frames: int = 0
    random_aus: bool = False
    samples_per_identity: int = 1
    extra: dict = field(default_factory=dict)

    def identity_range(self, split: str) -> range:
        """Renderer ids of ``split`` (``ValueError`` lists the valid splits)."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; valid splits are {list(SPLITS)}")
        start = self.identity_offset
        for name in SPLITS:
            if name == split:
                return range(start, start + self.identities[name])
            start += self.identities[name]
        raise AssertionError("unreachable")

    @property
    def expression_ids(self) -> tuple[int, ...]:
        return tuple(EXPRESSIONS.index(name) for name in self.expressions)


PRESETS: dict[str, Preset] = {
    "multipie": Preset(
        name="multipie",
        paper="FVAE (Yeh et al. 2016): all expression pairs per identity, frontal view, one light",
        description=(
            "CMU Multi-PIE: 337 subjects in up to 4 sessions, 15 camera views, 19 illuminations, "
            "six expressions (neutral, smile, surprise, squint, disgust, scream; 'smile' is "
            "facelib's 'happy'). FVAE uses camera 05_1 (frontal) and illumination 06 only, an "
            "80/20 identity split, 128x128 aligned crops, and all pairs of expressions per "
            "identity as (source, target) training pairs. Here: frontal, fixed light, plain "
            "background, posed expressions at intensity 3-5, 337 identities (80/5/15 split)."
        ),
        expressions=("neutral", "happy", "surprised", "squint", "disgusted", "scream"),
        identities={"train": 270, "val": 17, "test": 50},
        identity_offset=1_000_000,
    ),
    "rafd": Preset(
        name="rafd",
        paper="LEED (Wu & Lu 2020) and EGGAN (2020): expression editing across identities and poses",
        description=(
            "Radboud Faces Database: 67 participants (adults and children), eight emotions "
            "(neutral, angry, contemptuous, disgusted, fearful, happy, sad, surprised), three gaze "
            "directions and five camera angles (0, 45, 90, 135, 180 degrees, i.e. profile to "
            "profile), 8,040 images. LEED edits frontal and profile faces; EGGAN trains on "
            "RaFD and tests on its test identities. Here: the eight emotions at intensity 3-5, "
            "five yaws clamped to the renderer's +-45 degrees (-45, -22.5, 0, 22.5, 45), fixed "
            "light, plain background, 67 identities (50/5/12)."
        ),
        expressions=("neutral", "angry", "contemptuous", "disgusted", "fearful", "happy", "sad", "surprised"),
        identities={"train": 50, "val": 5, "test": 12},
        identity_offset=2_000_000,
        yaws=(-45.0, -22.5, 0.0, 22.5, 45.0),
    ),
    "oulu": Preset(
        name="oulu",
        paper="ExprGAN (Ding et al. 2018): expression type and continuous intensity",
        description=(
            "Oulu-CASIA NIR&VIS: 80 subjects, six basic expressions (angry, disgusted, fearful, "
            "happy, sad, surprised) recorded as sequences from a neutral first frame to the peak "
            "expression in the last frame, under three lights (dark, strong, weak); 480 VIS "
            "sequences. ExprGAN keeps the strong-light VIS videos and the last three frames of "
            "each sequence: 1,440 images, 1,296 train / 144 test, split by identity (72/8). "
            "Here: onset sequences of 10 frames (intensity rising from 0 to 5), single items are "
            "the last three frames; fixed light, plain background, 80 identities (68/4/8)."
        ),
        expressions=("angry", "disgusted", "fearful", "happy", "sad", "surprised"),
        identities={"train": 68, "val": 4, "test": 8},
        identity_offset=3_000_000,
        intensity=(0.0, 5.0),
        sequence_length=10,
        last_frames=3,
    ),
    "emotionet": Preset(
        name="emotionet",
        paper="DFT-Net (Wang et al. 2019): AU-conditioned editing trained on a 200k subset",
        description=(
            "EmotioNet: about one million face images from the internet with automatically "
            "annotated AUs (and a manually annotated subset), in the wild: every pose, light and "
            "background. DFT-Net trains on a 200,000-image subset with AU intensities as the "
            "condition. Here: random sparse AU combinations (each AU on with probability 0.3, "
            "intensity uniform in [0, 5]), random light direction and strength, random plain / "
            "gradient / textured backgrounds, slight sensor noise, yaw in [-20, 20]; the emotion "
            "label is the prototype closest to the AUs. 20,000/500/2,000 identities x 10 images."
        ),
        expressions=tuple(EXPRESSIONS),
        identities={"train": 20_000, "val": 500, "test": 2_000},
        identity_offset=4_000_000,
        yaws=(-20.0, -10.0, 0.0, 10.0, 20.0),
        intensity=(0.0, 5.0),
        light="random",
        background="random",
        noise=0.01,
        random_aus=True,
        samples_per_identity=10,
    ),
}


def get_preset(name: str) -> Preset:
    """The preset called ``name`` (``ValueError`` lists the valid names)."""
    if isinstance(name, Preset):
        return name
    try:
        return PRESETS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown SynthFaces preset {name!r}; valid presets are {sorted(PRESETS)}") from None


__all__ = ["Preset", "PRESETS", "SPLITS", "get_preset"]
