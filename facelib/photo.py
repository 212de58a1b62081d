"""A photo of your own, edited without widgets: the pipeline behind the photo editor (notebook 09).

- :class:`FacePhoto`: a photo whose faces are found once; :meth:`FacePhoto.edit` aligns one face,
  edits it with any :class:`~facelib.editors.Editor` and pastes it back into the whole photo;
- :class:`LatestOnly`: redraw after requests, the latest one winning, so no stale edit queues up;
- :func:`encode_rgb`, :func:`image_png`, :func:`preview`: PNG/JPEG bytes and display sizes;
- :func:`sample_photos`: photos that ship inside installed wheels.

:mod:`facelib.widgets` builds the interactive editor on these.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import cv2
import numpy as np
import torch


def encode_rgb(rgb: np.ndarray, format: str = "png", *, quality: int = 90) -> bytes:
    """PNG or JPEG bytes of a ``uint8`` ``[H, W, 3]`` RGB picture (OpenCV: fast enough to redraw a photo)."""
    if format not in ("png", "jpeg"):
        raise ValueError(f"format must be 'png' or 'jpeg', got {format!r}")
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected a uint8 [H, W, 3] RGB array, got {rgb.dtype} {rgb.shape}")
    # PNG level 1: a 1080p photo in ~30 ms instead of ~200 ms at the default, 10-20 % larger
    options = [cv2.IMWRITE_PNG_COMPRESSION, 1] if format == "png" else [cv2.IMWRITE_JPEG_QUALITY, quality]
    ok, data = cv2.imencode("." + ("png" if format == "png" else "jpg"), np.ascontiguousarray(rgb[..., ::-1]), options)
    if not ok:
        raise ValueError(f"OpenCV could not encode a {rgb.shape[1]}x{rgb.shape[0]} picture as {format}")
    return data.tobytes()


def image_png(image: torch.Tensor) -> bytes:
    """PNG bytes of one image ``[3, H, W]`` in [-1, 1]."""
    from .data.io import to_uint8

    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"image must be [3, H, W]; got {tuple(image.shape)}")
    return encode_rgb(to_uint8(image), "png")


def _grace_hopper() -> np.ndarray:
    from matplotlib import cbook

    from .data.io import load_image

    return load_image(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))


def _two_faces() -> np.ndarray:
    import skimage.data

    hopper = _grace_hopper()  # 512 x 600
    astronaut = cv2.resize(skimage.data.astronaut(), (hopper.shape[0], hopper.shape[0]), interpolation=cv2.INTER_CUBIC)
    return np.concatenate([astronaut, hopper], axis=1)


def sample_photos() -> dict[str, Callable[[], np.ndarray]]:
    """Photos that ship inside installed wheels (nothing is downloaded): name -> function returning RGB.

    Eileen Collins (scikit-image's ``astronaut``, 512x512, smiling), Grace Hopper (matplotlib's
    sample data, 512x600, neutral), the two side by side (to pick one of several faces) and a
    photo without a face (scikit-image's ``coffee``, to see what the editor says then).
    """
    import skimage.data

    return {"astronaut (scikit-image)": skimage.data.astronaut,
            "Grace Hopper (matplotlib)": _grace_hopper,
            "two faces (the two above, side by side)": _two_faces,
            "no face (scikit-image's coffee)": skimage.data.coffee}


@dataclass
class PhotoEdit:
    """One edit of a photo. photo: the whole edited photo, ``uint8`` ``[H, W, 3]``; crop and
    edited_crop: the aligned face before and after, ``[S, S, 3]``; extras: the method's flow
    (colour wheel) and attention (grey) at the crop's size; milliseconds: time of each stage."""

    photo: np.ndarray
    crop: np.ndarray
    edited_crop: np.ndarray
    extras: dict[str, np.ndarray] = field(default_factory=dict)
    milliseconds: dict[str, float] = field(default_factory=dict)


class FacePhoto:
    """A photo whose faces are found once, so that each edit costs only the edit and the paste.

    ``FacePhoto(image)`` reads ``image`` (anything :func:`facelib.data.load_image` reads, bytes
    of an uploaded file included) and detects its faces (``faces``, largest first; an empty list
    when there is none). :meth:`edit` runs the pipeline on one face: align at ``crop_size``
    (eyes levelled, :func:`facelib.align.align_face`), ``editor.edit_highres`` (the model edits
    at its own size; a flow is upsampled to the crop, a pixel output enlarged), and
    :func:`facelib.align.paste_back` into the whole photo.
    """

    def __init__(self, image, name: str = "photo", *, crop_size: int = 256):
        from .align import detect_faces
        from .data.io import load_image

        self.name, self.crop_size = name, crop_size
        self.rgb = np.ascontiguousarray(load_image(image))
        self.faces = detect_faces(self.rgb)
        self._aligned: dict[int, object] = {}

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)`` in pixels."""
        return self.rgb.shape[1], self.rgb.shape[0]

    def no_face_message(self) -> str:
        width, height = self.size
        return (f"No face found in {self.name} ({width}x{height}). The detector (dlib's HOG) needs a roughly "
                "frontal, upright face at least 40 pixels wide; try another photo.")

    def aligned(self, face: int = 0):
        """The :class:`facelib.align.AlignedFace` of face number ``face`` (0 = the largest)."""
        from .align import NoFaceError, align_face

        if not self.faces:
            raise NoFaceError(self.no_face_message())
        if not 0 <= face < len(self.faces):
            raise ValueError(f"{self.name} has {len(self.faces)} face(s); face must be 0-{len(self.faces) - 1}, got {face}")
        if face not in self._aligned:
            self._aligned[face] = align_face(self.rgb, self.crop_size, detection=self.faces[face])
        return self._aligned[face]

    def reference(self, size: int, face: int = 0) -> torch.Tensor:
        """This photo's face as a reference target for an editor of ``size``: ``[1, 3, size, size]``."""
        from .align import align_face

        self.aligned(face)  # the same checks
        return align_face(self.rgb, size, detection=self.faces[face]).tensor()

    def edit(self, editor, target, face: int = 0) -> PhotoEdit:
        """Edit face ``face`` toward ``target`` (a :class:`facelib.editors.Target`) and paste it back."""
        from .align import paste_back
        from .data.io import to_uint8
        from .warp import flow_to_rgb

        aligned = self.aligned(face)
        clock = {"start": time.perf_counter()}
        result = editor.edit_highres(aligned.tensor(), target)
        clock["edit"] = time.perf_counter()
        edited_crop = to_uint8(result.output)
        photo = paste_back(self.rgb, edited_crop, aligned)
        clock["paste"] = time.perf_counter()
        extras, side = {}, (self.crop_size, self.crop_size)
        if result.flow is not None:
            wheel = to_uint8(flow_to_rgb(result.flow, max_magnitude=2.0)[0] * 2 - 1)
            extras["flow"] = cv2.resize(wheel, side, interpolation=cv2.INTER_NEAREST)
        if result.attention is not None:
            grey = to_uint8(result.attention[0].expand(3, -1, -1) * 2 - 1)
            extras["attention"] = cv2.resize(grey, side, interpolation=cv2.INTER_NEAREST)
        names = list(clock)
        milliseconds = {name: 1000 * (clock[name] - clock[before]) for before, name in zip(names, names[1:])}
        return PhotoEdit(photo, aligned.crop, edited_crop, extras, milliseconds)


