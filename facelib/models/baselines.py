"""The non-learned comparisons of FVAE's Sec. 6 (Yeh et al. 2016).

Expression editing (Sec. 6.1, Table 1):

- :class:`AverageFlow` - "the average flow extracted from all identities in the training set"
  for a (source expression, target expression) pair, applied to any source. The paper extracted
  it with optical flow; SynthFaces knows the true flow, so we average that (a kinder baseline).
- :func:`optical_flow` - classical optical flow between S and the true target T, here OpenCV's
  DIS (Kroeger et al. 2016) or Farneback, standing in for Table 1's EpicFlow row (not EpicFlow).

Interpolation between two photos (Sec. 6.2, Fig. 6):

- :func:`cross_fade` - pixel-wise blending.
- :func:`mesh_morph` - classical landmark mesh morphing (Wolberg 1996, the paper's [26]):
  Delaunay triangles over the landmarks, piecewise-affine warps of both images to the
  in-between shape, then a cross-dissolve.
- :func:`optical_flow_morph` - morphing along optical flow between the two photos
  (in the spirit of the paper's [15]).

Images are ``[B, 3, H, W]`` in ``[-1, 1]``; flows are backward pixel flows (:mod:`facelib.conventions`).
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
from scipy.spatial import Delaunay
from torch import nn

from facelib.conventions import EXPRESSIONS, check_image_shape, check_images
from facelib.editors import Editor, EditResult, Target
from facelib.warp import warp

__all__ = ["AverageFlow", "AverageFlowConfig", "AverageFlowEditor", "load_average_flow_editor", "optical_flow", "cross_fade", "mesh_morph", "optical_flow_morph",
           "OpticalFlowEditor", "load_optical_flow_editor"]


def _check_same(a: torch.Tensor, b: torch.Tensor, names: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{names} must have the same shape, got {list(a.shape)} and {list(b.shape)}")


def _expression_name(expression) -> str:
    name = EXPRESSIONS[int(expression)] if not isinstance(expression, str) else expression
    if name not in EXPRESSIONS:
        raise ValueError(f"unknown expression {name!r}; valid expressions are {list(EXPRESSIONS)}")
    return name


@dataclass
class AverageFlowConfig:
    """The expression pairs an :class:`AverageFlow` holds, as ``"source->target"`` names, and its size."""

    image_size: int = 64
    pairs: tuple[str, ...] = ()


class AverageFlow(nn.Module):
    """Sec. 6.1's optical-flow editing baseline: one average flow per expression pair.

    ``AverageFlow.fit(dataset)`` averages the ground-truth flows of a ``SynthFaces(...,
    pairs=True)`` training split (items with ``flow``, ``source_emotion``, ``target_emotion`` and
    optionally ``visible``); ``average(source, "neutral", "disgusted")`` warps ``source`` by the
    average neutral -> disgusted flow. The flow is not tailored to the source face: that is the
    point. The flows are a buffer, so the fitted baseline saves and ships like a model
    (``python -m facelib train average_flow``).
    """

    config_class = AverageFlowConfig

    def __init__(self, config: AverageFlowConfig | None = None):
        super().__init__()
        self.config = config if config is not None else AverageFlowConfig()
        size = self.config.image_size
        self.register_buffer("flows", torch.zeros(len(self.config.pairs), 2, size, size))  # [P, 2, H, W]

    @classmethod
    @torch.no_grad()
    def fit(cls, dataset, *, max_pairs: int = 4000, batch_size: int = 128) -> "AverageFlow":
        """Average the true flows per expression pair, each pixel over the pairs where it is ``visible``
        (elsewhere the true flow is undefined); pixels never visible get zero flow."""
        sums: dict[str, torch.Tensor] = {}
        weights: dict[str, torch.Tensor] = {}
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
        seen = 0
        for batch in loader:
            visible = batch["visible"] if "visible" in batch else torch.ones_like(batch["flow"][:, :1])
            for flow, mask, src, tgt in zip(batch["flow"], visible, batch["source_emotion"], batch["target_emotion"]):
                key = f"{EXPRESSIONS[int(src)]}->{EXPRESSIONS[int(tgt)]}"
                sums[key] = sums.get(key, 0) + torch.where(mask > 0, flow, 0.0)
                weights[key] = weights.get(key, 0) + mask
            seen += len(batch["flow"])
            if seen >= max_pairs:
                break
        if not sums:
            raise ValueError("AverageFlow.fit found no pairs: is the dataset empty?")
        pairs = tuple(sorted(sums))
        fitted = cls(AverageFlowConfig(image_size=int(sums[pairs[0]].shape[-1]), pairs=pairs))
        fitted.flows.copy_(torch.stack([sums[key] / weights[key].clamp_min(1) for key in pairs]))
        return fitted

    def flow(self, source_expression, target_expression) -> torch.Tensor:
        """The average backward flow ``[2, H, W]`` from one expression to another."""
        key = f"{_expression_name(source_expression)}->{_expression_name(target_expression)}"
        if key not in self.config.pairs:
            raise ValueError(f"no average flow for {key}; fitted pairs are {list(self.config.pairs)}")
        return self.flows[self.config.pairs.index(key)]

    def forward(self, source: torch.Tensor, source_expression, target_expression) -> torch.Tensor:
        """Warp ``source`` ``[B, 3, H, W]`` by the average flow; returns ``[B, 3, H, W]``."""
        source = check_image_shape(source, "source", size=self.config.image_size)
        flow = self.flow(source_expression, target_expression).to(source)
        return warp(source, flow.expand(len(source), -1, -1, -1))


class AverageFlowEditor(Editor):
    """The average-flow baseline as an editor: warp the source by the training average flow of its
    (source, target) expression pair, scaled by the intensity. An unknown source expression is
    taken to be neutral (a user's photo)."""

    name = "average_flow"
    paper = "FVAE (Yeh et al. 2016), Sec. 6.1 average-flow baseline"
    accepts = ("expression",)
    intensity_range = (0.0, 2.0)

    def __init__(self, average: AverageFlow):
        self.average = average.eval()
        self.image_size = average.config.image_size
        self.expressions = tuple(name for name in EXPRESSIONS
                                 if any(pair.endswith(f"->{name}") for pair in average.config.pairs))

    def modules(self) -> dict[str, nn.Module]:
        return {"average": self.average}

    def check_target(self, target: Target, batch: int) -> Target:
        target = super().check_target(target, batch)
        sources = target.source_expressions(batch) or ["neutral"] * batch
        for source, name in zip(sources, target.expressions(batch)):
            if source != name and f"{source}->{name}" not in self.average.config.pairs:
                raise ValueError(f"average_flow has no flow for {source} -> {name}; it has {list(self.average.config.pairs)}")
        return target

    def _edit(self, images: torch.Tensor, target: Target) -> EditResult:
        batch = len(images)
        sources = target.source_expressions(batch) or ["neutral"] * batch
        flows = torch.stack([torch.zeros_like(self.average.flows[0]) if source == name else self.average.flow(source, name)
                             for source, name in zip(sources, target.expressions(batch))])  # [B, 2, H, W]
        flows = flows * target.intensities(batch).to(flows).view(-1, 1, 1, 1)
        return EditResult(output=warp(images, flows), flow=flows)


def load_average_flow_editor(device="cpu") -> AverageFlowEditor:
    """``facelib.load_editor("average_flow")``: the shipped average flows of the multipie training pairs."""
    from facelib.pretrained import load_pretrained

    return AverageFlowEditor(load_pretrained("average_flow", device=device))


def _to_gray_uint8(images: torch.Tensor) -> np.ndarray:
    """[B, 3, H, W] in [-1, 1] -> [B, H, W] uint8 luminance (BT.601)."""
    rgb = ((images.detach().cpu().float().clamp(-1, 1) + 1) * 127.5).numpy()
    gray = 0.299 * rgb[:, 0] + 0.587 * rgb[:, 1] + 0.114 * rgb[:, 2]
    return np.ascontiguousarray(np.round(gray).astype(np.uint8))


def optical_flow(source: torch.Tensor, target: torch.Tensor, method: str = "dis", upscale: int | None = None) -> torch.Tensor:
    """Classical optical flow such that ``target ~= warp(source, flow)``: ``[B, 2, H, W]`` pixels.

    ``method``: ``"dis"`` (OpenCV DIS, medium preset) or ``"farneback"``. Both estimate the flow
    of the first image into the second, so we pass (target, source) to get the backward flow.
    ``upscale`` enlarges the images before estimation and scales the flow back; the default
    (DIS 2x, Farneback 1x) was the most accurate on a known sub-pixel shift of a 64x64 image.
    """
    check_images(source, "source")
    check_images(target, "target")
    _check_same(source, target, "source and target")
    if method not in ("dis", "farneback"):
        raise ValueError(f"unknown optical flow method {method!r}; use 'dis' or 'farneback'")
    upscale = {"dis": 2, "farneback": 1}[method] if upscale is None else upscale
    height, width = source.shape[-2:]
    src_gray, tgt_gray = _to_gray_uint8(source), _to_gray_uint8(target)
    if method == "dis":
        estimator = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    flows = []
    for tgt, src in zip(tgt_gray, src_gray):
        big = (width * upscale, height * upscale)
        tgt_big = cv2.resize(tgt, big, interpolation=cv2.INTER_CUBIC)
        src_big = cv2.resize(src, big, interpolation=cv2.INTER_CUBIC)
        if method == "dis":
            flow = estimator.calc(tgt_big, src_big, None)
        else:
            flow = cv2.calcOpticalFlowFarneback(tgt_big, src_big, None, 0.5, 4, 15, 5, 5, 1.1, 0)
        flow = cv2.resize(flow, (width, height), interpolation=cv2.INTER_AREA) / upscale  # [H, W, 2]
        flows.append(torch.from_numpy(np.ascontiguousarray(flow)).permute(2, 0, 1))
    return torch.stack(flows).to(source)  # [B, 2, H, W]


def cross_fade(image1: torch.Tensor, image2: torch.Tensor, t: float) -> torch.Tensor:
    """Pixel-wise blend ``(1 - t) * image1 + t * image2``."""
    check_images(image1, "image1")
    check_images(image2, "image2")
    _check_same(image1, image2, "image1 and image2")
    return (1 - t) * image1 + t * image2


def _piecewise_affine_flows(shape_points: np.ndarray, image_points: np.ndarray, height: int, width: int) -> np.ndarray:
    """Backward flow [2, H, W] taking each pixel of the in-between shape to the image it comes from.

    ``shape_points``/``image_points``: [K, 2] (x, y), corresponding vertices in the in-between
    shape and in the image. Every pixel is located in a Delaunay triangle of ``shape_points``
    and mapped with that triangle's barycentric coordinates.
    """
    triangulation = Delaunay(shape_points)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    pixels = np.stack([xs.ravel(), ys.ravel()], axis=1)  # [HW, 2]
    simplex = triangulation.find_simplex(pixels)
    simplex = np.where(simplex < 0, 0, simplex)  # corners are vertices: only rounding can miss
    transform = triangulation.transform[simplex]  # [HW, 3, 2]
    partial = np.einsum("nij,nj->ni", transform[:, :2], pixels - transform[:, 2])  # [HW, 2]
    barycentric = np.concatenate([partial, 1 - partial.sum(1, keepdims=True)], axis=1)  # [HW, 3]
    corners = image_points[triangulation.simplices[simplex]]  # [HW, 3, 2]
    sampled = np.einsum("nk,nkd->nd", barycentric, corners)  # [HW, 2]
    return (sampled - pixels).T.reshape(2, height, width)


def _frame_points(height: int, width: int) -> np.ndarray:
    """Fixed vertices on the image border (corners and edge midpoints) so the mesh covers the image."""
    xs, ys = [0, (width - 1) / 2, width - 1], [0, (height - 1) / 2, height - 1]
    return np.array([(x, y) for x in xs for y in ys if x in (0, width - 1) or y in (0, height - 1)], dtype=np.float64)


def mesh_morph(
    image1: torch.Tensor, image2: torch.Tensor, landmarks1: torch.Tensor, landmarks2: torch.Tensor, t: float
) -> torch.Tensor:
    """Classical mesh morphing (the paper's [26]) at fraction ``t`` from image1 (0) to image2 (1).

    ``landmarks1/2``: ``[B, K, 2]`` pixel coordinates (x, y) of corresponding points (SynthFaces
    returns them). The landmarks move linearly to ``(1 - t) L1 + t L2``; both images are warped
    piecewise-affinely onto that shape and cross-dissolved. Returns ``[B, 3, H, W]``.
    """
    check_images(image1, "image1")
    check_images(image2, "image2")
    _check_same(image1, image2, "image1 and image2")
    if landmarks1.shape != landmarks2.shape or landmarks1.dim() != 3 or landmarks1.shape[-1] != 2:
        raise ValueError(
            f"landmarks1 and landmarks2 must both be [B, K, 2], got {list(landmarks1.shape)} and {list(landmarks2.shape)}"
        )
    height, width = image1.shape[-2:]
    frame = _frame_points(height, width)
    flows1, flows2 = [], []
    for points1, points2 in zip(landmarks1.detach().cpu().double().numpy(), landmarks2.detach().cpu().double().numpy()):
        # Keep the mesh inside the frame so the border vertices stay the hull.
        points1 = np.clip(points1, 0.5, [width - 1.5, height - 1.5])
        points2 = np.clip(points2, 0.5, [width - 1.5, height - 1.5])
        between = (1 - t) * points1 + t * points2
        shape = np.concatenate([between, frame])
        flows1.append(_piecewise_affine_flows(shape, np.concatenate([points1, frame]), height, width))
        flows2.append(_piecewise_affine_flows(shape, np.concatenate([points2, frame]), height, width))
    flow1 = torch.from_numpy(np.stack(flows1)).to(image1)
    flow2 = torch.from_numpy(np.stack(flows2)).to(image1)
    return cross_fade(warp(image1, flow1), warp(image2, flow2), t)


def optical_flow_morph(image1: torch.Tensor, image2: torch.Tensor, t: float, method: str = "dis") -> torch.Tensor:
    """Morph along optical flow: image1 moves ``t`` of the way along its flow to image2, image2
    ``1 - t`` of the way back, and the two are cross-dissolved. Returns ``[B, 3, H, W]``.
    """
    flow_1_from_2 = optical_flow(image2, image1, method)  # image1 ~= warp(image2, flow_1_from_2)
    flow_2_from_1 = optical_flow(image1, image2, method)  # image2 ~= warp(image1, flow_2_from_1)
    # A pixel of the in-between frame comes from image1 a fraction t along the 1 -> 2 motion,
    # approximated by the flow at the same pixel (the flows are smooth on faces).
    return cross_fade(warp(image1, t * flow_2_from_1), warp(image2, (1 - t) * flow_1_from_2), t)


class OpticalFlowEditor(Editor):
    """Table 1's optical-flow row as an editor: estimate the flow from S to the reference with
    :func:`optical_flow` (OpenCV DIS by default) and warp S along it, scaled by the intensity.

    With the true target as the reference (``facelib.evaluation.evaluate(..., "reference",
    oracle=True)``) this is exactly Table 1's setting, the paper's EpicFlow row; with another
    person's face as the reference, the flow also tries to move this face onto that one.
    Extras: ``flow``.
    """

    name = "optical_flow"
    accepts = ("reference",)
    intensity_range = (0.0, 1.0)

    def __init__(self, method: str = "dis", image_size: int = 64):
        if method not in ("dis", "farneback"):
            raise ValueError(f"unknown optical flow method {method!r}; use 'dis' or 'farneback'")
        self.method, self.image_size = method, image_size
        self.paper = f"FVAE (Yeh et al. 2016), Table 1 optical-flow row ({method.upper()}, standing in for EpicFlow)"

    def _edit(self, images: torch.Tensor, target: Target) -> EditResult:
        flow = optical_flow(images, target.reference, method=self.method)  # [B, 2, H, W], reference ~= warp(S, flow)
        flow = flow * target.intensities(len(images)).to(flow).view(-1, 1, 1, 1)
        return EditResult(output=warp(images, flow), flow=flow)


def load_optical_flow_editor(device="cpu") -> OpticalFlowEditor:
    """``facelib.load_editor("optical_flow")``: OpenCV DIS optical flow toward the reference (no weights)."""
    return OpticalFlowEditor()
