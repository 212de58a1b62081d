"""Safe checkpoints: safetensors weights + a JSON config, written atomically, never unpickled.

A saved model is two files sharing a stem: ``<stem>.json`` (class, config dataclass, versions,
``extra``, the name and sha256 of the weights) and ``<stem>.<version>.safetensors`` (the
``state_dict``; ``<version>`` = 12 hex digits of its sha256). The JSON is the pointer: saving again
writes new weights beside the old ones, replaces the JSON (one atomic rename), then deletes the
old weights, so a writer killed at any point leaves the old or the new checkpoint loadable. A JSON
without ``weights_file`` (older checkpoints) uses ``<stem>.safetensors``.

Three families of functions: models (:func:`save_model`, :func:`load_model`), resumable training
state for ``facelib.train.Trainer`` (:func:`save_training_state`, :func:`load_training_state`, the
RNG helpers), and the shipped weights in ``facelib/weights/`` with their ``MANIFEST.json``
(:func:`load_pretrained`, :func:`pretrained_info`, :func:`ship_models`, ...).

Reading is bounded and refuses what it cannot trust: only regular files are opened, JSON and
safetensors headers are limited to ``MAX_JSON_BYTES`` / ``MAX_SAFETENSORS_HEADER_BYTES``, only
classes inside the ``facelib`` package are built, a model is first built on the meta device (a
config implying more tensor bytes than its file holds is refused before any allocation), and
pickle is refused everywhere (``.pt``/``.pth``/``.pkl``/``.pickle``/``.ckpt``/``.bin`` names, or
pickle/zip magic bytes). Every error is a ``CheckpointError`` (a ``ValueError``).
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import os
import random
import re
import stat
import struct
import types
import typing
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as _safetensors_load
from safetensors.torch import save as _safetensors_save
from torch import nn

from .utils import atomic_write_bytes, atomic_write_text, get_device, lock_folder, remove_temporary_files, unwrap_module

MODEL_FORMAT = "facelib.model/1"
TRAINING_STATE_FORMAT = "facelib.training_state/1"
MANIFEST_NAME = "MANIFEST.json"
PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin")
_PACKAGE = "facelib"
_IDENTIFIER_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$")

#: Size limits for what is read before it is trusted: a JSON file (metadata, manifest) and the
#: JSON header at the start of a safetensors file. Real ones are a few kB.
MAX_JSON_BYTES = 16 << 20
MAX_SAFETENSORS_HEADER_BYTES = 16 << 20
#: Deepest nesting accepted in a JSON file (real ones nest 4-6 levels; this stays far below
#: Python's recursion limit, which json.loads would otherwise hit).
MAX_JSON_DEPTH = 64

#: A checkpoint's weights are written as ``<stem>.<version>.safetensors``: 12 hex digits of a sha256.
_VERSION = "[0-9a-f]{12}"

#: The class each shipped name must hold (a manifest naming another class for it is refused).
PRETRAINED_CLASSES = {
    "fvae": "facelib.models.fvae.FVAE",
    "ganimation": "facelib.models.ganimation.GANimationGenerator",
    "fvae_confidence": "facelib.models.fvae.ConfidenceNet",
    "fvae_pixel_vae": "facelib.models.fvae.PixelVAE",
    "expression_classifier": "facelib.models.evaluators.ExpressionClassifier",
    "au_regressor": "facelib.models.evaluators.AURegressor",
    "identity_embedder": "facelib.models.evaluators.IdentityEmbedder",
    "fer2013_mini_xception": "facelib.models.real.MiniXception",
    "average_flow": "facelib.models.baselines.AverageFlow",
    "stargan": "facelib.models.stargan.StarGANGenerator",
    "exprgan": "facelib.models.exprgan.ExprGAN",
    "exprgan_critic": "facelib.models.exprgan.ExprGANCritic",
    "exprgan_caae": "facelib.models.exprgan.ExprGAN",
    "exprgan_no_q": "facelib.models.exprgan.ExprGAN",
    "exprgan_joint": "facelib.models.exprgan.ExprGAN",
}


class CheckpointError(ValueError):
    """A checkpoint that cannot be written or loaded safely; the message says what and why."""


# ---------------------------------------------------------------------------------------------
# Paths, hashes and the never-unpickle guard


def _stem(path: str | Path) -> Path:
    """``x``, ``x.safetensors`` and ``x.json`` all name the checkpoint ``x``."""
    path = Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise CheckpointError(
            f"{path.name}: '{path.suffix}' files are pickles, which facelib never loads (unpickling runs "
            "arbitrary code). Convert the weights once with torch.load + facelib.checkpoint.save_model "
            "and load the .safetensors/.json pair instead."
        )
    if path.suffix in (".safetensors", ".json"):
        return path.with_suffix("")
    return path


def _with_suffix(stem: Path, suffix: str) -> Path:
    return stem.with_name(stem.name + suffix)


def _open_regular_file(path: Path, what: str):
    """Open ``path`` for reading if it is a regular file; a FIFO, device or socket is refused.

    ``O_NONBLOCK`` makes opening a FIFO return at once instead of waiting for a writer, so the
    check after it cannot hang (``/dev/zero`` or a pipe would otherwise be read forever).
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise CheckpointError(f"{what} not found: {path}") from None
    except IsADirectoryError:
        raise CheckpointError(f"{what} {path} is a folder, not a file") from None
    except OSError as err:
        raise CheckpointError(f"cannot open {what} {path}: {err.strerror}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise CheckpointError(f"{what} {path} is not a regular file (a FIFO, device or socket); refusing to read it")
    return os.fdopen(fd, "rb")


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a regular file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with _open_regular_file(Path(path), "file") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _not_safetensors(path: Path, head: bytes) -> CheckpointError:
    """The error for a weights file that is not safetensors (pickles and torch.save zips are named)."""
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        kind = "a pickle"
    elif head[:4] == b"PK\x03\x04":
        kind = "a zip archive (what torch.save writes, with a pickle inside)"
    else:
        kind = "not a safetensors file"
    return CheckpointError(
        f"{path} is {kind}; facelib only loads safetensors (nothing is ever unpickled). "
        "Save weights with facelib.checkpoint.save_model (or safetensors.torch.save_file)."
    )


def _read_safetensors_bytes(path: Path) -> bytes:
    """The bytes of a safetensors file, after checking it is one (not a pickle/zip, header within limits)."""
    with _open_regular_file(path, "checkpoint weights") as handle:
        size = os.fstat(handle.fileno()).st_size
        head = handle.read(9)
        if len(head) < 9 or head[8:9] != b"{":
            raise _not_safetensors(path, head)
        (header_length,) = struct.unpack("<Q", head[:8])
        if header_length > MAX_SAFETENSORS_HEADER_BYTES:
            raise CheckpointError(f"{path}: its safetensors header claims {header_length} bytes, over the "
                                  f"{MAX_SAFETENSORS_HEADER_BYTES >> 20} MiB limit; the file is corrupt or hostile")
        if 8 + header_length > size:
            raise CheckpointError(f"{path} is truncated: its header claims {header_length} bytes but the file "
                                  f"holds {size}")
        return head + handle.read()


def _json_depth(value: Any) -> int:
    """Nesting depth of parsed JSON (iterative, so it cannot itself recurse too deeply)."""
    deepest, pending = 0, [(value, 1)]
    while pending:
        value, depth = pending.pop()
        if isinstance(value, (dict, list)):
            deepest = max(deepest, depth)
            pending.extend((item, depth + 1) for item in (value.values() if isinstance(value, dict) else value))
    return deepest


def _read_json(path: Path, what: str = "checkpoint metadata") -> dict:
    """A JSON object from a regular file of at most ``MAX_JSON_BYTES``; anything else is a CheckpointError."""
    with _open_regular_file(path, what) as handle:
        if os.fstat(handle.fileno()).st_size > MAX_JSON_BYTES:
            raise CheckpointError(f"{path} is larger than the {MAX_JSON_BYTES >> 20} MiB accepted for {what}")
        raw = handle.read(MAX_JSON_BYTES + 1)
    if raw[:1] == b"\x80" or raw[:4] == b"PK\x03\x04":
        raise CheckpointError(f"{path} is a pickle/zip file, not JSON; facelib never unpickles")
    try:
        value = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path} is not valid JSON: {err}") from err
    except RecursionError:
        raise CheckpointError(f"{path} nests JSON deeper than Python can parse; refusing it") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{path} must hold a JSON object {{...}}, not a {type(value).__name__}")
    if _json_depth(value) > MAX_JSON_DEPTH:
        raise CheckpointError(f"{path} nests JSON more than {MAX_JSON_DEPTH} levels deep; refusing it")
    return value


