"""Editing with a trained FVAE: latent arithmetic (Algorithm 1), interpolation blended by
confidence masks (Algorithm 2) and flow upsampling (Sec. 4.3) of Yeh et al. 2016.

Every function takes images ``[B, 3, H, W]`` in ``[-1, 1]`` (one ``[3, H, W]`` image is
accepted too). An image whose size differs from the model's is resized with a warning
(:func:`to_model_size`); anything that is not an RGB float image raises a clear error.
The functions work with :class:`facelib.models.fvae.FVAE` and, for the comparisons, with the
pixel baseline :class:`facelib.models.fvae.PixelVAE` (which has no flow).

Z(I) in the algorithms is the encoder's posterior mean mu(I): editing is deterministic.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from facelib.conventions import EXPRESSIONS
from facelib.warp import upsample_flow, warp

__all__ = [
    "to_model_size", "encode", "expression_latents", "expression_edit", "confidence_blend",
    "interpolate", "flow_upsample", "pixel_upsample",
]


def to_model_size(images: torch.Tensor, size: int, name: str = "images") -> torch.Tensor:
    """Check ``images`` and bring them to ``[B, 3, size, size]``.

    A single ``[3, H, W]`` image gains a batch axis. A different spatial size is resized
    (area averaging when shrinking, bilinear when enlarging) with a ``UserWarning`` saying
    so; a non-square image is refused (crop it first, e.g. with ``facelib.align``).
    """
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor [B, 3, H, W] in [-1, 1], got {type(images).__name__}")
    if not images.is_floating_point():
        raise TypeError(f"{name} must be a float tensor in [-1, 1], got dtype {images.dtype}")
    if images.dim() == 3:
        images = images.unsqueeze(0)
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"{name} must have shape [B, 3, H, W] or [3, H, W] (RGB), got {list(images.shape)}")
    height, width = images.shape[-2:]
    if height != width:
        raise ValueError(f"{name} must be square (got {height}x{width}); crop the face first, e.g. with facelib.align")
    if height != size:
        warnings.warn(f"{name} are {height}x{width}, the model works at {size}x{size}: resizing them", stacklevel=3)
        mode = "area" if height > size else "bilinear"
        images = F.interpolate(images, size=(size, size), mode=mode, **({} if mode == "area" else {"align_corners": False}))
    return images


def encode(model, images: torch.Tensor) -> torch.Tensor:
    """Z(I): the posterior mean of the encoder, ``[B, C, h, w]``."""
    return model.latent(to_model_size(images, model.config.image_size))


@torch.no_grad()
def expression_latents(
    model,
    dataset,
    *,
    max_per_expression: int = 200,
    min_intensity: float = 0.0,
    batch_size: int = 64,
    progress: bool = True,
) -> dict[str, torch.Tensor]:
    """Algorithm 1, lines 2-3: the average latent Z(I) of the labelled training images of each expression.

    ``dataset`` yields items with ``image``, ``emotion`` (index into ``facelib.EXPRESSIONS``) and
    ``intensity`` (a ``SynthFaces(..., pairs=False)`` or any dataset with those keys). Images
    below ``min_intensity`` are skipped (except neutral ones). Returns ``{name: [C, h, w]}``.
    """
    was_training = model.training
    model.eval()
    sums: dict[int, torch.Tensor] = {}
    counts: dict[int, int] = {}
    expected = len(getattr(dataset, "expressions", ())) or None  # stop early once every label is full
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    for batch in tqdm(loader, desc="expression latents", disable=not progress):
        emotions = torch.as_tensor(batch["emotion"]).long()
        intensity = torch.as_tensor(batch["intensity"]).float() if "intensity" in batch else torch.full(emotions.shape, 5.0)
        keep = (intensity >= min_intensity) | (emotions == EXPRESSIONS.index("neutral"))
        if keep.any():
            z = encode(model, batch["image"][keep])
            for label in emotions[keep].unique().tolist():
                room = max_per_expression - counts.get(label, 0)
                selected = z[emotions[keep] == label][:room]
                if len(selected):
                    sums[label] = sums.get(label, 0) + selected.sum(0)
                    counts[label] = counts.get(label, 0) + len(selected)
        if expected and len(counts) >= expected and min(counts.values()) >= max_per_expression:
            break
    model.train(was_training)
    if not counts:
        raise ValueError("expression_latents found no images: is the dataset empty or min_intensity too high?")
    return {EXPRESSIONS[label]: sums[label] / counts[label] for label in sorted(counts)}


def _latent_of(name: str, latents: dict[str, torch.Tensor], role: str) -> torch.Tensor:
    if name not in latents:
        raise ValueError(f"unknown {role} expression {name!r}; valid expressions are {sorted(latents)}")
    return latents[name]


@torch.no_grad()
def expression_edit(
    model,
    source: torch.Tensor,
    target_expression: str,
    latents: dict[str, torch.Tensor],
    *,
    source_expression: str | None = None,
    steps: int = 4,
    factors: Sequence[float] | None = None,
    highres_source: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Algorithm 1 (Expression Edit): move Z(S) along the expression direction Z_target - Z_source.

    ``latents``: the averages of :func:`expression_latents`. ``source_expression=None`` is the
    out-of-dataset variant of Sec. 6.1: Z_source = Z(S), so the edit walks from Z(S) toward the
    target average. ``factors`` replaces the paper's i/K (i = 1..K, K = ``steps``): a factor below
    0 suppresses, above 1 magnifies. With ``highres_source`` (the same face at a multiple of the
    model size) the flows are upsampled and applied to it (Sec. 4.3).

    Returns ``{"factors": [K], "outputs": [K, B, 3, H, W], "flows": [K, B, 2, H, W] (FVAE only),
    "outputs_highres": [K, B, 3, H', W'] (with highres_source)}``.
    """
    source = to_model_size(source, model.config.image_size, "source")
    if factors is None:
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        factors = [i / steps for i in range(1, steps + 1)]
    factors = torch.as_tensor(list(factors), dtype=source.dtype)
    was_training = model.training
    model.eval()
    # Algorithm 1, lines 2-3: the averaged latents of the two labels.
    z_target = _latent_of(target_expression, latents, "target").to(source)
    z_of_source = model.latent(source)  # [B, C, h, w]
    if source_expression is None:
        z_source = z_of_source  # Sec. 6.1, out-of-dataset: Z_source = Z(S)
    else:
        z_source = _latent_of(source_expression, latents, "source").to(source)
    outputs, flows, outputs_highres = [], [], []
    for factor in factors:
        # FVAE Algorithm 1, line 5: Z_edit = i (Z_target - Z_source) / K + Z(S)
        z_edit = factor * (z_target - z_source) + z_of_source
        decoded = model.decode(source, z_edit)
        outputs.append(decoded["output"])
        if "flow" in decoded:
            flows.append(decoded["flow"])
            if highres_source is not None:
                outputs_highres.append(flow_upsample(highres_source, decoded["flow"]))
    model.train(was_training)
    result = {"factors": factors, "outputs": torch.stack(outputs)}
    if flows:
        result["flows"] = torch.stack(flows)
    if outputs_highres:
        result["outputs_highres"] = torch.stack(outputs_highres)
    return result


