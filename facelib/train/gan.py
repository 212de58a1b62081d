"""The GAN training base shared by StarGAN, GANimation, DFT-Net, EGGAN and ExprGAN: a ``TrainingTask``.

``GANTask`` does StarGAN's and GANimation's schedule (WGAN-GP, Gulrajani et al. 2017): every
training step updates the critic once, and every ``n_critic``-th step (steps ``n_critic - 1``,
``2 n_critic - 1``, ... counted from 0) also the generator, with one Adam optimiser per player
whose learning rate decays linearly to 0 over the last ``decay_steps`` of the Trainer's
``steps`` (so resume a run with the ``steps`` it started with). A paper's task
subclasses it and provides the networks and the two objectives::

    import torch
    from torch import nn
    from facelib.losses import wgan_generator_loss
    from facelib.train import Trainer
    from facelib.train.gan import GANTask

    class TinyGAN(GANTask):
        def __init__(self, dataset):                       # items {"image": [3, 8, 8]}
            super().__init__(n_critic=5, lr=1e-4, betas=(0.5, 0.999))
            self.dataset = dataset

        def build_players(self, device):
            generator = nn.Sequential(nn.Linear(4, 3 * 8 * 8), nn.Tanh(), nn.Unflatten(1, (3, 8, 8)))
            critic = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 1))
            return generator, critic

        def fake(self, batch):
            noise = torch.randn(len(batch["image"]), 4, device=self.device)
            return self.modules["generator"](noise)

        def critic_losses(self, batch, step):
            with torch.no_grad():                              # no generator gradients here
                fake = self.fake(batch)
            real_scores, fake_scores = self.critic_outputs(batch["image"], fake)
            return self.wgan_gp_terms(real_scores, fake_scores, batch["image"], fake)

        def generator_losses(self, batch, step):
            loss = wgan_generator_loss(self.modules["critic"](self.fake(batch)))
            return {"loss": loss}

    Trainer(TinyGAN(dataset), steps=200, batch_size=16, out_dir="runs/tiny_gan").fit()

What a subclass provides:

- ``build_players(device) -> (generator, critic)``: the two networks (extra frozen networks, such
  as an AU regressor, stay attributes of the task: they are not trained).
- ``critic_losses(batch, step)`` and ``generator_losses(batch, step)``: dicts of scalar tensors;
  ``"loss"`` is what that player minimises (logged as ``critic_loss`` / ``generator_loss``),
  every other entry is logged under its own name (``gradient_penalty``, ``attention_mean``, ...;
  the two dicts must not share a name). Generator entries come every ``n_critic``-th step only;
  the Trainer averages each over the steps that reported it.

What the base provides: ``build`` (players + Adam + schedulers), ``training_step`` (the
schedule), ``stateful`` (the two LR schedulers, so a resumed run is bit-identical),
``critic_outputs(real, fake)`` (one critic forward on both) and ``wgan_gp_terms(...)`` (the
critic's WGAN-GP loss from ``facelib.losses``), ``lr_factor(step)``.

DDP (``torchrun``): call the players through ``self.modules[...]`` once per backward: the critic
step's single forward is ``critic_outputs`` on real and fake concatenated, with the generator
under ``torch.no_grad()``. The gradient penalty's own forward and ``torch.autograd.grad`` go
through the plain critic, ``self.unwrap("critic")``: DDP's documentation says the wrapper does
not work with ``torch.autograd.grad``. That is safe because the penalty is summed with the
scores of the wrapper's forward into one loss: one backward brings both contributions to each
parameter's gradient before the wrapper's all-reduce hook fires. (A penalty-only loss, as in a
lazy R1 step, would need a wrapper forward in it for DDP to all-reduce at all.)
``tests/test_gan_task.py`` checks that both players stay identical on 2 ranks fed different data.
A network with a head that one of the two steps leaves unused needs
``Trainer(..., ddp_kwargs={"find_unused_parameters": True})``.
"""
from __future__ import annotations

import re
import warnings
from typing import Any

