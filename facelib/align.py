"""Face alignment for users' own photos: detect, align by the eyes, crop, and paste an edit back.

The models in facelib learn on SynthFaces crops, where the eyes sit at fixed places. A photo
must be brought into the same framing before a model can edit it, and the edit must then go
back into the photo without a visible seam. Three steps:

1. :func:`detect_faces` finds every face with dlib's HOG frontal-face detector (built into dlib;
   the ``dlib-bin`` wheel) and places five landmarks on each (both corners of each eye and the
   base of the nose) with dlib's 5-point shape predictor, a model file shipped by the
   ``face-recognition-models`` package. Nothing is downloaded. :func:`detect_face` picks one
   face (the largest, with a warning when there are several); no face raises :class:`NoFaceError`.
2. :func:`align_face` computes the similarity transform (rotation, uniform scale, shift) that
   puts the eye line level, at :data:`EYE_HEIGHT` of the crop height, with the eyes
   :data:`EYE_DISTANCE` of the crop width apart, centred. It returns the crop *and* the
   transform, a 2x3 matrix mapping photo pixel coordinates to crop pixel coordinates.
3. :func:`paste_back` maps an edited crop back through the inverse transform and blends it
   with a feathered mask and a Laplacian-pyramid blend (Burt & Adelson 1983): each frequency
   band is blended with a mask blurred to that band's scale, so there is no seam at any scale.
   By default the bands finer than the crop's pixels come from the photo (``detail="photo"``)
   wherever the edit left the crop's structure as it was, and from the edit where it changed
   it: a 64-pixel crop cannot hold the photo's skin and hair texture, but a feature the edit
   moved must not stay behind as a faint ghost (a second row of teeth, a doubled eyelid).

Pixel coordinates follow facelib's convention: pixel centres at integers, ``(x, y)``.
"""
from __future__ import annotations

import importlib.util
import math
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
import torch

from .data.io import load_image, to_uint8

# SynthFaces' framing, measured from facelib.data.synth.render landmarks (mean of the four eye
# landmarks per eye, 64 identities, neutral, frontal): eyes at 48.5% height, 21.3% of the width apart.
#: Height of the eye line in the crop, as a fraction of the crop height.
EYE_HEIGHT = 0.485
#: Distance between the eye centres, as a fraction of the crop width.
EYE_DISTANCE = 0.213
#: Where the eye centres sit inside a dlib face box (fractions of the box), used only when the
#: landmarks are implausible. Measured from the 5-point landmarks on astronaut, grace_hopper and
#: 86 LFW faces: x 0.27 / 0.69 (+-0.04), y 0.31 (+-0.04).
BOX_EYES = ((0.27, 0.31), (0.69, 0.31))
#: Detections scoring below this are dropped. dlib's own default is 0.0; at 0.0 the mission patch
#: on skimage's astronaut counts as a face (score 0.12), while the faces of the photos shipped in
#: the installed wheels score 1.1-1.3 (and 86 of 100 LFW faces, upsampled from 25 pixels, >= 0.3).
MIN_SCORE = 0.3

# Face search runs on a copy whose longer side is at most this (HOG cost grows with area), upsampled
# once: the HOG window is 80 pixels, so faces from about 40 pixels of the search copy are found.
_DETECT_MAX_SIDE = 1024
_UPSAMPLE = 1

# dlib's 5-point model: points 0-1 are the corners of one eye, 2-3 of the other, 4 the base of the nose.
_EYE_POINTS = ((0, 1), (2, 3))
_NOSE_POINT = 4

#: The model files of the ``face-recognition-models`` package that facelib uses, with their licences.
DLIB_MODELS = {
    "shape_predictor_5_face_landmarks.dat": "5-point landmarks (eye corners, nose); public domain (CC0)",
    "shape_predictor_68_face_landmarks.dat": "68-point landmarks; trained on iBUG 300-W, NOT for commercial use",
    "dlib_face_recognition_resnet_model_v1.dat": "128-d face descriptor (ResNet); public domain (CC0)",
}


class NoFaceError(ValueError):
    """No face was found in the image."""


def dlib_model_file(name: str) -> Path:
    """Path of one of dlib's model files shipped by the ``face-recognition-models`` package.

    The package is located with :func:`importlib.util.find_spec`, not imported: its
    ``__init__`` imports ``pkg_resources``, which current setuptools no longer provides.
    """
    if name not in DLIB_MODELS:
        raise ValueError(f"unknown dlib model {name!r}; facelib uses {', '.join(DLIB_MODELS)}")
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("dlib's model files come from the face-recognition-models package: "
                                  "pip install -r requirements.txt")
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: reinstall face-recognition-models")
    return path


