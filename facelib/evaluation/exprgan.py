"""ExprGAN's measurements (Ding et al. 2018) on SynthFaces, where the paper could only show pictures.

- :func:`expression_intensity`: the intensity (0-5) of an expression in AU intensities, the
  projection on its prototype; :func:`level_intensities`: that intensity, through facelib's AU
  regressor, of every class at every code level of Fig. 3; :func:`calibrate_intensity_order` orders
  each block's elements from the weakest to the strongest on training faces;
  :func:`intensity_table`: levels against measured intensity, with Spearman's rho per class;
- :func:`augmentation_table`: Table 1, an expression classifier (G_enc's architecture plus one FC
  layer, as the paper) trained on real images plus synthesised ones, tested on held-out identities;
- :func:`retrieval_precision`: Fig. 7, nearest neighbours by Q's code c, by the label y and by the
  pixels x, with precision@1 for the expression and for its intensity.

Everything takes an :class:`facelib.models.exprgan.ExprGAN` (and its critic for Q) and held-out
``SynthFaces("oulu", "test")`` faces, e.g.::

    from facelib.evaluation.exprgan import intensity_table, augmentation_table, retrieval_precision

    table, rho = intensity_table(model, test_images)
"""
from __future__ import annotations

import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from facelib.conventions import AU_MAX
from facelib.models.exprgan import CLASSES, ExprGAN, ExprGANCritic, expression_code

__all__ = ["expression_intensity", "level_intensities", "calibrate_intensity_order", "spearman_per_class",
           "intensity_table", "recognition_network", "synthesise", "augmentation_table", "retrieval_precision"]


def expression_intensity(aus: torch.Tensor, expression: str) -> torch.Tensor:
    """The intensity (0-5) of ``expression`` in AU intensities ``[B, 17]``: their projection on its prototype.

    A SynthFaces face showing the prototype at intensity s measures s (``synth.emotion_aus``);
    other AUs count only as far as the prototype uses them.
    """
    from facelib.data import synth

    prototype = synth.emotion_aus(expression, AU_MAX)[0].to(aus)  # [17]: the prototype at its peak
    return AU_MAX * (aus @ prototype) / prototype.square().sum()  # [B]


@torch.no_grad()
def level_intensities(model: ExprGAN, images: torch.Tensor, regressor: nn.Module, levels=None,
                      ordered: bool = True) -> torch.Tensor:
    """Measured intensity ``[K, L, N]`` of each class at each level (default 0..d) decoded from ``images``' g(x).

    ``ordered=False`` takes element i as level i (what :func:`calibrate_intensity_order` sorts).
    """
    d = model.config.code_dim
    levels = list(range(d + 1)) if levels is None else list(levels)
    identity = model.encode(images)
    saved = model.intensity_order.clone()
    if not ordered:
        model.intensity_order.copy_(torch.arange(d).repeat(model.config.num_classes, 1))
    try:
        out = torch.zeros(len(CLASSES), len(levels), len(images))
        for k, name in enumerate(CLASSES):
            labels = torch.full((len(images),), k)
            for j, level in enumerate(levels):
                code = model.level_code(labels, torch.full((len(images),), float(level)))
                out[k, j] = expression_intensity(regressor(model.decode(identity, code, images)), name)
    finally:
        model.intensity_order.copy_(saved)
    return out


def calibrate_intensity_order(model: ExprGAN, images: torch.Tensor, regressor: nn.Module) -> torch.Tensor:
    """Order each block's d elements by the intensity they give on ``images`` (training faces); stored in the model.

    Q's information objective (Eq. 4-5) makes each element change the face but names no order;
    the paper's Fig. 3 shows its five levels ordered without saying how. Returns ``[K, d]``.
    """
    measured = level_intensities(model, images, regressor, levels=range(1, model.config.code_dim + 1), ordered=False)
    order = measured.mean(2).argsort(1)  # [K, d]: the element of level 1 (weakest) ... level d (strongest)
    model.intensity_order.copy_(order)
    return order


