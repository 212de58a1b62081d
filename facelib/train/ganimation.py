"""GANimation training (Pumarola et al. 2018): WGAN-GP + AU regression + cycle + attention losses.

Equation numbers are those of the GANimation paper (ECCV 2018, arXiv:1807.09251): DFT-Net's paper
restates Eq. 2, 4 and 5 as its own Eq. 6, 7 and 8. The settings the paper leaves out follow the
public code (albertpumarola/GANimation; docs/reference_notes.md):
lambda_gp 10, lambda_cond 4000 on the MSE divided again by the batch size
(:func:`facelib.losses.au_regression_loss`), lambda_cyc 10 (L1, :func:`facelib.losses.cycle_loss`),
attention lambda 0.1 on mean(A) plus 1e-5 TV, Adam 1e-4 (0.5, 0.999), 5 critic steps per
generator step, AUs divided by 5, target AUs another sample's AUs plus U(-0.1, 0.1).

The data are ``SynthFaces("emotionet", "train", size=64)``: 200,000 faces (20,000 identities x
10) with random sparse AU combinations, too many to keep in memory, so the Trainer's loader
workers render them on the fly, several steps per render call (``facelib.data.loader``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from facelib.checkpoint import save_model
from facelib.conventions import AU_MAX
from facelib.losses import au_regression_loss, cycle_loss, total_variation
from facelib.metrics import FD_NAME, VERIFICATION_NAME
from facelib.models.ganimation import (
    PRESET, GANimationConfig, GANimationCritic, GANimationEditor, GANimationGenerator, compose, normalise_aus,
)
from facelib.data.synth import expression_region_mask
from facelib.train.gan import GANTask, diff_augment
from facelib.train.trainer import Trainer, read_log

__all__ = ["GANimationWeights", "GANimationTask", "attention_loss", "other_sample_aus",
           "train_recipe", "train_cpu_recipe", "train_au_editor", "DEFAULT_STEPS", "CPU_STEPS", "CPU_RECIPE",
           "CPU_CONFIG", "CPU_WEIGHTS",
           "BATCH_SIZE"]


@dataclass(frozen=True)
class GANimationWeights:
    """The loss weights of the public code (GANimation Eq. 6's lambdas)."""

    au: float = 4000.0  # lambda_cond (the code's lambda_D_cond)
    cycle: float = 10.0  # lambda_cyc
    attention: float = 0.1  # lambda_mask, on mean(A)
    attention_tv: float = 1e-5  # lambda_mask_smooth
    target_noise: float = 0.1  # target AUs: another sample's AUs + U(-0.1, 0.1)
    keep: float = 0.0  # CPU recipe: L1 of the change outside the landmarks' expression regions (0: the paper)


def attention_loss(attention: torch.Tensor, weights: GANimationWeights) -> torch.Tensor:
    """GANimation Eq. 3 on a mask ``[B, 1, H, W]``: ``lambda_TV * TV(A) + lambda_A * mean(A)``.

    The norm is the public code's mean of A (an L1 norm per pixel), which keeps A from saturating
    at 1 (an unedited source); the TV is the paper's squared differences (facelib.losses.total_variation,
    summed over pixels, averaged over the batch; the code sums absolute differences over the batch).
    """
    # GANimation Eq. 3: lambda_TV * sum (A_{i+1,j} - A_{i,j})^2 + (A_{i,j+1} - A_{i,j})^2 + lambda_A * ||A||
    return weights.attention_tv * total_variation(attention) + weights.attention * attention.mean()


def other_sample_aus(aus01: torch.Tensor, noise: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Target AUs: each image gets another image's AUs plus ``U(-noise, noise)``, clamped to [0, 1].

    "Another" is a random cyclic shift of the batch by 1 .. B-1 (an image keeps its own AUs, plus
    noise, only in a batch of one).
    """
    batch = len(aus01)
    shift = int(torch.randint(1, batch, (1,), generator=generator)) if batch > 1 else 0
    others = aus01.roll(shift, dims=0)
    jitter = (torch.rand(others.shape, generator=generator) * 2 - 1).to(others) * noise
    return (others + jitter).clamp(0, 1)


class GANimationTask(GANTask):
    """GANimation's training as a :class:`facelib.train.gan.GANTask`.

    ``dataset`` yields items with ``image`` ``[3, S, S]`` in [-1, 1] and ``aus`` ``[17]`` in [0, 5].
    The target AUs of a step are drawn once and shared by its critic and generator updates.
    Logged: the critic's WGAN terms and ``critic_au``; the generator's ``adversarial``, ``au``,
    ``cycle``, ``attention`` (Eq. 3 on both masks) and ``attention_mean`` (mean A of the edit;
    near 1 = the source unedited, near 0 = painted from scratch: the collapse users report).
    """

    editor_class = GANimationEditor  # what validate() wraps the generator in (DFT-Net: its own)

    def __init__(self, config: GANimationConfig | None = None, dataset=None, *,
                 weights: GANimationWeights = GANimationWeights(), n_critic: int = 5, lr=1e-4,
                 betas=(0.5, 0.999), decay_steps: int | None = None, augment: str = "", curve=None, **objective):
        # objective: GANTask's objective, r1_weight, r1_every, ema_decay, warmup_steps (the papers': WGAN-GP)
        super().__init__(n_critic=n_critic, lr=lr, betas=betas, decay_steps=decay_steps, gp_weight=10.0, **objective)
        self.config = config if config is not None else GANimationConfig()
        self.dataset, self.weights, self.augment, self.curve = dataset, weights, augment, curve

    def build_players(self, device):
        return GANimationGenerator(self.config).to(device), GANimationCritic(self.config).to(device)

    def prepare(self, batch, step: int) -> dict[str, torch.Tensor]:
        """``{"image", "aus01": the source's AUs, "target_aus01"}``, AUs in [0, 1], the targets drawn once per step."""
        aus01 = normalise_aus(batch["aus"].float())
        keep = None
        if self.weights.keep:  # where changes cost: outside the expression regions of the landmarks
            keep = 1 - expression_region_mask(batch["landmarks"].float(), batch["image"].shape[-1])
        return {"image": batch["image"], "aus01": aus01, "keep": keep,
                "target_aus01": other_sample_aus(aus01, self.weights.target_noise).to(aus01)}

    def translate(self, images: torch.Tensor, aus01: torch.Tensor, plain: bool = False) -> dict[str, torch.Tensor]:
        """One generator pass: ``{"output": Eq. 1's edit, "attention": A}`` (DFT-Net adds its maps).

        ``plain``: through the unwrapped generator (the cycle's way back; see generator_losses).
        """
        generator = self.unwrap("generator") if plain else self.modules["generator"]
        colour, attention = generator(images, aus01)
        return {"output": compose(images, colour, attention), "attention": attention}

    def regularisers(self, forward: dict[str, torch.Tensor], back: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The weighted terms beyond adversarial, AU and cycle, from both passes' :meth:`translate`."""
        # GANimation Eq. 3 on the masks of both passes, as Eq. 6 (and the code) apply it
        return {"attention": attention_loss(forward["attention"], self.weights)
                + attention_loss(back["attention"], self.weights)}

    def critic_view(self, images: torch.Tensor) -> torch.Tensor:
        """What the critic sees: the images, through DiffAugment when ``augment`` names a policy."""
        return diff_augment(images, self.augment) if self.augment else images

    def warmup_losses(self, batch, step):
        # the warm start: GANimation Eq. 4 (critic side) alone, the AU head learns to regress real AUs
        _, real_aus = self.modules["critic"](self.critic_view(batch["image"]))
        return {"loss": self.weights.au * au_regression_loss(real_aus, batch["aus01"])}

    def critic_losses(self, batch, step):
        images, aus01, targets = batch["image"], batch["aus01"], batch["target_aus01"]
        with torch.no_grad():  # no generator gradients in the critic's step
            fake = self.translate(images, targets)["output"]
        real_view, fake_view = self.critic_view(images), self.critic_view(fake)
        (real_scores, real_aus), (fake_scores, _) = self.critic_outputs(real_view, fake_view)
        # GANimation Eq. 2 (critic side): E[D(fake)] - E[D(real)] + lambda_gp * GP (or the CPU recipe's objective)
        terms = self.adversarial_terms(real_scores, fake_scores, real_view, fake_view, step,
                                       scores_of=lambda out: out[0])
        # GANimation Eq. 4 (critic side): the AU head regresses the real image's own AUs
        terms["critic_au"] = au_regression_loss(real_aus, aus01)
        terms["loss"] = terms["loss"] + self.weights.au * terms["critic_au"]
        return terms

    def generator_losses(self, batch, step):
        images, aus01, targets = batch["image"], batch["aus01"], batch["target_aus01"]
        forward = self.translate(images, targets)
        fake = forward["output"]
        fake_scores, fake_aus = self.modules["critic"](self.critic_view(fake))
        # The way back goes through the plain generator: its parameters' gradients from both passes
        # are summed by autograd before DDP's per-parameter hook fires (as the gradient penalty does).
        back = self.translate(fake, aus01, plain=True)
        # GANimation Eq. 2 (generator side): -E[D(G(I, y_target))]  (DFT-Net Eq. 6)
        adversarial = self.generator_adversarial_loss(fake_scores)
        # GANimation Eq. 4 (generator side): the edit must show the target AUs  (DFT-Net Eq. 7)
        au = au_regression_loss(fake_aus, targets)
        # GANimation Eq. 5: identity (cycle) loss, || G(G(I, y_target), y_source) - I ||_1 (mean)  (DFT-Net Eq. 8)
        cycle = cycle_loss(images, back["output"])
        extra = self.regularisers(forward, back)
        if batch.get("keep") is not None:
            # departure (CPU recipe): the change outside the expression regions, L1 (mean over the image)
            extra["keep"] = self.weights.keep * ((fake - images).abs() * batch["keep"]).mean()
        # GANimation Eq. 6: L_adv + lambda_y L_y + lambda_A (L_A forward + L_A back) + lambda_idt L_idt
        loss = adversarial + self.weights.au * au + self.weights.cycle * cycle + sum(extra.values())
        return {"loss": loss, "adversarial": adversarial, "au": au, "cycle": cycle, **extra,
                **self.diagnostics(forward)}

    def curve_editor(self):
        return self.editor_class(self.shipped_generator())

    def diagnostics(self, forward: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Logged, not minimised: ``attention_mean``, the mean A of the edit (near 1 = the source
        unedited, near 0 = painted from scratch: the collapse users report)."""
        return {"attention_mean": forward["attention"].detach().mean()}


# ----------------------------------------------------------------------------------------
# Recipe: `python -m facelib train ganimation`
# ----------------------------------------------------------------------------------------
DEFAULT_STEPS = 8_000  # 1,600 generator updates: 37.9 min measured on 2 CPU cores (0.28 s per step, rendering included)
LR = 2e-4  # the public code: 1e-4; doubled (as StarGAN's) to reach the floors in the 45-minute CPU budget
BATCH_SIZE = 16  # the published code's 25, rounded for CPU
SMOKE_STEPS = 5  # one generator update
#: The rows of facelib.evaluation.evaluate the recipe reports, and their keys in its metrics.
METRIC_KEYS = {"AU PCC (facelib AU regressor)": "au_pcc", "AU MSE (facelib AU regressor)": "au_mse",
               VERIFICATION_NAME: "identity_verification", "PSNR (whole image, dB)": "psnr_db", "SSIM": "ssim",
               FD_NAME: "fd"}


CPU_STEPS = 6_000  # the CPU recipe: 3,000 warm-up steps (critic only, ~20x cheaper), then 3,000 generator updates
#: The CPU recipe's departures from the paper's schedule, one per line (GANimationTask's options).
CPU_RECIPE = dict(
    n_critic=1,  # departure: one critic step per generator step (paper: 5)
    objective="non-saturating", r1_weight=1.0,  # departure: NS loss + lazy R1 (paper: WGAN-GP)
    betas=(0.0, 0.99),  # departure: StarGAN v2's Adam betas (paper: 0.5, 0.999)
    ema_decay=0.999,  # departure: the EMA generator is measured and shipped
    augment="colour",  # departure: DiffAugment colour on every critic input
    warmup_steps=3000,  # departure: the critic's AU head starts as a trained regressor of real faces
)
#: The CPU recipe's network, three departures: the mask starts at A = 0.98 (the generator starts as the
#: identity mapping), nearest up-sampling + 3x3 convs replace the transposed convs (no checkerboard), and
#: the colour map is the source plus a learned change.
CPU_CONFIG = GANimationConfig(attention_start=4.0, upsample="resize", residual_colour=True)
#: The CPU recipe's loss weights: the paper's, plus the keep loss outside the expression regions (a departure).
CPU_WEIGHTS = GANimationWeights(keep=10.0)
#: The learning curve: AU PCC and identity on held-out emotionet pairs, every CURVE_EVERY generator updates.
CURVE_METRICS = ("AU PCC (facelib AU regressor)", VERIFICATION_NAME)
CURVE_PAIRS, CURVE_EVERY = 192, 100


def train_recipe(*, steps: int | None, seed: int, out_dir, device: str, smoke: bool) -> dict:
    """Recipe ``ganimation`` (shipped): the paper's schedule (WGAN-GP, 5 critic steps per generator step).

    It measured better on two cores than every CPU recipe tried (docs/gan_training.md), so it ships.
    See :func:`train_au_editor` for what is measured.
    """
    return train_au_editor("ganimation", GANimationTask(GANimationConfig(), lr=LR), GANimationEditor,
                           steps=steps, seed=seed, out_dir=out_dir, device=device, smoke=smoke)


def train_cpu_recipe(*, steps: int | None, seed: int, out_dir, device: str, smoke: bool) -> dict:
    """Recipe ``ganimation_cpu``: the CPU recipe (:data:`CPU_RECIPE`, :data:`CPU_CONFIG`, :data:`CPU_WEIGHTS`)."""
    return train_au_editor("ganimation_cpu", GANimationTask(CPU_CONFIG, weights=CPU_WEIGHTS, lr=LR, **CPU_RECIPE),
                           GANimationEditor, steps=steps, seed=seed, out_dir=out_dir, device=device, smoke=smoke,
                           default_steps=CPU_STEPS)


def train_au_editor(name: str, task: GANimationTask, editor_class, *, steps: int | None, seed: int, out_dir,
                    device: str, smoke: bool, default_steps: int = DEFAULT_STEPS) -> dict:
    """Train an AU-conditioned GAN (GANimation, DFT-Net) on the emotionet preset, save it, measure it.

    ``task`` gets the data here (``SynthFaces("emotionet", "train")`` at its config's size; smoke: 8
    faces). Measured by :func:`facelib.evaluation.evaluate` with ``aus`` targets on the emotionet test
    split (smoke: 20 validation pairs, two identities): AU PCC and MSE through the AU regressor, identity
    verification, PSNR and SSIM against the true render of the target AUs, FD; each AU's PCC
    (``au_pcc_AU1`` ... ``au_pcc_AU45``). The metrics also hold ``attention_mean``, the mean A of the last logged
    generator steps, and ``attention_mean_test``, the mean A of the test edits.
    """
    from facelib.checkpoint import load_pretrained
    from facelib.data import SynthFaces
    from facelib.evaluation import LearningCurve, au_table, evaluate, held_out_pairs, held_out_target, run_editor

    out_dir, config = Path(out_dir), task.config
    dataset = SynthFaces(PRESET, "train", size=config.image_size, seed=0)
    task.dataset = torch.utils.data.Subset(dataset, range(8)) if smoke else dataset
    total = SMOKE_STEPS if smoke else (default_steps if steps is None else steps)
    if smoke:
        task.warmup_steps = min(task.warmup_steps, 1)
    task.editor_class = editor_class
    task.curve = LearningCurve(PRESET, "aus", metrics=CURVE_METRICS, n=20 if smoke else CURVE_PAIRS,
                               size=config.image_size, split="val" if smoke else "test")
    fit = Trainer(task, steps=total, batch_size=4 if smoke else BATCH_SIZE, seed=seed, out_dir=out_dir / name,
                  device=device, log_every=1 if smoke else 25, progress=not smoke,
                  checkpoint_every=0 if smoke else 500,
                  validate_every=2 if smoke else CURVE_EVERY * task.n_critic).fit()
    log = read_log(out_dir / name)
    attention_mean = float(log["attention_mean"].dropna().iloc[-1])
    generator = task.shipped_generator().cpu().eval()
    stem = save_model(generator, out_dir / name, extra={"attention_mean_last": attention_mean,
                                                        "dataset": f"SynthFaces({PRESET!r}, 'train', size={config.image_size})"})
    editor, split, n = editor_class(generator), "val" if smoke else "test", 20 if smoke else 512
    table = evaluate(editor, "aus", preset=PRESET, split=split, n=n, metrics=list(METRIC_KEYS), progress=False)
    # A row that cannot be measured (NaN, e.g. a PCC without variance) is left out: recipes report finite numbers.
    values = {METRIC_KEYS[r.metric]: float(r.value) for r in table.itertuples()
              if r.metric in METRIC_KEYS and math.isfinite(r.value)}
    # The same pairs again (evaluate keeps no edits): each AU's PCC, and the test edits' mean mask
    pairs = held_out_pairs(PRESET, split, config.image_size, n, progress=False)
    per_au = au_table(run_editor(editor, "aus", pairs, progress=False), load_pretrained("au_regressor"))
    values.update({f"au_pcc_{au}": float(pcc) for au, pcc in per_au["PCC"].iloc[:-1].items() if math.isfinite(pcc)})
    masks = [editor.edit(batch["source"], held_out_target("aus", batch)).attention for batch in pairs.batches]
    values["attention_mean_test"] = float(torch.cat(masks).mean())
    return {
        "checkpoints": {name: stem},
        "metrics": {name: {**values, "attention_mean": attention_mean, "n_test_pairs": table.attrs["n"],
                           "train_seconds": fit.seconds, "generator_updates": task.generator_updates_done(total)}},
        "preset": PRESET,
        "steps": total,
    }
