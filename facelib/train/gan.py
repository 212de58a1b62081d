"""The GAN training base shared by StarGAN, GANimation, DFT-Net, EGGAN and ExprGAN: a ``TrainingTask``.

``GANTask`` runs two players with one Adam optimiser each. Every training step updates the
critic once, and every ``n_critic``-th step (steps ``n_critic - 1``, ``2 n_critic - 1``, ...
counted from 0) also the generator; the learning rates decay linearly to 0 over the last
``decay_steps`` of the Trainer's ``steps`` (so resume a run with the ``steps`` it started with).
The adversarial objective is pluggable:

- ``"wgan-gp"`` (the papers'): the critic minimises ``E[D(fake)] - E[D(real)] + gp_weight * GP``,
  the generator ``-E[D(fake)]``;
- ``"non-saturating"``: the critic minimises ``-log s(D(real)) - log(1 - s(D(fake)))`` (s the
  sigmoid), the generator ``-log s(D(fake))``, with lazy R1 (``r1_weight``, every ``r1_every``
  critic steps; StarGAN v2, StyleGAN2);
- ``"hinge"``: the critic minimises ``E[relu(1 - D(real))] + E[relu(1 + D(fake))]``, the generator
  ``-E[D(fake)]`` (SAGAN, FastGAN), with the same optional lazy R1.

The papers (StarGAN, GANimation, DFT-Net, EGGAN) use WGAN-GP with 5 critic steps per generator
step: that stays the default. ``ema_decay`` keeps an exponential moving average of the
generator's weights (module ``"generator_ema"``, StarGAN v2 and StyleGAN2 evaluate and ship it).

A paper's task subclasses it and provides the networks and the two objectives::

    import torch
    from torch import nn
    from facelib.train import Trainer
    from facelib.train.gan import GANTask

    class TinyGAN(GANTask):
        def __init__(self, dataset):                       # items {"image": [3, 8, 8]}
            super().__init__(objective="non-saturating", n_critic=1, r1_weight=1.0, ema_decay=0.99)
            self.dataset = dataset

        def build_players(self, device):
            generator = nn.Sequential(nn.Linear(4, 3 * 8 * 8), nn.Tanh(), nn.Unflatten(1, (3, 8, 8)))
            critic = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 1))
            return generator, critic

        def prepare(self, batch, step):                    # once per step: both players see this noise
            return {**batch, "noise": torch.randn(len(batch["image"]), 4, device=self.device)}

        def critic_losses(self, batch, step):
            with torch.no_grad():                              # no generator gradients here
                fake = self.modules["generator"](batch["noise"])
            real_scores, fake_scores = self.critic_outputs(batch["image"], fake)
            return self.adversarial_terms(real_scores, fake_scores, batch["image"], fake, step)

        def generator_losses(self, batch, step):
            fake = self.modules["generator"](batch["noise"])
            return {"loss": self.generator_adversarial_loss(self.modules["critic"](fake))}

    Trainer(TinyGAN(dataset), steps=200, batch_size=16, out_dir="runs/tiny_gan").fit()

What a subclass provides:

- ``build_players(device) -> (generator, critic)``: the two networks (extra frozen networks, such
  as an AU regressor, stay attributes of the task: they are not trained).
- ``prepare(batch, step)`` (optional): called once per training step; what it returns is the
  ``batch`` that both players' losses receive, so they see the same targets, flips and noise.
- ``critic_losses(batch, step)`` and ``generator_losses(batch, step)``: dicts of scalar tensors;
  ``"loss"`` is what that player minimises (logged as ``critic_loss`` / ``generator_loss``),
  every other entry is logged under its own name (``gradient_penalty``, ``attention_mean``, ...;
  the two dicts must not share a name). Generator entries come every ``n_critic``-th step only;
  the Trainer averages each over the steps that reported it. A critic ``"loss"`` that needs no
  gradient (a stage in which the critic has nothing to learn) skips the critic's update.

What the base provides: ``build`` (players + Adam + schedulers + EMA copy), ``training_step``
(the schedule), ``stateful`` (the two LR schedulers, so a resumed run is bit-identical),
``critic_outputs(real, fake)`` (one critic forward on both), ``adversarial_terms(...)`` (the
critic's loss under the objective, with its regulariser) and ``generator_adversarial_loss``,
``update(player, terms)`` (one optimiser step), ``shipped_generator()`` (the EMA weights when
kept), ``lr_factor(step)``.

DDP (``torchrun``): call the players through ``self.modules[...]`` once per backward: the critic
step's single forward is ``critic_outputs`` on real and fake concatenated, with the generator
under ``torch.no_grad()``. The gradient penalty's and R1's own forward and ``torch.autograd.grad``
go through the plain critic, ``self.unwrap("critic")``: DDP's documentation says the wrapper does
not work with ``torch.autograd.grad``. That is safe because the penalty is summed with the
scores of the wrapper's forward into one loss: one backward brings both contributions to each
parameter's gradient before the wrapper's all-reduce hook fires.
``tests/test_gan_task.py`` checks that both players stay identical on 2 ranks fed different data.
A network with a head that one of the two steps leaves unused needs
``Trainer(..., ddp_kwargs={"find_unused_parameters": True})``.
"""
from __future__ import annotations

