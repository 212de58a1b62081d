"""Resumable training state: what a :class:`facelib.train.Trainer` checkpoint holds, and its folder.

A training checkpoint is a pair like a model file (:mod:`facelib.checkpoint`: ``<stem>.json``
naming ``<stem>.<version>.safetensors``, replaced atomically, never unpickled). The safetensors
file holds every tensor: the modules' weights, the optimisers' and schedulers' state tensors and
the random number generators' states; the JSON holds the step, the optimisers' ``param_groups``
and every other value, with tuples and integer keys tagged so that they come back as they were.

- :func:`save_training_state`, :func:`load_training_state`: one checkpoint;
- :func:`capture_rng_state`, :func:`restore_rng_state`, :func:`save_rng_state`,
  :func:`load_rng_state`: Python's, NumPy's and torch's generators as tensors;
- the Trainer's folder of them: ``out_dir/checkpoints/step_00001000.json`` and so on
  (:data:`CHECKPOINT_FOLDER`, :func:`checkpoint_stems`, :func:`latest_checkpoint`,
  :func:`rank_rng_path`, :func:`delete_checkpoint`).
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as _safetensors_load
from safetensors.torch import save as _safetensors_save
from torch import nn

from ..checkpoint import (
    CheckpointError, as_checkpoint_error, check_state_dict, checkpoint_files, checkpoint_stem, class_path,
    cpu_tensors, read_checkpoint, read_checkpoint_tensors, read_safetensors_bytes, to_json, versions,
    write_checkpoint,
)
from ..utils import atomic_write_bytes, unwrap_module

TRAINING_STATE_FORMAT = "facelib.training_state/1"
#: The Trainer's checkpoints live in ``out_dir/CHECKPOINT_FOLDER``.
CHECKPOINT_FOLDER = "checkpoints"

__all__ = [
    "TRAINING_STATE_FORMAT", "CHECKPOINT_FOLDER", "save_training_state", "load_training_state", "capture_rng_state",
    "restore_rng_state", "save_rng_state", "load_rng_state", "checkpoint_step", "checkpoint_stems",
    "latest_checkpoint", "rank_rng_path", "delete_checkpoint",
]


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
    atomic_write_bytes(path, _safetensors_save(cpu_tensors(state, "RNG state"), metadata={"format": "facelib.rng/1"}))
    return path


def load_rng_state(path: str | Path) -> dict[str, torch.Tensor]:
    """Read an RNG state written by :func:`save_rng_state` (pass it to :func:`restore_rng_state`)."""
    stem = checkpoint_stem(path)
    weights_path = stem.with_name(stem.name + ".safetensors")
    with as_checkpoint_error(weights_path, "reading an RNG state"):
        return _safetensors_load(read_safetensors_bytes(weights_path))


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
    stem = checkpoint_stem(path)
    stateful = stateful or {}
    tensors: dict[str, torch.Tensor] = {}
    for name, module in modules.items():
        state = cpu_tensors(unwrap_module(module).state_dict(), f"module {name!r}")
        tensors.update({f"module/{name}/{key}": value for key, value in state.items()})
    rng_state = capture_rng_state() if rng_state is None else rng_state
    tensors.update({f"rng/{key}": value.detach().to("cpu").contiguous().clone() for key, value in rng_state.items()})
    metadata = {
        "format": TRAINING_STATE_FORMAT,
        "step": int(step),
        "modules": {name: class_path(type(unwrap_module(m))) for name, m in modules.items()},
        "optimizers": {name: _encode(opt.state_dict(), f"optim/{name}", tensors) for name, opt in optimizers.items()},
        "stateful": {name: _encode(obj.state_dict(), f"stateful/{name}", tensors) for name, obj in stateful.items()},
        "rng": sorted(rng_state),
        "versions": versions(),
        "extra": extra or {},
    }
    to_json(metadata, "training state")  # fail before writing anything
    weights = _safetensors_save(tensors, metadata={"format": TRAINING_STATE_FORMAT})
    return write_checkpoint(stem, weights, metadata, "training state")


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
    json_path, weights_path, metadata = read_checkpoint(
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
    tensors = read_checkpoint_tensors(json_path, weights_path, metadata, "cpu")
    for name, module in modules.items():
        module = unwrap_module(module)
        prefix = f"module/{name}/"
        state = {key[len(prefix):]: value for key, value in tensors.items() if key.startswith(prefix)}
        check_state_dict(module, state, f"loading module {name!r} from {stem.name}")
        module.load_state_dict(state, strict=True)
    # Optimizer.load_state_dict moves its state onto each parameter's device itself.
    for name, optimizer in optimizers.items():
        with as_checkpoint_error(json_path, f"restoring optimizer {name!r}"):
            optimizer.load_state_dict(_decode(metadata["optimizers"][name], tensors))
    for name, obj in stateful.items():
        with as_checkpoint_error(json_path, f"restoring {name!r}"):
            obj.load_state_dict(_decode(metadata["stateful"][name], tensors))
    missing = [key for key in metadata.get("rng", []) if f"rng/{key}" not in tensors]
    if missing:
        raise CheckpointError(f"{json_path}: RNG state(s) {missing} are listed but {weights_path.name} lacks them")
    rng_state = {key: tensors[f"rng/{key}"] for key in metadata.get("rng", [])}
    if restore_rng and rng_state:
        with as_checkpoint_error(weights_path, "restoring the RNG state"):
            restore_rng_state(rng_state)
    return {"step": metadata["step"], "extra": metadata.get("extra", {}), "rng_state": rng_state}


# ---------------------------------------------------------------------------------------------
# The Trainer's folder of checkpoints: out_dir/checkpoints/step_00001000.json, ...


def checkpoint_step(stem: Path) -> int | None:
    """The step of a Trainer checkpoint's stem (``step_00001000`` -> 1000); None for any other name."""
    name = stem.name
    if not name.startswith("step_") or "." in name:
        return None
    digits = name[len("step_"):]
    return int(digits) if digits.isdigit() else None


def checkpoint_stems(out_dir: Path) -> list[tuple[int, Path]]:
    """``(step, stem)`` of every Trainer checkpoint in ``out_dir/checkpoints``, oldest first."""
    folder = out_dir / CHECKPOINT_FOLDER
    if not folder.is_dir():
        return []
    stems = []
    for json_path in folder.glob("step_*.json"):
        stem = json_path.with_suffix("")
        step = checkpoint_step(stem)
        if step is not None:
            stems.append((step, stem))
    return sorted(stems)


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """Stem of the newest complete training checkpoint in ``out_dir/checkpoints`` (None when there is none)."""
    for _, stem in reversed(checkpoint_stems(Path(out_dir))):
        try:
            if checkpoint_files(stem)[1].exists():
                return stem
        except CheckpointError:
            continue  # an unreadable JSON: fall back to the checkpoint before it
    return None


def rank_rng_path(stem: Path, rank: int) -> Path:
    """Where rank ``rank`` (> 0) of a DDP run keeps its RNG state beside the checkpoint ``stem``."""
    return stem.with_name(f"{stem.name}.rank{rank}.rng.safetensors")


def delete_checkpoint(stem: Path) -> None:
    """JSON first: a deletion killed midway leaves unreferenced weights (cleaned later), never a JSON without them."""
    stem.with_name(stem.name + ".json").unlink(missing_ok=True)
    for path in stem.parent.glob(stem.name + ".*"):
        path.unlink(missing_ok=True)
