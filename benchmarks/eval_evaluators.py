"""Held-out figures of the shipped evaluators, on fresh renders of SynthFaces test identities.

    python benchmarks/eval_evaluators.py [--n 2000] [--seed 7]

Prints expression accuracy (overall at intensity >= 2, and by intensity band), the AU
error and correlation per AU (EGGAN Table 1 layout), verification accuracy on balanced
same/different pairs, parameter counts, weight-file sizes and latency per image.
"""
from __future__ import annotations

import argparse

import torch

import facelib
from facelib.pretrained import pretrained_info, shipped_weights_dir
from facelib.metrics import au_mse_pcc, best_verification_threshold, count_parameters, latency
from facelib.evaluation.evaluators import evaluate_identity, held_out_sampler, pair_embeddings

NAMES = ("expression_classifier", "au_regressor", "identity_embedder")


@torch.no_grad()
def expression_by_intensity(model, n: int, seed: int) -> None:
    sampler = held_out_sampler("test", seed)
    batches = [sampler.expression_batch(250, min_intensity=0.0) for _ in range(max(1, n // 250))]
    emotion = torch.cat([b["emotion"] for b in batches])
    intensity = torch.cat([b["intensity"] for b in batches])
    predicted = torch.cat([model(b["image"]).argmax(1) for b in batches])
    correct = predicted == emotion
    print(f"expression accuracy, intensity >= 2: {correct[intensity >= 2].float().mean():.4f} "
          f"({int((intensity >= 2).sum())} faces, all {len(facelib.EXPRESSIONS)} expressions)")
    for low, high in ((0, 1), (1, 2), (2, 3), (3, 4), (4, 5)):
        band = (intensity >= low) & (intensity < high)
        print(f"  intensity [{low}, {high}): {correct[band].float().mean():.4f}  (n={int(band.sum())})")
    for index, name in enumerate(facelib.EXPRESSIONS):
        chosen = (emotion == index) & (intensity >= 2)
        print(f"  {name:>12}: {correct[chosen].float().mean():.4f}  (n={int(chosen.sum())})")


@torch.no_grad()
def au_table(model, n: int, seed: int) -> None:
    sampler = held_out_sampler("test", seed)
    batches = [sampler.au_batch(250) for _ in range(max(1, n // 250))]
    true = torch.cat([b["aus"] for b in batches])
    pred = torch.cat([model(b["image"]) for b in batches])
    table = au_mse_pcc(pred, true)
    mae = (pred - true).abs().mean(0)
    table["MAE"] = mae.tolist() + [float(mae.mean())]
    print(f"AU regressor: mean absolute error {float(mae.mean()):.4f} (0-5 scale), "
          f"mean PCC {table.loc['Avg', 'PCC']:.4f}")
    print(table.round(4).to_string())


@torch.no_grad()
def au_visibility(identities: int = 16) -> None:
    """How much each AU alone changes a frontal 64x64 render: why some AUs are hard to read."""
    from facelib.data.synth import render
    from facelib.evaluation.evaluators import split_identities

    ids = split_identities("test")[:identities]
    n = len(ids)
    neutral = render(ids, torch.zeros(n, 17), torch.zeros(n), 64)["image"]
    print("AU visibility at 64x64 (frontal, studio light): mean |change| in grey levels (0-255) at "
          "intensity 1 / 2 / 5, and pixels changed by more than 4 grey levels at intensity 5")
    for k, code in enumerate(facelib.AU_CODES):
        changes = []
        for intensity in (1.0, 2.0, 5.0):
            aus = torch.zeros(n, 17)
            aus[:, k] = intensity
            change = (render(ids, aus, torch.zeros(n), 64)["image"] - neutral).abs().mean(1) * 127.5  # [N, H, W]
            changes.append(float(change.mean()))
        print(f"  AU{code:<3} {changes[0]:5.2f} {changes[1]:5.2f} {changes[2]:5.2f}   "
              f"{float((change > 4).float().sum((1, 2)).mean()):5.0f} px")


def identity_figures(model, n: int, seed: int) -> None:
    held_out = evaluate_identity(model, held_out_sampler("test", seed), n)["verification_accuracy"]
    oracle = best_verification_threshold(*pair_embeddings(model, held_out_sampler("test", seed), n))
    print(f"verification accuracy at the shipped threshold {model.config.verification_threshold:.4f}: "
          f"{held_out:.4f} ({n} balanced pairs; best threshold on these very pairs: {oracle:.4f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="faces (or pairs) per figure")
    parser.add_argument("--seed", type=int, default=7, help="seed of the held-out sample")
    args = parser.parse_args()
    facelib.set_seed(args.seed)
    models = {name: facelib.load_pretrained(name) for name in NAMES}
    expression_by_intensity(models["expression_classifier"], args.n, args.seed)
    au_table(models["au_regressor"], args.n, args.seed + 1)
    au_visibility()
    identity_figures(models["identity_embedder"], args.n, args.seed + 2)
    image = torch.zeros(1, 3, 64, 64)
    for name, model in models.items():
        info = pretrained_info(name)
        size = (shipped_weights_dir() / info["file"]).stat().st_size
        ms = latency(model, image)
        print(f"{name}: {count_parameters(model):,} parameters, {size / 1e6:.2f} MB, {ms:.2f} ms per image (batch 1), "
              f"trained {info['metrics'].get('train_seconds', float('nan')):.0f} s "
              f"({info['metrics'].get('train_steps', 0):.0f} steps) in the shipped run")


if __name__ == "__main__":
    main()
