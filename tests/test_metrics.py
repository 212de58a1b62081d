"""Tests of facelib.metrics: known cases, independent references (scikit-image, pytorch_msssim,
closed-form Gaussians), hand-computed cases and bad input (the protocol that runs them all on an
editor, facelib.evaluation.evaluate, is tested in tests/test_evaluation.py)."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import pytorch_msssim
import torch
import torch.nn.functional as F
from skimage.metrics import structural_similarity

from facelib import AU_CODES, metrics

torch.set_num_threads(1)


def images(batch=4, size=64, seed=0, channels=3):
    """Smooth random images in [-1, 1] with some fine texture (so SSIM is neither 0 nor 1)."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, channels, size // 8, size // 8, generator=generator) * 2 - 1
    smooth = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    return (0.8 * smooth + 0.2 * torch.rand(batch, channels, size, size, generator=generator) * 2 - 0.2).clamp(-1, 1)


def noisy(x, sigma, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return (x + sigma * torch.randn(x.shape, generator=generator)).clamp(-1, 1)


# ----------------------------------------------------------------------------------------- PSNR / SSIM
def test_identical_images_give_psnr_inf_and_ssim_one():
    x = images()
    assert metrics.psnr(x, x) == math.inf
    assert metrics.psnr(x, x, mask=torch.ones(4, 1, 64, 64)) == math.inf
    assert metrics.ssim(x, x) == pytest.approx(1.0, abs=1e-6)
    assert metrics.ms_ssim(x, x) == pytest.approx(1.0, abs=1e-6)


def test_psnr_of_known_gaussian_noise():
    generator = torch.Generator().manual_seed(0)
    target = torch.rand(8, 3, 128, 128, generator=generator) - 0.5  # in [-0.5, 0.5]: noise never clips
    sigma = 0.05
    pred = target + sigma * torch.randn(target.shape, generator=generator)
    expected = 10 * math.log10(2.0**2 / sigma**2)  # 32.04 dB
    assert metrics.psnr(pred, target) == pytest.approx(expected, abs=0.1)
    # images in [0, 1] with data_range 1: the same noise relative to the range halves -> +6.02 dB
    assert metrics.psnr((pred + 1) / 2, (target + 1) / 2, data_range=1.0) == pytest.approx(
        10 * math.log10(1 / (sigma / 2) ** 2), abs=0.1)


def test_masked_psnr_only_counts_masked_pixels():
    target = torch.zeros(2, 3, 8, 8)
    pred = target.clone()
    pred[:, :, :, 4:] = 0.5  # error only in the right half
    left = torch.zeros(2, 1, 8, 8)
    left[..., :4] = 1
    assert metrics.psnr(pred, target, mask=left) == math.inf
    assert metrics.psnr(pred, target, mask=1 - left) == pytest.approx(10 * math.log10(4 / 0.25), abs=1e-4)
    assert metrics.psnr(pred, target) == pytest.approx(10 * math.log10(4 / 0.125), abs=1e-4)
    per_image = metrics.psnr(pred, target, per_image=True)
    assert per_image.shape == (2,)


def skimage_ssim_on_unit_range(x, y):
    """The standard SSIM of each image pair: scikit-image on [0, 1] images, Wang et al.'s settings."""
    return torch.tensor([
        structural_similarity(((x[i] + 1) / 2).permute(1, 2, 0).double().numpy(),
                              ((y[i] + 1) / 2).permute(1, 2, 0).double().numpy(),
                              gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0,
                              channel_axis=2)
        for i in range(x.shape[0])
    ])


@pytest.mark.parametrize("sigma", [0.02, 0.1, 0.4])
@pytest.mark.parametrize("channels", [3, 1])
def test_ssim_matches_scikit_image_on_unit_range(sigma, channels):
    x = images(batch=3, size=48, channels=channels)
    y = noisy(x, sigma)
    ours = metrics.ssim(x, y, per_image=True).double()
    reference = skimage_ssim_on_unit_range(x, y)
    assert (ours - reference).abs().max() < 1e-5  # measured ~1e-8
    assert metrics.ssim(x, y) == pytest.approx(float(reference.mean()), abs=1e-5)


def test_ssim_is_the_standard_not_the_one_measured_on_minus_one_one():
    # SSIM's luminance term is not offset-invariant: measured on [-1, 1] with data_range=2 (the old
    # facelib behaviour), local means near 0 (mid-grey) make it collapse; the standard uses [0, 1]
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, 64, 64, generator=generator) * 0.4 - 0.2  # mid-grey texture
    y = (x + 0.1 * torch.randn(x.shape, generator=generator)).clamp(-1, 1)
    on_minus_one_one = structural_similarity(x[0].permute(1, 2, 0).double().numpy(),
                                             y[0].permute(1, 2, 0).double().numpy(), gaussian_weights=True,
                                             sigma=1.5, use_sample_covariance=False, data_range=2.0, channel_axis=2)
    standard = float(skimage_ssim_on_unit_range(x, y)[0])
    assert standard - on_minus_one_one > 0.1  # 0.750 vs 0.566
    assert metrics.ssim(x, y) == pytest.approx(standard, abs=1e-6)
    # and an image in [0, R] with data_range=R is the same measurement
    assert metrics.ssim((x + 1) / 2 * 255, (y + 1) / 2 * 255, data_range=255) == pytest.approx(standard, abs=1e-6)