@lru_cache(maxsize=None)
def _detector():
    import dlib  # a compiled extension: imported where it is needed

    return dlib.get_frontal_face_detector()


@lru_cache(maxsize=None)
def shape_predictor(points: int = 5):
    """dlib's 5-point (default) or 68-point shape predictor (see :data:`DLIB_MODELS` for licences)."""
    import dlib

    if points not in (5, 68):
        raise ValueError(f"dlib ships 5- and 68-point shape predictors, not {points}")
    return dlib.shape_predictor(str(dlib_model_file(f"shape_predictor_{points}_face_landmarks.dat")))


def _dlib_rect(box):
    import dlib

    x, y, w, h = (int(v) for v in box)
    return dlib.rectangle(x, y, x + w - 1, y + h - 1)


def landmarks(image, box: tuple[int, int, int, int], points: int = 5) -> np.ndarray:
    """dlib's ``[points, 2]`` landmarks ``(x, y)`` of the face in ``box`` ``(x, y, w, h)`` of ``image``."""
    rgb = np.ascontiguousarray(load_image(image, min_side=1))
    shape = shape_predictor(points)(rgb, _dlib_rect(box))
    return np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)


@dataclass(frozen=True)
class FaceDetection:
    """A detected face. Unpacks as ``box, eyes = detect_face(photo)``.

    box: ``(x, y, w, h)`` in photo pixels. eyes: ``[2, 2]`` float array of eye centres
    ``(x, y)`` (the mean of each eye's two corners), the eye on the image's left first.
    eyes_detected: True when the landmarks are those of a plausible face; False when they were
    not (then the eyes are estimated from the box, :data:`BOX_EYES`, and a warning says so).
    landmarks: dlib's five points ``[5, 2]``. score: the HOG detector's confidence.
    """

    box: tuple[int, int, int, int]
    eyes: np.ndarray
    eyes_detected: bool
    landmarks: np.ndarray
    score: float

    def __iter__(self):
        return iter((self.box, self.eyes))

    @property
    def area(self) -> int:
        return self.box[2] * self.box[3]


@dataclass(frozen=True)
class AlignedFace:
    """An aligned crop and the transform that made it.

    crop: ``uint8`` ``[S, S, 3]`` RGB, the photo as it was (paste_back compares an edit with it).
    transform: ``[2, 3]`` similarity matrix, photo pixel ``(x, y, 1)`` -> crop pixel ``(x, y)``.
    eyes: ``[2, 2]`` eye centres in the photo. detection: the :class:`FaceDetection` it came from.
    """

    crop: np.ndarray
    transform: np.ndarray
    eyes: np.ndarray
    box: tuple[int, int, int, int]
    eyes_detected: bool
    detection: FaceDetection | None = None

    @property
    def size(self) -> int:
        return self.crop.shape[0]

    @property
    def rotation_degrees(self) -> float:
        """How far the photo was rotated to level the eyes (counter-clockwise positive)."""
        return math.degrees(math.atan2(self.transform[1, 0], self.transform[0, 0]))

    @property
    def scale(self) -> float:
        """Crop pixels per photo pixel."""
        return float(math.hypot(self.transform[0, 0], self.transform[1, 0]))

    def tensor(self) -> torch.Tensor:
        """The crop as a model input: float ``[1, 3, S, S]`` in ``[-1, 1]``."""
        return torch.from_numpy(self.crop).permute(2, 0, 1).float().div(127.5).sub(1.0).unsqueeze(0)


def _plausible_face(points: np.ndarray, box: tuple[int, int, int, int]) -> bool:
    """Do five landmarks look like two eyes above a nose, in proportion to the face box?

    The shape predictor always places all five points, even on something that is not a face;
    this check is what lets :class:`FaceDetection` say truthfully whether the eyes were found.
    """
    width = box[2]
    (a, b), (c, d) = (points[list(pair)] for pair in _EYE_POINTS)
    left, right = sorted([(a + b) / 2, (c + d) / 2], key=lambda p: p[0])
    axis = right - left
    distance = float(np.hypot(*axis))
    if not 0.25 * width < distance < 0.75 * width:
        return False
    if min(np.hypot(*(a - b)), np.hypot(*(c - d))) < 0.08 * width:  # an eye needs two distinct corners
        return False
    unit = axis / distance
    normal = np.array([-unit[1], unit[0]])  # points down the face when the eye line runs left to right
    nose = points[_NOSE_POINT] - left
    along, below = float(nose @ unit) / distance, float(nose @ normal) / distance
    return 0.15 < along < 0.85 and 0.2 < below < 1.2 and abs(math.degrees(math.atan2(unit[1], unit[0]))) < 60


