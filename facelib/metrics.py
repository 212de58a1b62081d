"""Measuring instruments: every number in the five papers' tables, plus what SynthFaces' ground truth allows.

Images are float ``[B, 3, H, W]`` in ``[-1, 1]`` (data range 2), as everywhere in facelib.
PSNR, SSIM and MS-SSIM map them to ``[0, 1]`` first and measure there, the standard setting of
the papers, scikit-image, pytorch-msssim and torchmetrics (SSIM's luminance term is not
offset-invariant, so measuring on ``[-1, 1]`` would give other numbers).

=====================================  ===============================================
paper table                            function here
=====================================  ===============================================
FVAE Table 1 (PSNR)                    :func:`psnr`
LEED Table 1 (SSIM; FID)               :func:`ssim`; :func:`frechet_distance` in facelib
                                       expression-classifier features (called "FD
                                       (facelib expression features)", never "FID")
EGGAN MS-SSIM loss / quality           :func:`ms_ssim`
EGGAN Table 1 (AU MSE / PCC)           :func:`au_mse_pcc`
EGGAN Table 2 (identity preservation)  :func:`verification_accuracy` with the facelib
                                       identity embedder (not LightCNN)
LEED Table 2 (R / G / R+G accuracy)    :func:`expression_accuracy`
beyond the papers                      :func:`flow_epe`, :func:`mask_iou`, :func:`sharpness`,
                                       :func:`latency`, :func:`count_parameters`
all of them at once, for any editor    :func:`facelib.evaluation.evaluate`
=====================================  ===============================================

Scalar metrics return Python floats (the mean over the batch); ``per_image=True`` returns
the per-image values as a tensor ``[B]`` instead.
"""
from __future__ import annotations

import math
import numbers
import statistics
import time
import warnings
from collections.abc import Mapping
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from scipy import linalg

from .conventions import AU_CODES, AU_MAX, NUM_AUS, check_images
from .utils import apply_in_batches, eval_mode, get_device

#: Wang et al. 2003's MS-SSIM weights, finest scale first (pytorch_msssim's default).
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
#: SSIM's Gaussian window (Wang et al. 2004): 11 taps, sigma 1.5, "valid" positions only.
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
#: SSIM's stabilising constants C_i = (K_i * data range)^2 (Wang et al. 2004).
SSIM_K = (0.01, 0.03)

#: Names the evaluation tables use; they say what the instruments are.
FD_NAME = "FD (facelib expression features)"
VERIFICATION_NAME = "identity verification (facelib embedder)"
VERIFICATION_REAL_NAME = "identity verification, real pairs (facelib embedder)"


# ----------------------------------------------------------------------------------------
# input checks
# ----------------------------------------------------------------------------------------
def _check_tensor(x, name: str, *, ndim: int | None = None, shape_hint: str = "") -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor {shape_hint}, got {type(x).__name__}")
    if ndim is not None and x.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions {shape_hint}, got shape {tuple(x.shape)}")
    if x.is_floating_point() and not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{name} contains {bad} NaN/inf values; only finite values are accepted")
    return x


def _check_data_range(data_range) -> float:
    """``data_range`` must be a finite positive number (2 for facelib's [-1, 1] images)."""
    if isinstance(data_range, bool) or not isinstance(data_range, numbers.Real):
        raise TypeError(f"data_range must be a positive number (2 for facelib images in [-1, 1], R for images "
                        f"in [0, R]), got {type(data_range).__name__}")
    if not math.isfinite(data_range) or data_range <= 0:
        raise ValueError(f"data_range must be a finite positive number (2 for facelib images in [-1, 1], R for "
                         f"images in [0, R]), got {data_range}")
    return float(data_range)


def _accepted_range(data_range: float) -> tuple[float, float]:
    """facelib images live in [-1, 1] (data range 2); any other data range means [0, data_range]."""
    data_range = _check_data_range(data_range)
    return (-1.0, 1.0) if data_range == 2.0 else (0.0, data_range)


def _check_images(x, name: str, data_range: float = 2.0, *, channels: Sequence[int] = (3,)) -> torch.Tensor:
    """:func:`facelib.conventions.check_images` with the metrics' ``data_range``: 2 means facelib's
    [-1, 1], any other R means images in [0, R]. Returns ``x``."""
    return check_images(x, name, value_range=_accepted_range(data_range), channels=tuple(channels),
                        range_hint=f"data_range={float(data_range):g} accepts that range (facelib images are "
                                   "in [-1, 1] with data_range=2; images in [0, R] need data_range=R)")


def _to_unit_range(x: torch.Tensor, data_range: float, dtype: torch.dtype | None = torch.float64) -> torch.Tensor:
    """Images in the accepted range of ``data_range`` -> [0, 1], where PSNR and SSIM are standard.

    In float64 for the reported numbers; ``dtype=None`` keeps the input's dtype (and its graph).
    """
    low, _ = _accepted_range(data_range)
    return ((x if dtype is None else x.to(dtype)) - low) / float(data_range)


