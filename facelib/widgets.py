"""Interactive editors built from ipywidgets.

Every widget's callback is a plain function of its inputs (as in ipywidgets' own tests), so a
test drives an editor by setting a control's ``.value`` and reading the result back.

- :func:`au_editor`: SynthFaces' renderer with one slider per AU (notebook 00);
- :func:`editor_widget`: any :class:`~facelib.editors.Editor` on a model-size face (notebook 02);
- :func:`photo_editor`: a photo of your own, every registered editor, paste-back and download
  (notebook 09; :mod:`facelib.photo` is its pipeline without widgets, whose names this module
  also offers: :class:`~facelib.photo.FacePhoto`, :class:`~facelib.photo.LatestOnly`, ...).
"""
from __future__ import annotations

import base64
import dataclasses
import html
import time
from typing import Callable, Mapping

import numpy as np
import torch

from .conventions import AU_CODES, AU_MAX, AU_NAMES, AU_REGIONS, EXPRESSIONS, NUM_AUS
from .photo import FacePhoto, LatestOnly, PhotoEdit, encode_rgb, image_png, preview, sample_photos


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
        return Target(aus=torch.as_tensor(aus, dtype=torch.float32).reshape(1, NUM_AUS), intensity=float(intensity))
    if kind == "reference":
        if reference is None:
            raise ValueError("a reference target needs a reference image; pass references={name: image} to editor_widget")
        return Target(reference=reference.unsqueeze(0) if reference.dim() == 3 else reference, intensity=float(intensity))
    raise ValueError(f"unknown target kind {kind!r}; accepted are 'expression', 'aus', 'reference'")


class TargetControls:
    """The controls of one editor's targets, built from ``editor.accepts``; shared by the editor widgets.

    - ``kind``: ToggleButtons over the target kinds the editor accepts;
    - ``expression`` (Dropdown of ``editor.expressions``) and ``intensity`` (FloatSlider over
      ``editor.intensity_range``: below 0 suppresses, above 1 magnifies where the editor allows)
      for expression targets; the same slider is the factor of a reference target;
    - ``aus``: 17 FloatSliders (0-5, ``facelib.AU_CODES`` order), shown in sections by face region
      (``facelib.conventions.AU_REGIONS``) with their FACS names, for AU targets;
    - ``reference``: a Dropdown over ``references`` (name -> image ``[3, S, S]`` / ``[1, 3, S, S]``,
      or a function of the editor's size returning one, called once) for reference targets.

    ``groups`` holds one VBox per kind; only the selected kind's controls are shown.
    ``continuous``: sliders report while they move (the photo editor coalesces the redraws).
    """

    def __init__(self, editor, references: dict | None = None, *, continuous: bool = False,
                 source_expression: str | None = None):
        import ipywidgets as widgets

        self.editor, self.source_expression = editor, source_expression
        self.references = dict(references or {})
        self._reference_images: dict[str, torch.Tensor] = {}
        kinds = [kind for kind in editor.accepts if kind != "reference" or self.references]
        if not kinds:
            raise ValueError(f"{editor.name} accepts only reference targets; pass references={{name: image}}")
        self.kind = widgets.ToggleButtons(options=kinds, value=kinds[0], description="target")
        low, high = editor.intensity_range
        self.intensity = widgets.FloatSlider(value=min(max(1.0, low), high), min=low, max=high, step=0.05 if continuous else 0.25,
                                             continuous_update=continuous, description="intensity",
                                             layout=widgets.Layout(width="420px"))
        names = list(editor.expressions) or ["neutral"]
        # "happy" first where there is one: a photo's own expression is unknown (taken as neutral)
        self.expression = widgets.Dropdown(options=names, value="happy" if "happy" in names else names[0],
                                           description="expression")
        self.aus = [widgets.FloatSlider(value=0.0, min=0.0, max=AU_MAX, step=0.25, description=f"AU{code}",
                                        tooltip=AU_NAMES[code], continuous_update=continuous,
                                        layout=widgets.Layout(width="300px"))
                    for code in AU_CODES]
        sections = []
        for region, codes in AU_REGIONS.items():
            rows = [widgets.HBox([self.aus[AU_CODES.index(code)], widgets.Label(AU_NAMES[code])]) for code in codes]
            sections.append(widgets.VBox([widgets.HTML(f"<b>{region}</b>"), *rows]))
        self.reference = widgets.Dropdown(options=list(self.references) or ["(none)"], description="reference")
        self.groups = {"expression": widgets.VBox([self.expression, self.intensity]),
                       "aus": widgets.VBox(sections), "reference": widgets.VBox([self.reference])}
        self.kind.observe(lambda _change: self.show_selected(), names="value")
        self.show_selected()

    @property
    def controls(self) -> list:
        """Every control whose ``value`` changes the target."""
        return [self.kind, self.intensity, self.expression, self.reference, *self.aus]

    def observe(self, callback) -> None:
        """Call ``callback(change)`` whenever a control's value changes."""
        for control in self.controls:
            control.observe(callback, names="value")

    def show_selected(self) -> None:
        """Show the controls of the selected kind (the intensity slider also serves reference targets)."""
        for name, group in self.groups.items():
            shown = name == self.kind.value or (name == "expression" and self.kind.value == "reference")
            group.layout.display = None if shown else "none"
        self.expression.layout.display = None if self.kind.value == "expression" else "none"

    def add_reference(self, name: str, image) -> None:
        """Offer another reference (an image or a function of the size) and select it."""
        self.references[name] = image
        self._reference_images.pop(name, None)
        self.reference.options = list(self.references)
        self.reference.value = name

    def reference_image(self, name: str) -> torch.Tensor | None:
        if name not in self.references:
            return None
        if name not in self._reference_images:
            image = self.references[name]
            self._reference_images[name] = image(self.editor.image_size) if callable(image) else image
        return self._reference_images[name]

    def target(self):
        """The :class:`~facelib.editors.Target` the controls describe now."""
        return target_from_controls(self.kind.value, self.expression.value, self.intensity.value,
                                    [slider.value for slider in self.aus], self.reference_image(self.reference.value),
                                    self.source_expression)


