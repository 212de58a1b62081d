"""Safe checkpoints: safetensors weights + a JSON config, written atomically, never unpickled.

A saved model is two files sharing a stem::

    save_model(model, "runs/fvae/fvae")   # -> runs/fvae/fvae.safetensors + runs/fvae/fvae.json

``<stem>.safetensors`` holds ``model.state_dict()``; ``<stem>.json`` holds
``{"format": "facelib.model/1", "class": "facelib.models.fvae.FVAE",
"config_class": "facelib.models.fvae.FVAEConfig", "config": {...dataclasses.asdict(model.config)},
"weights_sha256": ..., "versions": {...}, "extra": {...}}``.

Public API
----------
Models (a model is an ``nn.Module`` built as ``Model(config)`` that keeps the
dataclass in ``self.config``; its ``__init__`` annotates ``config: SomeConfig`` or the
class sets ``config_class = SomeConfig``):

- ``save_model(model, path, extra: dict | None = None) -> Path``: writes both files
  atomically and returns the stem. ``path`` may be a stem or end in ``.safetensors``/``.json``.
  A DDP-wrapped model is unwrapped. ``extra`` must be JSON-serialisable.
- ``load_model(path, cls=None, map_location="cpu") -> nn.Module``: rebuilds the class named
  in the JSON (only classes inside the ``facelib`` package are resolved; anything else is
  refused unless you pass ``cls`` yourself), rebuilds its Config dataclass (an unknown or
  ill-typed field raises ``CheckpointError`` naming the field), loads the weights strictly
  (missing / unexpected tensors and shape mismatches are named with their shapes) and
  returns the model in ``eval()`` mode on ``map_location``.
- ``read_metadata(path) -> dict``: the JSON side of a checkpoint.

Resumable training state (what ``facelib.train.Trainer`` writes; also no pickle):

- ``save_training_state(path, modules: dict[str, nn.Module], optimizers: dict[str, Optimizer],
  step: int, rng_state: dict | None = None, stateful: dict | None = None,
  extra: dict | None = None) -> Path``: module weights and optimiser state tensors
  go to ``<stem>.safetensors``; step, optimiser ``param_groups`` hyper-parameters and
  non-tensor state go to ``<stem>.json``. ``rng_state`` defaults to ``capture_rng_state()``.
  ``stateful`` holds anything else with ``state_dict()``/``load_state_dict()`` (LR schedulers,
  GradScaler) whose state is tensors and JSON values.
- ``load_training_state(path, modules, optimizers, stateful=None, restore_rng=True,
  map_location="cpu") -> dict``: loads everything back in place (strictly: the same module and
  optimiser names must be present) and returns ``{"step": int, "extra": dict, "rng_state": dict}``.
- ``capture_rng_state() -> dict[str, Tensor]`` / ``restore_rng_state(state)``: Python ``random``,
  NumPy, torch CPU and every CUDA/MPS generator, all as tensors.
- ``save_rng_state(path, state)`` / ``load_rng_state(path) -> dict``: one safetensors file
  (used for the RNG of DDP ranks other than 0).

Shipped weights (``facelib/weights/``, packaged with facelib):

- ``load_pretrained(name, device="cpu", weights_dir=None) -> nn.Module``: looks ``name`` up in
  ``MANIFEST.json``, verifies the sha256 of the weights (a mismatch raises ``CheckpointError``),
  and loads it in eval mode. An unknown name raises ``KeyError``-like ``CheckpointError``
  listing the available names (or saying none are shipped yet).
- ``pretrained_info(name, weights_dir=None) -> dict``: the manifest entry.
- ``available_pretrained(weights_dir=None) -> list[str]``.
- ``read_manifest(weights_dir=None) -> dict`` / ``weights_dir() -> Path``.
- ``manifest_entry(file, *, command, preset, steps, seed, wall_time_s, metrics,
  weights_dir=None, **extra) -> dict``: builds the entry for a file already inside the weights
  folder (sha256 of weights and JSON, class and config from the JSON, versions).
- ``record_in_manifest(name, file, *, command, preset, steps, seed, wall_time_s, metrics,
  weights_dir=None, **extra) -> dict``: builds the entry and writes MANIFEST.json atomically.
- ``sha256_file(path) -> str``.

Errors are ``CheckpointError`` (a ``ValueError``). Pickle is refused everywhere: a path ending
in ``.pt``/``.pth``/``.pkl``/``.pickle``/``.ckpt``/``.bin``, or a file starting with the pickle
or zip magic bytes (what ``torch.save`` writes), raises ``CheckpointError`` telling you to
convert it to safetensors.
"""
