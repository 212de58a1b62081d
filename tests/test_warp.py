"""Tests for facelib.warp: FVAE Eq. 5 by hand, the grid_sample fast path, flow utilities."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from facelib.warp import bilinear_sample, flow_to_rgb, pixel_grid, upsample_flow, warp


def _random_image(batch=2, channels=3, height=9, width=11, dtype=torch.float64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, channels, height, width, generator=generator, dtype=dtype) * 2 - 1


def _off_integer_flow(batch, height, width, scale, dtype=torch.float64, seed=1):
    """Random flow whose sample points stay >= 0.1 px away from integers (bilinear is not smooth there)."""
    generator = torch.Generator().manual_seed(seed)
    whole = torch.randint(-3, 4, (batch, 2, height, width), generator=generator).to(dtype)
    fraction = 0.1 + 0.8 * torch.rand(batch, 2, height, width, generator=generator, dtype=dtype)
    return (whole + fraction) * scale


def test_pixel_grid_holds_x_then_y():
    grid = pixel_grid(3, 4)
    assert grid.shape == (1, 2, 3, 4)
    assert grid[0, 0, 2, 3] == 3 and grid[0, 1, 2, 3] == 2


def test_identity_flow_returns_the_input():
    src = _random_image()
    assert torch.equal(bilinear_sample(src, pixel_grid(9, 11, dtype=torch.float64)), src)
    # grid_sample goes through normalised coordinates, so "exact" means float round-off.
    torch.testing.assert_close(warp(src, torch.zeros(2, 2, 9, 11, dtype=torch.float64)), src, rtol=0, atol=1e-12)
    src32 = src.float()
    torch.testing.assert_close(warp(src32, torch.zeros(2, 2, 9, 11)), src32, rtol=0, atol=1e-6)


@pytest.mark.parametrize("dx, dy", [(2, -1), (-3, 0), (0, 4), (1, 1)])
def test_integer_shift_equals_slicing(dx, dy):
    src = _random_image()
    flow = torch.zeros(2, 2, 9, 11, dtype=torch.float64)
    flow[:, 0], flow[:, 1] = dx, dy
    height, width = 9, 11
    expected = torch.zeros_like(src)  # zeros where y + dy or x + dx leaves the image
    ys, yd = slice(max(0, -dy), min(height, height - dy)), slice(max(0, dy), min(height, height + dy))
    xs, xd = slice(max(0, -dx), min(width, width - dx)), slice(max(0, dx), min(width, width + dx))
    expected[:, :, ys, xs] = src[:, :, yd, xd]
    for out in (warp(src, flow), bilinear_sample(src, pixel_grid(height, width, dtype=torch.float64) + flow)):
        torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)


def test_eq5_weights_on_a_hand_computed_point():
    src = torch.tensor([[[[0.0, 1.0], [2.0, 3.0]]]])
    coords = torch.tensor([0.25, 0.5]).view(1, 2, 1, 1)  # x = 0.25, y = 0.5
    # (1-.25)(1-.5)*0 + .25*(1-.5)*1 + (1-.25)*.5*2 + .25*.5*3 = 0 + .125 + .75 + .375
    assert bilinear_sample(src, coords).item() == pytest.approx(1.25)
    # Half a pixel outside on the left: the outside neighbour counts as zero.
    coords = torch.tensor([-0.5, 1.0]).view(1, 2, 1, 1)
    assert bilinear_sample(src, coords).item() == pytest.approx(0.5 * 2.0)
    coords = torch.tensor([1.5, 1.0]).view(1, 2, 1, 1)
    assert bilinear_sample(src, coords).item() == pytest.approx(0.5 * 3.0)


@pytest.mark.parametrize("dtype, atol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_warp_equals_bilinear_sample_on_random_flows(dtype, atol):
    src = _random_image(batch=4, height=64, width=64, dtype=dtype)
    generator = torch.Generator().manual_seed(3)
    flow = (torch.randn(4, 2, 64, 64, generator=generator, dtype=torch.float64) * 5).to(dtype)
    fast = warp(src, flow)
    by_hand = bilinear_sample(src, pixel_grid(64, 64, dtype=dtype) + flow)
    assert (fast - by_hand).abs().max().item() <= atol


def test_gradcheck_both_samplers_wrt_image_and_flow():
    src = _random_image(batch=1, channels=2, height=5, width=6).requires_grad_()
    flow = _off_integer_flow(1, 5, 6, scale=0.7).requires_grad_()
    grid = pixel_grid(5, 6, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda s, f: warp(s, f), (src, flow))
    assert torch.autograd.gradcheck(lambda s, f: bilinear_sample(s, grid + f), (src, flow))


def test_gradient_at_zero_flow_is_the_forward_difference_in_both_samplers():
    src = _random_image(batch=1, channels=1, height=5, width=6)
    flow = torch.zeros(1, 2, 5, 6, dtype=torch.float64, requires_grad=True)
    warp(src, flow).sum().backward()
    fast = flow.grad.clone()
    flow.grad = None
    bilinear_sample(src, pixel_grid(5, 6, dtype=torch.float64) + flow).sum().backward()
    torch.testing.assert_close(flow.grad, fast)
    # d out / d dx at an interior pixel is src[x + 1] - src[x]
    assert flow.grad[0, 0, 2, 2].item() == pytest.approx((src[0, 0, 2, 3] - src[0, 0, 2, 2]).item())


def test_upsampled_affine_flow_matches_the_analytic_field():
    low, high = 16, 64
    matrix = torch.tensor([[0.05, -0.12], [0.08, 0.03]], dtype=torch.float64)
    offset = torch.tensor([1.5, -0.75], dtype=torch.float64)

    def affine_flow(size, pixels_per_unit):
        # An affine field on the continuous image plane u in [0, 1] (edge to edge): flow(u) = (A u + b) in
        # units, drawn at a resolution where one unit spans `pixels_per_unit` pixels; pixel x (centre at
        # the integer x) covers [x, x + 1) / pixels_per_unit, so its centre is at u = (x + 0.5) / size.
        coords = (pixel_grid(size, size, dtype=torch.float64) + 0.5) / pixels_per_unit  # [1, 2, S, S] in units
        field = torch.einsum("ij,bjhw->bihw", matrix, coords) + offset.view(1, 2, 1, 1)
        return field * pixels_per_unit

    low_flow = affine_flow(low, low)
    expected = affine_flow(high, high)
    upsampled = upsample_flow(low_flow, high)
    interior = (slice(None), slice(None), slice(4, -4), slice(4, -4))
    assert (upsampled[interior] - expected[interior]).abs().max().item() <= 1e-4
    assert upsample_flow(low_flow, (high, 2 * high)).shape == (1, 2, high, 2 * high)


def test_upsampled_flow_warps_like_the_low_res_flow():
    # A constant 1-pixel shift at 16x16 is a 64/16 = 4-pixel shift at 64x64 (same image plane).
    flow = torch.zeros(1, 2, 16, 16)
    flow[:, 0] = 1.0
    assert torch.allclose(upsample_flow(flow, 64)[:, 0], torch.full((1, 64, 64), 4.0))


def test_upsampled_flow_matches_a_high_res_render_of_the_same_motion():
    # The image plane is shared edge to edge (as SynthFaces renders one face at any size): a rigid
    # motion of a smooth pattern by 0.8 low-res pixels, warped at 64 with the upsampled flow, matches
    # the pattern drawn moved at 64 directly.
    def pattern(size, shift_units=0.0):
        u = (pixel_grid(size, size, dtype=torch.float64) + 0.5) / size  # [1, 2, S, S] in [0, 1]
        x, y = u[:, :1] + shift_units, u[:, 1:]
        return torch.sin(6 * x) * torch.cos(5 * y)  # [1, 1, S, S]

    low, high, shift = 16, 64, 0.8 / 16  # the target shows the pattern sampled at u + shift
    flow_low = torch.zeros(1, 2, low, low, dtype=torch.float64)
    flow_low[:, 0] = 0.8
    warped = warp(pattern(high), upsample_flow(flow_low, high))
    interior = (slice(None), slice(None), slice(4, -8), slice(4, -8))
    assert (warped - pattern(high, shift))[interior].abs().max().item() < 2e-3


def test_flow_to_rgb_colour_wheel():
    assert torch.allclose(flow_to_rgb(torch.zeros(2, 4, 4)), torch.ones(3, 4, 4))  # zero flow is white
    right = flow_to_rgb(torch.tensor([1.0, 0.0]).view(2, 1, 1))
    assert torch.allclose(right.flatten(), torch.tensor([1.0, 0.0, 0.0]))  # +x is red
    half = flow_to_rgb(torch.tensor([1.0, 0.0]).view(2, 1, 1), max_magnitude=2.0)
    assert torch.allclose(half.flatten(), torch.tensor([1.0, 0.5, 0.5]))  # half length: half saturated
    rng = torch.Generator().manual_seed(0)
    images = flow_to_rgb(torch.randn(3, 2, 8, 8, generator=rng) * 10)
    assert images.shape == (3, 3, 8, 8) and images.min() >= 0 and images.max() <= 1


@pytest.mark.parametrize(
    "call, error, words",
    [
        (lambda: warp(torch.rand(1, 3, 8, 8), torch.zeros(1, 2, 4, 4)), ValueError, "upsample_flow"),
        (lambda: warp(torch.rand(1, 3, 8, 8), torch.zeros(1, 3, 8, 8)), ValueError, "2 channels"),
        (lambda: warp(torch.rand(3, 8, 8), torch.zeros(1, 2, 8, 8)), ValueError, "[B, C, H, W]"),
        (lambda: warp(torch.rand(1, 3, 8, 8), torch.zeros(1, 2, 8, 8, dtype=torch.float64)), TypeError, "dtype"),
        (lambda: warp(torch.rand(1, 3, 8, 8), torch.zeros(1, 2, 8, 8, dtype=torch.long)), TypeError, "floating"),
        (lambda: warp(torch.rand(2, 3, 8, 8), torch.zeros(3, 2, 8, 8)), ValueError, "batch"),
        (lambda: warp(torch.rand(1, 3, 8, 8), torch.full((1, 2, 8, 8), float("nan"))), ValueError, "finite"),
        (lambda: warp(torch.rand(1, 3, 8, 8).numpy(), torch.zeros(1, 2, 8, 8)), TypeError, "torch.Tensor"),
        (lambda: bilinear_sample(torch.rand(1, 3, 8, 8), torch.full((1, 2, 2, 2), float("inf"))), ValueError,
         "finite"),
        (lambda: upsample_flow(torch.zeros(1, 2, 8, 8), 2.5), TypeError, "(H, W)"),
        (lambda: flow_to_rgb(torch.zeros(1, 2, 8, 8), max_magnitude=0), ValueError, "positive"),
    ],
)
def test_bad_input_gets_a_clear_error(call, error, words):
    with pytest.raises(error) as info:
        call()
    assert words in str(info.value)


def test_device_mismatch_is_named():
    # The meta device holds no data, so this runs on any machine.
    with pytest.raises(ValueError, match="device"):
        warp(torch.rand(1, 3, 8, 8), torch.zeros(1, 2, 8, 8, device="meta"))


# ----------------------------------------------------------------------------- known faults (issue 10)


@pytest.mark.parametrize("size", [(2, 2), (3, 2), (2, 7), (64, 64)])
@pytest.mark.parametrize("value", [3e38, -3e38, 3.4e38, 1e30, 1e6])
def test_huge_finite_flow_samples_zero_like_bilinear_sample(size, value):
    # warp used to return NaN for a 3e38 px flow on small images (grid_sample overflowed to inf)
    src = _random_image(1, 3, *size, dtype=torch.float32)
    flow = torch.zeros(1, 2, *size)
    flow[:, 0] = value
    flow[:, 1, :, : size[1] // 2] = -value  # half the pixels also move in y
    reference = bilinear_sample(src, pixel_grid(*size) + flow)
    out = warp(src, flow)
    assert torch.isfinite(out).all()
    assert torch.equal(out, torch.zeros_like(out)) and torch.equal(reference, out)


def test_clamping_far_samples_keeps_the_gradient_of_near_ones():
    # a flow that sends some pixels far away (clamped path) and keeps others inside: same as bilinear_sample
    src = _random_image(1, 2, 6, 7).requires_grad_(True)
    flow = _off_integer_flow(1, 6, 7, 0.5)
    flow[..., 0, :] = 1e9
    flow.requires_grad_(True)
    out = warp(src, flow)
    reference = bilinear_sample(src, pixel_grid(6, 7, dtype=torch.float64) + flow)
    assert torch.allclose(out, reference, atol=1e-12)
    grads = torch.autograd.grad(out.sum(), (src, flow))
    reference_grads = torch.autograd.grad(reference.sum(), (src, flow))
    for ours, theirs in zip(grads, reference_grads):
        assert torch.allclose(ours, theirs, atol=1e-10)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_src_is_refused_not_propagated(bad):
    src = _random_image(1, 3, 8, 8, dtype=torch.float32)
    src[0, 1, 3, 4] = bad
    for call in (lambda: warp(src, torch.zeros(1, 2, 8, 8)), lambda: bilinear_sample(src, pixel_grid(8, 8))):
        with pytest.raises(ValueError, match="src contains NaN or infinite values; only finite pixel values"):
            call()


def test_upsample_flow_refuses_flows_that_would_overflow():
    # upsample_flow used to turn a finite 3e38 px flow into inf
    with pytest.raises(ValueError, match=r"up to 3e\+38 px; rescaled by 2 they overflow torch.float32"):
        upsample_flow(torch.full((1, 2, 4, 4), 3e38), 8)
    downsampled = upsample_flow(torch.full((1, 2, 4, 4), 3e38), 2)  # halving cannot overflow
    assert torch.isfinite(downsampled).all()
    with pytest.raises(ValueError, match="finite pixel displacements"):
        upsample_flow(torch.full((1, 2, 4, 4), float("nan")), 8)


def test_empty_batches_and_numpy_sizes_are_served():
    assert warp(torch.rand(0, 3, 4, 4), torch.zeros(0, 2, 4, 4)).shape == (0, 3, 4, 4)
    assert bilinear_sample(torch.rand(0, 3, 4, 4), torch.zeros(0, 2, 4, 4)).shape == (0, 3, 4, 4)  # used to crash
    assert bilinear_sample(torch.rand(1, 3, 4, 4), torch.zeros(1, 2, 0, 4)).shape == (1, 3, 0, 4)
    assert upsample_flow(torch.ones(1, 2, 4, 4), (np.int64(8), 6)).shape == (1, 2, 8, 6)