class _Malformed:
    """``with _Malformed(path, "what was being done"):`` turns any error from code that trusts a
    file's contents (torch, safetensors, dataclass checks, optimiser and RNG loaders) into a
    ``CheckpointError`` naming the file, so a malformed checkpoint never escapes as a bare
    ``KeyError``, ``TypeError`` or ``SafetensorError``."""

    def __init__(self, path: Path, action: str):
        self.path, self.action = path, action

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, error, traceback) -> bool:
        if error is None or isinstance(error, CheckpointError) or not isinstance(error, Exception):
            return False
        raise CheckpointError(f"{self.path}: malformed checkpoint ({self.action}: {type(error).__name__}: "
                              f"{error})") from error


def _json_dumps(obj: Any, what: str) -> str:
    try:
        return json.dumps(obj, indent=2, sort_keys=True)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{what} is not JSON-serialisable ({err}); use numbers, strings, lists, dicts") from err


def _versions() -> dict[str, str]:
    from . import __version__

    return {"facelib": __version__, "torch": torch.__version__}


# ---------------------------------------------------------------------------------------------
# Resolving classes (only inside facelib) and rebuilding Config dataclasses


def _class_path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _resolve_facelib_class(path: str) -> type:
    """Import ``facelib.x.y.Name``; refuse anything outside the facelib package."""
    if not isinstance(path, str) or not _IDENTIFIER_PATH.match(path) or not path.startswith(_PACKAGE + "."):
        raise CheckpointError(
            f"refusing to build class {path!r}: checkpoints may only name classes inside the "
            f"'{_PACKAGE}' package; pass cls=YourModel to load_model to use another class"
        )
    module_name, _, class_name = path.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise CheckpointError(f"cannot import {module_name!r} for checkpoint class {path!r}: {err}") from err
    cls = getattr(module, class_name, None)
    if not isinstance(cls, type):
        raise CheckpointError(f"{module_name} has no class {class_name!r} (named by the checkpoint)")
    return cls


def _config_class_of(model_cls: type, stored_path: str | None) -> type:
    """The Config dataclass a model class takes: ``config_class`` attribute or ``__init__``'s annotation."""
    declared = getattr(model_cls, "config_class", None)
    if declared is None:
        try:
            hint = typing.get_type_hints(model_cls.__init__).get("config")
        except Exception:  # unresolvable annotations: fall back to the stored class path
            hint = None
        if hint is not None:
            candidates = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
            declared = candidates[0]
    if declared is None and stored_path is not None:
        declared = _resolve_facelib_class(stored_path)
    if not (isinstance(declared, type) and dataclasses.is_dataclass(declared)):
        raise CheckpointError(
            f"cannot tell which Config dataclass {model_cls.__name__} takes: annotate __init__(self, config: "
            "SomeConfig) or set the class attribute config_class = SomeConfig"
        )
    return declared


