"""Face alignment and paste-back on real photos that ship inside installed wheels."""
from __future__ import annotations

import math
import warnings

import cv2
import numpy as np
import pytest
import skimage.data
import skimage.util
from matplotlib import cbook

from facelib.align import (BOX_EYES, EYE_DISTANCE, EYE_HEIGHT, AlignedFace, NoFaceError, align_face,
                           detect_eyes, detect_face, paste_back)
from facelib.data.io import load_image


def _lfw_face(index: int) -> np.ndarray:
    """scikit-image's LFW faces are 25x25 grayscale: upsample to 200x200 for the cascades."""
    face = skimage.util.img_as_ubyte(skimage.data.lfw_subset()[index])
    return load_image(cv2.resize(face, (200, 200), interpolation=cv2.INTER_CUBIC))


PHOTOS = {
    "astronaut": skimage.data.astronaut,
    "grace_hopper": lambda: load_image(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)),
    # Three fixed LFW faces; how often the cascades succeed on LFW is measured below.
    "lfw_0": lambda: _lfw_face(0),
    "lfw_1": lambda: _lfw_face(1),
    "lfw_5": lambda: _lfw_face(5),
}


@pytest.fixture(scope="module")
def aligned():
    """Each photo with its 128-pixel alignment (detection is the slow part: do it once)."""
    out = {}
    for name, load in PHOTOS.items():
        photo = load()
        out[name] = (photo, align_face(photo, 128))
    return out


def _redetect_eyes(crop: np.ndarray):
    """Find the eyes again in an aligned crop, searching the face box where they should be."""
    size = crop.shape[0]
    width = EYE_DISTANCE * size / (BOX_EYES[1][0] - BOX_EYES[0][0])
    box = ((size - width) / 2, EYE_HEIGHT * size - BOX_EYES[0][1] * width, width, width)
    return detect_eyes(crop, tuple(round(v) for v in box))


def _eye_angle(eyes: np.ndarray) -> float:
    (x0, y0), (x1, y1) = eyes
    return math.degrees(math.atan2(y1 - y0, x1 - x0))


@pytest.mark.parametrize("name", list(PHOTOS))
def test_face_found_and_eyes_level_after_alignment(aligned, name):
    photo, face = aligned[name]
    assert face.eyes_detected, "both eyes should be found by the cascades on these photos"
    x, y, w, h = face.box
    assert w > 40 and 0 <= x and x + w <= photo.shape[1] and y + h <= photo.shape[0]
    # The detected eyes land on the canonical places of the crop.
    eyes_in_crop = np.c_[face.eyes, np.ones(2)] @ face.transform.T
    np.testing.assert_allclose(sorted(eyes_in_crop.tolist()),
                               [[127 / 2 - EYE_DISTANCE * 64, EYE_HEIGHT * 128 - 0.5],
                                [127 / 2 + EYE_DISTANCE * 64, EYE_HEIGHT * 128 - 0.5]], atol=1e-6)
    # Independent check: find the eyes again in the aligned crop; the eye line must be level.
    again = _redetect_eyes(face.crop)
    assert again is not None
    assert abs(_eye_angle(again)) < 3.0, f"eye line tilted by {_eye_angle(again):.2f} degrees after alignment"
    # ... and near where alignment put them (within 5% of the crop).
    assert np.abs(again - sorted(eyes_in_crop.tolist())).max() < 0.05 * 128


@pytest.mark.slow
def test_lfw_detection_rate_and_eye_angles():
    """On 25-pixel LFW faces (upsampled) the Haar cascades are at their limit: measure how often they work."""
    angles = []
    for index in range(12):
        photo = _lfw_face(index)
        try:
            face = align_face(photo, 128)
        except NoFaceError:
            continue
        again = _redetect_eyes(face.crop)
        angles.append(abs(_eye_angle(again)) if again is not None else math.inf)
    assert len(angles) >= 8, f"faces found in only {len(angles)} of 12 LFW images (measured: 10)"
    assert np.median(angles) < 1.0 and np.mean(np.array(angles) < 3.0) >= 0.8, np.round(angles, 2)


@pytest.mark.slow
def test_alignment_undoes_a_known_rotation(aligned):
    """Rotate the photo by a known angle: alignment must rotate back by it (Haar eyes fail now and then)."""
    errors = []
    for name in ("astronaut", "grace_hopper"):
        photo, face = aligned[name]
        height, width = photo.shape[:2]
        for degrees in (-10, -5, 5, 10):
            rotation = cv2.getRotationMatrix2D(((width - 1) / 2, (height - 1) / 2), degrees, 1.0)
            rotated = cv2.warpAffine(photo, rotation, (width, height), borderMode=cv2.BORDER_REFLECT)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # eyes estimated from the box: still measured
                    again = align_face(rotated, 128)
            except NoFaceError:
                errors.append(math.inf)
                continue
            # OpenCV's angle is counter-clockwise on screen; alignment must turn back by as much.
            errors.append(again.rotation_degrees - face.rotation_degrees - degrees)
    within = np.abs(errors) < 3.0
    assert within.sum() >= 6, (f"rotation recovered within 3 degrees in {within.sum()} of 8 cases (measured: 7); "
                               f"errors {np.round(errors, 1)}")


