"""Warp kernels: bilinear sampling (FVAE Eq. 5), the grid_sample fast path, flow utilities.

One flow convention everywhere in facelib (:mod:`facelib.conventions`): a flow is a *backward*
(sampling) displacement in pixels, ``[B, 2, H, W]``, channel 0 = dx, channel 1 = dy::

    out[y, x] = src[y + dy, x + dx]

with pixel centres at integer coordinates (pixel ``(0, 0)`` is the centre of the
top-left pixel, ``(W - 1, H - 1)`` the centre of the bottom-right one).
This is the only module that converts pixel coordinates to
``torch.nn.functional.grid_sample``'s normalised grid; that conversion is exactly
``align_corners=True`` (-1 and +1 are the centres of the corner pixels).

Outside the image the source is zero: a sample point whose four neighbours all
lie outside returns 0, and one that straddles the border blends the inside
neighbours with zeros (``padding_mode="zeros"``).
"""
from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["pixel_grid", "bilinear_sample", "warp", "warp_kernel", "upsample_flow", "flow_to_rgb", "swirl_flow"]


# ----------------------------------------------------------------------------- input checks


def _check_tensor(name: str, value, ndim: int, layout: str) -> None:
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor shaped {layout}, got {type(value).__name__}")
    if value.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D shaped {layout}, got shape {tuple(value.shape)}")
    if not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor (float32 or float64), got {value.dtype}")


def _check_field(name: str, field: Tensor) -> None:
    """A flow or coordinate field: [B, 2, H, W], floating point (finiteness is checked by _check_finite)."""
    _check_tensor(name, field, 4, "[B, 2, H, W] with channel 0 = x and channel 1 = y")
    if field.shape[1] != 2:
        raise ValueError(
            f"{name} must have 2 channels (x, y) in dim 1, shaped [B, 2, H, W]; got shape {tuple(field.shape)}"
        )


def _finite_extremes(name: str, value: Tensor, what: str = "pixel coordinates") -> tuple[float, float]:
    """``(min, max)`` of ``value``; ``ValueError`` if any element is NaN or +-inf.

    One min/max pass: the extremes are NaN as soon as one element is (torch's reductions
    propagate NaN), and +-inf when one is. On CPU this is ~25x faster than
    ``torch.isfinite(value).all()``, which keeps the checks cheap on warp's fast path.
    """
    if value.numel() == 0:
        return 0.0, 0.0
    low, high = (float(v) for v in torch.aminmax(value.detach()))
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError(f"{name} contains NaN or infinite values; only finite {what} are accepted")
    return low, high


def _check_finite(name: str, value: Tensor, what: str = "pixel coordinates") -> None:
    _finite_extremes(name, value, what)


def _check_pair(src: Tensor, src_name: str, field: Tensor, field_name: str) -> None:
    if src.dtype != field.dtype:
        raise TypeError(
            f"{src_name} and {field_name} must share a dtype, got {src.dtype} and {field.dtype}; "
            f"convert one with .to({src.dtype})"
        )
    if src.device != field.device:
        raise ValueError(
            f"{src_name} is on {src.device} but {field_name} is on {field.device}; move both to one device"
        )
    if field.shape[0] not in (src.shape[0], 1):
        raise ValueError(
            f"batch sizes differ: {src_name} has {src.shape[0]}, {field_name} has {field.shape[0]}; "
            f"{field_name} must have the same batch size or batch size 1 (shared by every image)"
        )


def _check_src(src: Tensor) -> None:
    _check_tensor("src", src, 4, "[B, C, H, W]")
    if src.shape[-2] < 2 or src.shape[-1] < 2:
        raise ValueError(f"src must be at least 2x2 pixels, got {tuple(src.shape[-2:])}")
    # a NaN pixel would leak into every output pixel that reads it, silently
    _check_finite("src", src, "pixel values")


# ----------------------------------------------------------------------------- sampling


def pixel_grid(height: int, width: int, device=None, dtype: torch.dtype = torch.float32) -> Tensor:
    """Absolute pixel coordinates of every pixel centre, ``[1, 2, H, W]`` (channel 0 = x, 1 = y).

    ``pixel_grid(H, W) + flow`` are the coordinates ``warp`` samples from.
    """
    if height < 1 or width < 1:
        raise ValueError(f"height and width must be positive, got {height}x{width}")
    ys, xs = torch.meshgrid(
        torch.arange(height, device=device, dtype=dtype),
        torch.arange(width, device=device, dtype=dtype),
        indexing="ij",
    )
    return torch.stack([xs, ys]).unsqueeze(0)  # [1, 2, H, W]


