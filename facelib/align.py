"""Face alignment for users' own photos: detect, align by the eyes, crop, and paste an edit back.

The models in facelib learn on SynthFaces crops, where the eyes sit at fixed places. A photo
must be brought into the same framing before a model can edit it, and the edit must then go
back into the photo without a visible seam. Three steps:

1. :func:`detect_face` finds the face and both eyes with OpenCV's bundled Haar cascades
   (``haarcascade_frontalface_default``, then ``haarcascade_eye`` and
   ``haarcascade_eye_tree_eyeglasses`` inside the face). No weights are downloaded.
2. :func:`align_face` computes the similarity transform (rotation, uniform scale, shift) that
   puts the eye line level, at :data:`EYE_HEIGHT` of the crop height, with the eyes
   :data:`EYE_DISTANCE` of the crop width apart, centred. It returns the crop *and* the
   transform, a 2x3 matrix mapping photo pixel coordinates to crop pixel coordinates.
3. :func:`paste_back` maps an edited crop back through the inverse transform and blends it
   with a feathered mask and a Laplacian-pyramid blend (Burt & Adelson 1983): each frequency
   band is blended with a mask blurred to that band's scale, so there is no seam at any scale.
   By default the bands finer than the crop's pixels come from the photo (``detail="photo"``):
   a 64-pixel crop cannot hold the photo's skin and hair texture, so the edit changes the face
   without blurring it.

Pixel coordinates follow facelib's convention: pixel centres at integers, ``(x, y)``.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from functools import lru_cache

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
#: Where the eyes sit inside a Haar face box (fractions of the box), used when they are not found.
#: Measured on the test photos (astronaut, grace_hopper, LFW faces): x 0.27-0.33 / 0.67-0.75, y 0.36-0.40.
BOX_EYES = ((0.30, 0.38), (0.70, 0.38))

# Face search runs on a copy whose longer side is at most this (Haar cost grows with area).
_DETECT_MAX_SIDE = 640
# Eyes are searched in the face box rescaled to this width (small faces get upsampled).
_EYE_ROI_WIDTH = 200


class NoFaceError(ValueError):
    """No face was found in the image."""


@dataclass(frozen=True)
class FaceDetection:
    """A detected face. Unpacks as ``box, eyes = detect_face(photo)``.

    box: ``(x, y, w, h)`` in photo pixels. eyes: ``[2, 2]`` float array of eye centres
    ``(x, y)``, the eye on the image's left first. eyes_detected: False when the eye cascades
    failed and the eyes were estimated from the face box (:data:`BOX_EYES`).
    """

    box: tuple[int, int, int, int]
    eyes: np.ndarray
    eyes_detected: bool

    def __iter__(self):
        return iter((self.box, self.eyes))


@dataclass(frozen=True)
class AlignedFace:
    """An aligned crop and the transform that made it.

    crop: ``uint8`` ``[S, S, 3]`` RGB. transform: ``[2, 3]`` similarity matrix, photo pixel
    ``(x, y, 1)`` -> crop pixel ``(x, y)``. eyes: ``[2, 2]`` eye centres in the photo.
    """

    crop: np.ndarray
    transform: np.ndarray
    eyes: np.ndarray
    box: tuple[int, int, int, int]
    eyes_detected: bool

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


@lru_cache(maxsize=None)
def _cascade(name: str) -> cv2.CascadeClassifier:
    classifier = cv2.CascadeClassifier(cv2.data.haarcascades + name)
    if classifier.empty():
        raise RuntimeError(f"OpenCV could not load its bundled cascade {name}; reinstall opencv-python-headless")
    return classifier


def _gray(rgb: np.ndarray) -> np.ndarray:
    return cv2.equalizeHist(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))


def detect_face(image, *, min_face: int = 24) -> FaceDetection:
    """Find the largest face in ``image`` and its two eyes.

    ``image`` is anything :func:`facelib.data.load_image` reads. ``min_face`` is the smallest
    face side searched, in pixels of the (at most 640-pixel) search copy. Several faces: the
    largest is returned with a ``UserWarning``. No face: :class:`NoFaceError`. Eyes not found:
    estimated from the face box, with a ``UserWarning`` (``eyes_detected=False``).
    """
    rgb = load_image(image)
    height, width = rgb.shape[:2]
    shrink = min(1.0, _DETECT_MAX_SIDE / max(height, width))
    search = rgb if shrink == 1.0 else cv2.resize(rgb, (round(width * shrink), round(height * shrink)),
                                                  interpolation=cv2.INTER_AREA)
    faces = _cascade("haarcascade_frontalface_default.xml").detectMultiScale(
        _gray(search), scaleFactor=1.1, minNeighbors=5, minSize=(min_face, min_face))
    if len(faces) == 0:
        raise NoFaceError(
            f"no face found in the {width}x{height} image; the detector needs a roughly frontal, "
            f"upright face at least {math.ceil(min_face / shrink)} pixels wide"
        )
    faces = sorted((tuple(int(round(v / shrink)) for v in face) for face in faces),
                   key=lambda b: b[2] * b[3], reverse=True)
    if len(faces) > 1:
        warnings.warn(f"found {len(faces)} faces; using the largest, box (x, y, w, h) = {faces[0]}",
                      stacklevel=2)
    box = faces[0]
    eyes = detect_eyes(rgb, box)
    if eyes is None:
        warnings.warn("eyes not found by the Haar cascades; estimating them from the face box "
                      "(alignment may be rotated a little)", stacklevel=2)
        x, y, w, h = box
        eyes = np.array([[x + fx * w, y + fy * h] for fx, fy in BOX_EYES])
        return FaceDetection(box, eyes, False)
    return FaceDetection(box, eyes, True)


def detect_eyes(image, box: tuple[int, int, int, int]) -> np.ndarray | None:
    """The two eye centres ``[2, 2]`` (image's left eye first) inside face ``box`` ``(x, y, w, h)``, or None.

    Both eye cascades run on the face box, raw and histogram-equalised (equalising helps in
    shadow but hides eyes behind glasses); detections that agree are merged into votes, the
    best-placed pair wins, and each centre is refined to the iris. One eye only: mirrored.
    """
    rgb = load_image(image, min_side=1)
    x, y, w, h = (int(v) for v in box)
    roi = rgb[max(y, 0):y + h, max(x, 0):x + w]
    zoom = _EYE_ROI_WIDTH / roi.shape[1]
    roi = cv2.resize(roi, (_EYE_ROI_WIDTH, round(roi.shape[0] * zoom)),
                     interpolation=cv2.INTER_AREA if zoom < 1 else cv2.INTER_CUBIC)
    raw = cv2.cvtColor(roi, cv2.COLOR_RGB2GRAY)
    clusters: list[list[float]] = []  # [sum cx, sum cy, sum side, votes], fractions of the face box
    for gray in (raw, cv2.equalizeHist(raw)):
        for name in ("haarcascade_eye.xml", "haarcascade_eye_tree_eyeglasses.xml"):
            found = _cascade(name).detectMultiScale(gray, scaleFactor=1.1, minNeighbors=3, minSize=(12, 12))
            for ex, ey, ew, eh in found:
                cx, cy, side = (ex + ew / 2) / _EYE_ROI_WIDTH, (ey + eh / 2) / _EYE_ROI_WIDTH * w / h, ew / _EYE_ROI_WIDTH
                if not (0.2 < cy < 0.55 and 0.07 < side < 0.4):  # eyes live in the upper middle band
                    continue
                for cluster in clusters:
                    votes = cluster[3]
                    if math.hypot(cluster[0] / votes - cx, cluster[1] / votes - cy) < 0.06:
                        cluster[:] = [cluster[0] + cx, cluster[1] + cy, cluster[2] + side, votes + 1]
                        break
                else:
                    clusters.append([cx, cy, side, 1])
    eyes = [(c[0] / c[3], c[1] / c[3], c[2] / c[3], c[3]) for c in clusters]  # (cx, cy, side, votes)
    # A Haar box centre is only good to a few percent of the box; the dark iris pins the centre down.
    eyes = [_iris_centre(raw, e, w / h) for e in eyes]
    best, best_cost = None, math.inf
    for a in (e for e in eyes if e[0] < 0.5):
        for b in (e for e in eyes if e[0] >= 0.5):
            separation = b[0] - a[0]
            if not 0.25 < separation < 0.65:
                continue
            # Level, typically spaced, similarly sized, at the usual height, confirmed by several detections.
            cost = (abs(b[1] - a[1]) + 0.5 * abs(separation - 0.40) + abs(b[2] - a[2])
                    + 0.5 * abs((a[1] + b[1]) / 2 - BOX_EYES[0][1]) - 0.03 * (a[3] + b[3]))
            if cost < best_cost:
                best, best_cost = (a, b), cost
    if best is None:
        if not eyes:
            return None
        # One eye found: mirror it across the box's vertical centre line.
        single = max(eyes, key=lambda e: e[3] - abs(abs(e[0] - 0.5) - 0.2) - abs(e[1] - BOX_EYES[0][1]))
        mirrored = (1.0 - single[0], single[1], single[2], 0)
        best = (single, mirrored) if single[0] < 0.5 else (mirrored, single)
    return np.array([[x + e[0] * w - 0.5, y + e[1] * h - 0.5] for e in best])


def _iris_centre(gray: np.ndarray, eye: tuple, aspect: float) -> tuple:
    """Move an eye candidate ``(cx, cy, side, votes)`` to the centroid of the darkest pixels near its centre."""
    width = gray.shape[1]
    cx, cy, side = eye[0] * width, eye[1] * width / aspect, eye[2] * width  # ROI pixels
    half_w, half_h = 0.3 * side, 0.2 * side
    x0, x1 = int(max(0, cx - half_w)), int(min(gray.shape[1], cx + half_w + 1))
    y0, y1 = int(max(0, cy - half_h)), int(min(gray.shape[0], cy + half_h + 1))
    patch = cv2.GaussianBlur(gray[y0:y1, x0:x1].astype(np.float32), (0, 0), max(side / 20, 0.8))
    if patch.size < 9:
        return eye
    darkness = np.clip(np.percentile(patch, 15) - patch, 0, None)  # only the darkest 15% weigh
    total = darkness.sum()
    if total <= 0:
        return eye
    ys, xs = np.mgrid[y0:y1, x0:x1]
    # + 0.5: back from pixel centres to the box-edge coordinates the candidates use.
    new_x, new_y = (darkness * xs).sum() / total + 0.5, (darkness * ys).sum() / total + 0.5
    return (new_x / width, new_y / width * aspect, eye[2], eye[3])


def eye_transform(eyes: np.ndarray, size: int, *, eye_height: float = EYE_HEIGHT,
                  eye_distance: float = EYE_DISTANCE) -> np.ndarray:
    """The ``[2, 3]`` similarity taking ``eyes`` (``[2, 2]``, photo) to their canonical places in a crop."""
    eyes = np.asarray(eyes, dtype=np.float64)
    if eyes.shape != (2, 2):
        raise ValueError(f"eyes must be a [2, 2] array of (x, y) eye centres, got shape {eyes.shape}")
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
    (SynthFaces' framing by default). Pass ``detection`` to reuse a :func:`detect_face` result.
    Raises :class:`NoFaceError` when there is no face.
    """
    if not isinstance(size, int) or size < 16:
        raise ValueError(f"size must be an integer >= 16 (e.g. 64 or 128), got {size!r}")
    rgb = load_image(image)
    if detection is None:
        detection = detect_face(rgb)
    transform = eye_transform(detection.eyes, size, eye_height=eye_height, eye_distance=eye_distance)
    crop = warp_to_crop(rgb, transform, size)
    return AlignedFace(crop, transform, detection.eyes.copy(), detection.box, detection.eyes_detected)


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
    crop pixel (an edit never blurs the face); ``"crop"`` takes every band from the crop.

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
    # information: with detail="photo" they are taken from the photo.
    first_crop_level = 0 if detail == "crop" else max(0, math.ceil(math.log2(1.0 / scale)))
    blended = _laplacian_blend(region, pasted, alpha, levels, first_crop_level)
    out = rgb.copy()
    out[y0:y1, x0:x1] = np.clip(np.round(blended), 0, 255).astype(np.uint8)
    return out


def _laplacian_blend(base: np.ndarray, top: np.ndarray, alpha: np.ndarray, levels: int,
                     first_top_level: int) -> np.ndarray:
    """Burt-Adelson blend: band l = G_l(alpha) * L_l(top) + (1 - G_l(alpha)) * L_l(base).

    Bands below ``first_top_level`` are taken from ``base`` alone.
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

    weights = gaussian(alpha)
    result = None
    for level, (band_base, band_top) in reversed(list(enumerate(zip(laplacian(base), laplacian(top))))):
        w = weights[level][..., None]
        band = band_base if level < first_top_level else w * band_top + (1 - w) * band_base
        result = band if result is None else band + cv2.pyrUp(result, dstsize=band.shape[1::-1])
    return result
