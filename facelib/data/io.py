"""Reading images safely: files, arrays and tensors in, ``uint8`` RGB ``[H, W, 3]`` out.

Every loader and the face aligner read pictures through :func:`load_image`, so bad input
is handled in one place, the same way everywhere:

=========================  ===================================================================
input                      what happens
=========================  ===================================================================
missing file / folder      ``FileNotFoundError`` / ``IsADirectoryError`` naming the path
bytes (an uploaded file)   decoded like a file, with the same checks
not an image (text, ...)   ``ValueError`` listing the formats Pillow reads
corrupt / truncated file   ``ValueError`` saying the file could not be decoded
grayscale (L, 1-bit)       converted to RGB by repeating the channel
RGBA, LA, palette + alpha  composited on a white background (transparent = white)
16-bit (PNG, TIFF)         scaled to 8 bits: ``round(v / 257)`` (65535 -> 255)
float arrays               must be finite and lie in ``[0, 1]``; scaled to ``[0, 255]``
float tensors              ``[-1, 1]``, clipped there; NaN or inf raise ``ValueError``
EXIF orientation           applied (a phone photo comes out upright)
smaller than MIN_SIDE      ``ValueError`` (nothing useful can be aligned or learned from it)
more than ``max_pixels``   ``ValueError`` *before* decoding: the header's size is checked
                           first, so a decompression bomb never reaches memory
=========================  ===================================================================

Arrays are taken to be RGB already (OpenCV users: convert BGR with ``img[..., ::-1]``). A
``uint8`` ``[H, W, 3]`` array is returned as it is (no copy): copy before writing into it.
"""
from __future__ import annotations

import io
import os
import struct
import warnings
from pathlib import Path

import numpy as np
import torch

#: What Pillow may raise while decoding a broken file, besides OSError and SyntaxError.
_PILLOW_DECODE_ERRORS = (ValueError, TypeError, KeyError, IndexError, EOFError, ZeroDivisionError, struct.error)
#: Images smaller than this on either side are refused (scikit-image's LFW faces, 25 px, pass).
MIN_SIDE = 16
#: Default limit on width * height: 64 megapixels, more than any camera photo, far below a bomb.
MAX_PIXELS = 64_000_000

_ACCEPTED = (
    "a path to an image file (PNG, JPEG, BMP, TIFF, WebP, GIF, ...), the bytes of such a file, a PIL.Image, "
    "a numpy array [H, W], [H, W, 1], [H, W, 3] (RGB) or [H, W, 4] (RGBA) of uint8, uint16, bool "
    "or float in [0, 1], or a torch tensor [3, H, W] / [1, 3, H, W] in [-1, 1]"
)


def load_image(image, *, max_pixels: int = MAX_PIXELS, min_side: int = MIN_SIDE) -> np.ndarray:
    """Read ``image`` (path, PIL image, array or tensor) as ``uint8`` RGB ``[H, W, 3]``.

    See the module docstring for how grayscale, alpha, 16-bit, EXIF orientation, tiny and
    gigantic images are handled. Raises ``ValueError``/``TypeError`` naming what was wrong
    and what is accepted.
    """
    if isinstance(image, (str, os.PathLike)):
        if not os.fspath(image):  # Path("") is the current folder
            raise ValueError(f"the image path is empty; accepted: {_ACCEPTED}")
        rgb = _read_file(Path(image), max_pixels)
    elif isinstance(image, (bytes, bytearray, memoryview)):  # an uploaded file's content
        what = f"the {len(image):,} bytes given"
        rgb = _decode(io.BytesIO(bytes(image)), max_pixels, what, what)
    elif isinstance(image, torch.Tensor):
        rgb = to_uint8(image)
    elif isinstance(image, np.ndarray):
        rgb = _array_to_rgb(image)
    else:
        from PIL import Image

        if not isinstance(image, Image.Image):
            raise TypeError(f"cannot read an image from {type(image).__name__}; accepted: {_ACCEPTED}")
        _check_pixels(image.size, max_pixels, "image")
        try:
            rgb = _pil_to_rgb(image)
        except OSError as err:  # a lazily opened PIL image whose file is broken
            raise ValueError(f"the PIL image could not be decoded (corrupt or truncated image data: {err})") from None
    height, width = rgb.shape[:2]
    if min(height, width) < min_side:
        raise ValueError(
            f"image is too small ({width}x{height} pixels); both sides must be at least "
            f"{min_side} pixels (upsample tiny images yourself if you really mean to use them)"
        )
    return rgb


def to_tensor(image) -> torch.Tensor:
    """Any input :func:`load_image` accepts -> float tensor ``[1, 3, H, W]`` in ``[-1, 1]``."""
    rgb = load_image(image)
    tensor = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float()  # [3, H, W]
    return (tensor / 127.5 - 1.0).unsqueeze(0)


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """Float tensor ``[3, H, W]`` or ``[1, 3, H, W]`` in ``[-1, 1]`` -> ``uint8`` ``[H, W, 3]``.

    Values outside ``[-1, 1]`` are clipped (a generator's output may overshoot slightly); NaN or
    inf values raise ``ValueError``.
    """
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"to_uint8 expects a torch tensor, got {type(image).__name__}")
    if image.dim() == 4 and image.shape[0] == 1:
        image = image[0]
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(
            f"expected an image tensor [3, H, W] or [1, 3, H, W] in [-1, 1], got shape {tuple(image.shape)}"
        )
    if not image.is_floating_point():
        raise TypeError(f"expected a float tensor in [-1, 1], got dtype {image.dtype}")
    image = image.detach().float().cpu()
    finite = torch.isfinite(image)
    if not bool(finite.all()):
        # NaN would silently become 0 (black) and inf a saturated pixel: refuse both
        raise ValueError(f"image tensor contains {int((~finite).sum())} NaN/inf values; only finite values in "
                         "[-1, 1] are accepted")
    scaled = ((image.clamp(-1, 1) + 1.0) * 127.5).round()
    return scaled.to(torch.uint8).permute(1, 2, 0).contiguous().numpy()