def bilinear_sample(src: Tensor, coords: Tensor) -> Tensor:
    """FVAE Eq. 5 written out: sample ``src`` at absolute pixel coordinates ``coords``.

    Args:
        src: ``[B, C, H, W]`` image (any number of channels).
        coords: ``[B, 2, H', W']`` absolute pixel coordinates (x, y) to read for each output pixel
            (batch size 1 is shared by every image).

    Returns:
        ``[B, C, H', W']``: ``out_j = sum_{k in N(F_j)} S_k (1 - |F_jx - x_k|)(1 - |F_jy - y_k|)``
        over the four neighbours of ``F_j``; neighbours outside the image count as zero.

    This is the readable reference; :func:`warp` is the fast path and agrees with it to 1e-5.
    """
    _check_src(src)
    _check_field("coords", coords)
    _check_pair(src, "src", coords, "coords")
    _check_finite("coords", coords)
    batch, channels, height, width = src.shape
    coords = coords.expand(batch, -1, -1, -1)
    x, y = coords[:, 0], coords[:, 1]  # [B, H', W'] each
    x0, y0 = torch.floor(x), torch.floor(y)
    # Since x0 <= x < x0 + 1, Eq. 5's weight (1 - |x - x_k|) is (1 - (x - x0)) for the left neighbour and
    # (x - x0) for the right one. Writing it without abs() also gives the forward-difference gradient at
    # exact integer coordinates (abs() would give a zero gradient there, e.g. for an all-zero flow).
    frac_x, frac_y = x - x0, y - y0
    flat_src = src.reshape(batch, channels, height * width)
    out = src.new_zeros(batch, channels, *x.shape[1:])
    for x_k, weight_x in ((x0, 1 - frac_x), (x0 + 1, frac_x)):
        for y_k, weight_y in ((y0, 1 - frac_y), (y0 + 1, frac_y)):
            inside = (x_k >= 0) & (x_k <= width - 1) & (y_k >= 0) & (y_k <= height - 1)
            index = (y_k.clamp(0, height - 1) * width + x_k.clamp(0, width - 1)).long()  # [B, H', W']
            s_k = torch.gather(flat_src, 2, index.flatten(1).unsqueeze(1).expand(-1, channels, -1))
            s_k = s_k.reshape(out.shape)  # [B, C, H', W']
            # FVAE Eq. 5: S_k (1 - |F_x - x_k|)(1 - |F_y - y_k|), zero for neighbours outside the image
            out = out + s_k * (weight_x * weight_y * inside).unsqueeze(1)
    return out


def warp(src: Tensor, flow: Tensor) -> Tensor:
    """Backward-warp ``src`` by a pixel flow: ``out[y, x] = src[y + dy, x + dx]`` (zeros outside).

    Args:
        src: ``[B, C, H, W]`` image.
        flow: ``[B, 2, H, W]`` backward displacement in pixels (channel 0 = dx, 1 = dy); batch size 1 is
            shared by every image.

    The fast path of FVAE Eq. 5 through ``grid_sample``; equal to
    ``bilinear_sample(src, pixel_grid(H, W) + flow)`` up to float round-off in the normalised grid
    (about 4e-6 at 64x64 in float32 for images in [-1, 1], 1e-13 in float64).
    """
    _check_src(src)
    _check_field("flow", flow)
    _check_pair(src, "src", flow, "flow")
    low, high = _finite_extremes("flow", flow, "pixel displacements")
    _check_same_size(src, flow)
    # Flows that cannot leave the +-3 band of the grid skip the clamp, so it costs nothing (not even in
    # backward) on ordinary flows.
    return _grid_warp(src, flow, clamp=max(-low, high) > max(src.shape[-2:]))


def warp_kernel(src: Tensor, flow: Tensor) -> Tensor:
    """:func:`warp` without reading the values, for a network's ``forward``.

    The shapes are checked as in :func:`warp`; NaN/inf are not looked for (that would synchronise
    with the device on every call): the images were checked where they entered facelib, and the
    flow comes from the network. The grid is always clamped (exact, see :func:`warp`), so the
    result equals ``warp(src, flow)`` for any finite flow.
    """
    _check_tensor("src", src, 4, "[B, C, H, W]")
    _check_field("flow", flow)
    _check_pair(src, "src", flow, "flow")
    _check_same_size(src, flow)
    return _grid_warp(src, flow, clamp=True)


def _check_same_size(src: Tensor, flow: Tensor) -> None:
    if flow.shape[-2:] != src.shape[-2:]:
        raise ValueError(
            f"flow is {tuple(flow.shape[-2:])} but src is {tuple(src.shape[-2:])}; they must have the same H, W "
            "(resize the flow with facelib.warp.upsample_flow first)"
        )


