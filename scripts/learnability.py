"""Is SynthFaces learnable? A small CNN, trained for at most a few minutes on CPU, must tell the
emotion (at intensity >= 3) of faces it has never seen, and the identity of known people across
expressions, from fresh renders.

    python scripts/learnability.py [--minutes 3] [--size 64] [--identities 40] [--seed 0]

Two tasks share one network (a trunk, two linear heads):
* emotion: the 10 labels of ``facelib.EXPRESSIONS`` (RaFD's eight, squint, scream) on random,
  unlimited identities (so no person is seen twice), intensity 3-5, yaw in [-30, 30];
* identity: ``--identities`` fixed people, every expression at intensity 0-5, yaw in [-30, 30].
Both test sets are fresh renders (new identities for emotion, new expressions/poses for identity).
Targets (issue 3): >= 95 % on each.
"""
from __future__ import annotations

import argparse
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

import facelib
from facelib.conventions import EXPRESSIONS
from facelib.data import emotion_aus, render
from facelib.data.synth import emotion_asymmetry

NUM_EXPR = len(EXPRESSIONS)


def draw(n: int, size: int, identities: torch.Tensor | None, generator: torch.Generator,
         intensity: tuple[float, float]) -> dict[str, torch.Tensor]:
    """Render ``n`` faces: random emotion and yaw; people from ``identities`` or brand-new ids."""
    if identities is None:
        ident = torch.randint(10**7, 2 * 10**7, (n,), generator=generator)  # never in any preset
        person = torch.full((n,), -1)
    else:
        person = torch.randint(0, len(identities), (n,), generator=generator)
        ident = identities[person]
    emotion = torch.randint(0, NUM_EXPR, (n,), generator=generator)
    lo, hi = intensity
    level = lo + (hi - lo) * torch.rand(n, generator=generator)
    yaw = (torch.rand(n, generator=generator) * 2 - 1) * 30
    aus = emotion_aus(emotion, level, ident)
    images = render(ident, aus, yaw, size, asymmetry=emotion_asymmetry(emotion, ident))["image"]
    # keep the face: a centred 3/4 crop, shifted down a little (drops hair and background)
    crop, top = size * 3 // 4, size // 8 + size // 32
    left = (size - crop) // 2
    images = images[:, :, top:top + crop, left:left + crop].contiguous()
    return {"image": images, "emotion": emotion, "person": person, "intensity": level}


class SmallCNN(nn.Module):
    """Four conv-BN-ReLU-pool blocks, global average pooling, two linear heads (emotion, identity)."""

    def __init__(self, identities: int, width: int = 24):
        super().__init__()
        chans = [3, width, 2 * width, 4 * width, 4 * width]
        blocks = []
        for cin, cout in zip(chans[:-1], chans[1:]):
            blocks += [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                       nn.MaxPool2d(2)]
        self.trunk = nn.Sequential(*blocks)
        self.emotion = nn.Linear(chans[-1], NUM_EXPR)
        self.identity = nn.Linear(chans[-1], identities)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.trunk(x).mean((2, 3))  # [B, C]
        return self.emotion(h), self.identity(h)


@torch.no_grad()
def accuracy(model: nn.Module, data: dict[str, torch.Tensor], head: int, label: str) -> float:
    model.eval()
    correct = 0
    for start in range(0, len(data["image"]), 256):
        logits = model(data["image"][start:start + 256])[head]
        correct += (logits.argmax(1) == data[label][start:start + 256]).sum().item()
    model.train()
    return correct / len(data["image"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=3.0, help="wall-clock budget for rendering + training")
    parser.add_argument("--size", type=int, default=64, help="render size; the CNN sees a 3/4 crop of the face")
    parser.add_argument("--identities", type=int, default=40)
    parser.add_argument("--test", type=int, default=1000, help="test images per task")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if facelib.is_smoke():
        args.minutes, args.test = 0.2, 200
    torch.set_num_threads(args.threads)
    facelib.set_seed(args.seed)
    start = time.perf_counter()
    budget = args.minutes * 60
    gen = torch.Generator().manual_seed(args.seed)
    people = torch.randint(2 * 10**7, 3 * 10**7, (args.identities,), generator=gen)

    model = SmallCNN(args.identities)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    batch, step = 64, 0
    bar = tqdm(total=int(budget), desc="train (seconds)", unit="s")
    while time.perf_counter() - start < budget * 0.92:
        # half unseen people (emotion task), half the known people (both tasks); fresh every step
        a = draw(batch // 2, args.size, None, gen, (3.0, 5.0))
        b = draw(batch // 2, args.size, people, gen, (0.0, 5.0))
        x = torch.cat([a["image"], b["image"]])
        x = x + 0.02 * torch.randn(x.shape, generator=gen)  # a little sensor noise
        emo_logits, id_logits = model(x)
        strong = torch.cat([torch.ones(batch // 2), (b["intensity"] >= 1.0).float()])
        loss = (F.cross_entropy(emo_logits, torch.cat([a["emotion"], b["emotion"]]), reduction="none") * strong).mean() \
            + F.cross_entropy(id_logits[batch // 2:], b["person"])
        # cosine learning-rate decay over the time budget: a short run still ends converged
        progress = min(1.0, (time.perf_counter() - start) / (budget * 0.92))
        for group in opt.param_groups:
            group["lr"] = 3e-3 * 0.5 * (1 + math.cos(math.pi * progress))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        bar.n = int(time.perf_counter() - start)
        bar.set_postfix(step=step, loss=f"{loss.item():.3f}")
        bar.refresh()
    bar.close()
    train_time = time.perf_counter() - start

    test_gen = torch.Generator().manual_seed(args.seed + 1)
    unseen = draw(args.test, args.size, None, test_gen, (3.0, 5.0))
    known = draw(args.test, args.size, people, test_gen, (0.0, 5.0))
    emotion_acc = accuracy(model, unseen, 0, "emotion")
    identity_acc = accuracy(model, known, 1, "person")
    print(f"trained {step} steps of {batch} fresh renders at {args.size}x{args.size} (face crop "
          f"{args.size * 3 // 4}x{args.size * 3 // 4}) in {train_time:.0f} s "
          f"({torch.get_num_threads()} threads)")
    print(f"emotion accuracy (unseen identities, intensity >= 3, {NUM_EXPR} classes): {emotion_acc:.3f}")
    print(f"identity accuracy ({args.identities} people, any expression 0-5, fresh renders): {identity_acc:.3f}")
    with torch.no_grad():
        model.eval()
        predicted = torch.cat([model(unseen["image"][i:i + 256])[0].argmax(1) for i in range(0, args.test, 256)])
    confusion = torch.zeros(NUM_EXPR, NUM_EXPR, dtype=torch.long)
    confusion.index_put_((unseen["emotion"], predicted), torch.ones(args.test, dtype=torch.long), accumulate=True)
    print("emotion confusion (rows: true, columns: predicted):")
    print(" " * 13 + " ".join(f"{name[:5]:>5s}" for name in EXPRESSIONS))
    for name, row in zip(EXPRESSIONS, confusion.tolist()):
        print(f"{name:>12s} " + " ".join(f"{count:5d}" for count in row))


if __name__ == "__main__":
    main()
