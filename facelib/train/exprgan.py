"""ExprGAN training (Ding et al. 2018): Eq. 10 reached through the paper's three-stage incremental training.

"Jointly training all the subnetworks yields poor results" (Sec. "Incremental Training"), so one
run goes through three stages, each a share of the steps (``ExprGANTrainConfig.stages``):

1. **controller learning**: G_dec, Q and D_img on L_Q + L_adv^img; g(x) is random noise U(-1, 1);
2. **image reconstruction**: G_enc and G_dec on L_pixel + L_id + a smaller L_Q (Q keeps training);
3. **image refining**: all of Eq. 10 with D_img and D_z (lambda_1..5 = 1, 1, 0.01, 0.01, 0.001).

Each logged step carries ``stage`` (1, 2, 3) and that stage's terms. Adam 2e-4, betas (0.5, 0.999),
batch 48 (the paper); D_img/Q and D_z update first on a step, then G against the updated critics.
The ablations of the notebook are flags: ``use_q=False`` (no Q anywhere) and ``stagewise=False``
(all of Eq. 10 from the first step); ``ExprGANConfig(controller=False)`` trains the CAAE-style
baseline (L_pixel + L_id + L_adv^z + L_tv with the one-hot label, jointly).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from facelib import losses
from facelib.checkpoint import save_model
from facelib.conventions import EXPRESSIONS
from facelib.data import SynthFaces
from facelib.evaluation.exprgan import calibrate_intensity_order, intensity_table
from facelib.models.evaluators import PerceptualFeatures
from facelib.models.exprgan import CLASSES, ExprGAN, ExprGANConfig, ExprGANCritic, ExprGANEditor, expression_code
from facelib.train.gan import GANTask
from facelib.train.trainer import Trainer

__all__ = ["PRESET", "ExprGANTrainConfig", "ExprGANTask", "class_labels", "measure", "train_recipe",
           "train_caae_recipe", "train_no_q_recipe", "train_joint_recipe"]

PRESET = "oulu"


@dataclass(frozen=True)
class ExprGANTrainConfig:
    """Eq. 10's weights (refining stage, the paper's Implementation Details) and the schedule."""

    lambda_id: float = 1.0  # lambda_1, L_id
    lambda_q: float = 1.0  # lambda_2, L_Q
    lambda_adv_img: float = 0.01  # lambda_3, L_adv^img
    lambda_adv_z: float = 0.01  # lambda_4, L_adv^z
    lambda_tv: float = 0.001  # lambda_5, L_tv
    reconstruction_q: float = 0.1  # stage 2's "decreased weight" of L_Q (the paper gives no number)
    stages: tuple[float, float, float] = (0.3, 0.3, 0.4)  # shares of the steps (the paper gives none)
    lr: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)
    batch_size: int = 48
    flip: bool = True
    use_q: bool = True  # ablation: False drops Q (L_Q) from every stage
    stagewise: bool = True  # ablation: False trains all of Eq. 10 from the first step

    def __post_init__(self) -> None:
        if len(self.stages) != 3 or any(share < 0 for share in self.stages) or abs(sum(self.stages) - 1) > 1e-6:
            raise ValueError(f"stages are the three stages' shares of the steps, >= 0 and summing to 1; got {self.stages}")


#: facelib.EXPRESSIONS index -> class index in CLASSES (-1 for expressions ExprGAN does not know)
_CLASS_OF_EXPRESSION = torch.tensor([CLASSES.index(name) if name in CLASSES else -1 for name in EXPRESSIONS])


def class_labels(emotion: torch.Tensor) -> torch.Tensor:
    """``facelib.EXPRESSIONS`` indices ``[B]`` -> class indices into :data:`CLASSES` (a ValueError names others)."""
    labels = _CLASS_OF_EXPRESSION.to(emotion.device)[emotion.long()]
    if (labels < 0).any():
        other = sorted({EXPRESSIONS[i] for i in emotion[labels < 0].tolist()})
        raise ValueError(f"ExprGAN's classes are {list(CLASSES)}; got {other}")
    return labels


class ExprGANTask(GANTask):
    """The three stages of Eq. 10 on ``SynthFaces("oulu", "train")`` items (``image``, ``emotion``)."""

    generator_name, critic_name = "generator", "critic"

    def __init__(self, config: ExprGANConfig, train: ExprGANTrainConfig, dataset, identity_features=None):
        super().__init__(n_critic=1, lr=train.lr, betas=train.betas, decay_steps=0)
        self.config, self.train, self.dataset = config, train, dataset
        self.identity_features = identity_features  # a frozen feature network (PerceptualFeatures)

    def build_players(self, device):
        if self.identity_features is None:
            self.identity_features = PerceptualFeatures("identity_embedder")
        if isinstance(self.identity_features, torch.nn.Module):
            self.identity_features.to(device)
        return ExprGAN(self.config).to(device), ExprGANCritic(self.config).to(device)

    def stage(self, step: int) -> int:
        """1, 2 or 3: the stage of ``step`` (always 3 without stage-wise training or for the baseline)."""
        if not self.train.stagewise or not self.config.controller:
            return 3
        first, second, _ = self.train.stages
        fraction = step / max(self.total_steps, 1)
        return 1 if fraction < first else 2 if fraction < first + second else 3

    def q_loss(self, code, q_mean):
        """Eq. 5 on the scale of the public code's mean squared error, which lambda_2 was tuned on.

        ``losses.exprgan_q_loss`` is the Gaussian NLL summed over the K*d elements; without its
        constant it is half their squared error, so 2 / (K*d) times it minus the constant is the
        mean squared error. At the NLL's scale (30 times larger) L_Q drowned L_pixel: a
        450-step trial's reconstruction error doubled in the refining stage (0.21 -> 0.41).
        """
        elements = code.shape[1]
        constant = 0.5 * math.log(2 * math.pi) * elements
        # ExprGAN Eq. 5 with unit variance: -log Q = 0.5 ||c - Q(x_hat, y)||^2 + const
        return 2 * (losses.exprgan_q_loss(code, q_mean) - constant) / elements

    def prepare(self, batch, step):
        """Step ``step``'s forward pass, shared by both players: flips, labels, the code, g(x) and x_hat."""
        stage = self.stage(step)
        images = batch["image"]
        if self.train.flip:
            flip = (torch.rand(len(images), device=images.device) < 0.5).view(-1, 1, 1, 1)
            images = torch.where(flip, images.flip(-1), images)
        labels = class_labels(batch["emotion"])
        model = self.unwrap("generator")
        if self.config.controller:
            # ExprGAN Eq. 3: c from the label and z_y ~ U(-1, 1)^d
            code = expression_code(labels, 2 * torch.rand(len(labels), self.config.code_dim, device=images.device) - 1)
        else:
            code = model.label_code(labels)
        if stage == 1:  # controller learning: g(x) is random noise from the prior
            identity = 2 * torch.rand(len(images), self.config.identity_dim, device=images.device) - 1
            generated = model.decode(identity, code)
        else:
            identity = model.encode(images)
            generated = model.decode(identity, code)
        return {"images": images, "labels": labels, "code": code, "generated": generated, "identity": identity,
                "stage": stage, "use_image_critic": self.config.controller and (stage == 1 or stage == 3),
                "use_q": self.config.controller and self.train.use_q}

    def critic_losses(self, batch, step):
        # stage 2 without Q leaves the critics nothing to learn: a loss without gradient, no update
        return self.critic_losses_of(**{**batch, "generated": batch["generated"].detach(),
                                        "identity": batch["identity"].detach()})

    def generator_losses(self, batch, step):
        return {**self.generator_losses_of(**batch), "stage": torch.tensor(float(batch["stage"]))}

    def critic_losses_of(self, images, labels, code, generated, identity, stage, use_image_critic, use_q):
        """D_img (Eq. 9) and Q (Eq. 5) on the detached generated faces; D_z (Eq. 8) in stage 3."""
        critic = self.modules["critic"]
        terms, loss = {}, images.new_zeros(())
        if use_image_critic or use_q:
            # Real and generated faces go through D_img in separate batches, as in the public code: its
            # batch norm then sees a batch of generated faces alone in both players' steps. (One
            # concatenated batch here, measured: D_img told them apart in the mixed batch (loss 0.0008)
            # but not in the generator's all-generated one, whose adversarial loss stayed near 1.)
            fake_logits, fake_q = critic(generated, labels)
        if use_image_critic:
            real_logits, _ = critic(images, labels)
        if use_image_critic or use_q:
            if use_image_critic:
                # ExprGAN Eq. 9 (D_img's side): real (x, y) against generated (x_hat, y)
                terms["d_img"] = losses.exprgan_image_discriminator(real_logits, fake_logits)
                loss = loss + terms["d_img"]
            if use_q:
                # ExprGAN Eq. 5: Q learns to recover c from x_hat (factored unit-variance Gaussian)
                terms["q_critic"] = self.q_loss(code, fake_q)
                loss = loss + terms["q_critic"]
        if stage == 3:
            prior = 2 * torch.rand_like(identity) - 1
            latent_logits = self.unwrap("critic").latent(torch.cat([prior, identity]))
            # ExprGAN Eq. 8 (D_z's side): prior samples z ~ U(-1, 1) against g(x)
            terms["d_z"] = losses.exprgan_latent_discriminator(latent_logits[:len(prior)], latent_logits[len(prior):])
            loss = loss + terms["d_z"]
        terms["loss"] = loss
        return terms

    def generator_losses_of(self, images, labels, code, generated, identity, stage, use_image_critic, use_q):
        """Each stage's part of Eq. 10 for G_enc and G_dec."""
        train, critic = self.train, self.unwrap("critic")
        terms = {}
        if use_image_critic or use_q:
            fake_logits, fake_q = critic(generated, labels)
        if stage == 1:
            # Stage 1: L_Q + L_adv^img
            terms["g_adv_img"] = losses.exprgan_image_generator(fake_logits)
            loss = terms["g_adv_img"]
            if use_q:
                terms["q"] = self.q_loss(code, fake_q)
                loss = loss + terms["q"]
        else:
            # ExprGAN Eq. 6: L_pixel
            terms["pixel"] = losses.exprgan_pixel(generated, images)
            # ExprGAN Eq. 7: L_id on facelib's identity embedder (standing in for VGG-Face)
            terms["identity"] = losses.exprgan_identity(generated, images, self.identity_features)
            loss = terms["pixel"] + train.lambda_id * terms["identity"]
            if use_q:
                terms["q"] = self.q_loss(code, fake_q)
                loss = loss + (train.reconstruction_q if stage == 2 else train.lambda_q) * terms["q"]
            if stage == 3:
                if use_image_critic:
                    terms["g_adv_img"] = losses.exprgan_image_generator(fake_logits)
                    loss = loss + train.lambda_adv_img * terms["g_adv_img"]
                # ExprGAN Eq. 8 (the encoder's side)
                terms["g_adv_z"] = losses.exprgan_latent_encoder(critic.latent(identity))
                terms["tv"] = losses.exprgan_total_variation(generated)
                # ExprGAN Eq. 10: L_pixel + l1 L_id + l2 L_Q + l3 L_adv^img + l4 L_adv^z + l5 L_tv
                loss = loss + train.lambda_adv_z * terms["g_adv_z"] + train.lambda_tv * terms["tv"]
        terms["loss"] = loss
        return terms


