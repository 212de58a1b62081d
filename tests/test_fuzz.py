"""Generated input for every public entry point: a clean error that names the problem, or a finite, right answer.

``hypothesis`` draws the inputs: shapes (empty, tiny, wrong rank), dtypes (half, integer, bool,
complex), values (in range, at the range's edge, out of range, 3e38, subnormal, NaN, inf),
argument types, image files (every format Pillow writes, then truncated or with flipped bytes),
dataset folders with made-up file names and CSV manifests with made-up cells and encodings.

Every call must end in one of two ways:

* a ``ValueError`` or ``TypeError`` (exactly those types: a ``UnicodeDecodeError`` or a bare
  ``RuntimeError`` from deep inside torch is a crash) whose message names the argument at fault;
* a result that is finite and agrees with an independent reference (scikit-image's SSIM, a
  float64 PSNR, ``bilinear_sample`` for ``warp``, the exact arithmetic of the other functions).

The profile below is derandomised (the same inputs on every run, so CI never flakes) and draws
``FACELIB_FUZZ_EXAMPLES`` inputs per entry point (default 40: the file runs in seconds). For a
long run: ``FACELIB_FUZZ_EXAMPLES=1000 python -m pytest tests/test_fuzz.py -s`` prints how many
inputs each entry point received and how each ended; ``FACELIB_FUZZ_REPORT=counts.json`` also
writes those counts to a file.
"""
from __future__ import annotations

import collections
import functools
import io
import json
import math
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from skimage.metrics import structural_similarity

import cv2

from facelib import metrics
from facelib.align import EYE_HEIGHT, NoFaceError, align_face
from facelib.data import CSVManifest, MultiPIE, OuluCASIA, RaFD
from facelib.data.io import load_image
from facelib.data.real import AU_COLUMNS
from facelib.warp import bilinear_sample, pixel_grid, upsample_flow, warp

EXAMPLES = int(os.environ.get("FACELIB_FUZZ_EXAMPLES", "40"))
settings.register_profile(
    "facelib-fuzz",
    max_examples=EXAMPLES,
    derandomize=True,  # a fixed sequence of inputs: reproducible, never flaky
    database=None,  # nothing written into the working tree
    deadline=None,  # timings on a shared 2-core CI machine vary
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
FUZZ = settings.get_profile("facelib-fuzz")

torch.set_num_threads(1)

#: entry point -> outcome ("result", "ValueError", "TypeError", ...) -> count
COUNTS: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)


@pytest.fixture(scope="module", autouse=True)
def report_counts():
    yield
    lines = [f"{'entry point':16s} {'inputs':>7s}  outcomes"]
    for entry, counts in sorted(COUNTS.items()):
        outcomes = ", ".join(f"{name} {count}" for name, count in sorted(counts.items()))
        lines.append(f"{entry:16s} {sum(counts.values()):7d}  {outcomes}")
    print("\nfuzzed inputs per entry point (crashes and silent NaN fail the test instead):\n" + "\n".join(lines))
    if os.environ.get("FACELIB_FUZZ_REPORT"):
        Path(os.environ["FACELIB_FUZZ_REPORT"]).write_text(json.dumps(COUNTS, indent=1, sort_keys=True))


def outcome(entry: str, call, names: tuple[str, ...], allowed: tuple[type, ...] = ()):
    """Run ``call``; a result is returned, a clean error is counted and ``None`` returned.

    A clean error is exactly ``ValueError`` or ``TypeError`` (or one of ``allowed``) whose message
    mentions one of ``names`` (the arguments or things it could be about). Anything else propagates
    and fails the test, and hypothesis shrinks it to the smallest input that does it.
    """
    try:
        result = call()
    except Exception as err:  # noqa: BLE001 - the point is to classify every exception
        if type(err) not in (ValueError, TypeError, *allowed):
            raise
        message = str(err)
        assert any(name.lower() in message.lower() for name in names), (
            f"{type(err).__name__} does not name the problem (expected one of {names}): {message}")
        COUNTS[entry][type(err).__name__] += 1
        return None
    COUNTS[entry]["result"] += 1
    return result


def assert_exercised(entry: str) -> None:
    """The strategies reach both sides: some inputs are refused and some are measured."""
    counts = COUNTS[entry]
    assert counts["result"] > 0 and sum(counts.values()) > counts["result"], dict(counts)


# ----------------------------------------------------------------------------------------- strategies
FLOAT_DTYPES = [torch.float32] * 4 + [torch.float64] * 2 + [torch.float16, torch.bfloat16]
OTHER_DTYPES = [torch.int64, torch.uint8, torch.bool, torch.complex64]
SPECIAL_VALUES = [math.nan, math.inf, -math.inf, 3e38, -3e38, 1e-45, 65504.0, 1e30]


