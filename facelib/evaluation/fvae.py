"""FVAE's measurements (Yeh et al. 2016): Table 1, Algorithm 2 against the truth, Fig. 7."""
from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm

from facelib.models.fvae import FVAE, ConfidenceNet, PixelVAE
from facelib.train.fvae import PRESET, _pairs
from facelib.warp import warp

# ----------------------------------------------------------------------------------------
# Measuring: the paper's Table 1 on held-out identities, plus flow EPE and sharpness
# ----------------------------------------------------------------------------------------
def _other_expression_source(batch: dict[str, torch.Tensor], size: int) -> torch.Tensor:
    """A second photo of each source's person with a third expression (neither source nor target).

    Rendered with SynthFaces at the batch's identity, yaw and the preset's full intensity, so
    the confidence blend can pick, per pixel, whichever photo explains the target better.
    """
    from facelib.data import get_preset, render, emotion_aus
    from facelib.conventions import EXPRESSIONS

    names = [name for name in get_preset(PRESET).expressions]
    third = []
    for src, tgt in zip(batch["source_emotion"].tolist(), batch["target_emotion"].tolist()):
        candidates = [EXPRESSIONS.index(n) for n in names if EXPRESSIONS.index(n) not in (src, tgt)]
        third.append(candidates[(src + tgt) % len(candidates)])
    identity = batch["identity"].long()
    aus = torch.cat([emotion_aus(int(e), 5.0, identity=identity[i:i + 1]) for i, e in enumerate(third)])
    return render(identity, aus, batch["yaw"].float(), size=size)["image"]


