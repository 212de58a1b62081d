"""Tiny tasks for the training-loop tests (an autoencoder, a conditional GAN), and the worker
script of the torchrun tests.

As a script (under ``torchrun --nproc_per_node=2``) it trains with the real ``Trainer`` and
writes, per rank, the sha256 of the parameters to ``--out/rank<r>.json``: ``--task autoencoder``
trains once straight, once cut in two and resumed, and once with early stopping, and also
records the dataset indices it saw; ``--task gan`` trains the toy GAN (WGAN-GP under DDP).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from facelib.checkpoint import save_model
from facelib.train import Trainer, TrainingTask
from facelib.train.gan import GANTask

TESTS = Path(__file__).resolve().parent


@dataclass
class ToyConfig:
    dim: int = 8
    hidden: int = 16
    dropout: float = 0.3


class ToyAutoencoder(nn.Module):
    def __init__(self, config: ToyConfig):
        super().__init__()
        self.config = config
        self.net = nn.Sequential(
            nn.Linear(config.dim, config.hidden), nn.ReLU(), nn.Dropout(config.dropout),
            nn.Linear(config.hidden, config.dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, dim] -> [B, dim]
        return self.net(x)


class ToyDataset(torch.utils.data.Dataset):
    """``size`` fixed random vectors; item i is the same tensor every time."""

    def __init__(self, size: int = 40, dim: int = 8):
        self.vectors = torch.randn(size, dim, generator=torch.Generator().manual_seed(1234))

    def __len__(self) -> int:
        return len(self.vectors)

    def __getitem__(self, index: int) -> dict:
        return {"x": self.vectors[index], "index": index}


class ToyTask(TrainingTask):
    """Denoising autoencoder: Adam, dropout, and fresh input noise every step (global RNG)."""

    def __init__(self, config: ToyConfig | None = None, dataset_size: int = 40):
        self.config = config or ToyConfig()
        self.dataset = ToyDataset(dataset_size, self.config.dim)
        self.seen: list[int] = []
        self.validated: list[int] = []

    def build(self, device):
        model = ToyAutoencoder(self.config).to(device)
        return {"autoencoder": model}, {"adam": torch.optim.Adam(model.parameters(), lr=1e-2)}

    def training_step(self, batch, step):
        self.seen.extend(batch["index"].tolist())
        x = batch["x"]
        noisy = x + 0.1 * torch.randn_like(x)
        loss = nn.functional.mse_loss(self.modules["autoencoder"](noisy), x)
        self.optimizers["adam"].zero_grad(set_to_none=True)
        loss.backward()
        self.optimizers["adam"].step()
        return {"loss": loss.detach()}

    def validate(self, step):
        self.validated.append(step)
        x = self.dataset.vectors
        return {"val_loss": nn.functional.mse_loss(self.modules["autoencoder"](x + torch.randn_like(x)), x)}


class ShrinkingTargetTask(ToyTask):
    """Validation asks for ``0.1 x``, so as the autoencoder learns the identity its validation
    loss falls, then rises: the best step lies inside the run (step 14 of 24 with the tests' settings)."""

    def validate(self, step):
        self.validated.append(step)
        x = self.dataset.vectors.to(self.device)
        return {"val_loss": nn.functional.mse_loss(self.modules["autoencoder"](x), 0.1 * x)}


class ToyImages(torch.utils.data.Dataset):
    """``size`` fixed 8x8 images in [-1, 1], each with a 2-class condition: smooth blobs whose
    brightness is the class."""

    def __init__(self, size: int = 32):
        generator = torch.Generator().manual_seed(99)
        self.label = torch.randint(0, 2, (size,), generator=generator)
        coarse = torch.rand(size, 3, 2, 2, generator=generator) * 2 - 1
        self.image = nn.functional.interpolate(coarse, size=8, mode="bilinear", align_corners=False)
        self.image = (0.5 * self.image + 0.4 * (2 * self.label.view(-1, 1, 1, 1) - 1)).clamp(-1, 1)

    def __len__(self) -> int:
        return len(self.label)

    def __getitem__(self, index: int) -> dict:
        return {"image": self.image[index], "label": self.label[index]}


class ToyGenerator(nn.Module):
    """GANimation in miniature: (image, target class) -> colour (tanh) and attention (sigmoid) heads;
    output = A * image + (1 - A) * colour."""

    def __init__(self, hidden: int = 8):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3 + 2, hidden, 3, padding=1), nn.ReLU())
        self.colour, self.attention = nn.Conv2d(hidden, 3, 3, padding=1), nn.Conv2d(hidden, 1, 3, padding=1)

    def forward(self, image: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        condition = nn.functional.one_hot(label, 2).to(image)[:, :, None, None].expand(-1, -1, *image.shape[-2:])
        features = self.body(torch.cat([image, condition], 1))
        attention = torch.sigmoid(self.attention(features))
        return attention * image + (1 - attention) * torch.tanh(self.colour(features)), attention


class ToyCritic(nn.Module):
    """Two heads, like StarGAN's and GANimation's critic: a realness score and class logits."""

    def __init__(self, hidden: int = 8):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, hidden, 4, stride=2, padding=1), nn.LeakyReLU(0.01), nn.Flatten())
        self.score, self.classes = nn.Linear(hidden * 16, 1), nn.Linear(hidden * 16, 2)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.body(image)
        return self.score(features), self.classes(features)