def _grid_warp(src: Tensor, flow: Tensor, clamp: bool) -> Tensor:
    """FVAE Eq. 5 through ``grid_sample`` (the shared body of :func:`warp` and :func:`warp_kernel`)."""
    height, width = src.shape[-2:]
    coords = pixel_grid(height, width, flow.device, flow.dtype) + flow.expand(src.shape[0], -1, -1, -1)
    # Pixel centres at integers <-> align_corners=True: pixel 0 -> -1, pixel W-1 -> +1. Dividing by
    # (W-1)/2 mirrors grid_sample's own (g + 1) * (W-1)/2, which keeps float32 round-off near 1e-6 px at 64x64.
    half_extent = coords.new_tensor([(width - 1) / 2, (height - 1) / 2]).view(1, 2, 1, 1)
    grid = coords / half_extent - 1  # [B, 2, H, W] as (x, y), [-1, 1] inside the image
    if clamp:
        # Beyond +-3 (pixel 2(W-1) >= W, or -(W-1) <= -1) all four neighbours are outside and the sample is 0
        # whatever the exact value, so clamping there changes nothing; it keeps grid_sample's own
        # un-normalisation from overflowing to inf (0 * inf = NaN) for huge finite flows.
        grid = grid.clamp(-3, 3)
    return F.grid_sample(src, grid.permute(0, 2, 3, 1), mode="bilinear", padding_mode="zeros", align_corners=True)


# ----------------------------------------------------------------------------- flow utilities


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _size_pair(size) -> tuple[int, int]:
    if _is_int(size):
        return int(size), int(size)
    if isinstance(size, (tuple, list, torch.Size)) and len(size) == 2 and all(_is_int(s) for s in size):
        return int(size[0]), int(size[1])
    raise TypeError(f"size must be an int or an (H, W) pair of ints, got {size!r}")


def upsample_flow(flow: Tensor, size) -> Tensor:
    """Resize a flow field and rescale its vectors (FVAE Sec. 4.3: upsample in the flow domain).

    Args:
        flow: ``[B, 2, h, w]`` backward pixel flow at the low resolution.
        size: ``H`` (square) or ``(H, W)``, the new resolution (larger or smaller).

    Returns:
        ``[B, 2, H, W]`` flow in pixels of the new resolution.

    Geometry (pixel centres at integers, as everywhere): both grids cover the same image plane
    edge to edge, the convention of image resizing (``F.interpolate(..., align_corners=False)``,
    OpenCV, PIL) and of SynthFaces, which renders one face at any size. Low-res pixel ``x`` therefore
    sits at high-res ``X = (x + 0.5) * W / w - 0.5``, and a displacement of ``dx`` low-res pixels is
    ``dx * W / w`` high-res pixels (same for y with H). Resampling is bilinear with
    ``align_corners=False`` (that mapping), so an affine flow upsamples exactly away from the outer
    half low-res pixel, where the field is held constant. Resize the images the flow applies to in
    the same geometry (``F.interpolate`` with ``align_corners=False``, or render at the new size).
    """
    _check_field("flow", flow)
    height, width = _size_pair(size)
    low_height, low_width = flow.shape[-2:]
    if min(height, width, low_height, low_width) < 1:
        raise ValueError(f"upsample_flow needs non-empty sizes, got {low_height}x{low_width} -> {height}x{width}")
    factors = (width / low_width, height / low_height)
    if flow.numel():
        # Bilinear resampling never exceeds the largest input vector, so the input's extremes say
        # whether the rescaled output stays finite (they are NaN/inf when the input is not finite).
        low, high = _finite_extremes("flow", flow, "pixel displacements")
        largest = max(-low, high)
        if largest * max(factors) > torch.finfo(flow.dtype).max / 2:
            raise ValueError(f"flow holds displacements up to {largest:.3g} px; rescaled by {max(factors):g} they "
                             f"overflow {flow.dtype}; displacements beyond the image size (a few hundred px) mean "
                             "nothing, so clamp the flow first")
    resized = F.interpolate(flow, size=(height, width), mode="bilinear", align_corners=False)  # [B, 2, H, W]
    scale = flow.new_tensor(factors).view(1, 2, 1, 1)
    return resized * scale


