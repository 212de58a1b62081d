"""facelib.checkpoint: safetensors + JSON, atomic writes, no pickle, sha256-verified shipped weights."""
from __future__ import annotations

import json
import pickle
import sys
import types
from dataclasses import dataclass

import pytest
import torch
from torch import nn

import facelib
from facelib import checkpoint
from facelib.checkpoint import (
    CheckpointError, capture_rng_state, checkpoint_files, load_model, load_pretrained, load_training_state, read_manifest,
    record_in_manifest, restore_rng_state, save_model, save_training_state, sha256_file,
)

torch.set_num_threads(1)


@dataclass
class NetConfig:
    width: int = 5
    kernel_sizes: tuple[int, ...] = (3, 3)
    dropout: float = 0.1
    name: str | None = None


class Net(nn.Module):
    def __init__(self, config: NetConfig):
        super().__init__()
        self.config = config
        self.linear = nn.Linear(3, config.width)
        self.register_buffer("running", torch.arange(4.0))

    def forward(self, x):
        return self.linear(x)


class NetWithExtraLayer(Net):
    def __init__(self, config: NetConfig):
        super().__init__(config)
        self.head = nn.Linear(config.width, 2)


@pytest.fixture
def facelib_net(monkeypatch):
    """``Net`` as if it lived inside the facelib package (what shipped checkpoints name)."""
    module = types.ModuleType("facelib._checkpoint_test_models")

    class FacelibNet(Net):
        pass

    FacelibNet.__module__ = module.__name__
    FacelibNet.__qualname__ = "FacelibNet"
    module.FacelibNet = FacelibNet
    monkeypatch.setitem(sys.modules, module.__name__, module)
    return FacelibNet


@pytest.fixture
def no_unpickling(monkeypatch):
    """Any unpickling attempt fails the test."""
    def forbidden(*args, **kwargs):
        raise AssertionError("something tried to unpickle")

    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)


def test_round_trip_restores_config_weights_and_buffers(tmp_path):
    model = Net(NetConfig(width=7, kernel_sizes=(1, 5, 3), name="x"))
    stem = save_model(model, tmp_path / "net.safetensors", extra={"note": "hello"})
    metadata = json.loads((tmp_path / "net.json").read_text())
    # the JSON names its weights file: <stem>.<first 12 hex digits of the weights' sha256>.safetensors
    assert metadata["weights_file"] == f"net.{metadata['weights_sha256'][:12]}.safetensors"
    assert sorted(p.name for p in tmp_path.iterdir()) == [metadata["weights_file"], "net.json"]
    assert metadata["class"].endswith("test_checkpoint.Net")
    assert metadata["config"] == {"width": 7, "kernel_sizes": [1, 5, 3], "dropout": 0.1, "name": "x"}
    assert metadata["versions"]["torch"] == torch.__version__ and metadata["extra"] == {"note": "hello"}

    loaded = load_model(stem, cls=Net)
    assert loaded.config == model.config  # the tuple comes back as a tuple
    assert not loaded.training
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_classes_outside_facelib_are_refused(tmp_path):
    save_model(Net(NetConfig()), tmp_path / "net")
    with pytest.raises(CheckpointError, match="only name classes inside the 'facelib' package"):
        load_model(tmp_path / "net")
    metadata = json.loads((tmp_path / "net.json").read_text())
    metadata["class"] = "os.system"
    (tmp_path / "net.json").write_text(json.dumps(metadata))
    with pytest.raises(CheckpointError, match="refusing to build class 'os.system'"):
        load_model(tmp_path / "net")


def test_facelib_class_is_resolved_from_the_json(tmp_path, facelib_net):
    model = facelib_net(NetConfig(width=4))
    save_model(model, tmp_path / "net")
    loaded = load_model(tmp_path / "net.json")
    assert type(loaded) is facelib_net and loaded.config.width == 4
    assert torch.equal(loaded.linear.weight, model.linear.weight)


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".pkl", ".ckpt"])
def test_pickle_suffixes_are_refused(tmp_path, suffix, no_unpickling):
    path = tmp_path / f"weights{suffix}"
    path.write_bytes(b"anything")
    with pytest.raises(CheckpointError, match="safetensors"):
        load_model(path, cls=Net)


