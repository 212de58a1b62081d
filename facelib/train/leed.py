"""LEED training (Wu & Lu 2020): Eq. 1-16 on the ``rafd`` preset, with no expression label.

The data are pairs of an image and its neutral face (the :class:`~facelib.models.leed.Neutraliser`'s
output; the oracle ``true_render`` by default): :class:`NeutralFaces` items carry ``image`` and
``neutral`` and nothing else, so no expression or AU label can reach the losses. Each step pairs every
input I_A with another face of the batch as its reference R_B (the batch rolled by one).

One training step (:class:`LEEDTask`, on :class:`facelib.train.gan.GANTask`):

- the latent critic (Eq. 12) separates the codes of real images E(I) from interpolated codes
  I(C_IN, alpha Delta exp), alpha ~ U(0, 1);
- one step of the other networks on the sum of Eq. 14-15 (E and D: reconstruction), Eq. 2 + lambda_Q
  Eq. 3 (X and Q, on E's codes detached), Eq. 6-8 (I, on E's codes detached, with Eq. 13's adversarial
  term) and lambda_S Eq. 11 (E and S; Eq. 16).

The CPU recipe starts with a warm start: for its first 4,000 of 8,000 steps E and D learn Eq. 14-15 alone and
the critic waits; the learning rates then fall linearly to 0 over the other 4,000 (GANTask's second-half
decay). The paper alternates E and S on Eq. 16; here one joint step takes both (the same objective).
Recipes: ``leed`` (the CPU recipe, shipped), ``leed_paper`` (the paper's schedule as written: WGAN-GP
with 5 critic steps, the code-only decoder, perceptual loss alone), and the ablations of Fig. 3,
``leed_no_q`` and ``leed_no_s``. Each departure of the CPU recipe is one line of :meth:`LEEDTrainConfig.cpu`.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from facelib import losses
from facelib.checkpoint import save_model
from facelib.conventions import EXPRESSIONS
from facelib.evaluation.curves import LearningCurve
from facelib.metrics import FD_NAME, VERIFICATION_NAME
from facelib.models.evaluators import PerceptualFeatures
from facelib.models.leed import LEED, LEEDConfig, LEEDCritic, LEEDEditor, Neutraliser, TrueRenderNeutraliser
from facelib.train.gan import GANTask
from facelib.train.trainer import Trainer, read_log

__all__ = ["LEEDTrainConfig", "NeutralFaces", "neutral_faces", "LEEDTask", "expression_references", "measure",
           "train_leed", "train_recipe", "train_paper_recipe", "train_no_q_recipe", "train_no_s_recipe", "CPU_STEPS"]

PRESET = "rafd"
#: The fields a LEED training item may have: images only, never a label.
ITEM_FIELDS = ("image", "neutral")


@dataclass
class LEEDTrainConfig:
    """Loss weights and optimisation. Defaults: the paper's schedule as written (Sec. 4.2: Adam, betas
    0.5 and 0.999; WGAN-GP; the paper gives no lambdas, learning rate or critic steps: WGAN-GP's 5)."""

    lambda_recon: float = 1.0  # Eq. 16's lambda_recon, on Eq. 14-15's perceptual loss
    lambda_q: float = 1.0  # Eq. 4's lambda_Q (0: the "w/o Q" ablation of Fig. 3)
    lambda_s: float = 1.0  # Eq. 16's lambda_S (0: the "w/o S" ablation of Fig. 3)
    lambda_adv: float = 1.0  # Eq. 13's adversarial term in Eq. 6 and 16
    lambda_pixel: float = 0.0  # L1 reconstruction (0: the paper's perceptual loss alone)
    change_weight: float = 0.0  # extra L1 weight where the face differs from its neutral face
    lr: float = 1e-4
    betas: tuple[float, float] = (0.5, 0.999)
    objective: str = "wgan-gp"
    n_critic: int = 5
    lambda_gp: float = 10.0
    r1_weight: float = 0.0  # gamma of R1 on real codes (non-saturating and hinge only)
    batch_size: int = 16
    identities: int | None = None  # training people (None: rafd's 50; more come from a disjoint id range)
    autoencoder_steps: int = 0  # a warm start: E and D learn Eq. 14-15 alone for these first steps

    @classmethod
    def cpu(cls) -> "LEEDTrainConfig":
        """The CPU recipe (``python -m facelib train leed``): each departure from the paper, one per line."""
        return cls(
            n_critic=1,  # departure: one critic step per step, so E and D learn at every step (paper: WGAN-GP's 5)
            lr=2e-4,  # departure: twice Adam's 1e-4 (the paper gives none)
            lambda_pixel=10.0,  # departure: an L1 reconstruction beside the perceptual loss
            change_weight=4.0,  # departure: the L1 weighs 5x where the face differs from its neutral face
            identities=150,  # departure: 100 more people rendered like rafd's (test identities stay rafd's)
            autoencoder_steps=4000,  # departure: E and D first learn Eq. 14-15 alone (a warm start; V6: 3,000 of 5,000)
            objective="non-saturating", r1_weight=1.0,  # departure: bounded scores (WGAN's grew to +-300 on codes)
            lambda_adv=0.1, lambda_s=0.1,  # departure: at 1 they pulled the codes off the decoder's (measured)
        )


