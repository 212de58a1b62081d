"""Tests for facelib.losses: hand-computed cases, a naive Eq. 6 reference, the gradient penalty by hand."""
from __future__ import annotations

import math

import pytest
import torch

from facelib import losses


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- shared pieces


def test_total_variation_by_hand():
    x = torch.tensor([[[[0.0, 1.0, 3.0], [2.0, 2.0, 2.0]]]])  # [1, 1, 2, 3]
    # vertical: (2-0)^2 + (2-1)^2 + (2-3)^2 = 6; horizontal: 1 + 4 + 0 + 0 = 5
    assert losses.total_variation(x).item() == pytest.approx(11.0)
    assert losses.dftnet_flow_tv(torch.cat([x, 2 * x], 1)).item() == pytest.approx(11.0 * 5)
    # ExprGAN's public-code normalisation on an RGB image in [-1, 1] (x / 3 in every channel):
    # 3 channels * (6 / 9 / (2 * 2) + 5 / 9 / (2 * 3))
    image = (x / 3).repeat(1, 3, 1, 1)
    assert losses.exprgan_total_variation(image).item() == pytest.approx(3 * (6 / 9 / 4 + 5 / 9 / 6))
    with pytest.raises(ValueError, match=r"outside the accepted range \[-1, 1\]"):
        losses.exprgan_total_variation(x.repeat(1, 3, 1, 1))  # an image, so the range is checked


def test_gradient_penalty_against_manual_autograd():
    critic = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Tanh(), torch.nn.Conv2d(4, 1, 3))
    real = torch.rand(3, 3, 8, 8, generator=_gen(1))
    fake = torch.rand(3, 3, 8, 8, generator=_gen(2))
    penalty = losses.gradient_penalty(critic, real, fake, generator=_gen(3))

    eps = torch.rand(3, 1, 1, 1, generator=_gen(3))
    points = (eps * real + (1 - eps) * fake).requires_grad_(True)
    scores = critic(points)  # [3, 1, 4, 4] patch scores
    manual = 0.0
    for i in range(3):
        (grad,) = torch.autograd.grad(scores[i].sum(), points, retain_graph=True)
        manual += (grad[i].norm() - 1).item() ** 2 / 3
    assert penalty.item() == pytest.approx(manual, rel=1e-5)

    penalty.backward()  # create_graph=True: the penalty trains the critic
    # every weight shapes the input gradient (the last bias does not, so it gets none)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in critic.parameters() if p.ndim > 1)


def test_gradient_penalty_at_real_samples_and_on_latent_codes():
    weight = torch.tensor([3.0, 4.0])
    real = torch.randn(5, 2, generator=_gen(4))
    # A linear critic on codes has gradient `weight` everywhere: (||w|| - 1)^2 = (5 - 1)^2
    assert losses.gradient_penalty(lambda c: c @ weight, real).item() == pytest.approx(16.0)
    assert losses.gradient_penalty(lambda c: c @ weight, real, torch.zeros(5, 2)).item() == pytest.approx(16.0)


def test_wgan_and_gan_terms():
    real, fake = torch.tensor([1.0, 3.0]), torch.tensor([-1.0, 0.0])
    assert losses.wgan_critic_loss(real, fake, torch.tensor(0.5)).item() == pytest.approx(-0.5 - 2.0 + 10 * 0.5)
    assert losses.leed_latent_critic(real, fake, torch.tensor(0.0), gp_weight=1).item() == pytest.approx(-2.5)
    assert losses.eggan_image_critic(real, fake, torch.tensor(1.0), gp_weight=2).item() == pytest.approx(-0.5)
    assert losses.wgan_generator_loss(fake).item() == pytest.approx(0.5)
    assert losses.leed_latent_generator(fake).item() == pytest.approx(0.5)
    assert losses.eggan_image_generator(fake).item() == pytest.approx(0.5)
    zero = torch.zeros(4)
    # D = sigmoid(0) = 1/2 everywhere: -log(1/2) - log(1 - 1/2)
    for d_loss in (losses.exprgan_latent_discriminator, losses.exprgan_image_discriminator,
                   losses.eggan_latent_discriminator):
        assert d_loss(zero, zero).item() == pytest.approx(2 * math.log(2))
    for g_loss in (losses.exprgan_latent_encoder, losses.exprgan_image_generator, losses.eggan_latent_encoder):
        assert g_loss(torch.full((4,), 2.0)).item() == pytest.approx(-math.log(torch.sigmoid(torch.tensor(2.0)).item()))


