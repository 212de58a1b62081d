"""A tiny autoencoder task for the training-loop tests, and the worker script of the torchrun test.

As a script (under ``torchrun --nproc_per_node=2``) it trains with the real ``Trainer``, once
straight and once cut in two and resumed, and writes, per rank, the sha256 of its parameters
after both and the dataset indices it saw to ``--out``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from facelib.checkpoint import save_model
from facelib.train import Trainer, TrainingTask


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    options = {"batch_size": 4, "seed": 0, "device": "cpu", "log_every": 1, "progress": False}

    straight = ToyTask()
    Trainer(straight, steps=args.steps, out_dir=out / "straight", **options).fit()
    # The same run cut in two: half the steps, then a resume (each rank restores its own RNG).
    Trainer(ToyTask(), steps=args.steps // 2, out_dir=out / "resumed", **options).fit()
    resumed = ToyTask()
    Trainer(resumed, steps=args.steps, out_dir=out / "resumed", resume=True, **options).fit()

    report = {"rank": straight.rank, "world_size": straight.world_size, "seen": straight.seen,
              "digest": parameter_digest(straight.unwrap("autoencoder")),
              "resumed_digest": parameter_digest(resumed.unwrap("autoencoder")),
              "ddp": isinstance(straight.modules["autoencoder"], nn.parallel.DistributedDataParallel)}
    (out / f"rank{straight.rank}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main()