def _check_image_pair(pred, target, data_range: float, names=("pred", "target")) -> None:
    _check_images(pred, names[0], data_range, channels=(1, 3))
    _check_images(target, names[1], data_range, channels=(1, 3))
    if pred.shape != target.shape:
        raise ValueError(
            f"{names[0]} and {names[1]} must have the same shape, got {tuple(pred.shape)} and {tuple(target.shape)}"
        )


def _check_mask(mask, like: torch.Tensor, name: str = "mask") -> torch.Tensor:
    """A mask is ``[B, 1, H, W]`` (or ``[B, C, H, W]``) with weights in [0, 1]."""
    batch, channels, height, width = like.shape
    hint = f"[{batch}, 1, {height}, {width}] or [{batch}, {channels}, {height}, {width}] with values in [0, 1]"
    _check_tensor(mask, name, ndim=4, shape_hint=hint)
    if mask.shape[0] != batch or mask.shape[1] not in (1, channels) or mask.shape[2:] != like.shape[2:]:
        raise ValueError(f"{name} must be {hint}, got shape {tuple(mask.shape)}")
    mask = mask.to(like.dtype)
    if float(mask.min()) < 0 or float(mask.max()) > 1:
        raise ValueError(f"{name} must hold weights in [0, 1], got [{float(mask.min()):.3g}, {float(mask.max()):.3g}]")
    return mask


def _reduce(values: torch.Tensor, per_image: bool):
    return values if per_image else float(values.mean())


# ----------------------------------------------------------------------------------------
# pixel fidelity: PSNR, SSIM, MS-SSIM
# ----------------------------------------------------------------------------------------
def psnr(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None,
         data_range: float = 2.0, per_image: bool = False):
    """Peak signal-to-noise ratio in dB, ``10 log10(data_range^2 / MSE)`` (FVAE Table 1).

    Computed per image and averaged over the batch. With ``mask`` ``[B, 1, H, W]`` the MSE
    averages only over the masked pixels (weights in [0, 1]); every image needs a non-empty
    mask. Identical images give ``inf`` (and so does a batch mean that contains one).
    The MSE is taken on the images mapped to [0, 1] (where the peak is 1), which is the same
    number and cannot overflow or underflow for any finite positive ``data_range``.
    """
    _check_image_pair(pred, target, data_range)
    squared_error = (_to_unit_range(pred, data_range) - _to_unit_range(target, data_range)) ** 2  # [B, C, H, W]
    if mask is None:
        mse = squared_error.flatten(1).mean(1)  # [B]
    else:
        weights = _check_mask(mask, pred).double().expand_as(squared_error)
        mass = weights.flatten(1).sum(1)  # [B]
        if (mass == 0).any():
            empty = torch.nonzero(mass == 0).flatten().tolist()
            raise ValueError(f"mask is empty for images {empty}; every image needs at least one masked pixel")
        mse = (weights * squared_error).flatten(1).sum(1) / mass
    values = -10.0 * torch.log10(mse)  # peak 1 in [0, 1]; mse == 0 -> inf
    return _reduce(values.float(), per_image)


