"""Every loss term of the five papers, named ``<paper>_<what>`` and annotated with its equation.

Papers (full citations in docs/reference_notes.md): FVAE (Yeh et al. 2016), ExprGAN (Ding et al. 2018),
DFT-Net (Wang et al. 2019), LEED (Wu & Lu 2020), EGGAN (Tang et al. 2020).

Conventions shared by all functions:

- Every loss returns a scalar tensor averaged over the batch (the papers' sums or expectations over
  the data set, taken per mini-batch). Within one sample each function follows its paper's written
  norm, unless a comment says the public code's reduction is used because the paper's published
  weights were tuned for it.
- Images are ``[B, 3, H, W]`` in ``[-1, 1]``; flows are backward pixel flows ``[B, 2, H, W]``.
- Perceptual and identity losses take ``features``: any callable mapping an image batch to a list of
  feature maps (e.g. ``facelib.models.evaluators.PerceptualFeatures``); the reference image's
  features are computed without gradients (the feature network is frozen and the reference is data).
- Adversarial losses take critic/discriminator outputs (scores or logits), so a network with
  several heads runs once per batch. The WGAN-GP critics take the value of :func:`gradient_penalty`.

Shared pieces (one implementation serves every paper that uses them): :func:`gradient_penalty`,
:func:`total_variation`, :func:`wgan_critic_loss` / :func:`wgan_generator_loss`,
:func:`gan_discriminator_loss` / :func:`gan_generator_loss`, :func:`gaussian_nll`, and GANimation's AU and cycle
terms (:func:`au_regression_loss`, :func:`cycle_loss`), which DFT-Net restates as its Eq. 7 and 8.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from facelib.conventions import check_images
from facelib.metrics import ms_ssim_per_image

FeatureNetwork = Callable[[Tensor], Sequence[Tensor]]

__all__ = [
    # shared
    "gradient_penalty", "total_variation", "wgan_critic_loss", "wgan_generator_loss",
    "gan_discriminator_loss", "gan_generator_loss", "hinge_critic_loss", "r1_penalty", "gaussian_nll",
    "au_regression_loss", "cycle_loss",
    # FVAE
    "fvae_kl", "fvae_reconstruction", "fvae_flow_coherence", "fvae_confidence_label", "fvae_confidence_loss",
    # ExprGAN
    "exprgan_q_loss", "exprgan_pixel", "exprgan_identity", "exprgan_latent_discriminator",
    "exprgan_latent_encoder", "exprgan_image_discriminator", "exprgan_image_generator", "exprgan_total_variation",
    # DFT-Net
    "dftnet_flow_tv", "dftnet_attention",
    # LEED
    "leed_expression", "leed_q_loss", "leed_interpolation", "leed_identity", "leed_siamese", "leed_latent_critic",
    "leed_latent_generator", "leed_perceptual",
    # EGGAN
    "eggan_latent_discriminator", "eggan_latent_encoder", "eggan_image_critic", "eggan_image_generator",
    "eggan_au_levels", "eggan_au_intensity", "eggan_identity", "eggan_perceptual", "eggan_reconstruction",
]


# ============================================================================ input checks


def _tensor(name: str, value, min_ndim: int = 1) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.ndim < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} dimensions (batch first), got shape {tuple(value.shape)}")
    return value


def _same_shape(name_a: str, a, name_b: str, b, min_ndim: int = 1) -> None:
    _tensor(name_a, a, min_ndim)
    _tensor(name_b, b, min_ndim)
    if a.shape != b.shape:
        raise ValueError(f"{name_a} and {name_b} must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")


def _maps(name: str, value) -> Tensor:
    """A batch of maps ``[B, C, H, W]`` of any values (a flow, a mask or an image): only the shape is checked.

    Images proper are checked with :func:`facelib.conventions.check_images` (RGB in [-1, 1]).
    """
    _tensor(name, value)
    if value.ndim != 4:
        raise ValueError(f"{name} must be a batch of maps [B, C, H, W], got shape {tuple(value.shape)}")
    return value


def _per_sample_sum(x: Tensor) -> Tensor:
    """Sum over everything but the batch dimension, then average over the batch."""
    return x.reshape(x.shape[0], -1).sum(dim=1).mean()


# ============================================================================ shared pieces


def gradient_penalty(critic: Callable[[Tensor], Tensor], real: Tensor, fake: Tensor | None = None, *,
                     generator: torch.Generator | None = None) -> Tensor:
    """WGAN-GP gradient penalty ``E[(||grad_x D(x)||_2 - 1)^2]`` (Gulrajani et al. 2017).

    Used by DFT-Net Eq. 6, LEED Eq. 12 and EGGAN Eq. 2.

    Args:
        critic: maps a batch to its scores (any shape with the batch first; a PatchGAN map is fine).
        real: real samples ``[B, ...]`` (images or latent codes).
        fake: generated samples of the same shape. Given: the penalty is taken at random points
            ``eps * real + (1 - eps) * fake`` with ``eps ~ U(0, 1)`` per sample (DFT-Net, LEED).
            ``None``: at the real samples themselves (EGGAN's "soft" penalty on data).
        generator: optional torch.Generator for the interpolation weights.

    The gradient is that of the critic's summed output, as StarGAN's and GANimation's code do
    (``grad_outputs`` of ones); for one score per sample this is the plain gradient. The graph is
    kept (``create_graph=True``) so the penalty trains the critic.
    """
    _tensor("real", real)
    if fake is None:
        points = real.detach()
    else:
        _same_shape("real", real, "fake", fake)
        shape = (real.shape[0],) + (1,) * (real.ndim - 1)
        eps = torch.rand(shape, generator=generator, dtype=real.dtype, device=real.device)
        points = eps * real.detach() + (1 - eps) * fake.detach()
    points.requires_grad_(True)
    scores = critic(points)
    if not isinstance(scores, Tensor):
        raise TypeError(f"critic must return a Tensor of scores, got {type(scores).__name__}; "
                        "wrap a multi-head critic, e.g. lambda x: D(x)[0]")
    (grad,) = torch.autograd.grad(scores.sum(), points, create_graph=True)
    grad_norm = grad.reshape(grad.shape[0], -1).norm(2, dim=1)  # [B]
    # WGAN-GP: (||grad D(x~)||_2 - 1)^2, averaged over the batch
    return (grad_norm - 1).square().mean()


def total_variation(x: Tensor) -> Tensor:
    """Squared total variation ``sum_{i,j} (x_{i+1,j} - x_{i,j})^2 + (x_{i,j+1} - x_{i,j})^2`` per sample.

    ``x`` is ``[B, C, H, W]`` (an image or a flow); summed over channels and pixels, averaged over the batch.
    Used by DFT-Net Eq. 9 (on the flow) and ExprGAN's L_tv (on the image).
    """
    vertical, horizontal = _squared_differences(_maps("x", x))
    return vertical + horizontal


def _squared_differences(x: Tensor) -> tuple[Tensor, Tensor]:
    """Batch-mean sums of squared vertical and horizontal forward differences of ``[B, C, H, W]``."""
    vertical = _per_sample_sum((x[:, :, 1:, :] - x[:, :, :-1, :]).square())
    horizontal = _per_sample_sum((x[:, :, :, 1:] - x[:, :, :, :-1]).square())
    return vertical, horizontal


def wgan_critic_loss(real_scores: Tensor, fake_scores: Tensor, penalty: Tensor | float = 0.0,
                     gp_weight: float = 10.0) -> Tensor:
    """Wasserstein critic loss with gradient penalty: ``E[D(fake)] - E[D(real)] + gp_weight * penalty``."""
    _tensor("real_scores", real_scores)
    _tensor("fake_scores", fake_scores)
    return fake_scores.mean() - real_scores.mean() + gp_weight * penalty


def wgan_generator_loss(fake_scores: Tensor) -> Tensor:
    """Wasserstein generator loss ``-E[D(fake)]``."""
    return -_tensor("fake_scores", fake_scores).mean()


def gan_discriminator_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """``-E[log D(real)] - E[log(1 - D(fake))]`` with ``D = sigmoid(logits)`` (stable BCE on logits)."""
    _tensor("real_logits", real_logits)
    _tensor("fake_logits", fake_logits)
    return (F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
            + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits)))


def gan_generator_loss(fake_logits: Tensor) -> Tensor:
    """Non-saturating generator loss ``-E[log D(fake)]``.

    The papers write the minimax ``min E[log(1 - D(fake))]``; like their public code (and Goodfellow
    et al.'s advice) the generator maximises ``log D(fake)`` instead, which has useful early gradients.
    """
    _tensor("fake_logits", fake_logits)
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


def hinge_critic_loss(real_scores: Tensor, fake_scores: Tensor) -> Tensor:
    """Hinge loss of the critic, ``E[relu(1 - D(real))] + E[relu(1 + D(fake))]`` (Lim & Ye 2017; SAGAN, FastGAN)."""
    _tensor("real_scores", real_scores)
    _tensor("fake_scores", fake_scores)
    return F.relu(1 - real_scores).mean() + F.relu(1 + fake_scores).mean()


def r1_penalty(critic: Callable[[Tensor], Tensor], real: Tensor) -> Tensor:
    """R1 (Mescheder et al. 2018): ``E[||grad_x D(x)||^2]`` at the real samples, for the critic to minimise.

    The critic's summed output is differentiated (one score or a patch map per sample); the graph is
    kept so the penalty trains the critic. StarGAN v2 weights it by 1 (times 0.5), StyleGAN2 by gamma / 2.
    """
    points = _tensor("real", real).detach().requires_grad_(True)
    scores = critic(points)
    if not isinstance(scores, Tensor):
        raise TypeError(f"critic must return a Tensor of scores, got {type(scores).__name__}; "
                        "wrap a multi-head critic, e.g. lambda x: D(x)[0]")
    (grad,) = torch.autograd.grad(scores.sum(), points, create_graph=True)
    return grad.reshape(grad.shape[0], -1).square().sum(1).mean()


def au_regression_loss(predicted: Tensor, aus01: Tensor) -> Tensor:
    """GANimation Eq. 4 = DFT-Net Eq. 7, one term: ``||D_y(I) - y||_2^2``, on GANimation's public code's scale.

    ``[B, 17]`` AUs in [0, 1] units. The critic gets it on real images with their own AUs, the generator
    on its edit with the target AUs. The public code takes ``MSELoss`` (the mean over AUs and images) and
    divides it again by the batch size; lambda_cond = 4000 (both papers' weight) is tuned on that scale.
    The equation as written (summed over AUs, averaged over images) is 17 * B times larger.
    """
    _same_shape("predicted", predicted, "aus01", aus01, min_ndim=2)
    # GANimation Eq. 4 / DFT-Net Eq. 7 (the code's scale): mean squared error over AUs and images, / B
    return F.mse_loss(predicted, aus01) / len(predicted)


def cycle_loss(source: Tensor, reconstructed: Tensor) -> Tensor:
    """GANimation Eq. 5 = DFT-Net Eq. 8: ``||G(G(X_s | y_t) | y_s) - X_s||_1``, the mean absolute error
    (the public code's reduction; lambda_cyc = 10 is tuned on it)."""
    _same_shape("source", source, "reconstructed", reconstructed)
    # GANimation Eq. 5 / DFT-Net Eq. 8: cycle consistency, L1 (mean over pixels and images)
    return (reconstructed - source).abs().mean()


def gaussian_nll(value: Tensor, mean: Tensor, logvar: Tensor | None = None) -> Tensor:
    """``-log N(value; mean, exp(logvar))`` summed over features, averaged over the batch.

    ``logvar=None`` means unit variance, where the NLL is ``0.5 ||value - mean||^2`` plus a constant
    (ExprGAN's public code trains Q with that squared error). Used by ExprGAN Eq. 5 and LEED Eq. 3.
    """
    _same_shape("value", value, "mean", mean)
    if logvar is None:
        logvar = torch.zeros_like(mean)
    else:
        _same_shape("mean", mean, "logvar", logvar)
    # -log N(c; mu, sigma^2) = 0.5 * (log 2 pi + log sigma^2 + (c - mu)^2 / sigma^2)
    nll = 0.5 * (math.log(2 * math.pi) + logvar + (value - mean).square() * torch.exp(-logvar))
    return _per_sample_sum(nll)


def _paired_features(features: FeatureNetwork, generated: Tensor, reference: Tensor) -> list[tuple[Tensor, Tensor]]:
    """Run the feature network on both batches; the reference branch carries no gradient."""
    if not callable(features):
        raise TypeError(f"features must be a callable returning a list of feature maps, got {type(features).__name__}")
    _same_shape("generated", generated, "reference", reference)
    ours = features(generated)
    with torch.no_grad():
        theirs = features(reference)
    if not isinstance(ours, (list, tuple)) or not all(isinstance(f, Tensor) for f in ours):
        raise TypeError(f"features must return a list of tensors, got {type(ours).__name__}")
    if len(ours) != len(theirs) or any(a.shape != b.shape for a, b in zip(ours, theirs)):
        raise ValueError("features returned different layers for the two batches: "
                         f"{[tuple(f.shape) for f in ours]} vs {[tuple(f.shape) for f in theirs]}")
    return list(zip(ours, theirs))


# ============================================================================ FVAE (Yeh et al. 2016)


def fvae_kl(mu: Tensor, logvar: Tensor) -> Tensor:
    """FVAE Eq. 3: L_prior = -sum_k (1 + log sigma_k^2 - mu_k^2 - sigma_k^2).

    ``mu`` and ``logvar`` (= log sigma^2) are ``[B, ...]``. As written in the paper this is twice the
    usual KL(q || N(0, I)) (no 1/2); lambda_1 = 0.003 of Eq. 1 was tuned for this form.
    """
    _same_shape("mu", mu, "logvar", logvar)
    # FVAE Eq. 3: -sum_k (1 + log sigma^2 - mu^2 - sigma^2)
    return _per_sample_sum(-(1 + logvar - mu.square() - logvar.exp()))


def fvae_reconstruction(pred: Tensor, target: Tensor) -> Tensor:
    """FVAE Eq. 4: L_reconstruct = ||T - g(S, Z(T))||_2^2, summed over pixels and channels."""
    _same_shape("pred", pred, "target", target)
    # FVAE Eq. 4: ||T - g(S, Z(T))||_2^2
    return _per_sample_sum((target - pred).square())


#: Eq. 6's alpha when the caller gives none (the paper gives no value). With colours in [-1, 1], a pair
#: of pixels differing by 0.5 in one channel keeps exp(-10 * 0.25) = 8% of its weight: edges cut the link.
FVAE_COHERENCE_ALPHA = 10.0


def fvae_flow_coherence(flow: Tensor, target: Tensor, alpha: float = FVAE_COHERENCE_ALPHA, window: int = 7) -> Tensor:
    """FVAE Eq. 6: bilateral flow coherence over a ``window x window`` neighbourhood (7 in the paper).

    ``L_flow = sum_i sum_{j in N(i)} ||F_i - F_j||^2 exp(-(alpha ||T_i - T_j||^2 + ||i - j||^2))``

    Args:
        flow: ``[B, 2, H, W]`` pixel flow F.
        target: ``[B, C, H, W]`` target image T whose colours decide which neighbours must agree.
        alpha: colour sensitivity of the bilateral weight (the paper gives no value; see
            ``FVAE_COHERENCE_ALPHA``).
        window: odd neighbourhood size; neighbours outside the image are skipped.

    Returns the sum over pixels i and neighbours j (ordered pairs, as written), averaged over the batch.

    Each unordered pair {i, j} appears twice with the same term, so the code visits the half of the
    offsets (dy, dx) that come "after" the centre and doubles the sum: 24 shifted-slice passes for 7x7,
    no loop over pixels. The weights carry no gradient unless ``target`` requires one.
    """
    _maps("flow", flow)
    check_images(target, "target")
    if flow.shape[1] != 2:
        raise ValueError(f"flow must be [B, 2, H, W], got shape {tuple(flow.shape)}")
    if flow.shape[0] != target.shape[0] or flow.shape[-2:] != target.shape[-2:]:
        raise ValueError(f"flow {tuple(flow.shape)} and target {tuple(target.shape)} must share batch size, H and W")
    if flow.dtype != target.dtype:
        raise TypeError(f"flow is {flow.dtype} but target is {target.dtype}; they must share one floating dtype")
    if flow.device != target.device:
        raise ValueError(f"flow is on {flow.device} but target is on {target.device}; move both to one device")
    if not isinstance(window, int) or window < 1 or window % 2 == 0:
        raise ValueError(f"window must be a positive odd int (7 in the paper), got {window!r}")
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")
    radius = window // 2
    height, width = flow.shape[-2:]
    scaled_target = target * math.sqrt(alpha)  # alpha ||T_i - T_j||^2 = ||sqrt(alpha) T_i - sqrt(alpha) T_j||^2
    total = flow.new_zeros(())
    for dy in range(radius + 1):
        for dx in range(-radius, radius + 1):
            if (dy == 0 and dx <= 0) or dy >= height or abs(dx) >= width:
                continue  # the centre, the mirrored half, or a neighbour that never fits in the image
            rows, cols = height - dy, width - abs(dx)
            left, right = max(0, -dx), max(0, dx)
            with torch.set_grad_enabled(torch.is_grad_enabled() and target.requires_grad):
                colour = (scaled_target[:, :, :rows, left:left + cols]
                          - scaled_target[:, :, dy:dy + rows, right:right + cols]).square_().sum(1)
                # bilateral weight exp(-(alpha ||T_i - T_j||^2 + ||i - j||^2)), [B, rows, cols]
                weight = colour.add_(dy * dy + dx * dx).neg_().exp_()
            motion = flow[:, :, :rows, left:left + cols] - flow[:, :, dy:dy + rows, right:right + cols]
            # FVAE Eq. 6: ||F_i - F_j||^2 * weight, for this offset j - i = (dx, dy)
            total = total + (motion * motion * weight.unsqueeze(1)).sum()
    # Both orders (i, j) and (j, i) of every pair; mean over the batch.
    return 2 * total / flow.shape[0]


#: Eq. 7's beta when the caller gives none (the paper only asks that y lie in [0, 1]): a per-pixel
#: squared RGB error of 0.1 (about 0.18 per channel in [-1, 1] units) gives the label exp(-1).
FVAE_CONFIDENCE_BETA = 0.1


def fvae_confidence_label(pred: Tensor, target: Tensor, beta: float = FVAE_CONFIDENCE_BETA) -> Tensor:
    """FVAE Eq. 7: soft label ``y = exp(-||T - g(S, Z(T))||_2^2 / beta)`` per pixel, ``[B, 1, H, W]``.

    The squared error is summed over colour channels; the label carries no gradient (it is a target).
    """
    _same_shape("pred", check_images(pred, "pred"), "target", check_images(target, "target"))
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    # FVAE Eq. 7: y = exp(-||T - g||^2 / beta)
    return torch.exp(-(target - pred).detach().square().sum(dim=1, keepdim=True) / beta)


def fvae_confidence_loss(mask_logits: Tensor, label: Tensor) -> Tensor:
    """FVAE Eq. 8: ``-sum_i y_i log M_i + (1 - y_i) log(1 - M_i)`` with ``M = sigmoid(mask_logits)``.

    ``mask_logits`` and ``label`` are ``[B, 1, H, W]``; summed over pixels, averaged over the batch.
    Taking logits keeps log(M) finite where the mask saturates.
    """
    _same_shape("mask_logits", mask_logits, "label", label)
    # FVAE Eq. 8: per-pixel binary cross-entropy against the soft label y
    return _per_sample_sum(F.binary_cross_entropy_with_logits(mask_logits, label, reduction="none"))


# ============================================================================ ExprGAN (Ding et al. 2018)


def exprgan_q_loss(code: Tensor, q_mean: Tensor, q_logvar: Tensor | None = None) -> Tensor:
    """ExprGAN Eq. 5: ``L_Q = -E[log Q(c | x_hat, y)]`` with Q a factored Gaussian (Implementation Details).

    ``code`` is the expression code c given to the decoder ``[B, K*d]``; ``q_mean`` / ``q_logvar`` are
    Q's prediction from the generated image (``q_logvar=None``: unit variance, i.e. the public code's MSE).
    """
    # ExprGAN Eq. 5: -log Q(c | x_hat, y), Q = N(q_mean, exp(q_logvar))
    return gaussian_nll(code, q_mean, q_logvar)


def exprgan_pixel(generated: Tensor, image: Tensor) -> Tensor:
    """ExprGAN Eq. 6: ``L_pixel = L1(G_dec(G_enc(x), c), x)``, the mean absolute error (as the public code)."""
    _same_shape("generated", generated, "image", image)
    # ExprGAN Eq. 6: L1 between the reconstruction and the input
    return (generated - image).abs().mean()


def exprgan_identity(generated: Tensor, image: Tensor, features: FeatureNetwork,
                     layer_weights: Sequence[float] | None = None) -> Tensor:
    """ExprGAN Eq. 7: ``L_id = sum_l beta_l L1(phi_l(x_hat), phi_l(x))`` on a face network's feature maps.

    ``features`` returns the maps phi_l (the paper: VGG-Face conv1_2 ... conv5_2; here any frozen
    network, e.g. ``PerceptualFeatures``). As in the public code each layer's mean absolute difference
    is divided by its spatial size H_l * W_l. ``layer_weights`` are the beta_l (default all 1).
    """
    pairs = _paired_features(features, generated, image)
    if layer_weights is None:
        layer_weights = [1.0] * len(pairs)
    if len(layer_weights) != len(pairs):
        raise ValueError(f"layer_weights has {len(layer_weights)} entries but features returned {len(pairs)} layers")
    loss = generated.new_zeros(())
    for beta, (ours, theirs) in zip(layer_weights, pairs):
        spatial = ours.shape[-1] * ours.shape[-2] if ours.ndim >= 4 else 1
        # ExprGAN Eq. 7: beta_l * L1(phi_l(x_hat), phi_l(x)), divided by the layer's H_l * W_l (public code)
        loss = loss + beta * (ours - theirs).abs().mean() / spatial
    return loss


def exprgan_latent_discriminator(prior_logits: Tensor, encoded_logits: Tensor) -> Tensor:
    """ExprGAN Eq. 8, D_z's side: tell prior samples z ~ U(-1, 1) (real) from codes G_enc(x) (fake)."""
    # ExprGAN Eq. 8: max_{D_z} E[log D_z(z)] + E[log(1 - D_z(G_enc(x)))]
    return gan_discriminator_loss(prior_logits, encoded_logits)


def exprgan_latent_encoder(encoded_logits: Tensor) -> Tensor:
    """ExprGAN Eq. 8, the encoder's side: make D_z take G_enc(x) for a prior sample (non-saturating)."""
    # ExprGAN Eq. 8: min_{G_enc} -E[log D_z(G_enc(x))]
    return gan_generator_loss(encoded_logits)


def exprgan_image_discriminator(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """ExprGAN Eq. 9, D_img's side: real pairs (x, y) against generated pairs (x_hat, y)."""
    # ExprGAN Eq. 9: max_{D_img} E[log D_img(x, y)] + E[log(1 - D_img(x_hat, y))]
    return gan_discriminator_loss(real_logits, fake_logits)


def exprgan_image_generator(fake_logits: Tensor) -> Tensor:
    """ExprGAN Eq. 9, the generator's side (non-saturating, as the public code)."""
    # ExprGAN Eq. 9: min_G -E[log D_img(x_hat, y)]
    return gan_generator_loss(fake_logits)


def exprgan_total_variation(image: Tensor) -> Tensor:
    """ExprGAN's L_tv (Eq. 10, Mahendran & Vedaldi 2015) on the generated image.

    The paper gives no formula; the public code takes half the squared differences along each axis
    divided by that axis' length: ``sum(dy^2) / (2 H) + sum(dx^2) / (2 W)``, averaged over the batch.
    """
    vertical, horizontal = _squared_differences(check_images(image, "image"))
    height, width = image.shape[-2:]
    # ExprGAN L_tv: squared total variation, normalised by the image side as in the public code
    return vertical / (2 * height) + horizontal / (2 * width)


# ============================================================================ DFT-Net (Wang et al. 2019)


def dftnet_flow_tv(flow: Tensor) -> Tensor:
    """DFT-Net Eq. 9: ``sum_{i,j} (Phi_{i+1,j} - Phi_{i,j})^2 + (Phi_{i,j+1} - Phi_{i,j})^2`` on the flow."""
    # DFT-Net Eq. 9: squared total variation of the flow field, summed over pixels
    return total_variation(flow)


def dftnet_attention(attention: Tensor) -> Tensor:
    """DFT-Net Eq. 10: ``L_att = -E[||A||_1]`` on the attention mask ``[B, 1, H, W]`` in [0, 1].

    In DFT-Net's Eq. 5 ``X_t = (1 - A) B + A X_a``, A weights the *warped* image, so this term pushes
    the generator to use the flow (the paper: the flow "can easily saturate to 0"). The norm is taken
    as the mean over pixels (GANimation's attention regulariser; the paper's lambda_att = 1 is on that
    scale); this is the opposite sign of GANimation's term, whose A weights the untouched input.
    """
    _tensor("attention", attention)
    # DFT-Net Eq. 10: -||A||_1
    return -attention.abs().mean()


# ============================================================================ LEED (Wu & Lu 2020)


def leed_expression(extracted: Tensor, pseudo_label: Tensor) -> Tensor:
    """LEED Eq. 2: ``||Delta exp_RB - Delta exp*_RB||^2``, with the pseudo label ``C_RB - C_RN`` (Eq. 1)."""
    _same_shape("extracted", extracted, "pseudo_label", pseudo_label)
    # LEED Eq. 2: squared distance to the latent displacement of Eq. 1
    return _per_sample_sum((extracted - pseudo_label).square())


def leed_q_loss(expression: Tensor, q_mean: Tensor, q_logvar: Tensor | None = None) -> Tensor:
    """LEED Eq. 3: ``L_Q = -E[log Q(Delta exp_RB | F_RB)]`` with Q a factored Gaussian on the
    classifier features F_RB = Psi(R_B) (``q_logvar=None``: unit variance)."""
    # LEED Eq. 3: -log Q(Delta exp | F), Q = N(q_mean, exp(q_logvar))
    return gaussian_nll(expression, q_mean, q_logvar)


def leed_interpolation(interpolated: Tensor, identity_code: Tensor, expression: Tensor, alpha: Tensor | float,
                       fake_scores: Tensor | None = None) -> Tensor:
    """LEED Eq. 6: ``L_interp = L_adv + ||I(C_IN, alpha Delta exp) - (C_IN + alpha Delta exp)||^2``.

    ``interpolated`` is the interpolator's output ``I(C_IN, alpha Delta exp)``; ``alpha`` a number or
    ``[B]`` in [0, 1]. ``fake_scores``: the latent critic's scores of ``interpolated``; given, Eq. 13's
    adversarial term is added.
    """
    _same_shape("interpolated", interpolated, "identity_code", identity_code, min_ndim=2)
    _same_shape("identity_code", identity_code, "expression", expression, min_ndim=2)
    alpha = torch.as_tensor(alpha, dtype=expression.dtype, device=expression.device)
    if alpha.ndim == 1:
        alpha = alpha.view(-1, *([1] * (expression.ndim - 1)))
    # LEED Eq. 6: distance to the linear interpolation C_IN + alpha * Delta exp (Eq. 5)
    loss = _per_sample_sum((interpolated - (identity_code + alpha * expression)).square())
    if fake_scores is not None:
        loss = loss + leed_latent_generator(fake_scores)
    return loss


def leed_identity(recovered: Tensor, code: Tensor) -> Tensor:
    """LEED Eq. 7: ``||I(C_IN, Delta exp_IA) - C_IA||^2``: the interpolator must give back the input's code."""
    _same_shape("recovered", recovered, "code", code)
    # LEED Eq. 7: squared distance to the input's own latent code
    return _per_sample_sum((recovered - code).square())


def leed_siamese(reference_expressive: Tensor, reference_neutral: Tensor, synthesized_expressive: Tensor,
                 synthesized_neutral: Tensor) -> Tensor:
    """LEED Eq. 9-11: ``Dist(v_R, v_I)`` with ``v_R = S(R_B) - S(R_N)``, ``v_I = S(I_B) - S(I_N)``.

    Inputs are the siamese network's embeddings ``[B, D]``. Dist is the cosine distance
    ``1 - cos(v_R, v_I)`` (the paper adopts cosine similarity), averaged over the batch.
    """
    _same_shape("reference_expressive", reference_expressive, "reference_neutral", reference_neutral, 2)
    _same_shape("synthesized_expressive", synthesized_expressive, "synthesized_neutral", synthesized_neutral, 2)
    _same_shape("reference_expressive", reference_expressive, "synthesized_expressive", synthesized_expressive, 2)
    # LEED Eq. 9 and 10: expression transform vectors
    v_reference = reference_expressive - reference_neutral
    v_synthesized = synthesized_expressive - synthesized_neutral
    # LEED Eq. 11: cosine distance between the two transform vectors
    return (1 - F.cosine_similarity(v_reference.flatten(1), v_synthesized.flatten(1), dim=1)).mean()


def leed_latent_critic(real_scores: Tensor, fake_scores: Tensor, penalty: Tensor, gp_weight: float = 10.0) -> Tensor:
    """LEED Eq. 12: the latent critic D separates real codes C = E(I) from interpolated codes C_hat.

    ``E[D(C_hat)] - E[D(C)] + lambda_gp * GP`` with ``penalty = gradient_penalty(D, codes, interpolated)``.
    The paper writes log D(.) inside the expectations, but it adopts WGAN-GP, whose critic outputs
    unbounded scores (a log is undefined for negative scores), so the scores are used directly.
    """
    # LEED Eq. 12: WGAN-GP critic loss on latent codes
    return wgan_critic_loss(real_scores, fake_scores, penalty, gp_weight)


def leed_latent_generator(fake_scores: Tensor) -> Tensor:
    """LEED Eq. 13: ``-E[D(C_hat)]`` for the encoder and interpolator (scores, not log D; see Eq. 12)."""
    # LEED Eq. 13: the encoder and interpolator minimise -E[D(C_hat)]
    return wgan_generator_loss(fake_scores)


def leed_perceptual(decoded: Tensor, image: Tensor, features: FeatureNetwork) -> Tensor:
    """LEED Eq. 14-15: ``E ||Phi(D(C)) - Phi(I)||^2`` (Eq. 14 trains the decoder, Eq. 15 the encoder).

    Phi is a frozen feature network (the paper: ImageNet VGG; here e.g. ``PerceptualFeatures``);
    each layer's squared distance is normalised by its size as in Johnson et al.'s perceptual loss
    (a mean squared error), and the layers are summed.
    """
    loss = decoded.new_zeros(())
    for ours, theirs in _paired_features(features, decoded, image):
        # LEED Eq. 14/15: ||Phi(D(C)) - Phi(I)||^2 / (C_l H_l W_l)
        loss = loss + F.mse_loss(ours, theirs)
    return loss


# ============================================================================ EGGAN (2020)


def eggan_latent_discriminator(prior_logits: Tensor, encoded_logits: Tensor) -> Tensor:
    """EGGAN Eq. 1, D_z's side: prior samples z ~ N(mu, sigma) (real) against codes E(I) (fake)."""
    # EGGAN Eq. 1: max_{D_z} E[log D_z(z)] + E[log(1 - D_z(E(I)))]
    return gan_discriminator_loss(prior_logits, encoded_logits)


def eggan_latent_encoder(encoded_logits: Tensor) -> Tensor:
    """EGGAN Eq. 1, the encoder's side (non-saturating)."""
    # EGGAN Eq. 1: min_E -E[log D_z(E(I))]
    return gan_generator_loss(encoded_logits)


def eggan_image_critic(real_scores: Tensor, fake_scores: Tensor, penalty: Tensor, gp_weight: float = 10.0) -> Tensor:
    """EGGAN Eq. 2, the image critic's side, WGAN-GP with the penalty taken at real images.

    ``penalty = gradient_penalty(D_img, real)`` (no ``fake``: the paper's "soft" penalty on samples
    from the data). As for LEED, the paper writes log D but uses WGAN-GP scores.
    """
    # EGGAN Eq. 2: E[D_img(G(l|u))] - E[D_img(I)] + lambda_gp E[(||grad D_img(I)||_2 - 1)^2]
    return wgan_critic_loss(real_scores, fake_scores, penalty, gp_weight)


def eggan_image_generator(fake_scores: Tensor) -> Tensor:
    """EGGAN Eq. 2, the generator's side: ``-E[D_img(G(l_i|u_t))]``."""
    # EGGAN Eq. 2: the generator minimises -E[D_img(G(l | u_t))]
    return wgan_generator_loss(fake_scores)


def eggan_au_levels(aus: Tensor, levels: int = 5, max_intensity: float = 5.0) -> Tensor:
    """EGGAN Sec. 3.3: round each AU intensity to the nearest of ``levels + 1`` classes {0, ..., m}.

    ``aus`` are intensities in [0, max_intensity] (facelib's convention: [0, 5], m = 5, so the level
    is the intensity rounded, halves up); returns a long tensor of the same shape.
    """
    _tensor("aus", aus)
    if not (isinstance(levels, int) and levels >= 1):
        raise ValueError(f"levels (the paper's m) must be a positive int, got {levels!r}")
    # EGGAN Sec. 3.3: |u| rounded to the nearest integer level in {0, ..., m}
    return torch.floor(aus.detach() / max_intensity * levels + 0.5).clamp(0, levels).long()


def eggan_au_intensity(logits: Tensor, aus: Tensor, levels: int = 5, max_intensity: float = 5.0) -> Tensor:
    """EGGAN Eq. 3: ``-sum_i sum_q 1[q = round(u_i)] log C_exp^(i,q)(I)``, the AU intensity-level loss.

    ``logits`` ``[B, 17, m + 1]`` from the expression classifier, ``aus`` ``[B, 17]`` continuous
    intensities (quantised by :func:`eggan_au_levels`). Cross-entropy per AU, summed over AUs,
    averaged over the batch.
    """
    _tensor("logits", logits, 3)
    _tensor("aus", aus, 2)
    if logits.shape[:-1] != aus.shape or logits.shape[-1] != levels + 1:
        raise ValueError(f"logits must be [B, n_aus, levels + 1] = {tuple(aus.shape) + (levels + 1,)} for aus "
                         f"{tuple(aus.shape)}, got {tuple(logits.shape)}")
    target = eggan_au_levels(aus, levels, max_intensity)  # [B, 17] in {0, ..., m}
    # EGGAN Eq. 3: cross-entropy over the m + 1 intensity levels of every AU
    per_au = F.cross_entropy(logits.flatten(0, -2), target.flatten(), reduction="none").view(aus.shape)
    return _per_sample_sum(per_au)


def eggan_identity(logits: Tensor, identity: Tensor) -> Tensor:
    """EGGAN Eq. 4: ``-sum_k 1[k = c_i] log C_id^(k)(I_t)``: the frozen identity classifier must still
    recognise the input's identity in the generated image. ``logits`` ``[B, n]``, ``identity`` ``[B]`` long."""
    _tensor("logits", logits, 2)
    _tensor("identity", identity)
    if identity.dtype != torch.long or identity.shape != logits.shape[:1]:
        raise ValueError(f"identity must be a long tensor [B] = [{logits.shape[0]}] of class indices, "
                         f"got {identity.dtype} {tuple(identity.shape)}")
    # EGGAN Eq. 4: identity cross-entropy
    return F.cross_entropy(logits, identity)


def eggan_perceptual(generated: Tensor, reconstructed: Tensor, image: Tensor, features: FeatureNetwork,
                     layer: int = 2) -> Tensor:
    """EGGAN Eq. 5: ``1/(W H C) (||phi_3(I_t) - phi_3(I_i)||^2 + ||phi_3(I_i_hat) - phi_3(I_i)||^2)``.

    Both the edited image ``I_t = G(E(I_i)|u_t)`` and the self-reconstruction ``I_i_hat = G(E(I_i)|u_i)``
    are compared with the input ``I_i`` at one layer of a frozen network (the paper: VGG19's third
    layer; ``layer`` indexes the list ``features`` returns). Squared distances normalised by the
    layer's size C H W (Johnson et al.'s perceptual loss, which the paper cites).
    """
    loss = image.new_zeros(())
    for output in (generated, reconstructed):
        pairs = _paired_features(features, output, image)
        if not -len(pairs) <= layer < len(pairs):
            raise ValueError(f"layer {layer} does not exist: features returned {len(pairs)} layers")
        ours, theirs = pairs[layer]
        # EGGAN Eq. 5: ||phi_3(output) - phi_3(I_i)||^2 / (W H C)
        loss = loss + F.mse_loss(ours, theirs)
    return loss


def eggan_reconstruction(reconstructed: Tensor, image: Tensor, l1_weight: float = 1.0,
                         ms_ssim_weight: float = 1.0) -> Tensor:
    """EGGAN Eq. 6: ``L_rec = ||I_i - I_i_hat||_1 + (1 - MS-SSIM(I_i, I_i_hat))``.

    L1 is the mean absolute error. MS-SSIM is :func:`facelib.metrics.ms_ssim_per_image`, the
    differentiable core of the reported metric :func:`facelib.metrics.ms_ssim`, so ``1 -`` the
    metric is exactly this term: measured on the images mapped to [0, 1], 11 px Gaussian window,
    and on images under 161 px the coarse scales dropped (:func:`facelib.metrics.ms_ssim_scales`:
    3 scales at 64x64, 4 at 128x128; under 11 px it raises). The public code weighs the two terms
    100 and 50 (set the weights).
    """
    _same_shape("reconstructed", reconstructed, "image", image)
    l1 = (image - reconstructed).abs().mean()
    similarity = ms_ssim_per_image(reconstructed, image).mean()
    # EGGAN Eq. 6: L1 + (1 - MS-SSIM)
    return l1_weight * l1 + ms_ssim_weight * (1 - similarity)