def _detection(rgb: np.ndarray, box: tuple[int, int, int, int], score: float) -> FaceDetection:
    points = landmarks(rgb, box)
    if _plausible_face(points, box):
        eyes = np.array(sorted(((points[i] + points[j]) / 2).tolist() for i, j in _EYE_POINTS))
        return FaceDetection(box, eyes, True, points, score)
    warnings.warn(f"the landmarks of the face at box {box} do not look like two eyes above a nose; "
                  "estimating the eyes from the face box (alignment may be off)", stacklevel=3)
    x, y, w, h = box
    eyes = np.array([[x + fx * w, y + fy * h] for fx, fy in BOX_EYES])
    return FaceDetection(box, eyes, False, points, score)


def detect_faces(image, *, min_score: float = MIN_SCORE) -> list[FaceDetection]:
    """Every face in ``image``, largest first (an empty list when there is none).

    ``image`` is anything :func:`facelib.data.load_image` reads. Faces from about 40 pixels wide
    are found (in photos up to 1024 pixels on the longer side; larger photos are searched at that
    size). ``min_score``: see :data:`MIN_SCORE`.
    """
    rgb = np.ascontiguousarray(load_image(image))
    height, width = rgb.shape[:2]
    shrink = min(1.0, _DETECT_MAX_SIDE / max(height, width))
    search = rgb if shrink == 1.0 else cv2.resize(rgb, (round(width * shrink), round(height * shrink)),
                                                  interpolation=cv2.INTER_AREA)
    rects, scores, _ = _detector().run(search, _UPSAMPLE, min_score)
    faces = []
    for rect, score in zip(rects, scores):
        x0, y0 = max(rect.left(), 0) / shrink, max(rect.top(), 0) / shrink
        x1, y1 = min(rect.right() + 1, search.shape[1]) / shrink, min(rect.bottom() + 1, search.shape[0]) / shrink
        box = (round(x0), round(y0), round(x1 - x0), round(y1 - y0))
        faces.append(_detection(rgb, box, float(score)))
    return sorted(faces, key=lambda face: face.area, reverse=True)


def detect_face(image, *, min_score: float = MIN_SCORE) -> FaceDetection:
    """The largest face in ``image`` (a ``UserWarning`` when there are several; see :func:`detect_faces`).

    No face: :class:`NoFaceError`.
    """
    rgb = load_image(image)
    faces = detect_faces(rgb, min_score=min_score)
    if not faces:
        height, width = rgb.shape[:2]
        smallest = math.ceil(40 * max(1.0, max(height, width) / _DETECT_MAX_SIDE))
        raise NoFaceError(f"no face found in the {width}x{height} image; the detector needs a roughly frontal, "
                          f"upright face at least {smallest} pixels wide")
    if len(faces) > 1:
        warnings.warn(f"found {len(faces)} faces; using the largest, box (x, y, w, h) = {faces[0].box} "
                      "(detect_faces returns them all)", stacklevel=2)
    return faces[0]


def eye_transform(eyes: np.ndarray, size: int, *, eye_height: float = EYE_HEIGHT,
                  eye_distance: float = EYE_DISTANCE) -> np.ndarray:
    """The ``[2, 3]`` similarity taking ``eyes`` (``[2, 2]``, photo) to their canonical places in a crop."""
    eyes = np.asarray(eyes, dtype=np.float64)
    if eyes.shape != (2, 2):
        raise ValueError(f"eyes must be a [2, 2] array of (x, y) eye centres, got shape {eyes.shape}")
    if not np.isfinite(eyes).all():
        raise ValueError(f"eyes must be finite pixel coordinates, got {eyes.tolist()}")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"size must be a positive integer number of pixels, got {size!r}")
    for name, value in (("eye_height", eye_height), ("eye_distance", eye_distance)):
        # a fraction of the crop: NaN, 0 or > 1 would give a NaN, degenerate or off-crop transform
        if not isinstance(value, (int, float, np.floating)) or isinstance(value, bool) or not 0 < value < 1:
            raise ValueError(f"{name} must be a fraction of the crop between 0 and 1 (exclusive), got {value!r}")
    left, right = sorted(eyes.tolist())  # the eye on the image's left first
    dx, dy = right[0] - left[0], right[1] - left[1]
    distance = math.hypot(dx, dy)
    if distance < 1e-6:
        raise ValueError("the two eye centres coincide; cannot align")
    scale = eye_distance * size / distance
    angle = math.atan2(dy, dx)
    cos, sin = scale * math.cos(-angle), scale * math.sin(-angle)
    linear = np.array([[cos, -sin], [sin, cos]])  # rotate by -angle (eyes level), then scale
    middle = np.array([(left[0] + right[0]) / 2, (left[1] + right[1]) / 2])
    # Pixel centres at integers: the crop's horizontal centre is (size - 1) / 2.
    target = np.array([(size - 1) / 2.0, eye_height * size - 0.5])
    return np.concatenate([linear, (target - linear @ middle)[:, None]], axis=1)


