"""Training facelib's evaluators: a refreshing pool of SynthFaces renders, one task per evaluator, recipes."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from facelib.conventions import AU_MAX
from facelib.evaluation.evaluators import evaluate_evaluators, held_out_sampler, pair_embeddings, split_identities
from facelib.models.evaluators import (
    AURegressor, Evaluator, ExpressionClassifier, FaceSampler, IdentityEmbedder, centroid_margin_softmax,
)
from facelib.train.trainer import TrainingTask

# --------------------------------------------------------------------------- training


class RenderPool:
    """A replay buffer of renders, so that training is not bound by the renderer's speed.

    ``make(n)`` renders ``n`` items (a dict of tensors, first dimension = item). The pool holds
    ``capacity`` items; each :meth:`refresh` replaces ``fresh`` random items with new renders, and
    :meth:`sample` draws distinct items. Over a run every item is replaced many times, so the
    data stays unlimited; ``fresh >= capacity`` makes every batch brand new.
    """

    def __init__(self, make, capacity: int, fresh: int, chunk: int = 256):
        self.make, self.capacity, self.fresh = make, capacity, min(fresh, capacity)
        parts = [make(min(chunk, capacity - start))
                 for start in tqdm(range(0, capacity, chunk), desc="filling the render pool", leave=False)]
        # images are stored in half precision (a quarter of the memory of float32)
        self.items = {k: torch.cat([part[k] for part in parts]) for k in parts[0]}
        self.items = {k: v.half() if v.is_floating_point() else v for k, v in self.items.items()}

    def refresh(self) -> None:
        slots = torch.randperm(self.capacity)[:self.fresh]
        for key, value in self.make(self.fresh).items():
            self.items[key][slots] = value.to(self.items[key].dtype)

    def sample(self, n: int) -> dict[str, Tensor]:
        chosen = torch.randperm(self.capacity)[:n]
        return {k: v[chosen].float() if v.is_floating_point() else v[chosen] for k, v in self.items.items()}


@dataclass
class TrainingPlan:
    """How one evaluator trains: AdamW with a one-cycle schedule on a refreshing pool of renders."""

    steps: int
    batch_size: int
    lr: float = 3e-3
    weight_decay: float = 1e-4
    pool: int = 4096  # renders held at once (identity: renders of all views of pool // views people)
    fresh: int = 16  # renders replaced before every step


#: What ``python -m facelib train evaluators`` ships (steps per evaluator).
PLANS: dict[str, TrainingPlan] = {
    "expression_classifier": TrainingPlan(steps=900, batch_size=64),
    "au_regressor": TrainingPlan(steps=4000, batch_size=64),  # measured: 2000 steps left it at MAE 0.27 / PCC 0.897
    "identity_embedder": TrainingPlan(steps=250, batch_size=96),
}


def _flip_half(image: Tensor) -> Tensor:
    """Mirror a random half of the faces (expressions and AU intensities do not change)."""
    flip = torch.rand(image.shape[0]) < 0.5
    return torch.where(flip[:, None, None, None], image.flip(-1), image)


class EvaluatorTask(TrainingTask):
    """Trains one evaluator on a :class:`RenderPool` of training identities (no dataset: data is unlimited)."""

    dataset = None
    model_class: type[Evaluator]
    views = 1  # renders per pool item (the identity task keeps several views of one person together)

    def __init__(self, plan: TrainingPlan, identities: Tensor, size: int = 64):
        self.plan = plan
        self.sampler = FaceSampler(identities, size)  # global RNG: seeded by the Trainer

    def build(self, device):
        model = self.model_class().to(device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=self.plan.lr, weight_decay=self.plan.weight_decay)
        self.schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=self.plan.lr,
                                                            total_steps=self.plan.steps, pct_start=0.15)
        self.pool = RenderPool(self.render, self.plan.pool // self.views, max(1, self.plan.fresh // self.views))
        return {"model": model}, {"adamw": optimizer}

    def stateful(self):
        return {"schedule": self.schedule}

    def sample(self) -> dict[str, Tensor]:
        batch = self.pool.sample(self.plan.batch_size)
        return {**batch, "image": _flip_half(batch["image"])}

    def training_step(self, batch, step):
        self.pool.refresh()
        batch = {k: v.to(self.device) for k, v in self.sample().items()}
        loss, logs = self.loss(self.modules["model"], batch)
        optimizer = self.optimizers["adamw"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        self.schedule.step()
        return {"loss": loss.detach(), **logs}


class ExpressionTask(EvaluatorTask):
    model_class = ExpressionClassifier

    def render(self, n):
        # Below intensity 1 most emotions are a neutral face; they would only teach guessing.
        return self.sampler.expression_batch(n, min_intensity=1.0)

    def loss(self, model, batch):
        logits = model(batch["image"])
        accuracy = (logits.argmax(1) == batch["emotion"]).float().mean()
        return F.cross_entropy(logits, batch["emotion"]), {"accuracy": accuracy}


class AUTask(EvaluatorTask):
    model_class = AURegressor

    def render(self, n):
        return self.sampler.au_batch(n)

    def loss(self, model, batch):
        pred = model(batch["image"], clamp=False)
        # Squared error: an absolute error lets a regressor settle on the median, 0 for sparse AUs.
        mae = (pred.detach().clamp(0, AU_MAX) - batch["aus"]).abs().mean()
        return F.mse_loss(pred, batch["aus"]), {"mae": mae}


class IdentityTask(EvaluatorTask):
    model_class = IdentityEmbedder
    views = 4

    def render(self, n):
        """``n`` people, each as a group of ``views`` renders: image ``[n, views, 3, S, S]``."""
        batch = self.sampler.identity_batch(n, self.views)
        return {k: v.view(n, self.views, *v.shape[1:]) for k, v in batch.items()}

    def sample(self):
        # whole people, never mirrored (a mirrored face is not quite the same person)
        groups = self.pool.sample(self.plan.batch_size // self.views)
        return {k: v.flatten(0, 1) for k, v in groups.items()}

    def loss(self, model, batch):
        return centroid_margin_softmax(model(batch["image"]), self.views), {}


TASKS: dict[str, type[EvaluatorTask]] = {
    "expression_classifier": ExpressionTask,
    "au_regressor": AUTask,
    "identity_embedder": IdentityTask,
}


def train_recipe(*, steps: int | None, seed: int, out_dir, device: str, smoke: bool,
                 only: tuple[str, ...] | None = None) -> dict:
    """``python -m facelib train evaluators``: train, calibrate and measure all three evaluators.

    ``steps`` overrides every evaluator's step count; ``only`` trains a subset (each evaluator's
    run is seeded on its own, so training one alone gives the same weights). The identity embedder's
    verification threshold is chosen on validation identities; every figure in
    ``metrics`` is measured on fresh renders of test identities.
    """
    from pathlib import Path

    from ..checkpoint import save_model
    from ..metrics import best_verification_threshold
    from ..train import Trainer

    out_dir = Path(out_dir)
    eval_n = 64 if smoke else 1000
    train_ids = split_identities("train")
    checkpoints, metrics, steps_run = {}, {}, {}
    for name, task_class in TASKS.items():
        if only is not None and name not in only:
            continue
        plan = PLANS[name]
        n_steps = 3 if smoke else (steps or plan.steps)
        if smoke:
            plan = TrainingPlan(steps=n_steps, batch_size=16, lr=plan.lr, pool=64, fresh=16)
        else:
            plan = TrainingPlan(**{**plan.__dict__, "steps": n_steps})
        task = task_class(plan, train_ids)
        result = Trainer(task, steps=n_steps, batch_size=plan.batch_size, seed=seed, out_dir=out_dir / name,
                         device=device, progress=True).fit()
        model = task.unwrap("model").eval()
        if name == "identity_embedder":
            model.config.verification_threshold = best_verification_threshold(
                *pair_embeddings(model, held_out_sampler("val", seed), eval_n))
        measured = evaluate_evaluators(**{_ARG[name]: model}, n=eval_n, seed=seed)[name]
        measured["train_seconds"] = result.seconds
        measured["train_steps"] = n_steps
        if name == "identity_embedder":
            measured["verification_threshold"] = model.config.verification_threshold
        metrics[name] = measured
        checkpoints[name] = save_model(model, out_dir / name / name)
        steps_run[name] = n_steps
    return {"checkpoints": checkpoints, "metrics": metrics, "preset": "all presets (mixed conditions)",
            "steps": max(steps_run.values())}


_ARG = {"expression_classifier": "expression", "au_regressor": "au", "identity_embedder": "identity"}


def train_expression_classifier_recipe(**kwargs) -> dict:
    """``python -m facelib train expression_classifier``: the expression classifier alone."""
    return train_recipe(**kwargs, only=("expression_classifier",))


def train_au_regressor_recipe(**kwargs) -> dict:
    """``python -m facelib train au_regressor``: the AU intensity regressor alone."""
    return train_recipe(**kwargs, only=("au_regressor",))


def train_identity_embedder_recipe(**kwargs) -> dict:
    """``python -m facelib train identity_embedder``: the identity embedder alone."""
    return train_recipe(**kwargs, only=("identity_embedder",))