def _coerce(hint: Any, value: Any, where: str) -> Any:
    """Turn a JSON value back into what the dataclass field ``hint`` says, or name the field."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        for arm in args:
            try:
                return _coerce(arm, value, where)
            except CheckpointError:
                continue
        raise CheckpointError(f"config field {where}: {value!r} matches none of {hint}")
    if hint is type(None):
        if value is None:
            return None
    elif origin is typing.Literal:
        if value in args:
            return value
    elif isinstance(hint, type) and dataclasses.is_dataclass(hint):
        if isinstance(value, dict):
            return _config_from_dict(hint, value, where)
    elif origin in (tuple, list) or hint in (tuple, list):
        if isinstance(value, (list, tuple)):
            container = tuple if (origin or hint) is tuple else list
            if not args:
                return container(value)
            if container is tuple and not (len(args) == 2 and args[1] is Ellipsis):
                if len(args) != len(value):
                    raise CheckpointError(f"config field {where}: expected {len(args)} values, got {value!r}")
                return tuple(_coerce(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
            return container(_coerce(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
    elif origin is dict or hint is dict:
        if isinstance(value, dict):
            if len(args) == 2:
                return {k: _coerce(args[1], v, f"{where}[{k!r}]") for k, v in value.items()}
            return dict(value)
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(hint, type):
        if isinstance(value, hint):
            return value
    else:
        return value  # an annotation we cannot check (a TypeVar, a string): trust the JSON
    raise CheckpointError(f"config field {where}: stored value {value!r} is not a {hint}")


def _config_from_dict(config_cls: type, data: dict, where: str = "config") -> Any:
    """Rebuild ``config_cls`` from a dict; unknown, missing or ill-typed fields are named."""
    if not isinstance(data, dict):
        raise CheckpointError(f"{where}: expected a dict of {config_cls.__name__} fields, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(config_cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise CheckpointError(
            f"config mismatch: field(s) {', '.join(f'{where}.{u}' for u in unknown)} are in the checkpoint but not "
            f"in {config_cls.__name__} (its fields: {', '.join(fields)})"
        )
    missing = [
        name for name, f in fields.items()
        if name not in data and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise CheckpointError(
            f"config mismatch: {config_cls.__name__} requires field(s) {', '.join(f'{where}.{m}' for m in missing)} "
            "that the checkpoint does not store"
        )
    hints = typing.get_type_hints(config_cls)
    kwargs = {name: _coerce(hints.get(name, Any), value, f"{where}.{name}") for name, value in data.items()}
    return config_cls(**kwargs)


# ---------------------------------------------------------------------------------------------
# The pair on disk: ``<stem>.json`` points at ``<stem>.<version>.safetensors``
#
# Two files cannot be renamed at once, so a checkpoint is replaced in an order in which every
# moment leaves one complete pair: (1) the new weights are written under a new versioned name
# (the old ones stay), (2) the JSON, which names its weights file, is replaced atomically: this
# one rename switches from the old pair to the new one, (3) the weights no JSON names any more
# are deleted. A writer killed anywhere leaves the old or the new checkpoint loadable, plus at
# most some unreferenced files, which the next save of that stem (or clean_folder) removes.
# Checkpoints saved before this layout have no "weights_file" and use ``<stem>.safetensors``.


def _weights_file_name(stem: Path, metadata: dict, json_path: Path) -> str:
    """The weights file a checkpoint's JSON names: a bare file name beside the JSON, never a path."""
    name = metadata.get("weights_file", stem.name + ".safetensors")
    if not (isinstance(name, str) and name.endswith(".safetensors") and name == Path(name).name
            and name not in (".", "..") and "\\" not in name):
        raise CheckpointError(f"{json_path}: weights_file {name!r} must be a file name ending in .safetensors in "
                              "the same folder (no folders, no '..')")
    return name


def _json_of(stem: Path) -> Path:
    """``<stem>.json``; a versioned weights name (``fvae.0123456789ab``) also finds ``fvae.json``."""
    json_path = _with_suffix(stem, ".json")
    base, _, version = stem.name.rpartition(".")
    if not json_path.exists() and base and re.fullmatch(_VERSION, version):
        return stem.with_name(base + ".json")
    return json_path


def checkpoint_files(path: str | Path) -> tuple[Path, Path]:
    """``(json_path, weights_path)`` of the checkpoint at ``path`` (a stem, or either file's name).

    Raises ``CheckpointError`` when the JSON is missing or unreadable; the weights file may not exist.
    """
    json_path = _json_of(_stem(path))
    metadata = _read_json(json_path)
    return json_path, json_path.with_name(_weights_file_name(json_path.with_suffix(""), metadata, json_path))


def _referenced_weights(json_path: Path) -> str | None:
    """The weights file name ``json_path`` points at; None when there is no readable JSON."""
    try:
        return _weights_file_name(json_path.with_suffix(""), _read_json(json_path), json_path)
    except CheckpointError:
        return None


