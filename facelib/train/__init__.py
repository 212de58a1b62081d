"""Training: one loop for every paper (:mod:`facelib.train.trainer`) and one module per paper's objective.

- :mod:`facelib.train.trainer` - ``Trainer``, ``TrainingTask``, ``EarlyStopping``, logs, checkpoints, resume, DDP;
- :mod:`facelib.train.state` - what a training checkpoint holds (weights, optimisers, RNG) and the folder of them;
- :mod:`facelib.train.gan` - ``GANTask``: WGAN-GP with ``n_critic`` critic steps per generator step, LR decay;
- :mod:`facelib.train.fvae` - FVAE Eq. 1 and the confidence network's Eq. 7-8, recipes ``fvae``, ``fvae_pixel_vae``;
- :mod:`facelib.train.evaluators` - the SynthFaces evaluators, recipe ``evaluators``;
- :mod:`facelib.train.classifier` - ``train_classifier``, the short in-memory loop of the measurements that train a classifier.
"""
from __future__ import annotations

from .gan import GANTask
from .state import CHECKPOINT_FOLDER, latest_checkpoint
from .trainer import (
    LOG_NAME, EarlyStopping, FitResult, Trainer, TrainingTask, batch_indices, distributed_env, read_log, run_options,
)

__all__ = [
    "CHECKPOINT_FOLDER", "LOG_NAME", "EarlyStopping", "FitResult", "GANTask", "Trainer", "TrainingTask",
    "batch_indices", "distributed_env", "latest_checkpoint", "read_log", "run_options",
]
