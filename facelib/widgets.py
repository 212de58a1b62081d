"""Interactive editors built from ipywidgets.

Every widget's callback is a plain function of its inputs (as in ipywidgets' own tests), so a
test drives an editor by setting a control's ``.value`` and reading the result back.
"""
from __future__ import annotations

import io

import numpy as np
import torch

from .conventions import AU_CODES, AU_MAX, AU_NAMES, EXPRESSIONS, NUM_AUS


def image_png(image: torch.Tensor) -> bytes:
    """PNG bytes of one image ``[3, H, W]`` in [-1, 1]."""
    from PIL import Image

    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"image must be [3, H, W]; got {tuple(image.shape)}")
    pixels = ((image.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(buffer, format="PNG")
    return buffer.getvalue()


def render_face_png(identity: int, aus, yaw: float = 0.0, size: int = 128) -> bytes:
    """The AU editor's callback: render one SynthFaces face and return it as PNG bytes."""
    from .data.synth import render

    aus = torch.as_tensor(aus, dtype=torch.float32).reshape(1, NUM_AUS)
    image = render(torch.tensor([int(identity)]), aus, torch.tensor([float(yaw)]), size)["image"][0]
    return image_png(image)


def au_editor(identity: int = 0, size: int = 128, yaw: float = 0.0):
    """An editor with one slider per AU (0-5), an emotion preset menu and the rendered face.

    Returns an ``ipywidgets.HBox`` with extra attributes: ``sliders`` (17 FloatSliders in
    ``facelib.AU_CODES`` order), ``emotion`` (Dropdown that sets the sliders to a prototype at
    intensity 4), ``identity`` (IntText), ``image`` (Image widget) and ``aus()`` (current values).
    Setting any ``.value`` re-renders through :func:`render_face_png`.
    """
    import ipywidgets as widgets

    from .data.synth import emotion_aus

    sliders = [
        widgets.FloatSlider(value=0.0, min=0.0, max=AU_MAX, step=0.25, description=f"AU{code}",
                            tooltip=AU_NAMES[code], continuous_update=False,
                            layout=widgets.Layout(width="320px"))
        for code in AU_CODES
    ]
    labels = [widgets.Label(AU_NAMES[code], layout=widgets.Layout(width="150px")) for code in AU_CODES]
    ident = widgets.IntText(value=int(identity), description="identity")
    emotion = widgets.Dropdown(options=["(custom)", *EXPRESSIONS], value="(custom)", description="emotion")
    image = widgets.Image(format="png", width=max(size, 192))

    def current() -> list[float]:
        return [slider.value for slider in sliders]

    def redraw(_change=None) -> None:
        image.value = render_face_png(ident.value, current(), yaw, size)

    def apply_emotion(change) -> None:
        if change["new"] == "(custom)":
            return
        values = emotion_aus(change["new"], 4.0, ident.value)[0].tolist()
        with image.hold_trait_notifications():
            for slider in sliders:
                slider.unobserve(redraw, names="value")
            for slider, value in zip(sliders, values):
                slider.value = round(value * 4) / 4
            for slider in sliders:
                slider.observe(redraw, names="value")
        redraw()

    for slider in sliders:
        slider.observe(redraw, names="value")
    ident.observe(redraw, names="value")
    emotion.observe(apply_emotion, names="value")
    rows = [widgets.HBox([slider, label]) for slider, label in zip(sliders, labels)]
    box = widgets.HBox([widgets.VBox([ident, emotion, *rows]), image])
    box.sliders, box.emotion, box.identity, box.image, box.aus = sliders, emotion, ident, image, current
    redraw()
    return box


__all__ = ["au_editor", "image_png", "render_face_png"]


def fvae_edit_png(model, source: torch.Tensor, latents: dict, target_expression: str,
                  source_expression: str | None, factor: float) -> bytes:
    """The FVAE editor's callback: Algorithm 1 at one ``factor`` (< 0 suppresses, > 1 magnifies).

    ``source`` is one image ``[3, H, W]`` in [-1, 1]; returns PNG bytes of the source, the edited
    face and the flow's colour wheel (``facelib.warp.flow_to_rgb``) side by side.
    """
    from .edit import expression_edit, to_model_size
    from .warp import flow_to_rgb

    source = to_model_size(source, model.config.image_size, "source")  # [1, 3, H, W]
    result = expression_edit(model, source, target_expression, latents, source_expression=source_expression,
                             factors=[float(factor)])
    flow_rgb = flow_to_rgb(result["flows"][0], max_magnitude=2.0)[0] * 2 - 1  # [3, H, W] in [-1, 1]
    return image_png(torch.cat([source[0], result["outputs"][0, 0], flow_rgb], dim=-1))


def fvae_editor(model, source: torch.Tensor, latents: dict, target_expression: str = "happy",
                source_expression: str | None = "neutral", width: int = 480):
    """A slider from "suppress" (-1) through the source (0) and the target (1) to "magnify" (2).

    Shows source | edited | flow for FVAE Algorithm 1. Returns an ``ipywidgets.VBox`` with
    attributes ``slider`` (FloatSlider), ``expression`` (Dropdown of ``latents``' names) and
    ``image`` (Image widget); setting either ``.value`` redraws through :func:`fvae_edit_png`.
    """
    import ipywidgets as widgets

    slider = widgets.FloatSlider(value=1.0, min=-1.0, max=2.0, step=0.25, continuous_update=False,
                                 description="suppress <-> magnify", style={"description_width": "initial"},
                                 layout=widgets.Layout(width="420px"))
    expression = widgets.Dropdown(options=sorted(latents), value=target_expression, description="target")
    image = widgets.Image(format="png", width=width)

    def redraw(_change=None) -> None:
        image.value = fvae_edit_png(model, source, latents, expression.value, source_expression, slider.value)

    slider.observe(redraw, names="value")
    expression.observe(redraw, names="value")
    redraw()
    box = widgets.VBox([widgets.HBox([expression, slider]), image])
    box.slider, box.expression, box.image = slider, expression, image
    return box
