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


def edit_png(editor, source: torch.Tensor, target) -> bytes:
    """The editor widget's callback: edit one face and return PNG bytes of source | edited | extras.

    ``source``: one image ``[3, S, S]`` (or ``[1, 3, S, S]``) at ``editor.image_size`` in [-1, 1];
    ``target``: a :class:`facelib.editors.Target`. Extras the method has are shown after the
    edit: the flow as a colour wheel (``facelib.warp.flow_to_rgb``), the attention mask in grey.
    """
    from .warp import flow_to_rgb

    source = source.unsqueeze(0) if source.dim() == 3 else source
    result = editor.edit(source, target)
    tiles = [source[0], result.output[0]]
    if result.flow is not None:
        tiles.append(flow_to_rgb(result.flow, max_magnitude=2.0)[0] * 2 - 1)
    if result.attention is not None:
        tiles.append(result.attention[0].expand(3, -1, -1) * 2 - 1)
    return image_png(torch.cat(tiles, dim=-1))


def target_from_controls(kind: str, expression: str, intensity: float, aus, reference: torch.Tensor | None,
                         source_expression: str | None = None):
    """The :class:`facelib.editors.Target` the controls describe (a plain function, for tests)."""
    from .editors import Target

    if kind == "expression":
        return Target(expression=expression, intensity=float(intensity), source_expression=source_expression)
    if kind == "aus":
        return Target(aus=torch.as_tensor(aus, dtype=torch.float32).reshape(1, NUM_AUS))
    if kind == "reference":
        if reference is None:
            raise ValueError("a reference target needs a reference image; pass references={name: image} to editor_widget")
        return Target(reference=reference.unsqueeze(0) if reference.dim() == 3 else reference, intensity=float(intensity))
    raise ValueError(f"unknown target kind {kind!r}; accepted are 'expression', 'aus', 'reference'")


def editor_widget(editor, source: torch.Tensor, references: dict[str, torch.Tensor] | None = None,
                  source_expression: str | None = None, width: int = 480):
    """One widget for every method, built from ``editor.accepts``.

    - ``kind``: ToggleButtons over the target kinds the editor accepts;
    - ``expression`` (Dropdown of ``editor.expressions``) and ``intensity`` (FloatSlider over
      ``editor.intensity_range``: below 0 suppresses, above 1 magnifies where the editor allows)
      for expression targets; the same slider is the factor of a reference target;
    - ``aus``: 17 FloatSliders (0-5, ``facelib.AU_CODES`` order) for AU targets;
    - ``reference``: a Dropdown over ``references`` (name -> image ``[3, S, S]``) for reference targets.

    Only the controls of the selected kind are shown. ``image`` shows source | edited | extras
    through :func:`edit_png`; setting any control's ``.value`` redraws. ``source_expression`` is
    passed on to expression targets (FVAE's Algorithm 1 uses it; ``None`` = unknown).
    """
    import ipywidgets as widgets

    references = dict(references or {})
    kinds = [kind for kind in editor.accepts if kind != "reference" or references]
    if not kinds:
        raise ValueError(f"{editor.name} accepts only reference targets; pass references={{name: image}}")
    kind = widgets.ToggleButtons(options=kinds, value=kinds[0], description="target")
    low, high = editor.intensity_range
    intensity = widgets.FloatSlider(value=min(max(1.0, low), high), min=low, max=high, step=0.25,
                                    continuous_update=False, description="intensity",
                                    layout=widgets.Layout(width="420px"))
    expression = widgets.Dropdown(options=list(editor.expressions) or ["neutral"], description="expression")
    aus = [widgets.FloatSlider(value=0.0, min=0.0, max=AU_MAX, step=0.25, description=f"AU{code}",
                               tooltip=AU_NAMES[code], continuous_update=False, layout=widgets.Layout(width="320px"))
           for code in AU_CODES]
    reference = widgets.Dropdown(options=list(references) or ["(none)"], description="reference")
    image = widgets.Image(format="png", width=width)
    groups = {"expression": widgets.VBox([expression, intensity]), "aus": widgets.VBox(aus),
              "reference": widgets.VBox([reference])}

    def current_target():
        picked = references.get(reference.value)
        return target_from_controls(kind.value, expression.value, intensity.value, [s.value for s in aus], picked,
                                    source_expression)

    def redraw(_change=None) -> None:
        for name, group in groups.items():
            shown = name == kind.value or (name == "expression" and kind.value == "reference")
            group.layout.display = None if shown else "none"
        expression.layout.display = None if kind.value == "expression" else "none"
        image.value = edit_png(editor, source, current_target())

    for control in (kind, intensity, expression, reference, *aus):
        control.observe(redraw, names="value")
    redraw()
    box = widgets.VBox([widgets.HTML(f"<b>{editor.name}</b>: {editor.paper}"), kind, *groups.values(), image])
    box.kind, box.intensity, box.expression, box.aus, box.reference, box.image = kind, intensity, expression, aus, reference, image
    box.target = current_target
    return box


__all__ = ["au_editor", "editor_widget", "edit_png", "image_png", "render_face_png", "target_from_controls"]
