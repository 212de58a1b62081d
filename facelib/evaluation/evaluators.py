"""Held-out figures of facelib's evaluators: accuracy, AU error and verification on test identities.

The evaluators (:mod:`facelib.models.evaluators`) are measured on fresh SynthFaces renders of
identities they never saw in training (:func:`held_out_sampler`); their training
(:mod:`facelib.train.evaluators`) picks the identity threshold on the "val" split with the same
functions. ``benchmarks/eval_evaluators.py`` prints the figures in detail.
"""
from __future__ import annotations

import torch
from torch import Tensor

from facelib.models.evaluators import AURegressor, ExpressionClassifier, FaceSampler, IdentityEmbedder

__all__ = ["evaluate_expression", "evaluate_au", "pair_embeddings", "evaluate_identity", "split_identities",
           "held_out_sampler", "evaluate_evaluators"]


def _draw_in_batches(draw, n: int, batch_size: int) -> list:
    """``[draw(k) for each batch]``: ``n`` items drawn as batches of at most ``batch_size``."""
    return [draw(min(batch_size, n - start)) for start in range(0, n, batch_size)]


@torch.no_grad()
def evaluate_expression(model: ExpressionClassifier, sampler: FaceSampler, n: int = 1000,
                        min_intensity: float = 2.0, batch_size: int = 250) -> dict[str, float]:
    """Accuracy over all expressions at intensity >= ``min_intensity`` (neutral included)."""
    device = next(model.parameters()).device
    correct = 0
    for batch in _draw_in_batches(lambda k: sampler.expression_batch(k, min_intensity), n, batch_size):
        correct += int((model(batch["image"].to(device)).argmax(1).cpu() == batch["emotion"]).sum())
    return {"accuracy": correct / n}


@torch.no_grad()
def evaluate_au(model: AURegressor, sampler: FaceSampler, n: int = 1000, batch_size: int = 250) -> dict[str, float]:
    """Mean absolute error (0-5 scale) and mean Pearson correlation over the 17 AUs."""
    from facelib.metrics import au_mse_pcc

    device = next(model.parameters()).device
    preds, targets = [], []
    for batch in _draw_in_batches(sampler.au_batch, n, batch_size):
        preds.append(model(batch["image"].to(device)).cpu())
        targets.append(batch["aus"])
    pred, target = torch.cat(preds), torch.cat(targets)
    table = au_mse_pcc(pred, target)  # rows AU1 ... AU45, Avg
    per_au_mae = (pred - target).abs().mean(0)  # [17]
    return {
        "mae": float(per_au_mae.mean()),
        "worst_au_mae": float(per_au_mae.max()),
        "mean_pcc": float(table.loc["Avg", "PCC"]),
        "worst_au_pcc": float(table["PCC"].iloc[:-1].min()),
    }


@torch.no_grad()
def pair_embeddings(model: IdentityEmbedder, sampler: FaceSampler, n: int, batch_size: int = 250):
    """Embeddings of ``n`` balanced verification pairs: ``(a [n, D], b [n, D], same [n])``."""
    device = next(model.parameters()).device
    a, b, same = [], [], []
    for batch in _draw_in_batches(sampler.verification_pairs, n, batch_size):
        a.append(model(batch["a"].to(device)).cpu())
        b.append(model(batch["b"].to(device)).cpu())
        same.append(batch["same"])
    return torch.cat(a), torch.cat(b), torch.cat(same)


def evaluate_identity(model: IdentityEmbedder, sampler: FaceSampler, n: int = 1000,
                      batch_size: int = 250) -> dict[str, float]:
    """Verification accuracy at ``model.config.verification_threshold`` on balanced pairs."""
    from facelib.metrics import verification_accuracy

    a, b, same = pair_embeddings(model, sampler, n, batch_size)
    return {"verification_accuracy": verification_accuracy(a, b, same, threshold=model.config.verification_threshold)}


def split_identities(split: str) -> Tensor:
    """Every identity of ``split`` ("train", "val" or "test") over all SynthFaces presets."""
    from facelib.data.presets import PRESETS

    return torch.cat([torch.tensor(preset.identity_range(split)) for preset in PRESETS.values()])


def held_out_sampler(split: str = "test", seed: int = 0, size: int = 64) -> FaceSampler:
    """A deterministic sampler of fresh renders of ``split`` identities."""
    return FaceSampler(split_identities(split), size, torch.Generator().manual_seed(seed))


def evaluate_evaluators(expression: ExpressionClassifier | None = None, au: AURegressor | None = None,
                        identity: IdentityEmbedder | None = None, *, split: str = "test", n: int = 1000,
                        seed: int = 0) -> dict[str, dict[str, float]]:
    """Held-out figures of the given evaluators on ``n`` fresh renders (pairs) of ``split`` identities."""
    results = {}
    if expression is not None:
        results["expression_classifier"] = evaluate_expression(expression.eval(), held_out_sampler(split, seed), n)
    if au is not None:
        results["au_regressor"] = evaluate_au(au.eval(), held_out_sampler(split, seed + 1), n)
    if identity is not None:
        results["identity_embedder"] = evaluate_identity(identity.eval(), held_out_sampler(split, seed + 2), n)
    return results