def test_ssim_falls_with_noise():
    x = images()
    assert metrics.ssim(x, noisy(x, 0.05)) > metrics.ssim(x, noisy(x, 0.3)) > 0


def test_ms_ssim_with_five_scales_is_pytorch_msssim_on_unit_range():
    x = images(batch=2, size=176)
    y = noisy(x, 0.1)
    assert metrics.ms_ssim_scales(176) == 5
    expected = pytorch_msssim.ms_ssim((x.double() + 1) / 2, (y.double() + 1) / 2, data_range=1.0, size_average=False)
    assert (metrics.ms_ssim(x, y, per_image=True).double() - expected).abs().max() < 1e-6
    assert metrics.ms_ssim(x, y) == pytest.approx(float(expected.mean()), abs=1e-6)
    assert metrics.ms_ssim(x / 2 + 0.5, y / 2 + 0.5, data_range=1.0) == pytest.approx(float(expected.mean()), abs=1e-6)


def test_ms_ssim_small_images_use_fewer_scales():
    assert [metrics.ms_ssim_scales(s) for s in (16, 32, 64, 128, 160, 161)] == [1, 2, 3, 4, 4, 5]
    x = images(size=64)
    y = noisy(x, 0.1)
    # one scale is plain SSIM; more scales mix in coarser (here: less damaged) structure
    assert metrics.ms_ssim(x, y, scales=1) == pytest.approx(metrics.ssim(x, y), abs=1e-6)
    assert metrics.ms_ssim(x, y) > metrics.ms_ssim(x, y, scales=1)
    with pytest.raises(ValueError, match=r"scales must be in \[1, 3\]"):
        metrics.ms_ssim(x, y, scales=5)
    with pytest.raises(TypeError, match="scales must be an integer"):
        metrics.ms_ssim(x, y, scales=2.5)


def test_ms_ssim_documented_behaviour_below_five_scales():
    # 11 to 20 px: one scale, which is plain SSIM; under 11 px: a ValueError naming the window
    x = images(batch=2, size=16)
    y = noisy(x, 0.2)
    assert metrics.ms_ssim_scales(11) == metrics.ms_ssim_scales(20) == 1
    assert metrics.ms_ssim(x[..., :11, :13], y[..., :11, :13]) == pytest.approx(
        metrics.ssim(x[..., :11, :13], y[..., :11, :13]), abs=1e-6)
    for function in (metrics.ssim, metrics.ms_ssim):
        with pytest.raises(ValueError, match=r"at least 11x11 px .*got \(10, 16\)"):
            function(x[..., :10, :], y[..., :10, :])


# ----------------------------------------------------------------------------------------- Fréchet
def test_frechet_distance_closed_form_gaussians():
    mu_a, mu_b = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    var_a, var_b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 9.0])
    # commuting (diagonal) covariances: |mu_a - mu_b|^2 + sum (sqrt(var_a) - sqrt(var_b))^2
    expected = 5.0 + (1 + 1 + 0)
    assert metrics.frechet_distance_gaussians(mu_a, np.diag(var_a), mu_b, np.diag(var_b)) == pytest.approx(expected)


