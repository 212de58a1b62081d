"""facelib: five facial-expression-editing papers, re-implemented to read, run and compare."""
from __future__ import annotations

from .conventions import AU_CODES, AU_NAMES, EMOTIONS, EXPRESSIONS
from .utils import get_device, is_smoke, set_seed

__version__ = "0.1.0"


def load_pretrained(name: str, **kwargs):
    """Load a shipped checkpoint by its manifest name (see ``facelib.checkpoint``)."""
    from .pretrained import load_pretrained as _load_pretrained

    return _load_pretrained(name, **kwargs)


def load_editor(name: str, device="cpu"):
    """A registered editor with its shipped weights, ready to edit (see ``facelib.editors``)."""
    from .editors import load_editor as _load_editor

    return _load_editor(name, device=device)


def list_editors():
    """Every registered editor: name, paper, accepted targets, whether its weights ship."""
    from .editors import list_editors as _list_editors

    return _list_editors()


def versions() -> dict[str, str]:
    """Versions that matter for reproducing a notebook run."""
    import platform

    import numpy
    import torch

    return {
        "python": platform.python_version(),
        "facelib": __version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
    }


__all__ = [
    "AU_CODES", "AU_NAMES", "EMOTIONS", "EXPRESSIONS",
    "get_device", "is_smoke", "set_seed", "load_pretrained", "load_editor", "list_editors", "versions",
    "__version__",
]