def _gaussian_window(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """SSIM's 1-D Gaussian window, ``SSIM_WINDOW`` taps with ``SSIM_SIGMA``, summing to 1: ``[SSIM_WINDOW]``."""
    offsets = torch.arange(SSIM_WINDOW, dtype=dtype, device=device) - SSIM_WINDOW // 2
    window = torch.exp(-offsets**2 / (2 * SSIM_SIGMA**2))
    return window / window.sum()


def _ssim_terms(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """SSIM and its contrast-structure factor per image and channel, ``([B, C], [B, C])``.

    ``x`` and ``y`` are ``[B, C, H, W]`` in [0, 1] (data range 1) with H, W >= ``SSIM_WINDOW``.
    The local statistics are Gaussian-weighted (the separable window along H, then W) at the
    positions where the window fits ("valid"); differentiable, in the inputs' dtype.
    """
    channels = x.shape[1]
    window = _gaussian_window(x.dtype, x.device)
    along_h = window.view(1, 1, -1, 1).repeat(channels, 1, 1, 1)  # [C, 1, 11, 1], one filter per channel
    along_w = window.view(1, 1, 1, -1).repeat(channels, 1, 1, 1)  # [C, 1, 1, 11]

    def blur(z: torch.Tensor) -> torch.Tensor:  # [B, C, H, W] -> [B, C, H - 10, W - 10]
        return F.conv2d(F.conv2d(z, along_h, groups=channels), along_w, groups=channels)

    c1, c2 = SSIM_K[0] ** 2, SSIM_K[1] ** 2  # (K * data range)^2 with data range 1
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov_xy = blur(x * y) - mu_x * mu_y
    # Wang et al. 2004, Eq. 13: luminance (2 mu_x mu_y + C1) / (mu_x^2 + mu_y^2 + C1) times
    # contrast-structure (2 sigma_xy + C2) / (sigma_x^2 + sigma_y^2 + C2)
    contrast_structure = (2 * cov_xy + c2) / (var_x + var_y + c2)
    luminance = (2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1)
    return (luminance * contrast_structure).flatten(2).mean(2), contrast_structure.flatten(2).mean(2)


def _check_ssim_size(pred: torch.Tensor, what: str) -> int:
    size = min(pred.shape[-2:])
    if size < SSIM_WINDOW:
        raise ValueError(f"{what} needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW} px (its Gaussian window), "
                         f"got {tuple(pred.shape[-2:])}")
    return size


def ssim(pred: torch.Tensor, target: torch.Tensor, data_range: float = 2.0, per_image: bool = False):
    """Structural similarity (Wang et al. 2004), measured on [0, 1].

    The images are first mapped to [0, 1] (facelib's [-1, 1] by ``(x + 1) / 2``, [0, R] by
    ``x / R``) and SSIM is computed there with data range 1, as in the paper and in every
    standard implementation: SSIM's luminance term ``(2 mu_x mu_y + C1) / (mu_x^2 + mu_y^2 + C1)``
    changes when both images are shifted by a constant, so the same pair measured on [-1, 1]
    would score differently (lower for dark regions).

    11x11 Gaussian window with sigma 1.5, constants K = (0.01, 0.03), averaged over the
    positions where the window fits ("valid") and over channels. This equals
    ``skimage.metrics.structural_similarity(a, b, gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=1, channel_axis=...)`` on the [0, 1] images, and
    ``pytorch_msssim.ssim``; the tests check both. Images must be at least 11 px on each side.
    """
    _check_image_pair(pred, target, data_range)
    _check_ssim_size(pred, "SSIM")
    values = _ssim_terms(_to_unit_range(pred, data_range), _to_unit_range(target, data_range))[0].mean(1)  # [B]
    return _reduce(values.float(), per_image)


def ms_ssim_scales(size: int) -> int:
    """How many MS-SSIM scales fit an image whose smaller side is ``size`` px.

    The one rule for images too small for the standard 5 scales (used by :func:`ms_ssim` and
    :func:`facelib.losses.eggan_reconstruction`): drop the coarse scales, never shrink the window.
    Like ``pytorch_msssim``, after ``L - 1`` halvings the 11 px window must still fit, i.e.
    ``size > (11 - 1) * 2**(L - 1)``, so the coarsest scale is at least 11 px. 161 px or more gives
    the standard 5 scales; facelib's 64 px gives 3, 128 px gives 4; under 11 px nothing fits
    (``ms_ssim`` raises).
    """
    scales = 1
    while scales < len(MS_SSIM_WEIGHTS) and size > (SSIM_WINDOW - 1) * 2**scales:
        scales += 1
    return scales


def _check_scales(scales, size: int) -> int:
    possible = ms_ssim_scales(size)
    if scales is None:
        return possible
    if isinstance(scales, bool) or not isinstance(scales, numbers.Integral):
        raise TypeError(f"scales must be an integer in [1, {possible}] or None, got {type(scales).__name__}")
    if not 1 <= scales <= possible:
        raise ValueError(f"scales must be in [1, {possible}] for {size} px images (each halving must keep "
                         f"the {SSIM_WINDOW} px window inside), got {scales}")
    return int(scales)


def ms_ssim_per_image(pred: torch.Tensor, target: torch.Tensor, data_range: float = 2.0,
                      scales: int | None = None) -> torch.Tensor:
    """Multi-scale SSIM per image, ``[B]``, differentiable and in the inputs' floating dtype.

    The one MS-SSIM of facelib: :func:`ms_ssim` reports it as a number (computed in float64),
    :func:`facelib.losses.eggan_reconstruction` trains with ``1 -`` it. Checks the inputs like
    :func:`ms_ssim` (see there for the scales and the window).
    """
    _check_image_pair(pred, target, data_range)
    scales = _check_scales(scales, _check_ssim_size(pred, "MS-SSIM"))
    x, y = _to_unit_range(pred, data_range, dtype=None), _to_unit_range(target, data_range, dtype=None)
    weights = torch.tensor(MS_SSIM_WEIGHTS[:scales], dtype=x.dtype, device=x.device)
    weights = weights / weights.sum() if scales < len(MS_SSIM_WEIGHTS) else weights
    factors = []
    for scale in range(scales):
        ssim_per_channel, contrast_structure = _ssim_terms(x, y)  # [B, C] each
        if scale < scales - 1:
            # Wang et al. 2003, Eq. 7: contrast-structure at the finer scales, full SSIM at the coarsest
            factors.append(torch.relu(contrast_structure) ** weights[scale])
            padding = [side % 2 for side in x.shape[2:]]  # odd sides: average the last row/column with a pad
            x = F.avg_pool2d(x, kernel_size=2, padding=padding)
            y = F.avg_pool2d(y, kernel_size=2, padding=padding)
    factors.append(torch.relu(ssim_per_channel) ** weights[-1])
    return torch.stack(factors).prod(dim=0).mean(1)  # [B], averaged over channels


def ms_ssim(pred: torch.Tensor, target: torch.Tensor, data_range: float = 2.0, scales: int | None = None,
            per_image: bool = False):
    """Multi-scale SSIM (Wang et al. 2003; EGGAN's MS-SSIM), measured on [0, 1] like :func:`ssim`.

    The standard 5 scales need images of at least 161 px. Small images (facelib's default
    64x64) use fewer scales instead of upsampling, which would invent detail, or of shrinking
    the window, which would change what SSIM measures: the ``ms_ssim_scales(size)`` finest
    scales, with their standard weights renormalised to sum to 1 (64 px: 3 scales, weights
    0.0448, 0.2856, 0.3001 / 0.6305; 11 to 20 px: 1 scale, which is plain SSIM). Asking for more
    ``scales`` than fit raises ``ValueError``, and images under 11 px raise it too. With 5 scales
    the result is ``pytorch_msssim.ms_ssim`` on the [0, 1] images with ``data_range=1`` (the tests
    check it); numbers from different scale counts are not comparable, so report the scale count
    with the number. The differentiable tensor behind it is :func:`ms_ssim_per_image`.
    """
    _check_image_pair(pred, target, data_range)
    values = ms_ssim_per_image(pred.double(), target.double(), data_range, scales)  # [B]
    return _reduce(values.float(), per_image)


# ----------------------------------------------------------------------------------------
# distributions: Fréchet distance
# ----------------------------------------------------------------------------------------
def frechet_distance_gaussians(mu_a, cov_a, mu_b, cov_b, eps: float = 1e-6) -> float:
    """Fréchet (2-Wasserstein) distance between N(mu_a, cov_a) and N(mu_b, cov_b).

    ``|mu_a - mu_b|^2 + Tr(cov_a + cov_b - 2 (cov_a cov_b)^(1/2))`` (Dowson & Landau 1982).
    When the product is near-singular the square root is taken of the covariances plus
    ``eps * I``, as pytorch-fid does.
    """
    mu_a, mu_b = np.atleast_1d(np.asarray(mu_a, np.float64)), np.atleast_1d(np.asarray(mu_b, np.float64))
    cov_a, cov_b = np.atleast_2d(np.asarray(cov_a, np.float64)), np.atleast_2d(np.asarray(cov_b, np.float64))
    dim = mu_a.shape[0]
    if mu_b.shape != (dim,) or cov_a.shape != (dim, dim) or cov_b.shape != (dim, dim):
        raise ValueError(f"means must be [D] and covariances [D, D] with one D; got {mu_a.shape}, {cov_a.shape}, "
                         f"{mu_b.shape}, {cov_b.shape}")
    with warnings.catch_warnings():
        warnings.simplefilter("error", linalg.LinAlgWarning)
        try:
            root = linalg.sqrtm(cov_a @ cov_b)
            singular = not np.isfinite(root).all()
        except linalg.LinAlgWarning:  # singular product, e.g. fewer samples than feature dimensions
            singular = True

    def imaginary(root) -> bool:  # an imaginary part beyond round-off
        return np.iscomplexobj(root) and not np.allclose(root.imag, 0, atol=1e-3 * max(1.0, np.abs(root).max()))

    # a near-singular product can also show up as round-off in an imaginary part (rank-deficient
    # covariances of few samples): both get the eps * I offset
    if singular or imaginary(root):
        offset = eps * np.eye(dim)
        root = linalg.sqrtm((cov_a + offset) @ (cov_b + offset))
    if np.iscomplexobj(root):
        if imaginary(root):
            raise ValueError(f"matrix square root has a large imaginary part ({np.abs(root.imag).max():.3g}); "
                             "the covariances are not positive semi-definite")
        root = root.real
    diff = mu_a - mu_b
    return float(diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2.0 * np.trace(root))


def _covariance_factor(centred: np.ndarray) -> np.ndarray:
    """A factor ``U`` with ``U @ U.T`` the sample covariance of ``centred`` ``[N, D]``: ``[D, min(N, D)]``-ish."""
    n, dim = centred.shape
    if n <= dim:
        return centred.T / np.sqrt(n - 1)  # [D, N]
    values, vectors = np.linalg.eigh(centred.T @ centred / (n - 1))  # the covariance's square root, [D, D]
    return vectors * np.sqrt(np.clip(values, 0, None))


def _trace_sqrt_product(centred_a: np.ndarray, centred_b: np.ndarray) -> float:
    """``Tr (cov_a cov_b)^(1/2)`` exactly: with ``cov = U U^T``, the eigenvalues of ``cov_a cov_b``
    are those of ``M^T M`` for ``M = U_a^T U_b``, so the trace is the sum of M's singular values."""
    product = _covariance_factor(centred_a).T @ _covariance_factor(centred_b)
    return float(np.linalg.svd(product, compute_uv=False).sum())


def frechet_distance(feats_a: torch.Tensor, feats_b: torch.Tensor, method: str = "sqrtm") -> float:
    """Fréchet distance between Gaussians fitted to two feature sets ``[N, D]`` and ``[M, D]``.

    The statistic behind FID, but in whatever features you pass: facelib uses its expression
    classifier's penultimate features and calls the result "FD (facelib expression features)".
    Sample covariances use ``N - 1``. The estimate is biased upwards for small N (and its
    covariance is singular when N <= D): compare numbers computed with the same N only.

    ``method="sqrtm"``: the matrix square root of :func:`frechet_distance_gaussians`, as pytorch-fid
    (with its ``eps`` when the product is singular). ``method="svd"``: the trace of the square root
    from singular values (:func:`_trace_sqrt_product`), exact and several times faster, for
    bootstraps that recompute it a thousand times; the two agree to about 1e-4 (tested).
    """
    if method not in ("sqrtm", "svd"):
        raise ValueError(f"method must be 'sqrtm' or 'svd', got {method!r}")
    for name, feats in (("feats_a", feats_a), ("feats_b", feats_b)):
        _check_tensor(feats, name, ndim=2, shape_hint="[N, D] (one feature vector per row)")
        if feats.shape[0] < 2:
            raise ValueError(f"{name} needs at least 2 rows to estimate a covariance, got {feats.shape[0]}")
    if feats_a.shape[1] != feats_b.shape[1]:
        raise ValueError(f"feats_a and feats_b must have the same feature size D, got {feats_a.shape[1]} and "
                         f"{feats_b.shape[1]}")
    a = feats_a.detach().double().cpu().numpy()
    b = feats_b.detach().double().cpu().numpy()
    if method == "sqrtm":
        return frechet_distance_gaussians(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
    centred_a, centred_b = a - a.mean(0), b - b.mean(0)
    difference = a.mean(0) - b.mean(0)
    traces = ((centred_a**2).sum() / (len(a) - 1)) + ((centred_b**2).sum() / (len(b) - 1))
    return float(difference @ difference + traces - 2.0 * _trace_sqrt_product(centred_a, centred_b))


# ----------------------------------------------------------------------------------------
# expression: AU MSE / PCC (EGGAN Table 1), classification accuracy (LEED Table 2)
# ----------------------------------------------------------------------------------------
def _check_aus(x, name: str) -> torch.Tensor:
    _check_tensor(x, name, ndim=2, shape_hint=f"[N, {NUM_AUS}] (AUs {list(AU_CODES)}, intensities in [0, {AU_MAX:g}])")
    if x.shape[1] != NUM_AUS:
        raise ValueError(f"{name} must be [N, {NUM_AUS}] (one column per AU {list(AU_CODES)}), got {tuple(x.shape)}")
    low, high = float(x.min()), float(x.max())
    if low < -0.05 or high > AU_MAX + 0.05:
        raise ValueError(f"{name} has AU intensities in [{low:.3g}, {high:.3g}]; accepted is [0, {AU_MAX:g}] "
                         f"(undo any normalisation to [0, 1] or [-1, 1] first)")
    return x


def au_mse_pcc(pred: torch.Tensor, true: torch.Tensor) -> pd.DataFrame:
    """MSE and Pearson correlation per AU and their average, laid out as EGGAN's Table 1.

    ``pred`` and ``true`` are ``[N, 17]`` intensities on the 0-5 scale (AU order of
    ``facelib.AU_CODES``). Rows ``AU1 ... AU45`` then ``Avg``; columns ``MSE`` and ``PCC``.
    An AU whose predicted or true intensities are constant has no correlation: its PCC is
    NaN and the average is over the AUs that have one.
    """
    _check_aus(pred, "pred")
    _check_aus(true, "true")
    if pred.shape != true.shape:
        raise ValueError(f"pred and true must have the same shape [N, {NUM_AUS}], got {tuple(pred.shape)} and "
                         f"{tuple(true.shape)}")
    if pred.shape[0] < 2:
        raise ValueError(f"a correlation needs at least 2 samples, got N={pred.shape[0]}")
    p = pred.detach().double().cpu().numpy()
    t = true.detach().double().cpu().numpy()
    mse = ((p - t) ** 2).mean(0)  # [17]
    p_centred, t_centred = p - p.mean(0), t - t.mean(0)
    denominator = np.sqrt((p_centred**2).sum(0) * (t_centred**2).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        pcc = np.where(denominator > 0, (p_centred * t_centred).sum(0) / denominator, np.nan)  # [17]
    table = pd.DataFrame({"MSE": mse, "PCC": pcc}, index=[f"AU{code}" for code in AU_CODES])
    table.loc["Avg"] = [mse.mean(), np.nanmean(pcc) if np.isfinite(pcc).any() else np.nan]
    table.index.name = "AU"
    return table


def _check_labels(labels, name: str, count: int) -> torch.Tensor:
    _check_tensor(labels, name, ndim=1, shape_hint=f"[{count}] (integer class indices)")
    if labels.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise TypeError(f"{name} must hold integer class indices (indices into facelib.EXPRESSIONS), got {labels.dtype}")
    if labels.shape[0] != count:
        raise ValueError(f"{name} has {labels.shape[0]} labels for {count} images; one label per image is needed")
    if labels.numel() and int(labels.min()) < 0:
        raise ValueError(f"{name} has negative class indices; accepted are indices into facelib.EXPRESSIONS")
    return labels.long()


def classification_accuracy(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
                            batch_size: int = 256, device: str | torch.device = "cpu") -> float:
    """Fraction of ``images`` whose arg-max logit is the label (model in eval mode, no gradients)."""
    _check_images(images, "images")
    labels = _check_labels(labels, "labels", images.shape[0])
    device = get_device(device)
    with eval_mode(model.to(device)):
        logits = apply_in_batches(model, images, batch_size, device)  # [N, classes]
    if logits.dim() != 2 or logits.shape[0] != images.shape[0]:
        raise ValueError(f"the classifier must return logits [N, classes], got {tuple(logits.shape)}")
    if int(labels.max()) >= logits.shape[1]:
        raise ValueError(f"labels go up to {int(labels.max())} but the classifier has only {logits.shape[1]} classes")
    return float((logits.argmax(1) == labels).double().mean())


def expression_accuracy(classifier: Callable[[], torch.nn.Module], real: torch.Tensor,
                        generated: torch.Tensor | Mapping[str, torch.Tensor], real_labels: torch.Tensor, generated_labels: torch.Tensor, *, test: torch.Tensor,
                        test_labels: torch.Tensor, train_fn: Callable[..., torch.nn.Module] | None = None,
                        seed: int = 0, device: str | torch.device = "cpu", **train_kwargs) -> dict[str, float]:
    """LEED Table 2: expression classification accuracy in three settings, R / G / R+G.

    LEED Sec. 4.3, exactly:

    - **R**: a classifier trained on the real training images ``real`` is evaluated on the
      real held-out images ``test``;
    - **G**: *the same* R classifier is applied to the edited images ``generated``, scored
      against the expression they were asked to show (``generated_labels``): do the edits lie
      on the manifold of natural expressions?
    - **R+G**: a fresh classifier trained on ``real`` and ``generated`` together is evaluated
      on ``test`` (the same images as R): do the edits help train a better classifier?

    ``classifier`` is a factory: a zero-argument callable returning a new, untrained module
    that maps images to logits over ``facelib.EXPRESSIONS`` (e.g. a lambda that builds
    ``facelib.models.evaluators.ExpressionClassifier``). Both trainings start from the same
    seed. ``train_fn(model, images, labels, seed=..., device=..., desc=..., **train_kwargs)``
    replaces the default :func:`facelib.train.classifier.train_classifier` (Adam, cross-entropy; ``steps``,
    ``batch_size`` and ``lr`` go through ``train_kwargs``). Returns ``{"R", "G", "R+G"}``
    accuracies in [0, 1]; LEED prints them in percent.

    ``generated`` may also map names to images (several editors' edits of the same pairs, all
    scored against ``generated_labels``): R is then trained once and the result is
    ``{name: {"R", "G", "R+G"}}``.
    """
    several = isinstance(generated, Mapping)
    edits = dict(generated) if several else {"generated": generated}
    if several and not edits:
        raise ValueError("generated is an empty mapping; give at least one {name: images}")
    if not callable(classifier) or isinstance(classifier, torch.nn.Module):
        raise TypeError("classifier must be a zero-argument factory returning a fresh torch.nn.Module "
                        "(e.g. lambda: ExpressionClassifier(config)), not a module instance")
    _check_images(real, "real")
    for name, images in edits.items():
        _check_images(images, name)
    _check_images(test, "test")
    for name, images in (*edits.items(), ("test", test)):
        if images.shape[1:] != real.shape[1:]:
            raise ValueError(f"{name} images must have the same [C, H, W] as real, got {tuple(images.shape[1:])} "
                             f"and {tuple(real.shape[1:])}")
    real_labels = _check_labels(real_labels, "real_labels", real.shape[0])
    for name, images in edits.items():
        generated_labels = _check_labels(generated_labels, f"generated_labels (for {name})", images.shape[0])
    test_labels = _check_labels(test_labels, "test_labels", test.shape[0])
    if train_fn is None:
        from .train.classifier import train_classifier as train_fn

    def fresh_model() -> torch.nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return classifier()

    model_r = train_fn(fresh_model(), real, real_labels, seed=seed, device=device, desc="R classifier",
                       **train_kwargs)
    r_accuracy = classification_accuracy(model_r, test, test_labels, device=device)
    results = {}
    for name, images in edits.items():
        mixed_images = torch.cat([real, images])
        mixed_labels = torch.cat([real_labels, generated_labels])
        model_rg = train_fn(fresh_model(), mixed_images, mixed_labels, seed=seed, device=device,
                            desc=f"R+G classifier ({name})" if several else "R+G classifier", **train_kwargs)
        results[name] = {
            "R": r_accuracy,
            "G": classification_accuracy(model_r, images, generated_labels, device=device),
            "R+G": classification_accuracy(model_rg, test, test_labels, device=device),
        }
    return results if several else results["generated"]


# ----------------------------------------------------------------------------------------
# identity: face verification (EGGAN Table 2)
# ----------------------------------------------------------------------------------------
def _pair_scores(embeddings_a, embeddings_b, same) -> tuple[np.ndarray, np.ndarray]:
    _check_tensor(embeddings_a, "embeddings_a", ndim=2, shape_hint="[N, D]")
    _check_tensor(embeddings_b, "embeddings_b", ndim=2, shape_hint="[N, D]")
    if embeddings_a.shape != embeddings_b.shape:
        raise ValueError(f"embeddings_a and embeddings_b must both be [N, D] with the same N and D, got "
                         f"{tuple(embeddings_a.shape)} and {tuple(embeddings_b.shape)}")
    _check_tensor(same, "same", ndim=1, shape_hint=f"[{embeddings_a.shape[0]}] bool (True: same identity)")
    if same.dtype != torch.bool:
        raise TypeError(f"same must be a BoolTensor (True where a pair shows one identity), got {same.dtype}")
    if same.shape[0] != embeddings_a.shape[0]:
        raise ValueError(f"same has {same.shape[0]} entries for {embeddings_a.shape[0]} pairs; one per pair is needed")
    # cosine similarity: the embedder's output is L2-normalised, normalising again is harmless
    scores = F.cosine_similarity(embeddings_a.detach().double(), embeddings_b.detach().double(), dim=1)  # [N]
    return scores.cpu().numpy(), same.cpu().numpy()


def _best_threshold(scores: np.ndarray, same: np.ndarray) -> float:
    """Threshold on cosine similarity ("same" when score > threshold) with the highest accuracy."""
    order = np.argsort(scores, kind="stable")
    sorted_scores, sorted_same = scores[order], same[order]
    # predicting "different" for the k lowest scores: correct = negatives among them + positives above
    negatives_below = np.concatenate([[0], np.cumsum(~sorted_same)])
    positives_above = sorted_same.sum() - np.concatenate([[0], np.cumsum(sorted_same)])
    correct = negatives_below + positives_above  # [N + 1], index k
    cut_allowed = np.ones_like(correct, dtype=bool)  # a cut cannot separate tied scores
    cut_allowed[1:-1] = sorted_scores[1:] > sorted_scores[:-1]
    k = int(np.argmax(np.where(cut_allowed, correct, -1)))
    if k == 0:
        return float(sorted_scores[0] - 1.0)
    if k == len(scores):
        return float(sorted_scores[-1])
    return float((sorted_scores[k - 1] + sorted_scores[k]) / 2)


def best_verification_threshold(embeddings_a: torch.Tensor, embeddings_b: torch.Tensor, same: torch.Tensor) -> float:
    """The cosine-similarity threshold that best separates same from different pairs."""
    scores, labels = _pair_scores(embeddings_a, embeddings_b, same)
    return _best_threshold(scores, labels)


def verification_accuracy(embeddings_a: torch.Tensor, embeddings_b: torch.Tensor, same: torch.Tensor,
                          threshold: float | None = None, folds: int = 10, seed: int = 0) -> float:
    """Face-verification accuracy of pairs ``(embeddings_a[i], embeddings_b[i])`` (EGGAN Table 2).

    A pair is declared "same identity" when the cosine similarity exceeds a threshold.

    - ``threshold`` given (e.g. chosen with :func:`best_verification_threshold` on a
      separate set of pairs): the accuracy at that threshold.
    - ``threshold=None``: the LFW protocol, ``folds``-fold cross-validation: the pairs are
      shuffled once (``seed``) and cut into folds; each fold is scored at the threshold
      that is best on the other folds. The result is the held-out accuracy over all pairs,
      so a threshold never sees the pairs it is scored on.
    """
    scores, labels = _pair_scores(embeddings_a, embeddings_b, same)
    if threshold is not None:
        return float(((scores > threshold) == labels).mean())
    if folds < 2 or len(scores) < folds:
        raise ValueError(f"cross-validation needs folds >= 2 and at least one pair per fold; got folds={folds} "
                         f"for {len(scores)} pairs (pass a threshold to score few pairs)")
    order = np.random.default_rng(seed).permutation(len(scores))
    correct = 0
    for held_out in np.array_split(order, folds):
        fitting = np.setdiff1d(order, held_out)
        fold_threshold = _best_threshold(scores[fitting], labels[fitting])
        correct += int(((scores[held_out] > fold_threshold) == labels[held_out]).sum())
    return correct / len(scores)


# ----------------------------------------------------------------------------------------
# beyond the papers: flow, masks, blur, speed, size
# ----------------------------------------------------------------------------------------
def flow_epe(flow: torch.Tensor, gt_flow: torch.Tensor, mask: torch.Tensor | None = None,
             per_image: bool = False):
    """End-point error in pixels: the mean Euclidean length of ``flow - gt_flow`` (both ``[B, 2, H, W]``).

    With ``mask`` ``[B, 1, H, W]`` (SynthFaces' ``visible``: where the true flow explains the
    target) the mean runs over the masked pixels only.
    """
    hint = "[B, 2, H, W] (backward flow in pixels, channel 0 = dx, 1 = dy)"
    _check_tensor(flow, "flow", ndim=4, shape_hint=hint)
    _check_tensor(gt_flow, "gt_flow", ndim=4, shape_hint=hint)
    if flow.shape[1] != 2 or flow.shape != gt_flow.shape:
        raise ValueError(f"flow and gt_flow must both be {hint} with the same shape, got {tuple(flow.shape)} and "
                         f"{tuple(gt_flow.shape)}")
    error = (flow.double() - gt_flow.double()).norm(dim=1, keepdim=True)  # [B, 1, H, W]
    if mask is None:
        values = error.flatten(1).mean(1)
    else:
        weights = _check_mask(mask, error).double()
        mass = weights.flatten(1).sum(1)
        if (mass == 0).any():
            raise ValueError(f"mask is empty for images {torch.nonzero(mass == 0).flatten().tolist()}; every "
                             "image needs at least one masked pixel")
        values = (weights * error).flatten(1).sum(1) / mass
    return _reduce(values.float(), per_image)


def mask_iou(pred: torch.Tensor, target: torch.Tensor, threshold: float = 0.5, per_image: bool = False):
    """Intersection over union of ``pred > threshold`` and ``target > threshold`` (``[B, 1, H, W]``, values in [0, 1]).

    An image where both masks are empty scores 1 (they agree perfectly).
    """
    hint = "[B, 1, H, W] with values in [0, 1]"
    _check_tensor(pred, "pred", ndim=4, shape_hint=hint)
    _check_tensor(target, "target", ndim=4, shape_hint=hint)
    if pred.shape != target.shape or pred.shape[1] != 1:
        raise ValueError(f"pred and target must both be {hint} with the same shape, got {tuple(pred.shape)} and "
                         f"{tuple(target.shape)}")
    for name, m in (("pred", pred), ("target", target)):
        if float(m.min()) < 0 or float(m.max()) > 1:
            raise ValueError(f"{name} must hold values in [0, 1] (probabilities or a binary mask), got "
                             f"[{float(m.min()):.3g}, {float(m.max()):.3g}]; apply a sigmoid to logits first")
    a, b = (pred > threshold).flatten(1), (target > threshold).flatten(1)
    intersection = (a & b).sum(1).double()
    union = (a | b).sum(1).double()
    values = torch.where(union > 0, intersection / union.clamp_min(1), torch.ones_like(union))
    return _reduce(values.float(), per_image)


_LAPLACIAN = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])
_LUMA = torch.tensor([0.299, 0.587, 0.114])  # ITU-R BT.601


def sharpness(images: torch.Tensor, per_image: bool = False):
    """Variance of the Laplacian of the grey image: a standard no-reference blur measure (Pech-Pacheco et al. 2000).

    Images ``[B, 3, H, W]`` (or ``[B, 1, H, W]``) in [-1, 1]; RGB is turned into luminance
    (BT.601), filtered with the 3x3 Laplacian where it fits, and the variance of the response
    is taken per image. Blurring lowers it; so does an over-smooth pixel VAE (FVAE's argument).
    Noise raises it, so compare like with like, e.g. edited against real target images.
    """
    _check_images(images, "images", channels=(1, 3))
    grey = images.double()
    if grey.shape[1] == 3:
        grey = (grey * _LUMA.double().view(1, 3, 1, 1)).sum(1, keepdim=True)  # [B, 1, H, W]
    response = F.conv2d(grey, _LAPLACIAN.double().view(1, 1, 3, 3))  # [B, 1, H-2, W-2]
    values = response.flatten(1).var(1, unbiased=False)
    return _reduce(values.float(), per_image)


def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


@torch.no_grad()
def latency(fn: Callable, inputs, warmup: int = 3, repeats: int = 20) -> float:
    """Median wall-clock milliseconds per image of ``fn(inputs)`` (``fn(*inputs)`` for a tuple).

    The batch size is the first dimension of ``inputs`` (of its first tensor for a tuple).
    ``warmup`` untimed calls come first; then ``repeats`` timed calls, each followed by a
    device synchronisation on CUDA/MPS. Runs without gradients. Timings depend on the
    machine and its load: compare methods measured in the same run.
    """
    args = tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)
    if not args or not isinstance(args[0], torch.Tensor) or args[0].dim() == 0:
        raise TypeError("inputs must be a batched tensor [B, ...] or a tuple whose first element is one")
    if warmup < 0 or repeats < 1:
        raise ValueError(f"warmup must be >= 0 and repeats >= 1, got warmup={warmup}, repeats={repeats}")
    batch = args[0].shape[0]
    if batch == 0:
        raise ValueError("inputs is an empty batch; at least one image is needed")
    device = args[0].device
    for _ in range(warmup):
        fn(*args)
    _synchronise(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(*args)
        _synchronise(device)
        times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times) / batch


def count_parameters(module: torch.nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters of ``module`` (shared tensors counted once)."""
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