class NeutralFaces(Dataset):
    """Images and their neutral faces, ``{"image", "neutral"}`` per item: all LEED trains on."""

    def __init__(self, images: torch.Tensor, neutrals: torch.Tensor):
        if images.shape != neutrals.shape or images.dim() != 4:
            raise ValueError(f"images and neutrals must be matching [N, 3, S, S], got {list(images.shape)} "
                             f"and {list(neutrals.shape)}")
        self.images, self.neutrals = images, neutrals

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"image": self.images[index], "neutral": self.neutrals[index]}


def neutral_faces(neutraliser: Neutraliser | None = None, identities: int | None = None, size: int = 64,
                  cache: Path | None = None, limit: int | None = None) -> NeutralFaces:
    """rafd's training faces (``identities`` > 50 adds people from a disjoint id range) with their neutral
    faces from ``neutraliser`` (default: the oracle). The labels are read here, to render, then dropped."""
    from facelib.train.stargan import training_faces

    neutraliser = neutraliser or TrueRenderNeutraliser()
    faces = training_faces(identities, size, cache=cache)
    parts = faces.datasets if isinstance(faces, torch.utils.data.ConcatDataset) else [faces]
    images, neutrals = [], []
    for part in parts:
        count = len(part) if limit is None else min(limit, len(part))
        for start in range(0, count, 256):
            batch = part.batch(range(start, min(start + 256, count)))
            images.append(batch["image"])
            # one neutral face per person and pose (rafd shows each in eight expressions)
            pose = torch.stack([batch["identity"].double(), batch["yaw"].double()], 1)
            unique, which = pose.unique(dim=0, return_inverse=True)
            first = torch.zeros(len(unique), dtype=torch.long).scatter_(0, which.flip(0), torch.arange(len(which)).flip(0))
            made = neutraliser.neutral(batch["image"][first], identity=batch["identity"][first], yaw=batch["yaw"][first])
            neutrals.append(made[which])
    return NeutralFaces(torch.cat(images), torch.cat(neutrals))