@st.composite
def tensors(draw, shape, ranges, *, special=True, other_dtypes=True, valid=False):
    """A tensor of ``shape``: uniform in one of ``ranges``, or constant, with a few special values maybe.

    ``valid=True`` keeps to float dtypes and the first range, without special values.
    """
    dtypes = FLOAT_DTYPES + (OTHER_DTYPES if other_dtypes and not valid else [])
    dtype = draw(st.sampled_from(dtypes))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    if not valid and draw(st.integers(0, 9)) == 0:  # constant, any float at all
        value = draw(st.floats(allow_nan=special, allow_infinity=special, width=32))
        x = torch.full(shape, value, dtype=torch.float64)
    else:
        low, high = ranges[0] if valid else draw(st.sampled_from(ranges))
        x = torch.rand(shape, generator=generator, dtype=torch.float64) * (high - low) + low
    if special and not valid and x.numel() and draw(st.integers(0, 4)) == 0:
        flat = x.view(-1)
        for _ in range(draw(st.integers(1, 3))):
            flat[draw(st.integers(0, flat.numel() - 1))] = draw(st.sampled_from(SPECIAL_VALUES))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # casting inf/NaN to integers
        return x.to(dtype)


def image_shapes(max_side=40):
    four_d = st.tuples(st.integers(0, 3), st.sampled_from([0, 1, 2, 3, 4]), st.integers(0, max_side),
                       st.integers(0, max_side))
    other = st.lists(st.integers(0, 6), min_size=0, max_size=5).map(tuple)
    return st.one_of(four_d, four_d, four_d, four_d, four_d, other)


DATA_RANGES = st.sampled_from([2.0] * 6 + [1.0] * 2 + [255, 0.5, 1e-300, 1e300, np.float64(2.0), 2,
                                                      math.nan, math.inf, 0.0, -1.0, "2", None, True])


def accepted_range(data_range):
    try:
        return metrics._accepted_range(data_range)
    except (TypeError, ValueError):
        return (-1.0, 1.0)


@st.composite
def image_pairs(draw, max_side=40):
    """``(pred, target, data_range)``: same or other shapes, values in or around the accepted range.

    About half the pairs are valid by construction (so results get checked, not only refusals).
    """
    valid = draw(st.booleans())
    data_range = draw(st.sampled_from([2.0, 2.0, 1.0, 255, 1e-300, 1e300, np.float64(2.0)]) if valid else DATA_RANGES)
    low, high = accepted_range(data_range)
    span = high - low
    ranges = [(low, high)] * 4 + [(low - 0.004 * span, high + 0.004 * span), (low - span, high + span),
                                  (-1e30, 1e30), (low, low)]
    if valid:
        shape = (draw(st.integers(1, 3)), draw(st.sampled_from([1, 3])), draw(st.integers(11, max_side)),
                 draw(st.integers(11, max_side)))
    else:
        shape = draw(image_shapes(max_side))
    pred = draw(tensors(shape, ranges, valid=valid))
    how = draw(st.sampled_from(["noisy", "noisy", "same"] + ([] if valid else ["independent", "other shape"])))
    if how == "same":
        target = pred.clone()
    elif how == "noisy" and pred.is_floating_point():
        noise = torch.randn(pred.shape, generator=torch.Generator().manual_seed(draw(st.integers(0, 99))))
        target = (pred.double() + draw(st.sampled_from([1e-3, 0.05, 0.3])) * span * noise).clamp(low, high)
        target = target.to(pred.dtype)
    elif how == "other shape":
        target = draw(tensors(draw(image_shapes(max_side)), ranges))
    else:
        target = draw(tensors(shape, ranges, valid=valid))
    return pred, target, data_range


def unit_range(x: torch.Tensor, data_range) -> np.ndarray:
    low, _ = metrics._accepted_range(data_range)
    return ((x.double() - low) / float(data_range)).numpy()


METRIC_NAMES = ("pred", "target", "data_range", "scales", "mask", "SSIM")


# ----------------------------------------------------------------------------------------- metrics
@FUZZ
@given(image_pairs(), st.booleans())
def fuzz_psnr(pair, with_mask):
    pred, target, data_range = pair
    mask = None
    if with_mask and pred.dim() == 4:
        generator = torch.Generator().manual_seed(pred.numel())
        mask = (torch.rand(pred.shape[0], 1, *pred.shape[2:], generator=generator) > 0.3).float()
    values = outcome("psnr", lambda: metrics.psnr(pred, target, mask=mask, data_range=data_range, per_image=True),
                     METRIC_NAMES)
    if values is None:
        return
    error = (unit_range(pred, data_range) - unit_range(target, data_range)) ** 2  # [B, C, H, W]
    if mask is None:
        mse = error.reshape(len(error), -1).mean(1)
    else:
        weights = np.broadcast_to(mask.double().numpy(), error.shape)
        mse = (weights * error).reshape(len(error), -1).sum(1) / weights.reshape(len(error), -1).sum(1)
    for value, reference in zip(values.tolist(), mse):
        assert not math.isnan(value)
        if reference == 0:
            assert value == math.inf  # identical images, documented
        else:
            assert value == pytest.approx(-10 * math.log10(reference), rel=1e-5, abs=1e-4)