def test_gaussian_nll_q_losses():
    code = torch.tensor([[1.0, -1.0]])
    mean = torch.tensor([[0.0, 0.0]])
    unit = 2 * 0.5 * math.log(2 * math.pi) + 0.5 * (1 + 1)
    assert losses.exprgan_q_loss(code, mean).item() == pytest.approx(unit)
    logvar = torch.tensor([[math.log(4.0), 0.0]])
    by_hand = 0.5 * (math.log(2 * math.pi) + math.log(4) + 1 / 4) + 0.5 * (math.log(2 * math.pi) + 1)
    assert losses.leed_q_loss(code, mean, logvar).item() == pytest.approx(by_hand)


# ----------------------------------------------------------------------------- FVAE


def test_fvae_kl_and_reconstruction_by_hand():
    mu = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    logvar = torch.tensor([[0.0, math.log(2.0)], [0.0, 0.0]])
    # sample 0: -(1 + 0 - 1 - 1) - (1 + log 2 - 0 - 2) = 1 + 1 - log 2; sample 1: 0
    assert losses.fvae_kl(mu, logvar).item() == pytest.approx((2 - math.log(2)) / 2)
    pred, target = torch.zeros(2, 3, 2, 2), torch.ones(2, 3, 2, 2)
    assert losses.fvae_reconstruction(pred, target).item() == pytest.approx(12.0)


def _naive_coherence(flow, target, alpha, window):
    """FVAE Eq. 6 straight from the page: a double loop over pixels i and neighbours j."""
    batch, _, height, width = flow.shape
    radius = window // 2
    total = 0.0
    for b in range(batch):
        for y in range(height):
            for x in range(width):
                for yy in range(max(0, y - radius), min(height, y + radius + 1)):
                    for xx in range(max(0, x - radius), min(width, x + radius + 1)):
                        flow_term = ((flow[b, :, y, x] - flow[b, :, yy, xx]) ** 2).sum()
                        colour = ((target[b, :, y, x] - target[b, :, yy, xx]) ** 2).sum()
                        spatial = (y - yy) ** 2 + (x - xx) ** 2
                        total += float(flow_term * torch.exp(-(alpha * colour + spatial)))
    return total / batch


@pytest.mark.parametrize("alpha, window", [(10.0, 7), (0.5, 7), (2.0, 3)])
def test_flow_coherence_matches_a_naive_double_loop_on_9x9(alpha, window):
    flow = torch.randn(2, 2, 9, 9, generator=_gen(5), dtype=torch.float64)
    target = torch.rand(2, 3, 9, 9, generator=_gen(6), dtype=torch.float64) * 2 - 1
    fast = losses.fvae_flow_coherence(flow, target, alpha=alpha, window=window)
    assert fast.item() == pytest.approx(_naive_coherence(flow, target, alpha, window), rel=1e-10)


def test_flow_coherence_zero_for_constant_flow_and_cut_by_edges():
    target = -torch.ones(1, 3, 8, 8)
    target[..., 4:] = 1.0  # a vertical edge
    constant = torch.full((1, 2, 8, 8), 3.0)
    assert losses.fvae_flow_coherence(constant, target).item() == 0.0
    split = torch.zeros(1, 2, 8, 8)
    split[:, 0, :, 4:] = 1.0  # flow jumps exactly at the colour edge
    across = torch.zeros(1, 2, 8, 8)
    across[:, 0, :, 2:] = 1.0  # same jump, inside a flat region
    assert losses.fvae_flow_coherence(split, target) < 1e-6 * losses.fvae_flow_coherence(across, target)
    flow = torch.randn(1, 2, 8, 8, requires_grad=True)
    losses.fvae_flow_coherence(flow, target).backward()
    assert flow.grad.abs().sum() > 0