class LEEDTask(GANTask):
    """LEED Eq. 1-16: the generator player is :class:`LEED` (E, D, X, Q, I, S), the critic :class:`LEEDCritic`."""

    def __init__(self, config: LEEDConfig, train: LEEDTrainConfig, dataset, curve=None):
        super().__init__(objective=train.objective, n_critic=train.n_critic, lr=train.lr, betas=train.betas,
                         gp_weight=train.lambda_gp, r1_weight=train.r1_weight)
        self.config, self.train, self.dataset, self.curve = config, train, dataset, curve

    def build_players(self, device):
        from facelib.checkpoint import load_pretrained

        # Psi of Eq. 3 (the paper: a RAF-DB ResNet) and Phi of Eq. 14-15 (the paper: ImageNet VGG), frozen
        self.classifier = load_pretrained("expression_classifier", device=device).eval().requires_grad_(False)
        self.perceptual = PerceptualFeatures(load_pretrained("identity_embedder", device=device)).to(device)
        return LEED(self.config).to(device), LEEDCritic(self.config).to(device)

    def prepare(self, batch, step):
        unexpected = set(batch) - set(ITEM_FIELDS)
        if unexpected:
            raise ValueError(f"LEED trains without labels: its items carry {list(ITEM_FIELDS)}, got {sorted(unexpected)}")
        images, neutrals = batch["image"], batch["neutral"]
        with torch.no_grad():  # F_RB = Psi(R_B), not needed while the autoencoder warms up
            features = None if self.warming_up(step) else self.classifier.features(images.roll(1, 0))
        return {"input": images, "input_neutral": neutrals, "reference": images.roll(1, 0),
                "reference_neutral": neutrals.roll(1, 0), "reference_features": features,
                "alpha": torch.rand(len(images), device=images.device)}

    def codes(self, batch) -> dict[str, torch.Tensor]:
        """E of the four faces and X's expression of the reference."""
        model = self.modules["generator"]
        c_ia, c_in, c_rb, c_rn = model.encoder(torch.cat([batch["input"], batch["input_neutral"], batch["reference"],
                                                          batch["reference_neutral"]])).chunk(4)
        return {"c_ia": c_ia, "c_in": c_in, "c_rb": c_rb, "c_rn": c_rn, "expression": model.extractor(c_rb, c_rn)}

    def warming_up(self, step: int) -> bool:
        """Whether ``step`` belongs to the autoencoder's warm start (Eq. 14-15 alone; the critic waits)."""
        return step < self.train.autoencoder_steps

    def autoencoder_losses(self, batch) -> dict:
        """The warm start: E and D reconstruct the input and its neutral face (Eq. 14-15, and the CPU recipe's L1)."""
        model = self.modules["generator"]
        image, neutral = batch["input"], batch["input_neutral"]
        decoded = model.decoder(model.encoder(torch.cat([image, neutral])), torch.cat([neutral, neutral]))
        recon = self.reconstruction(decoded, torch.cat([image, neutral]), torch.cat([neutral, neutral]))
        return {"loss": recon["loss"], "recon_perceptual": recon["perceptual"], "recon_pixel": recon.get("pixel", 0.0)}

    def critic_losses(self, batch, step):
        if self.warming_up(step):
            return {"loss": torch.zeros((), device=batch["input"].device)}  # no gradient: the critic's step is skipped
        model = self.unwrap("generator")
        with torch.no_grad():
            codes = self.codes(batch)
            interpolated = model.interpolator(codes["c_in"], batch["alpha"].view(-1, 1) * codes["expression"])
        real = codes["c_ia"]  # C = E(I): the codes of real images
        real_scores, fake_scores = self.critic_outputs(real, interpolated)
        # LEED Eq. 12: WGAN-GP on the codes (or the CPU objective)
        return self.adversarial_terms(real_scores, fake_scores, real, interpolated, step)

    def reconstruction(self, decoded: torch.Tensor, image: torch.Tensor, neutral: torch.Tensor) -> dict:
        """LEED Eq. 14-15 (perceptual) plus the CPU recipe's L1, weighted where the face differs from neutral."""
        terms = {"perceptual": losses.leed_perceptual(decoded, image, self.perceptual)}
        if self.train.lambda_pixel:
            # departure (CPU recipe): the change from the neutral face is the expression; it weighs more
            changed = ((image - neutral).abs().amax(1, keepdim=True) > 0.02).float()
            weight = 1 + self.train.change_weight * F.max_pool2d(changed, 5, stride=1, padding=2)
            terms["pixel"] = ((decoded - image).abs() * weight).mean()
        terms["loss"] = self.train.lambda_recon * terms["perceptual"] + self.train.lambda_pixel * terms.get("pixel", 0.0)
        return terms

    def generator_losses(self, batch, step):
        if self.warming_up(step):
            return self.autoencoder_losses(batch)
        model, train = self.modules["generator"], self.train
        codes = self.codes(batch)
        image, neutral = batch["input"], batch["input_neutral"]
        # LEED Eq. 14-15: decode the input's code and its neutral face's code (the decoder sees I_N)
        decoded = model.decoder(torch.cat([codes["c_ia"], codes["c_in"]]), torch.cat([neutral, neutral]))
        recon = self.reconstruction(decoded, torch.cat([image, neutral]), torch.cat([neutral, neutral]))
        # Eq. 2-4 are minimised over X and Q, Eq. 6-8 over I (Eq. 16 lists what trains E): they see E's codes detached
        c_ia, c_in, c_rb, c_rn = (codes[name].detach() for name in ("c_ia", "c_in", "c_rb", "c_rn"))
        extracted = model.extractor(c_rb, c_rn)
        # LEED Eq. 1-2: the extractor regresses the latent displacement, the pseudo label
        expression = losses.leed_expression(extracted, c_rb - c_rn)
        # LEED Eq. 3: Q reads Delta exp back from the classifier's features F_RB (Eq. 4: with lambda_Q)
        q = losses.leed_q_loss(extracted, model.q(batch["reference_features"]))
        # LEED Eq. 6 and 13: interpolate at alpha, near Eq. 5's line and real-looking to the critic
        alpha = batch["alpha"].view(-1, 1)
        interpolated = model.interpolator(c_in, alpha * extracted.detach())
        # departure: Eq. 13's gradient reaches I only (the paper: E and I). E makes the real codes too, so through E
        # every code chased the critic's unbounded scores together and X's pseudo labels drifted (docs/leed.md)
        adversarial = self.generator_adversarial_loss(self.modules["critic"](interpolated))
        interpolation = losses.leed_interpolation(interpolated, c_in, extracted.detach(), batch["alpha"])
        # LEED Eq. 7: the interpolator gives back the input's own code from its own expression
        identity = losses.leed_identity(model.interpolator(c_in, model.extractor(c_ia, c_in).detach()), c_ia)
        # LEED Eq. 9-11: the edit at alpha = 1 (I_B) changes I_N as R_B changes R_N, in S's space (E's codes:
        # Eq. 16 trains E on it; one optimiser, so D, X and I also receive its gradient, a departure)
        edited = model.decoder(model.interpolator(codes["c_in"], codes["expression"]), neutral)
        s_rb, s_rn, s_ib, s_in = model.siamese(torch.cat([batch["reference"], batch["reference_neutral"], edited,
                                                          neutral])).chunk(4)
        siamese = losses.leed_siamese(s_rb, s_rn, s_ib, s_in)
        # LEED Eq. 16 (E), 14 (D), 4 (X, Q), 8 (I) and 11 (S), summed into one step
        loss = (recon["loss"] + expression + train.lambda_q * q + interpolation + identity
                + train.lambda_adv * adversarial + train.lambda_s * siamese)
        return {"loss": loss, "recon_perceptual": recon["perceptual"], "recon_pixel": recon.get("pixel", 0.0),
                "extractor": expression, "q": q, "interpolation": interpolation, "interpolator_identity": identity,
                "latent_adversarial": adversarial, "siamese": siamese}

    def curve_editor(self):
        return LEEDEditor(self.shipped_generator(), TrueRenderNeutraliser())