@FUZZ
@given(image_pairs())
def fuzz_ssim(pair):
    pred, target, data_range = pair
    values = outcome("ssim", lambda: metrics.ssim(pred, target, data_range=data_range, per_image=True),
                     METRIC_NAMES)
    if values is None:
        return
    assert torch.isfinite(values).all() and (values.abs() <= 1 + 1e-6).all()
    a, b = unit_range(pred, data_range), unit_range(target, data_range)
    for i, value in enumerate(values.tolist()):
        reference = structural_similarity(a[i].transpose(1, 2, 0), b[i].transpose(1, 2, 0), gaussian_weights=True,
                                          sigma=1.5, use_sample_covariance=False, data_range=1.0, channel_axis=2)
        assert value == pytest.approx(reference, abs=1e-5)


@FUZZ
@given(image_pairs(max_side=48), st.sampled_from([None] * 6 + [1, 1, 2, 3, 5, 0, 2.5, "3", True]))
def fuzz_ms_ssim(pair, scales):
    pred, target, data_range = pair
    values = outcome("ms_ssim", lambda: metrics.ms_ssim(pred, target, data_range=data_range, scales=scales,
                                                        per_image=True), METRIC_NAMES)
    if values is None:
        return
    assert torch.isfinite(values).all() and (values >= 0).all() and (values <= 1 + 1e-6).all()
    if torch.equal(pred, target):
        assert torch.allclose(values, torch.ones_like(values), atol=1e-6)
    if scales == 1:  # one scale is SSIM (within float32 rounding of the two results)
        ssim = metrics.ssim(pred, target, data_range=data_range, per_image=True)
        assert torch.allclose(values, ssim.clamp_min(0), atol=1e-6)


# ----------------------------------------------------------------------------------------- warp
FLOW_RANGES = [(-3.0, 3.0)] * 3 + [(-0.5, 0.5), (-40.0, 40.0), (-1e3, 1e3), (-3e38, 3e38), (1e30, 1e30),
                                   (-1e-40, 1e-40)]
SRC_RANGES = [(-1.0, 1.0)] * 3 + [(0.0, 255.0), (-1e30, 1e30)]
WARP_NAMES = ("src", "flow", "coords", "batch", "dtype", "device", "size")


@st.composite
def warp_inputs(draw):
    """``(src, flow)``; about half are valid by construction (the flow may still be huge: 3e38 px)."""
    valid = draw(st.booleans())
    batch, channels = draw(st.integers(1 if valid else 0, 3)), draw(st.integers(1 if valid else 0, 4))
    height, width = draw(st.integers(2 if valid else 0, 12)), draw(st.integers(2 if valid else 0, 12))
    src_shape = (batch, channels, height, width) if valid else draw(
        st.one_of(st.just((batch, channels, height, width)), image_shapes(12)))
    src = draw(tensors(src_shape, SRC_RANGES, valid=valid))
    flow_batch = draw(st.sampled_from([batch, 1] if valid else [batch, batch, 1, batch + 1]))
    flow_size = (height, width) if valid else draw(
        st.sampled_from([(height, width)] * 4 + [(height + 1, width), (width, height)]))
    flow_channels = 2 if valid else draw(st.sampled_from([2] * 6 + [1, 3]))
    flow_ranges = [draw(st.sampled_from(FLOW_RANGES))] if valid else FLOW_RANGES
    flow = draw(tensors((flow_batch, flow_channels, *flow_size), flow_ranges, valid=valid))
    if valid and flow.is_floating_point() or draw(st.booleans()) and flow.is_floating_point() \
            and src.is_floating_point():
        flow = flow.to(src.dtype)  # most real calls share a dtype
    return src, flow


def bilinear_tolerance(src: torch.Tensor, height: int, width: int) -> float:
    """Round-off of a bilinear sample in ``src.dtype`` (the normalised grid moves points by ~eps * size)."""
    eps = torch.finfo(src.dtype).eps
    largest = float(src.double().abs().max()) if src.numel() else 0.0
    return largest * max(1e-5, 64 * eps * (height + width + 4))


