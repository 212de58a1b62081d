"""FVAE's measurements (Yeh et al. 2016) on the evaluation protocol: Table 1, Algorithm 2, Fig. 7.

- :func:`table1`: Table 1 over editors, on held-out identities: each editor through
  :func:`facelib.evaluation.protocol.run_editor` in Table 1's setting (the true target as the
  reference, ``oracle=True``, for editors that accept a reference; expression targets for the
  others), plus the rows only the protocol can make because they need the truth (the oracle
  warp, no edit, the real targets) and FVAE's own two-source confidence blend;
- :func:`measure_interpolation`: Algorithm 2 against the true in-between renders;
- :func:`measure_upsampling`: Fig. 7, flow upsampling (Sec. 4.3) against pixel upsampling.

Each takes editors (``facelib.load_editor`` names or instances) or the FVAE's networks, e.g.::

    from facelib.evaluation.fvae import table1, measure_interpolation, measure_upsampling

    table = table1(mask_net=facelib.load_pretrained("fvae_confidence"), n=256)
    interp = measure_interpolation("fvae", facelib.load_pretrained("fvae_confidence"), n=128)
    upsampling, example = measure_upsampling("fvae", "fvae_pixel_vae", scale=4, n=8)
"""
from __future__ import annotations

import math

import pandas as pd
import torch
from tqdm.auto import tqdm

from facelib.editors import Editor, Target
from facelib.evaluation.protocol import Bundle, HeldOutPairs, held_out_pairs, measure, run_editor
from facelib.models.fvae import PRESET, FVAE, ConfidenceNet, FVAEEditor, PixelVAE, confidence_blend, flow_upsample
from facelib.warp import warp

__all__ = [
    "TABLE1_EDITORS", "TABLE1_COLUMNS", "table1", "table1_setting", "true_latent_editor", "measure_interpolation",
    "measure_upsampling", "pixel_upsample",
]

#: The editors of Table 1 by default, in row order.
TABLE1_EDITORS = ("fvae", "fvae_pixel_vae", "optical_flow", "average_flow")
#: Table 1's columns and the protocol's metric each one is.
TABLE1_COLUMNS = {"psnr_db": "PSNR (whole image, dB)", "psnr_visible_db": "PSNR (visible mask, dB)",
                  "sharpness": "sharpness (edited)", "flow_epe_visible_px": "flow EPE (visible mask, px)"}
_ROW_NAMES = {"fvae": "FVAE (true latent)", "fvae_pixel_vae": "Pixel VAE (true latent)",
              "average_flow": "Average flow of the expression pair (Sec. 6.1)"}
CONFIDENCE_ROW = "FVAE + confidence (true latent, 2 sources)"
ORACLE_ROW, NO_EDIT_ROW, REAL_ROW = "Oracle: warp by ground-truth flow", "No edit (source itself)", "Real targets (reference)"


# ----------------------------------------------------------------------------------------
# Editors from names, editors or networks
# ----------------------------------------------------------------------------------------
def true_latent_editor(model: FVAE | PixelVAE) -> FVAEEditor:
    """An editor for Table 1's setting from a bare FVAE or pixel VAE: reference targets only.

    Z_edit = Z(reference) needs no expression latents (Algorithm 1's Z_label), so the editor has
    none and refuses expression targets; a training recipe measures its fresh model with it.
    """
    if not isinstance(model, (FVAE, PixelVAE)):
        raise TypeError(f"model must be an FVAE or a PixelVAE, got {type(model).__name__}")
    editor = FVAEEditor(model, {}, name="fvae" if isinstance(model, FVAE) else "fvae_pixel_vae",
                        paper="FVAE (Yeh et al. 2016), Table 1's true-latent setting")
    editor.accepts = ("reference",)
    return editor


def _as_editor(editor, device="cpu") -> Editor:
    """A registered name, an Editor, or an FVAE / pixel VAE network (see :func:`true_latent_editor`)."""
    if isinstance(editor, str):
        from facelib.editors import load_editor

        return load_editor(editor, device=device)
    if isinstance(editor, (FVAE, PixelVAE)):
        return true_latent_editor(editor).to(device)
    if not isinstance(editor, Editor):
        raise TypeError(f"expected an editor (an Editor or a name from facelib.list_editors()) or an FVAE/PixelVAE, "
                        f"got {type(editor).__name__}")
    return editor.to(device)