# --------------------------------------------------------------------------- after training


@torch.no_grad()
def expression_references(model: LEED, size: int | None = None, per_expression: int = 100) -> LEED:
    """Fill ``model``'s reference buffers: for each expression, the training face (rafd, frontal and
    profile) whose extracted expression X(C_RB, C_RN) is nearest the mean over that expression's faces.

    The labels are read here, after training, to pick the stored references (the paper has no such step)."""
    from facelib.data import SynthFaces

    faces = SynthFaces(PRESET, "train", size=size or model.config.image_size, seed=0)
    labels = faces.labels()
    neutraliser = TrueRenderNeutraliser()
    for k, name in enumerate(model.config.expressions):
        index = torch.nonzero(labels["emotion"] == EXPRESSIONS.index(name))
        index = index[:, 0][torch.linspace(0, len(index) - 1, min(per_expression, len(index))).round().long()]
        batch = faces.batch(index)
        neutral = neutraliser.neutral(batch["image"], identity=batch["identity"], yaw=batch["yaw"])
        codes = model.encoder(torch.cat([batch["image"], neutral]))
        expression = model.extractor(*codes.chunk(2))
        nearest = int((expression - expression.mean(0)).norm(dim=1).argmin())
        model.reference_images[k] = batch["image"][nearest]
        model.reference_identity[k] = batch["identity"][nearest]
        model.reference_yaw[k] = batch["yaw"][nearest]
    return model