@pytest.mark.parametrize("zipfile_format, kind", [(True, "zip archive"), (False, "a pickle")])
def test_pickled_content_is_refused_whatever_its_name(tmp_path, zipfile_format, kind, monkeypatch):
    stem = save_model(Net(NetConfig()), tmp_path / "net")
    torch.save(Net(NetConfig()).state_dict(), checkpoint_files(stem)[1],
               _use_new_zipfile_serialization=zipfile_format)
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: pytest.fail("unpickled"))
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("unpickled"))
    with pytest.raises(CheckpointError, match=f"{kind}.*only loads safetensors"):
        load_model(stem, cls=Net)


def test_shape_mismatch_names_tensor_and_shapes(tmp_path):
    save_model(Net(NetConfig(width=5)), tmp_path / "net")
    metadata = json.loads((tmp_path / "net.json").read_text())
    metadata["config"]["width"] = 6
    (tmp_path / "net.json").write_text(json.dumps(metadata))
    with pytest.raises(CheckpointError) as error:
        load_model(tmp_path / "net", cls=Net)
    message = str(error.value)
    assert "linear.weight is [5, 3] in the checkpoint but [6, 3] in the model" in message
    assert "linear.bias is [5] in the checkpoint but [6] in the model" in message


def _rename_class(json_path, old, new):
    metadata = json.loads(json_path.read_text())
    metadata["class"] = metadata["class"].replace(old, new)
    json_path.write_text(json.dumps(metadata))


def test_missing_and_unexpected_tensors_are_named(tmp_path):
    save_model(Net(NetConfig()), tmp_path / "net")
    with pytest.raises(CheckpointError, match="holds a .*Net, not a .*NetWithExtraLayer"):
        load_model(tmp_path / "net", cls=NetWithExtraLayer)
    _rename_class(tmp_path / "net.json", ".Net", ".NetWithExtraLayer")
    with pytest.raises(CheckpointError, match=r"missing tensors: head.weight \[2, 5\], head.bias \[2\]"):
        load_model(tmp_path / "net", cls=NetWithExtraLayer)
    save_model(NetWithExtraLayer(NetConfig()), tmp_path / "bigger")
    _rename_class(tmp_path / "bigger.json", "NetWithExtraLayer", "Net")
    with pytest.raises(CheckpointError, match=r"unexpected tensors: head.bias \[2\], head.weight \[2, 5\]"):
        load_model(tmp_path / "bigger", cls=Net)


@pytest.mark.parametrize("change, field", [
    ({"depth": 3}, "config.depth"),
    ({"width": "wide"}, "config.width"),
    ({"kernel_sizes": [3, "x"]}, r"config.kernel_sizes\[1\]"),
])
def test_config_mismatch_names_the_field(tmp_path, change, field):
    save_model(Net(NetConfig()), tmp_path / "net")
    metadata = json.loads((tmp_path / "net.json").read_text())
    metadata["config"].update(change)
    (tmp_path / "net.json").write_text(json.dumps(metadata))
    with pytest.raises(CheckpointError, match=field):
        load_model(tmp_path / "net", cls=Net)


def test_weights_and_json_from_different_saves_are_detected(tmp_path):
    save_model(Net(NetConfig()), tmp_path / "a")
    save_model(Net(NetConfig()), tmp_path / "b")
    checkpoint_files(tmp_path / "a")[1].write_bytes(checkpoint_files(tmp_path / "b")[1].read_bytes())
    with pytest.raises(CheckpointError, match="not saved together"):
        load_model(tmp_path / "a", cls=Net)


