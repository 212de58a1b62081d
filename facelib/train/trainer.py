"""A generic training loop for every paper: seeds, devices, progress, logs, checkpoints, resume, DDP.

Each paper's training is a ``TrainingTask``: it builds its networks and optimisers and does
one optimisation step (its own forward, ``backward()`` and ``optimizer.step()`` calls, so a
GAN with several optimisers and its own D/G schedule fits). ``Trainer`` does everything
else, identically for all papers.

Example (a real task; ``tests/test_train.py`` runs this code)::

    import torch
    from torch import nn
    from facelib.train import Trainer, TrainingTask, read_log

    class LineTask(TrainingTask):                          # fit y = 3x - 1 with one linear layer
        def __init__(self):
            x = torch.linspace(-1, 1, 64)[:, None]
            self.dataset = torch.utils.data.TensorDataset(x, 3 * x - 1)   # map-style Dataset
            self.val_x = torch.rand(16, 1) * 2 - 1

        def build(self, device):                               # after set_seed(seed)
            line = nn.Linear(1, 1).to(device)
            return {"line": line}, {"adam": torch.optim.Adam(line.parameters(), lr=0.05)}

        def training_step(self, batch, step):                  # batch is already on self.device
            x, y = batch
            loss = nn.functional.mse_loss(self.modules["line"](x), y)   # DDP wrapper under torchrun
            self.optimizers["adam"].zero_grad(set_to_none=True)
            loss.backward()
            self.optimizers["adam"].step()
            return {"loss": loss.detach()}                     # floats or 0-dim tensors

        def validate(self, step):                              # rank 0, eval(), no_grad
            x = self.val_x.to(self.device)
            return {"val_loss": nn.functional.mse_loss(self.modules["line"](x), 3 * x - 1)}

    task = LineTask()
    result = Trainer(task, steps=200, batch_size=16, seed=0, out_dir="runs/line", validate_every=20,
                     early_stopping="val_loss").fit()
    print(result.best_step, task.unwrap("line").weight)        # the best validation's weights, ~3
    print(read_log("runs/line").tail())                        # step, seconds, loss

The same script runs unchanged under ``torchrun --nproc_per_node=2 script.py``.
FVAE's real tasks are in :mod:`facelib.train.fvae`; the GAN base (WGAN-GP, ``n_critic``) in
:mod:`facelib.train.gan`.

Public API
----------
``class TrainingTask`` (subclass it; only ``build`` and ``training_step`` are required):

- ``dataset``: a map-style ``torch.utils.data.Dataset`` (``len`` + ``__getitem__``, optional
  ``__getitems__``), or ``None`` (then ``training_step`` receives ``batch=None``).
- ``collate_fn``: ``None`` -> ``torch.utils.data.default_collate``.
- ``build(self, device) -> (modules: dict[str, nn.Module], optimizers: dict[str, Optimizer])``:
  called once, after ``set_seed(seed)``, with modules already on ``device``.
- ``training_step(self, batch, step: int) -> dict[str, float | Tensor]``: one optimisation step;
  ``step`` counts from 0 and is the same number after a resume. Return detached scalars.
- ``validate(self, step: int) -> dict[str, float] | None`` (optional): called on rank 0 every
  ``validate_every`` completed steps, with modules in ``eval()`` mode (``self.modules`` holds
  the plain modules meanwhile), under ``torch.no_grad()`` and with the RNG state saved and
  restored around it (validation never changes training).
- ``stateful(self) -> dict[str, object]`` (optional): extra objects with
  ``state_dict()``/``load_state_dict()`` (LR schedulers, GradScaler) saved in checkpoints.
- Set by the Trainer before ``build``: ``self.total_steps`` (the Trainer's ``steps``, for LR
  schedules). Set before the first step: ``self.modules`` (what to call: the
  ``DistributedDataParallel`` wrappers under torchrun, the plain modules otherwise),
  ``self.optimizers``, ``self.device``, ``self.rank``, ``self.world_size``;
  ``self.unwrap(name) -> nn.Module`` returns the plain module (attributes, saving).

DDP notes for tasks: forward a module through ``self.modules[...]`` once per backward; run
forwards whose gradients you do not need (e.g. the generator during a discriminator step)
under ``torch.no_grad()``; concatenate real and fake batches into one discriminator forward;
a gradient penalty goes through the plain module (see :mod:`facelib.train.gan`, which does all this).

``Trainer(task, *, steps, batch_size, seed=0, out_dir, device="auto", log_every=10,
checkpoint_every=0, validate_every=0, keep_checkpoints=2, num_workers=None, resume=False,
progress=True, ddp_kwargs=None, early_stopping=None)``

- ``steps``: total optimisation steps (a resumed run continues up to ``steps``).
  ``batch_size`` is per process (the global batch under torchrun is ``batch_size * world_size``).
- ``.fit(resume_from=None) -> FitResult`` (dataclass: ``step``, ``seconds``, ``log_path``,
  ``checkpoint``, ``losses`` = last logged averages, ``first_step`` = where it started (> 0
  after a resume), ``task`` = the task's class name, ``best_step``/``best_value`` = early
  stopping's best validation, else None).
- Early stopping: ``early_stopping=EarlyStopping(monitor="val_loss", mode="min")`` (or just the
  metric's name, ``early_stopping="val_loss"``; needs ``validate_every`` and ``validate``).
  After each validation the weights of every module are copied to the CPU when
  ``validate()[monitor]`` is the best so far (strictly; non-finite values never are). That copy
  is saved in every checkpoint (as the stateful object ``"trainer.early_stopping"``), so a
  resumed run ends with the same best as an uninterrupted one. Training runs all ``steps``; the
  checkpoints hold the last weights (a longer resumed run continues from them), and at the end
  of ``fit`` the best weights are loaded into the modules (``FitResult.best_step`` says which).
- Seeding: ``set_seed(seed)`` before ``task.build`` (identical initial weights on every rank),
  then ``set_seed(seed + rank)`` for the training randomness (dropout, noise) of each rank.
- Data: the indices of step ``t`` on rank ``r`` are ``batch_indices(len(dataset), batch_size, t,
  seed=seed, rank=r, world_size=W)``: epoch-wise permutations seeded by ``(seed, epoch)``, so
  every sample is seen once per epoch, ranks see disjoint samples, and the batch of a step
  never depends on what ran before it. Loaded by ``facelib.data.loader.step_batches`` and
  moved to the device (tensors inside dicts/lists/tuples): ``num_workers`` background
  processes render ahead (``None``: as many as this process's cores, at most 4, for a dataset
  that renders its items, such as an uncached ``SynthFaces``; 0 for one held in memory), and
  such a dataset renders several steps' items in one call (same batches, faster).
- Device: ``get_device(device)``; under torchrun (``WORLD_SIZE`` > 1) ``torch.distributed``
  is initialised (gloo on CPU, NCCL on CUDA with ``cuda:LOCAL_RANK``) unless already
  initialised; it stays up for later fits in the same process (a multi-stage recipe) and is
  destroyed at exit. Every module with trainable parameters is wrapped in
  ``DistributedDataParallel(**ddp_kwargs)``.
- Progress: a tqdm bar on rank 0 with the latest losses in its postfix.
- Log: ``out_dir/log.jsonl``, one JSON object per line:
  ``{"kind": "train", "step": completed_steps, "seconds": training_wall_time, <loss>: mean over
  the last log_every steps and over ranks, ...}``; validation lines have ``"kind": "val"``.
  A loss that ``training_step`` returns on some steps only (a GAN's generator losses, every
  ``n_critic``-th step) is averaged over the steps that returned it, and is absent from a line
  whose window holds none; each loss must come on the same steps on every rank.
  A non-finite logged loss raises ``FloatingPointError`` naming the loss and step.
- One run per folder: rank 0 holds an exclusive lock on ``out_dir`` (``facelib.utils.lock_folder``)
  during ``fit``; a second run on that folder raises ``FolderLockedError`` at once, naming the
  folder and the other run's PID.
- Checkpoints: ``out_dir/checkpoints/step_00001000.json`` (+ the versioned weights it names) through
  ``facelib.train.state.save_training_state`` (weights, optimiser state, ``task.stateful()``,
  RNG states, elapsed seconds, early stopping's best; no pickle), every ``checkpoint_every``
  steps (0: only at the end) and always at the end; the newest ``keep_checkpoints`` are kept.
  Other attributes of the task are not saved unless ``stateful()`` exposes them.
  A checkpoint also keeps the losses summed since the last log line, so a resumed run logs
  the same lines as an uninterrupted one (the earlier run's partial last line is dropped).
  Temporary files and unreferenced weights left by a killed run are removed when a run starts.
  A fresh (not resumed) run starts a new log and deletes the ``step_*`` checkpoints a
  previous run left in ``out_dir/checkpoints``. Under DDP rank 0 writes the state and every
  other rank ``r`` writes its RNG to ``step_...rank{r}.rng.safetensors``.
- Resume: ``resume=True`` continues from the newest checkpoint in ``out_dir`` (or starts fresh
  when there is none); ``fit(resume_from=stem)`` from a given one. On CPU the resumed run is
  bit-identical to an uninterrupted one; log lines after the checkpoint's step are dropped.
  A torn last log line (a run killed mid-write, a full disk) is skipped with a warning.
- ``run_options(resume=None, checkpoint_every=None, on_fit=None)``: a context manager; every
  Trainer built inside it uses these settings (the CLI's ``--resume``/``--checkpoint-every``
  reach a recipe's Trainers this way) and ``on_fit(FitResult)`` hears of each finished fit.

Functions:

- ``read_log(path, kind="train") -> pandas.DataFrame``: ``path`` is the ``log.jsonl`` or the
  run folder; ``kind=None`` returns all lines. A torn last line is skipped with a warning
  naming the file; a broken earlier line raises ``ValueError``.
- ``batch_indices(num_samples, batch_size, step, *, seed, rank=0, world_size=1) -> LongTensor``.
- ``latest_checkpoint(out_dir) -> Path | None``: the stem of the newest complete checkpoint.
- ``distributed_env() -> (rank, local_rank, world_size)`` from the torchrun environment.
- ``set_seed``, ``get_device``: re-exported from ``facelib.utils``.
"""
from __future__ import annotations