def _remove_stale_files(stem: Path) -> list[Path]:
    """Delete what killed writers of ``stem`` left: temporary files and weights its JSON no longer names."""
    json_path = _with_suffix(stem, ".json")
    if json_path.exists() and _referenced_weights(json_path) is None:
        return []  # an unreadable JSON: keep everything for whoever investigates it
    keep = _referenced_weights(json_path)
    ours = re.compile(rf"^{re.escape(stem.name)}(\.{_VERSION})?\.safetensors$")
    ours_temporary = re.compile(rf"^\.{re.escape(stem.name)}(\.{_VERSION})?\.(json|safetensors)\.[A-Za-z0-9_]+\.tmp$")
    removed = []
    for path in stem.parent.iterdir() if stem.parent.is_dir() else ():
        if (ours.match(path.name) and path.name != keep) or ours_temporary.match(path.name):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def clean_folder(folder: str | Path) -> list[Path]:
    """Remove every checkpoint writer's leftover in ``folder``: temporary files and unreferenced weights.

    Only for a folder no other process is writing to (the Trainer holds its run lock); returns
    the deleted paths.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = remove_temporary_files(folder)
    for json_path in folder.glob("*.json"):
        removed += _remove_stale_files(json_path.with_suffix(""))
    versioned = re.compile(rf"^(.+)\.{_VERSION}\.safetensors$")
    for path in folder.glob("*.safetensors"):  # weights whose JSON was deleted first
        match = versioned.match(path.name)
        if match and not (folder / f"{match.group(1)}.json").exists() and not path.with_suffix(".json").exists():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _write_pair(stem: Path, weights: bytes, metadata: dict, what: str) -> Path:
    """Replace the checkpoint ``stem`` by ``weights`` + ``metadata`` as a whole or not at all (see above)."""
    sha = hashlib.sha256(weights).hexdigest()
    metadata = {**metadata, "weights_sha256": sha, "weights_file": f"{stem.name}.{sha[:12]}.safetensors"}
    text = _json_dumps(metadata, what) + "\n"
    _remove_stale_files(stem)
    atomic_write_bytes(stem.with_name(metadata["weights_file"]), weights)
    atomic_write_text(_with_suffix(stem, ".json"), text)  # the switch
    _remove_stale_files(stem)  # the previous weights
    return stem


# ---------------------------------------------------------------------------------------------
# Models


def _tensors_for_saving(state: dict[str, Any], what: str) -> dict[str, torch.Tensor]:
    """CPU, contiguous, unshared copies (safetensors refuses tensors that share memory)."""
    tensors = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{what}: entry {key!r} is a {type(value).__name__}, not a tensor")
        tensors[key] = value.detach().to("cpu").contiguous().clone()
    return tensors


def save_model(model: nn.Module, path: str | Path, extra: dict | None = None) -> Path:
    """Write ``<stem>.json`` (class, config, versions, extra) and the weights it names; returns the stem.

    A model is an ``nn.Module`` built as ``Model(config)`` that keeps its dataclass in
    ``self.config`` (its ``__init__`` annotates ``config: SomeConfig`` or the class sets
    ``config_class``). ``path`` may be a stem or end in ``.safetensors``/``.json``; a DDP-wrapped
    model is unwrapped; ``extra`` must be JSON-serialisable.

    The pair replaces an earlier checkpoint at ``stem`` as a whole or not at all (see
    ``_write_pair``); the JSON records the sha256 of the weights, so a mismatch is detected at load time.
    """
    model = unwrap_module(model)
    stem = _stem(path)
    config = getattr(model, "config", None)
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        raise CheckpointError(
            f"{type(model).__name__} has no dataclass `config` attribute; facelib models are built as "
            "Model(config) and keep self.config (a dataclass instance)"
        )
    metadata = {
        "format": MODEL_FORMAT,
        "class": _class_path(type(model)),
        "config_class": _class_path(type(config)),
        "config": dataclasses.asdict(config),
        "versions": _versions(),
        "extra": extra or {},
    }
    _json_dumps(metadata, f"config/extra of {type(model).__name__}")  # fail before writing anything
    weights = _safetensors_save(
        _tensors_for_saving(model.state_dict(), type(model).__name__), metadata={"format": MODEL_FORMAT}
    )
    return _write_pair(stem, weights, metadata, "checkpoint metadata")


def read_metadata(path: str | Path) -> dict:
    """The JSON half of a checkpoint (class, config, versions, extra, weights_sha256, weights_file)."""
    json_path, weights_path = checkpoint_files(path)
    if weights_path.exists():
        _read_safetensors_header(weights_path)
    return _read_json(json_path)


def _read_safetensors_header(path: Path) -> None:
    """Check the first bytes of a weights file (refuses pickles early, before any big read)."""
    with _open_regular_file(path, "checkpoint weights") as handle:
        head = handle.read(9)
    if len(head) < 9 or head[8:9] != b"{":
        raise _not_safetensors(path, head)


def _load_tensors(json_path: Path, weights_path: Path, metadata: dict, map_location) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint, after checking they are the ones its JSON was saved with."""
    data = _read_safetensors_bytes(weights_path)
    expected = metadata.get("weights_sha256")
    if expected is not None and hashlib.sha256(data).hexdigest() != expected:
        raise CheckpointError(
            f"{weights_path.name} does not match {json_path.name} (sha256 differs): the two files were not "
            "saved together; re-save the checkpoint"
        )
    with _Malformed(weights_path, "reading the safetensors data"):
        tensors = _safetensors_load(data)
    device = get_device(map_location)
    return {key: value.to(device) for key, value in tensors.items()}


def _check_state_dict(module: nn.Module, tensors: dict[str, torch.Tensor], what: str) -> None:
    """Raise a CheckpointError naming every missing, unexpected or mis-shaped tensor."""
    expected = {key: tuple(value.shape) for key, value in module.state_dict().items()}
    found = {key: tuple(value.shape) for key, value in tensors.items()}
    problems = []
    missing = [key for key in expected if key not in found]
    unexpected = sorted(key for key in found if key not in expected)
    mismatched = [key for key in expected if key in found and expected[key] != found[key]]
    limit = 10
    if missing:
        problems.append("missing tensors: " + ", ".join(f"{k} {list(expected[k])}" for k in missing[:limit]))
    if unexpected:
        problems.append("unexpected tensors: " + ", ".join(f"{k} {list(found[k])}" for k in unexpected[:limit]))
    if mismatched:
        problems.append(
            "shape mismatch: "
            + ", ".join(f"{k} is {list(found[k])} in the checkpoint but {list(expected[k])} in the model"
                        for k in mismatched[:limit])
        )
    if problems:
        more = max(len(missing), len(unexpected), len(mismatched)) > limit
        raise CheckpointError(f"{what}: " + "; ".join(problems) + (" (and more)" if more else ""))


def _read_metadata_of_format(path: str | Path, expected: str, hint: str) -> tuple[Path, Path, dict]:
    """``(json_path, weights_path, metadata)`` of a checkpoint, refused unless of the ``expected`` format."""
    json_path, weights_path = checkpoint_files(path)
    metadata = read_metadata(json_path)
    if metadata.get("format") != expected:
        raise CheckpointError(f"{json_path} has format {metadata.get('format')!r}, expected {expected!r} ({hint})")
    return json_path, weights_path, metadata