def _colour_wheel(device=None, dtype: torch.dtype = torch.float32) -> Tensor:
    """The Middlebury colour wheel (Baker et al. 2011): 55 hues, red-yellow-green-cyan-blue-magenta."""
    segments = ((15, (1, 0, 0), (0, 1, 0)),   # red -> yellow: green rises
                (6, (1, 1, 0), (-1, 0, 0)),   # yellow -> green: red falls
                (4, (0, 1, 0), (0, 0, 1)),    # green -> cyan: blue rises
                (11, (0, 1, 1), (0, -1, 0)),  # cyan -> blue: green falls
                (13, (0, 0, 1), (1, 0, 0)),   # blue -> magenta: red rises
                (6, (1, 0, 1), (0, 0, -1)))   # magenta -> red: blue falls
    rows = []
    for count, start, step in segments:
        ramp = torch.arange(count, dtype=torch.float64) / count  # [count]
        rows.append(torch.tensor(start, dtype=torch.float64) + ramp[:, None] * torch.tensor(step, dtype=torch.float64))
    return torch.cat(rows).to(device=device, dtype=dtype)  # [55, 3] in [0, 1]


def flow_to_rgb(flow: Tensor, max_magnitude: float | None = None) -> Tensor:
    """Colour-code a flow with the standard (Middlebury) colour wheel: hue = direction, saturation = length.

    Args:
        flow: ``[B, 2, H, W]`` or ``[2, H, W]`` pixel flow.
        max_magnitude: the length drawn fully saturated; longer vectors are darkened. ``None`` uses each
            image's own largest length (pass one number to compare several flows on one scale).

    Returns:
        ``[B, 3, H, W]`` (or ``[3, H, W]``) RGB in ``[0, 1]``, as in Baker et al. (2011): zero flow is
        white; +dx (reading from the right) is red, +dy (reading from below) yellow, -dx cyan-blue,
        -dy violet.
    """
    if isinstance(flow, Tensor) and flow.ndim == 3:
        return flow_to_rgb(flow.unsqueeze(0), max_magnitude)[0]
    _check_field("flow", flow)
    _check_finite("flow", flow)
    if max_magnitude is not None and not (isinstance(max_magnitude, (int, float)) and max_magnitude > 0):
        raise ValueError(f"max_magnitude must be a positive number or None, got {max_magnitude!r}")
    flow = flow.detach()
    u, v = flow[:, 0], flow[:, 1]  # [B, H, W]
    magnitude = torch.sqrt(u * u + v * v)
    if max_magnitude is None:
        scale = magnitude.flatten(1).amax(dim=1).clamp_min(1e-8).view(-1, 1, 1)
    else:
        scale = torch.as_tensor(float(max_magnitude), dtype=flow.dtype, device=flow.device)
    radius = magnitude / scale
    wheel = _colour_wheel(flow.device, flow.dtype)  # [55, 3]
    n_colours = wheel.shape[0]
    angle = torch.atan2(-v, -u) / math.pi  # [-1, 1]
    position = (angle + 1) / 2 * (n_colours - 1)
    k0 = position.floor().long().clamp(0, n_colours - 1)
    k1 = (k0 + 1) % n_colours
    f = (position - k0).unsqueeze(-1)  # [B, H, W, 1]
    colour = (1 - f) * wheel[k0] + f * wheel[k1]  # [B, H, W, 3]
    r = radius.unsqueeze(-1)
    # Inside the unit disc, fade towards white as the vector shrinks; outside, darken to flag saturation.
    colour = torch.where(r <= 1, 1 - r * (1 - colour), colour * 0.75)
    return colour.permute(0, 3, 1, 2).clamp(0, 1)  # [B, 3, H, W]


def swirl_flow(size: int, centre: tuple[float, float] = (0.5, 0.35), radius: float = 0.18, turn: float = 0.35,
               drop: float = 0.03) -> Tensor:
    """A smooth test flow: a swirl around ``centre`` (with a small downward drift), ``[1, 2, size, size]`` pixels.

    Defined on the continuous image plane u in [0, 1]^2 (pixel x covers [x, x + 1) / size), so the
    same swirl drawn at two sizes is one field at two resolutions (notebook 01 uses it to show
    Eq. 6's coherence and Sec. 4.3's upsampling). ``turn`` and ``drop`` are in units of the image side.
    """
    u = (pixel_grid(size, size, dtype=torch.float64) + 0.5) / size
    offset = u - torch.tensor(centre, dtype=torch.float64).view(1, 2, 1, 1)
    bump = torch.exp(-(offset ** 2).sum(1, keepdim=True) / (2 * radius ** 2))
    rotation = torch.cat([-offset[:, 1:], offset[:, :1]], 1)  # the offset turned by 90 degrees
    shift = torch.tensor([0.0, drop], dtype=torch.float64).view(1, 2, 1, 1)
    return ((turn * rotation + shift) * bump * size).float()  # [1, 2, size, size] in pixels