import atexit
import contextlib
import json
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from functools import lru_cache, partial
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from ..checkpoint import clean_folder, read_metadata
from ..data.loader import default_num_workers, step_batches
from ..utils import atomic_write_text, get_device, lock_folder, remove_temporary_files, set_seed, unwrap_module
from .state import (
    CHECKPOINT_FOLDER, TRAINING_STATE_FORMAT, capture_rng_state, checkpoint_stems, delete_checkpoint, latest_checkpoint,
    load_rng_state, load_training_state, rank_rng_path, restore_rng_state, save_rng_state, save_training_state,
)

LOG_NAME = "log.jsonl"
_FLOAT_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32, "float64": torch.float64}
EARLY_STOPPING_STATE = "trainer.early_stopping"  # its name among a checkpoint's stateful objects

__all__ = [
    "TrainingTask", "Trainer", "FitResult", "EarlyStopping", "read_log", "batch_indices", "latest_checkpoint",
    "distributed_env", "run_options", "set_seed", "get_device",
]


class TrainingTask:
    """Base class of a paper's training: ``build`` networks/optimisers, do one ``training_step``.

    See the module docstring for the full contract; ``validate(step)`` and ``stateful()`` are optional.
    """

    dataset: Dataset | None = None
    collate_fn: Callable | None = None
    # Set by the Trainer before the first step.
    modules: dict[str, nn.Module]
    optimizers: dict[str, torch.optim.Optimizer]
    device: torch.device
    rank: int = 0
    world_size: int = 1
    total_steps: int = 0  # the Trainer's ``steps``, set before ``build``

    def build(self, device: torch.device) -> tuple[dict[str, nn.Module], dict[str, torch.optim.Optimizer]]:
        raise NotImplementedError(f"{type(self).__name__} must define build(device) -> (modules, optimizers)")

    def training_step(self, batch: Any, step: int) -> dict[str, float | torch.Tensor]:
        raise NotImplementedError(f"{type(self).__name__} must define training_step(batch, step) -> dict of losses")

    def stateful(self) -> dict[str, Any]:
        """Extra objects with ``state_dict()``/``load_state_dict()`` to checkpoint (e.g. LR schedulers)."""
        return {}

    def unwrap(self, name: str) -> nn.Module:
        """The plain module ``name`` (inside its DistributedDataParallel wrapper under torchrun)."""
        if name not in self.modules:
            raise KeyError(f"no module {name!r}; this task built {sorted(self.modules)}")
        return unwrap_module(self.modules[name])