def editor_widget(editor, source: torch.Tensor, references: dict[str, torch.Tensor] | None = None,
                  source_expression: str | None = None, width: int = 480,
                  known: Mapping[str, dict[str, torch.Tensor]] | None = None):
    """One widget for every method, built from ``editor.accepts`` (:class:`TargetControls`).

    ``image`` shows source | edited | extras through :func:`edit_png`; setting any control's
    ``.value`` redraws. ``source_expression`` is passed on to expression targets (FVAE's
    Algorithm 1 uses it; ``None`` = unknown). ``known`` gives SynthFaces' render parameters for
    *oracle* editors (``Target.known``): ``{"source": {"identity": [1], "yaw": [1]}, <reference
    name>: {...}}``; other editors ignore it. The box carries ``kind``, ``intensity``,
    ``expression``, ``aus``, ``reference``, ``image`` and ``target()``.
    """
    import ipywidgets as widgets

    controls = TargetControls(editor, references, source_expression=source_expression)
    image = widgets.Image(format="png", width=width)

    def target():
        target = controls.target()
        if not known or "source" not in known:
            return target
        fields = dict(known["source"])
        reference = known.get(controls.reference.value) if target.reference is not None else None
        if reference is not None:
            fields.update(reference_identity=reference["identity"], reference_yaw=reference["yaw"])
        return dataclasses.replace(target, known=fields)

    def redraw(_change=None) -> None:
        image.value = edit_png(editor, source, target())

    controls.observe(redraw)
    redraw()
    box = widgets.VBox([widgets.HTML(f"<b>{editor.name}</b>: {editor.paper}"), controls.kind, *controls.groups.values(), image])
    box.kind, box.intensity, box.expression, box.aus = controls.kind, controls.intensity, controls.expression, controls.aus
    box.reference, box.image, box.target = controls.reference, image, target
    return box


# ----------------------------------------------------------------------------------------
# the photo editor (notebook 09): a photo of your own, every registered editor
# ----------------------------------------------------------------------------------------
def download_link(rgb: np.ndarray, filename: str) -> str:
    """An HTML ``<a download>`` holding ``rgb`` as a PNG data URL (a link works in JupyterLab and Voila alike)."""
    data = base64.b64encode(encode_rgb(rgb, "png")).decode("ascii")
    height, width = rgb.shape[:2]
    return (f'<a download="{html.escape(filename)}" href="data:image/png;base64,{data}" data-width="{width}" '
            f'data-height="{height}" class="facelib-photo-download-link" style="display: inline-block; '
            f'padding: 4px 12px; border: 1px solid #999; border-radius: 2px; background: #eee; color: #000; '
            f'text-decoration: none">&#x2B07; Download the edited photo ({width}x{height} PNG)</a>')