#: The metrics the recipes record (the issue's floors: expression >= 0.8, identity >= 0.95).
METRIC_KEYS = {
    "expression accuracy (facelib classifier)": "expression_accuracy",
    VERIFICATION_NAME: "identity_verification",
    FD_NAME: "fd_expression_features",
    "SSIM": "ssim",
    "PSNR (whole image, dB)": "psnr_db",
}


@torch.no_grad()
def measure(editor: LEEDEditor, n: int = 256, seed: int = 0, split: str = "test") -> dict[str, float]:
    """The floors' figures on held-out identities: ``reference`` targets (another test person showing the
    target's expression, same pose), through :func:`facelib.evaluation.evaluate`, and the reconstruction check
    (the expression classifier on D(E(I), I_N) of held-out faces)."""
    from facelib.checkpoint import load_pretrained
    from facelib.data import SynthFaces
    from facelib.evaluation import evaluate

    table = evaluate(editor, "reference", preset=PRESET, split=split, n=n, seed=seed, spread=True, progress=False)
    values = {METRIC_KEYS[r.metric]: float(r.value) for r in table.itertuples()
              if r.metric in METRIC_KEYS and math.isfinite(r.value)}
    faces = SynthFaces(PRESET, split, size=editor.image_size, seed=seed)
    batch = faces.batch(torch.linspace(0, len(faces) - 1, min(n, len(faces))).round().long())
    values["reconstruction_expression_accuracy"] = reconstruction_accuracy(editor, batch, load_pretrained("expression_classifier"))
    values["n_test_pairs"] = int(table.n.iloc[0])
    return values


@torch.no_grad()
def reconstruct(editor: LEEDEditor, images: torch.Tensor, identity: torch.Tensor, yaw: torch.Tensor) -> torch.Tensor:
    """D(E(I), I_N): the autoencoder's reconstruction of ``images`` (their neutral faces by the editor's neutraliser)."""
    model = editor.model.eval()
    neutral = editor.neutraliser.neutral(images, identity=identity, yaw=yaw)
    return model.decoder(model.encoder(images), neutral)


def reconstruction_accuracy(editor: LEEDEditor, batch: dict, classifier) -> float:
    """The expression classifier's accuracy on reconstructions of ``batch`` (SynthFaces items): does D(E(I)) keep it?"""
    rebuilt = reconstruct(editor, batch["image"], batch["identity"], batch["yaw"])
    return float((classifier(rebuilt).argmax(1) == batch["emotion"]).float().mean())


CURVE_METRICS = ("expression accuracy (facelib classifier)", VERIFICATION_NAME)
CURVE_PAIRS, CURVE_EVERY = 192, 250
CPU_STEPS = 8_000  # 4,000 of them the autoencoder's warm start
PAPER_STEPS = 4_000
SMOKE_STEPS = 6