def _fvae_network(editor) -> FVAE:
    """The FVAE inside an editor (or given as the network itself): Algorithm 2 needs its decoder."""
    if isinstance(editor, str):
        editor = _as_editor(editor)
    model = editor.model if isinstance(editor, FVAEEditor) else editor
    if not isinstance(model, FVAE):
        raise TypeError(f"expected the FVAE (its editor, 'fvae', or the network), got {type(model).__name__}")
    return model.eval()


# ----------------------------------------------------------------------------------------
# Table 1 on held-out identities, plus flow EPE and sharpness
# ----------------------------------------------------------------------------------------
def table1_setting(editor: Editor) -> tuple[str, bool]:
    """``(target_kind, oracle)`` of Table 1: the true target as the reference where the editor takes
    a reference (FVAE's "true latent", the optical flow S -> T), else expression targets."""
    return ("reference", True) if "reference" in editor.accepts else (editor.accepts[0], False)


def _row_name(editor: Editor, kind: str, oracle: bool) -> str:
    if editor.name == "optical_flow":
        return f"Optical flow S->T ({editor.method.upper()}, true target)"
    if editor.name in _ROW_NAMES:
        return _ROW_NAMES[editor.name]
    return f"{editor.name} ({kind} targets{', true target' if oracle else ''})"


def _columns(bundle: Bundle) -> dict[str, float]:
    values = {r["metric"]: r["value"] for r in measure(bundle, list(TABLE1_COLUMNS.values()))}
    return {column: values[name] for column, name in TABLE1_COLUMNS.items()}


def _other_expression_source(batch: dict[str, torch.Tensor], size: int, preset: str) -> torch.Tensor:
    """A second photo of each source's person with a third expression (neither source nor target).

    Rendered with SynthFaces at the batch's identity, yaw and the preset's full intensity, so
    the confidence blend can pick, per pixel, whichever photo explains the target better.
    """
    from facelib.conventions import EXPRESSIONS
    from facelib.data import emotion_aus, get_preset, render

    names = list(get_preset(preset).expressions)
    third = []
    for src, tgt in zip(batch["source_emotion"].tolist(), batch["target_emotion"].tolist()):
        candidates = [EXPRESSIONS.index(n) for n in names if EXPRESSIONS.index(n) not in (src, tgt)]
        third.append(candidates[(src + tgt) % len(candidates)])
    identity = batch["identity"].long()
    aus = torch.cat([emotion_aus(int(e), 5.0, identity=identity[i:i + 1]) for i, e in enumerate(third)])
    return render(identity, aus, batch["yaw"].float(), size=size)["image"]


@torch.no_grad()
def _confidence_blend_edits(editor: FVAEEditor, mask_net: ConfidenceNet, pairs: HeldOutPairs, preset: str,
                            progress: bool) -> torch.Tensor:
    """FVAE + confidence: g(S, Z(T)) and g(S2, Z(T)) from a second photo S2 of the person, blended by
    the softmax of their confidence masks (Algorithm 2's blend)."""
    mask_net.eval()
    device = next(mask_net.parameters()).device
    blended = []
    for batch in tqdm(pairs.batches, desc="FVAE + confidence", disable=not progress, leave=False):
        source, target = batch["source"], batch["target"]
        second_source = _other_expression_source(batch, editor.image_size, preset)
        first = editor.edit(source, Target(reference=target))  # Z_edit = Z(T): the true latent
        second = editor.edit(second_source, Target(reference=target))
        logits = [mask_net(image.to(device), result.latent.to(device)).cpu()
                  for image, result in ((source, first), (second_source, second))]
        blended.append(confidence_blend([first.output, second.output], logits)[0].clamp(-1, 1))
    return torch.cat(blended)