@dataclass
class FitResult:
    """What ``Trainer.fit`` returns."""

    step: int
    seconds: float
    log_path: Path
    checkpoint: Path | None
    losses: dict[str, float] = field(default_factory=dict)
    first_step: int = 0  # the step training started from (> 0 after a resume)
    task: str = ""  # the task's class name
    best_step: int | None = None  # early stopping: the validation step whose weights the modules now hold
    best_value: float | None = None  # ... and its monitored value


class EarlyStopping:
    """Keep the weights of the best validation: what ``Trainer(early_stopping=...)`` holds.

    After each validation, if ``metrics[monitor]`` beats the best so far (strictly lower for
    ``mode="min"``, higher for ``"max"``; a non-finite value never does), a CPU copy of every
    module's ``state_dict()`` is kept. Its ``state_dict()`` (best step, value and weights) goes
    into every training checkpoint, so a resumed run keeps the best found before the
    interruption; at the end of ``fit`` the Trainer loads the best weights into the modules.
    Training itself runs all its steps (the FVAE recipe's "early stopping", Sec. 5.4).
    """

    def __init__(self, monitor: str = "val_loss", mode: str = "min"):
        if mode not in ("min", "max"):
            raise ValueError(f"EarlyStopping: mode must be 'min' or 'max', got {mode!r}")
        if not isinstance(monitor, str) or not monitor:
            raise ValueError(f"EarlyStopping: monitor must be the name of a validation metric, got {monitor!r}")
        self.monitor, self.mode = monitor, mode
        self.best_step: int | None = None
        self.best_value: float | None = None
        self.best_state: dict[str, dict[str, torch.Tensor]] | None = None

    def improves(self, value: float) -> bool:
        """Whether ``value`` beats the best so far."""
        if not math.isfinite(value):
            return False
        if self.best_value is None:
            return True
        return value < self.best_value if self.mode == "min" else value > self.best_value

    def value_of(self, metrics: dict[str, float]) -> float:
        """The monitored value of one validation's metrics."""
        if self.monitor not in metrics:
            raise KeyError(f"early stopping monitors {self.monitor!r}, but validate() returned {sorted(metrics)}")
        return float(metrics[self.monitor])

    def keep(self, step: int, value: float, modules: dict[str, nn.Module]) -> None:
        """Record ``step`` as the best, with a CPU copy of the modules' weights."""
        self.best_step, self.best_value = int(step), float(value)
        self.best_state = {name: {key: tensor.detach().to("cpu", copy=True)
                                  for key, tensor in unwrap_module(module).state_dict().items()}
                           for name, module in modules.items()}

    def reset(self) -> None:
        """Forget the best (a fresh, not resumed, fit starts here)."""
        self.best_step = self.best_value = self.best_state = None

    def restore(self, modules: dict[str, nn.Module]) -> None:
        """Load the best weights into ``modules`` (nothing to do before the first validation)."""
        if self.best_state is None:
            return
        for name, module in modules.items():
            unwrap_module(module).load_state_dict(self.best_state[name])

    def state_dict(self) -> dict[str, Any]:
        return {"monitor": self.monitor, "mode": self.mode, "best_step": self.best_step,
                "best_value": self.best_value, "best_state": self.best_state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if (state.get("monitor"), state.get("mode")) != (self.monitor, self.mode):
            raise ValueError(f"the checkpoint's early stopping monitored {state.get('monitor')!r} "
                             f"({state.get('mode')}), this run monitors {self.monitor!r} ({self.mode})")
        self.best_step, self.best_value, self.best_state = state["best_step"], state["best_value"], state["best_state"]

    def __repr__(self) -> str:
        return f"EarlyStopping(monitor={self.monitor!r}, mode={self.mode!r}, best_step={self.best_step})"


# ---------------------------------------------------------------------------------------------
# Data order: a pure function of (seed, step, rank, world size)


def _mix_seed(seed: int, epoch: int) -> int:
    return (seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + 1) % (2**63)


@lru_cache(maxsize=2)
def _epoch_permutation(num_samples: int, seed: int, epoch: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(_mix_seed(seed, epoch))
    return torch.randperm(num_samples, generator=generator)


def batch_indices(
    num_samples: int, batch_size: int, step: int, *, seed: int, rank: int = 0, world_size: int = 1
) -> torch.Tensor:
    """Dataset indices of ``step`` on ``rank``: a slice of an epoch-wise permutation seeded by (seed, epoch).

    Position ``p = (step * world_size + rank) * batch_size`` in the endless sequence of
    epochs, so ranks read disjoint slices and every sample appears once per epoch.
    """
    if num_samples < 1:
        raise ValueError(f"the dataset is empty (num_samples={num_samples}); a training set needs samples")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside 0..{world_size - 1}")
    position = (step * world_size + rank) * batch_size
    pieces = []
    remaining = batch_size
    while remaining > 0:
        epoch, offset = divmod(position, num_samples)
        take = min(remaining, num_samples - offset)
        pieces.append(_epoch_permutation(num_samples, seed, epoch)[offset:offset + take])
        position += take
        remaining -= take
    return torch.cat(pieces)


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {key: _to_device(value, device) for key, value in batch.items()}
    if isinstance(batch, (list, tuple)) and not hasattr(batch, "_fields"):
        return type(batch)(_to_device(value, device) for value in batch)
    return batch


# ---------------------------------------------------------------------------------------------
# Logs and checkpoints on disk


def distributed_env() -> tuple[int, int, int]:
    """(rank, local_rank, world_size) of this process: torch.distributed if initialised, else torchrun's env."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), int(os.environ.get("LOCAL_RANK", 0)), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def read_log(path: str | Path, kind: str | None = "train"):
    """The JSONL loss log of a run as a pandas DataFrame (``kind=None``: train and val lines)."""
    import pandas as pd

    path = Path(path)
    if path.is_dir():
        path = path / LOG_NAME
    if not path.exists():
        raise FileNotFoundError(f"no training log at {path} (Trainer writes <out_dir>/{LOG_NAME})")
    records = _read_log_records(path)
    frame = pd.DataFrame.from_records(records, columns=None if records else ["kind", "step", "seconds"])
    if kind is not None and len(frame):
        frame = frame[frame["kind"] == kind].dropna(axis=1, how="all").reset_index(drop=True)
    return frame


def _read_log_records(path: Path) -> list[dict]:
    """The JSON lines of a log. A torn last line (a run killed or a disk full mid-write) is skipped
    with a warning naming the file; a broken line before the last one raises ``ValueError``."""
    lines = path.read_text(encoding="utf-8").splitlines()
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if isinstance(record, dict):
            records.append(record)
        elif number == len(lines):
            warnings.warn(f"{path}: skipping its torn last line {number} ({line[:60]!r}); the run that wrote it "
                          "was interrupted mid-write", stacklevel=3)
        else:
            raise ValueError(f"{path}, line {number} is not a JSON object ({line[:60]!r}); the log is corrupt")
    return records


def _destroy_process_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


# Settings a caller (the CLI) imposes on every Trainer built inside ``run_options``, and the
# functions told about each finished fit.
_run_overrides: dict[str, Any] = {}
_fit_listeners: list[Callable[["FitResult"], None]] = []


@contextlib.contextmanager
def run_options(*, resume: bool | None = None, checkpoint_every: int | None = None,
                on_fit: Callable[["FitResult"], None] | None = None):
    """Inside this block every ``Trainer`` (e.g. the ones a recipe builds) resumes and/or
    checkpoints as asked, whatever the recipe passed; ``on_fit(result)`` is called after each fit.

    This is how ``python -m facelib train NAME --resume --checkpoint-every N`` reaches the
    Trainers of a multi-stage recipe without every recipe taking these options.
    """
    if checkpoint_every is not None and (not isinstance(checkpoint_every, int) or checkpoint_every < 0):
        raise ValueError(f"checkpoint_every must be an int >= 0, got {checkpoint_every!r}")
    saved = dict(_run_overrides)
    _run_overrides.update({k: v for k, v in (("resume", resume), ("checkpoint_every", checkpoint_every))
                           if v is not None})
    if on_fit is not None:
        _fit_listeners.append(on_fit)
    try:
        yield
    finally:
        _run_overrides.clear()
        _run_overrides.update(saved)
        if on_fit is not None:
            _fit_listeners.remove(on_fit)


# ---------------------------------------------------------------------------------------------
# The trainer


class Trainer:
    """Runs a ``TrainingTask``: seeds, device, DDP, progress bar, JSONL log, checkpoints, resume."""

    def __init__(
        self,
        task: TrainingTask,
        *,
        steps: int,
        batch_size: int,
        seed: int = 0,
        out_dir: str | Path,
        device: str | torch.device = "auto",
        log_every: int = 10,
        checkpoint_every: int = 0,
        validate_every: int = 0,
        keep_checkpoints: int = 2,
        num_workers: int | None = None,
        resume: bool = False,
        progress: bool = True,
        ddp_kwargs: dict | None = None,
        early_stopping: EarlyStopping | str | None = None,
    ):
        for name, value, least in (
            ("steps", steps, 0), ("batch_size", batch_size, 1), ("log_every", log_every, 1),
            ("checkpoint_every", checkpoint_every, 0), ("validate_every", validate_every, 0),
            ("keep_checkpoints", keep_checkpoints, 1),
            ("num_workers", 0 if num_workers is None else num_workers, 0),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise ValueError(f"Trainer: {name} must be an int >= {least}, got {value!r}")
        for method in ("build", "training_step"):
            if not callable(getattr(task, method, None)):
                raise TypeError(f"Trainer: the task {type(task).__name__} has no {method}() method (see TrainingTask)")
        if isinstance(early_stopping, str):
            early_stopping = EarlyStopping(monitor=early_stopping)
        if early_stopping is not None:
            if not isinstance(early_stopping, EarlyStopping):
                raise TypeError(f"Trainer: early_stopping must be an EarlyStopping, a metric name or None, "
                                f"got {type(early_stopping).__name__}")
            if not validate_every or not callable(getattr(task, "validate", None)):
                raise ValueError(f"Trainer: early_stopping={early_stopping.monitor!r} needs validate_every > 0 "
                                 f"(got {validate_every}) and a task with a validate() method")
        resume = _run_overrides.get("resume", resume)
        checkpoint_every = _run_overrides.get("checkpoint_every", checkpoint_every)
        self.task = task
        self.steps, self.batch_size, self.seed = steps, batch_size, int(seed)
        self.out_dir = Path(out_dir)
        self.device_request = device
        self.log_every, self.checkpoint_every, self.validate_every = log_every, checkpoint_every, validate_every
        self.keep_checkpoints, self.num_workers = keep_checkpoints, num_workers
        self.resume, self.progress = resume, progress
        self.ddp_kwargs = dict(ddp_kwargs or {})
        self.early_stopping = early_stopping
        self.log_path = self.out_dir / LOG_NAME
        self.checkpoint_dir = self.out_dir / CHECKPOINT_FOLDER
        self.rank, self.local_rank, self.world_size = 0, 0, 1
        self.device: torch.device | None = None

    # -- setup ---------------------------------------------------------------------------------

    def _resolve_device(self) -> torch.device:
        device = get_device(self.device_request)
        if self.world_size > 1 and device.type == "cuda":
            device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(device)
        return device

    def _build(self) -> tuple[dict[str, nn.Module], dict[str, torch.optim.Optimizer], dict[str, Any]]:
        built = self.task.build(self.device)
        if not (isinstance(built, tuple) and len(built) == 2 and all(isinstance(d, dict) for d in built)):
            raise TypeError(f"{type(self.task).__name__}.build must return (modules: dict, optimizers: dict)")
        modules, optimizers = built
        for name, module in modules.items():
            if not isinstance(module, nn.Module):
                raise TypeError(f"build(): modules[{name!r}] is a {type(module).__name__}, not an nn.Module")
            module.to(self.device).train()
        for name, optimizer in optimizers.items():
            if not isinstance(optimizer, torch.optim.Optimizer):
                raise TypeError(f"build(): optimizers[{name!r}] is a {type(optimizer).__name__}, not a torch Optimizer")
        stateful = dict(self.task.stateful()) if callable(getattr(self.task, "stateful", None)) else {}
        if self.early_stopping is not None:
            if EARLY_STOPPING_STATE in stateful:
                raise ValueError(f"{type(self.task).__name__}.stateful() uses the name {EARLY_STOPPING_STATE!r}, "
                                 "which the Trainer keeps for its early stopping")
            stateful[EARLY_STOPPING_STATE] = self.early_stopping
        return modules, optimizers, stateful

    def _wrap(self, modules: dict[str, nn.Module]) -> dict[str, nn.Module]:
        if self.world_size == 1:
            return dict(modules)
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return {
            name: nn.parallel.DistributedDataParallel(module, device_ids=device_ids, **self.ddp_kwargs)
            if any(p.requires_grad for p in module.parameters()) else module
            for name, module in modules.items()
        }

    def _loader(self, start: int):
        """The batches of steps ``start .. steps-1`` (a generator: ``close()`` stops its workers), or None."""
        dataset = getattr(self.task, "dataset", None)
        if dataset is None:
            return None
        indices_of_step = partial(batch_indices, len(dataset), self.batch_size, seed=self.seed,
                                  rank=self.rank, world_size=self.world_size)
        num_workers = default_num_workers(dataset) if self.num_workers is None else self.num_workers
        # An explicit generator: DataLoader would otherwise draw its worker seed from the global RNG.
        return step_batches(
            dataset, indices_of_step, start, self.steps, batch_size=self.batch_size, num_workers=num_workers,
            collate_fn=getattr(self.task, "collate_fn", None), pin_memory=self.device.type == "cuda",
            generator=torch.Generator().manual_seed(self.seed),
        )

    # -- log -----------------------------------------------------------------------------------

    def _write_log(self, record: dict) -> None:
        with open(self.log_path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")

    def _restart_log(self, keep_until_step: int | None, drop_partial_row: bool = False) -> None:
        """Fresh run: empty log. Resume: keep only lines up to the checkpoint's step.

        ``drop_partial_row``: the train line at that step averaged an unfinished window (the
        earlier run ended there, off the ``log_every`` grid); the resumed run carries that window
        on and logs it at the next grid step, as an uninterrupted run would.
        """
        kept = []
        if keep_until_step is not None and self.log_path.exists():
            for record in _read_log_records(self.log_path):
                step = record.get("step", 0)
                partial = drop_partial_row and step == keep_until_step and record.get("kind") == "train"
                if isinstance(step, int) and step <= keep_until_step and not partial:
                    kept.append(json.dumps(record) + "\n")
        atomic_write_text(self.log_path, "".join(kept))

    def _average(self, sums: dict[str, Any], counts: dict[str, int] | int) -> dict[str, float]:
        """Each loss's sum divided by the number of steps that reported it (``counts``), averaged over ranks."""
        names = sorted(sums)
        divisors = torch.tensor([counts if isinstance(counts, int) else counts[n] for n in names], dtype=torch.float64)
        # to the CPU before float64: MPS has no float64
        values = torch.tensor([float(sums[n].detach().to("cpu")) if isinstance(sums[n], torch.Tensor) else sums[n]
                               for n in names], dtype=torch.float64) / divisors
        if self.world_size > 1:
            on_device = values.to(self.device) if self.device.type == "cuda" else values
            dist.all_reduce(on_device)
            values = on_device.to("cpu") / self.world_size
        return {name: float(v) for name, v in zip(names, values.tolist())}

    # -- checkpoints ---------------------------------------------------------------------------

    def _save(self, step: int, seconds: float, modules, optimizers, stateful, window: dict) -> Path:
        stem = self.checkpoint_dir / f"step_{step:08d}"
        # The losses summed since the last log line (averaged over ranks), so a resumed run's next
        # line averages the same steps as an uninterrupted run's.
        log_window = {"count": window["count"], "counts": window["counts"],
                      "sums": self._average(window["sums"], 1) if window["count"] else {},
                      "tensor_dtypes": {k: str(v.dtype).removeprefix("torch.") for k, v in window["sums"].items()
                                        if isinstance(v, torch.Tensor)}}
        if self.rank != 0:
            save_rng_state(rank_rng_path(stem, self.rank))
        if self.world_size > 1:
            dist.barrier()  # every rank's RNG file exists before rank 0 writes the JSON that marks completion
        if self.rank == 0:
            extra = {"seconds": seconds, "seed": self.seed, "batch_size": self.batch_size,
                     "world_size": self.world_size, "task": type(self.task).__name__, "log_window": log_window}
            save_training_state(stem, modules, optimizers, step, stateful=stateful, extra=extra)
            for _, old in checkpoint_stems(self.out_dir)[:-self.keep_checkpoints]:
                delete_checkpoint(old)
        return stem

    def _resume(self, stem: Path, modules, optimizers, stateful) -> tuple[int, float, dict | None]:
        metadata = read_metadata(stem)
        if metadata.get("format") != TRAINING_STATE_FORMAT:
            raise ValueError(f"{stem} is not a training checkpoint (format {metadata.get('format')!r})")
        stored = metadata.get("stateful")
        if EARLY_STOPPING_STATE in stateful and isinstance(stored, dict) and EARLY_STOPPING_STATE not in stored:
            warnings.warn(f"{stem.name} holds no early-stopping state (written without early stopping, or by an "
                          "older facelib); the best is sought from the resumed step on", stacklevel=3)
            stateful = {name: obj for name, obj in stateful.items() if name != EARLY_STOPPING_STATE}
        state = load_training_state(stem, modules, optimizers, stateful=stateful, restore_rng=self.rank == 0)
        extra = state["extra"]
        for key, now in (("seed", self.seed), ("batch_size", self.batch_size), ("world_size", self.world_size)):
            if key in extra and extra[key] != now:
                warnings.warn(f"resuming {stem.name} with {key}={now}, but it was trained with {key}={extra[key]}; "
                              "the continuation will not match an uninterrupted run", stacklevel=3)
        if self.rank != 0:
            rng_path = rank_rng_path(stem, self.rank)
            if rng_path.exists():
                restore_rng_state(load_rng_state(rng_path))
            else:
                warnings.warn(f"{rng_path.name} is missing; rank {self.rank} keeps its fresh seed", stacklevel=3)
        return state["step"], float(extra.get("seconds", 0.0)), self._restored_window(extra.get("log_window"))

    def _restored_window(self, saved: Any) -> dict | None:
        """The log window a checkpoint stored (None for checkpoints from before it was stored)."""
        if not (isinstance(saved, dict) and isinstance(saved.get("count"), int) and isinstance(saved.get("sums"), dict)):
            return None
        dtypes = saved.get("tensor_dtypes", {})
        sums = {name: float(value) if name not in dtypes else
                torch.tensor(value, dtype=_FLOAT_DTYPES.get(dtypes[name], torch.float32), device=self.device)
                for name, value in saved["sums"].items()}
        # Checkpoints from before per-loss counts: every loss was reported on every step.
        counts = saved.get("counts") or {name: saved["count"] for name in sums}
        return {"sums": sums, "count": saved["count"], "counts": dict(counts)}

    def _validate(self, step: int, unwrapped: dict[str, nn.Module]) -> dict[str, float] | None:
        validate = getattr(self.task, "validate", None)
        if not callable(validate):
            return None
        wrapped = self.task.modules
        rng = capture_rng_state()
        self.task.modules = unwrapped  # no DDP collectives from a rank-0-only call
        for module in unwrapped.values():
            module.eval()
        try:
            with torch.no_grad():
                metrics = validate(step)
        finally:
            for module in unwrapped.values():
                module.train()
            self.task.modules = wrapped
            restore_rng_state(rng)
        return None if metrics is None else {name: float(value) for name, value in metrics.items()}

    def _keep_if_best(self, step: int, metrics: dict[str, float] | None, modules: dict[str, nn.Module]) -> None:
        """Early stopping after a validation (on rank 0): keep the weights if they are the best so far.

        Under DDP rank 0 tells the others (every rank holds the same weights), so every rank keeps the
        same best and ends with the same weights.
        """
        value = math.nan if metrics is None else self.early_stopping.value_of(metrics)
        improved = self.rank == 0 and self.early_stopping.improves(value)
        if self.world_size > 1:
            decision = torch.tensor([float(improved), value], dtype=torch.float64)
            decision = decision.to(self.device) if self.device.type == "cuda" else decision
            dist.broadcast(decision, src=0)
            improved, value = bool(decision[0].item()), float(decision[1].item())
        if improved:
            self.early_stopping.keep(step, value, modules)

    # -- the loop ------------------------------------------------------------------------------

    def fit(self, resume_from: str | Path | None = None) -> FitResult:
        """Train up to ``steps``; see the module docstring for seeding, data order, logs and resume."""
        self.rank, self.local_rank, self.world_size = distributed_env()
        self.device = self._resolve_device()
        if self.world_size > 1 and not dist.is_initialized():
            dist.init_process_group(backend="nccl" if self.device.type == "cuda" else "gloo")
            # Kept for later fits in this process (multi-stage recipes): a group cannot be re-created
            # under torchrun once destroyed.
            atexit.register(_destroy_process_group)
        # One run per folder: rank 0 holds an exclusive lock on out_dir for the whole fit.
        lock = lock_folder(self.out_dir, "training run") if self.rank == 0 else contextlib.nullcontext()
        with lock:
            result = self._fit(resume_from)
        for listener in list(_fit_listeners):
            listener(result)
        return result

    def _fit(self, resume_from: str | Path | None) -> FitResult:
        task = self.task
        set_seed(self.seed)
        task.total_steps = self.steps
        modules, optimizers, stateful = self._build()
        task.modules, task.optimizers = self._wrap(modules), optimizers
        task.device, task.rank, task.world_size = self.device, self.rank, self.world_size
        set_seed(self.seed + self.rank)
        if self.early_stopping is not None:
            self.early_stopping.reset()  # a resume below loads the best found before the interruption

        if resume_from is None and self.resume:
            resume_from = latest_checkpoint(self.out_dir)
        start, seconds_before, window = 0, 0.0, None
        if resume_from is not None:
            start, seconds_before, window = self._resume(Path(resume_from), modules, optimizers, stateful)
        if self.rank == 0:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            remove_temporary_files(self.out_dir)  # left by a run killed mid-write
            clean_folder(self.checkpoint_dir)
            if resume_from is None:
                for _, old in checkpoint_stems(self.out_dir):
                    delete_checkpoint(old)
            partial = window is not None and window["count"] > 0 and start < self.steps
            self._restart_log(start if resume_from is not None else None, drop_partial_row=partial)
        if self.world_size > 1:
            dist.barrier()

        batches = self._loader(start)
        bar = tqdm(total=self.steps, initial=start, desc=type(task).__name__, dynamic_ncols=True,
                   disable=not (self.progress and self.rank == 0))
        # The log window: each loss's sum, and the number of steps that reported it (a GAN's
        # generator losses come every n_critic-th step only), since the last log line.
        sums: dict[str, Any] = window["sums"] if window else {}
        counts: dict[str, int] = window["counts"] if window else {}
        count = window["count"] if window else 0
        logged: dict[str, float] = {}
        checkpoint = None
        clock = time.perf_counter()
        seconds = seconds_before
        try:
            for step in range(start, self.steps):
                batch = _to_device(next(batches), self.device) if batches is not None else None
                losses = task.training_step(batch, step)
                if not isinstance(losses, dict):
                    raise TypeError(f"{type(task).__name__}.training_step must return a dict of losses, "
                                    f"got {type(losses).__name__}")
                for name, value in losses.items():
                    if isinstance(value, torch.Tensor) and value.numel() != 1:
                        raise ValueError(f"training_step returned {name!r} with shape {list(value.shape)}; "
                                         "losses must be scalars (floats or one-element tensors)")
                    value = value.detach() if isinstance(value, torch.Tensor) else float(value)
                    sums[name] = sums[name] + value if name in sums else value
                    counts[name] = counts.get(name, 0) + 1
                count += 1
                done = step + 1
                bar.update(1)
                seconds = seconds_before + time.perf_counter() - clock
                if done % self.log_every == 0 or done == self.steps:
                    logged = self._average(sums, counts)
                    if done % self.log_every == 0:  # off the grid (the last step) the window stays open for a resume
                        sums, counts, count = {}, {}, 0
                    for name, value in logged.items():
                        if not math.isfinite(value):
                            raise FloatingPointError(f"loss {name!r} is {value} at step {done}; training diverged")
                    if self.rank == 0:
                        self._write_log({"kind": "train", "step": done, "seconds": round(seconds, 3), **logged})
                        bar.set_postfix({name: f"{value:.4g}" for name, value in logged.items()}, refresh=False)
                if self.validate_every and done % self.validate_every == 0:
                    metrics = self._validate(done, modules) if self.rank == 0 else None
                    if metrics is not None:
                        self._write_log({"kind": "val", "step": done, "seconds": round(seconds, 3), **metrics})
                    if self.early_stopping is not None:
                        self._keep_if_best(done, metrics, modules)
                if (self.checkpoint_every and done % self.checkpoint_every == 0) or done == self.steps:
                    window = {"sums": sums, "counts": counts, "count": count}
                    checkpoint = self._save(done, seconds, modules, optimizers, stateful, window)
        finally:
            bar.close()
            if batches is not None:
                batches.close()  # stops the loader's worker processes now, also on an exception
        if checkpoint is None:
            checkpoint = latest_checkpoint(self.out_dir)
        best_step = best_value = None
        if self.early_stopping is not None:
            # After the last checkpoint, which holds the last weights (a longer resumed run goes on from those).
            self.early_stopping.restore(modules)
            best_step, best_value = self.early_stopping.best_step, self.early_stopping.best_value
        return FitResult(step=max(start, self.steps), seconds=seconds, log_path=self.log_path,
                         checkpoint=checkpoint, losses=logged, first_step=start, task=type(task).__name__,
                         best_step=best_step, best_value=best_value)