def test_fvae_confidence_label_and_loss():
    target = torch.zeros(1, 3, 1, 2)
    pred = torch.tensor([[[[0.0, 0.1]], [[0.0, 0.1]], [[0.0, 0.1]]]])
    label = losses.fvae_confidence_label(pred, target, beta=0.03)
    assert label.shape == (1, 1, 1, 2)
    assert label.flatten().tolist() == pytest.approx([1.0, math.exp(-1.0)])
    logits = torch.tensor([[[[0.0, 2.0]]]])
    m = torch.sigmoid(logits)
    by_hand = -(label * m.log() + (1 - label) * (1 - m).log()).sum()
    assert losses.fvae_confidence_loss(logits, label).item() == pytest.approx(by_hand.item(), rel=1e-6)


# ----------------------------------------------------------------------------- ExprGAN, DFT-Net


def _two_layer_features(x):
    return [x, torch.nn.functional.avg_pool2d(x, 2)]


def test_exprgan_pixel_and_identity_by_hand():
    image = torch.zeros(1, 1, 4, 4)
    generated = torch.zeros(1, 1, 4, 4)
    generated[..., :2, :2] = 1.0  # one 2x2 block of ones
    assert losses.exprgan_pixel(generated, image).item() == pytest.approx(4 / 16)
    # layer 0: mean |diff| = 4/16, spatial 16; layer 1 (2x2 pooled): one cell of 1 -> mean 1/4, spatial 4
    expected = 1.0 * (4 / 16) / 16 + 2.0 * (1 / 4) / 4
    value = losses.exprgan_identity(generated, image, _two_layer_features, layer_weights=[1.0, 2.0])
    assert value.item() == pytest.approx(expected)


def test_dftnet_eq_7_and_8_by_hand_on_ganimations_code_scale():
    predicted, aus = torch.tensor([[0.5, 0.0], [1.0, 1.0]]), torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    # Eq. 7 as written: sum over AUs, mean over images = (0.25 + 1.0) / 2; the code's scale divides it by
    # the number of AUs (its MSE's mean) and again by the batch size: / (2 AUs * 2 images)
    as_written = ((0.5 - 0.0) ** 2 + 0.0 ** 2 + 0.0 ** 2 + (1.0 - 0.0) ** 2) / 2
    assert losses.au_regression_loss(predicted, aus).item() == pytest.approx(as_written / (2 * 2))
    source, cycled = torch.zeros(2, 3, 2, 2), torch.full((2, 3, 2, 2), -0.5)
    assert losses.cycle_loss(source, cycled).item() == pytest.approx(0.5)  # Eq. 8: mean |-0.5|
    with pytest.raises(ValueError, match="same shape"):
        losses.au_regression_loss(predicted, aus[:, :1])
    attention = torch.tensor([[[[0.2, 0.6]]]])
    assert losses.dftnet_attention(attention).item() == pytest.approx(-0.4)


# ----------------------------------------------------------------------------- LEED