def test_failed_save_leaves_no_partial_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    with pytest.raises(CheckpointError, match="not JSON-serialisable"):
        save_model(Net(NetConfig()), tmp_path / "net", extra={"bad": object()})
    assert list(tmp_path.iterdir()) == []

    save_model(Net(NetConfig()), tmp_path / "net")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def failing_save(*args, **kwargs):
        raise RuntimeError("serialisation failed")

    monkeypatch.setattr(checkpoint, "_safetensors_save", failing_save)
    with pytest.raises(RuntimeError, match="serialisation failed"):
        save_model(Net(NetConfig(width=9)), tmp_path / "net")
    monkeypatch.undo()

    def failing_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(facelib.utils.os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="disk full"):
        save_model(Net(NetConfig(width=9)), tmp_path / "net")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # no temporary file left behind


def test_model_without_dataclass_config_is_rejected(tmp_path):
    with pytest.raises(CheckpointError, match="no dataclass `config`"):
        save_model(nn.Linear(2, 2), tmp_path / "linear")


def test_training_state_round_trip_without_pickle(tmp_path, no_unpickling):
    torch.manual_seed(0)
    model = Net(NetConfig())
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2, betas=(0.5, 0.9))
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
    for _ in range(3):
        model(torch.randn(4, 3)).pow(2).mean().backward()
        optimizer.step()
        scheduler.step()
    save_training_state(tmp_path / "state", {"net": model}, {"adam": optimizer}, step=3,
                        stateful={"schedule": scheduler}, extra={"seconds": 1.5})
    expected_draw = torch.rand(3)

    torch.manual_seed(123)
    fresh = Net(NetConfig())
    fresh_optimizer = torch.optim.Adam(fresh.parameters(), lr=1.0)
    fresh_scheduler = torch.optim.lr_scheduler.StepLR(fresh_optimizer, step_size=7, gamma=0.1)
    state = load_training_state(tmp_path / "state", {"net": fresh}, {"adam": fresh_optimizer},
                                stateful={"schedule": fresh_scheduler})
    assert state["step"] == 3 and state["extra"] == {"seconds": 1.5}
    assert torch.equal(torch.rand(3), expected_draw)  # RNG restored
    assert fresh_scheduler.state_dict() == scheduler.state_dict()
    saved, loaded = optimizer.state_dict(), fresh_optimizer.state_dict()
    assert loaded["param_groups"] == saved["param_groups"]  # betas stay a tuple, lr restored
    assert set(loaded["state"]) == set(saved["state"]) == {0, 1}  # integer keys survive JSON
    for index, values in saved["state"].items():
        for key, value in values.items():
            assert torch.equal(loaded["state"][index][key], value), (index, key)
    for key, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value)


def test_training_state_requires_the_same_names(tmp_path):
    model = Net(NetConfig())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    save_training_state(tmp_path / "state", {"net": model}, {"sgd": optimizer}, step=1)
    with pytest.raises(CheckpointError, match=r"optimizer names differ.*\['sgd'\].*\['adam'\]"):
        load_training_state(tmp_path / "state", {"net": model}, {"adam": optimizer})
    with pytest.raises(CheckpointError, match="expected 'facelib.model/1'"):
        load_model(tmp_path / "state", cls=Net)


def test_rng_state_covers_python_numpy_and_torch():
    import random

    import numpy as np

    random.gauss(0, 1)  # leaves a cached Gaussian in Python's state
    state = capture_rng_state()
    expected = (random.random(), random.gauss(0, 1), np.random.rand(), np.random.randn(), torch.rand(1))
    restore_rng_state(state)
    assert (random.random(), random.gauss(0, 1), np.random.rand(), np.random.randn()) == expected[:4]
    assert torch.equal(torch.rand(1), expected[4])


def _ship(folder, model, name="net"):
    save_model(model, folder / name)
    return record_in_manifest(
        name, f"{name}.safetensors", command=f"python -m facelib train {name} --seed 0 --ship", preset="toy",
        steps=10, seed=0, wall_time_s=1.23, metrics={"mse": 0.5}, weights_dir=folder,
    )