def preview(rgb: np.ndarray, width: int) -> np.ndarray:
    """``rgb`` shrunk (area) to at most ``width`` pixels wide, for display."""
    height, current = rgb.shape[:2]
    if current <= width:
        return rgb
    return cv2.resize(rgb, (width, max(1, round(height * width / current))), interpolation=cv2.INTER_AREA)


class LatestOnly:
    """Run ``work()`` again after requests, never for a stale state: the latest request wins.

    A slider that reports while it moves sends requests faster than a photo can be edited. Here
    ``request()`` only marks the picture out of date; one background thread runs ``work()``
    (which reads the controls as they are *then*) until no request came in while it ran. So at
    most one redraw waits, the one that shows the newest values, and none queues up.
    ``background=False`` runs ``work()`` at once, in the caller (tests, headless notebooks).
    ``runs`` and ``requests`` count both.
    """

    def __init__(self, work: Callable[[], None], *, background: bool = True):
        self.work, self.background = work, background
        self.runs = self.requests = 0
        self._lock = threading.Lock()
        self._waiting = False
        self._thread: threading.Thread | None = None

    def request(self) -> None:
        self.requests += 1
        if not self.background:
            self._run_once()
            return
        with self._lock:
            self._waiting = True
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="facelib-redraw", daemon=True)
                self._thread.start()

    @property
    def pending(self) -> bool:
        """True when a request came in that no run has picked up yet."""
        return self._waiting

    def wait(self, timeout: float = 60.0) -> None:
        """Block until every request so far has been drawn."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def _run_once(self) -> None:
        self.runs += 1
        self.work()

    def _loop(self) -> None:
        while True:
            with self._lock:
                if not self._waiting:
                    self._thread = None
                    return
                self._waiting = False
            self._run_once()


__all__ = ["FacePhoto", "LatestOnly", "PhotoEdit", "encode_rgb", "image_png", "preview", "sample_photos"]
