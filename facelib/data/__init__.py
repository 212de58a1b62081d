"""Data: SynthFaces (the embedded dataset with ground truth), real-dataset loaders, image I/O.

Names are imported lazily so that ``import facelib.data`` stays cheap and a missing
optional piece never breaks the others.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    # SynthFaces renderer and dataset
    "SynthFaces": "facelib.data.synthfaces",
    "expression_aus": "facelib.data.synthfaces",
    "PRESETS": "facelib.data.presets",
    "get_preset": "facelib.data.presets",
    "render": "facelib.data.synth",
    "render_pair": "facelib.data.synth",
    "emotion_aus": "facelib.data.synth",
    "emotion_asymmetry": "facelib.data.synth",
    "landmark_box_mask": "facelib.data.synth",
    "EYE_LANDMARKS": "facelib.data.synth",
    "MOUTH_LANDMARKS": "facelib.data.synth",
    # real datasets and image files
    "RaFD": "facelib.data.real",
    "OuluCASIA": "facelib.data.real",
    "MultiPIE": "facelib.data.real",
    "CSVManifest": "facelib.data.real",
    "load_image": "facelib.data.io",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'facelib.data' has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