@torch.no_grad()
def measure_table1(
    fvae: FVAE | None,
    *,
    mask_net: ConfidenceNet | None = None,
    pixel_vae: PixelVAE | None = None,
    split: str = "test",
    n: int = 256,
    batch_size: int = 64,
    optical_flow_method: str | None = "dis",
    average_flow=None,
    dataset=None,
    progress: bool = True,
):
    """Table 1 of the paper on held-out identities: PSNR with the true target's latent.

    One row per method with PSNR over the whole image and over ``visible`` (the target pixels
    the true flow explains), sharpness (variance of the Laplacian) and the flow's end-point
    error against the ground truth over ``visible`` (flow methods only). Rows:

    - FVAE (true latent): g(S, Z(T));
    - FVAE + confidence: g(S, Z(T)) and g(S2, Z(T)) from a second photo S2 of the person
      (a third expression), blended by the softmax of their confidence masks (Algorithm 2's blend);
    - Pixel VAE (true latent): the paper's VAE row;
    - optical flow S -> T (OpenCV DIS or Farneback; Table 1's EpicFlow analogue), computed with
      the true target, as in the paper;
    - with ``average_flow`` (a fitted ``facelib.models.baselines.AverageFlow``): Sec. 6.1's editing
      baseline, the training identities' average flow for the pair's two expressions;
    - oracle: S warped by the ground-truth flow, the ceiling of any warp-only method;
    - no edit (the source itself) and the real targets' sharpness, for reference.

    Returns a ``pandas.DataFrame`` (``.attrs["n"]`` = pairs measured).
    """
    import pandas as pd

    from facelib.models.fvae import confidence_blend
    from facelib.metrics import flow_epe, psnr, sharpness
    from facelib.models.baselines import optical_flow

    reference = next(m for m in (fvae, pixel_vae) if m is not None)
    size = reference.config.image_size
    dataset = _pairs(split, size) if dataset is None else dataset
    count = min(n, len(dataset))
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, range(count)), batch_size=batch_size)
    outputs: dict[str, list[torch.Tensor]] = {}
    flows: dict[str, list[torch.Tensor]] = {}
    kept: dict[str, list[torch.Tensor]] = {"target": [], "visible": [], "flow": []}

    def add(name, output, flow=None):
        outputs.setdefault(name, []).append(output.float())
        if flow is not None:
            flows.setdefault(name, []).append(flow.float())

    for model in (fvae, mask_net, pixel_vae):
        if model is not None:
            model.eval()
    for batch in tqdm(loader, desc="Table 1", disable=not progress, leave=False):
        source, target = batch["source"], batch["target"]
        for key in kept:
            kept[key].append(batch[key].float())
        if fvae is not None:
            z = fvae.latent(target)
            first = fvae.decode(source, z)
            add("FVAE (true latent)", first["output"], first["flow"])
            if mask_net is not None:
                second_source = _other_expression_source(batch, size)
                second = fvae.decode(second_source, z)
                blended, _ = confidence_blend([first["output"], second["output"]],
                                              [mask_net(source, z), mask_net(second_source, z)])
                add("FVAE + confidence (true latent, 2 sources)", blended)
        if pixel_vae is not None:
            add("Pixel VAE (true latent)", pixel_vae.decode(source, pixel_vae.latent(target))["output"])
        if optical_flow_method is not None:
            estimated = optical_flow(source, target, method=optical_flow_method)
            add(f"Optical flow S->T ({optical_flow_method.upper()}, true target)", warp(source, estimated), estimated)
        if average_flow is not None:
            mean_flows = torch.stack([average_flow.flow(int(a), int(b)) for a, b in
                                      zip(batch["source_emotion"], batch["target_emotion"])])
            add("Average flow of the expression pair (Sec. 6.1)", warp(source, mean_flows), mean_flows)
        add("Oracle: warp by ground-truth flow", warp(source, batch["flow"]), batch["flow"])
        add("No edit (source itself)", source, torch.zeros_like(batch["flow"]))
    target, visible, true_flow = (torch.cat(kept[k]) for k in ("target", "visible", "flow"))
    rows = []
    for name, parts in outputs.items():
        output = torch.cat(parts).clamp(-1, 1)
        rows.append({
            "method": name,
            "psnr_db": psnr(output, target),
            "psnr_visible_db": psnr(output, target, mask=visible),
            "sharpness": sharpness(output),
            "flow_epe_visible_px": flow_epe(torch.cat(flows[name]), true_flow, mask=visible) if name in flows else math.nan,
        })
    rows.append({"method": "Real targets (reference)", "psnr_db": math.inf, "psnr_visible_db": math.inf,
                 "sharpness": sharpness(target), "flow_epe_visible_px": math.nan})
    table = pd.DataFrame(rows)
    table.attrs["n"] = count
    return table


@torch.no_grad()
def measure_interpolation(
    fvae: FVAE, mask_net: ConfidenceNet, *, split: str = "test", n: int = 64, factors=(0.25, 0.5, 0.75),
    batch_size: int = 32, dataset=None, progress: bool = True,
):
    """Algorithm 2 against the truth: PSNR of the in-between frames, blended and single-source.

    For held-out pairs (S1, S2) of one person, Algorithm 2 walks Z from Z(S1) to Z(S2); the
    reference at fraction t is SynthFaces' render of the same face with the AUs interpolated,
    (1 - t) AU(S1) + t AU(S2). Returns a ``pandas.DataFrame`` with PSNR (whole image) per factor
    for the confidence blend and for g(S1, Z_edit) and g(S2, Z_edit) alone.
    """
    import pandas as pd

    from facelib.data import render
    from facelib.models.fvae import interpolate
    from facelib.metrics import psnr

    size = fvae.config.image_size
    dataset = _pairs(split, size) if dataset is None else dataset
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, range(min(n, len(dataset)))),
                                         batch_size=batch_size)
    kinds = {"outputs": "confidence blend (Algorithm 2)", "from_source1": "source 1 only", "from_source2": "source 2 only"}
    collected: dict[tuple[str, float], list[torch.Tensor]] = {}
    truths: dict[float, list[torch.Tensor]] = {}
    for batch in tqdm(loader, desc="Algorithm 2", disable=not progress, leave=False):
        result = interpolate(fvae, mask_net, batch["source"], batch["target"], list(factors))
        for k, factor in enumerate(factors):
            aus = (1 - factor) * batch["source_aus"] + factor * batch["target_aus"]
            truths.setdefault(factor, []).append(render(batch["identity"].long(), aus, batch["yaw"].float(), size=size)["image"])
            for key in kinds:
                collected.setdefault((key, factor), []).append(result[key][k])
    rows = []
    for factor in factors:
        truth = torch.cat(truths[factor])
        row = {"t": factor}
        for key, name in kinds.items():
            row[name] = psnr(torch.cat(collected[(key, factor)]).clamp(-1, 1), truth)
        rows.append(row)
    table = pd.DataFrame(rows)
    table.attrs["n"] = len(truth)
    return table


