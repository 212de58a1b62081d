"""The editor contract: every registered editor, loaded the one obvious way, honours the interface.

A new method is covered by registering it (``facelib.editors.register_editor``): these tests are
parametrised over the registry. They check shapes, range, determinism, batch independence, the
accepted targets, and that everything else is refused with a ValueError naming what is accepted.
"""
from __future__ import annotations

import pytest
import torch

import facelib
from facelib.data import SynthFaces, expression_aus
from facelib.editors import TARGET_KINDS, Editor, EditResult, Target, editor_info, list_editors, register_editor
from facelib.pretrained import pretrained_info

NAMES = list(list_editors()["name"])


@pytest.fixture(scope="module", params=NAMES)
def editor(request) -> Editor:
    info = editor_info(request.param)
    if not info.weights_shipped():
        pytest.skip(f"{request.param}: weights {info.weights} not shipped")
    return facelib.load_editor(request.param)


def faces(size: int, count: int = 3, offset: int = 0) -> dict[str, torch.Tensor]:
    """Held-out faces (test identities) at the editor's size."""
    return SynthFaces("rafd", "test", size=size).batch(range(offset, offset + count))


def targets_for(editor: Editor, count: int) -> dict[str, Target]:
    """One valid target of every kind the editor accepts, for the sources ``faces(size, count)``. Each carries
    the faces' render parameters (``Target.known``): an oracle editor reads them, every other one ignores them."""
    sources, references = faces(editor.image_size, count), faces(editor.image_size, count, offset=40)
    known = {"identity": sources["identity"], "yaw": sources["yaw"], "reference_identity": references["identity"],
             "reference_yaw": references["yaw"]}
    made = {}
    if "expression" in editor.accepts:
        names = [editor.expressions[(i + 1) % len(editor.expressions)] for i in range(count)]
        made["expression"] = Target(expression=names, intensity=1.0, known=known)
    if "aus" in editor.accepts:
        made["aus"] = Target(aus=torch.stack([expression_aus()["happy"]] * count), known=known)
    if "reference" in editor.accepts:
        made["reference"] = Target(reference=references["image"], known=known)
    return made


def test_registry_lists_every_editor_with_its_paper_and_targets():
    table = list_editors()
    assert list(table.columns) == ["name", "paper", "accepts", "weights_shipped", "meets_floors", "oracle"]
    assert list(table.loc[table["oracle"], "name"]) == ["leed"]  # needs SynthFaces' render parameters
    assert {"fvae", "fvae_pixel_vae", "average_flow"} <= set(table["name"])
    assert table["weights_shipped"].all(), table  # every registered editor ships its weights
    with pytest.raises(ValueError, match="unknown editor 'stargan_v9'; registered editors are"):
        facelib.load_editor("stargan_v9")


def test_meets_floors_reads_the_shipped_models_measured_figures(monkeypatch):
    from facelib import editors

    monkeypatch.setattr(editors, "_EDITORS", dict(editors._EDITORS))
    pcc = pretrained_info("au_regressor")["metrics"]["mean_pcc"]  # a shipped checkpoint's measured figure
    for floors, expected in (({"mean_pcc": (pcc - 0.01, None)}, True), ({"mean_pcc": (pcc + 0.01, None)}, False),
                             ({"mean_pcc": (None, pcc - 0.01)}, False), ({"not_measured": (0.0, None)}, False),
                             ({}, None)):
        info = register_editor("floored", lambda device="cpu": None, paper="a test", accepts=("aus",),
                               weights=("au_regressor",), floors=floors, replace=True)
        assert info.meets_floors() is expected, floors
    with pytest.raises(ValueError, match=r"floor 'x': expected \(lowest, highest\)"):
        register_editor("floored", lambda device="cpu": None, paper="a test", accepts=("aus",), floors={"x": 0.5},
                        replace=True)


def test_attributes_match_the_registry(editor):
    info = editor_info(editor.name)
    assert tuple(editor.accepts) == info.accepts and editor.paper == info.paper
    assert set(editor.accepts) <= set(TARGET_KINDS)
    assert isinstance(editor.image_size, int) and editor.image_size >= 8
    low, high = editor.intensity_range
    assert low < high and low <= 1.0 <= high
    if "expression" in editor.accepts:
        assert editor.expressions and set(editor.expressions) <= set(facelib.EXPRESSIONS)


def test_every_accepted_target_gives_images_in_range_with_well_shaped_extras(editor):
    images = faces(editor.image_size)["image"]
    for kind, target in targets_for(editor, len(images)).items():
        result = editor.edit(images, target)
        assert isinstance(result, EditResult)
        assert result.output.shape == images.shape and result.output.dtype == images.dtype, kind
        assert torch.isfinite(result.output).all() and result.output.abs().max() <= 1.0 + 1e-4, kind
        size = editor.image_size
        shapes = {"flow": (3, 2, size, size), "attention": (3, 1, size, size), "texture": (3, 3, size, size)}
        for name, value in result.extras().items():
            if name in shapes:
                assert tuple(value.shape) == shapes[name], (kind, name)
            assert len(value) == len(images) and torch.isfinite(value).all(), (kind, name)
        if result.attention is not None:
            assert 0 <= float(result.attention.min()) and float(result.attention.max()) <= 1