def test_load_pretrained_verifies_sha256(tmp_path, facelib_net):
    model = facelib_net(NetConfig(width=3))
    entry = _ship(tmp_path, model)
    assert entry["sha256"] == sha256_file(tmp_path / entry["file"])
    assert read_manifest(tmp_path)["net"]["command"] == "python -m facelib train net --seed 0 --ship"
    loaded = load_pretrained("net", weights_dir=tmp_path)
    assert torch.equal(loaded.linear.weight, model.linear.weight)

    data = bytearray((tmp_path / entry["file"]).read_bytes())
    data[-1] ^= 0xFF  # one flipped bit in the last weight
    (tmp_path / entry["file"]).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=f"sha256 mismatch for {entry['file']}"):
        load_pretrained("net", weights_dir=tmp_path)


def test_unknown_pretrained_name_lists_the_available_ones(tmp_path, facelib_net):
    with pytest.raises(CheckpointError, match="none are shipped yet"):
        load_pretrained("fvae", weights_dir=tmp_path)
    _ship(tmp_path, facelib_net(NetConfig()), "alpha")
    _ship(tmp_path, facelib_net(NetConfig()), "beta")
    with pytest.raises(CheckpointError, match="no pretrained checkpoint named 'fvae'; available: alpha, beta"):
        facelib.load_pretrained("fvae", weights_dir=tmp_path)


def test_shipped_manifest_is_consistent():
    """Every entry of the packaged MANIFEST.json names a file that exists with the recorded sha256."""
    folder = checkpoint.shipped_weights_dir()
    manifest = read_manifest()
    required = {"file", "class", "config", "command", "preset", "steps", "seed", "wall_time_s", "sha256", "metrics"}
    for name, entry in manifest.items():
        assert required <= set(entry), (name, required - set(entry))
        # Trained here by a recipe, or converted from a package's weights by a script (with its source recorded).
        converted = entry["command"].startswith("python scripts/convert_") and {"source", "licence"} <= set(entry)
        assert entry["command"].startswith(f"python -m facelib train ") or converted, name
        assert entry["class"].startswith("facelib."), name
        assert sha256_file(folder / entry["file"]) == entry["sha256"], name


# ---------------------------------------------------------------------------------------------
# Malformed files: each of these escaped as a bare SafetensorError, KeyError, AttributeError,
# TypeError, ValueError, RuntimeError or RecursionError before (16 of the 18 cases).


def _saved_model(folder):
    return save_model(Net(NetConfig()), folder / "net")


def _saved_state(folder):
    model = Net(NetConfig())
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.randn(2, 3)).sum().backward()
    optimizer.step()
    return save_training_state(folder / "state", {"net": model}, {"adam": optimizer}, step=1), model, optimizer


def _edit_json(stem, change):
    json_path = checkpoint_files(stem)[0]
    json_path.write_text(json.dumps(change(json.loads(json_path.read_text()))))


def _without_sha(metadata):
    return {k: v for k, v in metadata.items() if k != "weights_sha256"}


def _rewrite_header(stem, change):
    """Rewrite the safetensors header with ``change(header_dict_or_bytes)`` (sha dropped from the JSON)."""
    weights_path = checkpoint_files(stem)[1]
    data = weights_path.read_bytes()
    length = int.from_bytes(data[:8], "little")
    header = change(data[8:8 + length])
    header += b" " * (-len(header) % 8)
    weights_path.write_bytes(len(header).to_bytes(8, "little") + header + data[8 + length:])
    _edit_json(stem, _without_sha)


def _header_json(change):
    def apply(raw):
        header = json.loads(raw)
        change(header)
        return json.dumps(header).encode()
    return apply


def _first_tensor_offsets_huge(header):
    header[next(k for k in header if k != "__metadata__")]["data_offsets"] = [0, 10**9]


def _load_state(folder, change):
    stem, model, optimizer = _saved_state(folder)
    _edit_json(stem, change)
    load_training_state(stem, {"net": model}, {"adam": optimizer})


def _set_optimizer(key, value):
    def change(metadata):
        metadata["optimizers"]["adam"][key] = value
        return metadata
    return change


