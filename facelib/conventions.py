"""Conventions shared by every part of facelib (see DESIGN.md).

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