@FUZZ
@given(warp_inputs())
def fuzz_warp(inputs):
    src, flow = inputs
    out = outcome("warp", lambda: warp(src, flow), WARP_NAMES)
    if out is None:
        return
    assert out.shape == src.shape and out.dtype == src.dtype
    assert torch.isfinite(out).all()
    height, width = src.shape[-2:]
    reference = bilinear_sample(src.double(), pixel_grid(height, width, dtype=torch.float64)
                                + flow.to(src.dtype).double())
    assert (out.double() - reference).abs().max() <= bilinear_tolerance(src, height, width) if out.numel() else True


@FUZZ
@given(warp_inputs())
def fuzz_bilinear_sample(inputs):
    src, coords = inputs  # the flow strategy's fields, read as absolute coordinates
    out = outcome("bilinear_sample", lambda: bilinear_sample(src, coords), WARP_NAMES)
    if out is None:
        return
    assert out.shape == (src.shape[0], src.shape[1], *coords.shape[-2:]) and torch.isfinite(out).all()
    largest = float(src.double().abs().max()) if src.numel() else 0.0
    assert (out.double().abs() <= largest * (1 + 1e-2) + 1e-30).all()  # a convex mix of pixels and zeros


@st.composite
def upsample_inputs(draw):
    """``(flow, size)``; about half are valid by construction."""
    valid = draw(st.booleans())
    shape = (draw(st.integers(0, 2)), draw(st.sampled_from([2] if valid else [2, 2, 2, 1, 3])),
             draw(st.integers(1 if valid else 0, 10)), draw(st.integers(1 if valid else 0, 10)))
    flow = draw(tensors(shape, [draw(st.sampled_from(FLOW_RANGES))] if valid else FLOW_RANGES, valid=valid))
    if valid:
        size = draw(st.one_of(st.integers(1, 24), st.tuples(st.integers(1, 24), st.integers(1, 24))))
    else:
        size = draw(st.one_of(st.integers(-2, 24), st.tuples(st.integers(-1, 24), st.integers(-1, 24)),
                              st.sampled_from([2.5, "8", None, True, (8,), (4, 4, 4), (np.int64(6), 5), [7, 9]])))
    return flow, size


@FUZZ
@given(upsample_inputs(), st.booleans())
def fuzz_upsample_flow(inputs, constant):
    flow, size = inputs
    if constant and flow.is_floating_point() and flow.numel():
        flow = torch.full_like(flow, float(flow.view(-1)[0]))  # a uniform motion: rescaled exactly
    out = outcome("upsample_flow", lambda: upsample_flow(flow, size), WARP_NAMES)
    if out is None:
        return
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    assert out.shape == (flow.shape[0], 2, height, width) and torch.isfinite(out).all()
    if out.numel():
        scale = torch.tensor([width / flow.shape[-1], height / flow.shape[-2]], dtype=torch.float64).view(1, 2, 1, 1)
        bound = flow.double().abs().amax(dim=(0, 2, 3)).view(1, 2, 1, 1) * scale
        assert (out.double().abs() <= bound * (1 + 1e-2) + 1e-30).all()
        if constant:
            expected = flow.double()[:, :, :1, :1] * scale
            # relative accuracy, down to the subnormals (which have fewer significant bits)
            assert torch.allclose(out.double(), expected.expand_as(out), rtol=1e-2 if flow.element_size() < 4
                                  else 1e-5, atol=2 * torch.finfo(flow.dtype).tiny)


# ----------------------------------------------------------------------------------------- load_image
IMAGE_NAMES = ("image", "array", "tensor", "pixels", "mode", "dtype", "shape", "decode", "format", "Pillow",
               "small", "finite", "range", "supported", "cannot", "[0, 1]")
ARRAY_DTYPES = [np.uint8] * 4 + [np.uint16, ">u2", np.bool_, np.float16, np.float32, np.float64, np.int8, np.int32,
                                 np.complex64, object]