def warp_to_crop(image: np.ndarray, transform: np.ndarray, size: int) -> np.ndarray:
    """Resample ``image`` (uint8 ``[H, W, 3]``) through ``transform`` into a ``size`` x ``size`` crop.

    When the crop is much smaller than the face, the photo is first area-averaged to the crop's
    scale (a rotation by bilinear interpolation alone would alias).
    """
    transform = np.asarray(transform, dtype=np.float64)
    scale = math.hypot(transform[0, 0], transform[1, 0])
    if scale < 0.75:
        height, width = image.shape[:2]
        new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
        image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA)
        fx, fy = new_w / width, new_h / height
        # A small-image pixel centre x' corresponds to the photo's (x' + 0.5) / fx - 0.5.
        unshrink = np.array([[1 / fx, 0, 0.5 / fx - 0.5], [0, 1 / fy, 0.5 / fy - 0.5], [0, 0, 1]])
        transform = transform @ unshrink
    return cv2.warpAffine(image, transform, (size, size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)


def align_face(image, size: int = 64, *, eye_height: float = EYE_HEIGHT,
               eye_distance: float = EYE_DISTANCE, detection: FaceDetection | None = None) -> AlignedFace:
    """Detect the face in ``image`` and crop it to ``size`` x ``size`` with the eyes level.

    The eyes land at ``eye_height * size`` from the top, ``eye_distance * size`` apart, centred
    (SynthFaces' framing by default). Pass ``detection`` (one of :func:`detect_faces`' results)
    to choose the face; by default the largest is used, with a warning when there are several.
    Raises :class:`NoFaceError` when there is no face.
    """
    if not isinstance(size, int) or size < 16:
        raise ValueError(f"size must be an integer >= 16 (e.g. 64 or 128), got {size!r}")
    rgb = load_image(image)
    if detection is None:
        detection = detect_face(rgb)
    transform = eye_transform(detection.eyes, size, eye_height=eye_height, eye_distance=eye_distance)
    crop = warp_to_crop(rgb, transform, size)
    return AlignedFace(crop, transform, detection.eyes.copy(), detection.box, detection.eyes_detected, detection)


def align_faces(image, size: int = 64, **kwargs) -> list[AlignedFace]:
    """Every face of ``image`` aligned (largest first; an empty list when there is none)."""
    rgb = load_image(image)
    return [align_face(rgb, size, detection=face, **kwargs) for face in detect_faces(rgb)]


def face_mask(size: int, *, feather: float = 0.05) -> np.ndarray:
    """Soft ``[S, S]`` float mask of the face region of an aligned crop, 1 inside, 0 at the border.

    An ellipse around the eyes, nose, mouth and chin; its edge falls off over ``feather * size``
    pixels and reaches zero before the crop's border, so nothing of the crop's corners is pasted.
    """
    sigma = max(feather * size, 0.5)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    centre_x, centre_y = (size - 1) / 2.0, 0.55 * size
    # Shrunk by 2 sigma so that the blurred edge has faded out at the crop's border.
    radius_x, radius_y = 0.5 * size - 2.0 * sigma, 0.45 * size - 2.0 * sigma
    inside = ((xs - centre_x) / max(radius_x, 1.0)) ** 2 + ((ys - centre_y) / max(radius_y, 1.0)) ** 2 <= 1.0
    return cv2.GaussianBlur(inside.astype(np.float32), (0, 0), sigma)


def paste_back(photo, edited_crop, transform, *, feather: float = 0.05, mask: np.ndarray | None = None,
               detail: str = "photo") -> np.ndarray:
    """Blend ``edited_crop`` back into ``photo`` through the inverse of ``transform``.

    photo: anything :func:`load_image` reads. edited_crop: ``uint8`` ``[S, S, 3]`` or a tensor
    ``[3, S, S]`` / ``[1, 3, S, S]`` in ``[-1, 1]``. transform: the ``[2, 3]`` photo-to-crop
    matrix, or the :class:`AlignedFace` itself (then an edited crop of another resolution than
    the aligned one is rescaled). feather: softness of the mask edge as a fraction of the crop.
    mask: optional ``[S, S]`` weights in ``[0, 1]`` (e.g. a model's attention mask), multiplied
    with the face ellipse. detail: ``"photo"`` keeps the photo's frequency bands finer than a
    crop pixel wherever the edit left the crop's structure unchanged (:func:`edit_change`), so an
    edit neither blurs the face nor leaves a ghost of what it moved; ``"crop"`` takes every band
    from the crop.

    Blending: Laplacian pyramid (Burt & Adelson 1983) with the mask's Gaussian pyramid as
    weights. Returns a new ``uint8`` ``[H, W, 3]`` photo.
    """
    if detail not in ("photo", "crop"):
        raise ValueError(f"detail must be 'photo' or 'crop', got {detail!r}")
    rgb = load_image(photo)
    crop = to_uint8(edited_crop) if isinstance(edited_crop, torch.Tensor) else load_image(edited_crop, min_side=1)
    size = crop.shape[0]
    if crop.shape[1] != size:
        raise ValueError(f"edited_crop must be square, got {crop.shape[1]}x{crop.shape[0]}")
    # The crop as it was before the edit, to see where the edit changed it.
    original = transform.crop if isinstance(transform, AlignedFace) else None
    if isinstance(transform, AlignedFace):
        # A crop at another resolution than the aligned one: scale crop coordinates (centres at integers).
        ratio = size / transform.size
        transform = np.array([[ratio, 0, (ratio - 1) / 2], [0, ratio, (ratio - 1) / 2]]) @ np.vstack(
            [transform.transform, [0, 0, 1]])
    transform = np.asarray(transform, dtype=np.float64)
    if transform.shape != (2, 3):
        raise ValueError(f"transform must be a [2, 3] matrix (photo -> crop), got shape {transform.shape}")
    weights = face_mask(size, feather=feather)
    if mask is not None:
        mask = np.asarray(mask, dtype=np.float32).squeeze()
        if mask.shape != (size, size):
            raise ValueError(f"mask must be [{size}, {size}] like the crop, got {mask.shape}")
        weights = weights * np.clip(mask, 0.0, 1.0)

    # Work only on the photo region the crop covers (plus a margin for the pyramid).
    height, width = rgb.shape[:2]
    inverse = cv2.invertAffineTransform(transform)
    corners = np.array([[0, 0, 1], [size - 1, 0, 1], [0, size - 1, 1], [size - 1, size - 1, 1]], float)
    photo_corners = corners @ inverse.T
    scale = math.hypot(transform[0, 0], transform[1, 0])  # crop pixels per photo pixel
    # Coarse pyramid levels spread the mask by ~2^level pixels: stop where that would reach past
    # the faded-out rim of the mask (2 sigma inside the crop), so the crop's footprint bounds the edit.
    rim = 2.0 * max(feather * size, 0.5) / scale  # photo pixels
    levels = max(1, min(6, int(math.log2(max(rim, 2.0)))))
    margin = 2 ** levels
    x0 = int(max(0, math.floor(photo_corners[:, 0].min()) - margin))
    y0 = int(max(0, math.floor(photo_corners[:, 1].min()) - margin))
    x1 = int(min(width, math.ceil(photo_corners[:, 0].max()) + margin + 1))
    y1 = int(min(height, math.ceil(photo_corners[:, 1].max()) + margin + 1))
    if x1 <= x0 or y1 <= y0:
        raise ValueError("the transform maps the crop entirely outside the photo; pass the transform "
                         "returned by align_face for this photo")
    shifted = transform.copy()
    shifted[:, 2] += transform[:, :2] @ np.array([x0, y0], float)  # ROI pixel -> crop pixel
    roi_size = (x1 - x0, y1 - y0)
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    region = rgb[y0:y1, x0:x1].astype(np.float32)
    # Outside the crop's footprint the "pasted" image is the photo itself, so nothing leaks from there.
    pasted = cv2.warpAffine(crop.astype(np.float32), shifted, roi_size, flags=flags,
                            borderMode=cv2.BORDER_TRANSPARENT, dst=region.copy())
    alpha = cv2.warpAffine(weights, shifted, roi_size, flags=flags, borderMode=cv2.BORDER_CONSTANT, borderValue=0)

    # Bands finer than one crop pixel (level l holds wavelengths ~2^(l+1) photo pixels) carry no crop
    # information: with detail="photo" they are taken from the photo, except where the edit changed
    # the crop's structure: there the photo's fine detail belongs to what was there before the edit.
    first_crop_level = 0 if detail == "crop" else max(0, math.ceil(math.log2(1.0 / scale)))
    fine_alpha = alpha
    if first_crop_level > 0:
        if original is None:
            original = warp_to_crop(rgb, transform, size)
        # Compared at the aligned crop's resolution: an edit output at a higher one (a model's
        # output upsampled, say) holds no more detail than that, and has not moved anything finer.
        side = original.shape[0]
        shrink = cv2.INTER_AREA if size > side else cv2.INTER_LINEAR
        change = edit_change(cv2.resize(crop, (side, side), interpolation=shrink) if side != size else crop, original)
        if side != size:
            change = cv2.resize(change, (size, size), interpolation=cv2.INTER_LINEAR)
        fine_alpha = alpha * cv2.warpAffine(change, shifted, roi_size, flags=flags,
                                            borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    blended = _laplacian_blend(region, pasted, alpha, fine_alpha, levels, first_crop_level)
    out = rgb.copy()
    out[y0:y1, x0:x1] = np.clip(np.round(blended), 0, 255).astype(np.uint8)
    return out


#: Grey levels of structural change (see :func:`edit_change`) below which a crop counts as unedited,
#: and above which the edit's own (smooth) fine bands replace the photo's.
CHANGE_LEVELS = (6.0, 16.0)


def edit_change(edited: np.ndarray, original: np.ndarray) -> np.ndarray:
    """Where an edit changed the structure of a crop: ``[S, S]`` float32 in ``[0, 1]``.

    edited, original: ``uint8`` ``[S, S, 3]``. A smooth change of tone or colour (the difference
    minus its blur, at 1/8 of the crop) does not count: the photo's fine detail is still right
    there. A moved feature does, and the map is spread over the feature's neighbourhood (a max
    filter and a blur of the same width), because the fine detail it leaves behind sits around
    its old edges. 0 up to ``CHANGE_LEVELS[0]`` grey levels, 1 from ``CHANGE_LEVELS[1]``.
    """
    if edited.shape != original.shape:
        raise ValueError(f"edited crop {edited.shape} and original crop {original.shape} must have one shape")
    size = edited.shape[0]
    sigma = max(size / 32, 1.0)
    difference = edited.astype(np.float32) - original.astype(np.float32)
    # What changes over an eighth of the crop is a feature; slower changes are tone and colour.
    structure = np.abs(difference - cv2.GaussianBlur(difference, (0, 0), size / 8)).max(axis=2)
    width = 2 * math.ceil(sigma) + 1
    spread = cv2.GaussianBlur(cv2.dilate(structure, np.ones((width, width), np.uint8)), (0, 0), sigma)
    low, high = CHANGE_LEVELS
    return np.clip((spread - low) / (high - low), 0.0, 1.0).astype(np.float32)


def _laplacian_blend(base: np.ndarray, top: np.ndarray, alpha: np.ndarray, fine_alpha: np.ndarray,
                     levels: int, first_fine_level: int) -> np.ndarray:
    """Burt-Adelson blend: band l = G_l(a) * L_l(top) + (1 - G_l(a)) * L_l(base).

    The weights ``a`` are ``fine_alpha`` for the bands below ``first_fine_level``, ``alpha`` above.
    """
    def gaussian(image):
        pyramid = [image]
        for _ in range(levels):
            pyramid.append(cv2.pyrDown(pyramid[-1]))
        return pyramid

    def laplacian(image):
        pyramid = gaussian(image)
        bands = [pyramid[i] - cv2.pyrUp(pyramid[i + 1], dstsize=pyramid[i].shape[1::-1]) for i in range(levels)]
        return bands + [pyramid[-1]]

    weights, fine_weights = gaussian(alpha), gaussian(fine_alpha)
    result = None
    for level, (band_base, band_top) in reversed(list(enumerate(zip(laplacian(base), laplacian(top))))):
        w = (fine_weights if level < first_fine_level else weights)[level][..., None]
        band = w * band_top + (1 - w) * band_base
        result = band if result is None else band + cv2.pyrUp(result, dstsize=band.shape[1::-1])
    return result