def confidence_blend(outputs: Sequence[torch.Tensor], mask_logits: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Blend outputs of several sources by their normalised confidence masks (Algorithm 2, line 10).

    The paper prints exp(M1) / exp(M1 + M2); the intended normaliser is exp(M1) + exp(M2), a
    softmax over the two masks. We take that softmax over the mask *logits* (M = sigmoid(logit)):
    with M itself in [0, 1] the weights could never leave [0.27, 0.73] and a confident source
    could not win a region outright.

    ``outputs``: N tensors ``[B, 3, H, W]``; ``mask_logits``: N tensors ``[B, 1, H, W]``.
    Returns ``(blended [B, 3, H, W], weights [N, B, 1, H, W])``.
    """
    if len(outputs) != len(mask_logits) or len(outputs) < 2:
        raise ValueError(f"need the same number (>= 2) of outputs and masks, got {len(outputs)} and {len(mask_logits)}")
    # FVAE Algorithm 2, line 10 (typo corrected): w_n = exp(M_n) / sum_m exp(M_m)
    weights = torch.softmax(torch.stack(list(mask_logits)), dim=0)  # [N, B, 1, H, W]
    return (weights * torch.stack(list(outputs))).sum(0), weights


@torch.no_grad()
def interpolate(
    model,
    mask_net,
    source1: torch.Tensor,
    source2: torch.Tensor,
    *,
    steps: int = 4,
    factors: Sequence[float] | None = None,
) -> dict[str, torch.Tensor]:
    """Algorithm 2 (Expression Interpolate) between two photos of one person.

    Z_edit walks from Z(S1) to Z(S2) (the paper's i / K, i = 1..K; ``factors`` overrides, e.g.
    ``[0, 0.25, ..., 1]`` to include the first end); at each step both sources are warped with
    g(S_n, Z_edit) and blended by the softmax of their confidence masks M(S_n, Z_edit).
    Returns ``{"factors": [K], "outputs": [K, B, 3, H, W] (blended), "from_source1",
    "from_source2": [K, B, 3, H, W], "weight1": [K, B, 1, H, W] (the weight of source 1)}``.
    """
    size = model.config.image_size
    source1, source2 = to_model_size(source1, size, "source1"), to_model_size(source2, size, "source2")
    if source1.shape != source2.shape:
        raise ValueError(f"source1 and source2 must have the same shape, got {list(source1.shape)} and {list(source2.shape)}")
    if factors is None:
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        factors = [i / steps for i in range(1, steps + 1)]
    factors = torch.as_tensor(list(factors), dtype=source1.dtype)
    states = model.training, mask_net.training
    model.eval()
    mask_net.eval()
    # Algorithm 2, lines 2-3: Z1 = Z(S1), Z2 = Z(S2)
    z1, z2 = model.latent(source1), model.latent(source2)
    blended, outs1, outs2, weights1 = [], [], [], []
    for factor in factors:
        # FVAE Algorithm 2, line 5: Z_edit = i (Z2 - Z1) / K + Z1
        z_edit = factor * (z2 - z1) + z1
        # Algorithm 2, lines 6-9: O_n = g(S_n, Z_edit), M_n = M(S_n, Z_edit)
        out1, out2 = model.decode(source1, z_edit)["output"], model.decode(source2, z_edit)["output"]
        out, weights = confidence_blend([out1, out2], [mask_net(source1, z_edit), mask_net(source2, z_edit)])
        blended.append(out)
        outs1.append(out1)
        outs2.append(out2)
        weights1.append(weights[0])
    model.train(states[0])
    mask_net.train(states[1])
    return {
        "factors": factors,
        "outputs": torch.stack(blended),
        "from_source1": torch.stack(outs1),
        "from_source2": torch.stack(outs2),
        "weight1": torch.stack(weights1),
    }


def flow_upsample(highres_source: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Sec. 4.3: upsample a low-resolution flow to the high-resolution source and sample it there.

    ``highres_source``: ``[B, 3, H, W]`` (H a multiple of the flow's size is typical, e.g. 4x);
    ``flow``: ``[B, 2, h, w]`` backward pixel flow at the model's resolution. The vectors are
    rescaled with the size (``facelib.warp.upsample_flow``). Returns ``[B, 3, H, W]``.
    """
    if highres_source.dim() == 3:
        highres_source = highres_source.unsqueeze(0)
    if highres_source.dim() != 4 or highres_source.shape[1] != 3:
        raise ValueError(f"highres_source must have shape [B, 3, H, W], got {list(highres_source.shape)}")
    return warp(highres_source, upsample_flow(flow, tuple(highres_source.shape[-2:])))


def pixel_upsample(images: torch.Tensor, size: int) -> torch.Tensor:
    """The comparison of Fig. 7: upsample the output image itself (bicubic), clamped to [-1, 1]."""
    return F.interpolate(images, size=(size, size), mode="bicubic", align_corners=False).clamp(-1, 1)