import torch
from torch import nn

from facelib.losses import gradient_penalty, wgan_critic_loss
from facelib.train.trainer import TrainingTask

__all__ = ["GANTask"]


class GANTask(TrainingTask):
    """WGAN-GP training of a generator and a critic; see the module docstring.

    Args:
        n_critic: critic updates per generator update (StarGAN and GANimation: 5).
        lr: Adam's learning rate of both players (StarGAN: 1e-4), or ``(generator_lr, critic_lr)``.
        betas: Adam's betas (StarGAN, GANimation: (0.5, 0.999)).
        decay_steps: the learning rates fall linearly to 0 over the last ``decay_steps`` training
            steps; ``None``: over the second half (StarGAN decays over its last 100k of 200k).
        gp_weight: lambda_gp of WGAN-GP (StarGAN, GANimation: 10).
    """

    generator_name, critic_name = "generator", "critic"

    def __init__(self, *, n_critic: int = 5, lr: float | tuple[float, float] = 1e-4,
                 betas: tuple[float, float] = (0.5, 0.999), decay_steps: int | None = None, gp_weight: float = 10.0):
        if not isinstance(n_critic, int) or isinstance(n_critic, bool) or n_critic < 1:
            raise ValueError(f"GANTask: n_critic must be an int >= 1, got {n_critic!r}")
        if decay_steps is not None and (not isinstance(decay_steps, int) or decay_steps < 0):
            raise ValueError(f"GANTask: decay_steps must be an int >= 0 or None (the second half), got {decay_steps!r}")
        self.n_critic, self.betas, self.decay_steps, self.gp_weight = n_critic, tuple(betas), decay_steps, gp_weight
        rates = (lr, lr) if isinstance(lr, (int, float)) else tuple(lr) if isinstance(lr, (tuple, list)) else ()
        if len(rates) != 2 or not all(isinstance(r, (int, float)) and r > 0 for r in rates):
            raise ValueError(f"GANTask: lr must be a positive number or (generator_lr, critic_lr), got {lr!r}")
        self.generator_lr, self.critic_lr = rates
        self.schedulers: dict[str, torch.optim.lr_scheduler.LambdaLR] = {}

    # -- what a paper's task provides ----------------------------------------------------------

    def build_players(self, device: torch.device) -> tuple[nn.Module, nn.Module]:
        raise NotImplementedError(f"{type(self).__name__} must define build_players(device) -> (generator, critic)")

    def critic_losses(self, batch: Any, step: int) -> dict[str, torch.Tensor]:
        raise NotImplementedError(f"{type(self).__name__} must define critic_losses(batch, step) -> {{'loss': ...}}")

    def generator_losses(self, batch: Any, step: int) -> dict[str, torch.Tensor]:
        raise NotImplementedError(f"{type(self).__name__} must define generator_losses(batch, step) -> {{'loss': ...}}")

    # -- the schedule --------------------------------------------------------------------------

    def decay_length(self) -> int:
        """The number of final steps over which the learning rates fall to 0."""
        length = self.total_steps // 2 if self.decay_steps is None else self.decay_steps
        if length > self.total_steps:
            raise ValueError(f"GANTask: decay_steps={length} is more than the run's {self.total_steps} steps")
        return length

    def lr_factor(self, step: int) -> float:
        """The learning rate of ``step`` over the initial one: ``min(1, (steps - step) / decay_steps)``."""
        decay = self.decay_length()
        return 1.0 if decay == 0 else min(1.0, (self.total_steps - step) / decay)

    def updates_generator(self, step: int) -> bool:
        """Whether ``step`` (from 0) also updates the generator: once per ``n_critic`` critic updates."""
        return (step + 1) % self.n_critic == 0

    def build(self, device):
        generator, critic = self.build_players(device)
        optimizers = {
            self.generator_name: torch.optim.Adam(generator.parameters(), lr=self.generator_lr, betas=self.betas),
            self.critic_name: torch.optim.Adam(critic.parameters(), lr=self.critic_lr, betas=self.betas),
        }
        self.decay_length()  # refuse a decay longer than the run before the first step
        # LambdaLR's state is its step count, so the stateful() schedulers resume exactly.
        self.schedulers = {name: torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: self.lr_factor(step))
                           for name, optimizer in optimizers.items()}
        return {self.generator_name: generator, self.critic_name: critic}, optimizers

    def stateful(self) -> dict[str, Any]:
        return {f"{name}_lr": scheduler for name, scheduler in self.schedulers.items()}

    def training_step(self, batch, step):
        logs = self.critic_step(batch, step)
        if self.updates_generator(step):
            generator_logs = self.generator_step(batch, step)
            shared = sorted(set(logs) & set(generator_logs))
            if shared:
                raise ValueError(f"{type(self).__name__}: critic_losses and generator_losses both return {shared}; "
                                 "give each logged value its own name")
            logs.update(generator_logs)
        with warnings.catch_warnings():
            # The rates follow the training step for both players (StarGAN), so the generator's
            # scheduler also steps on steps without a generator update (torch warns about that).
            warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()` before"))
            for scheduler in self.schedulers.values():
                scheduler.step()
        return logs

    def critic_step(self, batch, step) -> dict[str, torch.Tensor]:
        """One critic update on ``critic_losses(...)["loss"]``; returns the detached terms to log."""
        return self._update(self.critic_name, self.critic_losses(batch, step))

    def generator_step(self, batch, step) -> dict[str, torch.Tensor]:
        """One generator update on ``generator_losses(...)["loss"]``; returns the detached terms to log.

        The critic's parameters also receive gradients here; its next step zeroes them first.
        """
        return self._update(self.generator_name, self.generator_losses(batch, step))

    def _update(self, player: str, terms: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if not isinstance(terms, dict) or "loss" not in terms:
            raise TypeError(f"{type(self).__name__}: the {player}'s losses must be a dict with a 'loss' entry, "
                            f"got {sorted(terms) if isinstance(terms, dict) else type(terms).__name__}")
        optimizer = self.optimizers[player]
        optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        optimizer.step()
        return {(f"{player}_loss" if name == "loss" else name): value.detach() if isinstance(value, torch.Tensor)
                else value for name, value in terms.items()}

    # -- WGAN-GP helpers -----------------------------------------------------------------------

    def critic_outputs(self, real: torch.Tensor, fake: torch.Tensor) -> tuple[Any, Any]:
        """The critic's outputs on ``real`` and on ``fake`` (detached) from one forward of both
        (one DDP forward per backward); a tuple output (scores, AU head) is split item by item."""
        outputs = self.modules[self.critic_name](torch.cat([real, fake.detach()]))
        if isinstance(outputs, torch.Tensor):
            return outputs[:len(real)], outputs[len(real):]
        return tuple(o[:len(real)] for o in outputs), tuple(o[len(real):] for o in outputs)

    def wgan_gp_terms(self, real_scores: torch.Tensor, fake_scores: torch.Tensor, real: torch.Tensor,
                      fake: torch.Tensor, scores_of=None) -> dict[str, torch.Tensor]:
        """WGAN-GP's critic loss ``E[D(fake)] - E[D(real)] + gp_weight * GP`` and its parts.

        ``scores_of`` picks the scores from a multi-head critic's output (e.g. ``lambda out: out[0]``).
        Returns ``loss``, ``critic_real`` = E[D(real)], ``critic_fake`` = E[D(fake)] and
        ``gradient_penalty`` (at random points between real and fake, through the plain critic:
        see the module docstring on DDP).
        """
        plain_critic = self.unwrap(self.critic_name)
        scores = plain_critic if scores_of is None else (lambda x: scores_of(plain_critic(x)))
        penalty = gradient_penalty(scores, real, fake)
        return {"loss": wgan_critic_loss(real_scores, fake_scores, penalty, gp_weight=self.gp_weight),
                "critic_real": real_scores.mean(), "critic_fake": fake_scores.mean(), "gradient_penalty": penalty}