import copy
import re
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from facelib.losses import (
    gan_discriminator_loss, gan_generator_loss, gradient_penalty, hinge_critic_loss, r1_penalty, wgan_critic_loss,
    wgan_generator_loss,
)
from facelib.train.trainer import TrainingTask

__all__ = ["GANTask", "OBJECTIVES", "AUGMENTATIONS", "diff_augment"]

#: The adversarial objectives ``GANTask(objective=...)`` accepts (the papers' first).
OBJECTIVES = ("wgan-gp", "non-saturating", "hinge")


class GANTask(TrainingTask):
    """A generator against a critic under a pluggable objective; see the module docstring.

    Args:
        objective: one of :data:`OBJECTIVES` (StarGAN, GANimation, DFT-Net, EGGAN: ``"wgan-gp"``).
        n_critic: critic updates per generator update (StarGAN and GANimation: 5).
        lr: Adam's learning rate of both players (StarGAN: 1e-4), or ``(generator_lr, critic_lr)``.
        betas: Adam's betas (StarGAN, GANimation: (0.5, 0.999); StarGAN v2: (0.0, 0.99)).
        decay_steps: the learning rates fall linearly to 0 over the last ``decay_steps`` training
            steps; ``None``: over the second half (StarGAN decays over its last 100k of 200k).
        gp_weight: lambda_gp of WGAN-GP (StarGAN, GANimation: 10).
        r1_weight: gamma of R1 for the other objectives: the critic adds ``gamma / 2 * R1`` (0: none).
        r1_every: lazy R1: the penalty is taken every ``r1_every`` critic steps, scaled by it
            (StyleGAN2: 16).
        ema_decay: keep ``"generator_ema"``, an exponential moving average of the generator's weights
            with this decay per generator update (ramped up over the first updates), or ``None``.
        warmup_steps: a warm start: the first ``warmup_steps`` steps update only the critic, on
            ``warmup_losses`` (e.g. its domain head as a classifier of real images); the schedule of
            ``n_critic`` counts from the end of the warm-up.
    """

    generator_name, critic_name, ema_name = "generator", "critic", "generator_ema"
    #: a :class:`facelib.evaluation.LearningCurve` that :meth:`validate` measures, or None
    curve = None

    def __init__(self, *, objective: str = "wgan-gp", n_critic: int = 5, lr: float | tuple[float, float] = 1e-4,
                 betas: tuple[float, float] = (0.5, 0.999), decay_steps: int | None = None, gp_weight: float = 10.0,
                 r1_weight: float = 0.0, r1_every: int = 16, ema_decay: float | None = None, warmup_steps: int = 0):
        if objective not in OBJECTIVES:
            raise ValueError(f"GANTask: objective must be one of {list(OBJECTIVES)}, got {objective!r}")
        if not isinstance(n_critic, int) or isinstance(n_critic, bool) or n_critic < 1:
            raise ValueError(f"GANTask: n_critic must be an int >= 1, got {n_critic!r}")
        if decay_steps is not None and (not isinstance(decay_steps, int) or decay_steps < 0):
            raise ValueError(f"GANTask: decay_steps must be an int >= 0 or None (the second half), got {decay_steps!r}")
        if not isinstance(r1_weight, (int, float)) or r1_weight < 0:
            raise ValueError(f"GANTask: r1_weight must be a number >= 0, got {r1_weight!r}")
        if r1_weight and objective == "wgan-gp":
            raise ValueError("GANTask: r1_weight is for the non-saturating and hinge objectives; WGAN-GP has gp_weight")
        if not isinstance(r1_every, int) or isinstance(r1_every, bool) or r1_every < 1:
            raise ValueError(f"GANTask: r1_every must be an int >= 1, got {r1_every!r}")
        if ema_decay is not None and not (isinstance(ema_decay, float) and 0 < ema_decay < 1):
            raise ValueError(f"GANTask: ema_decay must be a float in (0, 1) or None, got {ema_decay!r}")
        if not isinstance(warmup_steps, int) or isinstance(warmup_steps, bool) or warmup_steps < 0:
            raise ValueError(f"GANTask: warmup_steps must be an int >= 0, got {warmup_steps!r}")
        self.warmup_steps = warmup_steps
        self.objective, self.n_critic, self.betas, self.decay_steps = objective, n_critic, tuple(betas), decay_steps
        self.gp_weight, self.r1_weight, self.r1_every, self.ema_decay = gp_weight, r1_weight, r1_every, ema_decay
        rates = (lr, lr) if isinstance(lr, (int, float)) else tuple(lr) if isinstance(lr, (tuple, list)) else ()
        if len(rates) != 2 or not all(isinstance(r, (int, float)) and r > 0 for r in rates):
            raise ValueError(f"GANTask: lr must be a positive number or (generator_lr, critic_lr), got {lr!r}")
        self.generator_lr, self.critic_lr = rates
        self.schedulers: dict[str, torch.optim.lr_scheduler.LambdaLR] = {}

    # -- what a paper's task provides ----------------------------------------------------------

    def build_players(self, device: torch.device) -> tuple[nn.Module, nn.Module]:
        raise NotImplementedError(f"{type(self).__name__} must define build_players(device) -> (generator, critic)")

    def prepare(self, batch: Any, step: int) -> Any:
        """What both players' losses of ``step`` receive (targets, flips, noise drawn once); default: ``batch``."""
        return batch

    def warmup_losses(self, batch: Any, step: int) -> dict[str, torch.Tensor]:
        raise NotImplementedError(f"{type(self).__name__} has warmup_steps but no warmup_losses(batch, step)")

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
        """Whether ``step`` (from 0) also updates the generator: once per ``n_critic`` critic updates
        (counted after the warm-up)."""
        return step >= self.warmup_steps and (step - self.warmup_steps + 1) % self.n_critic == 0

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
        modules = {self.generator_name: generator, self.critic_name: critic}
        if self.ema_decay is not None:
            # a frozen copy: no optimiser, no DDP wrapper; checkpointed (and resumed) with the players
            modules[self.ema_name] = copy.deepcopy(generator).requires_grad_(False)
        return modules, optimizers

    def stateful(self) -> dict[str, Any]:
        return {f"{name}_lr": scheduler for name, scheduler in self.schedulers.items()}

    def training_step(self, batch, step):
        batch = self.prepare(batch, step)
        if step < self.warmup_steps:
            logs = {f"warmup_{name}": value for name, value in self.update(self.critic_name,
                                                                           self.warmup_losses(batch, step)).items()}
        else:
            logs = self.critic_step(batch, step)
        if self.updates_generator(step):
            generator_logs = self.generator_step(batch, step)
            shared = sorted(set(logs) & set(generator_logs))
            if shared:
                raise ValueError(f"{type(self).__name__}: critic_losses and generator_losses both return {shared}; "
                                 "give each logged value its own name")
            logs.update(generator_logs)
            if self.ema_decay is not None:
                self.update_ema(step)
        with warnings.catch_warnings():
            # The rates follow the training step for both players (StarGAN), so the generator's
            # scheduler also steps on steps without a generator update (torch warns about that).
            warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()` before"))
            for scheduler in self.schedulers.values():
                scheduler.step()
        return logs

    def critic_step(self, batch, step) -> dict[str, torch.Tensor]:
        """One critic update on ``critic_losses(...)["loss"]``; returns the detached terms to log.

        A loss without a gradient (nothing for the critic to learn at this step) updates nothing.
        """
        terms = self.critic_losses(batch, step)
        if isinstance(terms, dict) and isinstance(terms.get("loss"), torch.Tensor) and not terms["loss"].requires_grad:
            return {}
        return self.update(self.critic_name, terms)

    def generator_step(self, batch, step) -> dict[str, torch.Tensor]:
        """One generator update on ``generator_losses(...)["loss"]``; returns the detached terms to log.

        The critic's parameters also receive gradients here; its next step zeroes them first.
        """
        return self.update(self.generator_name, self.generator_losses(batch, step))

    def update(self, player: str, terms: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One optimiser step of ``player`` on ``terms["loss"]``; returns the detached terms to log."""
        if not isinstance(terms, dict) or "loss" not in terms:
            raise TypeError(f"{type(self).__name__}: the {player}'s losses must be a dict with a 'loss' entry, "
                            f"got {sorted(terms) if isinstance(terms, dict) else type(terms).__name__}")
        optimizer = self.optimizers[player]
        optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        optimizer.step()
        return {(f"{player}_loss" if name == "loss" else name): value.detach() if isinstance(value, torch.Tensor)
                else value for name, value in terms.items()}

    # -- the generator's moving average --------------------------------------------------------

    def ema_beta(self, step: int) -> float:
        """The decay of the update at ``step``: ``min(ema_decay, (1 + n) / (10 + n))`` with n the generator
        updates before it, so the average forgets the random initial weights quickly (a ramp, as StyleGAN2's)."""
        earlier = (step - self.warmup_steps + 1) // self.n_critic - 1
        return min(self.ema_decay, (1 + earlier) / (10 + earlier))

    @torch.no_grad()
    def update_ema(self, step: int) -> None:
        """``ema <- beta * ema + (1 - beta) * generator`` for every parameter; buffers are copied."""
        beta = self.ema_beta(step)
        ema, generator = self.modules[self.ema_name], self.unwrap(self.generator_name)
        for average, current in zip(ema.parameters(), generator.parameters()):
            average.lerp_(current, 1 - beta)
        for average, current in zip(ema.buffers(), generator.buffers()):
            average.copy_(current)

    def generator_updates_done(self, completed_steps: int) -> int:
        """How many generator updates the first ``completed_steps`` training steps made."""
        return max(0, completed_steps - self.warmup_steps) // self.n_critic

    def curve_editor(self):
        """The editor the learning curve measures (a paper's task wraps :meth:`shipped_generator`)."""
        raise NotImplementedError(f"{type(self).__name__} has a curve but no curve_editor()")

    def validate(self, step):
        """A learning-curve point: ``curve`` on :meth:`curve_editor`, with the generator updates so far."""
        if self.curve is None:
            return None
        return {**self.curve(self.curve_editor()), "generator_updates": self.generator_updates_done(step)}

    def shipped_generator(self) -> nn.Module:
        """The generator to evaluate and ship: the moving average when one is kept, else the trained one."""
        return self.unwrap(self.ema_name if self.ema_decay is not None else self.generator_name)

    # -- adversarial objectives ----------------------------------------------------------------

    def critic_outputs(self, real: torch.Tensor, fake: torch.Tensor) -> tuple[Any, Any]:
        """The critic's outputs on ``real`` and on ``fake`` (detached) from one forward of both
        (one DDP forward per backward); a tuple output (scores, AU head) is split item by item."""
        outputs = self.modules[self.critic_name](torch.cat([real, fake.detach()]))
        if isinstance(outputs, torch.Tensor):
            return outputs[:len(real)], outputs[len(real):]
        return tuple(o[:len(real)] for o in outputs), tuple(o[len(real):] for o in outputs)

    def adversarial_terms(self, real_scores: torch.Tensor, fake_scores: torch.Tensor, real: torch.Tensor,
                          fake: torch.Tensor, step: int, scores_of=None) -> dict[str, torch.Tensor]:
        """The critic's adversarial loss under ``objective``, with its regulariser, and its parts.

        ``real``/``fake`` are the critic's inputs the scores came from; ``scores_of`` picks the scores
        from a multi-head critic's output (e.g. ``lambda out: out[0]``). Returns ``loss``,
        ``critic_real`` = E[D(real)], ``critic_fake`` = E[D(fake)], and ``gradient_penalty``
        (WGAN-GP) or, on the steps that take it, ``r1``.
        """
        if self.objective == "wgan-gp":
            return self.wgan_gp_terms(real_scores, fake_scores, real, fake, scores_of=scores_of)
        if self.objective == "non-saturating":
            loss = gan_discriminator_loss(real_scores, fake_scores)
        else:
            loss = hinge_critic_loss(real_scores, fake_scores)
        terms = {"critic_real": real_scores.mean(), "critic_fake": fake_scores.mean()}
        if self.r1_weight and step % self.r1_every == 0:
            # R1 (Mescheder et al. 2018), lazy as StyleGAN2's: every r1_every steps, scaled by r1_every
            terms["r1"] = r1_penalty(self.plain_scores(scores_of), real)
            loss = loss + self.r1_weight / 2 * self.r1_every * terms["r1"]
        return {"loss": loss, **terms}

    def generator_adversarial_loss(self, fake_scores: torch.Tensor) -> torch.Tensor:
        """The generator's adversarial loss under ``objective``: ``-E[D(fake)]`` or ``-E[log s(D(fake))]``."""
        if self.objective == "non-saturating":
            return gan_generator_loss(fake_scores)
        return wgan_generator_loss(fake_scores)

    def plain_scores(self, scores_of=None):
        """The unwrapped critic as a function of images to scores (for penalties: see the module docstring)."""
        plain_critic = self.unwrap(self.critic_name)
        return plain_critic if scores_of is None else (lambda x: scores_of(plain_critic(x)))

    def wgan_gp_terms(self, real_scores: torch.Tensor, fake_scores: torch.Tensor, real: torch.Tensor,
                      fake: torch.Tensor, scores_of=None) -> dict[str, torch.Tensor]:
        """WGAN-GP's critic loss ``E[D(fake)] - E[D(real)] + gp_weight * GP`` and its parts.

        Returns ``loss``, ``critic_real`` = E[D(real)], ``critic_fake`` = E[D(fake)] and
        ``gradient_penalty`` (at random points between real and fake, through the plain critic:
        see the module docstring on DDP).
        """
        penalty = gradient_penalty(self.plain_scores(scores_of), real, fake)
        return {"loss": wgan_critic_loss(real_scores, fake_scores, penalty, gp_weight=self.gp_weight),
                "critic_real": real_scores.mean(), "critic_fake": fake_scores.mean(), "gradient_penalty": penalty}


#: The transforms :func:`diff_augment` knows (DiffAugment's names).
AUGMENTATIONS = ("colour", "translation")


def diff_augment(images: torch.Tensor, policy: str = "colour,translation", translation: float = 0.125) -> torch.Tensor:
    """DiffAugment (Zhao et al. 2020): a random differentiable transform per image, by ``policy``.

    ``"colour"``: brightness + U(-0.5, 0.5), saturation x U(0, 2), contrast x U(0.5, 1.5) (each around
    the image's own mean, on [-1, 1] images). ``"translation"``: a shift by a whole number of pixels
    up to ``translation`` of the size, the uncovered border zero. The critic sees every input, real
    or fake, through it, in its own step and in the generator's loss, so it cannot tell them apart by
    anything the transform changes; reconstruction and cycle losses stay un-augmented.
    """
    steps = [name.strip() for name in policy.split(",") if name.strip()]
    unknown = sorted(set(steps) - set(AUGMENTATIONS))
    if unknown:
        raise ValueError(f"diff_augment: unknown transforms {unknown} in policy {policy!r}; accepted: {list(AUGMENTATIONS)}")
    batch, device, x = len(images), images.device, images
    if "colour" in steps:
        x = x + (torch.rand(batch, 1, 1, 1, device=device) - 0.5)
        grey = x.mean(1, keepdim=True)
        x = (x - grey) * (torch.rand(batch, 1, 1, 1, device=device) * 2) + grey
        mean = x.mean((1, 2, 3), keepdim=True)
        x = (x - mean) * (torch.rand(batch, 1, 1, 1, device=device) + 0.5) + mean
    if "translation" not in steps:
        return x
    height, width = x.shape[-2:]
    shift_y = int(height * translation + 0.5)
    shift_x = int(width * translation + 0.5)
    dy = torch.randint(-shift_y, shift_y + 1, (batch,), device=device)
    dx = torch.randint(-shift_x, shift_x + 1, (batch,), device=device)
    # out[y, x] = in[y - dy, x - dx]: a gather from the zero-padded image
    padded = F.pad(x, (shift_x, shift_x, shift_y, shift_y))
    rows = (torch.arange(height, device=device).view(1, -1) - dy.view(-1, 1) + shift_y)  # [B, H]
    cols = (torch.arange(width, device=device).view(1, -1) - dx.view(-1, 1) + shift_x)  # [B, W]
    channels = x.shape[1]
    picked = padded.gather(2, rows.view(batch, 1, height, 1).expand(-1, channels, -1, padded.shape[-1]))
    return picked.gather(3, cols.view(batch, 1, 1, width).expand(-1, channels, height, -1))