@st.composite
def arrays(draw, valid=False):
    if valid:
        shape = draw(st.one_of(st.tuples(st.integers(16, 40), st.integers(16, 40), st.sampled_from([3, 1, 4])),
                               st.tuples(st.integers(16, 40), st.integers(16, 40))))
        dtype = np.dtype(draw(st.sampled_from(ARRAY_DTYPES[:10])))
    else:
        shape = draw(st.one_of(
            st.tuples(st.integers(0, 40), st.integers(0, 40), st.sampled_from([3, 3, 1, 4, 2, 5])),
            st.tuples(st.integers(0, 40), st.integers(0, 40)),
            st.lists(st.integers(0, 20), min_size=0, max_size=4).map(tuple)))
        dtype = np.dtype(draw(st.sampled_from(ARRAY_DTYPES)))
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    if dtype.kind in "fc":
        low, high = (0.0, 1.0) if valid else draw(st.sampled_from([(0.0, 1.0)] * 3 + [(-1.0, 2.0), (0.0, 255.0)]))
        array = rng.uniform(low, high, shape)
        if array.size and not valid and draw(st.integers(0, 4)) == 0:
            array.flat[draw(st.integers(0, array.size - 1))] = draw(st.sampled_from([math.nan, math.inf, -math.inf]))
        return array.astype(dtype)
    if dtype.kind == "O":
        return np.empty(shape, dtype=object)
    info = np.iinfo(dtype) if dtype.kind in "ui" else None
    array = rng.integers(info.min, info.max, shape, endpoint=True) if info else rng.integers(0, 2, shape)
    return array.astype(dtype)


PIL_MODES = ["RGB", "RGB", "L", "RGBA", "P", "LA", "1", "I", "I;16", "F", "CMYK", "YCbCr", "HSV", "LAB", "PA"]


@st.composite
def pil_images(draw, min_side=1):
    mode = draw(st.sampled_from(PIL_MODES))
    size = (draw(st.integers(min_side, 40)), draw(st.integers(min_side, 40)))
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    rgb = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    if mode == "F":
        scale = draw(st.sampled_from([1.0, 1.0, 255.0, -1.0]))
        return Image.fromarray((rng.random((size[1], size[0])) * scale).astype(np.float32), mode="F")
    if mode in ("I", "I;16"):
        image = Image.fromarray(rng.integers(0, 65536, (size[1], size[0])).astype(np.int32), mode="I")
        return image if mode == "I" else image.convert("I;16")
    if mode == "PA":
        return rgb.convert("P").convert("PA") if hasattr(Image, "Palette") else rgb.convert("P")
    return rgb.convert(mode)


FORMATS = ["PNG", "PNG", "JPEG", "BMP", "TIFF", "WEBP", "GIF", "PPM"]


@st.composite
def image_files(draw, valid=False):
    """Bytes of a file: an encoded image (maybe truncated or with flipped bytes), random bytes, or text."""
    kind = "encoded" if valid else draw(st.sampled_from(["encoded"] * 4 + ["corrupt"] * 3 + ["random", "empty", "text"]))
    if kind == "random":
        return draw(st.binary(min_size=1, max_size=200)), ".png"
    if kind == "empty":
        return b"", ".jpg"
    if kind == "text":
        return draw(st.text(min_size=1, max_size=100)).encode("utf-8"), ".png"
    image = draw(pil_images(16 if valid else 1))
    fmt = draw(st.sampled_from(FORMATS))
    buffer = io.BytesIO()
    try:
        image.save(buffer, format=fmt)
    except (OSError, ValueError, KeyError):  # not every mode can be written in every format
        image.convert("RGB").save(buffer, format=fmt)
    data = bytearray(buffer.getvalue())
    if kind == "corrupt":
        if draw(st.booleans()):
            data = data[: draw(st.integers(0, len(data) - 1))]
        else:
            for _ in range(draw(st.integers(1, 8))):
                data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data), "." + fmt.lower()


@st.composite
def load_image_inputs(draw):
    """``(kind, image)``; about half are valid by construction (at least 16 px, readable values)."""
    valid = draw(st.booleans())
    kind = draw(st.sampled_from(["tensor", "array", "pil", "file"] + ([] if valid else ["other"])))
    if kind == "tensor":
        if valid:
            shape = draw(st.sampled_from([(3,), (1, 3)])) + (draw(st.integers(16, 40)), draw(st.integers(16, 40)))
        else:
            shape = draw(st.one_of(st.tuples(st.just(3), st.integers(0, 40), st.integers(0, 40)),
                                   st.tuples(st.just(1), st.just(3), st.integers(0, 40), st.integers(0, 40)),
                                   image_shapes(40)))
        return kind, draw(tensors(shape, [(-1.0, 1.0)] * 3 + [(-1.5, 1.5), (0.0, 255.0)], valid=valid))
    if kind == "array":
        return kind, draw(arrays(valid))
    if kind == "pil":
        return kind, draw(pil_images(16 if valid else 1))
    if kind == "file":
        return kind, draw(image_files(valid))
    return kind, draw(st.sampled_from([None, 3, "", b"bytes", [[0, 1]], {"image": 1}]))