def table1(editors=TABLE1_EDITORS, *, mask_net: ConfidenceNet | None = None, preset: str = PRESET,
           split: str = "test", n: int = 256, batch_size: int = 64, seed: int = 0, device: str = "cpu",
           progress: bool = True) -> pd.DataFrame:
    """Table 1 of the paper on held-out identities, one row per editor plus the protocol's rows.

    editors: names (``facelib.load_editor``) or :class:`~facelib.editors.Editor` instances (or a
        bare FVAE / pixel VAE, see :func:`true_latent_editor`), in row order; default
        :data:`TABLE1_EDITORS`. Each runs in :func:`table1_setting`: the true target as the
        reference (``oracle=True``) for FVAE ("true latent"), the pixel VAE and the optical flow
        S -> T (OpenCV DIS, Table 1's EpicFlow analogue), expression targets for the average flow.
    mask_net: FVAE's confidence network; with it, the row "FVAE + confidence (true latent, 2
        sources)" follows the first FVAE editor: a second photo S2 of the person (a third
        expression) decoded with Z(T) too, blended by the softmax of the two confidence masks.

    Then the rows that need the truth: "Oracle: warp by ground-truth flow" (the ceiling of any
    warp-only method), "No edit (source itself)" and the real targets' sharpness.
    Columns: ``method, psnr_db, psnr_visible_db, sharpness, flow_epe_visible_px`` (PSNR over the
    whole image and over ``visible``, the target pixels the true flow explains; EPE against the
    true flow over ``visible``, flow methods only). ``.attrs``: ``n`` (pairs measured) and
    ``settings`` (each row's editor and target kind).
    """
    if isinstance(editors, (str, Editor, FVAE, PixelVAE)):
        editors = [editors]
    editors = [_as_editor(editor, device) for editor in editors]
    if not editors:
        raise ValueError(f"table1 needs at least one editor, e.g. {list(TABLE1_EDITORS)}")
    if mask_net is not None and not isinstance(mask_net, ConfidenceNet):
        raise TypeError(f"mask_net must be FVAE's ConfidenceNet (facelib.load_pretrained('fvae_confidence')), "
                        f"got {type(mask_net).__name__}")
    blended_by = next((e for e in editors if isinstance(e, FVAEEditor) and isinstance(e.model, FVAE)), None)
    if mask_net is not None and blended_by is None:
        raise ValueError("the confidence row needs an FVAE editor among the editors (e.g. 'fvae')")
    rendered: dict[int, HeldOutPairs] = {}  # by image size: the pairs are rendered once per size

    def pairs_at(size: int) -> HeldOutPairs:
        if size not in rendered:
            rendered[size] = held_out_pairs(preset, split, size, n, batch_size=batch_size, seed=seed, progress=progress)
        return rendered[size]

    rows, settings = [], {}
    for editor in editors:
        kind, oracle = table1_setting(editor)
        name = _row_name(editor, kind, oracle)
        pairs = pairs_at(editor.image_size)
        rows.append({"method": name, **_columns(run_editor(editor, kind, pairs, oracle=oracle, progress=progress))})
        settings[name] = (editor.name, kind, oracle)
        if editor is blended_by and mask_net is not None:
            blended = _confidence_blend_edits(editor, mask_net.to(device), pairs, preset, progress)
            rows.append({"method": CONFIDENCE_ROW, **_columns(Bundle.from_pairs(pairs, CONFIDENCE_ROW, blended, None))})
            settings[CONFIDENCE_ROW] = (editor.name, "reference + a second photo", True)
    pairs = pairs_at(editors[0].image_size)
    source, true_flow = pairs.truth("source").float(), pairs.truth("flow").float()
    oracle_edits = Bundle.from_pairs(pairs, ORACLE_ROW, warp(source, true_flow).clamp(-1, 1), true_flow)
    no_edit = Bundle.from_pairs(pairs, NO_EDIT_ROW, source, torch.zeros_like(true_flow))
    rows += [{"method": ORACLE_ROW, **_columns(oracle_edits)}, {"method": NO_EDIT_ROW, **_columns(no_edit)}]
    rows.append({"method": REAL_ROW, "psnr_db": math.inf, "psnr_visible_db": math.inf,
                 "sharpness": _real_sharpness(pairs),
                 "flow_epe_visible_px": math.nan})
    table = pd.DataFrame(rows, columns=["method", *TABLE1_COLUMNS])
    table.attrs.update(n=pairs.count, settings=settings)
    return table


def _real_sharpness(pairs: HeldOutPairs) -> float:
    return next(r["value"] for r in measure(Bundle.from_pairs(pairs, REAL_ROW, pairs.truth("target").float(), None),
                                            ["sharpness (real targets)"]))