def _model_class(json_path: Path, metadata: dict, cls: type | None) -> type:
    """The class to build: the one named in the JSON (inside facelib), or ``cls`` if it agrees with the JSON."""
    stored_class = metadata.get("class")
    if stored_class is not None and not isinstance(stored_class, str):
        raise CheckpointError(f"{json_path}: 'class' must be a dotted class path, got {stored_class!r}")
    if cls is None:
        cls = _resolve_facelib_class(stored_class)
    elif stored_class is not None and stored_class.rpartition(".")[2] != cls.__qualname__.rpartition(".")[2]:
        raise CheckpointError(f"{json_path.with_suffix('').name} holds a {stored_class}, not a {_class_path(cls)}")
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise CheckpointError(f"{stored_class!r} is not a torch.nn.Module subclass")
    return cls


def _build_bounded(cls: type, config: Any, json_path: Path, weights_path: Path) -> nn.Module:
    """``cls(config)``, after checking on the meta device (no memory) that its tensors fit in the weights file.

    A strict load needs exactly the file's tensors, so a config implying more bytes than the file
    holds cannot load; refusing it first stops a 500-byte JSON from allocating gigabytes.
    """
    with _Malformed(json_path, f"building {cls.__name__} from its config"):
        with torch.device("meta"):
            shapes_only = cls(config)
        needed = sum(t.numel() * t.element_size() for t in shapes_only.state_dict().values())
        available = weights_path.stat().st_size if weights_path.exists() else 0
        if needed > available:
            raise CheckpointError(
                f"{json_path}: its config asks {cls.__name__} for {needed / 2**20:.1f} MiB of tensors, but "
                f"{weights_path.name} holds only {available / 2**20:.1f} MiB; refusing to build it"
            )
        return cls(config)