def test_editing_is_deterministic_and_each_image_is_edited_independently(editor):
    images = faces(editor.image_size)["image"]
    for kind, target in targets_for(editor, len(images)).items():
        first, second = editor.edit(images, target), editor.edit(images, target)
        assert torch.equal(first.output, second.output), kind
        alone = editor.edit(images[1:2], _select(target, 1))
        torch.testing.assert_close(alone.output, first.output[1:2], atol=1e-5, rtol=0, msg=kind)


def _select(target: Target, index: int) -> Target:
    known = {name: value[index:index + 1] for name, value in target.known.items()}
    if target.kind == "expression":
        return Target(expression=target.expressions(3)[index], intensity=target.intensity, known=known)
    if target.kind == "aus":
        return Target(aus=target.au_targets(3)[index:index + 1], known=known)
    return Target(reference=target.reference[index:index + 1], intensity=target.intensity, known=known)


def test_targets_the_editor_does_not_accept_are_refused_naming_what_it_accepts(editor):
    images = faces(editor.image_size, 1)["image"]
    others = {"expression": Target(expression="happy"), "aus": Target(aus=torch.zeros(17)),
              "reference": Target(reference=images)}
    for kind in set(TARGET_KINDS) - set(editor.accepts):
        with pytest.raises(ValueError, match=f"does not accept {kind} targets; it accepts"):
            editor.edit(images, others[kind])
    with pytest.raises(TypeError, match="must be a facelib.editors.Target"):
        editor.edit(images, "happy")


def test_wrong_size_range_or_shape_raise_a_value_error_and_nothing_is_resized(editor):
    size = editor.image_size
    target = next(iter(targets_for(editor, 1).values()))
    images = faces(size, 1)["image"]
    with pytest.raises(ValueError, match=f"but {size}x{size} is accepted.*accepts"):
        editor.edit(faces(size * 2, 1)["image"], target)
    with pytest.raises(ValueError, match=r"outside the accepted range \[-1, 1\]"):
        editor.edit(images * 2.5, target)
    with pytest.raises(ValueError, match=r"got shape \[3, "):
        editor.edit(images[0], target)
    with pytest.raises(TypeError, match="dtype torch.uint8"):
        editor.edit(((images + 1) * 127).to(torch.uint8), target)
    low, high = editor.intensity_range
    if "expression" in editor.accepts:
        with pytest.raises(ValueError, match="accepts intensities in"):
            editor.edit(images, Target(expression=editor.expressions[0], intensity=high + 1))
        with pytest.raises(ValueError, match="2 entries for 1 images"):
            editor.edit(images, Target(expression=[editor.expressions[0]] * 2))


def test_the_result_comes_back_on_the_images_device_and_edit_needs_no_gradients(editor):
    images = faces(editor.image_size, 1)["image"].requires_grad_(True)
    target = next(iter(targets_for(editor, 1).values()))
    result = editor.edit(images, target)
    assert result.output.device == images.device and not result.output.requires_grad


def test_a_new_editor_is_covered_by_registering_it():
    class Mirror(Editor):
        name, paper, accepts, expressions = "mirror_test", "a test editor", ("expression",), ("happy",)

        def _edit(self, images, target):
            return EditResult(output=images.flip(-1))

    info = register_editor("mirror_test", lambda device="cpu": Mirror(), paper="a test editor", accepts=("expression",))
    try:
        assert "mirror_test" in set(list_editors()["name"]) and info.weights_shipped()
        edited = facelib.load_editor("mirror_test").edit(faces(64, 1)["image"], Target(expression="happy"))
        assert edited.output.shape == (1, 3, 64, 64)
        with pytest.raises(ValueError, match="already registered"):
            register_editor("mirror_test", lambda device="cpu": Mirror(), paper="x", accepts=("expression",))
    finally:
        from facelib import editors

        editors._EDITORS.pop("mirror_test")


def test_target_validation_names_what_is_accepted():
    with pytest.raises(ValueError, match="exactly one of"):
        Target()
    with pytest.raises(ValueError, match="exactly one of"):
        Target(expression="happy", aus=torch.zeros(1, 17))
    with pytest.raises(ValueError, match=r"aus must have shape \[B, 17\]"):
        Target(aus=torch.zeros(2, 12))
    with pytest.raises(ValueError, match=r"in \[0, 5\]"):
        Target(aus=torch.full((1, 17), 6.0))
    with pytest.raises(ValueError, match="finite"):
        Target(expression="happy", intensity=float("nan"))
    assert Target(expression="happy").kind == "expression"
    assert Target(aus=torch.zeros(17)).au_targets(3).shape == (3, 17)


def test_fresh_install_call_from_the_issue():
    images = SynthFaces("multipie", "test", size=64).batch(range(2))["image"]
    result = facelib.load_editor("fvae").edit(images, Target(expression="happy"))
    assert result.output.shape == (2, 3, 64, 64) and result.flow.shape == (2, 2, 64, 64)
