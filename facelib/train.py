"""A generic training loop for every paper: seeds, devices, progress, logs, checkpoints, resume, DDP.

Each paper's training is a ``TrainingTask``: it builds its networks and optimisers and does
one optimisation step (its own forward, ``backward()`` and ``optimizer.step()`` calls, so a
GAN with several optimisers and its own D/G schedule fits). ``Trainer`` does everything
else, identically for all papers.

Example::

    from facelib.train import Trainer, TrainingTask, read_log

    class FVAETask(TrainingTask):
        def __init__(self, config):
            self.config = config
            self.dataset = SynthFaces("multipie", "train", pairs=True)  # map-style Dataset

        def build(self, device):
            model = FVAE(self.config).to(device)
            return {"fvae": model}, {"adam": torch.optim.Adam(model.parameters(), 1e-3)}

        def training_step(self, batch, step):                  # batch is already on self.device
            out = self.modules["fvae"](batch["source"], batch["target"])   # DDP wrapper under torchrun
            loss = ...
            self.optimizers["adam"].zero_grad(set_to_none=True)
            loss.backward()
            self.optimizers["adam"].step()
            return {"loss": loss.detach()}                     # floats or 0-dim tensors

    result = Trainer(FVAETask(cfg), steps=2000, batch_size=32, seed=0, out_dir="runs/fvae").fit()
    save_model(task.unwrap("fvae"), "runs/fvae/fvae")
    read_log("runs/fvae").plot(x="step", y="loss")

The same script runs unchanged under ``torchrun --nproc_per_node=2 script.py``.

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
  ``validate_every`` completed steps, with modules in ``eval()`` mode, under ``torch.no_grad()``
  and with the RNG state saved and restored around it (validation never changes training).
- ``stateful(self) -> dict[str, object]`` (optional): extra objects with
  ``state_dict()``/``load_state_dict()`` (LR schedulers, GradScaler) saved in checkpoints.
- Set by the Trainer before the first step: ``self.modules`` (what to call: the
  ``DistributedDataParallel`` wrappers under torchrun, the plain modules otherwise),
  ``self.optimizers``, ``self.device``, ``self.rank``, ``self.world_size``;
  ``self.unwrap(name) -> nn.Module`` returns the plain module (attributes, saving).

DDP notes for tasks: forward a module through ``self.modules[...]`` once per backward; run
forwards whose gradients you do not need (e.g. the generator during a discriminator step)
under ``torch.no_grad()``; concatenate real and fake batches into one discriminator forward.

``Trainer(task, *, steps, batch_size, seed=0, out_dir, device="auto", log_every=10,
checkpoint_every=0, validate_every=0, keep_checkpoints=2, num_workers=0, resume=False,
progress=True, ddp_kwargs=None)``

- ``steps``: total optimisation steps (a resumed run continues up to ``steps``).
  ``batch_size`` is per process (the global batch under torchrun is ``batch_size * world_size``).
- ``.fit(resume_from=None) -> FitResult`` (dataclass: ``step``, ``seconds``, ``log_path``,
  ``checkpoint``, ``losses`` = last logged averages).
- Seeding: ``set_seed(seed)`` before ``task.build`` (identical initial weights on every rank),
  then ``set_seed(seed + rank)`` for the training randomness (dropout, noise) of each rank.
- Data: the indices of step ``t`` on rank ``r`` are ``batch_indices(len(dataset), batch_size, t,
  seed=seed, rank=r, world_size=W)``: epoch-wise permutations seeded by ``(seed, epoch)``, so
  every sample is seen once per epoch, ranks see disjoint samples, and the batch of a step
  never depends on what ran before it. Loaded through a ``DataLoader`` (``num_workers``) and
  moved to the device (tensors inside dicts/lists/tuples).
- Device: ``get_device(device)``; under torchrun (``WORLD_SIZE`` > 1) ``torch.distributed``
  is initialised (gloo on CPU, NCCL on CUDA with ``cuda:LOCAL_RANK``) unless already
  initialised, and every module with trainable parameters is wrapped in
  ``DistributedDataParallel(**ddp_kwargs)``.
- Progress: a tqdm bar on rank 0 with the latest losses in its postfix.
- Log: ``out_dir/log.jsonl``, one JSON object per line:
  ``{"kind": "train", "step": completed_steps, "seconds": training_wall_time, <loss>: mean over
  the last log_every steps and over ranks, ...}``; validation lines have ``"kind": "val"``.
  A non-finite logged loss raises ``FloatingPointError`` naming the loss and step.
- Checkpoints: ``out_dir/checkpoints/step_00001000.{safetensors,json}`` through
  ``facelib.checkpoint.save_training_state`` (weights, optimiser state, RNG states, log
  position; no pickle), every ``checkpoint_every`` steps (0: only at the end) and always at
  the end; the newest ``keep_checkpoints`` are kept. Under DDP rank 0 writes the state and
  every other rank ``r`` writes its RNG to ``step_...rank{r}.rng.safetensors``.
- Resume: ``resume=True`` continues from the newest checkpoint in ``out_dir`` (or starts fresh
  when there is none); ``fit(resume_from=stem)`` from a given one. On CPU the resumed run is
  bit-identical to an uninterrupted one; log lines after the checkpoint's step are dropped.

Functions:

- ``read_log(path, kind="train") -> pandas.DataFrame``: ``path`` is the ``log.jsonl`` or the
  run folder; ``kind=None`` returns all lines.
- ``batch_indices(num_samples, batch_size, step, *, seed, rank=0, world_size=1) -> LongTensor``.
- ``latest_checkpoint(out_dir) -> Path | None``: the stem of the newest complete checkpoint.
- ``distributed_env() -> (rank, local_rank, world_size)`` from the torchrun environment.
- ``set_seed``, ``get_device``: re-exported from ``facelib.utils``.
"""
