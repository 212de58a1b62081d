"""Model files: safetensors weights + a JSON config, written atomically, never unpickled.

A saved model is two files sharing a stem: ``<stem>.json`` (class, config dataclass, versions,
``extra``, the name and sha256 of the weights) and ``<stem>.<version>.safetensors`` (the
``state_dict``; ``<version>`` = 12 hex digits of its sha256). The JSON is the pointer: saving again
writes new weights beside the old ones, replaces the JSON (one atomic rename), then deletes the
old weights, so a writer killed at any point leaves the old or the new checkpoint loadable. A JSON
without ``weights_file`` (older checkpoints) uses ``<stem>.safetensors``.

This module is the model files (:func:`save_model`, :func:`load_model`, :func:`read_metadata`)
and the safe reading and atomic writing of such a pair, which two other modules build on:

- :mod:`facelib.train.state`: resumable training state (weights, optimisers, RNG) and the
  Trainer's folder of checkpoints;
- :mod:`facelib.pretrained`: the shipped weights in ``facelib/weights/`` and their ``MANIFEST.json``.

Their names are also importable from here (``from facelib.checkpoint import load_pretrained``).

Reading is bounded and refuses what it cannot trust: only regular files are opened, JSON and
safetensors headers are limited to ``MAX_JSON_BYTES`` / ``MAX_SAFETENSORS_HEADER_BYTES``, only
classes inside the ``facelib`` package are built, a model is first built on the meta device (a
config implying more tensor bytes than its file holds is refused before any allocation), and
pickle is refused everywhere (``.pt``/``.pth``/``.pkl``/``.pickle``/``.ckpt``/``.bin`` names, or
pickle/zip magic bytes). Every error is a ``CheckpointError`` (a ``ValueError``).
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib
import json
import os
import re
import stat
import struct
import types
import typing
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as _safetensors_load
from safetensors.torch import save as _safetensors_save
from torch import nn

from .utils import atomic_write_bytes, atomic_write_text, get_device, remove_temporary_files, unwrap_module

MODEL_FORMAT = "facelib.model/1"
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
VERSION_PATTERN = "[0-9a-f]{12}"

__all__ = [
    "CheckpointError", "MODEL_FORMAT", "save_model", "load_model", "read_metadata", "checkpoint_files",
    "clean_folder", "sha256_file",
    # the safe reading and atomic writing that facelib.train.state and facelib.pretrained build on
    "checkpoint_stem", "json_path_of", "read_json", "read_safetensors_bytes", "as_checkpoint_error", "to_json",
    "versions", "class_path", "write_checkpoint", "cpu_tensors", "read_checkpoint", "read_checkpoint_tensors",
    "check_state_dict",
]


class CheckpointError(ValueError):
    """A checkpoint that cannot be written or loaded safely; the message says what and why."""


# ---------------------------------------------------------------------------------------------
# Paths, hashes and the never-unpickle guard


def checkpoint_stem(path: str | Path) -> Path:
    """``x``, ``x.safetensors`` and ``x.json`` all name the checkpoint ``x``; pickle names are refused."""
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


def read_safetensors_bytes(path: Path) -> bytes:
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


def read_json(path: Path, what: str = "checkpoint metadata") -> dict:
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


@contextlib.contextmanager
def as_checkpoint_error(path: Path, action: str):
    """``with as_checkpoint_error(path, "what is being done"):`` turns any error from code that trusts a
    file's contents (torch, safetensors, dataclass checks, optimiser and RNG loaders) into a
    ``CheckpointError`` naming the file, so a malformed checkpoint never escapes as a bare
    ``KeyError``, ``TypeError`` or ``SafetensorError``."""
    try:
        yield
    except CheckpointError:
        raise
    except Exception as error:
        raise CheckpointError(f"{path}: malformed checkpoint ({action}: {type(error).__name__}: {error})") from error


def to_json(obj: Any, what: str) -> str:
    """``obj`` as indented JSON with sorted keys; a ``CheckpointError`` says what is not serialisable."""
    try:
        return json.dumps(obj, indent=2, sort_keys=True)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{what} is not JSON-serialisable ({err}); use numbers, strings, lists, dicts") from err


def versions() -> dict[str, str]:
    """The versions a checkpoint records: facelib's and torch's."""
    from . import __version__

    return {"facelib": __version__, "torch": torch.__version__}


# ---------------------------------------------------------------------------------------------
# Resolving classes (only inside facelib) and rebuilding Config dataclasses


def class_path(cls: type) -> str:
    """``module.QualifiedName`` of a class, as checkpoints and the manifest record it."""
    return f"{cls.__module__}.{cls.__qualname__}"


_class_path = class_path  # its earlier, private name


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


def _stored_value_error(hint: Any, value: Any, where: str) -> str | None:
    """Why a JSON value cannot be what the field's annotation says (None when it can).

    Only what a config holds is checked: numbers, strings, None, Literals, unions of these and
    tuples of them; another annotation (a class, a nested type) is left to the dataclass itself.
    """
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        errors = [_stored_value_error(arm, value, where) for arm in args]
        return None if None in errors else f"config field {where}: {value!r} matches none of {hint}"
    if origin is typing.Literal:
        return None if value in args else f"config field {where}: {value!r} is not one of {list(args)}"
    if origin is tuple or hint is tuple:
        if not isinstance(value, (list, tuple)):
            return f"config field {where}: stored value {value!r} is not a {hint}"
        if len(args) == 2 and args[1] is Ellipsis:
            args = (args[0],) * len(value)
        elif args and len(args) != len(value):
            return f"config field {where}: expected {len(args)} values, got {value!r}"
        errors = (_stored_value_error(arm, item, f"{where}[{index}]") for index, (arm, item) in enumerate(zip(args, value)))
        return next((error for error in errors if error), None)
    expected = {int: (int,), float: (int, float), bool: (bool,), str: (str,), type(None): (type(None),)}.get(hint)
    if expected is None:
        return None
    if isinstance(value, expected) and not (isinstance(value, bool) and hint is not bool):
        return None
    return f"config field {where}: stored value {value!r} is not a {hint.__name__}"


def _config_from_dict(config_cls: type, data: dict, where: str = "config") -> Any:
    """``config_cls(**data)``: the dataclass is constructed, and validates itself in its ``__post_init__``.

    Before that, an unknown, missing or ill-typed field is named (``config.width``,
    ``config.channels[1]``), and what JSON cannot say is restored: its lists become tuples (a
    config holds tuples, never lists, which a dataclass field cannot have as a default).
    """
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
    for name, value in data.items():
        error = _stored_value_error(hints.get(name, Any), value, f"{where}.{name}")
        if error:
            raise CheckpointError(error)
    return config_cls(**{name: tuple(value) if isinstance(value, list) else value for name, value in data.items()})


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


def json_path_of(stem: Path) -> Path:
    """``<stem>.json``; a versioned weights name (``fvae.0123456789ab``) also finds ``fvae.json``."""
    json_path = _with_suffix(stem, ".json")
    base, _, version = stem.name.rpartition(".")
    if not json_path.exists() and base and re.fullmatch(VERSION_PATTERN, version):
        return stem.with_name(base + ".json")
    return json_path


def checkpoint_files(path: str | Path) -> tuple[Path, Path]:
    """``(json_path, weights_path)`` of the checkpoint at ``path`` (a stem, or either file's name).

    Raises ``CheckpointError`` when the JSON is missing or unreadable; the weights file may not exist.
    """
    json_path = json_path_of(checkpoint_stem(path))
    metadata = read_json(json_path)
    return json_path, json_path.with_name(_weights_file_name(json_path.with_suffix(""), metadata, json_path))


def _referenced_weights(json_path: Path) -> str | None:
    """The weights file name ``json_path`` points at; None when there is no readable JSON."""
    try:
        return _weights_file_name(json_path.with_suffix(""), read_json(json_path), json_path)
    except CheckpointError:
        return None


def _remove_stale_files(stem: Path) -> list[Path]:
    """Delete what killed writers of ``stem`` left: temporary files and weights its JSON no longer names."""
    json_path = _with_suffix(stem, ".json")
    if json_path.exists() and _referenced_weights(json_path) is None:
        return []  # an unreadable JSON: keep everything for whoever investigates it
    keep = _referenced_weights(json_path)
    ours = re.compile(rf"^{re.escape(stem.name)}(\.{VERSION_PATTERN})?\.safetensors$")
    ours_temporary = re.compile(rf"^\.{re.escape(stem.name)}(\.{VERSION_PATTERN})?\.(json|safetensors)\.[A-Za-z0-9_]+\.tmp$")
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
    versioned = re.compile(rf"^(.+)\.{VERSION_PATTERN}\.safetensors$")
    for path in folder.glob("*.safetensors"):  # weights whose JSON was deleted first
        match = versioned.match(path.name)
        if match and not (folder / f"{match.group(1)}.json").exists() and not path.with_suffix(".json").exists():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def write_checkpoint(stem: Path, weights: bytes, metadata: dict, what: str) -> Path:
    """Replace the checkpoint ``stem`` by ``weights`` (safetensors bytes) + ``metadata`` as a whole or not
    at all (see above); the JSON records the weights' file name and sha256. Returns ``stem``."""
    sha = hashlib.sha256(weights).hexdigest()
    metadata = {**metadata, "weights_sha256": sha, "weights_file": f"{stem.name}.{sha[:12]}.safetensors"}
    text = to_json(metadata, what) + "\n"
    _remove_stale_files(stem)
    atomic_write_bytes(stem.with_name(metadata["weights_file"]), weights)
    atomic_write_text(_with_suffix(stem, ".json"), text)  # the switch
    _remove_stale_files(stem)  # the previous weights
    return stem


# ---------------------------------------------------------------------------------------------
# Models


def cpu_tensors(state: dict[str, Any], what: str) -> dict[str, torch.Tensor]:
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
    ``write_checkpoint``); the JSON records the sha256 of the weights, so a mismatch is detected at load time.
    """
    model = unwrap_module(model)
    stem = checkpoint_stem(path)
    config = getattr(model, "config", None)
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        raise CheckpointError(
            f"{type(model).__name__} has no dataclass `config` attribute; facelib models are built as "
            "Model(config) and keep self.config (a dataclass instance)"
        )
    metadata = {
        "format": MODEL_FORMAT,
        "class": class_path(type(model)),
        "config_class": class_path(type(config)),
        "config": dataclasses.asdict(config),
        "versions": versions(),
        "extra": extra or {},
    }
    to_json(metadata, f"config/extra of {type(model).__name__}")  # fail before writing anything
    weights = _safetensors_save(
        cpu_tensors(model.state_dict(), type(model).__name__), metadata={"format": MODEL_FORMAT}
    )
    return write_checkpoint(stem, weights, metadata, "checkpoint metadata")


def read_metadata(path: str | Path) -> dict:
    """The JSON half of a checkpoint (class, config, versions, extra, weights_sha256, weights_file)."""
    json_path, weights_path = checkpoint_files(path)
    if weights_path.exists():
        _read_safetensors_header(weights_path)
    return read_json(json_path)


def _read_safetensors_header(path: Path) -> None:
    """Check the first bytes of a weights file (refuses pickles early, before any big read)."""
    with _open_regular_file(path, "checkpoint weights") as handle:
        head = handle.read(9)
    if len(head) < 9 or head[8:9] != b"{":
        raise _not_safetensors(path, head)


def read_checkpoint_tensors(json_path: Path, weights_path: Path, metadata: dict, map_location) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint, after checking they are the ones its JSON was saved with."""
    data = read_safetensors_bytes(weights_path)
    expected = metadata.get("weights_sha256")
    if expected is not None and hashlib.sha256(data).hexdigest() != expected:
        raise CheckpointError(
            f"{weights_path.name} does not match {json_path.name} (sha256 differs): the two files were not "
            "saved together; re-save the checkpoint"
        )
    with as_checkpoint_error(weights_path, "reading the safetensors data"):
        tensors = _safetensors_load(data)
    device = get_device(map_location)
    return {key: value.to(device) for key, value in tensors.items()}