@torch.no_grad()
def measure_upsampling(fvae: FVAE, pixel_vae: PixelVAE | None = None, *, scale: int = 4, split: str = "test",
                       n: int = 32, batch_size: int = 16, progress: bool = True):
    """Fig. 7 against the truth: flow upsampling (Sec. 4.3) versus pixel upsampling at ``scale``x.

    The FVAE runs at its own size with the true target's latent; its flow is upsampled and
    applied to SynthFaces' render of the same source at ``scale`` times the size, and compared
    with the render of the target at that size. Pixel upsampling enlarges g(S, Z) itself
    (bicubic); with ``pixel_vae`` its output is enlarged too. Returns ``(table, example)``: a
    ``pandas.DataFrame`` of PSNR and sharpness at high resolution per method, and a dict of the
    first pair's images (``source_highres``, ``target_highres``, ``flow`` and one per method).
    """
    import pandas as pd

    from facelib.models.fvae import flow_upsample
    from facelib.metrics import psnr, sharpness

    size = fvae.config.image_size
    low, high = _pairs(split, size), _pairs(split, size * scale)
    count = min(n, len(low))
    outputs: dict[str, list[torch.Tensor]] = {}
    targets = []
    example = {}
    for start in tqdm(range(0, count, batch_size), desc="Fig. 7", disable=not progress, leave=False):
        indices = list(range(start, min(start + batch_size, count)))
        small = torch.utils.data.default_collate(low.__getitems__(indices))
        big = torch.utils.data.default_collate(high.__getitems__(indices))
        decoded = fvae.decode(small["source"], fvae.latent(small["target"]))
        methods = {
            "flow upsampling (Sec. 4.3)": flow_upsample(big["source"], decoded["flow"]),
            "pixel upsampling of the FVAE output (bicubic)": pixel_upsample(decoded["output"], size * scale),
        }
        if pixel_vae is not None:
            vae_out = pixel_vae.decode(small["source"], pixel_vae.latent(small["target"]))["output"]
            methods["pixel upsampling of the pixel VAE output (bicubic)"] = pixel_upsample(vae_out, size * scale)
        for name, images in methods.items():
            outputs.setdefault(name, []).append(images)
        targets.append(big["target"])
        if not example:
            example = {"source_highres": big["source"][0], "target_highres": big["target"][0],
                       "flow": decoded["flow"][0], **{name: images[0] for name, images in methods.items()}}
    target = torch.cat(targets)
    rows = [{"method": name, "psnr_db": psnr(torch.cat(parts).clamp(-1, 1), target), "sharpness": sharpness(torch.cat(parts))}
            for name, parts in outputs.items()]
    rows.append({"method": "high-resolution target render (reference)", "psnr_db": math.inf, "sharpness": sharpness(target)})
    table = pd.DataFrame(rows)
    table.attrs["n"] = count
    return table, example


def pixel_upsample(images: torch.Tensor, size: int) -> torch.Tensor:
    """Fig. 7's comparison: upsample the output image itself (bicubic), clamped to [-1, 1]."""
    return torch.nn.functional.interpolate(images, size=(size, size), mode="bicubic", align_corners=False).clamp(-1, 1)
