"""The shipped weights: ``facelib/weights/``, its ``MANIFEST.json``, and loading a model by name.

Every checkpoint in the weights folder is a model file (:mod:`facelib.checkpoint`) recorded in
``MANIFEST.json`` with the exact command that reproduces it, its recipe, data preset, steps,
seed, wall time, the sha256 of both of its files and the metrics measured on held-out data.
:func:`load_pretrained` verifies both sha256s and that the class is the one the name must hold
before it loads anything; :func:`ship_models` is what ``python -m facelib train NAME --ship`` runs.

MANIFEST.json is the one pointer of a weights folder: ``ship_models`` writes each new pair under
new names (``<name>.<version>.safetensors`` + ``<name>.<version>.json``), then replaces the
manifest atomically, then deletes the files only the old manifest named. A ship killed anywhere
leaves the previous manifest with the files and sha256s it records.
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoint import (
    VERSION_PATTERN, CheckpointError, checkpoint_files, checkpoint_stem, json_path_of, load_model, read_json,
    read_metadata, read_safetensors_bytes, sha256_file, to_json, versions,
)
from .utils import atomic_write_bytes, atomic_write_text, lock_folder, remove_temporary_files

MANIFEST_NAME = "MANIFEST.json"

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
    "dftnet": "facelib.models.dftnet.DFTNetGenerator",
    "dftnet_no_flow": "facelib.models.dftnet.DFTNetGenerator",
    "dftnet_no_texture": "facelib.models.dftnet.DFTNetGenerator",
    "leed": "facelib.models.leed.LEED",
    "eggan": "facelib.models.eggan.EGGAN",
    "eggan_paper": "facelib.models.eggan.EGGAN",
    "eggan_regressor_labels": "facelib.models.eggan.EGGAN",
}

__all__ = [
    "MANIFEST_NAME", "PRETRAINED_CLASSES", "shipped_weights_dir", "read_manifest", "available_pretrained",
    "pretrained_info", "pretrained_files", "pretrained_metadata", "load_pretrained", "manifest_entry",
    "record_in_manifest", "check_writable", "ship_models",
]


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
    return read_json(path, MANIFEST_NAME)


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
    return weights_path, json_path_of(checkpoint_stem(weights_path))


def pretrained_files(name: str, weights_dir: str | Path | None = None) -> tuple[Path, Path]:
    """``(weights_path, json_path)`` of a shipped checkpoint, after checking its manifest entry is complete."""
    folder = _weights_folder(weights_dir)
    return _shipped_files(folder, name, pretrained_info(name, folder))


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
    read_safetensors_bytes(weights_path)
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
        "versions": metadata.get("versions", versions()),
        **extra,
    }
    to_json(entry, f"manifest entry for {weights_path.name}")
    return entry


def _write_manifest(folder: Path, manifest: dict) -> None:
    atomic_write_text(folder / MANIFEST_NAME, to_json(manifest, MANIFEST_NAME) + "\n")


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
    versioned = re.compile(rf"^.+\.{VERSION_PATTERN}\.(safetensors|json)$")
    with lock_folder(folder):
        before = read_manifest(folder)
        _remove_unshipped(folder, before, {p.name for p in folder.iterdir() if versioned.match(p.name)})
        entries = {}
        for name, source in models.items():
            json_path, weights_path = checkpoint_files(source)
            weights, metadata = read_safetensors_bytes(weights_path), read_json(json_path)
            version = hashlib.sha256(weights + json_path.read_bytes()).hexdigest()[:12]
            shipped = folder / f"{name}.{version}"
            shipped_weights = shipped.with_name(shipped.name + ".safetensors")
            atomic_write_bytes(shipped_weights, weights)
            metadata["weights_file"] = shipped_weights.name
            atomic_write_text(shipped.with_name(shipped.name + ".json"), to_json(metadata, f"{name} metadata") + "\n")
            entries[name] = manifest_entry(shipped_weights, weights_dir=folder, **fields[name])
        after = {**before, **entries}
        _write_manifest(folder, after)  # the switch
        _remove_unshipped(folder, after, _manifest_files(folder, before))
    return entries