# ----------------------------------------------------------------------------------------
# Algorithm 2 and Fig. 7 against SynthFaces' ground truth
# ----------------------------------------------------------------------------------------
@torch.no_grad()
def measure_interpolation(fvae, mask_net: ConfidenceNet, *, preset: str = PRESET, split: str = "test", n: int = 64,
                          factors=(0.25, 0.5, 0.75), batch_size: int = 32, seed: int = 0,
                          progress: bool = True) -> pd.DataFrame:
    """Algorithm 2 against the truth: PSNR of the in-between frames, blended and single-source.

    ``fvae``: the FVAE editor (``"fvae"``, ``facelib.load_editor("fvae")``) or the network. For
    held-out pairs (S1, S2) of one person, :func:`facelib.models.fvae.interpolate` walks Z from
    Z(S1) to Z(S2); the reference at fraction t is SynthFaces' render of the same face with the
    AUs interpolated, (1 - t) AU(S1) + t AU(S2). Returns a ``pandas.DataFrame`` with PSNR (whole
    image) per factor for the confidence blend and for g(S1, Z_edit) and g(S2, Z_edit) alone.
    """
    from facelib.data import SynthFaces, render
    from facelib.metrics import psnr
    from facelib.models.fvae import interpolate

    fvae = _fvae_network(fvae)
    size = fvae.config.image_size
    dataset = SynthFaces(preset, split, size=size, pairs=True, seed=seed)
    count = min(n, len(dataset))
    kinds = {"outputs": "confidence blend (Algorithm 2)", "from_source1": "source 1 only", "from_source2": "source 2 only"}
    collected: dict[tuple[str, float], list[torch.Tensor]] = {}
    truths: dict[float, list[torch.Tensor]] = {}
    for start in tqdm(range(0, count, batch_size), desc="Algorithm 2", disable=not progress, leave=False):
        batch = dataset.batch(range(start, min(start + batch_size, count)))
        result = interpolate(fvae, mask_net, batch["source"], batch["target"], list(factors))
        for k, factor in enumerate(factors):
            aus = (1 - factor) * batch["source_aus"] + factor * batch["target_aus"]
            truths.setdefault(factor, []).append(render(batch["identity"].long(), aus, batch["yaw"].float(), size=size)["image"])
            for key in kinds:
                collected.setdefault((key, factor), []).append(result[key][k])
    rows = []
    for factor in factors:
        truth = torch.cat(truths[factor])
        rows.append({"t": factor, **{name: psnr(torch.cat(collected[(key, factor)]).clamp(-1, 1), truth)
                                     for key, name in kinds.items()}})
    table = pd.DataFrame(rows)
    table.attrs["n"] = count
    return table


@torch.no_grad()
def measure_upsampling(fvae, pixel_vae=None, *, scale: int = 4, preset: str = PRESET, split: str = "test",
                       n: int = 32, batch_size: int = 16, seed: int = 0, progress: bool = True):
    """Fig. 7 against the truth: flow upsampling (Sec. 4.3) versus pixel upsampling at ``scale``x.

    ``fvae`` (and ``pixel_vae``): editors, names or networks. The FVAE edits at its own size with
    the true target as the reference (Table 1's true latent); its flow is upsampled and applied to
    SynthFaces' render of the same source at ``scale`` times the size
    (:func:`facelib.models.fvae.flow_upsample`), and compared with the render of the target at that
    size. Pixel upsampling enlarges the edited image itself (bicubic); with ``pixel_vae`` its output
    is enlarged too. Returns ``(table, example)``: a ``pandas.DataFrame`` of PSNR and sharpness at
    high resolution per method, and a dict of the first pair's images (``source_highres``,
    ``target_highres``, ``flow`` and one per method).
    """
    from facelib.data import SynthFaces
    from facelib.metrics import psnr, sharpness

    fvae = _as_editor(fvae)
    if not isinstance(fvae, FVAEEditor) or not isinstance(fvae.model, FVAE):
        raise TypeError("fvae must be the FVAE (its editor, 'fvae' or the network): Sec. 4.3 upsamples its flow")
    pixel_vae = None if pixel_vae is None else _as_editor(pixel_vae)
    size = fvae.image_size
    low = SynthFaces(preset, split, size=size, pairs=True, seed=seed)
    high = SynthFaces(preset, split, size=size * scale, pairs=True, seed=seed)
    count = min(n, len(low))
    outputs: dict[str, list[torch.Tensor]] = {}
    targets, example = [], {}
    for start in tqdm(range(0, count, batch_size), desc="Fig. 7", disable=not progress, leave=False):
        indices = range(start, min(start + batch_size, count))
        small, big = low.batch(indices), high.batch(indices)
        edited = fvae.edit(small["source"], Target(reference=small["target"]))
        methods = {
            "flow upsampling (Sec. 4.3)": flow_upsample(big["source"], edited.flow),
            "pixel upsampling of the FVAE output (bicubic)": pixel_upsample(edited.output, size * scale),
        }
        if pixel_vae is not None:
            vae_out = pixel_vae.edit(small["source"], Target(reference=small["target"])).output
            methods["pixel upsampling of the pixel VAE output (bicubic)"] = pixel_upsample(vae_out, size * scale)
        for name, images in methods.items():
            outputs.setdefault(name, []).append(images)
        targets.append(big["target"])
        if not example:
            example = {"source_highres": big["source"][0], "target_highres": big["target"][0],
                       "flow": edited.flow[0], **{name: images[0] for name, images in methods.items()}}
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