def test_frechet_distance_of_rank_deficient_covariances_takes_the_offset_not_an_error():
    # 10 samples in 64 dimensions: sqrtm of this product returns round-off as an imaginary part of
    # 0.006 (seed 1, found by search), which used to raise; it now gets pytorch-fid's eps * I offset
    from scipy import linalg

    rng = np.random.default_rng(1)
    rng.normal(size=(2, 6, 32))  # the search drew these first
    a, b = rng.normal(size=(10, 64)), rng.normal(size=(10, 64)) * 0.5 + 0.2
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    mu_a, mu_b = a.mean(0), b.mean(0)
    plain = linalg.sqrtm(cov_a @ cov_b)
    assert np.iscomplexobj(plain) and np.abs(plain.imag).max() > 1e-3 * max(1.0, np.abs(plain).max())
    offset = 1e-6 * np.eye(64)
    root = linalg.sqrtm((cov_a + offset) @ (cov_b + offset)).real
    expected = ((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(root)
    assert metrics.frechet_distance_gaussians(mu_a, cov_a, mu_b, cov_b) == pytest.approx(expected, rel=1e-6)


def test_frechet_distance_from_samples_of_isotropic_gaussians():
    generator = torch.Generator().manual_seed(0)
    dim, s_a, s_b = 4, 1.0, 2.0
    shift = torch.tensor([1.0, 0.0, -1.0, 0.5])
    a = s_a * torch.randn(20000, dim, generator=generator)
    b = shift + s_b * torch.randn(20000, dim, generator=generator)
    expected = float(shift @ shift) + dim * (s_a - s_b) ** 2  # 2.25 + 4
    assert metrics.frechet_distance(a, b) == pytest.approx(expected, rel=0.03)
    assert metrics.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)


def test_frechet_distance_with_fewer_samples_than_dimensions_is_finite_and_quiet():
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(20, 50, generator=generator), torch.randn(20, 50, generator=generator)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the singular covariance is handled, not warned about
        distance = metrics.frechet_distance(a, b)
    assert math.isfinite(distance) and distance > 0


# ----------------------------------------------------------------------------------------- AU table
def test_au_table_layout_and_values():
    generator = torch.Generator().manual_seed(0)
    true = 5 * torch.rand(50, 17, generator=generator)
    pred = true.clone()
    pred[:, 0] = 5 - true[:, 0]  # AU1 anti-correlated
    pred[:, 1] = (true[:, 1] + 0.5).clamp(max=5)
    table = metrics.au_mse_pcc(pred, true)
    assert list(table.index) == [f"AU{c}" for c in AU_CODES] + ["Avg"]
    assert list(table.columns) == ["MSE", "PCC"]
    assert table.loc["AU1", "PCC"] == pytest.approx(-1.0)
    assert table.loc["AU4", "MSE"] == 0 and table.loc["AU4", "PCC"] == pytest.approx(1.0)
    expected_mse = ((pred - true) ** 2).mean(0)
    assert table.loc["AU2", "MSE"] == pytest.approx(float(expected_mse[1]))
    assert table.loc["Avg", "MSE"] == pytest.approx(float(expected_mse.mean()))
    assert table.loc["Avg", "PCC"] == pytest.approx(table["PCC"].iloc[:-1].mean())


def test_au_table_constant_au_has_no_correlation():
    true = torch.rand(10, 17) * 5
    true[:, 16] = 0.0  # AU45 never active
    table = metrics.au_mse_pcc(true, true)
    assert np.isnan(table.loc["AU45", "PCC"])
    assert table.loc["Avg", "PCC"] == pytest.approx(1.0)  # averaged over the 16 AUs that have one


# ----------------------------------------------------------------------------------------- verification
def test_verification_separable_embeddings_score_one():
    generator = torch.Generator().manual_seed(0)
    identities = F.normalize(torch.randn(40, 16, generator=generator), dim=1)
    a = identities.repeat(2, 1)
    b = torch.cat([identities, identities.roll(1, 0)])  # 40 same pairs, 40 different pairs
    same = torch.cat([torch.ones(40, dtype=torch.bool), torch.zeros(40, dtype=torch.bool)])
    b = F.normalize(b + 0.01 * torch.randn(b.shape, generator=generator), dim=1)
    assert metrics.verification_accuracy(a, b, same) == 1.0
    threshold = metrics.best_verification_threshold(a, b, same)
    assert metrics.verification_accuracy(a, b, same, threshold=threshold) == 1.0
    assert metrics.verification_accuracy(a, b, same, threshold=1.5) == 0.5  # nothing is "same"


def test_verification_random_embeddings_are_at_chance():
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(2000, 32, generator=generator), torch.randn(2000, 32, generator=generator)
    same = torch.rand(2000, generator=generator) < 0.5
    assert metrics.verification_accuracy(a, b, same) == pytest.approx(0.5, abs=0.05)


# ----------------------------------------------------------------------------------------- beyond the papers
def test_flow_epe_hand_case():
    gt = torch.zeros(1, 2, 4, 4)
    flow = gt.clone()
    flow[:, 0, :, :2] = 3.0  # left half off by (3, 4): length 5
    flow[:, 1, :, :2] = 4.0
    assert metrics.flow_epe(flow, gt) == pytest.approx(2.5)
    left = torch.zeros(1, 1, 4, 4)
    left[..., :2] = 1
    assert metrics.flow_epe(flow, gt, mask=left) == pytest.approx(5.0)
    assert metrics.flow_epe(flow, gt, mask=1 - left) == 0.0


def test_mask_iou_hand_case():
    pred = torch.zeros(2, 1, 4, 4)
    target = torch.zeros(2, 1, 4, 4)
    pred[0, 0, :2] = 0.9  # 8 pixels
    target[0, 0, 1:3] = 1.0  # 8 pixels, 4 shared
    assert metrics.mask_iou(pred, target, per_image=True).tolist() == pytest.approx([4 / 12, 1.0])  # 2nd: both empty


def test_blur_lowers_sharpness():
    x = images(size=64)
    blurred = F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
    more_blurred = F.avg_pool2d(blurred, 5, stride=1, padding=2, count_include_pad=False)
    assert metrics.sharpness(x) > metrics.sharpness(blurred) > metrics.sharpness(more_blurred) > 0
    assert metrics.sharpness(torch.zeros(1, 3, 16, 16)) == 0.0


def test_latency_and_parameter_count():
    layer = torch.nn.Linear(3, 4)
    assert metrics.count_parameters(layer) == 16
    layer.bias.requires_grad_(False)
    assert metrics.count_parameters(layer, trainable_only=True) == 12
    ms = metrics.latency(layer, torch.randn(8, 3), warmup=1, repeats=3)
    assert 0 < ms < 1000


# ----------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("shape", [(1, 3, 0, 16), (1, 3, 16, 0), (2, 1, 0, 0)])
def test_images_without_pixels_get_a_value_error(shape):
    # used to crash with a bare RuntimeError from x.min() on an empty tensor
    empty = torch.zeros(shape)
    for function in (metrics.psnr, metrics.ssim, metrics.ms_ssim):
        with pytest.raises(ValueError, match=r"is empty .*at least 1x1"):
            function(empty, empty)


@pytest.mark.parametrize("data_range", [math.nan, math.inf, -math.inf, 0.0, -2.0])
def test_non_finite_or_non_positive_data_range_is_refused(data_range):
    # psnr used to return NaN for data_range=nan
    x = images(batch=1, size=16)
    for function in (metrics.psnr, metrics.ssim, metrics.ms_ssim):
        with pytest.raises(ValueError, match="data_range must be a finite positive number"):
            function(x, x, data_range=data_range)
    with pytest.raises(TypeError, match="data_range must be a positive number"):
        metrics.psnr(x, x, data_range="2")


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_images_get_a_value_error_not_a_nan(bad):
    x = images(batch=2, size=32)
    broken = x.clone()
    broken[1, 2, 5, 7] = bad
    for function in (metrics.psnr, metrics.ssim, metrics.ms_ssim):
        for pred, target in ((broken, x), (x, broken)):
            with pytest.raises(ValueError, match="1 NaN/inf values; only finite values are accepted"):
                function(pred, target)


def test_psnr_is_finite_for_extreme_data_ranges():
    # 10 log10(R^2 / MSE) would under/overflow to 0/0 or inf/inf; measured on [0, 1] it is exact
    x = images(batch=1, size=16) / 2 + 0.5
    y = noisy(x, 0.1).clamp(0, 1)
    reference = metrics.psnr(x, y, data_range=1.0)
    for data_range in (1e-300, 1e300):
        assert metrics.psnr(x.double() * data_range, y.double() * data_range, data_range=data_range) == \
            pytest.approx(reference, abs=1e-4)
    assert metrics.psnr(x.double() * 1e-300, x.double() * 1e-300, data_range=1e-300) == math.inf


def test_bad_input_gets_clear_errors():
    x = images(batch=2, size=32)
    with pytest.raises(ValueError, match="same shape"):
        metrics.psnr(x, x[:1])
    with pytest.raises(ValueError, match=r"outside the accepted range \[-1, 1\]"):
        metrics.ssim(x * 255, x)
    with pytest.raises(ValueError, match="NaN"):
        metrics.psnr(x.clone().fill_(float("nan")), x)
    with pytest.raises(ValueError, match=r"\[B, 1\|3, H, W\].*unsqueeze"):
        metrics.psnr(x[0], x[0])
    with pytest.raises(TypeError, match="float torch.Tensor.*int64"):
        metrics.psnr((x > 0).long(), (x > 0).long())
    with pytest.raises(ValueError, match="mask must be"):
        metrics.psnr(x, x, mask=torch.ones(2, 1, 16, 16))
    with pytest.raises(ValueError, match="mask is empty"):
        metrics.psnr(x, x, mask=torch.zeros(2, 1, 32, 32))
    with pytest.raises(ValueError, match=r"\[N, 17\]"):
        metrics.au_mse_pcc(torch.rand(5, 12), torch.rand(5, 12))
    with pytest.raises(ValueError, match=r"accepted is \[0, 5\]"):
        metrics.au_mse_pcc(torch.rand(5, 17) * 2 - 1, torch.rand(5, 17))
    with pytest.raises(ValueError, match="same feature size"):
        metrics.frechet_distance(torch.randn(10, 3), torch.randn(10, 4))
    with pytest.raises(TypeError, match="BoolTensor"):
        metrics.verification_accuracy(torch.randn(10, 4), torch.randn(10, 4), torch.ones(10))
    with pytest.raises(ValueError, match="one per pair"):
        metrics.verification_accuracy(torch.randn(10, 4), torch.randn(10, 4), torch.ones(9, dtype=torch.bool))
    with pytest.raises(ValueError, match="dx"):
        metrics.flow_epe(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 4))
    with pytest.raises(ValueError, match="sigmoid"):
        metrics.mask_iou(torch.randn(1, 1, 4, 4) * 5, torch.zeros(1, 1, 4, 4))
    with pytest.raises(ValueError, match="one label per image"):
        metrics.classification_accuracy(torch.nn.Flatten(), x, torch.zeros(3, dtype=torch.long))