@pytest.mark.parametrize("name", ["astronaut", "grace_hopper", "lfw_0"])
def test_paste_back_of_unedited_crop_leaves_photo_unchanged(aligned, name):
    photo, _ = aligned[name]
    face = align_face(photo, 64)
    restored = paste_back(photo, face.crop, face)
    assert restored.shape == photo.shape and restored.dtype == np.uint8
    difference = np.abs(restored.astype(float) - photo).mean()
    assert difference < 2.0, f"mean change {difference:.2f} grey levels"
    # Taking every band from the 64-pixel crop (detail="crop") blurs the face: worse, as documented.
    blurred = np.abs(paste_back(photo, face.crop, face, detail="crop").astype(float) - photo).mean()
    assert blurred > difference
    # A tensor crop (a model's output) and a crop at another resolution go back the same way.
    np.testing.assert_array_equal(paste_back(photo, face.tensor(), face), paste_back(photo, face.crop, face))
    larger = cv2.resize(face.crop, (128, 128), interpolation=cv2.INTER_CUBIC)
    assert np.abs(paste_back(photo, larger, face).astype(float) - photo).mean() < 2.0


def test_paste_back_applies_the_edit_seamlessly(aligned):
    photo, _ = aligned["astronaut"]
    face = align_face(photo, 64)
    brighter = np.clip(face.crop.astype(int) + 40, 0, 255).astype(np.uint8)
    result = paste_back(photo, brighter, face)
    change = result.astype(float).mean(axis=2) - photo.astype(float).mean(axis=2)
    centre = np.array([(face.eyes[0] + face.eyes[1]) / 2 + [0, 20]]).round().astype(int)[0]  # between eyes and mouth
    assert change[centre[1], centre[0]] > 25, "the edit did not reach the face"
    # Outside the crop's footprint nothing moves (beyond the mask's Gaussian tail at its very edge).
    corners = np.array([[0, 0, 1], [63, 0, 1], [0, 63, 1], [63, 63, 1]]) @ cv2.invertAffineTransform(face.transform).T
    left, right = int(corners[:, 0].min()) - 1, int(corners[:, 0].max()) + 2
    top, bottom = int(corners[:, 1].min()) - 1, int(corners[:, 1].max()) + 2
    outside = np.ones_like(change, bool)
    outside[max(top, 0):bottom, max(left, 0):right] = False
    grey_levels = np.abs(result.astype(int) - photo.astype(int)).max(axis=2)[outside]
    assert grey_levels.max() <= 2 and grey_levels.mean() < 0.01
    # No seam: a flat grey crop pasted on a flat photo ramps up smoothly instead of jumping by 40.
    flat = paste_back(np.full_like(photo, 100), np.full((64, 64, 3), 140, np.uint8), face)[..., 0].astype(float)
    assert flat.max() == 140 and flat.min() == 100
    assert np.abs(np.diff(flat, axis=0)).max() <= 6 and np.abs(np.diff(flat, axis=1)).max() <= 6


def test_no_face_raises():
    with pytest.raises(NoFaceError, match="no face found"):
        detect_face(skimage.data.coffee())
    with pytest.raises(NoFaceError):
        align_face(np.full((200, 200, 3), 128, np.uint8))
    assert issubclass(NoFaceError, ValueError)


def test_several_faces_gives_largest_with_warning(aligned):
    big, _ = aligned["grace_hopper"]  # 512 x 600, face about 230 pixels wide
    small = cv2.resize(aligned["astronaut"][0], (256, 256), interpolation=cv2.INTER_AREA)  # face ~46 pixels
    canvas = np.full((600, 512 + 256, 3), 255, np.uint8)
    canvas[:, :512] = big
    canvas[100:356, 512:] = small
    with pytest.warns(UserWarning, match=r"found [2-9] faces; using the largest"):
        box, eyes = detect_face(canvas)
    x, y, w, h = box
    assert x + w <= 512 and w > 150  # Grace Hopper's face, not the astronaut's


def test_eye_fallback_from_box_warns(monkeypatch):
    import facelib.align

    monkeypatch.setattr(facelib.align, "detect_eyes", lambda image, box: None)  # the eye cascades fail
    with pytest.warns(UserWarning, match="estimating them from the face box"):
        result = detect_face(skimage.data.astronaut())
    x, y, w, h = result.box
    assert not result.eyes_detected and abs(_eye_angle(result.eyes)) < 1e-9
    np.testing.assert_allclose(result.eyes, [[x + 0.3 * w, y + 0.38 * h], [x + 0.7 * w, y + 0.38 * h]])


def test_bad_arguments():
    photo = skimage.data.astronaut()
    face = align_face(photo, 64)
    assert isinstance(face, AlignedFace) and face.crop.shape == (64, 64, 3)
    with pytest.raises(ValueError, match="size must be an integer >= 16"):
        align_face(photo, 8)
    with pytest.raises(ValueError, match="square"):
        paste_back(photo, face.crop[:, :60], face.transform)
    with pytest.raises(ValueError, match=r"\[2, 3\]"):
        paste_back(photo, face.crop, np.eye(3))
    with pytest.raises(ValueError, match="detail"):
        paste_back(photo, face.crop, face, detail="sharp")