# ----------------------------------------------------------------------------------------
# Measurement and the recipes
# ----------------------------------------------------------------------------------------
@torch.no_grad()
def measure(editor: ExprGANEditor, seed: int = 0, smoke: bool = False) -> dict[str, float]:
    """The issue's floors on held-out identities, plus the rest of the protocol's rows."""
    from facelib.checkpoint import load_pretrained
    from facelib.evaluation import evaluate

    split, n = ("val", 24) if smoke else ("test", 144)
    table = evaluate(editor, "expression", preset=PRESET, split=split, n=n, seed=seed, spread=True, progress=False)
    value = dict(zip(table.metric, table.value))
    metrics = {
        "expression_accuracy": value["expression accuracy (facelib classifier)"],
        "identity_verification": value["identity verification (facelib embedder)"],
        "psnr_db": value["PSNR (whole image, dB)"], "ssim": value["SSIM"],
        "fd_expression_features": value["FD (facelib expression features)"], "n_test_pairs": int(table.n.iloc[0]),
    }
    if editor.model.config.controller:
        faces = SynthFaces(preset=PRESET, split=split, size=editor.image_size, seed=seed)
        images = faces.batch(torch.arange(min(len(faces), 36 if smoke else 144)))["image"]
        _, intensity = intensity_table(editor.model, images, load_pretrained("au_regressor"))
        rho = intensity["rho_levels_1_to_d"]
        metrics.update({f"intensity_rho_{name}": float(r) for name, r in rho.items()})
        # rho alone can be high for a tiny but consistent change: the mean rise from level 1 to d (0-5 scale)
        metrics.update({f"intensity_span_{name}": float(v) for name, v in intensity["rise_level_1_to_d"].items()})
        metrics["intensity_rho_classes_at_least_0.8"] = int((rho >= 0.8).sum())
    return metrics