def _check_pixels(size: tuple[int, int], max_pixels: int, what) -> None:
    width, height = size
    if width * height > max_pixels:
        raise ValueError(
            f"{what} is {width}x{height} = {width * height:,} pixels, more than max_pixels="
            f"{max_pixels:,}; refusing to decode it (decompression-bomb guard). "
            f"Pass a larger max_pixels if the image is genuine."
        )


def _read_file(path: Path, max_pixels: int) -> np.ndarray:
    if not path.exists():
        raise FileNotFoundError(f"image file not found: {path}")
    if path.is_dir():
        raise IsADirectoryError(f"expected an image file, got a folder: {path}")
    if not path.is_file():  # a FIFO would block the open forever, a device would be read without end
        raise ValueError(f"{path} is not a regular file (a FIFO, device or socket); load_image reads image files")
    return _decode(path, max_pixels, str(path), f"image {path.name}")


def _decode(source, max_pixels: int, what: str, label: str) -> np.ndarray:
    """Decode an image file (a path or a binary file object); errors name it ``what`` (``label`` for its size)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            # Pillow warns about large images while opening; our own limit below decides.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(source) as picture:
                # Image.open reads only the header: the size is known before any pixel is decoded.
                _check_pixels(picture.size, max_pixels, label)
                return _pil_to_rgb(picture)
    except UnidentifiedImageError:
        raise ValueError(
            f"{what} is not an image Pillow can read; accepted formats include "
            f"PNG, JPEG, BMP, TIFF, WebP, GIF and PPM"
        ) from None
    except Image.DecompressionBombError as err:
        # Pillow's own check fires first for headers over twice its limit.
        raise ValueError(f"{what}: {err} Refusing to decode it (decompression-bomb guard).") from None
    except (OSError, SyntaxError) as err:
        # Pillow raises OSError("image file is truncated", ...) or SyntaxError on broken data.
        raise ValueError(f"{what} could not be decoded (corrupt or truncated image file: {err})") from None


def _pil_to_rgb(picture) -> np.ndarray:
    from PIL import Image, ImageOps

    try:
        picture = ImageOps.exif_transpose(picture)  # honour the camera's orientation tag
        picture.load()
    except _PILLOW_DECODE_ERRORS as err:
        # Pillow reports some broken files with these (a TIFF's "invalid extents" is a ValueError); as
        # OSError they reach the handlers that name the file ("could not be decoded")
        raise OSError(f"{type(err).__name__}: {err}") from err
    mode = picture.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        values = np.asarray(picture)
        if mode == "I":  # 32-bit integer mode: Pillow's container for 16-bit TIFFs and PNGs
            if values.size and (values.min() < 0 or values.max() > 65535):
                raise ValueError("32-bit integer images are not supported (values outside 0..65535); save as 8- or 16-bit")
            values = values.astype(np.uint16)
        return _array_to_rgb(values)
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in picture.info)
    if has_alpha:
        rgba = picture.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB")).copy()
    # 1-bit, L, P, CMYK, YCbCr, 16-bit RGB (Pillow keeps the high byte), ... all have a defined RGB.
    return np.asarray(picture.convert("RGB")).copy()


def _array_to_rgb(array: np.ndarray) -> np.ndarray:
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise ValueError(f"cannot read an image array of shape {array.shape}; accepted: {_ACCEPTED}")
    if array.dtype == np.uint8 and array.ndim == 3 and array.shape[2] == 3:
        return np.ascontiguousarray(array)  # already what we want: no copy
    if array.dtype == np.uint8 and array.ndim == 2:
        return np.repeat(array[..., None], 3, axis=2)
    if array.dtype == np.uint8:
        scaled = array.astype(np.float64)
    elif array.dtype == np.bool_:
        scaled = array.astype(np.float64) * 255.0
    elif array.dtype.kind == "u" and array.dtype.itemsize == 2:  # uint16, either byte order
        scaled = array.astype(np.float64) / 257.0  # 16-bit -> 8-bit: 65535 maps to 255
    elif array.dtype.kind == "f":
        finite = np.isfinite(array)
        if not finite.all():
            raise ValueError(f"float image arrays must be finite and lie in [0, 1]; got {int((~finite).sum())} "
                             "NaN/inf values")
        if array.size and (array.min() < 0 or array.max() > 1):
            raise ValueError(f"float image arrays must be finite and lie in [0, 1]; got range "
                             f"[{array.min():.3g}, {array.max():.3g}]")
        scaled = array.astype(np.float64) * 255.0
    else:
        raise ValueError(f"cannot read an image array of dtype {array.dtype}; accepted: {_ACCEPTED}")
    if scaled.ndim == 2:
        scaled = np.repeat(scaled[..., None], 3, axis=2)  # grayscale -> RGB
    elif scaled.shape[2] == 4:
        alpha = scaled[..., 3:] / 255.0
        scaled = scaled[..., :3] * alpha + 255.0 * (1.0 - alpha)  # composite on white
    return np.clip(np.round(scaled), 0, 255).astype(np.uint8)
