"""Conventions shared by every part of facelib (docs/conventions.md explains them).

Images are float tensors ``[B, 3, H, W]`` in ``[-1, 1]``, RGB.
Flow is a backward (sampling) displacement in pixels, ``[B, 2, H, W]``,
channel 0 = dx, channel 1 = dy: ``out[y, x] = src[y + dy, x + dx]``, with
pixel centres at integer coordinates.
"""
from __future__ import annotations

#: The 17 action units of EGGAN / OpenFace, in the order used everywhere.
AU_CODES: tuple[int, ...] = (1, 2, 4, 5, 6, 7, 9, 10, 12, 14, 15, 17, 20, 23, 25, 26, 45)

#: FACS names of the action units, keyed by AU code.
AU_NAMES: dict[int, str] = {
    1: "inner brow raiser",
    2: "outer brow raiser",
    4: "brow lowerer",
    5: "upper lid raiser",
    6: "cheek raiser",
    7: "lid tightener",
    9: "nose wrinkler",
    10: "upper lip raiser",
    12: "lip corner puller",
    14: "dimpler",
    15: "lip corner depressor",
    17: "chin raiser",
    20: "lip stretcher",
    23: "lip tightener",
    25: "lips part",
    26: "jaw drop",
    45: "blink",
}

NUM_AUS = len(AU_CODES)

#: The AUs by the part of the face they move (the sections of the AU sliders); every AU once.
AU_REGIONS: dict[str, tuple[int, ...]] = {
    "brows": (1, 2, 4),
    "eyes and cheeks": (5, 6, 7, 45),
    "nose and upper lip": (9, 10),
    "lips": (12, 14, 15, 20, 23, 25),
    "chin and jaw": (17, 26),
}
#: AU intensities live in [0, AU_MAX] (models may normalise to [0, 1] inside).
AU_MAX = 5.0

#: RaFD's eight emotions, in RaFD's order.
EMOTIONS: tuple[str, ...] = (
    "neutral", "angry", "contemptuous", "disgusted",
    "fearful", "happy", "sad", "surprised",
)
#: Expressions beyond RaFD that a dataset preset uses (Multi-PIE).
EXTRA_EXPRESSIONS: tuple[str, ...] = ("squint", "scream")
#: Every expression label facelib knows; an item's ``emotion`` indexes this.
EXPRESSIONS: tuple[str, ...] = EMOTIONS + EXTRA_EXPRESSIONS


def au_index(code: int) -> int:
    """Position of AU ``code`` in :data:`AU_CODES`; ``ValueError`` names the valid codes."""
    try:
        return AU_CODES.index(int(code))
    except ValueError:
        raise ValueError(f"unknown AU {code!r}; valid AUs are {list(AU_CODES)}") from None


def expression_index(name: str) -> int:
    """Position of ``name`` in :data:`EXPRESSIONS`; ``ValueError`` lists the valid names."""
    try:
        return EXPRESSIONS.index(name)
    except ValueError:
        raise ValueError(
            f"unknown expression {name!r}; valid expressions are {list(EXPRESSIONS)}"
        ) from None


#: How far outside [-1, 1] an image may stray (rounding, bilinear overshoot), as a fraction of the range.
RANGE_TOLERANCE = 5e-3


def _accepted(value_range: tuple[float, float] | None, channels: tuple[int, ...]) -> str:
    values = "" if value_range is None else f" with values in [{value_range[0]:g}, {value_range[1]:g}]"
    return f"a float torch.Tensor [B, {'|'.join(map(str, channels))}, H, W]{values}"


def _check_layout(images, name: str, channels: tuple[int, ...], accepted: str) -> None:
    """Type, dtype and shape of an image batch; never reads a value."""
    import torch

    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{name} must be {accepted}, got {type(images).__name__}")
    if not images.is_floating_point():
        raise TypeError(f"{name} must be {accepted}, got dtype {images.dtype}")
    if images.dim() != 4 or images.shape[1] not in channels:
        hint = " (one image [3, H, W] needs .unsqueeze(0))" if images.dim() == 3 else ""
        raise ValueError(f"{name} must be {accepted}, got shape {list(images.shape)}{hint}")
    if images.shape[0] == 0 or images.shape[2] == 0 or images.shape[3] == 0:
        raise ValueError(f"{name} is empty (shape {list(images.shape)}); at least one image of at least 1x1 is needed")


def _to_size(images, name: str, size: int | None, resize: bool):
    """``images`` at ``size`` x ``size``: resized when asked (area to shrink, bilinear to enlarge), else refused."""
    import torch.nn.functional as F

    if size is None or tuple(images.shape[-2:]) == (size, size):
        return images
    if not resize:
        raise ValueError(f"{name} are {images.shape[-2]}x{images.shape[-1]}, but {size}x{size} is accepted here; "
                         f"resize them first (facelib.conventions.check_images(..., size={size}, resize=True), "
                         "or crop a photo with facelib.align.align_face(..., size=...))")
    shrink = images.shape[-1] > size
    return F.interpolate(images, size=(size, size), mode="area" if shrink else "bilinear",
                         **({} if shrink else {"align_corners": False}))


def check_image_shape(images, name: str = "images", *, size: int | None = None, resize: bool = False,
                      channels: tuple[int, ...] = (3,)):
    """What a network's ``forward`` checks: a float ``[B, C, H, W]`` batch (of ``size`` x ``size``).

    The shape only: the values are never read, so the check costs no device synchronisation.
    Values are checked once, where images enter facelib (:func:`check_images`: ``Editor.edit``,
    the loaders, the public metric and warp functions). ``size``/``resize`` and the errors for
    type, dtype and shape are those of :func:`check_images`. Returns the images (resized if asked).
    """
    _check_layout(images, name, tuple(channels), _accepted(None, tuple(channels)))
    return _to_size(images, name, size, resize)


def check_images(images, name: str = "images", *, size: int | None = None, resize: bool = False,
                 value_range: tuple[float, float] = (-1.0, 1.0), channels: tuple[int, ...] = (3,),
                 range_hint: str = "facelib images are RGB in [-1, 1] (from [0, 1] images: x * 2 - 1)"):
    """The one image validator at facelib's boundary: a finite float ``[B, C, H, W]`` batch in ``value_range``.

    ``size``: the square side the caller works at. A batch of another size raises a
    ``ValueError`` naming both sizes, unless ``resize=True`` (area averaging to shrink,
    bilinear to enlarge; never silent for a caller that did not ask). Returns the images.
    Errors: ``TypeError`` for a non-tensor or an integer tensor, ``ValueError`` for the shape,
    an empty batch, NaN/inf or values outside ``value_range`` (by more than ``RANGE_TOLERANCE``);
    ``range_hint`` ends that last message (say how to get an accepted range).
    Reading the values synchronises with the device, so networks' ``forward`` passes use
    :func:`check_image_shape` instead.
    """
    import torch

    low, high = value_range
    _check_layout(images, name, tuple(channels), _accepted(value_range, tuple(channels)))
    values = images.detach()  # the checks are no part of any graph (a loss may validate its input)
    if not torch.isfinite(values).all():
        raise ValueError(f"{name} contains {int((~torch.isfinite(values)).sum())} NaN/inf values; only finite values are accepted")
    x_min, x_max = float(values.min()), float(values.max())
    tolerance = RANGE_TOLERANCE * (high - low)
    if x_min < low - tolerance or x_max > high + tolerance:
        raise ValueError(f"{name} has values in [{x_min:.3g}, {x_max:.3g}], outside the accepted range "
                         f"[{low:g}, {high:g}]; {range_hint}")
    return _to_size(images, name, size, resize)
