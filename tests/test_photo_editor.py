"""The photo editor (notebook 09): its pipeline, its controls and what it says on bad input.

Callbacks are plain functions: each test sets a control's ``.value`` (``background=False`` draws
inside the callback) and reads the images, the message and the download link back.
"""
from __future__ import annotations

import base64
import datetime
import io
import re
import time

import numpy as np
import pytest
import torch
from PIL import Image

import facelib
from facelib.align import paste_back
from facelib.conventions import AU_CODES, AU_NAMES, AU_REGIONS
from facelib.data.io import to_uint8
from facelib.editors import Editor, EditResult, Target, list_editors, register_editor
from facelib.widgets import FacePhoto, LatestOnly, TargetControls, photo_editor, sample_photos

SHIPPED = list(list_editors().query("weights_shipped and not oracle")["name"])  # a photo has no render parameters


def png_bytes(rgb: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return buffer.getvalue()


def upload(file_upload, name: str, content: bytes, kind: str = "image/png") -> None:
    """What a FileUpload's value is after a browser sent a file (ipywidgets 8)."""
    file_upload.value = ({"name": name, "type": kind, "size": len(content), "content": memoryview(content),
                            "last_modified": datetime.datetime(2026, 12, 2, tzinfo=datetime.timezone.utc)},)


def downloaded(editor) -> np.ndarray:
    link = editor.download.value
    data = re.search(r'href="data:image/png;base64,([^"]+)"', link).group(1)
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"))


def is_error(editor) -> bool:
    return "facelib-photo-error" in editor.message.value


@pytest.fixture(scope="module")
def hopper():
    return sample_photos()["Grace Hopper (matplotlib)"]()


@pytest.fixture(scope="module")
def editor():
    return photo_editor(background=False)


def test_the_pipeline_is_align_edit_highres_and_paste_back(hopper):
    face_photo = FacePhoto(hopper, "hopper")
    fvae, target = facelib.load_editor("fvae"), Target(expression="happy")
    edit = face_photo.edit(fvae, target)
    aligned = face_photo.aligned()
    expected = paste_back(hopper, to_uint8(fvae.edit_highres(aligned.tensor(), target).output), aligned)
    np.testing.assert_array_equal(edit.photo, expected)
    assert edit.photo.shape == hopper.shape and aligned.crop.shape == (256, 256, 3)
    assert set(edit.extras) == {"flow"} and edit.extras["flow"].shape == (256, 256, 3)
    assert edit.milliseconds.keys() == {"edit", "paste"}
    # only the face is touched: the flag at the top left corner stays as it was
    np.testing.assert_array_equal(edit.photo[:80, :80], hopper[:80, :80])
    assert np.abs(edit.photo.astype(int) - hopper).max() > 20  # and the face did change


def test_the_editor_starts_on_a_shipped_photo_and_every_shipped_method_edits_it(editor):
    assert not is_error(editor) and editor.result.value[:2] == b"\xff\xd8"  # a JPEG preview
    for name in SHIPPED:
        editor.method.value = name
        method = facelib.load_editor(name)
        assert list(editor.controls.kind.options) == list(method.accepts)
        assert (editor.controls.intensity.min, editor.controls.intensity.max) == method.intensity_range
        for kind in method.accepts:
            editor.controls.kind.value = kind
            if kind == "reference":
                editor.controls.reference.value = "SynthFaces, happy"
            if kind == "aus":  # every AU starts at 0, which no intensity scales: raise the smile first
                before = editor.result.value
                editor.controls.aus[AU_CODES.index(12)].value = 4.0
                assert not is_error(editor) and editor.result.value != before, f"{name}: AU12 did not change the photo"
            before = editor.result.value
            editor.controls.intensity.value = 0.5 if editor.controls.intensity.value != 0.5 else 1.0
            assert not is_error(editor), editor.message.value
            assert editor.result.value != before, f"{name} ({kind}): moving the intensity did not change the photo"
            assert f"{name}: redrawn in" in editor.message.value
        assert downloaded(editor).shape == editor.session.rgb.shape
    editor.method.value = "fvae"


def test_flow_methods_show_their_flow_tile_and_pixel_methods_do_not(editor):
    for name in SHIPPED:
        editor.method.value = name
        has_flow = editor.last.extras.keys() >= {"flow"}
        assert (editor.flow.value != b"") == has_flow
        assert editor._flow_tile.layout.display == (None if has_flow else "none")  # noqa: SLF001 (the widget's own tile)
    editor.method.value = "fvae"


def test_an_uploaded_photo_is_edited_and_downloads_at_its_own_size(editor, hopper):
    padded = np.pad(hopper, ((20, 30), (70, 118), (0, 0)), mode="edge")  # 700 x 650, a size of its own
    upload(editor.upload, "my photo.png", png_bytes(padded))
    assert editor.photo.value == "uploaded: my photo.png" and not is_error(editor)
    assert "uploaded: my photo.png (700x650)" in editor.message.value
    result = downloaded(editor)
    assert result.shape == (650, 700, 3)
    assert 'download="my_photo_fvae.png"' in editor.download.value
    np.testing.assert_array_equal(result[:60, :60], padded[:60, :60])  # the edit stays on the face


def test_bad_uploads_get_a_message_in_the_page_not_a_traceback(editor):
    upload(editor.upload, "notes.txt", b"not a photo", kind="text/plain")
    assert is_error(editor) and "not a JPEG or PNG file" in editor.message.value
    upload(editor.upload, "broken.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    assert is_error(editor) and "Could not read uploaded: broken.png" in editor.message.value
    editor.photo.value = "astronaut (scikit-image)"
    assert not is_error(editor)


def test_an_uploaded_reference_photo_becomes_a_reference_target(editor, hopper):
    editor.method.value = "optical_flow"
    before = editor.result.value
    upload(editor.reference_upload, "ref.png", png_bytes(hopper))
    assert editor.controls.reference.value == "uploaded: ref.png" and not is_error(editor)
    assert editor.controls.target().reference.shape == (1, 3, 64, 64) and editor.result.value != before
    coffee = sample_photos()["no face (scikit-image's coffee)"]()
    upload(editor.reference_upload, "coffee.png", png_bytes(coffee))
    assert is_error(editor) and "Could not use coffee.png as a reference: No face found" in editor.message.value
    editor.method.value = "fvae"


def test_a_photo_without_a_face_says_so_and_clears_the_edit(editor):
    editor.photo.value = "no face (scikit-image's coffee)"
    assert is_error(editor) and "No face found" in editor.message.value and "40 pixels wide" in editor.message.value
    assert editor.result.value == b"" and editor.download.value == ""
    editor.photo.value = "astronaut (scikit-image)"
    assert not is_error(editor) and editor.result.value != b""


def test_several_faces_give_a_face_menu_and_each_face_is_edited(editor):
    editor.photo.value = "two faces (the two above, side by side)"
    assert len(editor.face.options) == 2 and editor.face.layout.display is None
    first = editor.crop.value
    editor.face.value = 1
    assert editor.crop.value != first and "face 2 of 2" in editor.message.value
    editor.photo.value = "astronaut (scikit-image)"
    assert editor.face.layout.display == "none"


class TinyAUEditor(Editor):
    """A test method that accepts AU targets: brightens the face by AU12 (lip corner puller)."""

    name, paper, accepts, image_size = "tiny_au_test", "a test editor", ("aus",), 64

    def _edit(self, images, target):
        lift = target.au_targets(len(images))[:, AU_CODES.index(12)].view(-1, 1, 1, 1) / 10
        return EditResult(output=(images + lift).clamp(-1, 1), attention=torch.full_like(images[:, :1], 0.5))


def test_a_newly_registered_au_editor_appears_with_17_named_au_sliders_by_region():
    register_editor("tiny_au_test", lambda device="cpu": TinyAUEditor(), paper="a test editor", accepts=("aus",))
    try:
        editor = photo_editor(method="tiny_au_test", background=False)
        controls = editor.controls
        assert list(controls.kind.options) == ["aus"] and len(controls.aus) == 17
        sections = controls.groups["aus"].children
        assert [section.children[0].value for section in sections] == [f"<b>{region}</b>" for region in AU_REGIONS]
        labels = [row.children[1].value for section in sections for row in section.children[1:]]
        assert sorted(labels) == sorted(AU_NAMES.values())
        before = editor.result.value
        controls.aus[AU_CODES.index(12)].value = 5.0
        assert editor.result.value != before and not is_error(editor)
        assert editor.attention.value != b"" and editor.controls.target().aus[0, AU_CODES.index(12)] == 5.0
    finally:
        from facelib import editors

        editors._EDITORS.pop("tiny_au_test")  # noqa: SLF001 (undo the registration)


def test_target_controls_offer_references_given_as_functions_of_the_size():
    fvae = facelib.load_editor("fvae")
    sizes = []
    controls = TargetControls(fvae, {"grey": lambda size: sizes.append(size) or torch.zeros(1, 3, size, size)})
    controls.kind.value = "reference"
    assert controls.target().reference.shape == (1, 3, 64, 64)
    controls.target()
    assert sizes == [64]  # built once


def test_latest_only_skips_stale_requests_and_draws_the_newest_state():
    state, drawn = {"value": 0}, []

    def slow_draw():
        drawn.append(state["value"])
        time.sleep(0.05)

    redraws = LatestOnly(slow_draw)
    for value in range(1, 21):  # a slider reporting every 5 ms, ten times faster than a draw
        state["value"] = value
        redraws.request()
        time.sleep(0.005)
    redraws.wait()
    assert drawn[-1] == 20, drawn  # the last position is always drawn
    assert len(drawn) < 8, f"{len(drawn)} draws for 20 requests: stale requests queued up ({drawn})"
    assert redraws.requests == 20 and redraws.runs == len(drawn) and not redraws.pending
    assert redraws._thread is None  # noqa: SLF001 (the worker thread ended)


def test_an_unknown_method_is_refused_naming_the_shipped_ones():
    with pytest.raises(ValueError, match=r"not a shipped editor; shipped: \['fvae'"):
        photo_editor(method="stargan_nope", background=False)
