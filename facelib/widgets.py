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