@FUZZ
@given(load_image_inputs())
def fuzz_load_image(inputs):
    kind, image = inputs
    with tempfile.TemporaryDirectory() as folder:
        if kind == "file":
            data, suffix = image
            image = Path(folder) / f"picture{suffix}"
            image.write_bytes(data)
        elif kind == "other" and image == "":
            image = Path(folder) / "missing.png"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's warnings about odd files
            rgb = outcome("load_image", lambda: load_image(image), IMAGE_NAMES + (folder,),
                          allowed=(FileNotFoundError,) if kind == "other" else ())
    if rgb is None:
        return
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3 and min(rgb.shape[:2]) >= 16
    if kind == "tensor":
        expected = ((image.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        assert np.array_equal(rgb, expected.reshape(3, *rgb.shape[:2]).permute(1, 2, 0).numpy())
    elif kind == "array" and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3:
        assert np.array_equal(rgb, image)
    elif kind == "array" and image.dtype.kind == "f":
        gray = image if image.ndim == 2 else image[..., 0] if image.shape[-1] == 1 else None
        if gray is not None:
            assert np.array_equal(rgb[..., 0], np.round(gray.astype(np.float64) * 255).astype(np.uint8))


# ----------------------------------------------------------------------------------------- dataset loaders
LOADER_NAMES = ("root", "RaFD", "Oulu", "Multi-PIE", "CSV", ".csv", "identit", "split", "emotion", "expression",
                "camera", "session", "angle", "image", "size", "fraction", "line", "no ", "valid", "column",
                "frame", "illumination", "modality", "gaze")


def tiny_png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((20, 24, 3), 120, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


TINY_PNG = tiny_png()
FIELD_TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="/\\\x00"),
                     max_size=8)


def pick(good: list, odd: list):
    """A strategy maker: ``valid=True`` draws only good values, ``valid=False`` mostly good ones, some odd."""
    return lambda valid: st.sampled_from(good) if valid else st.sampled_from(good * 2 + odd)


def names_from(template: str, fields: dict, valid: bool):
    """File names built from ``template`` with one drawn value per field; invalid mode adds free text."""
    structured = st.fixed_dictionaries({key: make(valid) for key, make in fields.items()}).map(
        lambda values: template.format(**values))
    return structured if valid else st.one_of(structured, structured, structured, FIELD_TEXT)


RAFD_FIELDS = {
    "angle": pick(["090", "045", "000", "135", "180"], ["091", "9", "\u0660\u0669\u0660"]),
    "subject": pick(["01", "02", "03", "67", "1"], ["000", "99999999999999999999999", "x"]),
    "ethnicity": pick(["Caucasian", "Moroccan"], ["K\u212a", ""]),
    "gender": pick(["female", "male", "MALE"], ["other"]),
    "emotion": pick(["angry", "happy", "contemptuous", "neutral", "HAPPY"], ["joy"]),
    "gaze": pick(["frontal", "left", "right"], ["up"]),
}
MULTIPIE_FIELDS = {
    "subject": pick(["001", "002", "337", "999"], ["01"]),
    "session": pick(["01", "02", "03", "04"], ["05"]),
    "recording": pick(["01", "02"], ["03", "04"]),
    "camera": pick(["051", "081", "191", "240"], ["052", "999"]),
    "light": pick(["00", "07", "19"], ["20", "99"]),
}
OULU_FIELDS = {
    "modality": pick(["VL", "NI"], ["XX"]),
    "light": pick(["Strong", "Weak", "Dark"], ["Bright"]),
    "subject": pick(["P001", "P002", "P003", "P080"], ["P1", "Q001"]),
    "expression": pick(["Happiness", "Anger", "Surprise", "Sadness", "happiness"], ["Contempt"]),
    "frame": pick(["000", "001", "002", "003", "010"], ["00\u00b2", "abc", "-1"]),
}


SUFFIXES = pick([".png", ".jpg", ".JPEG"], [".txt", ""])
SPLIT_ARGS = pick(["all"], ["train", "val", "test", "everything"])
SIZE_ARGS = pick([16], [64, 15, 0, 32.0, "64"])


@st.composite
def dataset_trees(draw, template: str, fields: dict):
    """``(valid, names, suffixes, split, size, broken)``: a folder of files to build and the loader's arguments."""
    valid = draw(st.booleans())
    names = draw(st.lists(names_from(template, fields, valid), min_size=1 if valid else 0, max_size=12))
    suffixes = draw(st.lists(SUFFIXES(valid), min_size=1, max_size=3))
    broken = False if valid else draw(st.booleans())
    return valid, names, suffixes, draw(SPLIT_ARGS(valid)), draw(SIZE_ARGS(valid)), broken


def build_tree(folder: Path, names, suffix_for, broken_images: bool) -> None:
    for i, name in enumerate(names):
        path = folder / f"{name}{suffix_for[i % len(suffix_for)]}"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(TINY_PNG if not (broken_images and i == 0) else TINY_PNG[:40])
        except (OSError, ValueError):  # a generated name the file system refuses is not the loader's input
            continue


def serve(entry: str, make_dataset, allowed: tuple[type, ...] = ()):
    """Build a dataset and read its first and last items: all of it must be clean errors or good items."""
    def build_and_read():
        data = make_dataset()
        return data, [data[0], data[len(data) - 1]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "skipped N files not named like ..." is expected here
        served = outcome(entry, build_and_read, LOADER_NAMES, allowed)
    if served is None:
        return
    data, items = served
    assert len(data) >= 1
    for item in items:
        assert item["image"].shape == (3, data.size, data.size) and torch.isfinite(item["image"]).all()
        assert item["image"].abs().max() <= 1 and 0 <= int(item["emotion"]) < 20
        assert torch.isfinite(item["yaw"]) or torch.isnan(item["yaw"])
        assert (torch.isnan(item["aus"]) | ((item["aus"] >= 0) & (item["aus"] <= 5))).all()


@FUZZ
@given(dataset_trees("Rafd{angle}_{subject}_{ethnicity}_{gender}_{emotion}_{gaze}", RAFD_FIELDS),
       st.sampled_from([None, None, None, 90, (0, 45), 30, "frontal"]))
def fuzz_rafd(tree, angles):
    valid, names, suffixes, split, size, broken = tree
    with tempfile.TemporaryDirectory() as folder:
        build_tree(Path(folder), names, suffixes, broken)
        serve("RaFD", lambda: RaFD(folder, split=split, size=size, angles=None if valid else angles))


@FUZZ
@given(dataset_trees("{subject}_{session}_{recording}_{camera}_{light}", MULTIPIE_FIELDS),
       st.sampled_from([None, None, "05_1", ["05_1", "08_1"], "99_9", 7]))
def fuzz_multipie(tree, cameras):
    valid, names, suffixes, split, size, broken = tree
    with tempfile.TemporaryDirectory() as folder:
        build_tree(Path(folder), names, suffixes, broken)
        serve("MultiPIE", lambda: MultiPIE(folder, split=split, size=size, cameras=None if valid else cameras))


@FUZZ
@given(dataset_trees("{modality}/{light}/{subject}/{expression}/{frame}", OULU_FIELDS),
       st.sampled_from([3, 3, 1, 0, -1]), st.sampled_from([0, 0, 1, 5, -2]), st.sampled_from(["Strong", None, "Bright"]))
def fuzz_oulu(tree, frames, neutral_frames, illumination):
    valid, names, suffixes, split, size, broken = tree
    if valid:
        frames, neutral_frames, illumination = max(frames, 1), max(neutral_frames, 0), None
    with tempfile.TemporaryDirectory() as folder:
        build_tree(Path(folder), names, suffixes, broken)
        serve("OuluCASIA", lambda: OuluCASIA(folder, split=split, size=size, frames=frames, modality=None,
                                             neutral_frames=neutral_frames, illumination=illumination))


CSV_CELLS = {
    "path": pick(["img/0.png", "img/1.png", " img/0.png "], ["img/missing.png", "", "img", "img/broken.png"]),
    "identity": pick(["1", "2", "3", "-4", "person_a", "Zoë"], ["", "99999999999999999999999", "\u00b2"]),
    "emotion": pick(["happy", "Sad", " neutral", "surprised"], ["joy", "", "\u00e9"]),
    "yaw": pick(["", "0", "-30.5", "nan"], ["inf", "1e400", "x", "1_0"]),
    "au": pick(["", "0", "2.5", "5", "nan"], ["5.01", "-1", "-inf", "abc"]),
}


@st.composite
def csv_manifests(draw):
    """``(valid, bytes)`` of a CSV manifest: columns in any order and case, rows short or long, some encoding."""
    valid = draw(st.booleans())
    optional = ["yaw", " Emotion ", *AU_COLUMNS[:3], "extra"]
    columns = draw(st.lists(st.sampled_from(optional + ([] if valid else ["path", "identity", "emotion", "PATH"])),
                            min_size=0, max_size=6, unique=True))
    if valid or draw(st.integers(0, 3)):  # mostly the required columns are there
        columns = ["path", "identity", "emotion"] + [c for c in columns if c.strip().lower() not in
                                                     ("path", "identity", "emotion")]
    rows = []
    for _ in range(draw(st.integers(1 if valid else 0, 8))):
        kinds = ["au" if c.startswith("au") else c.strip().lower() if c.strip().lower() in CSV_CELLS else "yaw"
                 for c in columns]
        cells = [draw(CSV_CELLS[kind](valid) if valid or draw(st.integers(0, 4)) else FIELD_TEXT) for kind in kinds]
        if not valid:
            length = draw(st.sampled_from([len(cells)] * 5 + [max(0, len(cells) - 1), 1, len(cells) + 1]))
            cells = (cells + ["extra"] * len(cells))[:length]
        rows.append(cells)
    quote = draw(st.booleans())
    text = "\n".join(",".join(f'"{c}"' if quote else c for c in row) for row in [columns] + rows) + "\n"
    encoding = draw(st.sampled_from(["utf-8", "utf-8-sig"] if valid else ["utf-8"] * 3 + ["latin-1", "utf-16"]))
    return text.encode(encoding, errors="replace")


@FUZZ
@given(csv_manifests(), SPLIT_ARGS(False), SIZE_ARGS(False), st.booleans())
def fuzz_csv_manifest(manifest, split, size, plain_arguments):
    split, size = ("all", 16) if plain_arguments else (split, size)
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        (root / "img").mkdir()
        for name in ("0.png", "1.png"):
            (root / "img" / name).write_bytes(TINY_PNG)
        (root / "img" / "broken.png").write_bytes(TINY_PNG[:40])
        (root / "faces.csv").write_bytes(manifest)
        # a path cell naming a missing file is a FileNotFoundError naming the line (documented)
        serve("CSVManifest", lambda: CSVManifest(root / "faces.csv", split=split, size=size),
              allowed=(FileNotFoundError,))


# ----------------------------------------------------------------------------------------- face alignment
ALIGN_NAMES = IMAGE_NAMES + ("face", "size", "eye_height", "eye_distance", "eyes", "fraction")


@functools.lru_cache(maxsize=1)
def astronaut_face() -> np.ndarray:
    """A real face (skimage's astronaut, cropped around her head), for inputs where a face is found."""
    from skimage import data

    return data.astronaut()[0:260, 120:340]


@st.composite
def align_inputs(draw):
    """``(image, size, eye_height, eye_distance)``: any image load_image reads, or the real face transformed."""
    if draw(st.booleans()):
        face = astronaut_face()
        scale = draw(st.sampled_from([0.25, 0.5, 0.75, 1.0, 1.5]))
        face = cv2.resize(face, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        if draw(st.booleans()):
            face = face[:, ::-1]
        gain = draw(st.sampled_from([1.0, 1.0, 0.3, 1.6]))
        image = np.clip(face.astype(np.float64) * gain, 0, 255).astype(np.uint8)
    else:
        image = draw(load_image_inputs())[1]
        if isinstance(image, tuple):  # an encoded file: the bytes are read through a path below
            image = None
    size = draw(st.sampled_from([64] * 6 + [32, 128, 16, 15, 0, -3, 64.0, True]))
    eye_height = draw(st.sampled_from([None] * 6 + [0.4, 0.0, 1.0, math.nan, math.inf, -0.2]))
    eye_distance = draw(st.sampled_from([None] * 6 + [0.3, 0.0, 1.5, math.nan]))
    return image, size, eye_height, eye_distance


@FUZZ
@given(align_inputs())
def fuzz_align_face(inputs):
    image, size, eye_height, eye_distance = inputs
    options = {k: v for k, v in (("eye_height", eye_height), ("eye_distance", eye_distance)) if v is not None}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # several faces, eyes estimated from the box
        aligned = outcome("align_face", lambda: align_face(image, size, **options), ALIGN_NAMES,
                          allowed=(NoFaceError,))
    if aligned is None:
        return
    assert aligned.crop.shape == (size, size, 3) and aligned.crop.dtype == np.uint8
    assert np.isfinite(aligned.transform).all() and np.isfinite(aligned.eyes).all()
    # the eyes land where the framing puts them
    mapped = aligned.eyes @ aligned.transform[:, :2].T + aligned.transform[:, 2]
    np.testing.assert_allclose(mapped[:, 1], options.get("eye_height", EYE_HEIGHT) * size - 0.5, atol=1e-6)


# ----------------------------------------------------------------------------------------- the tests
@pytest.mark.parametrize("entry, fuzz", [
    ("psnr", fuzz_psnr), ("ssim", fuzz_ssim), ("ms_ssim", fuzz_ms_ssim), ("warp", fuzz_warp),
    ("bilinear_sample", fuzz_bilinear_sample), ("upsample_flow", fuzz_upsample_flow),
    ("load_image", fuzz_load_image), ("RaFD", fuzz_rafd), ("MultiPIE", fuzz_multipie),
    ("OuluCASIA", fuzz_oulu), ("CSVManifest", fuzz_csv_manifest), ("align_face", fuzz_align_face),
])
def test_generated_input_ends_in_a_clean_error_or_a_right_answer(entry, fuzz):
    fuzz()
    assert_exercised(entry)