def test_leed_terms_by_hand():
    a, b = torch.tensor([[1.0, 2.0]]), torch.tensor([[1.0, 0.0]])
    assert losses.leed_expression(a, b).item() == pytest.approx(4.0)
    assert losses.leed_identity(a, b).item() == pytest.approx(4.0)
    identity_code, expression = torch.tensor([[1.0, 1.0], [0.0, 0.0]]), torch.tensor([[2.0, 0.0], [2.0, 2.0]])
    interpolated = torch.tensor([[2.0, 1.0], [0.0, 0.0]])  # exact for sample 0 at alpha = 0.5
    alpha = torch.tensor([0.5, 0.5])
    assert losses.leed_interpolation(interpolated, identity_code, expression, alpha).item() == pytest.approx(1.0)
    with_adv = losses.leed_interpolation(interpolated, identity_code, expression, 0.5, torch.tensor([2.0, 0.0]))
    assert with_adv.item() == pytest.approx(1.0 - 1.0)
    reference = torch.tensor([[1.0, 0.0]])
    # v_R = (1, 0); v_I parallel -> distance 0, orthogonal -> 1, opposite -> 2
    assert losses.leed_siamese(reference, 0 * reference, 3 * reference, 0 * reference).item() == pytest.approx(0.0)
    assert losses.leed_siamese(reference, 0 * reference, torch.tensor([[0.0, 1.0]]), 0 * reference).item() == \
        pytest.approx(1.0)
    assert losses.leed_siamese(reference, 0 * reference, -reference, 0 * reference).item() == pytest.approx(2.0)


def test_perceptual_losses_by_hand_and_frozen_reference():
    image = torch.zeros(1, 1, 4, 4)
    decoded = torch.ones(1, 1, 4, 4, requires_grad=True)
    # layer 0: MSE 1; layer 1: MSE 1
    loss = losses.leed_perceptual(decoded, image, _two_layer_features)
    assert loss.item() == pytest.approx(2.0)
    loss.backward()
    assert decoded.grad.abs().sum() > 0
    assert losses.leed_perceptual(image, image, _two_layer_features).item() == 0.0
    # EGGAN Eq. 5 at layer 1: edited (all ones -> 1) + reconstruction (all 0.5 -> 0.25)
    value = losses.eggan_perceptual(torch.ones(1, 1, 4, 4), torch.full((1, 1, 4, 4), 0.5), image,
                                    _two_layer_features, layer=1)
    assert value.item() == pytest.approx(1.25)


# ----------------------------------------------------------------------------- EGGAN


def test_eggan_au_levels_round_to_nearest_of_six():
    aus = torch.tensor([[0.0, 0.49, 0.5, 2.5, 4.6, 5.0]])
    assert losses.eggan_au_levels(aus).tolist() == [[0, 0, 1, 3, 5, 5]]
    assert losses.eggan_au_levels(aus / 5, max_intensity=1.0).tolist() == [[0, 0, 1, 3, 5, 5]]


def test_eggan_au_intensity_and_identity_cross_entropy():
    logits = torch.zeros(2, 17, 6)
    aus = torch.zeros(2, 17)
    # uniform prediction over 6 levels: log 6 per AU, summed over 17 AUs
    assert losses.eggan_au_intensity(logits, aus).item() == pytest.approx(17 * math.log(6))
    logits[:, :, 0] = 100.0  # confident and right for level 0
    assert losses.eggan_au_intensity(logits, aus).item() == pytest.approx(0.0, abs=1e-6)
    identity_logits = torch.tensor([[0.0, math.log(3.0)]])
    assert losses.eggan_identity(identity_logits, torch.tensor([1])).item() == pytest.approx(-math.log(3 / 4))


def test_eggan_reconstruction_is_zero_for_identical_images_and_grows_with_error():
    image = torch.rand(2, 3, 64, 64, generator=_gen(7)) * 2 - 1
    assert losses.eggan_reconstruction(image, image).item() == pytest.approx(0.0, abs=1e-6)
    noisy = (image + 0.2 * torch.randn(2, 3, 64, 64, generator=_gen(8))).clamp(-1, 1)
    worse = (image + 0.6 * torch.randn(2, 3, 64, 64, generator=_gen(8))).clamp(-1, 1)
    assert 0 < losses.eggan_reconstruction(noisy, image) < losses.eggan_reconstruction(worse, image)
    l1_only = losses.eggan_reconstruction(noisy, image, ms_ssim_weight=0.0)
    assert l1_only.item() == pytest.approx((noisy - image).abs().mean().item())