# ----------------------------------------------------------------------------------------- LEED R / G / R+G
class MeanColourClassifier(torch.nn.Module):
    """A tiny classifier that can only see each channel's mean brightness."""

    def __init__(self, classes=3):
        super().__init__()
        self.head = torch.nn.Linear(3, classes)

    def features(self, x):
        return x.mean((2, 3))  # [B, 3]

    def forward(self, x):
        return self.head(4 * self.features(x))


def coloured(labels, size=16, seed=0):
    """Images whose channel ``label`` is bright: a class a mean-colour classifier can learn."""
    generator = torch.Generator().manual_seed(seed)
    x = 0.2 * torch.rand(labels.shape[0], 3, size, size, generator=generator) - 0.5
    x[torch.arange(labels.shape[0]), labels] += 1.0
    return x


def test_expression_accuracy_follows_leed_protocol():
    labels = torch.arange(60) % 3
    real, test = coloured(labels, seed=0), coloured(labels, seed=1)
    good_edits = coloured(labels, seed=2)
    wrong_labels = (labels + 1) % 3
    kwargs = dict(test=test, test_labels=labels, steps=150, batch_size=32, lr=0.05)
    good = metrics.expression_accuracy(MeanColourClassifier, real, good_edits, labels, labels, **kwargs)
    assert good == {"R": 1.0, "G": 1.0, "R+G": 1.0}
    # edits that show the wrong expression: G collapses; R is untouched (same classifier as before);
    # training on them (R+G) confuses the classifier on the real test images
    bad = metrics.expression_accuracy(MeanColourClassifier, real, good_edits, labels, wrong_labels, **kwargs)
    assert bad["R"] == 1.0 and bad["G"] == 0.0 and bad["R+G"] < 0.9
    # several editors' edits at once: R trained once, each editor's figures as if measured alone
    wrong_edits = coloured(wrong_labels, seed=2)
    both = metrics.expression_accuracy(MeanColourClassifier, real, {"good": good_edits, "wrong": wrong_edits}, labels,
                                       labels, **kwargs)
    assert both["good"] == good
    assert both["wrong"] == metrics.expression_accuracy(MeanColourClassifier, real, wrong_edits, labels, labels, **kwargs)
    with pytest.raises(ValueError, match="empty mapping"):
        metrics.expression_accuracy(MeanColourClassifier, real, {}, labels, labels, **kwargs)
    with pytest.raises(TypeError, match="factory"):
        metrics.expression_accuracy(MeanColourClassifier(), real, good_edits, labels, labels, **kwargs)
