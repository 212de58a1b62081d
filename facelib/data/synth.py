"""SynthFaces renderer: procedural faces with ground truth for every label the five papers use.

Everything is defined in continuous, normalised coordinates (the image spans ``[-1, 1]`` in x and
y, y pointing down) and evaluated on the pixel grid at any size, so the same face renders at 64,
128 or 512 pixels. A render goes through three maps:

    pixel p --(pose, yaw)--> face-plane point v --(expression, 17 AUs)--> canonical point u

and every appearance layer (skin, shading, eyes, brows, nose, lips, hair, beard, glasses) is an
analytic function of the *canonical* point ``u``. Geometry therefore moves exactly with the maps:

* **Pose**: the face is a 2.5-D surface (a Gaussian dome plus a nose) rotated about the vertical
  axis and projected orthographically; its inverse is solved per pixel by Newton's method.
* **Expression**: the inverse expression map ``u = v - D(v)`` is a sum of smooth Gaussian
  displacements anchored at facial landmarks (brows, lids, cheeks, nose wings, lips, chin, jaw),
  evaluated on a coarse grid and sampled bilinearly (the field is smooth). The lips can part:
  there are two branches of the map, one attached to the upper lip and one to the lower lip,
  which coincide away from the mouth and separate between the lip corners (AU10/25/26).
* **Texture**: what no map can explain is a layer whose opacity depends on the AUs: the mouth
  interior, teeth and tongue between the parted lips, wrinkles (furrow, forehead lines, crow's feet,
  nose wrinkles, nasolabial folds, dimples, chin), and the eyelids (AU5/6/7/45 move the lid lines).

``render_pair`` returns the exact backward flow between two expressions of one face (same pose,
light and background): for a target pixel ``p`` showing canonical point ``u_T``, it finds the
source pixel ``q`` showing the same point (Newton's method on the source's expression map, then
the forward pose map), ``flow = q - p``. ``visible`` marks the target pixels that flow explains:
built from the layers, not from image differences.

Identity: about 40 continuous parameters drawn from a hash of the integer id (unlimited
identities, identical on every machine). Emotions: FACS/EMFACS prototypes with a 0-5 intensity
scale and per-identity idiosyncrasy (AU gains and left/right asymmetry).

Speed: every soft shape uses a compactly supported bell instead of a Gaussian, so each layer is
exactly zero outside a box that is known before any pixel is touched; layers are evaluated only
on the rows and columns where their box can appear (rows do not depend on the yaw), and faces
are rendered in groups of similar pose and the same active AUs (a layer no face in the group
shows is skipped); the first render lets glibc keep freed memory for reuse
(:func:`facelib.utils.keep_freed_memory`; ``FACELIB_MALLOC=system`` opts out). A face renders
identically alone or in any batch (up to float rounding). Edges are anti-aliased over 2 pixels
and lines never get thinner than 0.6 pixels, so a bilinear warp by a fractional flow can
reproduce them: the premise of the ground-truth check (warp(source, flow) == target over
``visible``).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ..conventions import AU_CODES, AU_MAX, EXPRESSIONS, NUM_AUS, au_index, expression_index
from ..utils import keep_freed_memory

__all__ = [
    "render", "render_pair", "emotion_aus", "emotion_asymmetry", "identity_params", "landmark_box_mask",
    "hash_uniform",
    "LANDMARK_NAMES", "EYE_LANDMARKS", "MOUTH_LANDMARKS", "EXPRESSION_REGIONS", "expression_region_mask",
    "PROTOTYPES", "PROTOTYPE_AUS", "YAW_LIMIT", "BACKGROUNDS", "HAIR_STYLES", "FACIAL_HAIR",
]

#: Largest head yaw in degrees (LEED edits profiles; the 2.5-D face model holds up to here).
YAW_LIMIT = 45.0
#: Background kinds accepted by ``render(background=...)``.
BACKGROUNDS = ("plain", "gradient", "textured", "random")

#: Names of the landmarks, in the order of ``render(...)["landmarks"]`` (image-left side first).
LANDMARK_NAMES: tuple[str, ...] = (
    "brow_left_outer", "brow_left_mid", "brow_left_inner",
    "brow_right_inner", "brow_right_mid", "brow_right_outer",
    "eye_left_outer", "eye_left_top", "eye_left_inner", "eye_left_bottom",
    "eye_right_inner", "eye_right_top", "eye_right_outer", "eye_right_bottom",
    "nose_bridge", "nose_tip", "nostril_left", "nostril_right",
    "mouth_left", "lip_upper_top", "mouth_right", "lip_lower_bottom",
    "lip_upper_inner", "lip_lower_inner",
    "jaw_left", "jaw_left_mid", "chin", "jaw_right_mid", "jaw_right",
)
#: The landmarks around both eyes and around the mouth: the crops of DFT-Net's Fig. 3 (eyelids) and of
#: its blur claim (the mouth), for :func:`landmark_box_mask`.
EYE_LANDMARKS = tuple(name for name in LANDMARK_NAMES if name.startswith("eye_"))
MOUTH_LANDMARKS = ("mouth_left", "lip_upper_top", "mouth_right", "lip_lower_bottom")


def landmark_box_mask(landmarks: Tensor, names, size: int, margin: float = 3.0) -> Tensor:
    """A box mask ``[N, 1, size, size]`` in {0, 1} around the named landmarks, ``margin`` pixels wider.

    ``landmarks`` ``[N, K, 2]`` pixel (x, y) as :func:`render` returns them (pixel centres at
    integers); ``names`` from :data:`LANDMARK_NAMES`, e.g. :data:`EYE_LANDMARKS`. For PSNR on a
    crop: ``facelib.metrics.psnr(edit, truth, mask=landmark_box_mask(...))``.
    """
    unknown = [name for name in names if name not in LANDMARK_NAMES]
    if unknown or not names:
        raise ValueError(f"landmark_box_mask: unknown landmark names {unknown or list(names)}; "
                         f"accepted: {', '.join(LANDMARK_NAMES)}")
    if landmarks.dim() != 3 or landmarks.shape[1:] != (len(LANDMARK_NAMES), 2):
        raise ValueError(f"landmarks must be [N, {len(LANDMARK_NAMES)}, 2] pixel (x, y), got {list(landmarks.shape)}")
    points = landmarks[:, [LANDMARK_NAMES.index(name) for name in names]]  # [N, k, 2]
    low, high = points.amin(1) - margin, points.amax(1) + margin  # [N, 2] each
    grid = torch.arange(size, dtype=landmarks.dtype, device=landmarks.device)
    inside_x = (grid >= low[:, :1]) & (grid <= high[:, :1])  # [N, size] over x
    inside_y = (grid >= low[:, 1:]) & (grid <= high[:, 1:])  # [N, size] over y
    return (inside_y[:, :, None] & inside_x[:, None, :]).unsqueeze(1).to(landmarks.dtype)


#: The landmarks whose boxes hold what an expression moves (brows and eyes, nose, mouth and chin);
#: the GAN CPU recipes' keep loss weighs changes outside them (StarGAN's and GANimation's).
EXPRESSION_REGIONS: tuple[tuple[str, ...], ...] = (
    tuple(n for n in LANDMARK_NAMES if n.startswith(("brow_", "eye_"))),
    ("nose_bridge", "nose_tip", "nostril_left", "nostril_right"),
    tuple(n for n in LANDMARK_NAMES if n.startswith(("mouth_", "lip_"))) + ("chin", "jaw_left_mid", "jaw_right_mid"),
)


def expression_region_mask(landmarks: Tensor, size: int, margin: float = 4.0) -> Tensor:
    """``[B, 1, size, size]`` in {0, 1}: the union of the :data:`EXPRESSION_REGIONS` boxes (landmarks ``[B, K, 2]``)."""
    boxes = [landmark_box_mask(landmarks, names, size, margin=margin) for names in EXPRESSION_REGIONS]
    return torch.stack(boxes).amax(0)


_A = {code: au_index(code) for code in AU_CODES}

#: FACS/EMFACS prototypes at peak intensity (AU code -> intensity in [0, 5]).
PROTOTYPES: dict[str, dict[int, float]] = {
    "neutral": {},
    "angry": {4: 5.0, 5: 3.0, 7: 3.5, 23: 4.5},
    "contemptuous": {12: 5.0, 14: 5.0},  # unilateral: see emotion_asymmetry
    "disgusted": {9: 5.0, 10: 4.0, 15: 3.0, 17: 3.0},
    "fearful": {1: 4.5, 2: 3.0, 4: 3.0, 5: 4.5, 20: 5.0, 25: 3.5, 26: 1.5},
    "happy": {6: 4.0, 12: 5.0, 25: 3.0},
    "sad": {1: 5.0, 4: 3.0, 15: 5.0, 17: 3.0},
    "surprised": {1: 4.5, 2: 4.5, 5: 4.0, 25: 3.0, 26: 5.0},
    "squint": {6: 3.5, 7: 4.5, 45: 2.0},
    "scream": {4: 4.0, 6: 3.5, 7: 4.0, 9: 3.5, 10: 4.0, 20: 3.5, 25: 5.0, 26: 5.0},
}
assert set(PROTOTYPES) == set(EXPRESSIONS)
#: The prototypes as a table: ``[len(EXPRESSIONS), 17]`` peak intensities, rows in EXPRESSIONS order.
PROTOTYPE_AUS = torch.zeros(len(EXPRESSIONS), NUM_AUS)
for _name, _aus in PROTOTYPES.items():
    for _code, _value in _aus.items():
        PROTOTYPE_AUS[expression_index(_name), _A[_code]] = _value

# ----------------------------------------------------------------------------------------------
# identity parameters: a counter-based hash of (id, parameter index) -> uniform [0, 1)
# ----------------------------------------------------------------------------------------------
_M32 = 0xFFFFFFFF


def _int32_bits(value):
    """The signed 32-bit integer(s) with the same low 32 bits as ``value`` (an int or int64 tensor)."""
    value = value & _M32
    if isinstance(value, int):
        return value - (1 << 32) if value >= 1 << 31 else value
    return (value - (value >= 1 << 31).long() * (1 << 32)).int()


def hash_uniform(ids: Tensor, count: int, salt: int = 0) -> Tensor:
    """``[N, count]`` uniforms in ``[0, 1)``, a pure function of (id, index, salt).

    A 32-bit hash computed in int32, whose multiplication and addition wrap modulo 2**32 as
    the hash needs (``>>`` is arithmetic on int32, so each shift is masked to its low bits).
    tests/test_synth.py checks it against the same hash written in int64 with explicit masks.
    """
    base = _int32_bits((ids.long()[:, None] & _M32) * 0x9E3779B1 + salt * 0xC2B2AE3D)
    x = base + _int32_bits(torch.arange(count) * 0x85EBCA77)                    # [N, count]
    for mult in (0x7FEB352D, 0x846CA68B, 0x2C1B3C6D):  # lowbias32-style mixing rounds
        x.bitwise_xor_((x >> 16).bitwise_and_(0xFFFF))
        x.mul_(_int32_bits(mult))
    x.bitwise_xor_((x >> 15).bitwise_and_(0x1FFFF))
    return x.long().bitwise_and_(_M32).float().mul_(2.0**-32)


def _palette(table: Tensor, t: Tensor) -> Tensor:
    """Piecewise-linear colour ramp: ``t`` in [0, 1] -> ``[N, 3]``."""
    pos = t.clamp(0, 1) * (len(table) - 1)
    lo = pos.floor().long().clamp(max=len(table) - 2)
    frac = (pos - lo)[:, None]
    return table[lo] * (1 - frac) + table[lo + 1] * frac


_SKIN = torch.tensor([[0.97, 0.82, 0.72], [0.92, 0.74, 0.62], [0.82, 0.60, 0.46],
                      [0.68, 0.47, 0.33], [0.50, 0.33, 0.22], [0.33, 0.21, 0.14]])
_HAIR = torch.tensor([[0.07, 0.055, 0.05], [0.20, 0.13, 0.08], [0.38, 0.24, 0.13],
                      [0.55, 0.26, 0.11], [0.80, 0.64, 0.38], [0.62, 0.61, 0.60]])
_IRIS = torch.tensor([[0.22, 0.12, 0.06], [0.40, 0.24, 0.10], [0.45, 0.38, 0.16],
                      [0.28, 0.42, 0.24], [0.28, 0.46, 0.66], [0.46, 0.52, 0.58]])
_FRAME = torch.tensor([[0.05, 0.05, 0.05], [0.32, 0.18, 0.08], [0.55, 0.55, 0.58], [0.45, 0.08, 0.10]])
_SHIRT = torch.tensor([[0.15, 0.2, 0.4], [0.55, 0.1, 0.12], [0.9, 0.9, 0.88], [0.2, 0.35, 0.2],
                       [0.25, 0.25, 0.27], [0.75, 0.6, 0.3]])

#: Hair styles: 0 short, 1 medium, 2 long, 3 fringe, 4 buzz, 5 bald.
HAIR_STYLES = ("short", "medium", "long", "fringe", "buzz", "bald")
#: Facial hair: 0 none, 1 stubble, 2 moustache, 3 goatee, 4 full beard.
FACIAL_HAIR = ("none", "stubble", "moustache", "goatee", "beard")
_N_UNIFORMS = 48


def identity_params(identity: Tensor) -> dict[str, Tensor]:
    """Continuous identity parameters of each id (``[N]`` tensors, colours ``[N, 3]``).

    Deterministic in the id and identical on every machine (integer hashing, no RNG state).
    Shape: face width/length, jaw taper and squareness, eye size/spacing/height/shape, brow
    thickness/arch/height/length, nose length/width, lip thickness, mouth width/height/curve,
    ear size. Colour: skin tone and warmth, blush, iris, brows, lips, hair, shirt. Style: hair
    style/volume/length/hairline, facial hair, glasses. Expression: per-AU gains and asymmetry.
    """
    ids = identity.long().reshape(-1)
    r = hash_uniform(ids, _N_UNIFORMS)
    g = hash_uniform(ids, 2 * NUM_AUS, salt=1)
    masc = r[:, 0]  # 0: feminine-looking features, 1: masculine-looking
    p: dict[str, Tensor] = {}
    p["masc"] = masc
    p["a"] = 0.50 + 0.06 * r[:, 1] + 0.02 * masc
    p["b"] = 0.72 + 0.07 * r[:, 2]
    p["jaw"] = 0.08 + 0.18 * r[:, 3] - 0.06 * masc
    p["jaw_sq"] = 0.6 * r[:, 4] + 0.4 * masc
    tone = r[:, 5] ** 1.2
    p["tone"] = tone
    skin = _palette(_SKIN, tone)
    warm = (r[:, 6] - 0.5) * 0.08
    p["skin"] = (skin + torch.stack([warm, 0 * warm, -warm], 1)).clamp(0, 1)
    p["blush"] = 0.05 + 0.10 * r[:, 7] * (1 - 0.6 * masc)
    p["ew"] = 0.09 + 0.02 * r[:, 8]
    p["eh"] = (0.42 + 0.12 * r[:, 9]) * p["ew"]
    p["ex"] = 0.19 + 0.045 * r[:, 10]
    p["ye"] = -0.06 + 0.06 * r[:, 11]
    p["tilt"] = (r[:, 12] - 0.4) * 0.03
    iris_t = torch.where(tone > 0.5, r[:, 13] * 0.3, r[:, 13])
    p["iris"] = _palette(_IRIS, iris_t) * (0.8 + 0.3 * r[:, 14])[:, None]
    p["brow_th"] = 0.034 + 0.02 * r[:, 15] + 0.01 * masc
    p["brow_arch"] = 0.006 + 0.025 * r[:, 16] * (1.2 - 0.6 * masc)
    p["yb"] = p["ye"] - p["eh"] - 0.05 - 0.03 * r[:, 17]
    p["brow_out"] = p["ex"] + p["ew"] + 0.01 + 0.035 * r[:, 18]
    p["yn"] = 0.20 + 0.08 * r[:, 19]
    p["nw"] = 0.065 + 0.03 * r[:, 20] + 0.008 * masc
    p["lu"] = 0.026 + 0.02 * r[:, 21] * (1.2 - 0.5 * masc)
    p["ll"] = 0.034 + 0.022 * r[:, 22] * (1.2 - 0.4 * masc)
    p["mw"] = 0.14 + 0.045 * r[:, 23]
    p["ym"] = p["yn"] + 0.15 + 0.05 * r[:, 24]
    p["mouth_curve"] = (r[:, 25] - 0.5) * 0.02
    red = 0.25 + 0.35 * r[:, 26] * (1.3 - 0.6 * masc)
    p["lip"] = (skin * torch.stack([0.95 + 0 * red, 0.72 - 0.3 * red, 0.72 - 0.25 * red], 1)).clamp(0, 1)
    # hair: masculine faces get short styles more often, darker skin darker hair
    style_u = r[:, 27]
    short_bias = torch.where(masc > 0.5, style_u * 0.5 + 0.5 * (style_u > 0.7).float(), style_u)
    style = (short_bias * 6).long().clamp(max=5)
    style = torch.where(masc > 0.5, torch.tensor([0, 4, 0, 3, 4, 5])[style], torch.tensor([1, 2, 2, 3, 1, 0])[style])
    p["hair_style"] = style.float()
    hair_t = torch.where(tone > 0.55, r[:, 28] * 0.3, r[:, 28])
    hair_rgb = _palette(_HAIR, hair_t) * (0.85 + 0.3 * r[:, 29])[:, None]
    p["hair"] = hair_rgb.clamp(0, 1)
    p["brow"] = (hair_rgb * (0.35 + 0.25 * r[:, 30])[:, None] + 0.02).clamp(0, 1)
    p["hair_vol"] = 0.02 + 0.09 * r[:, 31]
    long_len = 0.55 + 0.45 * r[:, 32]
    p["hair_len"] = torch.where(style == 2, long_len, torch.where(style == 1, 0.25 + 0.2 * r[:, 32], p["ye"]))
    p["hairline"] = p["yb"] - 0.17 - 0.12 * r[:, 33] + torch.where(style == 3, 0.15 + 0.0 * r[:, 33], 0.0 * r[:, 33])
    beard_u = r[:, 34]
    beard = torch.where(masc > 0.55, (beard_u * 9).long().clamp(max=8), torch.zeros_like(style))
    p["beard"] = beard.clamp(max=4).float()  # values 5..8 -> 4 (full beard) is rare enough
    p["beard"] = torch.where(beard >= 5, torch.zeros_like(p["beard"]), p["beard"])
    p["glasses"] = (r[:, 35] < 0.2).float()
    p["glasses_round"] = (r[:, 36] < 0.5).float()
    p["frame"] = _FRAME[(r[:, 37] * 4).long().clamp(max=3)]
    p["ear"] = 0.9 + 0.25 * r[:, 38]
    p["shirt"] = _SHIRT[(r[:, 39] * 6).long().clamp(max=5)] * (0.8 + 0.3 * r[:, 40])[:, None]
    p["age"] = r[:, 41]
    p["gaze"] = (r[:, 42] - 0.5) * 0.3
    p["contempt_side"] = torch.where(r[:, 43] < 0.5, -1.0, 1.0)
    # expression idiosyncrasy: per-AU gains (0.85-1.15) and left/right imbalance (+-0.3)
    p["au_gain"] = 0.85 + 0.3 * g[:, :NUM_AUS]
    p["au_asym"] = (g[:, NUM_AUS:] - 0.5) * 0.6
    return p


# ----------------------------------------------------------------------------------------------
# emotions
# ----------------------------------------------------------------------------------------------
def _emotion_ids(emotion, n: int | None = None) -> Tensor:
    if isinstance(emotion, str):
        ids = torch.tensor([expression_index(emotion)])
    elif isinstance(emotion, int):
        ids = torch.tensor([emotion])
    elif isinstance(emotion, Tensor):
        ids = emotion.long().reshape(-1)
    elif isinstance(emotion, (list, tuple)):
        ids = torch.tensor([expression_index(e) if isinstance(e, str) else int(e) for e in emotion])
    else:
        raise TypeError(f"emotion must be a name, an int or a LongTensor; got {type(emotion).__name__}")
    if ((ids < 0) | (ids >= len(EXPRESSIONS))).any():
        raise ValueError(f"emotion index out of range 0..{len(EXPRESSIONS) - 1}; valid expressions are {list(EXPRESSIONS)}")
    if n is not None and len(ids) == 1:
        ids = ids.expand(n)
    return ids


def emotion_aus(emotion, intensity=5.0, identity=None) -> Tensor:
    """AU intensities ``[N, 17]`` of an emotion at ``intensity`` in [0, 5] (5 = the prototype's peak).

    ``emotion``: a name from ``facelib.EXPRESSIONS``, an index, or a LongTensor of indices.
    With ``identity`` (int or LongTensor), each person's own AU gains (0.75-1.25) apply, so one
    emotion looks different on different people (asymmetry is a render-time effect, see
    :func:`emotion_asymmetry`).
    """
    intensity = torch.as_tensor(intensity, dtype=torch.float32).reshape(-1)
    ident = None if identity is None else torch.as_tensor(identity).long().reshape(-1)
    n = max(len(intensity), 1 if ident is None else len(ident))
    ids = _emotion_ids(emotion, n)
    n = max(n, len(ids))
    if ((intensity < 0) | (intensity > AU_MAX)).any():
        raise ValueError(f"intensity must lie in [0, {AU_MAX}]; got values in [{intensity.min():.3g}, {intensity.max():.3g}]")
    aus = PROTOTYPE_AUS[ids].expand(n, -1) * (intensity.expand(n) / AU_MAX)[:, None]
    if ident is not None:
        aus = aus * identity_params(ident.expand(n))["au_gain"]
    return aus.clamp(0, AU_MAX)


def emotion_asymmetry(emotion, identity) -> Tensor:
    """Left/right AU balance ``[N, 17]`` in [-1, 1] for rendering an emotion on identities.

    0 is symmetric, +1 acts only on the image-right half, -1 only on the left. Each identity has
    its own mild imbalance (+-0.3, e.g. lopsided smiles); contempt is unilateral (AU12 and AU14 on
    one side, which side is part of the identity).
    """
    ident = torch.as_tensor(identity).long().reshape(-1)
    ids = _emotion_ids(emotion, len(ident))
    params = identity_params(ident.expand(len(ids)) if len(ident) == 1 else ident)
    asym = params["au_asym"].clone()
    contempt = ids == expression_index("contemptuous")
    for code in (12, 14):
        asym[:, _A[code]] = torch.where(contempt, params["contempt_side"], asym[:, _A[code]])
    return asym


# ----------------------------------------------------------------------------------------------
# small analytic helpers
# ----------------------------------------------------------------------------------------------
#: Width of anti-aliased edges in pixels: wide enough that bilinear resampling (a warp by a
#: fractional flow) reproduces them, the premise of the ground-truth check.
_EDGE = 2.0
#: Smallest standard deviation of a line in pixels, for the same reason.
_LINE_MIN = 0.6


def _cover(sd: Tensor, px: float) -> Tensor:
    """Anti-aliased coverage of the region ``sd < 0`` (``sd`` a signed distance in normalised units)."""
    return (0.5 - sd * (1.0 / (_EDGE * px))).clamp_(0, 1)


def _line(d: Tensor, width, px: float) -> Tensor:
    """A soft line of half-width ``width`` at ``d = 0``, pre-filtered to the pixel size.

    Lines thinner than a pixel widen and fade instead of aliasing: the integrated darkness is
    the same at every resolution. The profile is :func:`_bell`, zero beyond 2.83 widths.
    """
    w2 = width * width + (_LINE_MIN * px) ** 2
    q = torch.square(d)
    q = q.div_(w2) if isinstance(w2, float) else q / w2  # a per-pixel width may broadcast: not in place
    return _bell_(q).mul_(width / w2**0.5)


def _reach(width: float, px: float) -> float:
    """Distance beyond which a :func:`_line` of this half-width is exactly zero."""
    return 2.83 * math.sqrt(width * width + (_LINE_MIN * px) ** 2)


def _bell(q: Tensor) -> Tensor:
    """``(1 - q/8)^4`` for ``q < 8``, else 0: a Gaussian ``exp(-q/2)`` look-alike with compact support.

    Every soft layer uses it, so a layer is exactly zero outside its window (|offset| < 2.83 sigma):
    rendering a face alone or inside any batch gives bit-identical pixels.
    """
    return _bell_(q.clone())


def _bell_(q: Tensor) -> Tensor:
    """:func:`_bell` computed in place in ``q`` (a temporary the caller no longer needs)."""
    t = q.mul_(-0.125).add_(1).clamp_(min=0)
    t.mul_(t)
    return t.mul_(t)


def _fine(freq: float, px: float) -> float:
    """Amplitude of a texture of spatial frequency ``freq`` (radians per unit) at this pixel size."""
    return math.exp(-0.5 * (freq * px * 0.5) ** 2)


def _mix(colour: Tensor, layer: Tensor, alpha: Tensor) -> Tensor:
    """Alpha-composite ``layer`` ([n,3,...] or [n,3,1,1]) over ``colour`` with ``alpha`` [n,...].

    ``colour + (layer - colour) * alpha``, as one fused pass (``torch.lerp``).
    """
    return torch.lerp(colour, layer, alpha.unsqueeze(1))


def _rgb(c: Tensor) -> Tensor:
    return c[:, :, None, None]


def _v(x: Tensor) -> Tensor:
    return x[:, None, None]


def _gauss(x: Tensor, y: Tensor, cx, cy, sx, sy) -> Tensor:
    """Compact 2-D bell (see :func:`_bell`) with "sigmas" ``sx, sy``; None means constant along that axis."""
    if sx is None:
        return _bell_((y - cy).square_().mul_(1 / sy**2))
    if sy is None:
        return _bell_((x - cx).square_().mul_(1 / sx**2))
    return _bell_((x - cx).square_().mul_(1 / sx**2).add_((y - cy).square_().mul_(1 / sy**2)))


# ----------------------------------------------------------------------------------------------
# pose: 2.5-D surface, yaw about the vertical axis, orthographic projection
# ----------------------------------------------------------------------------------------------
_DOME = (0.45, 0.42, 0.75, 0.05)  # amplitude, sigma_x, sigma_y, centre_y
_Z0 = 0.2  # depth of the rotation axis, so the head turns about its middle, not its tip
_NEWTON_POSE = 4


_NOSE = (0.05, 0.045, 0.11, 0.08)  # amplitude, sigma_x, sigma_y, height above the nose tip


def _depth_rows(y: Tensor, yn: Tensor) -> tuple[Tensor, Tensor]:
    """The y factors of the depth surface's two Gaussians (dome, nose), amplitudes included.

    Both Gaussians factor into an x part and a y part; the pose inverse works row by row, so it
    computes these once per row instead of once per Newton step and pixel.
    """
    amp, _, sy, cy = _DOME
    nose_amp, _, nose_sy, nose_up = _NOSE
    dome_y = torch.exp(-0.5 * ((y - cy) / sy) ** 2).mul_(amp)
    nose_y = torch.exp(-0.5 * ((y - (yn - nose_up)) / nose_sy) ** 2).mul_(nose_amp)
    return dome_y, nose_y


def _pose_depth(x: Tensor, dome_y: Tensor, nose_y: Tensor) -> tuple[Tensor, Tensor]:
    """Depth of the face surface used for the pose map and its x-derivative, from :func:`_depth_rows`."""
    sx, nose_sx = _DOME[1], _NOSE[1]
    dome = torch.mul(x, 1 / sx).square_().mul_(-0.5).exp_().mul_(dome_y)
    nose = torch.mul(x, 1 / nose_sx).square_().mul_(-0.5).exp_().mul_(nose_y)
    z = dome + nose
    dz = dome.mul_(1 / sx**2).add_(nose.mul_(1 / nose_sx**2)).mul_(x).neg_()
    return z, dz


def _pose_forward(w: Tensor, yn: Tensor, sin_t: Tensor, squash: Tensor) -> Tensor:
    """Face-plane points ``w`` [n,2,...] -> image points (normalised)."""
    z, _ = _pose_depth(w[:, 0], *_depth_rows(w[:, 1], yn))
    return torch.stack([squash * w[:, 0] + sin_t * (z - _Z0), w[:, 1]], 1)


def _pose_inverse(px_: Tensor, py_: Tensor, yn: Tensor, sin_t: Tensor, squash: Tensor) -> Tensor:
    """Image points -> face-plane x (Newton on ``squash*x + sin*(z(x, y) - z0) = p_x``)."""
    if not bool((sin_t != 0).any()):
        return px_.clone()  # frontal: the pose map is the identity
    x = (px_ + sin_t * _Z0) / squash
    rows = _depth_rows(py_[:, :, :1], yn)  # y is fixed along a pixel row: one column suffices
    for _ in range(_NEWTON_POSE):
        z, dz = _pose_depth(x, *rows)
        x = x - (squash * x + sin_t * (z - _Z0) - px_) / (squash + sin_t * dz)
    return x


# ----------------------------------------------------------------------------------------------
# expression: anchored Gaussian displacements (inverse map u = v - D(v)) on a coarse grid
# ----------------------------------------------------------------------------------------------
_GRID = 28          # coarse grid nodes per side
_GRID_RANGE = 1.3   # the coarse grid spans [-R, R]^2 of the face plane

# (name, sided, sigma, {AU code: (dx outward, dy) per AU unit})
_ANCHORS = (
    ("brow_inner", True, 0.085, {1: (0.0, -0.030), 4: (-0.014, 0.020), 9: (-0.004, 0.010)}),
    ("brow_mid", True, 0.09, {1: (0.0, -0.012), 2: (0.0, -0.020), 4: (-0.007, 0.014)}),
    ("brow_outer", True, 0.085, {2: (0.0, -0.026), 4: (0.0, 0.005), 6: (0.0, 0.005)}),
    ("lid_upper", True, 0.065, {5: (0.0, -0.014), 7: (0.0, 0.006), 45: (0.0, 0.008)}),
    ("lid_lower", True, 0.05, {6: (0.0, -0.008), 7: (0.0, -0.012)}),
    ("cheek", True, 0.09, {6: (0.002, -0.016), 12: (0.007, -0.012), 10: (0.0, -0.004), 9: (0.0, -0.004)}),
    ("nose_wing", True, 0.055, {9: (0.003, -0.014), 10: (0.001, -0.007), 12: (0.001, -0.003)}),
    ("lip_upper_side", True, 0.055, {10: (0.0, -0.014), 9: (0.0, -0.007), 12: (0.003, -0.003)}),
    ("mouth_corner", True, 0.065, {12: (0.014, -0.020), 14: (0.012, -0.004), 15: (0.003, 0.022),
                                   20: (0.036, 0.008), 23: (-0.030, 0.0), 26: (-0.005, 0.014),
                                   25: (0.0, 0.003), 10: (0.002, -0.005), 6: (0.001, -0.003)}),
    ("lip_upper_mid", False, 0.05, {10: (0.0, -0.013), 9: (0.0, -0.006)}),
    ("lip_lower_mid", False, 0.06, {17: (0.0, -0.024), 15: (0.0, 0.004), 20: (0.0, 0.003)}),
    ("chin", False, 0.09, {17: (0.0, -0.024)}),
)


def _anchor_positions(P: dict) -> dict[str, tuple[Tensor, Tensor]]:
    """Canonical (x on the image-right side, y) of each anchor, ``[n]`` tensors."""
    z = torch.zeros_like(P["a"])
    brow_in = 0.07 + 0 * z
    return {
        "brow_inner": (brow_in + 0.02, P["yb"]),
        "brow_mid": ((brow_in + P["brow_out"]) / 2, P["yb"] - P["brow_arch"]),
        "brow_outer": (P["brow_out"] - 0.02, P["yb"] - 0.3 * P["brow_arch"]),
        "lid_upper": (P["ex"], P["ye"] - P["eh"] - 0.03),
        "lid_lower": (P["ex"], P["ye"] + 0.7 * P["eh"] + 0.035),
        "cheek": (P["ex"] + 0.02, P["ye"] + 0.17),
        "nose_wing": (P["nw"], P["yn"] + 0.01),
        "lip_upper_side": (0.06 + z, P["ym"] - 0.5 * P["lu"] - 0.01),
        "mouth_corner": (P["mw"], P["ym"]),
        "lip_upper_mid": (z, P["ym"] - 0.6 * P["lu"]),
        "lip_lower_mid": (z, P["ym"] + 0.6 * P["ll"]),
        "chin": (z, P["a"] * 0 + P["b"] - 0.1),
    }


_ANCHOR_TABLE = None


def _anchor_table() -> tuple[Tensor, Tensor, Tensor, list[tuple[str, int]]]:
    """Per-anchor AU coefficients ``[K, 17, 2]`` (dx outward, dy), sigmas ``[K]``, sides ``[K]``."""
    global _ANCHOR_TABLE
    if _ANCHOR_TABLE is None:
        rows, sig, side, names = [], [], [], []
        for name, sided, sigma, effects in _ANCHORS:
            for s in ((-1, 1) if sided else (0,)):
                coef = torch.zeros(NUM_AUS, 2)
                for code, (dx, dy) in effects.items():
                    coef[_A[code]] = torch.tensor([dx * (s if s else 1), dy])
                rows.append(coef)
                sig.append(sigma)
                side.append(s)
                names.append((name, s))
        _ANCHOR_TABLE = (torch.stack(rows), torch.tensor(sig), torch.tensor(side, dtype=torch.float32), names)
    return _ANCHOR_TABLE


def _displacement(vx: Tensor, vy: Tensor, P: dict, au_l: Tensor, au_r: Tensor) -> tuple[Tensor, Tensor]:
    """Expression displacement D(v) at face-plane points ``[n, H, W]``."""
    coef, sig, side, names = _anchor_table()
    pos = _anchor_positions(P)
    ax = torch.stack([pos[name][0] * (s if s else 0.0) for name, s in names], 1)   # [n, K]
    ay = torch.stack([pos[name][1] for name, _ in names], 1)                         # [n, K]
    au_k = torch.where(side[None, :, None] < 0, au_l[:, None], torch.where(side[None, :, None] > 0, au_r[:, None], (au_l[:, None] + au_r[:, None]) / 2))
    disp = torch.einsum("nka,kad->nkd", au_k, coef)                                 # [n, K, 2]
    # soft saturation keeps every anchor's gradient below ~0.8, so the map never folds
    mag = disp.norm(dim=-1, keepdim=True).clamp_min(1e-9)
    cap = 1.2 * sig[None, :, None]
    disp = disp * (cap * torch.tanh(mag / cap) / mag)
    active = (disp.abs().amax((0, 2)) > 0).nonzero()[:, 0]  # anchors some image in the chunk moves
    disp, ax, ay, sig = disp[:, active], ax[:, active], ay[:, active], sig[active]
    # compact bells (zero beyond 2.8 sigma: far regions do not move at all) on the grid
    # (the squared distance is separable: scale the two 1-D parts, then add them on the grid)
    inv2 = 1.0 / sig[None, :, None] ** 2
    dxk = (vx[:, 0][:, None] - ax[..., None]).square_().mul_(inv2)                   # [n, K, W]
    dyk = (vy[:, :, 0][:, None] - ay[..., None]).square_().mul_(inv2)                # [n, K, H]
    g = _bell_(dyk[..., :, None] + dxk[..., None, :])                                # [n, K, H, W]
    # sum over anchors of bell * displacement, for x and y at once: [n, 2, K] @ [n, K, H*W]
    d = torch.bmm(disp.transpose(1, 2), g.flatten(2)).unflatten(2, vx.shape[1:])
    dx, dy = d[:, 0], d[:, 1]
    # AU23 lip tightener and AU20 lip stretcher: squeeze (thin, flatten) the lips toward the mouth line
    k23 = (0.2 * (au_l[:, _A[23]] + au_r[:, _A[23]]) + 0.06 * (au_l[:, _A[20]] + au_r[:, _A[20]])
           + 0.08 * (au_l[:, _A[14]] + au_r[:, _A[14]])) / 2
    mouth = _bell((vx / _v(P["mw"])) ** 2 + ((vy - _v(P["ym"])) / 0.07) ** 2)
    dy = dy - _v(k23) * (vy - _v(P["ym"])) * mouth
    # AU20 lip stretcher stretches the mouth region sideways, AU14 pulls the corners back a
    # little, AU23 narrows the lips (per side)
    stretch_l = 0.09 * au_l[:, _A[20]] + 0.035 * au_l[:, _A[14]] - 0.04 * au_l[:, _A[23]]
    stretch_r = 0.09 * au_r[:, _A[20]] + 0.035 * au_r[:, _A[14]] - 0.04 * au_r[:, _A[23]]
    stretch = torch.where(vx < 0, _v(stretch_l), _v(stretch_r))
    dx = dx + stretch * vx * _bell((vx / (1.5 * _v(P["mw"]))) ** 2 + ((vy - _v(P["ym"])) / 0.07) ** 2)
    # AU12 / AU15 bend the mouth into a U / an arch (the corners move, the middle stays)
    # (per side: a one-sided smile bends one corner only)
    bend_l = 0.013 * au_l[:, _A[15]] - 0.016 * au_l[:, _A[12]]
    bend_r = 0.013 * au_r[:, _A[15]] - 0.016 * au_r[:, _A[12]]
    bend = torch.where(vx < 0, _v(bend_l), _v(bend_r))
    mouth_wide = _bell((vx / (1.2 * _v(P["mw"]))) ** 4 + ((vy - _v(P["ym"])) / 0.08) ** 2)
    dy = dy + bend * (vx / _v(P["mw"])) ** 2 * mouth_wide
    # AU26 jaw drop: the lower face below the mouth slides down, fading below the chin
    jaw = 0.03 * (au_l[:, _A[26]] + au_r[:, _A[26]]) / 2
    t = ((vy - _v(P["ym"]) - 0.03) / 0.16 + 0.5).clamp(0, 1)
    below = t * t * (3 - 2 * t)  # smoothstep over 0.16 around 0.03 below the mouth
    fade = _bell((vx / 0.32) ** 2 + ((vy - _v(P["b"])).clamp_min(0) / 0.06) ** 2)
    dy = dy + _v(jaw) * below * fade
    return dx, dy


def _expression_grid(P: dict, au_l: Tensor, au_r: Tensor) -> Tensor:
    """Inverse expression map ``u = v - D(v)`` on the coarse grid: ``[n, 2, G, G]``."""
    n = au_l.shape[0]
    nodes = (torch.arange(_GRID, dtype=torch.float32) + 0.5) * (2 * _GRID_RANGE / _GRID) - _GRID_RANGE
    vy, vx = torch.meshgrid(nodes, nodes, indexing="ij")
    vx, vy = vx.expand(n, -1, -1), vy.expand(n, -1, -1)
    dx, dy = _displacement(vx, vy, P, au_l, au_r)
    return torch.stack([vx - dx, vy - dy], 1)


def _sample_grid(grid: Tensor, vx: Tensor, vy: Tensor) -> tuple[Tensor, Tensor]:
    """Bilinear lookup of the coarse map at face-plane points ``[n, ...]`` (any trailing shape)."""
    shape = vx.shape
    g = torch.stack([vx, vy], -1).div_(_GRID_RANGE).view(shape[0], -1, 1, 2)
    out = F.grid_sample(grid, g, mode="bilinear", padding_mode="border", align_corners=False)
    return out[:, 0].reshape(shape), out[:, 1].reshape(shape)


def _opening(P: dict, au_l: Tensor, au_r: Tensor) -> tuple[Tensor, Tensor]:
    """How far the upper / lower lip branch separate at the mouth centre, ``[n]`` each."""
    au = (au_l + au_r) / 2
    g_up = 0.006 * au[:, _A[25]] + 0.004 * au[:, _A[10]] + 0.003 * au[:, _A[26]]
    g_low = 0.011 * au[:, _A[25]] + 0.024 * au[:, _A[26]]
    return g_up, g_low


def _like(value: Tensor, field: Tensor) -> Tensor:
    """View a per-image ``[n]`` value so it broadcasts against ``field`` ``[n, ...]``."""
    return value.reshape(-1, *([1] * (field.ndim - 1)))


_LENS_REACH = 0.4


def _mouth_line(ux: Tensor, P: dict) -> Tensor:
    return _like(P["ym"], ux) + _like(P["mouth_curve"], ux) * (ux / _like(P["mw"], ux)) ** 2


def _branches(ux: Tensor, uy: Tensor, P: dict, g_up: Tensor, g_low: Tensor):
    """Split the base canonical point into the upper-lip and lower-lip branches.

    Returns (y of the upper branch, y of the lower branch, signed distance of each to the
    mouth line). The branches differ only between the lip corners, by a lens-shaped opening.
    """
    t2 = (ux / _like(P["mw"], ux)) ** 2
    dy = uy - _mouth_line(ux, P)
    # lens-shaped opening: zero beyond the lip corners and beyond |dy| = _LENS_REACH
    reach = (1 - (dy / _LENS_REACH) ** 2).clamp_min(0)
    lens = (1 - t2).clamp_min(0) ** 1.5 * torch.exp(-0.5 * (dy / 0.1) ** 2) * reach * reach
    up = _like(g_up, ux) * lens
    low = _like(g_low, ux) * lens
    return uy + up, uy - low, dy + up, dy - low


# ----------------------------------------------------------------------------------------------
# appearance
# ----------------------------------------------------------------------------------------------
def _side_values(au_l: Tensor, au_r: Tensor) -> dict[str, Tensor]:
    """Per-side AU-driven quantities for the lids and wrinkles, ``[n, 2]`` (left, right)."""
    au = torch.stack([au_l, au_r], 1) / AU_MAX  # [n, 2, 17] in [0, 1]
    k = {code: au[..., _A[code]] for code in AU_CODES}
    return {
        "open": (1 + 0.8 * k[5] - 0.45 * k[7] - 0.15 * k[6] - 1.0 * k[45]).clamp(0, 1.8),
        "raise": (0.35 * k[6] + 0.85 * k[7]).clamp(0, 0.95),
        "k": k,
    }


def _sided(values: Tensor, right: Tensor) -> Tensor:
    """Pick the left or right value of ``[n, 2]`` per pixel (``right``: bool ``[n, H, W]``)."""
    return torch.where(right, values[:, 1, None, None], values[:, 0, None, None])


_ZMAX = 0.5  # largest depth of the pose surface (dome + nose)


def _lo(value) -> float:
    return float(value.min()) if isinstance(value, Tensor) else float(value)


def _hi(value) -> float:
    return float(value.max()) if isinstance(value, Tensor) else float(value)


class _Region:
    """Where canonical boxes can appear on the pixel grid of a chunk (or of a crop of it).

    Rows depend only on the expression map (yaw moves pixels sideways), so a canonical y-range
    maps to image rows through the chunk's largest vertical displacement; columns also go
    through the pose map's bounds. No pixel is tested: windows are exact upper bounds. The
    bounds are plain Python numbers, so asking for a window costs microseconds.
    """

    def __init__(self, size: int, squash: Tensor, sin: Tensor, dx: float, dy: Tensor,
                 r0: int = 0, c0: int = 0, h: int | None = None, w: int | None = None):
        # dy: [G] largest vertical displacement on each coarse-grid row of the expression map
        self.size, self.squash, self.sin, self.dx, self.dy = size, squash.reshape(-1), sin.reshape(-1), dx, dy
        self.r0, self.c0 = r0, c0
        self.h, self.w = (size if h is None else h), (size if w is None else w)
        self.px = 2.0 / size
        # around grid row j (|v - node_j| <= spacing) |D| is at most the largest of rows j-1..j+1
        spacing = 2 * _GRID_RANGE / _GRID
        near = F.max_pool1d(dy[None, None], 3, 1, 1)[0, 0].tolist()
        self._rows = [((j + 0.5) * spacing - _GRID_RANGE, d) for j, d in enumerate(near)]
        self._spacing = spacing
        sq, sn = self.squash.tolist(), self.sin.tolist()
        self._pose = [(q, min(t * -_Z0, t * (_ZMAX - _Z0)), max(t * -_Z0, t * (_ZMAX - _Z0))) for q, t in zip(sq, sn)]

    def crop(self, w) -> "_Region":
        return _Region(self.size, self.squash, self.sin, self.dx, self.dy, self.r0 + w[0].start, self.c0 + w[1].start,
                       w[0].stop - w[0].start, w[1].stop - w[1].start)

    def rigid(self) -> "_Region":
        """The same region for boxes in face-plane coordinates (no expression displacement)."""
        return _Region(self.size, self.squash, self.sin, 0.0, torch.zeros_like(self.dy), self.r0, self.c0, self.h, self.w)

    def sub(self, index: Tensor) -> "_Region":
        return _Region(self.size, self.squash[index], self.sin[index], self.dx, self.dy, self.r0, self.c0, self.h, self.w)

    def side_windows(self, x0, x1, y0, y1) -> list:
        """The box ``x0 <= |ux| <= x1`` as a left and a right window, or as one window when those
        would overlap: for features on both sides of the face, the columns between are skipped."""
        left = self.window(-x1, -x0, y0, y1, absolute=False)
        right = self.window(x0, x1, y0, y1, absolute=False)
        if left and right and left[1].stop <= right[1].start:
            return [left, right]
        both = self.window(x0, x1, y0, y1)
        return [both] if both else []

    def window(self, x0, x1, y0, y1, absolute: bool = True):
        """Slices (relative to this region) covering the canonical box; None if it is empty here.

        The box is ``x0 <= |ux| <= x1`` (``x0 <= ux <= x1`` if not ``absolute``) and
        ``y0 <= uy <= y1``, bounds per image or scalars.
        """
        if not self._pose:
            return None
        S = self.size
        margin = 3.0 / S  # anti-aliasing reach of an edge: 1.5 pixels
        box_lo, box_hi = _lo(y0), _hi(y1)
        # pixel rows v whose canonical y = v - D(v) can fall in the box
        y_lo, y_hi = math.inf, -math.inf
        for node, d in self._rows:
            lo = max(box_lo - d - margin, node - self._spacing)
            hi = min(box_hi + d + margin, node + self._spacing)
            if lo <= hi:
                y_lo, y_hi = min(y_lo, lo), max(y_hi, hi)
        if y_lo > y_hi:
            return None
        v_hi = _hi(x1) + self.dx + margin
        v_lo = -v_hi if absolute else _lo(x0) - self.dx - margin
        x_lo = min(q * v_lo + s_min for q, s_min, _ in self._pose)
        x_hi = max(q * v_hi + s_max for q, _, s_max in self._pose)
        rows = (max(self.r0, math.floor((y_lo + 1) * S / 2 - 0.5)), min(self.r0 + self.h, math.ceil((y_hi + 1) * S / 2 - 0.5) + 1))
        cols = (max(self.c0, math.floor((x_lo + 1) * S / 2 - 0.5)), min(self.c0 + self.w, math.ceil((x_hi + 1) * S / 2 - 0.5) + 1))
        if rows[1] <= rows[0] or cols[1] <= cols[0]:
            return None
        return slice(rows[0] - self.r0, rows[1] - self.r0), slice(cols[0] - self.c0, cols[1] - self.c0)


def _bump_into(zx: Tensor, zy: Tensor, x: Tensor, y: Tensor, cx, cy, sx, sy, amp) -> None:
    """Add a Gaussian bump's depth gradient to ``zx, zy`` (in place)."""
    g = _gauss(x, y, cx, cy, sx, sy).mul_(amp)
    zx.sub_((x - cx).mul_(g).mul_(1 / (sx * sx)))
    zy.sub_((y - cy).mul_(g).mul_(1 / (sy * sy)))


def _normals_shade(ux: Tensor, uy: Tensor, P: dict, scene: dict, R: _Region) -> tuple[Tensor, Tensor]:
    """Diffuse shade and specular term of the canonical surface, lit after turning it by the yaw.

    The surface is the pose dome plus local bumps: nose (bridge, tip, wings), brow ridge, eye
    sockets, cheekbones, lips and chin. Shading is attached to the face, so two expressions of
    one face under one light differ only by the deformation and the texture layers.
    """
    ex, ye, yb, yn, ym, b, nw = (_v(P[key]) for key in ("ex", "ye", "yb", "yn", "ym", "b", "nw"))
    amp, sx, sy, cy = _DOME
    dome = _gauss(ux, uy, 0.0, cy, sx, sy).mul_(amp)
    zx = torch.mul(ux, -1 / sx**2).mul_(dome)
    zy = torch.sub(uy, cy).mul_(-1 / sy**2).mul_(dome)
    w = R.window(0.0, 0.17, yn - 0.35, yn + 0.17)  # supports of the nose bumps
    if w:
        cux, cuy, czx, czy = ux[:, w[0], w[1]], uy[:, w[0], w[1]], zx[:, w[0], w[1]], zy[:, w[0], w[1]]
        _bump_into(czx, czy, cux, cuy, 0.0, yn - 0.09, 0.03, 0.09, 0.045)    # nose bridge
        _bump_into(czx, czy, cux, cuy, 0.0, yn - 0.01, 0.032, 0.03, 0.04)    # nose tip
        dzx, dzy = torch.zeros_like(cux), torch.zeros_like(cux)
        _bump_into(dzx, dzy, cux.abs(), cuy, nw * 0.7, yn + 0.005, 0.03, 0.025, 0.018)  # nose wings
        czx += dzx * torch.sign(cux)
        czy += dzy
    w = R.window(0.0, 0.56, yb - 0.09, ye + 0.35)  # brow ridge, sockets, cheekbones
    if w:
        cux, cuy = ux[:, w[0], w[1]], uy[:, w[0], w[1]]
        cxm = cux.abs()
        dzx, dzy = torch.zeros_like(cux), torch.zeros_like(cux)
        _bump_into(dzx, dzy, cxm, cuy, 0.2, yb + 0.015, 0.12, 0.035, 0.025)          # brow ridge
        _bump_into(dzx, dzy, cxm, cuy, ex, ye, 0.08, 0.05, -0.035)                   # eye sockets
        _bump_into(dzx, dzy, cxm, cuy, ex + 0.06, ye + 0.15, 0.09, 0.07, 0.03)       # cheekbones
        zx[:, w[0], w[1]] += dzx * torch.sign(cux)
        zy[:, w[0], w[1]] += dzy
    w = R.window(0.0, 0.32, ym - 0.1, b + 0.07)  # lips and chin
    if w:
        cux, cuy, czx, czy = ux[:, w[0], w[1]], uy[:, w[0], w[1]], zx[:, w[0], w[1]], zy[:, w[0], w[1]]
        _bump_into(czx, czy, cux, cuy, 0.0, ym - 0.01, 0.11, 0.03, 0.012)   # upper lip
        _bump_into(czx, czy, cux, cuy, 0.0, ym + 0.035, 0.09, 0.025, 0.014)  # lower lip
        _bump_into(czx, czy, cux, cuy, 0.0, b - 0.11, 0.11, 0.06, 0.025)    # chin
    # unit normal (-zx, -zy, 1) / |.|, turned by the yaw: n = inv * (sin - cos zx, -zy, cos + sin zx)
    inv = torch.rsqrt(zx * zx + zy * zy + 1)
    sin_t, cos_t = scene["sin"], scene["cos"]

    def dot(d: Tensor) -> Tensor:
        """n . d for per-image directions ``d`` [n, 3], linear in (zx, zy) before the 1/|.| scale."""
        a = _v(d[:, 2]) * sin_t - _v(d[:, 0]) * cos_t
        c = _v(d[:, 0]) * sin_t + _v(d[:, 2]) * cos_t
        return (zx * a).sub_(zy * _v(d[:, 1])).add_(c).mul_(inv).clamp_(min=0)

    shade = dot(scene["light"]).add_(_v(scene["ambient"]))
    spec = dot(scene["half"])
    spec.mul_(spec)
    spec.mul_(spec)
    return shade, spec.mul_(spec).mul_(0.08)  # (n.h)^8


def _wrinkles(ux: Tensor, uy: Tensor, P: dict, sv: dict, px: float, R: _Region) -> tuple[Tensor, Tensor]:
    """Darkening by AU-dependent wrinkles (texture), and by the identity's own lines (geometry).

    AU4 furrow, AU1/AU2 forehead lines, AU9 nose wrinkles, AU6 crow's feet, AU6/AU7 lower-lid
    furrow, nasolabial folds deepened by AU12/AU9/AU10/AU6, AU14 dimples, AU15 marionette lines,
    AU17 chin (mentolabial sulcus, dimpling); negative values brighten (cheek apples, AU6/AU12).
    """
    k = sv["k"]
    ex, ew, eh, ye, yb, yn, ym, mw, nw, ll, b = (_v(P[key]) for key in ("ex", "ew", "eh", "ye", "yb", "yn", "ym", "mw", "nw", "ll", "b"))
    age = _v(P["age"])
    reach = _reach(0.007, px)  # how far the widest line reaches
    wr = torch.zeros_like(ux)
    age_dark = torch.zeros_like(ux)
    mean = {code: _v((k[code][:, 0] + k[code][:, 1]) / 2) for code in (1, 4, 9, 17, 23)}
    active = {code: bool((k[code] > 0).any()) for code in AU_CODES}
    if active[4] or active[9] or active[1] or active[2]:
        w = R.window(0.0, 0.53, yb - 0.24 - reach, ye + 0.06 + reach)
        if w:
            cux, cuy = ux[:, w[0], w[1]], uy[:, w[0], w[1]]
            cxm = cux.abs()
            furrow = _line(cxm - 0.022, 0.004, px) * _gauss(cxm, cuy, 0.0, yb + 0.02, None, 0.045)
            bridge_y = ye + 0.03
            nose_lines = (_line(cuy - bridge_y, 0.004, px) + _line(cuy - bridge_y - 0.03, 0.004, px)) * _gauss(cxm, cuy, 0.0, bridge_y, 0.04, None)
            fh = torch.zeros_like(cux)
            bend = 0.018 * (cxm / 0.3) ** 2
            for i in range(3):
                fh = fh + _line(cuy - (yb - 0.11 - 0.055 * i - bend), 0.004, px)
            forehead = (0.7 * mean[1] * _gauss(cxm, cuy, 0.0, yb, 0.16, None)
                        + 0.6 * _sided(k[2], cux > 0) * _gauss(cxm, cuy, 0.24, yb, 0.1, None)) * fh
            wr[:, w[0], w[1]] += 0.6 * mean[4] * furrow + 0.5 * mean[9] * nose_lines + 0.4 * forehead
    for w in R.side_windows(ex + ew, ex + ew + 0.15, ye - 0.15, ye + 0.15):
        cux, cuy = ux[:, w[0], w[1]], uy[:, w[0], w[1]]
        cxm = cux.abs()
        corner_x = ex + ew + 0.012
        crow = torch.zeros_like(cux)
        for slope in (-0.55, 0.0, 0.55):
            crow = crow + _line((cuy - ye) - slope * (cxm - corner_x), 0.0035, px)
        crow = crow * ((cxm - corner_x) / 0.012).clamp(0, 1) * _gauss(cxm, cuy, corner_x + 0.03, ye, 0.035, 0.05)
        wr[:, w[0], w[1]] += 0.45 * _sided(k[6], cux > 0) * crow
        age_dark[:, w[0], w[1]] += 0.05 * age * crow
    if active[6] or active[7]:
        w = R.window(ex - 0.2, ex + 0.2, ye + 0.8 * eh + 0.03 - reach, ye + 0.8 * eh + 0.03 + reach)
        if w:
            cux, cuy = ux[:, w[0], w[1]], uy[:, w[0], w[1]]
            right = cux > 0
            eyebag = _line(cuy - (ye + eh * 0.8 + 0.03), 0.004, px) * _gauss(cux.abs(), cuy, ex, ye, 0.07, 1.0)
            wr[:, w[0], w[1]] += (0.15 * _sided(k[6], right) + 0.35 * _sided(k[7], right)) * eyebag
    if active[45] or active[7]:
        # closed or tightened lids: the lid skin folds over the eye and its socket shades (AU45, AU7)
        w = R.window(ex - 2.3 * ew, ex + 2.3 * ew, ye - 3.8 * eh, ye + 3.8 * eh)
        if w:
            cux, cuy = ux[:, w[0], w[1]], uy[:, w[0], w[1]]
            right = cux > 0
            socket = _gauss(cux.abs(), cuy, ex, ye, 0.8 * ew, 1.3 * eh)
            wr[:, w[0], w[1]] += (0.5 * _sided(k[45], right) + 0.15 * _sided(k[7], right)) * socket
    w = R.window(0.0, mw + 0.06 + reach, yn - 0.04, b + 0.06)
    if w:
        cux, cuy = ux[:, w[0], w[1]], uy[:, w[0], w[1]]
        cxm, right = cux.abs(), cux > 0
        k6, k12, k10, k9 = (_sided(k[c], right) for c in (6, 12, 10, 9))
        fold_t = ((cuy - yn + 0.03) / (ym - yn + 0.09)).clamp(0, 1)
        fold_x = nw + 0.012 + (mw + 0.035 - nw - 0.012) * fold_t
        fold_win = ((cuy - yn + 0.03) / 0.02).clamp(0, 1) * ((ym + 0.06 - cuy) / 0.03).clamp(0, 1)
        fold = _line(cxm - fold_x, 0.006, px) * fold_win
        fold_k = torch.maximum(torch.maximum(k12, 0.8 * k9), torch.maximum(0.8 * k10, 0.5 * k6))
        dimple = _line(cxm - mw - 0.022, 0.014, px) * _gauss(cxm, cuy, 0.0, ym + 0.005, None, 0.05)
        marionette = _line(cxm - mw - 0.012 - 0.25 * (cuy - ym), 0.005, px) * _gauss(cxm, cuy, 0.0, ym + 0.06, None, 0.04) * (cuy > ym)
        sulcus = _line(cuy - (ym + ll + 0.035 + 0.15 * cux * cux), 0.012, px) * _gauss(cxm, cuy, 0.0, 0.0, 0.08, None)
        dimpling = (torch.sin(cux * 90) * torch.sin(cuy * 80) * 0.5 + 0.5) * _fine(120, px) * _gauss(cxm, cuy, 0.0, b - 0.12, 0.06, 0.05)
        # AU23 presses the lips together: a deeper, darker mouth line
        press = _line(cuy - _mouth_line(cux, P), 0.016, px) * (1 - (cux / mw) ** 4).clamp(0, 1)
        wr[:, w[0], w[1]] += (0.5 * fold_k * fold + 2.0 * _sided(k[14], right) * dimple + 2.0 * mean[23] * press
                             + 0.3 * _sided(k[15], right) * marionette + mean[17] * (1.0 * sulcus + 0.4 * dimpling))
        age_dark[:, w[0], w[1]] += 0.1 * age * fold
    if active[6] or active[12]:
        # the cheek apple lifts and catches light when smiling (AU6/AU12): a brightening texture
        w = R.window(ex + 0.03 - 0.17, ex + 0.03 + 0.17, ye + 0.14 - 0.115, ye + 0.14 + 0.115)
        if w:
            cux, cuy = ux[:, w[0], w[1]], uy[:, w[0], w[1]]
            right = cux > 0
            lift = torch.maximum(_sided(k[12], right), _sided(k[6], right))
            wr[:, w[0], w[1]] -= 0.07 * lift * _gauss(cux.abs(), cuy, ex + 0.03, ye + 0.14, 0.06, 0.04)
    return wr, age_dark


def _eye_windows(R: _Region, P: dict) -> list:
    ex, ew, eh, ye = (_v(P[key]) for key in ("ex", "ew", "eh", "ye"))
    reach = _reach(0.0075, R.px)
    return R.side_windows(ex - ew - 0.01, ex + 1.15 * ew + 0.01, ye - eh - 0.05 - reach, ye + eh + 0.02 + reach)


def _eyelids(cux: Tensor, cuy: Tensor, P: dict, sv: dict, px: float) -> dict[str, Tensor]:
    """Eye opening between the lids and the lash line (AU5/6/7/45 move the lids: texture)."""
    ex, ew, eh, ye = (_v(P[key]) for key in ("ex", "ew", "eh", "ye"))
    right = cux > 0
    te = (cux.abs() - ex) / ew
    base = (1 - te * te).clamp_min(0)
    tilt = _v(P["tilt"]) * te
    y_u = ye - eh * base**0.7 - tilt
    y_l = ye + 0.75 * eh * base**0.9 - 0.3 * tilt
    y_close = ye + 0.35 * eh * base
    y_lid = y_close + _sided(sv["open"], right) * (y_u - y_close)
    y_low = y_l - _sided(sv["raise"], right) * (y_l - y_close)
    opening = _cover(torch.maximum(torch.maximum(y_lid - cuy, cuy - y_low), (te.abs() - 1) * ew), px)
    lash = _line(cuy - y_lid + 0.002, 0.0045 + 0.003 * te.clamp(0, 1) + 0.006 * _sided(sv["k"][45], right), px) * (1.15 - te.abs()).clamp(0, 0.15) / 0.15
    return {"opening": opening, "lash": lash, "te": te, "base": base, "y_u": y_u, "y_lid": y_lid, "y_low": y_low}


def _texture_state(ux: Tensor, uy: Tensor, P: dict, sv: dict, px: float, R: _Region) -> Tensor:
    """The AU-dependent layers at canonical points: [n, 3, H, W] = (eye opening, lash line, wrinkles)."""
    state = torch.zeros(ux.shape[0], 3, *ux.shape[1:])
    state[:, 2] = _wrinkles(ux, uy, P, sv, px, R)[0]
    for w in _eye_windows(R, P):
        lids = _eyelids(ux[:, w[0], w[1]], uy[:, w[0], w[1]], P, sv, px)
        state[:, 0, w[0], w[1]] = lids["opening"]
        state[:, 1, w[0], w[1]] = lids["lash"]
    return state


def _face_layer(ux: Tensor, uy: Tensor, P: dict, sv: dict, scene: dict, px: float, gap, shade: Tensor, spec: Tensor, R: _Region,
                keep_state: bool = True):
    """Colour of the face (skin, wrinkles, nose, beard, lips, eyes, brows, shading, mouth interior).

    Inputs are already cropped to the face's window. Returns colour [n, 3, h, w], the texture
    state [n, 3, h, w] (None unless ``keep_state``) and the mouth-interior coverage [n, h, w]
    (zeros without ``gap``).
    """
    n = ux.shape[0]
    ex, ew, eh, ye, yb, yn, ym = (_v(P[key]) for key in ("ex", "ew", "eh", "ye", "yb", "yn", "ym"))
    mw, nw, lu, ll = (_v(P[key]) for key in ("mw", "nw", "lu", "ll"))
    state = torch.zeros(n, 3, *ux.shape[1:]) if keep_state else None
    reach = _reach(0.006, px)  # how far the widest line reaches

    # skin: base colour, blush and under-eye darkening, wrinkles
    wr, age_dark = _wrinkles(ux, uy, P, sv, px, R)
    if keep_state:
        state[:, 2] = wr
    colour = _rgb(P["skin"]) * (1 - (wr + age_dark).clamp_(-0.2, 0.7)).unsqueeze(1)
    w = R.window(0.0, 0.56, ye - 0.02, ye + 0.4)  # blush and under-eye
    if w:
        cxm, cuy = ux[:, w[0], w[1]].abs(), uy[:, w[0], w[1]]
        blush = _gauss(cxm, cuy, ex + 0.02, ye + 0.19, 0.09, 0.07) * _v(P["blush"])
        under = 0.06 * _gauss(cxm, cuy, ex, ye + 0.06, 0.07, 0.025)
        tint = 1 - blush.unsqueeze(1) * torch.tensor([0.0, 0.6, 0.5])[None, :, None, None]
        colour[:, :, w[0], w[1]] *= tint * (1 - under.unsqueeze(1))

    # nose details: nostrils, alar creases, philtrum
    w = R.window(0.0, nw + 0.01 + reach, yn - 0.06, ym + 0.06)
    if w:
        cux, cuy = ux[:, w[0], w[1]], uy[:, w[0], w[1]]
        cxm = cux.abs()
        nostril = _cover(torch.sqrt(((cxm - 0.42 * nw) / 0.021) ** 2 + ((cuy - yn - 0.022) / 0.010) ** 2) * 0.01 - 0.01, px)
        alar = _line(torch.sqrt((cxm - 0.55 * nw) ** 2 + ((cuy - yn) * 1.3) ** 2) - 0.5 * nw, 0.004, px) * (cuy > yn - 0.04) * (cxm > 0.3 * nw)
        philtrum = _line(cxm - 0.018, 0.004, px) * _gauss(cxm, cuy, 0.0, (yn + ym) / 2, 1.0, 0.035)
        colour[:, :, w[0], w[1]] *= (1 - (0.6 * nostril + 0.25 * alar + 0.12 * philtrum).unsqueeze(1))

    # facial hair (only the images that have some)
    bidx = (P["beard"] > 0).nonzero()[:, 0]
    w = R.sub(bidx).window(0.0, 1.0, _v(P["yn"][bidx]) - 0.05 - 4 * px, 2.0) if len(bidx) else None
    if w:
        Pb = {key: P[key][bidx] for key in ("beard", "a", "b", "yn", "mw", "lu", "ll", "ym", "mouth_curve", "hair", "jaw")}
        cux, cuy = ux[bidx][:, w[0], w[1]], uy[bidx][:, w[0], w[1]]
        cxm = cux.abs()
        beard, ab, ynb, mwb = _v(Pb["beard"]), _v(Pb["a"]), _v(Pb["yn"]), _v(Pb["mw"])
        line_y = _mouth_line(cux, Pb)
        lip_top = line_y - _v(Pb["lu"]) * 1.4
        full = _cover(ynb + 0.07 + 0.25 * (cxm / ab) ** 2 - cuy, px * 4)
        must = _cover(line_y - 0.02 - cuy, px * 2) * _cover(cuy - lip_top + 0.04, px * 2) * _cover(cxm - mwb - 0.04, px * 2)
        goat = _cover(cxm - 0.1, px * 3) * _cover(line_y + 0.02 - cuy, px)
        bd = torch.where(beard == 4, full, torch.where(beard == 3, torch.maximum(goat, must),
                         torch.where(beard == 2, must, 0.4 * full)))
        lips_zone = _cover(torch.maximum((cuy - line_y).abs() - _v(Pb["lu"] + Pb["ll"]) * 0.6, cxm - mwb), px * 2)
        tex = 0.8 + 0.2 * torch.sin(cux * 220 + torch.sin(cuy * 150) * 2) * _fine(220, px)
        sub = colour[bidx][:, :, w[0], w[1]]
        colour[bidx, :, w[0], w[1]] = _mix(sub, _rgb(Pb["hair"]) * tex.unsqueeze(1), 0.85 * bd * (1 - lips_zone))

    # lips and the mouth line
    w = R.window(0.0, mw + 0.04, ym - lu * 1.3 - 0.02 - reach, ym + ll + 0.02 + reach)
    if w:
        cux, cuy = ux[:, w[0], w[1]], uy[:, w[0], w[1]]
        cxm = cux.abs()
        t2 = (cux / mw) ** 2
        dy = cuy - _mouth_line(cux, P)
        bow = torch.exp(-(((cxm - 0.032) / 0.022) ** 2)) - 0.7 * torch.exp(-((cux / 0.013) ** 2))
        base_t = (1 - t2).clamp_min(0)
        e_u = lu * base_t**0.55 * (1 + 0.22 * bow)
        e_l = ll * base_t**0.6
        lip_a = _cover(torch.maximum(torch.maximum(-dy - e_u, dy - e_l), (cxm - mw) * 0.5), px)
        gloss = 0.18 * torch.exp(-0.5 * ((dy - 0.45 * e_l) / (0.25 * e_l + 1e-3)) ** 2) * base_t
        # the AU wrinkles (AU23's pressed mouth line) darken the lips as they do the skin
        lip_col = _rgb(P["lip"]) * (torch.where(dy < 0, 0.88, 1.0) * (1 + gloss)
                                    * (1 - wr[:, w[0], w[1]].clamp(-0.2, 0.7))).unsqueeze(1)
        sub = _mix(colour[:, :, w[0], w[1]], lip_col, lip_a)
        mouth_line = _line(dy, 0.004, px) * (1 - t2 * t2).clamp(0, 1)
        corner = _gauss(cxm, dy, mw, 0.0, 0.012, 0.01)
        colour[:, :, w[0], w[1]] = sub * (1 - (0.55 * mouth_line + 0.25 * corner).clamp(0, 0.8).unsqueeze(1))

    # eyes: sclera, iris, pupil, catch light; lids and lashes
    eye_open = torch.zeros_like(ux)
    for w in _eye_windows(R, P):
        cux, cuy = ux[:, w[0], w[1]], uy[:, w[0], w[1]]
        lids = _eyelids(cux, cuy, P, sv, px)
        sgn = torch.where(cux > 0, 1.0, -1.0)
        te, base = lids["te"], lids["base"]
        sclera = torch.tensor([0.93, 0.91, 0.87])[None, :, None, None] * (0.72 + 0.28 * base).unsqueeze(1)
        lid_shadow = 1 - 0.35 * torch.exp(-((cuy - lids["y_lid"]).clamp_min(0) / 0.012))
        iris_r = 0.44 * ew
        iy = ye - 0.1 * eh
        gx = _v(P["gaze"]) * iris_r
        di = torch.sqrt((cux - sgn * ex - gx) ** 2 + (cuy - iy) ** 2)
        ring = 1 - 0.55 * ((di / iris_r - 0.7) / 0.3).clamp(0, 1)
        iris_col = _rgb(P["iris"]) * (ring * (0.8 + 0.3 * (cuy > iy))).unsqueeze(1)
        eye_col = _mix(sclera, iris_col, _cover(di - iris_r, px))
        eye_col = _mix(eye_col, torch.tensor([0.02, 0.02, 0.03])[None, :, None, None], _cover(di - 0.42 * iris_r, px))
        hx = sgn * ex + gx + 0.35 * iris_r * torch.sign(_v(scene["light"][:, 0]) + 1e-6)
        glint = _cover(torch.sqrt((cux - hx) ** 2 + (cuy - iy + 0.35 * iris_r) ** 2) - 0.2 * iris_r, px)
        eye_col = _mix(eye_col, torch.ones(1, 3, 1, 1), 0.85 * glint) * lid_shadow.unsqueeze(1)
        sub = _mix(colour[:, :, w[0], w[1]], eye_col, lids["opening"])
        lash_low = 0.35 * _line(cuy - lids["y_low"], 0.003, px) * base
        crease = 0.22 * _line(cuy - (lids["y_u"] - 0.02 * base - 0.006), 0.004, px) * base
        sub = sub * (1 - (crease + lash_low).clamp(0, 1).unsqueeze(1))
        colour[:, :, w[0], w[1]] = _mix(sub, torch.tensor([0.05, 0.035, 0.03])[None, :, None, None], (0.9 * lids["lash"]).clamp(0, 1))
        eye_open[:, w[0], w[1]] = lids["opening"]
        if keep_state:
            state[:, 0, w[0], w[1]] = lids["opening"]
            state[:, 1, w[0], w[1]] = lids["lash"]

    # brows
    brow_in = 0.07
    brow_out, arch, thick = _v(P["brow_out"]), _v(P["brow_arch"]), _v(P["brow_th"])
    w = R.window(brow_in - 0.01, brow_out + 0.01, yb - arch - thick - 0.01, yb + thick + 0.01)
    if w:
        cux, cuy = ux[:, w[0], w[1]], uy[:, w[0], w[1]]
        cxm = cux.abs()
        blen = brow_out - brow_in
        bt = (cxm - brow_in) / blen
        yc = yb - arch * torch.sin(math.pi * bt.clamp(0, 1) ** 0.8)
        th = thick * (1.15 - 0.6 * bt.clamp(0, 1))
        brow_a = _cover(torch.maximum(torch.maximum((cuy - yc).abs() - th / 2, -bt * blen), (bt - 1) * blen), px) * (0.9 - 0.25 * bt.clamp(0, 1))
        streak = 0.85 + 0.15 * torch.sin((cuy - yc) * 300 + cxm * 90) * _fine(300, px)
        colour[:, :, w[0], w[1]] = _mix(colour[:, :, w[0], w[1]], _rgb(P["brow"]) * streak.unsqueeze(1), brow_a)

    # light, then the mouth interior between the parted lips (teeth, tongue, dark cavity)
    colour.mul_(shade.unsqueeze(1)).add_((spec * (1 - eye_open)).unsqueeze(1))
    gap_cov = torch.zeros_like(ux)
    if gap is not None:
        s_up, s_low = gap
        w = R.window(0.0, mw, ym - _v(P["mouth_curve"]).abs() - 0.25, ym + _v(P["mouth_curve"]).abs() + 0.25)
        if w:
            cux = ux[:, w[0], w[1]]
            su, sl = s_up[:, w[0], w[1]], s_low[:, w[0], w[1]]
            cxm = cux.abs()
            t2 = (cux / mw) ** 2
            cov = ((0.5 + su / (_EDGE * px)).clamp(0, 1) - (0.5 + sl / (_EDGE * px)).clamp(0, 1)).clamp_min(0)
            cavity = torch.tensor([0.22, 0.06, 0.06])[None, :, None, None] * (1 - 0.6 * t2.clamp(0, 1)).unsqueeze(1)
            teeth_x = _cover(cxm - 0.8 * mw, px)
            gaps = 1 - 0.3 * (0.5 + 0.5 * torch.cos(2 * math.pi * cux / 0.034)) ** 8 * _fine(2 * math.pi / 0.034 * 3, px)
            tooth = torch.tensor([0.95, 0.93, 0.85])[None, :, None, None] * ((1 - 0.65 * t2.clamp(0, 1)) * gaps).unsqueeze(1)
            teeth = teeth_x * torch.maximum(_cover(su - 0.04, px), 0.9 * _cover(-sl - 0.028, px))
            tongue = _cover(torch.maximum(-sl - 0.09, 0.035 + sl), px * 2) * _cover(cxm - 0.6 * mw, px * 2)
            inside = _mix(cavity, torch.tensor([0.62, 0.28, 0.30])[None, :, None, None], 0.8 * tongue)
            inside = _mix(inside, tooth, teeth) * (0.55 + 0.45 * shade[:, w[0], w[1]].clamp(0, 1.2)).unsqueeze(1)
            colour[:, :, w[0], w[1]] = _mix(colour[:, :, w[0], w[1]], inside, cov)
            gap_cov[:, w[0], w[1]] = cov
    return colour, state, gap_cov


def _paint(out: Tensor, head: Tensor, w, colour: Tensor, alpha: Tensor, bidx=None) -> None:
    """Composite ``colour`` with ``alpha`` into window ``w`` of ``out`` and grow the head mask."""
    if bidx is None:  # in place, on views of the window
        out[:, :, w[0], w[1]].lerp_(colour, alpha.unsqueeze(1))
        head_w = head[:, w[0], w[1]]
        torch.maximum(head_w, alpha, out=head_w)
    else:
        out[bidx, :, w[0], w[1]] = _mix(out[bidx][:, :, w[0], w[1]], colour, alpha)
        head[bidx, w[0], w[1]] = torch.maximum(head[bidx][:, w[0], w[1]], alpha)


def _appearance(ux: Tensor, uy: Tensor, vx: Tensor, vy: Tensor, P: dict, sv: dict, scene: dict, px: float,
                gap: tuple | None, out: Tensor, R: _Region, keep_state: bool = True):
    """Paint the head over ``out`` (the background, [n, 3, H, W] in [0, 1], modified in place).

    ``ux, uy`` [n, H, W] canonical coordinates; ``sv`` per-side AU quantities; ``scene`` pose and
    light; ``gap`` = (s_up, s_low) signed distances of the two lip branches to the mouth line.
    Layers back to front: hair behind the head, neck and shirt, ears, face, hair in front,
    glasses; each is evaluated only in its window.
    ``vx, vy`` are the face-plane points (pose only), where the rigid glasses live.
    Returns head alpha [n, H, W], face-skin alpha, texture state [n, 3, H, W] (eye opening, lash
    line, wrinkles; None unless ``keep_state``: only ``render_pair`` needs it), the coverage of
    the mouth interior and the glasses' alpha.
    """
    n = ux.shape[0]
    a, b, ye = _v(P["a"]), _v(P["b"]), _v(P["ye"])
    head = torch.zeros_like(ux)
    skin_alpha = torch.zeros_like(ux)
    state = torch.zeros(n, 3, *ux.shape[1:]) if keep_state else None
    gap_cov = torch.zeros_like(ux)
    shade, spec = _normals_shade(ux, uy, P, scene, R)

    style = _v(P["hair_style"])
    has_hair = style != 5
    long_hair = (style == 2) | (style == 1)
    buzz = torch.where(style == 4, 0.75, 1.0)
    vol = _v(P["hair_vol"]) * torch.where(style == 4, 0.1, 1.0)
    hair_len = _v(P["hair_len"])
    scalp_w = a * 1.04 + vol

    def hair_colour(cux, cuy, cshade):
        strands = torch.sin(28 * cux / (cuy + 1.6) + 3 * torch.sin(cuy * 9)) * _fine(28, px)
        light = 0.7 + 0.35 * torch.exp(-0.5 * ((cuy + 0.55) / 0.12) ** 2) * (1 - cux.abs())
        return _rgb(P["hair"]) * ((light + 0.12 * strands) * (0.75 + 0.25 * cshade.clamp(0, 1.3))).unsqueeze(1)

    # hair behind the head: the scalp, and curtains of long hair past the jaw
    w = R.window(0.0, scalp_w + 0.02, -2.0, torch.maximum(hair_len, ye) + 0.12)
    hair_win = w
    if w:
        cux, cuy = ux[:, w[0], w[1]], uy[:, w[0], w[1]]
        cxm = cux.abs()
        top = (cuy + 0.02).clamp_max(0) / (0.83 + vol)
        bottom = ((cuy + 0.02).clamp_min(0) / (hair_len + 0.07)) ** 2
        scalp = _cover((torch.sqrt((cux / scalp_w) ** 2 + top * top + bottom * bottom * bottom) - 1) * 0.5, px)
        # long hair falls in curtains that narrow a little, wave, and end in a rounded line
        t = (cuy / hair_len).clamp(0, 1)
        edge = scalp_w - 0.05 * t + 0.012 * torch.sin(cuy * 30)
        bottom = hair_len - 0.12 * (cxm / scalp_w) ** 2
        curtain = _cover(torch.maximum(cxm - edge, cuy - bottom), px) * long_hair
        hair_col = hair_colour(cux, cuy, shade[:, w[0], w[1]])
        _paint(out, head, w, hair_col, torch.maximum(scalp, curtain) * has_hair * buzz)

    # neck and shirt
    w = R.window(0.0, 10.0, 0.3, 10.0)
    if w:
        cux, cuy, cshade = ux[:, w[0], w[1]], uy[:, w[0], w[1]], shade[:, w[0], w[1]]
        cxm = cux.abs()
        neck_w = 0.2 + 0.05 * _v(P["masc"])
        neck = _cover(cxm - neck_w, px) * (cuy > 0.3)  # above 0.3 the face covers the neck
        chin_shadow = 1 - 0.35 * torch.exp(-((cuy - b * 0.9).clamp_min(0) / 0.12))
        neck_col = _rgb(P["skin"]) * (0.82 * chin_shadow * (0.6 + 0.4 * cshade)).unsqueeze(1)
        inner = cxm < neck_w
        shoulder_y = torch.where(inner, 0.97 - 0.13 * (cxm / neck_w) ** 2, 0.84 + 0.2 * (cxm - neck_w))
        slope = torch.where(inner, 0.26 * cxm / neck_w**2, torch.full_like(cxm, 0.2))
        shirt = _cover((shoulder_y - cuy) * torch.rsqrt(1 + slope * slope), px)  # distance across the line
        back = _mix(neck_col, _rgb(P["shirt"]) * (0.75 + 0.25 * cshade).unsqueeze(1), shirt)
        _paint(out, head, w, back, torch.maximum(neck, shirt))

    # ears (hidden by medium and long hair)
    ear_s = _v(P["ear"])
    for w in R.side_windows(a - 0.075, a + 0.075, ye - 0.07, ye + 0.21):
        cux, cuy, cshade = ux[:, w[0], w[1]], uy[:, w[0], w[1]], shade[:, w[0], w[1]]
        ear_r = torch.sqrt(((cux.abs() - a) / (0.055 * ear_s)) ** 2 + ((cuy - ye - 0.07) / (0.11 * ear_s)) ** 2)
        ear = _cover((ear_r - 1) * 0.05, px) * ~long_hair
        ear_col = _rgb(P["skin"]) * (0.78 * (0.7 + 0.3 * cshade) * (1 - 0.3 * torch.exp(-((ear_r - 0.55) / 0.15) ** 2))).unsqueeze(1)
        _paint(out, head, w, ear_col, ear)

    # the face
    w = R.window(0.0, a + 0.01, -b - 0.01, b + 0.01)
    if w:
        cux, cuy = ux[:, w[0], w[1]], uy[:, w[0], w[1]]
        t_low = (cuy / b).clamp(0, 1)
        ax = a * (1 - _v(P["jaw"]) * t_low * t_low)
        rx2, ry2 = (cux / ax) ** 2, (cuy / b) ** 2
        # the lower half blends an ellipse with a squarer superellipse (jaw squareness)
        r = torch.lerp(torch.sqrt(rx2 + ry2), torch.sqrt(torch.sqrt(rx2 * rx2 + ry2 * ry2)), t_low.clamp(0, 0.5) * 2 * _v(P["jaw_sq"]))
        face = _cover((r - 1) * torch.minimum(ax, b) * 0.9, px)
        cgap = None if gap is None else (gap[0][:, w[0], w[1]], gap[1][:, w[0], w[1]])
        colour, cstate, cgap_cov = _face_layer(cux, cuy, P, sv, scene, px, cgap, shade[:, w[0], w[1]], spec[:, w[0], w[1]], R.crop(w),
                                               keep_state)
        _paint(out, head, w, colour, face)
        if keep_state:
            state[:, :, w[0], w[1]] = cstate
        gap_cov[:, w[0], w[1]] = cgap_cov
        skin_alpha[:, w[0], w[1]] = face

    # hair in front: over the forehead down to the hairline (with a fringe for that style)
    w = R.window(0.0, a + 0.02, -2.0, ye + 0.04)
    if w and hair_win:
        cux, cuy = ux[:, w[0], w[1]], uy[:, w[0], w[1]]
        cxm = cux.abs()
        hairline = _v(P["hairline"]) + (ye + 0.02 - _v(P["hairline"])) * (cxm / a).clamp(0, 1) ** 3
        hairline = hairline + torch.where(style == 3, 0.015 * torch.sin(cux * 40), 0.0)
        front = head[:, w[0], w[1]] * _cover(cuy - hairline, px) * has_hair * buzz
        front = front * (skin_alpha[:, w[0], w[1]] > 0)
        inside = all(w[i].start >= hair_win[i].start and w[i].stop <= hair_win[i].stop for i in (0, 1))
        if inside:  # reuse the colour computed for the hair behind
            rows = slice(w[0].start - hair_win[0].start, w[0].stop - hair_win[0].start)
            cols = slice(w[1].start - hair_win[1].start, w[1].stop - hair_win[1].start)
            front_col = hair_col[:, :, rows, cols]
        else:
            front_col = hair_colour(cux, cuy, shade[:, w[0], w[1]])
        _paint(out, head, w, front_col, front)
        skin_alpha[:, w[0], w[1]] *= 1 - front

    # --- glasses: rigid, they sit on the head and do not follow the expression (face-plane v)
    glasses = torch.zeros_like(ux)
    gidx = (P["glasses"] > 0).nonzero()[:, 0]
    w = R.sub(gidx).rigid().window(0.0, _v(P["a"][gidx]) + 0.06, _v(P["ye"][gidx]) - 0.09, _v(P["ye"][gidx]) + 0.09) if len(gidx) else None
    if w:
        cux, cuy = vx[gidx][:, w[0], w[1]], vy[gidx][:, w[0], w[1]]
        cxm = cux.abs()
        exg, yeg, ewg = _v(P["ex"][gidx]), _v(P["ye"][gidx]), _v(P["ew"][gidx])
        gw, gh = ewg + 0.045, 0.07
        gdx, gdy = (cxm - exg) / gw, (cuy - yeg - 0.005) / gh
        gx2, gy2 = gdx * gdx, gdy * gdy
        gr = torch.where(_v(P["glasses_round"][gidx]) > 0, torch.sqrt(gx2 + gy2), torch.sqrt(torch.sqrt(gx2 * gx2 + gy2 * gy2)))
        ring_sd = (gr - 1).abs() * gh - 0.011
        bridge_sd = torch.maximum((cuy - yeg + 0.012).abs() - 0.009, cxm - (exg - gw * 0.95))
        temple_sd = torch.maximum(torch.maximum((cuy - yeg + 0.01).abs() - 0.009, (exg + gw * 0.95) - cxm), cxm - _v(P["a"][gidx]) - 0.05)
        frame = _cover(torch.minimum(torch.minimum(ring_sd, bridge_sd), temple_sd), px)
        lens = _cover((gr - 1) * gh, px)
        gshade = shade[gidx][:, w[0], w[1]]
        tint = torch.tensor([0.75, 0.85, 0.95])[None, :, None, None] * (0.6 + 0.4 * gshade).unsqueeze(1)
        out[gidx, :, w[0], w[1]] = _mix(out[gidx][:, :, w[0], w[1]], tint, 0.12 * lens * head[gidx][:, w[0], w[1]])
        _paint(out, head, w, _rgb(P["frame"][gidx]) * (0.6 + 0.5 * gshade).unsqueeze(1), frame, gidx)
        glasses[gidx, w[0], w[1]] = frame  # the faint lens tint varies slowly: warps fine
        skin_alpha[gidx, w[0], w[1]] = skin_alpha[gidx][:, w[0], w[1]] * (1 - frame)  # frames hide the face

    return head.clamp_(0, 1), skin_alpha, state, gap_cov, glasses


# ----------------------------------------------------------------------------------------------
# scene: light, background, noise
# ----------------------------------------------------------------------------------------------
_DEFAULT_LIGHT = (-0.35, -0.45, 0.82)


class _Draw:
    """Random numbers for light, background and noise: from ``generator``, or, when per-item
    ``seeds`` are given, a pure function of each item's seed (so a batch renders exactly like its
    items one by one)."""

    def __init__(self, n: int, generator, seeds):
        self.n, self.generator = n, generator
        self.seeds = None if seeds is None else torch.as_tensor(seeds).long().reshape(-1).expand(n)

    def uniform(self, count: int, salt: int) -> Tensor:
        if self.seeds is None:
            return torch.rand(self.n, count, generator=self.generator)
        return hash_uniform(self.seeds, count, salt=salt)

    def normal(self, shape: tuple, salt: int) -> Tensor:
        if self.seeds is None:
            return torch.randn((self.n, *shape), generator=self.generator)
        m = math.prod(shape)
        out = torch.empty(self.n, m)
        rows = max(1, (1 << 18) // (2 * m))  # a block of items at a time: the work stays in cache
        for start in range(0, self.n, rows):
            u = hash_uniform(self.seeds[start:start + rows], 2 * m, salt=salt)
            radius = u[:, :m].neg().log1p_().mul_(-2).sqrt_()  # Box-Muller
            torch.mul(radius, u[:, m:].mul(2 * math.pi).cos_(), out=out[start:start + rows])
        return out.reshape(self.n, *shape)


def _scene(n: int, yaw: Tensor, light, background, draw: _Draw) -> dict:
    rad = yaw * (math.pi / 180)
    scene = {"sin": _v(torch.sin(rad)), "cos": _v(torch.cos(rad)),
             "squash": _v(1 - 0.5 * (1 - torch.cos(rad)))}
    if light is None:
        vec = torch.tensor(_DEFAULT_LIGHT).expand(n, 3) * 0.72
    elif isinstance(light, str):
        if light != "random":
            raise ValueError(f"light must be None, 'random' or a Tensor [N, 3]; got {light!r}")
        u = draw.uniform(3, salt=101)
        az = (u[:, 0] - 0.5) * 1.6
        el = (u[:, 1] - 0.3) * 1.0
        vec = torch.stack([torch.sin(az) * torch.cos(el), -torch.sin(el), torch.cos(az) * torch.cos(el)], 1)
        vec = vec * (0.5 + 0.45 * u[:, 2:3])
    else:
        vec = torch.as_tensor(light, dtype=torch.float32)
        if vec.shape != (n, 3):
            raise ValueError(f"light must have shape [N, 3] = [{n}, 3] (direction times strength); got {tuple(vec.shape)}")
    strength = vec.norm(dim=1, keepdim=True).clamp_min(1e-6)
    direction = vec / strength
    scene["light"] = direction * strength
    scene["ambient"] = 1.05 - 0.75 * strength[:, 0].clamp(max=1.0)
    half = direction + torch.tensor([0.0, 0.0, 1.0])
    scene["half"] = half / half.norm(dim=1, keepdim=True)
    scene["background"] = _background_params(n, background, draw)
    return scene


def _background_params(n: int, background, draw: _Draw) -> dict:
    if background is None:
        background = "plain"
        colours = torch.tensor([0.78, 0.79, 0.81]).expand(n, 2, 3)
        return {"kind": torch.zeros(n), "colours": colours.clone(), "waves": torch.zeros(n, 4, 3)}
    if isinstance(background, Tensor):
        col = background.float()
        if col.shape != (n, 3):
            raise ValueError(f"background tensor must be [N, 3] plain colours in [-1, 1]; got {tuple(col.shape)}")
        colours = ((col + 1) / 2).clamp(0, 1)[:, None].expand(n, 2, 3)
        return {"kind": torch.zeros(n), "colours": colours.clone(), "waves": torch.zeros(n, 4, 3)}
    if background not in BACKGROUNDS:
        raise ValueError(f"unknown background {background!r}; valid: {list(BACKGROUNDS)}, None or a Tensor [N, 3]")
    u = draw.uniform(16, salt=102)
    if background == "random":
        kind = (u[:, 0] * 3).floor().clamp(max=2)
    else:
        kind = torch.full((n,), float(BACKGROUNDS.index(background)))
    hue = u[:, 1:4]
    grey = u[:, 4:5]
    c1 = (0.55 * grey + 0.25 + 0.25 * (hue - 0.5)).clamp(0, 1)
    c2 = (c1 * (0.55 + 0.5 * u[:, 5:8])).clamp(0, 1)
    waves = torch.stack([u[:, 8:11] * 2 - 1, u[:, 11:14] * 2 - 1, u[:, 13:16] * 6, u[:, 5:8] * 6], 1)
    return {"kind": kind, "colours": torch.stack([c1, c2], 1), "waves": waves}


def _background(bg: dict, px_: Tensor, py_: Tensor) -> Tensor:
    """Background colour at image points ``[n, H, W]`` (static: it never moves with the face)."""
    c1, c2 = _rgb(bg["colours"][:, 0]), _rgb(bg["colours"][:, 1])
    kind = bg["kind"][:, None, None, None]
    if not bool((kind != 0).any()):
        return c1.expand(-1, -1, *px_.shape[1:]).clone()  # plain everywhere
    w = bg["waves"]
    ramp = (0.5 + 0.35 * (px_ * _v(w[:, 0, 0]) + py_ * _v(w[:, 0, 1]))).clamp(0, 1).unsqueeze(1)
    gradient = torch.lerp(c1.expand(-1, -1, *px_.shape[1:]), c2.expand(-1, -1, *px_.shape[1:]), ramp)
    blot = (torch.sin(px_ * (2 + _v(w[:, 2, 0])) + _v(w[:, 3, 0])) * torch.sin(py_ * (2 + _v(w[:, 2, 1])) + _v(w[:, 3, 1]))
            + 0.5 * torch.sin((px_ + py_) * (4 + _v(w[:, 2, 2])) + _v(w[:, 3, 2])))
    textured = torch.lerp(c1.expand_as(gradient), c2.expand_as(gradient), (0.5 + 0.4 * blot).clamp(0, 1).unsqueeze(1))
    return torch.where(kind == 0, c1.expand_as(gradient), torch.where(kind == 1, gradient, textured))


# ----------------------------------------------------------------------------------------------
# the public renderer
# ----------------------------------------------------------------------------------------------
def _check_inputs(identity, aus, yaw, size, asymmetry, name="aus"):
    identity = torch.as_tensor(identity)
    if identity.dtype.is_floating_point or identity.dtype == torch.bool:
        raise TypeError(f"identity must be an integer tensor [N]; got dtype {identity.dtype}")
    identity = identity.long().reshape(-1)
    n = len(identity)
    aus = torch.as_tensor(aus, dtype=torch.float32)
    if aus.ndim == 1:
        aus = aus[None].expand(n, -1)
    if aus.shape != (n, NUM_AUS):
        raise ValueError(f"{name} must have shape [N, {NUM_AUS}] = [{n}, {NUM_AUS}] (AUs {list(AU_CODES)}); got {tuple(aus.shape)}")
    if not torch.isfinite(aus).all() or (aus < 0).any() or (aus > AU_MAX).any():
        raise ValueError(f"{name} must lie in [0, {AU_MAX}] (AUs {list(AU_CODES)}); got values in [{aus.min():.3g}, {aus.max():.3g}]")
    yaw = torch.zeros(n) if yaw is None else torch.as_tensor(yaw, dtype=torch.float32).reshape(-1).expand(n)
    if not torch.isfinite(yaw).all() or (yaw.abs() > YAW_LIMIT).any():
        raise ValueError(f"yaw must lie in [-{YAW_LIMIT}, {YAW_LIMIT}] degrees; got values in [{yaw.min():.3g}, {yaw.max():.3g}]")
    if not isinstance(size, int) or isinstance(size, bool) or not 8 <= size <= 4096:
        raise ValueError(f"size must be an int between 8 and 4096 pixels; got {size!r}")
    if asymmetry is None:
        asymmetry = identity_params(identity)["au_asym"]
    asymmetry = torch.as_tensor(asymmetry, dtype=torch.float32)
    if asymmetry.shape != (n, NUM_AUS) or (asymmetry.abs() > 1).any():
        raise ValueError(f"asymmetry must be a Tensor [N, {NUM_AUS}] in [-1, 1]; got shape {tuple(asymmetry.shape)}")
    return identity, aus, yaw.contiguous(), asymmetry


def _sides(aus: Tensor, asym: Tensor) -> tuple[Tensor, Tensor]:
    """Left / right AU intensities from the AUs and their left/right balance."""
    return aus * (1 - asym).clamp(0, 1), aus * (1 + asym).clamp(0, 1)


def _pixel_coords(n: int, size: int) -> tuple[Tensor, Tensor]:
    c = (torch.arange(size, dtype=torch.float32) + 0.5) * (2.0 / size) - 1
    py_, px_ = torch.meshgrid(c, c, indexing="ij")
    return px_.expand(n, -1, -1), py_.expand(n, -1, -1)


def _select(P: dict, idx) -> dict:
    return {key: value[idx] for key, value in P.items()}


def _select_scene(scene: dict, idx) -> dict:
    out = {}
    for key, value in scene.items():
        out[key] = _select_scene(value, idx) if isinstance(value, dict) else value[idx]
    return out


class _Face:
    """Everything known about one chunk of renders at the pixel grid."""

    def __init__(self, P, au_l, au_r, scene, size):
        n = au_l.shape[0]
        self.P, self.scene, self.size = P, scene, size
        self.px = 2.0 / size
        self.au_l, self.au_r = au_l, au_r
        self.grid = _expression_grid(P, au_l, au_r)                          # [n, 2, G, G]
        self.g_up, self.g_low = _opening(P, au_l, au_r)
        self.sv = _side_values(au_l, au_r)
        px_, py_ = _pixel_coords(n, size)
        self.px_, self.py_ = px_, py_
        self.vx = _pose_inverse(px_, py_, _v(P["yn"]), scene["sin"], scene["squash"])   # [n, S, S]
        self.vy = py_
        ux, uy = _sample_grid(self.grid, self.vx, self.vy)
        self.ux = ux
        # bounds of the displacement between pixel and canonical point, for the layer windows
        nodes = (torch.arange(_GRID, dtype=torch.float32) + 0.5) * (2 * _GRID_RANGE / _GRID) - _GRID_RANGE
        dx = float((self.grid[:, 0] - nodes[None, None, :]).abs().max()) + 0.05
        # vertical: the expression displacement plus the lips' opening, per coarse-grid row
        # (the opening is evaluated at the nodes' canonical points; 1.25 covers interpolation)
        gx, gy = self.grid[:, 0], self.grid[:, 1]
        y_up, y_low, _, _ = _branches(gx, gy, P, self.g_up, self.g_low)
        opening = torch.maximum(y_up - gy, gy - y_low) * 1.25
        dy = ((gy - nodes[None, :, None]).abs() + opening).amax((0, 2))                    # [G] rows
        self.region = _Region(size, scene["squash"], scene["sin"], dx, dy)
        # the two lip branches differ only inside the mouth's window
        self.s_up = uy - _mouth_line(ux, P)
        self.s_low = self.s_up.clone()
        self.uy_up, self.uy_low = uy, uy.clone()
        w = self.region.window(0.0, _v(P["mw"]), _v(P["ym"] - P["mouth_curve"].abs()) - _LENS_REACH,
                               _v(P["ym"] + P["mouth_curve"].abs()) + _LENS_REACH)
        if w and bool((self.g_up + self.g_low > 0).any()):
            self.uy_up = uy.clone()
            y_up, y_low, s_up, s_low = _branches(ux[:, w[0], w[1]], uy[:, w[0], w[1]], P, self.g_up, self.g_low)
            self.uy_up[:, w[0], w[1]], self.uy_low[:, w[0], w[1]] = y_up, y_low
            self.s_up[:, w[0], w[1]], self.s_low[:, w[0], w[1]] = s_up, s_low
        self.upper = (self.s_up + self.s_low) < 0
        self.uy = torch.where(self.upper, self.uy_up, self.uy_low)

    def shade(self, keep_state: bool = True):
        image = _background(self.scene["background"], self.px_, self.py_)
        head, skin, state, gap, glasses = _appearance(self.ux, self.uy, self.vx, self.vy, self.P, self.sv, self.scene,
                                                      self.px, (self.s_up, self.s_low), image, self.region, keep_state)
        return image.clamp_(0, 1), head, skin, state, gap, glasses


def _canonical_landmarks(P: dict, sv: dict) -> tuple[Tensor, Tensor]:
    """Canonical landmark points ``[n, K, 2]`` and their lip branch (True = lower) ``[K]``."""
    z = torch.zeros_like(P["a"])
    brow_in = 0.07 + z
    bx = [(P["brow_out"] - 0.01, P["yb"] - 0.3 * P["brow_arch"]), ((brow_in + P["brow_out"]) / 2, P["yb"] - P["brow_arch"]), (brow_in + 0.01, P["yb"])]
    pts: list[tuple[Tensor, Tensor]] = []
    pts += [(-x, y) for x, y in bx] + [(x, y) for x, y in reversed(bx)]
    ex, ew, ye, eh = P["ex"], P["ew"], P["ye"], P["eh"]
    for s, side in ((-1, 0), (1, 1)):
        o, lift = sv["open"][:, side], sv["raise"][:, side]
        y_top = ye + 0.35 * eh - 1.35 * o * eh
        y_bot = ye + 0.75 * eh - lift * (0.75 - 0.35) * eh
        outer = (s * (ex + ew), ye - P["tilt"] * 1.0)
        inner = (s * (ex - ew), ye + P["tilt"] * 1.0)
        four = [outer, (s * ex, y_top), inner, (s * ex, y_bot)] if s < 0 else [inner, (s * ex, y_top), outer, (s * ex, y_bot)]
        pts += four
    pts += [(z, P["yn"] - 0.17), (z, P["yn"] + 0.01), (-0.42 * P["nw"], P["yn"] + 0.022), (0.42 * P["nw"], P["yn"] + 0.022)]
    ym = P["ym"]
    pts += [(-P["mw"], ym + P["mouth_curve"]), (z, ym - P["lu"] * 0.85), (P["mw"], ym + P["mouth_curve"]), (z, ym + P["ll"]),
            (z, ym - 1e-3), (z, ym + 1e-3)]
    # jaw: points at 15 % and 60 % of the lower half of the face oval, and the chin
    a, b, jaw = P["a"], P["b"], P["jaw"]
    y1, y2 = b * 0.15, b * 0.6
    x1 = a * (1 - jaw * 0.15**2) * (1 - 0.15**2) ** 0.5 * 0.98
    x2 = a * (1 - jaw * 0.6**2) * (1 - 0.6**2) ** 0.5 * 0.98
    pts += [(-x1, y1), (-x2, y2), (z, b * 0.985), (x2, y2), (x1, y1)]
    xy = torch.stack([torch.stack([x.expand_as(z), y.expand_as(z)], -1) for x, y in pts], 1)
    lower = torch.zeros(len(pts), dtype=torch.bool)
    lower[LANDMARK_NAMES.index("lip_lower_bottom")] = True
    lower[LANDMARK_NAMES.index("lip_lower_inner")] = True
    lower[LANDMARK_NAMES.index("chin")] = True
    lower[LANDMARK_NAMES.index("jaw_left_mid")] = True
    lower[LANDMARK_NAMES.index("jaw_right_mid")] = True
    return xy, lower


_NEWTON_EXPR = 10
_MAX_STEP = 0.04


def _solve_expression(face: _Face, ux: Tensor, uy: Tensor, lower: Tensor, wx: Tensor, wy: Tensor):
    """Face-plane points ``w`` with ``E_branch(w) = (ux, uy)`` on ``face``'s expression map (Newton).

    ``lower`` says which lip branch each point lives on; ``wx, wy`` is the starting guess.
    Returns (wx, wy, residual) with the residual in normalised units.
    """
    h = 1e-3

    def e(x, y, branch):
        bx, by = _sample_grid(face.grid, x, y)
        y_up, y_low, _, _ = _branches(bx, by, face.P, face.g_up, face.g_low)
        return bx, torch.where(branch, y_low, y_up)

    lower3 = torch.cat([lower, lower, lower], -1)

    def e_and_neighbours(x, y):
        """``e`` at (x, y), (x + h, y) and (x, y + h) in one call (every point is independent)."""
        bx, by = e(torch.cat([x, x + h, x], -1), torch.cat([y, y, y + h], -1), lower3)
        return bx.chunk(3, -1), by.chunk(3, -1)

    for step in range(_NEWTON_EXPR):
        if step % 3 == 0:  # Newton-chord: refresh the Jacobian every third step
            (fx, ax_, bx_), (fy, ay_, by_) = e_and_neighbours(wx, wy)
            j11, j21 = (ax_ - fx) / h, (ay_ - fy) / h
            j12, j22 = (bx_ - fx) / h, (by_ - fy) / h
            det = (j11 * j22 - j12 * j21)
            det = torch.where(det.abs() < 1e-4, torch.full_like(det, 1e-4), det)
        rx, ry = fx - ux, fy - uy
        # damped step: a full Newton step from a far start can jump across the lips
        sx, sy = (j22 * rx - j12 * ry) / det, (-j21 * rx + j11 * ry) / det
        scale = (_MAX_STEP / torch.maximum(sx.abs(), sy.abs()).clamp_min(1e-12)).clamp(max=1.0)
        wx, wy = wx - sx * scale, wy - sy * scale
        if (step + 1) % 3 or step + 1 == _NEWTON_EXPR:  # (a refresh step evaluates e itself)
            fx, fy = e(wx, wy, lower)
    return wx, wy, torch.maximum((fx - ux).abs(), (fy - uy).abs())


def _landmarks(face: _Face) -> Tensor:
    """Landmarks in pixel coordinates ``[n, K, 2]`` (after expression and pose)."""
    xy, lower = _canonical_landmarks(face.P, face.sv)
    ux, uy = xy[..., 0], xy[..., 1]
    lower = lower[None].expand_as(ux)
    wx, wy, _ = _solve_expression(face, ux, uy, lower, ux.clone(), uy.clone())
    q = _pose_forward(torch.stack([wx, wy], 1), face.P["yn"][:, None], face.scene["sin"][:, :, 0], face.scene["squash"][:, :, 0])
    return ((q + 1) * (face.size / 2) - 0.5).permute(0, 2, 1)


def _chunks(size: int, yaw: Tensor, P: dict, aus: Tensor):
    """Index groups for rendering, about 320k pixels each.

    Faces are grouped by yaw, then by which AUs are active (``aus`` [n, 17], or several such
    tensors stacked on the last dimension), then by eye height: each group's layer windows, the
    union over its faces, stay tight, and the layers of AUs that no face in a group shows are
    skipped. The results are put back in the caller's order.
    """
    n = len(yaw)
    step = max(1, 320_000 // (size * size))
    active = (aus > 0).reshape(n, -1).long()
    pattern = (active << torch.arange(active.shape[1])).sum(1)  # one bit per AU
    order = torch.argsort(P["ye"] * 10 - P["yb"], stable=True)
    order = order[torch.argsort(pattern[order], stable=True)]
    order = order[torch.argsort(torch.round(yaw / 5)[order], stable=True)]
    for start in range(0, n, step):
        yield order[start:start + step]


class _Gather:
    """Per-chunk results written straight into batch-sized outputs, in the caller's order.

    Each output is allocated once, when its first chunk arrives, and chunks are copied into it
    by index: no concatenation and no reordering copy of the whole batch afterwards.
    """

    def __init__(self, n: int):
        self.n, self.out = n, {}

    def put(self, key: str, index: Tensor, value: Tensor) -> None:
        if key not in self.out:
            self.out[key] = value.new_empty((self.n, *value.shape[1:]))
        self.out[key].index_copy_(0, index, value)


def _to_signed(image: Tensor) -> Tensor:
    """[0, 1] -> the [-1, 1] image range, in place (exact: 0 -> -1, 1 -> 1)."""
    return image.mul_(2).sub_(1)


def _add_noise(image: Tensor, noise: float, draw: _Draw, salt: int = 103) -> Tensor:
    """Gaussian sensor noise added last, in place, then clipped to [-1, 1]."""
    if noise:
        image.add_(draw.normal(tuple(image.shape[1:]), salt).mul_(noise)).clamp_(-1, 1)
    return image


def render(identity, aus, yaw=None, size: int = 64, *, light=None, background=None, noise: float = 0.0,
           generator: torch.Generator | None = None, seeds=None, asymmetry=None) -> dict[str, Tensor]:
    """Render faces.

    Args:
        identity: LongTensor ``[N]`` (any integer; unlimited identities).
        aus: ``[N, 17]`` AU intensities in [0, 5] (order ``facelib.AU_CODES``); a ``[17]`` vector
            is broadcast.
        yaw: ``[N]`` degrees in [-45, 45] (positive turns the face towards image-right); None = 0.
        size: output side in pixels (the same face at every size).
        light: None (fixed studio light from the upper left), ``"random"`` (drawn from
            ``generator``) or ``[N, 3]`` direction towards the light times its strength.
        background: None (plain light grey), ``"plain"``, ``"gradient"``, ``"textured"``,
            ``"random"`` (colours drawn from ``generator``) or ``[N, 3]`` plain colours in [-1, 1].
        noise: standard deviation of Gaussian sensor noise in [-1, 1] units, added last.
        generator: torch.Generator for random light, background and noise.
        seeds: optional LongTensor ``[N]``: draw each item's random light, background and noise
            from its own seed instead of ``generator`` (batch-independent, used by SynthFaces).
        asymmetry: ``[N, 17]`` left/right balance of each AU in [-1, 1] (0 symmetric, +1 only the
            image-right half); None = each identity's own mild asymmetry.

    Returns: dict with ``image`` [N, 3, S, S] in [-1, 1], ``landmarks`` [N, K, 2] pixel (x, y)
    (names in ``LANDMARK_NAMES``), ``face_mask`` [N, 1, S, S] in [0, 1] (facial skin and
    features, not hair, glasses frames, neck or background) and ``head_mask`` (everything but
    background).
    """
    identity, aus, yaw, asymmetry = _check_inputs(identity, aus, yaw, size, asymmetry)
    keep_freed_memory()
    n = len(identity)
    P = identity_params(identity)
    draw = _Draw(n, generator, seeds)
    scene = _scene(n, yaw, light, background, draw)
    au_l, au_r = _sides(aus, asymmetry)
    out = _Gather(n)
    for sl in _chunks(size, yaw, P, aus):
        face = _Face(_select(P, sl), au_l[sl], au_r[sl], _select_scene(scene, sl), size)
        image, head, skin, _, _, _ = face.shade(keep_state=False)
        out.put("image", sl, _to_signed(image))
        out.put("landmarks", sl, _landmarks(face))
        out.put("face_mask", sl, skin.unsqueeze(1))
        out.put("head_mask", sl, head.unsqueeze(1))
    out.out["image"] = _add_noise(out.out["image"], noise, draw)
    return out.out


_STATE_TOL = 0.03


def render_pair(identity, source_aus, target_aus, yaw=None, size: int = 64, *, light=None, background=None,
                noise: float = 0.0, generator: torch.Generator | None = None, seeds=None, source_asymmetry=None,
                target_asymmetry=None) -> dict[str, Tensor]:
    """Render two expressions of the same faces (same pose, light and background) with true flow.

    Returns ``source``, ``target`` [N, 3, S, S]; ``flow`` [N, 2, S, S], the backward flow in
    pixels with ``target[p] ~= source[p + flow[p]]`` (facelib.conventions' convention, so
    ``facelib.warp.warp(source, flow) ~= target``), finite and bounded everywhere: where the
    source position is not found (the Newton solve does not converge) the flow is 0, and every
    source position is clamped into the image (``|flow| <= size``), and ``visible`` is 0 at both;
    ``visible`` [N, 1, S, S] in {0, 1}: target
    pixels whose content the flow explains (no texture layer changed there: mouth interior,
    teeth, wrinkles, eyelids; not at a head/background edge that moved; source point inside
    the image); ``source_landmarks``, ``target_landmarks`` [N, K, 2]; ``face_mask`` of the target.
    Noise, if any, is drawn independently for the two images after the flow is computed.
    """
    identity, source_aus, yaw, source_asymmetry = _check_inputs(identity, source_aus, yaw, size, source_asymmetry, "source_aus")
    keep_freed_memory()
    _, target_aus, _, target_asymmetry = _check_inputs(identity, target_aus, yaw, size, target_asymmetry, "target_aus")
    n = len(identity)
    P = identity_params(identity)
    draw = _Draw(n, generator, seeds)
    scene = _scene(n, yaw, light, background, draw)
    sl_, sr_ = _sides(source_aus, source_asymmetry)
    tl_, tr_ = _sides(target_aus, target_asymmetry)
    out = _Gather(n)
    for sl in _chunks(size, yaw, P, torch.cat([source_aus, target_aus], 1)):
        Pc, sc = _select(P, sl), _select_scene(scene, sl)
        src = _Face(Pc, sl_[sl], sr_[sl], sc, size)
        tgt = _Face(Pc, tl_[sl], tr_[sl], sc, size)
        s_img, s_head, s_skin, s_state, s_gap, _ = src.shade()
        t_img, t_head, t_skin, t_state, t_gap, glasses = tgt.shade()
        flow, vis = _flow_and_visibility(src, tgt, (s_head, s_skin, s_state, s_gap), (t_head, t_skin, t_state, t_gap), glasses)
        out.put("source", sl, _to_signed(s_img))
        out.put("target", sl, _to_signed(t_img))
        out.put("flow", sl, flow)
        out.put("visible", sl, vis)
        out.put("source_landmarks", sl, _landmarks(src))
        out.put("target_landmarks", sl, _landmarks(tgt))
        out.put("face_mask", sl, t_skin.unsqueeze(1))
    result = out.out
    result["source"] = _add_noise(result["source"], noise, draw, salt=103)
    result["target"] = _add_noise(result["target"], noise, draw, salt=104)
    return result


def _flow_and_visibility(src: _Face, tgt: _Face, s_layers: tuple, t_layers: tuple, glasses: Tensor):
    """Backward flow target -> source in pixels and the mask of target pixels it explains.

    ``*_layers`` = (head alpha, face-skin alpha, texture state, mouth-interior coverage) of each render.
    """
    s_head, s_skin, s_state_img, s_gap = s_layers
    t_head, t_skin, t_state, t_gap = t_layers
    size = tgt.size
    lower = ~tgt.upper
    # target canonical point -> source face-plane point (Newton) -> source pixel (forward pose).
    # The deformation kernels have compact support, so wherever the two expression maps agree
    # (same coarse-grid nodes around the point, same lip opening) the answer is the target's own
    # face-plane point: Newton runs only on the window where they differ.
    wx, wy = tgt.vx.clone(), tgt.vy.clone()
    resid = torch.zeros_like(wx)
    differ = ((src.grid != tgt.grid).any(1, keepdim=True)).float()
    differ = F.max_pool2d(differ, 3, 1, 1)                                  # one node of slack
    where = torch.stack([tgt.vx, tgt.vy], -1) / _GRID_RANGE
    differ = F.grid_sample(differ, where, align_corners=False, padding_mode="border")[:, 0] > 0
    lips = (src.g_up != tgt.g_up) | (src.g_low != tgt.g_low)
    if bool(lips.any()):
        lens = (tgt.ux.abs() < _v(tgt.P["mw"])) & ((tgt.uy - _mouth_line(tgt.ux, tgt.P)).abs() < _LENS_REACH + 0.05)
        differ |= lens & _v(lips)
    rows, cols = differ.any(2).any(0).nonzero(), differ.any(1).any(0).nonzero()
    if len(rows):
        r = slice(int(rows[0]), int(rows[-1]) + 1)
        c = slice(int(cols[0]), int(cols[-1]) + 1)
        wx[:, r, c], wy[:, r, c], resid[:, r, c] = _solve_expression(
            src, tgt.ux[:, r, c], tgt.uy[:, r, c], lower[:, r, c], wx[:, r, c].clone(), wy[:, r, c].clone())
    q = _pose_forward(torch.stack([wx, wy], 1), _v(src.P["yn"]), src.scene["sin"], src.scene["squash"])
    p = torch.stack([tgt.px_, tgt.py_], 1)
    background = t_head <= 0
    # where Newton did not converge (no source point shows this canonical point) the flow is 0,
    # and every source position is clamped into the image: the flow stays finite and |flow| <= size
    # everywhere; such pixels are never visible (resid check and ``inside`` below)
    converged = torch.isfinite(q).all(1) & (resid <= 1e-4)
    q = torch.where((background | ~converged).unsqueeze(1), p, q.nan_to_num(0.0).clamp(-1, 1))  # the background does not move
    flow = (q - p) * (size / 2)                                                           # [n, 2, S, S] pixels
    # layer state of the source at the target's canonical points: differs where texture changed
    s_state = _texture_state(tgt.ux, tgt.uy, src.P, src.sv, src.px, tgt.region)
    changed = (t_state - s_state).abs().amax(1) > _STATE_TOL
    # the source side is read by bilinear interpolation at q: sampling a layer's alpha there
    # with the same interpolation tells whether any of the four source pixels involved has it
    grid = torch.stack([q[:, 0], q[:, 1]], -1)

    def at_q(alpha: Tensor, padding: str = "zeros") -> Tensor:
        return F.grid_sample(alpha.unsqueeze(1), grid, align_corners=False, padding_mode=padding)[:, 0]

    moving = flow.abs().amax(1)
    # a head/background edge may move a little: the background behind it is static, and the
    # error that leaves is (1 - alpha) * (background(q) - background(p)), small for small moves
    edge = (t_head > 1e-3) & (t_head < 1 - 1e-3) & (moving > 0.25)
    # likewise the face's outline over the hair and neck, where the jaw stretches it most
    edge |= (t_skin > 1e-3) & (t_skin < 1 - 1e-3) & (moving > 0.25)
    # the glasses stay put while the face moves under them (same pose: same glasses in both)
    rigid = ((glasses > 0.01) | (at_q(glasses) > 0.01)) & (moving > 0.05)
    gap = (t_gap > 0.002) | (at_q(s_gap) > 0.002)
    head_changed = ((at_q(s_head, "border") - t_head).abs() > 0.02) | ((at_q(s_skin) - t_skin).abs() > 0.02)
    # texture of the source pixels the warp reads (catches a changed layer next to q)
    changed |= (t_state - F.grid_sample(s_state_img, grid, align_corners=False)).abs().amax(1) > _STATE_TOL
    inside = (q.abs() <= 1 - 1.0 / size + 1e-4).all(1)  # the bilinear support stays in the image
    bad = changed | edge | rigid | gap | head_changed | ~inside | ~converged
    return flow, (~bad).float().unsqueeze(1)