STEPS = 3_000  # 1,397 s measured on 2 CPU cores at batch 48 (0.47 s per step), within the 45-minute budget
SMOKE_STEPS = 6


def _train(config: ExprGANConfig, train: ExprGANTrainConfig, *, name: str, steps, seed, out_dir, device, smoke):
    out_dir = Path(out_dir)
    dataset = SynthFaces(preset=PRESET, split="train", size=config.image_size, seed=0,
                         cache=None if smoke else out_dir / f"{PRESET}_train_{config.image_size}.npz")
    if smoke:
        dataset = torch.utils.data.Subset(dataset, range(12))
    total = SMOKE_STEPS if smoke else (STEPS if steps is None else steps)
    task = ExprGANTask(config, train, dataset)
    Trainer(task, steps=total, batch_size=4 if smoke else train.batch_size, seed=seed, out_dir=out_dir / name,
            device=device, log_every=1 if smoke else 50, progress=not smoke,
            checkpoint_every=0 if smoke else 500).fit()
    return task, total


def train_recipe(*, steps: int | None, seed: int, out_dir, device: str, smoke: bool,
                 train: ExprGANTrainConfig | None = None, name: str = "exprgan") -> dict:
    """Recipe ``exprgan``: the three stages on the oulu training identities, measured on the test identities."""
    from facelib.checkpoint import load_pretrained

    config, train = ExprGANConfig(), train or ExprGANTrainConfig()
    task, total = _train(config, train, name=name, steps=steps, seed=seed, out_dir=out_dir, device=device, smoke=smoke)
    model, critic = task.unwrap("generator").cpu().eval(), task.unwrap("critic").cpu().eval()
    calibration = SynthFaces(preset=PRESET, split="train", size=config.image_size, seed=seed)
    calibrate_intensity_order(model, calibration.batch(torch.arange(0, len(calibration), 12 if smoke else 13))["image"],
                              load_pretrained("au_regressor"))
    stems = {name: save_model(model, Path(out_dir) / f"{name}_model")}
    if name == "exprgan":  # Q (in D_img's trunk) for Fig. 4's transfer; the ablations ship their G only
        stems[f"{name}_critic"] = save_model(critic, Path(out_dir) / f"{name}_critic")
    metrics = measure(ExprGANEditor(model, critic, load_pretrained("expression_classifier"), name=name), seed=seed,
                      smoke=smoke)
    return {"checkpoints": stems, "metrics": {name: metrics}, "preset": PRESET, "steps": total}