@pytest.mark.parametrize("size", [16, 64, 128])
def test_eggan_reconstruction_is_one_minus_the_reported_ms_ssim(size):
    # One MS-SSIM: the loss's term is 1 - facelib.metrics.ms_ssim (same scales, same 11 px window);
    # the loss used to shrink the window to keep 5 scales (3 px at 64x64) and disagree with the metric.
    from facelib import metrics

    image = torch.rand(2, 3, size, size, generator=_gen(9)) * 2 - 1
    blurred = torch.nn.functional.avg_pool2d(image, 3, stride=1, padding=1, count_include_pad=False)
    reconstructed = blurred.clone().requires_grad_(True)
    term = losses.eggan_reconstruction(reconstructed, image, l1_weight=0.0)
    assert term.item() == pytest.approx(1 - metrics.ms_ssim(blurred, image), abs=1e-5)
    term.backward()
    assert reconstructed.grad is not None and torch.isfinite(reconstructed.grad).all()
    assert reconstructed.grad.abs().sum() > 0


def test_eggan_reconstruction_gradient_is_finite_for_anticorrelated_images():
    # negative contrast-structure factors are cut to 0 before the power (relu(cs) ** w, whose
    # derivative at 0 is infinite): training on such a pair must still get finite gradients
    image = torch.rand(1, 3, 32, 32, generator=_gen(10)) * 2 - 1
    reconstructed = (-image).clone().requires_grad_(True)
    losses.eggan_reconstruction(reconstructed, image).backward()
    assert torch.isfinite(reconstructed.grad).all()


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "call, error, words",
    [
        (lambda: losses.fvae_reconstruction(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 5)), ValueError,
         "same shape"),
        (lambda: losses.fvae_flow_coherence(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8)), ValueError,
         "[B, 2, H, W]"),
        (lambda: losses.fvae_flow_coherence(torch.zeros(1, 2, 8, 8), torch.zeros(1, 3, 9, 9)), ValueError,
         "share batch size"),
        (lambda: losses.fvae_flow_coherence(torch.zeros(1, 2, 8, 8), torch.zeros(1, 3, 8, 8), window=6),
         ValueError, "odd"),
        (lambda: losses.fvae_flow_coherence(torch.zeros(1, 2, 8, 8), torch.zeros(1, 3, 8, 8, dtype=torch.float64)),
         TypeError, "dtype"),
        (lambda: losses.fvae_confidence_label(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 4), beta=0), ValueError,
         "beta"),
        (lambda: losses.eggan_au_intensity(torch.zeros(2, 17, 5), torch.zeros(2, 17)), ValueError, "levels + 1"),
        (lambda: losses.eggan_identity(torch.zeros(2, 4), torch.zeros(2)), ValueError, "long"),
        (lambda: losses.eggan_reconstruction(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8)), ValueError,
         "at least 11x11"),
        (lambda: losses.eggan_reconstruction(torch.zeros(1, 3, 16, 16), 255 * torch.ones(1, 3, 16, 16)), ValueError,
         "outside the accepted range"),
        (lambda: losses.fvae_confidence_label(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4))[0], ValueError,
         "unsqueeze"),
        (lambda: losses.eggan_perceptual(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4),
                                         _two_layer_features, layer=2), ValueError, "2 layers"),
        (lambda: losses.leed_perceptual(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4), "vgg"), TypeError,
         "callable"),
        (lambda: losses.exprgan_identity(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4), _two_layer_features,
                                         layer_weights=[1.0]), ValueError, "2 layers"),
        (lambda: losses.gradient_penalty(lambda x: (x.sum(), 0), torch.zeros(2, 3)), TypeError, "Tensor"),
        (lambda: losses.fvae_kl([0.0], torch.zeros(1)), TypeError, "torch.Tensor"),
    ],
)
def test_bad_input_gets_a_clear_error(call, error, words):
    with pytest.raises(error) as info:
        call()
    assert words in str(info.value)