def train_leed(name: str, config: LEEDConfig, train: LEEDTrainConfig, *, steps: int | None, seed: int, out_dir,
               device: str, smoke: bool, default_steps: int) -> dict:
    """Train LEED on rafd's training faces with their true neutral faces (the oracle), a learning curve in its
    log (``out_dir/name/log.jsonl``), store the expression references, save and measure it."""
    out_dir = Path(out_dir)
    if smoke:
        dataset = neutral_faces(size=config.image_size, limit=16)
        train = dataclasses.replace(train, autoencoder_steps=min(train.autoencoder_steps, 2))
    else:
        dataset = neutral_faces(identities=train.identities, size=config.image_size, cache=out_dir / "cache")
    total = SMOKE_STEPS if smoke else (default_steps if steps is None else steps)
    curve = LearningCurve(PRESET, "reference", metrics=CURVE_METRICS, n=8 if smoke else CURVE_PAIRS,
                          size=config.image_size, split="val" if smoke else "test")
    task = LEEDTask(config, train, dataset, curve=curve)
    fit = Trainer(task, steps=total, batch_size=4 if smoke else train.batch_size, seed=seed, out_dir=out_dir / name,
                  device=device, log_every=1 if smoke else 50, checkpoint_every=0 if smoke else 1000,
                  validate_every=3 if smoke else CURVE_EVERY * train.n_critic, progress=not smoke).fit()
    model = expression_references(task.shipped_generator().cpu().eval(), per_expression=4 if smoke else 100)
    # the learning curve travels with the checkpoint (notebook 05 draws the shipped models' curves)
    curve = read_log(out_dir / name, kind="val").dropna(axis=1)
    stem = save_model(model, out_dir / name, extra={"dataset": f"SynthFaces({PRESET!r}, 'train') with true neutral renders",
                                                    "learning_curve": curve.to_dict("list")})
    editor = LEEDEditor(model, TrueRenderNeutraliser())
    # 768 pairs: on 256 the accuracy moved by +-4 points between samples (seed 0: 82.4 %, seed 1: 79.7 % on 128)
    metrics = {**measure(editor, n=8 if smoke else 768, seed=seed, split="val" if smoke else "test"),
               "train_seconds": fit.seconds, "generator_updates": task.generator_updates_done(total)}
    return {"checkpoints": {name: stem}, "metrics": {name: metrics}, "preset": PRESET, "steps": total}


def train_recipe(*, steps: int | None, seed: int, out_dir, device: str, smoke: bool) -> dict:
    """Recipe ``leed``: the CPU recipe (:meth:`LEEDTrainConfig.cpu`, the residual decoder), shipped as ``leed``."""
    return train_leed("leed", LEEDConfig.cpu(), LEEDTrainConfig.cpu(), steps=steps, seed=seed, out_dir=out_dir,
                      device=device, smoke=smoke, default_steps=CPU_STEPS)


def train_paper_recipe(*, steps: int | None, seed: int, out_dir, device: str, smoke: bool) -> dict:
    """Recipe ``leed_paper``: the paper as written (D(C) from the code alone, perceptual loss, WGAN-GP, 5 critic steps)."""
    return train_leed("leed_paper", LEEDConfig(decoder="code"), LEEDTrainConfig(), steps=steps, seed=seed,
                      out_dir=out_dir, device=device, smoke=smoke, default_steps=PAPER_STEPS)


def train_no_q_recipe(*, steps: int | None, seed: int, out_dir, device: str, smoke: bool) -> dict:
    """Recipe ``leed_no_q``: Fig. 3's "w/o Q", the CPU recipe without Eq. 3."""
    return train_leed("leed_no_q", LEEDConfig.cpu(), dataclasses.replace(LEEDTrainConfig.cpu(), lambda_q=0.0),
                      steps=steps, seed=seed, out_dir=out_dir, device=device, smoke=smoke, default_steps=CPU_STEPS)


def train_no_s_recipe(*, steps: int | None, seed: int, out_dir, device: str, smoke: bool) -> dict:
    """Recipe ``leed_no_s``: Fig. 3's "w/o S", the CPU recipe without Eq. 11."""
    return train_leed("leed_no_s", LEEDConfig.cpu(), dataclasses.replace(LEEDTrainConfig.cpu(), lambda_s=0.0),
                      steps=steps, seed=seed, out_dir=out_dir, device=device, smoke=smoke, default_steps=CPU_STEPS)