def spearman_per_class(measured: torch.Tensor, levels) -> dict[str, float]:
    """Spearman's rho between level and measured intensity ``[K, L, N]``, pooled over the N faces, per class."""
    from scipy.stats import spearmanr

    levels = torch.as_tensor(list(levels), dtype=torch.float32)
    rho = {}
    for k, name in enumerate(CLASSES):
        x = levels[:, None].expand_as(measured[k]).reshape(-1)
        rho[name] = float(spearmanr(x.numpy(), measured[k].reshape(-1).numpy()).statistic)
    return rho


def intensity_table(model: ExprGAN, images: torch.Tensor, regressor: nn.Module | None = None
                    ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Fig. 3 measured: (per class and level 0..d the mean and std of the measured intensity; per
    class Spearman's rho over levels 1..d and over 0..d, and the rise from level 1 to d)."""
    from facelib.pretrained import load_pretrained

    regressor = regressor if regressor is not None else load_pretrained("au_regressor")
    d = model.config.code_dim
    measured = level_intensities(model, images, regressor)  # [K, d + 1, N]
    levels = pd.DataFrame([{"expression": name, "level": level, "measured_mean": float(measured[k, level].mean()),
                            "measured_std": float(measured[k, level].std())}
                           for k, name in enumerate(CLASSES) for level in range(d + 1)])
    rho_levels = spearman_per_class(measured[:, 1:], range(1, d + 1))
    rho_with_neutral = spearman_per_class(measured, range(d + 1))
    summary = pd.DataFrame({"rho_levels_1_to_d": rho_levels, "rho_with_neutral": rho_with_neutral,
                            "rise_level_1_to_d": {name: float(measured[k, d].mean() - measured[k, 1].mean())
                                                  for k, name in enumerate(CLASSES)}})
    summary.attrs["n"] = len(images)
    return levels, summary


# ----------------------------------------------------------------------------------------
# Table 1: data augmentation for expression recognition
# ----------------------------------------------------------------------------------------
def recognition_network(model: ExprGAN) -> nn.Module:
    """The paper's classifier: G_enc's architecture (fresh weights) plus one FC layer to the six classes."""
    fresh = ExprGAN(model.config)
    return nn.Sequential(fresh.encoder, nn.ReLU(), nn.Linear(model.config.identity_dim, model.config.num_classes))


@torch.no_grad()
def synthesise(model: ExprGAN, per_class: int, seed: int = 0, batch_size: int = 256,
               canvases: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Fig. 5: ``per_class`` faces per class, codes from Eq. 3: (images, labels).

    An image decoder (the paper's) paints new identities from g ~ U(-1, 1). A residual decoder
    (``output="residual"``) has no face without a source: it edits ``canvases`` (faces drawn at
    random, e.g. training faces) to each class at a random level in [1, d] (its training codes).
    """
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(len(CLASSES)).repeat_interleave(per_class)
    residual = model.config.output == "residual"
    if residual and (canvases is None or not len(canvases)):
        raise ValueError("a residual ExprGAN (output='residual') synthesises by editing faces: pass canvases [N, 3, S, S]")
    images = []
    for start in range(0, len(labels), batch_size):
        part = labels[start:start + batch_size]
        if residual:
            source = canvases[torch.randint(len(canvases), (len(part),), generator=generator)]
            levels = 1 + (model.config.code_dim - 1) * torch.rand(len(part), generator=generator)
            images.append(model.decode(model.encode(source), model.level_code(part, levels), source))
            continue
        identity = 2 * torch.rand(len(part), model.config.identity_dim, generator=generator) - 1
        if model.config.controller:
            code = expression_code(part, 2 * torch.rand(len(part), model.config.code_dim, generator=generator) - 1)
        else:
            code = model.label_code(part)
        images.append(model.decode(identity, code))
    return (torch.cat(images) if images else torch.zeros(0, 3, model.config.image_size, model.config.image_size)), labels


def augmentation_table(model: ExprGAN, train_images: torch.Tensor, train_labels: torch.Tensor,
                       test_images: torch.Tensor, test_labels: torch.Tensor, per_class=(0, 500, 1000, 5000, 10000), *,
                       steps: int = 600, batch_size: int = 64, seed: int = 0, progress: bool = True) -> pd.DataFrame:
    """Table 1: test accuracy of :func:`recognition_network` trained on the real images plus ``n`` synthesised per class.

    Labels are class indices into :data:`CLASSES`. A residual decoder synthesises by editing the real
    training images (:func:`synthesise`). Each row trains a fresh classifier for ``steps``
    Adam steps on mini-batches drawn from real and synthesised images together (the same seed).
    """
    from facelib.metrics import classification_accuracy
    from facelib.train.classifier import train_classifier

    rows = []
    # one draw of the largest count; each row takes the first `count` faces of every class from it
    pool, pool_labels = synthesise(model, max(int(count) for count in per_class), seed=seed, canvases=train_images)
    rank = torch.cat([torch.arange(int((pool_labels == k).sum())) for k in range(len(CLASSES))]) if len(pool) else pool_labels
    for count in tqdm(per_class, desc="Table 1 rows", disable=not progress):
        chosen = rank < int(count)
        images = torch.cat([train_images, pool[chosen]])
        labels = torch.cat([train_labels, pool_labels[chosen]])
        torch.manual_seed(seed)
        classifier = train_classifier(recognition_network(model), images, labels, steps=steps, batch_size=batch_size,
                                      seed=seed, desc=f"classifier (+{count} per class)", progress=progress)
        rows.append({"synthesised_per_class": int(count), "synthesised_total": int(count) * len(CLASSES),
                     "test_accuracy": classification_accuracy(classifier, test_images, test_labels)})
    table = pd.DataFrame(rows)
    table.attrs.update(n_train_real=len(train_images), n_test=len(test_images), steps=steps)
    return table


# ----------------------------------------------------------------------------------------
# Fig. 7: retrieval by c, y and x
# ----------------------------------------------------------------------------------------
@torch.no_grad()
def retrieval_precision(critic: ExprGANCritic, images: torch.Tensor, labels: torch.Tensor, identities: torch.Tensor,
                        intensities: torch.Tensor, intensity_tolerance: float = 0.25, seed: int = 0) -> pd.DataFrame:
    """Precision@1 of nearest-neighbour retrieval (Euclidean) among *other* identities, by three representations.

    c: Q's code of the image given its label (Fig. 7); y: the one-hot label (ties broken at random);
    x: the pixels. A hit is the same class ("expression"), and the same class with the true
    intensity within ``intensity_tolerance`` on the 0-5 scale ("expression and intensity").
    Returns one row per representation.
    """
    _, codes = critic.eval().image(images, labels)
    generator = torch.Generator().manual_seed(seed)
    representations = {
        "c (Q's expression code)": codes,
        "y (the label)": nn.functional.one_hot(labels.long(), len(CLASSES)).float()
        + 1e-3 * torch.rand(len(labels), len(CLASSES), generator=generator),  # random tie-break
        "x (pixels)": images.flatten(1),
    }
    rows = []
    for name, features in representations.items():
        distance = torch.cdist(features, features)
        distance[identities[:, None] == identities[None, :]] = float("inf")  # never the same person
        nearest = distance.argmin(1)
        same_class = labels[nearest] == labels
        close = (intensities[nearest] - intensities).abs() <= intensity_tolerance
        rows.append({"representation": name, "precision@1 expression": float(same_class.float().mean()),
                     "precision@1 expression and intensity": float((same_class & close).float().mean())})
    table = pd.DataFrame(rows)
    table.attrs.update(n=len(images), intensity_tolerance=intensity_tolerance)
    return table