def _bad_rng_tensor(folder):
    from safetensors.torch import load, save

    stem, model, optimizer = _saved_state(folder)
    weights_path = checkpoint_files(stem)[1]
    tensors = load(weights_path.read_bytes())
    tensors["rng/python_state"] = torch.zeros(3, dtype=torch.int64)
    weights_path.write_bytes(save(tensors, metadata={"format": "facelib.training_state/1"}))
    _edit_json(stem, _without_sha)
    load_training_state(stem, {"net": model}, {"adam": optimizer})


def _manifest(folder, text):
    (folder / "MANIFEST.json").write_text(text)
    load_pretrained("net", weights_dir=folder)


@dataclass
class PositiveConfig:
    width: int = 3

    def __post_init__(self):
        if self.width < 1:
            raise ValueError("width must be positive")


class PositiveNet(nn.Module):
    def __init__(self, config: PositiveConfig):
        super().__init__()
        self.config = config
        self.linear = nn.Linear(3, config.width)


def _rejected_by_post_init(folder):
    stem = save_model(PositiveNet(PositiveConfig()), folder / "m")
    _edit_json(stem, lambda m: {**m, "config": {"width": -1}})
    load_model(stem, cls=PositiveNet)


MALFORMED = {
    "header is not JSON": lambda d: (_rewrite_header(_saved_model(d), lambda raw: b"{" + b"x" * (len(raw) - 1)),
                                     load_model(d / "net", cls=Net)),
    "tensor offsets beyond the file": lambda d: (_rewrite_header(_saved_model(d), _header_json(
        _first_tensor_offsets_huge)), load_model(d / "net", cls=Net)),
    "header metadata not strings": lambda d: (_rewrite_header(_saved_model(d), _header_json(
        lambda h: h.update({"__metadata__": {"format": 5}}))), load_model(d / "net", cls=Net)),
    "metadata is a list": lambda d: (checkpoint_files(_saved_model(d))[0].write_text("[1, 2]"),
                                     load_model(d / "net", cls=Net)),
    "metadata nested 100000 deep": lambda d: (checkpoint_files(_saved_model(d))[0].write_text(
        "[" * 100000 + "]" * 100000), load_model(d / "net", cls=Net)),
    "class is not a string": lambda d: (_edit_json(_saved_model(d), lambda m: {**m, "class": ["a"]}),
                                        load_model(d / "net")),
    "config is not a dict": lambda d: (_edit_json(_saved_model(d), lambda m: {**m, "config": 7}),
                                       load_model(d / "net", cls=Net)),
    "config refused by __post_init__": _rejected_by_post_init,
    "config the model cannot build": lambda d: (_edit_json(_saved_model(d), lambda m: {
        **m, "config": {**m["config"], "width": -4}}), load_model(d / "net", cls=Net)),
    "state without modules": lambda d: _load_state(d, lambda m: {k: v for k, v in m.items() if k != "modules"}),
    "state lists an RNG it lacks": lambda d: _load_state(d, lambda m: {**m, "rng": m["rng"] + ["bogus"]}),
    "state step is not an int": lambda d: _load_state(d, lambda m: {**m, "step": "ten"}),
    "optimizer param_groups mangled": lambda d: _load_state(d, _set_optimizer("param_groups", 5)),
    "optimizer items malformed": lambda d: _load_state(d, _set_optimizer("state", {"__items__": [[1]]})),
    "RNG tensor of the wrong shape": _bad_rng_tensor,
    "manifest entry not a dict": lambda d: _manifest(d, json.dumps({"net": 3})),
    "manifest entry without file": lambda d: _manifest(d, json.dumps({"net": {"sha256": "x"}})),
    "manifest nested 100000 deep": lambda d: _manifest(d, "[" * 100000 + "]" * 100000),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_every_malformed_file_raises_checkpoint_error(tmp_path, case, no_unpickling):
    with pytest.raises(CheckpointError):
        MALFORMED[case](tmp_path)