def _synth_reference(expression: str) -> Callable[[int], torch.Tensor]:
    def render_at(size: int) -> torch.Tensor:
        from .data.synth import emotion_aus, render

        identity = torch.tensor([0])
        return render(identity, emotion_aus(expression, 4.0, 0), torch.zeros(1), size)["image"]
    return render_at


class PhotoEditor:
    """The widget :func:`photo_editor` returns: display it, or drive it through its controls.

    Controls: ``photo`` (Dropdown of :func:`sample_photos` and the uploads), ``upload``
    (FileUpload, JPEG/PNG), ``face`` (Dropdown, shown when a photo has several faces),
    ``method`` (Dropdown of the registered editors whose weights ship) and ``controls`` (the
    :class:`TargetControls` of the method). Outputs: ``original`` and ``result`` (the photo
    before and after, previews), ``crop``, ``edited_crop``, ``flow``, ``attention`` (Image
    widgets), ``message`` (HTML: what was done, how long it took, or what went wrong) and
    ``download`` (HTML: a link to the whole edited photo as PNG). ``last`` is the last
    :class:`PhotoEdit`; ``redraws`` the :class:`LatestOnly` that schedules them.
    """

    def __init__(self, photo=None, *, method: str | None = None, crop_size: int = 256, preview_width: int = 420,
                 background: bool = True):
        import ipywidgets as widgets

        from .editors import list_editors

        self.crop_size, self.preview_width = crop_size, preview_width
        self.samples = sample_photos()
        self.uploads: dict[str, bytes] = {}
        # an oracle editor needs SynthFaces' render parameters (Target.known), which no photo has
        shipped = list_editors().query("weights_shipped and not oracle")["name"].tolist()
        if not shipped:
            raise RuntimeError("no registered editor has shipped weights (python -m facelib list shows them)")
        if method is not None and method not in shipped:
            raise ValueError(f"method {method!r} is not a shipped editor; shipped: {shipped}")
        self._editors: dict[str, object] = {}
        self.session: FacePhoto | None = None
        self.last: PhotoEdit | None = None
        self.redraws = LatestOnly(self._draw, background=background)

        self.photo = widgets.Dropdown(options=list(self.samples), description="photo", layout=widgets.Layout(width="420px"))
        self.upload = widgets.FileUpload(accept=".jpg,.jpeg,.png,image/jpeg,image/png", multiple=False,
                                         description="Upload a photo", layout=widgets.Layout(width="auto"))
        self.upload.add_class("facelib-photo-upload")
        self.reference_upload = widgets.FileUpload(accept=".jpg,.jpeg,.png,image/jpeg,image/png", multiple=False,
                                                   description="Upload a reference photo", layout=widgets.Layout(width="auto"))
        self.reference_upload.observe(lambda change: self.receive_reference(change["new"]), names="value")
        self.face = widgets.Dropdown(options=[("face 1", 0)], description="face")
        self.method = widgets.Dropdown(options=shipped, value=method or ("fvae" if "fvae" in shipped else shipped[0]),
                                       description="method")
        self.paper = widgets.HTML()
        self.message = widgets.HTML()
        self.message.add_class("facelib-photo-message")
        self.download = widgets.HTML()
        self.download.add_class("facelib-photo-download")
        self.original = widgets.Image(format="jpeg", width=preview_width)
        self.result = widgets.Image(format="jpeg", width=preview_width)
        self.result.add_class("facelib-photo-result")
        tile = widgets.Layout(width="160px")
        self.crop, self.edited_crop, self.flow, self.attention = (widgets.Image(format="png", layout=tile) for _ in range(4))
        self._target_box = widgets.VBox()

        def captioned(caption: str, image):
            return widgets.VBox([widgets.HTML(f"<small>{caption}</small>"), image])

        self._flow_tile, self._attention_tile = captioned("flow (colour = direction)", self.flow), captioned("attention", self.attention)
        self.box = widgets.VBox([
            widgets.HBox([self.photo, self.upload]), self.face, self.method, self.paper, self._target_box,
            self.message,
            widgets.HBox([captioned("the photo", self.original), captioned("edited", self.result)]),
            widgets.HBox([captioned("aligned face", self.crop), captioned("edited face", self.edited_crop),
                          self._flow_tile, self._attention_tile]),
            self.download,
        ])
        self.box.add_class("facelib-photo-editor")
        self.photo.observe(lambda change: self.open_photo(change["new"]), names="value")
        self.upload.observe(lambda change: self.receive_upload(change["new"]), names="value")
        self.face.observe(lambda _change: self._face_changed(), names="value")
        self.method.observe(lambda change: self.use_method(change["new"]), names="value")
        self.use_method(self.method.value, redraw=False)
        if photo is None:
            self.open_photo(self.photo.value)
        else:
            self.open_photo_data(photo, "your photo")

    def _repr_mimebundle_(self, **kwargs):
        return self.box._repr_mimebundle_(**kwargs)

    # ---------------------------------------------------------------- inputs
    def open_photo(self, name: str) -> None:
        """Open a sample photo or an upload by its name in the ``photo`` menu."""
        if name in self.uploads:
            self.open_photo_data(self.uploads[name], name)
        else:
            self.open_photo_data(self.samples[name](), name)

    def open_photo_data(self, image, name: str) -> None:
        """Read ``image`` (bytes of a file, an array, a path...), find its faces and redraw."""
        self._say(f"Finding the faces in {html.escape(name)}…")
        try:
            session = FacePhoto(image, name, crop_size=self.crop_size)
        except (ValueError, TypeError, OSError) as err:
            self._fail(f"Could not read {html.escape(name)}: {html.escape(str(err))}")
            return
        self.original.value = encode_rgb(preview(session.rgb, self.preview_width), "jpeg")
        options = [(f"face {number + 1} of {len(session.faces)}" + (" (largest)" if number == 0 else "") +
                    f", box {face.box}", number) for number, face in enumerate(session.faces)] or [("no face", 0)]
        self.session = None  # no redraw while the face menu changes
        self.face.options, self.face.value = options, 0
        self.face.layout.display = None if len(session.faces) > 1 else "none"
        self.session = session
        self.redraws.request()

    def receive_upload(self, files) -> None:
        """The FileUpload's callback: ``files`` is its ``value`` (a tuple of dicts with ``name`` and ``content``)."""
        if not files:
            return
        upload = files[-1]
        name = str(upload.get("name", "upload"))
        if not self._is_photo_file(upload):
            self._fail(f"{html.escape(name)} is not a JPEG or PNG file; the editor accepts .jpg, .jpeg and .png photos")
            return
        label = f"uploaded: {name}"
        self.uploads[label] = bytes(upload["content"])
        self.photo.options = [*self.samples, *self.uploads]
        if self.photo.value == label:
            self.open_photo(label)
        else:
            self.photo.value = label  # opens it

    def receive_reference(self, files) -> None:
        """The reference FileUpload's callback: its largest face becomes a reference target."""
        if not files:
            return
        name = str(files[-1].get("name", "upload"))
        if not self._is_photo_file(files[-1]):
            self._fail(f"{html.escape(name)} is not a JPEG or PNG file; the editor accepts .jpg, .jpeg and .png photos")
            return
        try:
            reference = FacePhoto(bytes(files[-1]["content"]), name)
            reference.aligned()
        except (ValueError, TypeError, OSError) as err:  # NoFaceError is a ValueError
            self._fail(f"Could not use {html.escape(name)} as a reference: {html.escape(str(err))}")
            return
        self.controls.add_reference(f"uploaded: {name}", reference.reference)  # selecting it redraws

    @staticmethod
    def _is_photo_file(upload: dict) -> bool:
        name = str(upload.get("name", ""))
        return name.lower().endswith((".jpg", ".jpeg", ".png")) or upload.get("type") in ("image/jpeg", "image/png")

    def use_method(self, name: str, redraw: bool = True) -> None:
        """Switch to the registered editor ``name``: load it once, rebuild the controls for what it accepts."""
        from .editors import load_editor

        if name not in self._editors:
            self._say(f"Loading {html.escape(name)}…")
            self._editors[name] = load_editor(name)
        editor = self._editors[name]
        references = {f"SynthFaces, {expression}": _synth_reference(expression)
                      for expression in ("happy", "surprised", "sad", "angry", "disgusted", "neutral")}
        for photo_name, load in self.samples.items():
            if not photo_name.startswith("no face"):
                references[f"photo: {photo_name}"] = lambda size, load=load: FacePhoto(load()).reference(size)
        self.controls = TargetControls(editor, references, continuous=True)
        self.controls.intensity.add_class("facelib-photo-intensity")  # the page's tests find it by this
        reference_group = self.controls.groups["reference"]
        reference_group.children = [*reference_group.children, self.reference_upload]
        self.controls.observe(lambda _change: self.redraws.request())
        self.paper.value = f"<b>{html.escape(editor.name)}</b>: {html.escape(editor.paper)}"
        self._target_box.children = [self.controls.kind, *self.controls.groups.values()]
        if redraw:
            self.redraws.request()

    @property
    def editor(self):
        return self._editors[self.method.value]

    def _face_changed(self) -> None:
        if self.session is not None:
            self.redraws.request()

    # ---------------------------------------------------------------- drawing
    def _say(self, text: str) -> None:
        self.message.value = f"<span>{text}</span>"

    def _fail(self, text: str) -> None:
        self.message.value = f'<span class="facelib-photo-error" style="color: #b00020">{text}</span>'

    def _draw(self) -> None:
        """Edit the chosen face with the controls as they are now and show it (run by :class:`LatestOnly`)."""
        session, editor, controls = self.session, self.editor, self.controls
        if session is None:
            return
        if not session.faces:
            for image in (self.result, self.crop, self.edited_crop, self.flow, self.attention):
                image.value = b""
            self.download.value = ""
            self._fail(html.escape(session.no_face_message()))
            return
        try:
            edit = session.edit(editor, controls.target(), face=self.face.value)
            start = time.perf_counter()
            self.result.value = encode_rgb(preview(edit.photo, self.preview_width), "jpeg")
            self.edited_crop.value = encode_rgb(edit.edited_crop, "png")
            self.crop.value = encode_rgb(session.aligned(self.face.value).crop, "png")
            for name, image, tile in (("flow", self.flow, self._flow_tile), ("attention", self.attention, self._attention_tile)):
                tile.layout.display = None if name in edit.extras else "none"
                image.value = encode_rgb(edit.extras[name], "png") if name in edit.extras else b""
            edit.milliseconds["show"] = 1000 * (time.perf_counter() - start)
        except Exception as err:  # shown in the page: a slider must never leave a traceback behind
            self._fail(f"{html.escape(editor.name)} could not edit this face: {html.escape(f'{type(err).__name__}: {err}')}")
            return
        self.last = edit
        stages = ", ".join(f"{name} {value:.0f}" for name, value in edit.milliseconds.items())
        width, height = session.size
        self._say(f"{html.escape(session.name)} ({width}x{height}), face {self.face.value + 1} of {len(session.faces)}, "
                  f"{html.escape(editor.name)}: redrawn in {sum(edit.milliseconds.values()):.0f} ms ({stages} ms)")
        if not self.redraws.pending:  # the full-size PNG only once the sliders rest
            stem = session.name.removeprefix("uploaded: ").rsplit(".", 1)[0].split(" (")[0].replace(" ", "_")
            self.download.value = download_link(edit.photo, f"{stem}_{editor.name}.png")


def photo_editor(photo=None, *, method: str | None = None, crop_size: int = 256, preview_width: int = 420,
                 background: bool = True) -> PhotoEditor:
    """Edit a photo of your own with every registered editor: upload, pick a method, move sliders, download.

    ``photo``: an image to start with (anything :func:`facelib.data.load_image` reads), else the
    first of :func:`sample_photos`. ``method``: the editor to start with (default ``fvae``).
    ``crop_size``: the aligned crop the edit is pasted back from (flows are upsampled to it).
    ``background``: redraw in a background thread, the latest slider value winning
    (:class:`LatestOnly`); ``False`` redraws inside each callback (tests, scripts).
    """
    return PhotoEditor(photo, method=method, crop_size=crop_size, preview_width=preview_width, background=background)


# FacePhoto ... sample_photos: facelib.photo's pipeline, offered here too (notebook 09 reaches it through the widgets)
__all__ = ["FacePhoto", "LatestOnly", "PhotoEdit", "PhotoEditor", "TargetControls", "au_editor", "download_link", "edit_png",
           "editor_widget", "encode_rgb", "image_png", "photo_editor", "preview", "render_face_png", "sample_photos",
           "target_from_controls"]
