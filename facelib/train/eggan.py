"""EGGAN training (Tang et al. 2020): Eq. 1-7 on the ``rafd`` preset with its 17 AU intensities.

The data are pairs of one training person in one pose, ``SynthFaces("rafd", "train", pairs=True)``:
the source I_i with its AUs u_i, and a second face of the same person whose AUs are the target u_t
(the paper: the AUs of another training image). One training step (:class:`EGGANTask`, on
:class:`facelib.train.gan.GANTask`):

- the critics' player: D_z separates prior samples z ~ N(0, I) from codes E(I_i) (Eq. 1), D_img real faces
  from edits G(E(I_i) | u_t) (Eq. 2), and C_exp learns the AU intensity levels of real faces (Eq. 3),
  with its own learning rate (the paper: 2e-4 against 1e-4);
- the generator's player (E and G): Eq. 7, the sum of both adversarial terms, lambda_exp Eq. 3 on the edit,
  lambda_id Eq. 4 through the frozen C_id, lambda_per Eq. 5 on the edit and the self-reconstruction
  G(E(I_i) | u_i), and lambda_rec Eq. 6 on the self-reconstruction.

C_id is trained first, on the training identities (:func:`train_identity_classifier`), and frozen (Sec. 3.3).
Labels are the true AUs by default; ``labels="regressor"`` trains on the AU regressor's readings of the two
faces instead, as the paper trained on OpenFace's.

Recipes: ``eggan_paper`` (the paper as written: WGAN-GP with lambda_gp 20 and its penalty at real faces, a
critic step per generator step as the paper gives no other number, lr 1e-4, the image-painting G) and
``eggan`` (the CPU recipe, shipped), whose departures are the lines of :meth:`EGGANTrainConfig.cpu` and
:meth:`facelib.models.eggan.EGGANConfig.cpu`; ``eggan_regressor_labels`` is the CPU recipe on the AU
regressor's labels.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from facelib import losses
from facelib.checkpoint import save_model
from facelib.conventions import AU_MAX
from facelib.evaluation.curves import LearningCurve
from facelib.metrics import FD_NAME, VERIFICATION_NAME, ms_ssim_per_image
from facelib.models.eggan import PRESET, EGGAN, EGGANClassifier, EGGANConfig, EGGANCritics, EGGANEditor
from facelib.models.evaluators import PerceptualFeatures
from facelib.train.gan import GANTask
from facelib.train.trainer import Trainer, read_log

__all__ = ["EGGANTrainConfig", "EGGANTask", "train_identity_classifier", "measure", "train_eggan", "train_recipe",
           "train_paper_recipe", "train_regressor_labels_recipe", "CPU_STEPS", "PAPER_STEPS", "LABELS"]

#: Where the AU labels of training come from: the renderer's truth, or the AU regressor's readings.
LABELS = ("true", "regressor")


@dataclass
class EGGANTrainConfig:
    """Loss weights and optimisation. Defaults: the paper (Sec. 4.1): lambda_exp 100, lambda_id 60, lambda_per 20,
    lambda_rec 100, lambda_gp 20; Adam 1e-4 (C_exp 2e-4), the rates decaying linearly over the second half;
    batch 8; WGAN-GP (Eq. 2). The paper gives no critic steps per generator step: one."""

    lambda_exp: float = 100.0  # Eq. 7, on Eq. 3 (the edit's AU levels through C_exp)
    lambda_id: float = 60.0  # Eq. 7, on Eq. 4 (the frozen C_id)
    lambda_per: float = 20.0  # Eq. 7, on Eq. 5
    lambda_rec: float = 100.0  # Eq. 7, on Eq. 6 (L1 + (1 - MS-SSIM) of the self-reconstruction)
    lambda_gp: float = 20.0  # Eq. 2's gradient penalty
    lambda_target: float = 0.0  # departure (CPU recipe): Eq. 6 of the edit against the true render of u_t
    change_weight: float = 0.0  # departure (CPU recipe): the target's L1 weighs 1 + this where the face changes
    lambda_adv: float = 1.0  # the adversarial terms of Eq. 7 (1: the paper)
    lr: float = 1e-4
    classifier_lr: float = 2e-4  # C_exp's (Sec. 4.1)
    betas: tuple[float, float] = (0.5, 0.999)  # the public code's
    objective: str = "wgan-gp"
    n_critic: int = 1
    r1_weight: float = 0.0
    ema_decay: float | None = None
    batch_size: int = 8
    labels: str = "true"  # or "regressor": the AU regressor's readings, as the paper's OpenFace labels
    identity_steps: int = 600  # C_id's pre-training steps on the training identities
    warmup_steps: int = 0  # a warm start: C_exp first learns Eq. 3 on real faces alone (E, G and the critics wait)
    translator_steps: int = 0  # a warm start of E and G on Eq. 5, 6 and the target term alone (the critics wait)

    def __post_init__(self) -> None:
        if self.labels not in LABELS:
            raise ValueError(f"EGGANTrainConfig.labels must be one of {list(LABELS)}, got {self.labels!r}")

    @classmethod
    def cpu(cls) -> "EGGANTrainConfig":
        """The CPU recipe (``python -m facelib train eggan``): each departure from the paper, one per line."""
        return cls(
            lambda_exp=10.0, lambda_id=50.0, lambda_per=10.0,  # departure: the public code's weights (paper: 100, 60, 20)
            lambda_target=100.0,  # departure: the edit is also compared (Eq. 6) with the true render of u_t
            change_weight=9.0,  # departure: that L1 weighs 10x on the pixels the expression changes
            objective="non-saturating", r1_weight=1.0,  # departure: NS loss + lazy R1 (docs/gan_training.md)
            betas=(0.0, 0.99),  # departure: StarGAN v2's Adam betas
            ema_decay=0.999,  # departure: the EMA of E and G is measured and shipped
            lr=2e-4, classifier_lr=4e-4,  # departure: both rates doubled for the CPU budget
            warmup_steps=400,  # departure: C_exp first learns the real faces' AU levels alone (a warm start)
            translator_steps=1600,  # departure: then E and G learn Eq. 5, 6 and the target term alone (a warm start)
        )


def train_identity_classifier(config: EGGANConfig, steps: int = 600, seed: int = 0, progress: bool = True,
                              limit: int | None = None) -> tuple[EGGANClassifier, torch.Tensor]:
    """C_id (Sec. 3.3): the classifier architecture trained on rafd's training identities, then frozen.

    Returns the classifier and the renderer ids of its classes (class k is ``ids[k]``).
    """
    from facelib.data import SynthFaces
    from facelib.train.classifier import train_classifier

    faces = SynthFaces(PRESET, "train", size=config.image_size, seed=0)
    count = len(faces) if limit is None else min(limit, len(faces))
    batch = faces.batch(range(count))
    ids = torch.tensor(faces.identities, dtype=torch.long)
    labels = (batch["identity"].long()[:, None] == ids[None, :]).long().argmax(1)
    torch.manual_seed(seed)
    classifier = EGGANClassifier(config, outputs=len(ids))
    train_classifier(classifier, batch["image"], labels, steps=steps, batch_size=64, lr=1e-3, seed=seed,
                     desc="C_id (identity classifier)", progress=progress)
    return classifier.eval().requires_grad_(False), ids


class EGGANTask(GANTask):
    """EGGAN Eq. 1-7: the generator player is :class:`EGGAN` (E, G), the critic :class:`EGGANCritics` (D_img, D_z, C_exp).

    ``dataset`` yields SynthFaces pairs (``source``, ``target``, ``source_aus``, ``target_aus``, ``identity``);
    ``identity_classifier`` is the frozen C_id with ``identity_ids`` (its classes' renderer ids);
    ``perceptual`` the feature network of Eq. 5 (default: :class:`PerceptualFeatures` on the shipped identity
    embedder, standing in for VGG19).
    """

    def __init__(self, config: EGGANConfig, train: EGGANTrainConfig, dataset=None, *, identity_classifier=None,
                 identity_ids: torch.Tensor | None = None, perceptual=None, curve=None):
        super().__init__(objective=train.objective, n_critic=train.n_critic, lr=train.lr, betas=train.betas,
                         gp_weight=train.lambda_gp, r1_weight=train.r1_weight, ema_decay=train.ema_decay,
                         warmup_steps=train.warmup_steps)
        if identity_classifier is None or identity_ids is None:
            raise ValueError("EGGANTask needs the frozen C_id and its classes' identities: "
                             "identity_classifier, identity_ids = train_identity_classifier(config)")
        self.config, self.train, self.dataset, self.curve = config, train, dataset, curve
        self.identity_classifier, self.identity_ids, self.perceptual = identity_classifier, identity_ids, perceptual

    def build_players(self, device):
        from facelib.checkpoint import load_pretrained

        if self.perceptual is None:  # phi_3 of Eq. 5 (the paper: VGG19's third layer)
            self.perceptual = PerceptualFeatures(load_pretrained("identity_embedder", device=device))
        self.perceptual = self.perceptual.to(device)
        self.identity_classifier = self.identity_classifier.to(device).eval().requires_grad_(False)
        self.identity_ids = self.identity_ids.to(device)
        # the AU regressor: the labels of labels="regressor", and the editor's reader of a source's AUs (Eq. 8)
        self.au_regressor = load_pretrained("au_regressor", device=device).eval().requires_grad_(False)
        return EGGAN(self.config).to(device), EGGANCritics(self.config).to(device)

    def build(self, device):
        modules, optimizers = super().build(device)
        # C_exp has its own learning rate (Sec. 4.1: 2e-4 against 1e-4): a second parameter group
        critics = modules[self.critic_name]
        classifier = list(critics.classifier.parameters())
        others = [p for name, p in critics.named_parameters() if not name.startswith("classifier.")]
        optimizers[self.critic_name] = torch.optim.Adam(
            [{"params": others, "lr": self.critic_lr}, {"params": classifier, "lr": self.train.classifier_lr}],
            betas=self.betas)
        self.schedulers[self.critic_name] = torch.optim.lr_scheduler.LambdaLR(
            optimizers[self.critic_name], lambda step: self.lr_factor(step))
        return modules, optimizers

    def prepare(self, batch, step):
        source, target = batch["source"], batch["target"]
        if self.train.labels == "regressor":  # the paper's OpenFace labels: the AUs as an instrument reads them
            with torch.no_grad():
                source_aus, target_aus = self.au_regressor(torch.cat([source, target])).clamp(0, AU_MAX).chunk(2)
        else:
            source_aus, target_aus = batch["source_aus"].float(), batch["target_aus"].float()
        identity = (batch["identity"].long()[:, None] == self.identity_ids[None, :].to(source.device)).long().argmax(1)
        prepared = {"source": source, "target": target, "source_aus": source_aus, "target_aus": target_aus,
                    "identity": identity}
        if self.train.change_weight:
            changed = ((target - source).abs().amax(1, keepdim=True) > 0.02).float()
            prepared["change"] = F.max_pool2d(changed, 5, stride=1, padding=2)  # [B, 1, H, W], dilated
        return prepared

    def warmup_losses(self, batch, step):
        # the warm start: EGGAN Eq. 3 (C_exp's side) alone, on real faces
        return {"loss": losses.eggan_au_intensity(self.unwrap(self.critic_name).expression(batch["source"]),
                                                  batch["source_aus"])}

    def translating(self, step: int) -> bool:
        """Whether ``step`` belongs to E's and G's warm start (after C_exp's): Eq. 5, 6 and the target term alone."""
        return self.warmup_steps <= step < self.warmup_steps + self.train.translator_steps

    def critic_losses(self, batch, step):
        if self.translating(step):
            return {"loss": torch.zeros((), device=batch["source"].device)}  # no gradient: the critics' step is skipped
        source, critics = batch["source"], self.modules[self.critic_name]
        model = self.unwrap(self.generator_name)
        with torch.no_grad():  # no gradient into E and G here
            code, maps = model.encode(source)
            fake = model.generate(code, batch["target_aus"] / AU_MAX, maps, source)
        # EGGAN Eq. 2 (critic side)
        real_scores, fake_scores = self.critic_outputs(source, fake)
        if self.objective == "wgan-gp":
            # the paper's "soft" penalty, at real faces
            penalty = losses.gradient_penalty(self.plain_scores(), source)
            terms = {"loss": losses.eggan_image_critic(real_scores, fake_scores, penalty, self.gp_weight),
                     "critic_real": real_scores.mean(), "critic_fake": fake_scores.mean(), "gradient_penalty": penalty}
        else:
            terms = self.adversarial_terms(real_scores, fake_scores, source, fake, step)
        plain = self.unwrap(self.critic_name)
        # EGGAN Eq. 1 (D_z's side): prior samples z ~ N(0, I) against the codes E(I_i)
        prior = torch.randn_like(code)
        terms["latent_critic"] = losses.eggan_latent_discriminator(plain.latent(prior), plain.latent(code))
        # EGGAN Eq. 3 (C_exp's side): the AU intensity levels of the real face
        terms["classifier_real"] = losses.eggan_au_intensity(plain.expression(source), batch["source_aus"])
        terms["loss"] = terms["loss"] + terms["latent_critic"] + terms["classifier_real"]
        return terms

    def generator_losses(self, batch, step):
        train, critics = self.train, self.unwrap(self.critic_name)
        source = batch["source"]
        plain = self.unwrap(self.generator_name)
        code, maps = plain.encode(source)
        edited = plain.generate(code, batch["target_aus"] / AU_MAX, maps, source)  # I_t = G(E(I_i) | u_t)
        rebuilt = plain.generate(code, batch["source_aus"] / AU_MAX, maps, source)  # I_i_hat = G(E(I_i) | u_i)
        # EGGAN Eq. 1 (E's side): the codes should pass for prior samples
        if self.translating(step):
            return self.translator_losses(batch, edited, rebuilt)
        latent = losses.eggan_latent_encoder(critics.latent(code))
        # EGGAN Eq. 2 (G's side)
        fake_scores = self.modules[self.critic_name](edited)
        adversarial = (losses.eggan_image_generator(fake_scores) if self.objective == "wgan-gp"
                       else self.generator_adversarial_loss(fake_scores))
        # EGGAN Eq. 3 (G's side): C_exp should read u_t's intensity levels on the edit
        expression = losses.eggan_au_intensity(critics.expression(edited), batch["target_aus"])
        # EGGAN Eq. 4: the frozen C_id should still recognise the person
        identity = losses.eggan_identity(self.identity_classifier(edited), batch["identity"])
        # EGGAN Eq. 5: phi_3 of the edit and of the reconstruction against the source's
        perceptual = losses.eggan_perceptual(edited, rebuilt, source, self.perceptual)
        # EGGAN Eq. 6: L1 + (1 - MS-SSIM) of the self-reconstruction
        reconstruction = losses.eggan_reconstruction(rebuilt, source)
        terms = {"latent_adversarial": latent, "adversarial": adversarial, "expression": expression,
                 "identity": identity, "perceptual": perceptual, "reconstruction": reconstruction}
        # EGGAN Eq. 7: L_adv^z + L_adv^img + lambda_exp L_exp + lambda_id L_id + lambda_per L_per + lambda_rec L_rec
        loss = (train.lambda_adv * (latent + adversarial) + train.lambda_exp * expression + train.lambda_id * identity
                + train.lambda_per * perceptual + train.lambda_rec * reconstruction)
        if train.lambda_target:
            terms["target"] = self.target_term(batch, edited)
            loss = loss + train.lambda_target * terms["target"]
        return {"loss": loss, **terms}

    def target_term(self, batch, edited):
        """Departure (CPU recipe): the edit against the true render of u_t (same person and pose), Eq. 6's terms
        with the L1 weighted up where the expression changes the face."""
        weight = 1 + self.train.change_weight * batch["change"] if "change" in batch else 1
        pixel = ((edited - batch["target"]).abs() * weight).mean()
        return pixel + 1 - ms_ssim_per_image(edited, batch["target"]).mean()

    def translator_losses(self, batch, edited, rebuilt):
        """E's and G's warm start (CPU recipe): Eq. 5, Eq. 6 and the target term, without the critics."""
        train = self.train
        terms = {"perceptual": losses.eggan_perceptual(edited, rebuilt, batch["source"], self.perceptual),
                 "reconstruction": losses.eggan_reconstruction(rebuilt, batch["source"]),
                 "target": self.target_term(batch, edited)}
        loss = (train.lambda_per * terms["perceptual"] + train.lambda_rec * terms["reconstruction"]
                + train.lambda_target * terms["target"])
        return {"loss": loss, **terms}

    def curve_editor(self):
        return EGGANEditor(self.shipped_generator(), self.au_regressor)


# --------------------------------------------------------------------------- measurement and recipes

#: The rows of facelib.evaluation.evaluate the recipes record, and their keys in the manifest.
METRIC_KEYS = {"AU PCC (facelib AU regressor)": "au_pcc", "AU MSE (facelib AU regressor)": "au_mse",
               VERIFICATION_NAME: "identity_verification", "PSNR (whole image, dB)": "psnr_db", "SSIM": "ssim",
               "MS-SSIM": "ms_ssim", FD_NAME: "fd"}


@torch.no_grad()
def measure(editor: EGGANEditor, n: int = 512, seed: int = 0, split: str = "test") -> dict[str, float]:
    """The floors' figures on held-out identities: ``aus`` targets (the true AUs of the same test person's other
    expression) through :func:`facelib.evaluation.evaluate` on ``n`` pairs spread over rafd's test people:
    AU PCC and MSE (the AU regressor on the edits against u_t), identity verification, PSNR, SSIM and MS-SSIM
    against the true render of u_t, FD; and each AU's PCC (``au_pcc_AU1`` ... ``au_pcc_AU45``)."""
    from facelib.checkpoint import load_pretrained
    from facelib.evaluation import au_table, held_out_pairs, run_editor
    from facelib.evaluation.protocol import measure as measure_rows, resolve_evaluators

    pairs = held_out_pairs(PRESET, split, editor.image_size, n, seed=seed, spread=True, progress=False)
    bundle = run_editor(editor, "aus", pairs, progress=False)
    found, missing = resolve_evaluators(None)
    bundle = dataclasses.replace(bundle, evaluators=found, missing=missing)
    values = {METRIC_KEYS[r["metric"]]: float(r["value"]) for r in measure_rows(bundle, list(METRIC_KEYS))
              if r["metric"] in METRIC_KEYS and math.isfinite(r["value"])}
    per_au = au_table(bundle, load_pretrained("au_regressor"))
    values.update({f"au_pcc_{au}": float(pcc) for au, pcc in per_au["PCC"].iloc[:-1].items() if math.isfinite(pcc)})
    values["n_test_pairs"] = pairs.count
    return values


CURVE_METRICS = ("AU PCC (facelib AU regressor)", VERIFICATION_NAME)
CURVE_PAIRS, CURVE_EVERY = 192, 250
CPU_STEPS = 5_000  # 400 of them C_exp's warm start, 1,600 E's and G's
PAPER_STEPS = 5_000
SMOKE_STEPS = 4


def train_eggan(name: str, config: EGGANConfig, train: EGGANTrainConfig, *, steps: int | None, seed: int, out_dir,
                device: str, smoke: bool, default_steps: int) -> dict:
    """Pre-train C_id, train EGGAN on rafd's training pairs with a learning curve in its log
    (``out_dir/name/log.jsonl``, also stored in the checkpoint's ``extra``), save E and G, and measure them."""
    from facelib.checkpoint import load_pretrained
    from facelib.data import SynthFaces

    out_dir = Path(out_dir)
    identity_classifier, ids = train_identity_classifier(config, steps=5 if smoke else train.identity_steps,
                                                         seed=seed, progress=not smoke, limit=64 if smoke else None)
    pairs = SynthFaces(PRESET, "train", size=config.image_size, pairs=True, seed=0)
    dataset = torch.utils.data.Subset(pairs, range(8)) if smoke else pairs
    total = SMOKE_STEPS if smoke else (default_steps if steps is None else steps)
    if smoke:
        train = dataclasses.replace(train, warmup_steps=min(train.warmup_steps, 1))
    curve = LearningCurve(PRESET, "aus", metrics=CURVE_METRICS, n=8 if smoke else CURVE_PAIRS,
                          size=config.image_size, split="val" if smoke else "test")
    task = EGGANTask(config, train, dataset, identity_classifier=identity_classifier, identity_ids=ids, curve=curve)
    fit = Trainer(task, steps=total, batch_size=4 if smoke else train.batch_size, seed=seed, out_dir=out_dir / name,
                  device=device, log_every=1 if smoke else 50, checkpoint_every=0 if smoke else 1000,
                  validate_every=2 if smoke else CURVE_EVERY, progress=not smoke).fit()
    model = task.shipped_generator().cpu().eval()
    curve_log = read_log(out_dir / name, kind="val").dropna(axis=1)
    stem = save_model(model, out_dir / name, extra={
        "dataset": f"SynthFaces({PRESET!r}, 'train', pairs=True), {train.labels} AU labels",
        "learning_curve": curve_log.to_dict("list")})
    editor = EGGANEditor(model, load_pretrained("au_regressor"))
    metrics = {**measure(editor, n=8 if smoke else 512, seed=seed, split="val" if smoke else "test"),
               "train_seconds": fit.seconds, "generator_updates": task.generator_updates_done(total)}
    return {"checkpoints": {name: stem}, "metrics": {name: metrics}, "preset": PRESET, "steps": total}


def train_recipe(*, steps: int | None, seed: int, out_dir, device: str, smoke: bool) -> dict:
    """Recipe ``eggan`` (shipped): the CPU recipe (:meth:`EGGANConfig.cpu`, :meth:`EGGANTrainConfig.cpu`)."""
    return train_eggan("eggan", EGGANConfig.cpu(), EGGANTrainConfig.cpu(), steps=steps, seed=seed, out_dir=out_dir,
                       device=device, smoke=smoke, default_steps=CPU_STEPS)


def train_paper_recipe(*, steps: int | None, seed: int, out_dir, device: str, smoke: bool) -> dict:
    """Recipe ``eggan_paper``: the paper as written (G paints the face from E's code; WGAN-GP, lambda_gp 20)."""
    return train_eggan("eggan_paper", EGGANConfig(), EGGANTrainConfig(), steps=steps, seed=seed, out_dir=out_dir,
                       device=device, smoke=smoke, default_steps=PAPER_STEPS)


def train_regressor_labels_recipe(*, steps: int | None, seed: int, out_dir, device: str, smoke: bool) -> dict:
    """Recipe ``eggan_regressor_labels``: the CPU recipe on the AU regressor's labels (the paper's OpenFace labels)."""
    return train_eggan("eggan_regressor_labels", EGGANConfig.cpu(),
                       dataclasses.replace(EGGANTrainConfig.cpu(), labels="regressor"), steps=steps, seed=seed,
                       out_dir=out_dir, device=device, smoke=smoke, default_steps=CPU_STEPS)