class Killed(Exception):
    """Stands for a run killed mid-training (``ToyGAN(kill_at=...)``)."""


class ToyGAN(GANTask):
    """A conditional WGAN-GP (StarGAN-like): move each image to the other class.

    Records what the tests check: ``generator_updates`` (the steps that updated the generator),
    ``lrs`` (each step's learning rates) and ``reported`` (each step's logged values).
    ``kill_at``: raise ``Killed`` on reaching that step (a run interrupted with the same ``steps``,
    hence the same LR schedule; shortening ``steps`` would change the schedule).
    """

    def __init__(self, dataset_size: int = 32, kill_at: int | None = None, **schedule):
        super().__init__(**schedule)
        self.dataset = ToyImages(dataset_size)
        self.kill_at = kill_at
        self.generator_updates: list[int] = []
        self.lrs: list[tuple[float, float]] = []
        self.reported: list[dict[str, float]] = []
        self.seen: list[tuple[str, int, float]] = []  # (player, step, the random number prepare drew)

    def prepare(self, batch, step):
        return {**batch, "draw": torch.rand(())}  # drawn once per step: both players must see the same

    def warmup_losses(self, batch, step):
        self.seen.append(("warmup", step, float(batch["draw"])))
        _, classes = self.modules["critic"](batch["image"])
        return {"loss": nn.functional.cross_entropy(classes, batch["label"])}

    def build_players(self, device):
        return ToyGenerator().to(device), ToyCritic().to(device)

    def training_step(self, batch, step):
        if step == self.kill_at:
            raise Killed(step)
        self.lrs.append((self.optimizers["generator"].param_groups[0]["lr"],
                         self.optimizers["critic"].param_groups[0]["lr"]))
        logs = super().training_step(batch, step)
        self.reported.append({name: float(value) for name, value in logs.items()})
        return logs

    def critic_losses(self, batch, step):
        image, target = batch["image"], 1 - batch["label"]
        with torch.no_grad():
            fake, _ = self.modules["generator"](image, target)
        (real_scores, real_classes), (fake_scores, _) = self.critic_outputs(image, fake)
        terms = self.adversarial_terms(real_scores, fake_scores, image, fake, step, scores_of=lambda out: out[0])
        self.seen.append(("critic", step, float(batch["draw"])))
        terms["critic_classification"] = nn.functional.cross_entropy(real_classes, batch["label"])
        terms["loss"] = terms["loss"] + terms["critic_classification"]
        return terms

    def generator_losses(self, batch, step):
        self.generator_updates.append(step)
        image, target = batch["image"], 1 - batch["label"]
        fake, attention = self.modules["generator"](image, target)
        scores, classes = self.modules["critic"](fake)
        self.seen.append(("generator", step, float(batch["draw"])))
        terms = {"adversarial": self.generator_adversarial_loss(scores),
                 "classification": nn.functional.cross_entropy(classes, target),
                 "attention_mean": attention.mean()}
        terms["loss"] = terms["adversarial"] + terms["classification"] + 0.1 * terms["attention_mean"]
        return terms