def check_state_dict(module: nn.Module, tensors: dict[str, torch.Tensor], what: str) -> None:
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


def read_checkpoint(path: str | Path, expected: str, hint: str) -> tuple[Path, Path, dict]:
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
        raise CheckpointError(f"{json_path.with_suffix('').name} holds a {stored_class}, not a {class_path(cls)}")
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise CheckpointError(f"{stored_class!r} is not a torch.nn.Module subclass")
    return cls


def _build_bounded(cls: type, config: Any, json_path: Path, weights_path: Path) -> nn.Module:
    """``cls(config)``, after checking on the meta device (no memory) that its tensors fit in the weights file.

    A strict load needs exactly the file's tensors, so a config implying more bytes than the file
    holds cannot load; refusing it first stops a 500-byte JSON from allocating gigabytes.
    """
    with as_checkpoint_error(json_path, f"building {cls.__name__} from its config"):
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
    another); its Config dataclass is constructed from the stored fields and validates itself (an
    unknown or ill-typed field raises ``CheckpointError`` naming it, as does a value its
    ``__post_init__`` refuses); missing / unexpected tensors and shape mismatches are named with
    their shapes.
    """
    json_path, weights_path, metadata = read_checkpoint(
        path, MODEL_FORMAT, "a training-state checkpoint is read with load_training_state")
    cls = _model_class(json_path, metadata, cls)
    config_class = metadata.get("config_class")
    config_cls = _config_class_of(cls, config_class if isinstance(config_class, str) else None)
    with as_checkpoint_error(json_path, f"rebuilding {config_cls.__name__}"):
        config = _config_from_dict(config_cls, metadata.get("config", {}))
    _read_safetensors_header(weights_path)  # a pickle is named before anything is built
    model = _build_bounded(cls, config, json_path, weights_path)
    tensors = read_checkpoint_tensors(json_path, weights_path, metadata, map_location)
    check_state_dict(model, tensors, f"loading {json_path.with_suffix('').name} into {cls.__name__}")
    model.to(get_device(map_location))
    model.load_state_dict(tensors, strict=True)
    return model.eval()


# ---------------------------------------------------------------------------------------------
# The names of the two other jobs, importable from here as before the split

_MOVED = {
    "facelib.train.state": (
        "TRAINING_STATE_FORMAT", "capture_rng_state", "restore_rng_state", "save_rng_state", "load_rng_state",
        "save_training_state", "load_training_state",
    ),
    "facelib.pretrained": (
        "MANIFEST_NAME", "PRETRAINED_CLASSES", "shipped_weights_dir", "read_manifest", "available_pretrained",
        "pretrained_info", "pretrained_files", "pretrained_metadata", "load_pretrained", "manifest_entry",
        "record_in_manifest", "check_writable", "ship_models",
    ),
}


def __getattr__(name: str) -> Any:
    for module, names in _MOVED.items():
        if name in names:
            return getattr(importlib.import_module(module), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