def train_caae_recipe(*, steps: int | None, seed: int, out_dir, device: str, smoke: bool) -> dict:
    """Recipe ``exprgan_caae``: the CAAE-style baseline of Fig. 2 (no controller, Q or D_img)."""
    config = ExprGANConfig(controller=False)
    train = ExprGANTrainConfig()
    task, total = _train(config, train, name="exprgan_caae", steps=steps, seed=seed, out_dir=out_dir, device=device,
                         smoke=smoke)
    model = task.unwrap("generator").cpu().eval()
    stem = save_model(model, Path(out_dir) / "exprgan_caae_model")
    metrics = measure(ExprGANEditor(model, name="exprgan_caae"), seed=seed, smoke=smoke)
    return {"checkpoints": {"exprgan_caae": stem}, "metrics": {"exprgan_caae": metrics}, "preset": PRESET,
            "steps": total}


def train_no_q_recipe(*, steps: int | None, seed: int, out_dir, device: str, smoke: bool) -> dict:
    """Recipe ``exprgan_no_q`` (ablation): the three stages without Q."""
    return train_recipe(steps=steps, seed=seed, out_dir=out_dir, device=device, smoke=smoke,
                        train=replace(ExprGANTrainConfig(), use_q=False), name="exprgan_no_q")


def train_joint_recipe(*, steps: int | None, seed: int, out_dir, device: str, smoke: bool) -> dict:
    """Recipe ``exprgan_joint`` (ablation): all of Eq. 10 from the first step, no stages."""
    return train_recipe(steps=steps, seed=seed, out_dir=out_dir, device=device, smoke=smoke,
                        train=replace(ExprGANTrainConfig(), stagewise=False), name="exprgan_joint")