def parameter_digest(module: nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def toy_recipe(*, steps, seed, out_dir, device, smoke):
    """A real recipe (facelib.recipes signature) for the CLI tests."""
    steps = (2 if smoke else 6) if steps is None else steps
    task = ToyTask()
    Trainer(task, steps=steps, batch_size=4, seed=seed, out_dir=out_dir, device=device, progress=False).fit()
    stem = save_model(task.unwrap("autoencoder"), Path(out_dir) / "toy_autoencoder")
    with torch.no_grad():
        model = task.unwrap("autoencoder").eval()
        error = nn.functional.mse_loss(model(task.dataset.vectors), task.dataset.vectors).item()
    return {"checkpoints": {"toy_autoencoder": stem}, "metrics": {"toy_autoencoder": {"mse": error}},
            "preset": "toy", "steps": steps}


def torchrun(out_dir: Path, *script_args: str, timeout: float = 240) -> tuple[list[dict], float]:
    """Run this file under ``torchrun --nproc_per_node=2 --standalone`` (gloo on CPU); returns each
    rank's report and the seconds the launch took. Fails with the workers' output if it fails."""
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(TESTS), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
               str(TESTS / "toy_training.py"), "--out", str(out_dir), *script_args]
    started = time.perf_counter()
    finished = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=timeout)
    seconds = time.perf_counter() - started
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    return [json.loads((Path(out_dir) / f"rank{r}.json").read_text()) for r in (0, 1)], seconds


def gan_main(out: Path, steps: int, options: dict) -> None:
    """Train the toy GAN on 2 ranks, straight and cut in two; report both players' digests."""
    straight = ToyGAN(n_critic=2)
    Trainer(straight, steps=steps, out_dir=out / "straight", **options).fit()
    interrupted = steps // 2 + 1  # inside an n_critic cycle
    try:
        Trainer(ToyGAN(n_critic=2, kill_at=interrupted), steps=steps, out_dir=out / "resumed",
                checkpoint_every=interrupted, **options).fit()
    except Killed:
        pass
    resumed = ToyGAN(n_critic=2)
    Trainer(resumed, steps=steps, out_dir=out / "resumed", resume=True, **options).fit()
    report = {"rank": straight.rank, "world_size": straight.world_size,
              "ddp": all(isinstance(m, nn.parallel.DistributedDataParallel) for m in straight.modules.values()),
              "generator_updates": straight.generator_updates,
              **{f"{name}_digest": parameter_digest(straight.unwrap(name)) for name in ("generator", "critic")},
              **{f"resumed_{name}_digest": parameter_digest(resumed.unwrap(name)) for name in ("generator", "critic")}}
    (out / f"rank{straight.rank}.json").write_text(json.dumps(report))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--task", choices=("autoencoder", "gan"), default="autoencoder")
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    options = {"batch_size": 4, "seed": 0, "device": "cpu", "log_every": 1, "progress": False}
    if args.task == "gan":
        gan_main(out, args.steps, options)
        return

    straight = ToyTask()
    Trainer(straight, steps=args.steps, out_dir=out / "straight", **options).fit()
    # The same run cut in two: half the steps, then a resume (each rank restores its own RNG).
    Trainer(ToyTask(), steps=args.steps // 2, out_dir=out / "resumed", **options).fit()
    resumed = ToyTask()
    Trainer(resumed, steps=args.steps, out_dir=out / "resumed", resume=True, **options).fit()
    # Early stopping: rank 0 validates and tells the others which weights to keep.
    best = ShrinkingTargetTask()
    best_fit = Trainer(best, steps=24, out_dir=out / "best", validate_every=2, early_stopping="val_loss",
                       **options).fit()

    report = {"best_step": best_fit.best_step, "best_digest": parameter_digest(best.unwrap("autoencoder")),
              "validated": best.validated,"rank": straight.rank, "world_size": straight.world_size, "seen": straight.seen,
              "digest": parameter_digest(straight.unwrap("autoencoder")),
              "resumed_digest": parameter_digest(resumed.unwrap("autoencoder")),
              "ddp": isinstance(straight.modules["autoencoder"], nn.parallel.DistributedDataParallel)}
    (out / f"rank{straight.rank}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main()