def load_model(path: str | Path, cls: type | None = None, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a model saved by :func:`save_model` and load its weights strictly; returns it in eval mode.

    The class named in the JSON is resolved only inside the ``facelib`` package (pass ``cls`` to use
    another); its Config dataclass is rebuilt field by field (an unknown or ill-typed field raises
    ``CheckpointError`` naming it); missing / unexpected tensors and shape mismatches are named with
    their shapes.
    """
    json_path, weights_path, metadata = _read_metadata_of_format(
        path, MODEL_FORMAT, "a training-state checkpoint is read with load_training_state")
    cls = _model_class(json_path, metadata, cls)
    config_class = metadata.get("config_class")
    config_cls = _config_class_of(cls, config_class if isinstance(config_class, str) else None)
    with _Malformed(json_path, f"rebuilding {config_cls.__name__}"):
        config = _config_from_dict(config_cls, metadata.get("config", {}))
    _read_safetensors_header(weights_path)  # a pickle is named before anything is built
    model = _build_bounded(cls, config, json_path, weights_path)
    tensors = _load_tensors(json_path, weights_path, metadata, map_location)
    _check_state_dict(model, tensors, f"loading {json_path.with_suffix('').name} into {cls.__name__}")
    model.to(get_device(map_location))
    model.load_state_dict(tensors, strict=True)
    return model.eval()


# ---------------------------------------------------------------------------------------------
# Random number generator states, as tensors


def capture_rng_state() -> dict[str, torch.Tensor]:
    """Python ``random``, NumPy, torch CPU and every CUDA/MPS generator state, as tensors."""
    version, python_internal, python_gauss = random.getstate()
    _, numpy_keys, numpy_pos, numpy_has_gauss, numpy_gauss = np.random.get_state(legacy=True)
    state = {
        "torch": torch.get_rng_state(),
        "python_state": torch.tensor([version, *python_internal], dtype=torch.int64),
        "python_gauss": torch.tensor(
            [0.0 if python_gauss is None else 1.0, 0.0 if python_gauss is None else python_gauss], dtype=torch.float64
        ),
        "numpy_keys": torch.from_numpy(numpy_keys.astype(np.int64)),
        "numpy_pos": torch.tensor([numpy_pos, numpy_has_gauss], dtype=torch.int64),
        "numpy_gauss": torch.tensor([numpy_gauss], dtype=torch.float64),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.stack(torch.cuda.get_rng_state_all())
    mps = getattr(torch, "mps", None)
    if mps is not None and torch.backends.mps.is_available():
        state["mps"] = mps.get_rng_state()
    return state


def restore_rng_state(state: dict[str, torch.Tensor]) -> None:
    """Inverse of :func:`capture_rng_state`; generators of devices this machine lacks are skipped."""
    needed = {"torch", "python_state", "python_gauss", "numpy_keys", "numpy_pos", "numpy_gauss"}
    missing = sorted(needed - set(state))
    if missing:
        raise CheckpointError(f"RNG state lacks {', '.join(missing)} (expected the keys of capture_rng_state())")
    torch.set_rng_state(state["torch"].to("cpu", torch.uint8))
    python_state = [int(v) for v in state["python_state"].tolist()]
    has_gauss, gauss = state["python_gauss"].tolist()
    random.setstate((python_state[0], tuple(python_state[1:]), gauss if has_gauss else None))
    numpy_pos, numpy_has_gauss = (int(v) for v in state["numpy_pos"].tolist())
    np.random.set_state(
        ("MT19937", state["numpy_keys"].numpy().astype(np.uint32), numpy_pos, numpy_has_gauss,
         float(state["numpy_gauss"][0]))
    )
    if "cuda" in state and torch.cuda.is_available():
        saved = list(state["cuda"].to("cpu", torch.uint8))
        for index in range(min(len(saved), torch.cuda.device_count())):
            torch.cuda.set_rng_state(saved[index], index)
    if "mps" in state and getattr(torch, "mps", None) is not None and torch.backends.mps.is_available():
        torch.mps.set_rng_state(state["mps"].to("cpu", torch.uint8))


def save_rng_state(path: str | Path, state: dict[str, torch.Tensor] | None = None) -> Path:
    """Write an RNG state (default: the current one) to one safetensors file, atomically."""
    path = Path(path)
    state = capture_rng_state() if state is None else state
    atomic_write_bytes(path, _safetensors_save(_tensors_for_saving(state, "RNG state"), metadata={"format": "facelib.rng/1"}))
    return path


def load_rng_state(path: str | Path) -> dict[str, torch.Tensor]:
    """Read an RNG state written by :func:`save_rng_state` (pass it to :func:`restore_rng_state`)."""
    weights_path = _with_suffix(_stem(path), ".safetensors")
    with _Malformed(weights_path, "reading an RNG state"):
        return _safetensors_load(_read_safetensors_bytes(weights_path))


# ---------------------------------------------------------------------------------------------
# Resumable training state: tensors to safetensors, everything else to JSON (tagged)


def _encode(obj: Any, path: str, tensors: dict[str, torch.Tensor]) -> Any:
    """JSON-able form of ``obj``: tensors go to ``tensors`` under ``path``; tuples and int keys are tagged."""
    if isinstance(obj, torch.Tensor):
        if path in tensors:
            raise CheckpointError(f"two tensors would be stored under the name {path!r}")
        tensors[path] = obj.detach().to("cpu").contiguous().clone()
        return {"__tensor__": path}
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: _encode(v, f"{path}/{k}", tensors) for k, v in obj.items()}
        for k in obj:
            if not isinstance(k, (str, int)) or isinstance(k, bool):
                raise CheckpointError(f"{path}: dict key {k!r} is neither str nor int")
        return {"__items__": [[k, _encode(v, f"{path}/{k}", tensors)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, f"{path}/{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, f"{path}/{i}", tensors) for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise CheckpointError(
        f"{path}: cannot store a {type(obj).__name__} without pickle (accepted: tensors, numbers, strings, "
        "None, lists, tuples, dicts)"
    )


def _decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {"__tensor__"}:
            key = obj["__tensor__"]
            if key not in tensors:
                raise CheckpointError(f"training state refers to tensor {key!r}, which the .safetensors lacks")
            return tensors[key]
        if set(obj) == {"__items__"}:
            return {k: _decode(v, tensors) for k, v in obj["__items__"]}
        if set(obj) == {"__tuple__"}:
            return tuple(_decode(v, tensors) for v in obj["__tuple__"])
        return {k: _decode(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    return obj


def _check_names(kind: str, given: dict, stored: dict, stem: Path) -> None:
    if set(given) != set(stored):
        raise CheckpointError(
            f"{stem.name}: {kind} names differ: the checkpoint has {sorted(stored)}, the caller passed {sorted(given)}"
        )


def save_training_state(
    path: str | Path,
    modules: dict[str, nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    step: int,
    rng_state: dict[str, torch.Tensor] | None = None,
    stateful: dict[str, Any] | None = None,
    extra: dict | None = None,
) -> Path:
    """Write a resumable checkpoint (weights, optimiser state, RNG, step) as safetensors + JSON.

    Module weights and optimiser state tensors go to the safetensors file; the step, the optimisers'
    ``param_groups`` and non-tensor state go to the JSON. ``rng_state`` defaults to
    :func:`capture_rng_state`; ``stateful`` holds other objects with ``state_dict()`` /
    ``load_state_dict()`` (LR schedulers, GradScaler) whose state is tensors and JSON values.
    """
    stem = _stem(path)
    stateful = stateful or {}
    tensors: dict[str, torch.Tensor] = {}
    for name, module in modules.items():
        state = _tensors_for_saving(unwrap_module(module).state_dict(), f"module {name!r}")
        tensors.update({f"module/{name}/{key}": value for key, value in state.items()})
    rng_state = capture_rng_state() if rng_state is None else rng_state
    tensors.update({f"rng/{key}": value.detach().to("cpu").contiguous().clone() for key, value in rng_state.items()})
    metadata = {
        "format": TRAINING_STATE_FORMAT,
        "step": int(step),
        "modules": {name: _class_path(type(unwrap_module(m))) for name, m in modules.items()},
        "optimizers": {name: _encode(opt.state_dict(), f"optim/{name}", tensors) for name, opt in optimizers.items()},
        "stateful": {name: _encode(obj.state_dict(), f"stateful/{name}", tensors) for name, obj in stateful.items()},
        "rng": sorted(rng_state),
        "versions": _versions(),
        "extra": extra or {},
    }
    _json_dumps(metadata, "training state")  # fail before writing anything
    weights = _safetensors_save(tensors, metadata={"format": TRAINING_STATE_FORMAT})
    return _write_pair(stem, weights, metadata, "training state")


def load_training_state(
    path: str | Path,
    modules: dict[str, nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    stateful: dict[str, Any] | None = None,
    restore_rng: bool = True,
) -> dict:
    """Load a :func:`save_training_state` checkpoint in place; returns ``{"step", "extra", "rng_state"}``.

    Strict: the same module and optimiser names must be present; tensors go to the devices the
    modules and optimisers already live on. ``stateful`` objects (LR schedulers, GradScaler) get
    their ``load_state_dict`` called."""
    json_path, weights_path, metadata = _read_metadata_of_format(
        path, TRAINING_STATE_FORMAT, "a model checkpoint is read with load_model")
    stem = json_path.with_suffix("")
    stateful = stateful or {}
    for key, kind in (("modules", dict), ("optimizers", dict), ("stateful", dict), ("rng", list), ("extra", dict)):
        if not isinstance(metadata.get(key, kind()), kind):
            raise CheckpointError(f"{json_path}: '{key}' must be a JSON {'object' if kind is dict else 'list'}")
    if not isinstance(metadata.get("step"), int) or isinstance(metadata.get("step"), bool) or metadata["step"] < 0:
        raise CheckpointError(f"{json_path}: 'step' must be a non-negative integer, got {metadata.get('step')!r}")
    _check_names("module", modules, metadata.get("modules", {}), stem)
    _check_names("optimizer", optimizers, metadata.get("optimizers", {}), stem)
    _check_names("stateful object", stateful, metadata.get("stateful", {}), stem)
    tensors = _load_tensors(json_path, weights_path, metadata, "cpu")
    for name, module in modules.items():
        module = unwrap_module(module)
        prefix = f"module/{name}/"
        state = {key[len(prefix):]: value for key, value in tensors.items() if key.startswith(prefix)}
        _check_state_dict(module, state, f"loading module {name!r} from {stem.name}")
        module.load_state_dict(state, strict=True)
    # Optimizer.load_state_dict moves its state onto each parameter's device itself.
    for name, optimizer in optimizers.items():
        with _Malformed(json_path, f"restoring optimizer {name!r}"):
            optimizer.load_state_dict(_decode(metadata["optimizers"][name], tensors))
    for name, obj in stateful.items():
        with _Malformed(json_path, f"restoring {name!r}"):
            obj.load_state_dict(_decode(metadata["stateful"][name], tensors))
    missing = [key for key in metadata.get("rng", []) if f"rng/{key}" not in tensors]
    if missing:
        raise CheckpointError(f"{json_path}: RNG state(s) {missing} are listed but {weights_path.name} lacks them")
    rng_state = {key: tensors[f"rng/{key}"] for key in metadata.get("rng", [])}
    if restore_rng and rng_state:
        with _Malformed(weights_path, "restoring the RNG state"):
            restore_rng_state(rng_state)
    return {"step": metadata["step"], "extra": metadata.get("extra", {}), "rng_state": rng_state}


# ---------------------------------------------------------------------------------------------
# Shipped weights and their manifest
#
# MANIFEST.json is the one pointer of a weights folder: ``ship_models`` writes each new pair under
# new names (``<name>.<version>.safetensors`` + ``<name>.<version>.json``), then replaces the
# manifest atomically, then deletes the files only the old manifest named. A ship killed anywhere
# leaves the previous manifest with the files and sha256s it records.


def shipped_weights_dir() -> Path:
    """The ``facelib/weights`` folder installed with the package."""
    return Path(__file__).resolve().parent / "weights"


def _weights_folder(weights_dir: str | Path | None) -> Path:
    return Path(weights_dir) if weights_dir is not None else shipped_weights_dir()


def read_manifest(weights_dir: str | Path | None = None) -> dict:
    """``MANIFEST.json`` of a weights folder (default: the shipped one) as a dict."""
    path = _weights_folder(weights_dir) / MANIFEST_NAME
    if not path.exists():
        return {}
    return _read_json(path, MANIFEST_NAME)


def available_pretrained(weights_dir: str | Path | None = None) -> list[str]:
    """Names ``load_pretrained`` accepts."""
    return sorted(read_manifest(weights_dir))


def pretrained_info(name: str, weights_dir: str | Path | None = None) -> dict:
    """The manifest entry of a shipped checkpoint (command, preset, steps, seed, metrics, ...)."""
    manifest = read_manifest(weights_dir)
    if name not in manifest:
        available = ", ".join(sorted(manifest)) if manifest else "none are shipped yet"
        raise CheckpointError(f"no pretrained checkpoint named {name!r}; available: {available}")
    entry = manifest[name]
    if not isinstance(entry, dict):
        raise CheckpointError(f"{MANIFEST_NAME}: entry {name!r} must be a JSON object, got {type(entry).__name__}")
    return entry


def _file_inside(folder: Path, name: Any, where: str) -> Path:
    """``folder / name`` for a plain relative name that stays inside ``folder`` (no absolute path, no '..')."""
    if not isinstance(name, str) or not name or Path(name).is_absolute() or ".." in Path(name).parts:
        raise CheckpointError(f"{where}: file {name!r} must be a relative path inside the weights folder "
                              "(absolute paths and '..' are refused)")
    path = folder / name
    if not path.resolve().is_relative_to(folder.resolve()):
        raise CheckpointError(f"{where}: file {name!r} leads outside the weights folder {folder} (a symlink?)")
    return path


def _shipped_files(folder: Path, name: str, entry: dict) -> tuple[Path, Path]:
    """``(weights_path, json_path)`` of a manifest entry, after checking the entry is complete."""
    where = f"{MANIFEST_NAME} entry {name!r}"
    for key in ("file", "sha256", "config_sha256", "class"):
        if not isinstance(entry.get(key), str):
            raise CheckpointError(f"{where} has no {key!r}; shipped weights must record their file, class and "
                                  "both sha256s (re-ship them with python -m facelib train ... --ship)")
    weights_path = _file_inside(folder, entry["file"], where)
    if not weights_path.name.endswith(".safetensors"):
        raise CheckpointError(f"{where}: file {entry['file']!r} is not a .safetensors file")
    return weights_path, _json_of(_stem(weights_path))


def pretrained_metadata(name: str, weights_dir: str | Path | None = None) -> dict:
    """The JSON side of a shipped checkpoint (config, ``extra``: e.g. FVAE's expression latents),
    after checking its sha256 against the manifest."""
    folder = _weights_folder(weights_dir)
    _, json_path = _shipped_files(folder, name, pretrained_info(name, folder))
    if sha256_file(json_path) != pretrained_info(name, folder)["config_sha256"]:
        raise CheckpointError(f"sha256 mismatch for {json_path.name} (pretrained {name!r}): the file differs from the one "
                              f"recorded in {MANIFEST_NAME}; it is corrupted or was replaced without re-recording it")
    return read_metadata(json_path)


def load_pretrained(name: str, device: str | torch.device = "cpu", weights_dir: str | Path | None = None) -> nn.Module:
    """Load a shipped checkpoint by manifest name after verifying its sha256s and class; returns it in eval mode.

    Both the weights' and the JSON's sha256 must match ``MANIFEST.json``; the class must be the one
    ``PRETRAINED_CLASSES`` gives for the name; the entry's ``file`` must stay inside the weights
    folder. An unknown name raises ``CheckpointError`` listing the available ones.
    """
    folder = _weights_folder(weights_dir)
    entry = pretrained_info(name, folder)
    weights_path, json_path = _shipped_files(folder, name, entry)
    expected_class = PRETRAINED_CLASSES.get(name, entry["class"])
    if entry["class"] != expected_class:
        raise CheckpointError(f"{MANIFEST_NAME} entry {name!r} names class {entry['class']}, but {name!r} is a "
                              f"{expected_class}; refusing to load it under that name")
    for path, key in ((weights_path, "sha256"), (json_path, "config_sha256")):
        if sha256_file(path) != entry[key]:
            raise CheckpointError(
                f"sha256 mismatch for {path.name} (pretrained {name!r}): the file differs from the one recorded in "
                f"{MANIFEST_NAME}; it is corrupted or was replaced without re-recording it"
            )
    json_named, weights_named = checkpoint_files(json_path)
    if weights_named != weights_path:
        raise CheckpointError(f"{json_named.name} points at {weights_named.name}, not at the manifest's {weights_path.name}")
    if read_metadata(json_path).get("class") != expected_class:
        raise CheckpointError(f"{json_path.name} holds a {read_metadata(json_path).get('class')}, not the "
                              f"{expected_class} that {name!r} must be")
    return load_model(json_path, map_location=device)


def manifest_entry(
    file: str | Path,
    *,
    command: str,
    preset: str,
    steps: int,
    seed: int,
    wall_time_s: float,
    metrics: dict,
    weights_dir: str | Path | None = None,
    **extra: Any,
) -> dict:
    """The manifest record of a checkpoint already inside the weights folder (``file``: its weights file)."""
    folder = _weights_folder(weights_dir)
    json_path, weights_path = checkpoint_files(folder / Path(file).name)
    metadata = read_metadata(json_path)
    _read_safetensors_bytes(weights_path)
    entry = {
        "file": weights_path.name,
        "class": metadata.get("class"),
        "config": metadata.get("config"),
        "command": command,
        "preset": preset,
        "steps": int(steps),
        "seed": int(seed),
        "wall_time_s": round(float(wall_time_s), 1),
        "sha256": sha256_file(weights_path),
        "config_sha256": sha256_file(json_path),
        "metrics": metrics,
        "versions": metadata.get("versions", _versions()),
        **extra,
    }
    _json_dumps(entry, f"manifest entry for {weights_path.name}")
    return entry


def _write_manifest(folder: Path, manifest: dict) -> None:
    atomic_write_text(folder / MANIFEST_NAME, _json_dumps(manifest, MANIFEST_NAME) + "\n")


def record_in_manifest(name: str, file: str | Path, *, weights_dir: str | Path | None = None, **fields: Any) -> dict:
    """Add or replace ``name`` in MANIFEST.json (written atomically); returns the entry.

    ``fields`` are :func:`manifest_entry`'s: command, preset, steps, seed, wall_time_s, metrics and extras.
    """
    folder = _weights_folder(weights_dir)
    entry = manifest_entry(file, weights_dir=folder, **fields)
    with lock_folder(folder):
        _write_manifest(folder, {**read_manifest(folder), name: entry})
    return entry


def check_writable(folder: str | Path) -> Path:
    """Create ``folder`` if needed and prove a file can be written there; raises ``CheckpointError`` if not.

    ``--ship`` calls this before training, so a read-only weights folder fails in a second, not after the run.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(folder / ".facelib-write-test", b"")
        (folder / ".facelib-write-test").unlink()
    except OSError as err:
        raise CheckpointError(f"cannot write to {folder}: {err.strerror or err}") from None
    return folder


def _manifest_files(folder: Path, manifest: dict) -> set[str]:
    """Names of the files a manifest's entries use (weights and JSON)."""
    names = set()
    for entry in manifest.values():
        file = entry.get("file") if isinstance(entry, dict) else None
        if isinstance(file, str) and file.endswith(".safetensors"):
            names |= {Path(file).name, Path(file).name[:-len(".safetensors")] + ".json"}
    return names


def _remove_unshipped(folder: Path, manifest: dict, candidates: set[str]) -> None:
    """Delete ``candidates`` (file names) the manifest does not use, and atomic writers' temporary files."""
    used = _manifest_files(folder, manifest)
    for path in folder.iterdir():
        if path.name in candidates and path.name not in used:
            path.unlink(missing_ok=True)
    remove_temporary_files(folder)


def ship_models(models: dict[str, str | Path], fields: dict[str, dict], weights_dir: str | Path | None = None) -> dict:
    """Copy checkpoints into the weights folder and record them in MANIFEST.json, all or nothing.

    ``models``: manifest name -> checkpoint (stem or file name); ``fields[name]``: the
    :func:`manifest_entry` keywords of that name. Returns ``{name: entry}``. A ship killed at any
    point leaves the previous manifest and every file it names intact; its leftovers are removed
    by the next ship.
    """
    folder = check_writable(_weights_folder(weights_dir))
    versioned = re.compile(rf"^.+\.{_VERSION}\.(safetensors|json)$")
    with lock_folder(folder):
        before = read_manifest(folder)
        _remove_unshipped(folder, before, {p.name for p in folder.iterdir() if versioned.match(p.name)})
        entries = {}
        for name, source in models.items():
            json_path, weights_path = checkpoint_files(source)
            weights, metadata = _read_safetensors_bytes(weights_path), _read_json(json_path)
            version = hashlib.sha256(weights + json_path.read_bytes()).hexdigest()[:12]
            shipped = folder / f"{name}.{version}"
            atomic_write_bytes(_with_suffix(shipped, ".safetensors"), weights)
            metadata["weights_file"] = _with_suffix(shipped, ".safetensors").name
            atomic_write_text(_with_suffix(shipped, ".json"), _json_dumps(metadata, f"{name} metadata") + "\n")
            entries[name] = manifest_entry(_with_suffix(shipped, ".safetensors"), weights_dir=folder, **fields[name])
        after = {**before, **entries}
        _write_manifest(folder, after)  # the switch
        _remove_unshipped(folder, after, _manifest_files(folder, before))
    return entries
