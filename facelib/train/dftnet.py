"""DFT-Net training (Wang et al. 2019, Sec. 2.3 and 3.1): GANimation's schedule with DFT-Net's losses.

DFT-Net's Eq. 6-8 are GANimation's adversarial, AU and cycle terms, so :class:`DFTNetTask` is a
:class:`facelib.train.ganimation.GANimationTask` whose generator pass is DFT-Net's and whose
regularisers are Eq. 9 (TV on the flow) and Eq. 10 (-||A||_1, pushing the mask towards the
aligned source) instead of GANimation's Eq. 3. Weights of Sec. 3.1: lambda_gp 10, adv 1, att 1,
tv 1e-4, cond 4000, cyc 10; 5 critic steps per generator step; Adam (0.5, 0.999) with a linear
decay at the end. lambda_cond = 4000 is on GANimation's code's scale (the MSE over AUs divided
again by the batch size: :func:`facelib.losses.au_regression_loss`, 17 * B times smaller than Eq. 7 as
written), the code the paper's settings come from.

Recipes ``dftnet``, ``dftnet_no_flow`` and ``dftnet_no_texture`` (the ablations) are the shipped
GANimation's recipe (:func:`facelib.train.ganimation.train_recipe`: the paper's schedule, WGAN-GP,
5 critic steps per generator step, batch 16, the same data and learning curve) with DFT-Net's
generator, so the rows of notebook 04's table differ only in the generator. Departures, one line each:

- lr 2e-4: the paper's 1e-4 doubled for the CPU budget, as GANimation's recipe does (``DFTNetTask``'s own
  default stays the paper's 1e-4);
- 6,000 steps (1,200 generator updates) for the shipped model, the shipped GANimation's length; the
  paper trains 30 epochs of 200,000 faces on a GPU;
- not GANimation's CPU recipe (``ganimation_cpu``): it measured worse than the paper's schedule for
  GANimation (docs/gan_training.md, G2-G6), so DFT-Net is compared on the schedule GANimation ships from.

Measured: docs/training_runs.md and the manifest (``python -m facelib train dftnet --seed 0 --steps 6000
--threads 1 --ship``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from facelib.losses import dftnet_attention, dftnet_flow_tv
from facelib.models.dftnet import DFTNetConfig, DFTNetCritic, DFTNetEditor, DFTNetGenerator
from facelib.train.ganimation import LR, GANimationTask, train_au_editor

__all__ = ["DFTNetWeights", "DFTNetTask", "train_recipe", "train_no_flow_recipe", "train_no_texture_recipe"]


@dataclass(frozen=True)
class DFTNetWeights:
    """DFT-Net Sec. 3.1's lambdas (lambda_gp = 10 is the GANTask's; lambda_adv = 1 multiplies nothing)."""

    au: float = 4000.0  # lambda_cond
    cycle: float = 10.0  # lambda_cyc
    attention: float = 1.0  # lambda_att, on Eq. 10
    flow_tv: float = 1e-4  # lambda_tv, on Eq. 9
    target_noise: float = 0.1  # GANimation's code: target AUs = another sample's + U(-0.1, 0.1)
    keep: float = 0.0  # the CPU recipes' L1 outside the landmarks' expression regions (0: the paper)


class DFTNetTask(GANimationTask):
    """DFT-Net's training; logs GANimation's terms plus ``flow_tv``, ``flow_magnitude`` (mean |Phi| in px).

    ``attention`` is Eq. 10's weighted term on both passes (negative: the reward for using X_a);
    ``attention_mean`` the mean A of the edit, whose collapse to 1 (a pure warp, the texture
    unused) or 0 (the flow unused) notebook 04 watches.
    """

    def __init__(self, config: DFTNetConfig | None = None, dataset=None, *, weights: DFTNetWeights = DFTNetWeights(),
                 n_critic: int = 5, lr=1e-4, betas=(0.5, 0.999), decay_steps: int | None = None, **objective):
        super().__init__(config if config is not None else DFTNetConfig(), dataset, weights=weights,
                         n_critic=n_critic, lr=lr, betas=betas, decay_steps=decay_steps, **objective)

    def build_players(self, device):
        return DFTNetGenerator(self.config).to(device), DFTNetCritic(self.config).to(device)

    def translate(self, images: torch.Tensor, aus01: torch.Tensor, plain: bool = False) -> dict[str, torch.Tensor]:
        generator = self.unwrap("generator") if plain else self.modules["generator"]
        parts = generator(images, aus01)
        return {"output": parts.output, "attention": parts.attention, "flow": parts.flow}

    def regularisers(self, forward, back):
        both = (forward, back)  # as GANimation's Eq. 6, on the edit and on the way back
        # DFT-Net Eq. 9: lambda_tv * sum (Phi_{i+1,j} - Phi_{i,j})^2 + (Phi_{i,j+1} - Phi_{i,j})^2
        flow_tv = self.weights.flow_tv * sum(dftnet_flow_tv(p["flow"]) for p in both)
        # DFT-Net Eq. 10: lambda_att * (-||A||_1)
        attention = self.weights.attention * sum(dftnet_attention(p["attention"]) for p in both)
        return {"flow_tv": flow_tv, "attention": attention}

    def diagnostics(self, forward):
        return {**super().diagnostics(forward), "flow_magnitude": forward["flow"].detach().norm(dim=1).mean()}


def _train(name: str, config: DFTNetConfig, **recipe) -> dict:
    return train_au_editor(name, DFTNetTask(config, lr=LR), DFTNetEditor, **recipe)


def train_recipe(*, steps: int | None, seed: int, out_dir, device: str, smoke: bool) -> dict:
    """Recipe ``dftnet``: the full model (flow + texture + attention), measured as GANimation's recipe."""
    return _train("dftnet", DFTNetConfig(), steps=steps, seed=seed, out_dir=out_dir, device=device, smoke=smoke)


def train_no_flow_recipe(*, steps: int | None, seed: int, out_dir, device: str, smoke: bool) -> dict:
    """Recipe ``dftnet_no_flow``: the ablation without Phi (X_a = X_s)."""
    return _train("dftnet_no_flow", DFTNetConfig(flow=False), steps=steps, seed=seed, out_dir=out_dir, device=device,
                  smoke=smoke)


def train_no_texture_recipe(*, steps: int | None, seed: int, out_dir, device: str, smoke: bool) -> dict:
    """Recipe ``dftnet_no_texture``: the ablation without B (A = 1, a pure warp)."""
    return _train("dftnet_no_texture", DFTNetConfig(texture=False), steps=steps, seed=seed, out_dir=out_dir,
                  device=device, smoke=smoke)
