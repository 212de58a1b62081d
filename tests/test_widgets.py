"""The editor widget: one widget for every registered editor, its controls built from ``editor.accepts``.

As in ipywidgets' own tests, the callback is a plain function; a test sets a control's ``.value``
and compares the image with the callback's output.
"""
from __future__ import annotations

import pytest
import torch

import facelib
from facelib.data import SynthFaces
from facelib.editors import Target, editor_info, list_editors
from facelib.widgets import edit_png, editor_widget, target_from_controls


@pytest.fixture(scope="module", params=list(list_editors()["name"]))
def editor(request):
    if not editor_info(request.param).weights_shipped():
        pytest.skip(f"{request.param}: weights not shipped")
    return facelib.load_editor(request.param)


def test_the_widget_shows_the_controls_of_the_accepted_targets_and_redraws(editor):
    batch = SynthFaces("multipie", "test", size=editor.image_size).batch([0, 7])
    faces = batch["image"]
    # render parameters, read only by oracle editors (LEED's true_render neutraliser)
    known = {name: {"identity": batch["identity"][[i]], "yaw": batch["yaw"][[i]]}
             for i, name in enumerate(("source", "test person 2"))}
    widget = editor_widget(editor, faces[0], references={"test person 2": faces[1]}, known=known)
    assert list(widget.kind.options) == list(editor.accepts)
    assert (widget.intensity.min, widget.intensity.max) == editor.intensity_range
    for kind in editor.accepts:
        widget.kind.value = kind
        if kind == "expression":
            assert list(widget.expression.options) == list(editor.expressions)
            widget.expression.value = editor.expressions[-1]
            widget.intensity.value = widget.intensity.max
        if kind == "aus":
            widget.aus[8].value = 4.0  # AU12, lip corner puller
        expected = edit_png(editor, faces[0], widget.target())
        if editor_info(editor.name).oracle:
            assert widget.target().known["identity"] == batch["identity"][0]
        assert widget.image.value == expected and widget.image.value[:8] == b"\x89PNG\r\n\x1a\n"
    for name, group in zip(("expression", "aus", "reference"), widget.children[2:5]):
        assert (group.layout.display != "none") == (name == widget.kind.value or
                                                     (name == "expression" and widget.kind.value == "reference"))


def test_controls_become_targets_and_bad_ones_are_refused():
    assert target_from_controls("expression", "happy", 0.5, [0.0] * 17, None) == Target(expression="happy", intensity=0.5)
    aus = target_from_controls("aus", "happy", 1.0, [1.0] * 17, None)
    assert aus.kind == "aus" and aus.aus.shape == (1, 17)
    with pytest.raises(ValueError, match="needs a reference image"):
        target_from_controls("reference", "happy", 1.0, [0.0] * 17, None)
    with pytest.raises(ValueError, match="unknown target kind 'mood'"):
        target_from_controls("mood", "happy", 1.0, [0.0] * 17, None)
