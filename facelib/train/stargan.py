"""StarGAN training (Choi et al. 2018) on the ``rafd`` preset's eight emotions: Eq. 1-5 with WGAN-GP, recipe."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from facelib.checkpoint import save_model
from facelib.conventions import EMOTIONS
from facelib.data import SynthFaces
from facelib.data.presets import get_preset
from facelib.evaluation.curves import LearningCurve
from facelib.metrics import VERIFICATION_NAME
from facelib.models.stargan import StarGANConfig, StarGANCritic, StarGANEditor, StarGANGenerator
from facelib.data.synth import expression_region_mask
from facelib.train.gan import GANTask, diff_augment
from facelib.train.trainer import Trainer

PRESET = "rafd"
#: First renderer id of the extra training people (no preset uses ids from here to 3,000,000).
POOL_OFFSET = 2_500_000


@dataclass
class StarGANTrainConfig:
    """StarGAN's loss weights and optimisation: the defaults are the paper's schedule (its public code;
    docs/reference_notes.md), :meth:`cpu` the CPU recipe, whose departures are listed there one per line."""

    lambda_cls: float = 1.0
    lambda_rec: float = 10.0
    lambda_gp: float = 10.0
    n_critic: int = 5
    lr: float = 2e-4  # StarGAN's code: 1e-4; doubled to reach the floors in the 45-minute CPU budget
    critic_lr: float | None = None  # None: the same as lr
    betas: tuple[float, float] = (0.5, 0.999)
    batch_size: int = 16
    flip: bool = True  # StarGAN's random horizontal flip
    objective: str = "wgan-gp"  # facelib.train.gan.OBJECTIVES
    r1_weight: float = 0.0  # gamma of R1 (non-saturating and hinge only)
    ema_decay: float | None = None  # a moving average of G's weights, the one measured and shipped
    augment: str = ""  # DiffAugment's policy on every critic input ("colour", "colour,translation"; "": none)
    lambda_keep: float = 0.0  # L1 of the change outside the expression regions of the landmarks
    classifier_warmup: int = 0  # critic steps that pre-train its domain head on real images first
    identities: int | None = None  # training identities (None: the rafd preset's 50)

    @classmethod
    def cpu(cls) -> "StarGANTrainConfig":
        """The CPU recipe (``python -m facelib train stargan``): each departure from the paper, one per line."""
        return cls(
            n_critic=1,  # departure: one critic step per generator step (paper: 5)
            objective="non-saturating", r1_weight=1.0,  # departure: NS loss + lazy R1, as StarGAN v2 (paper: WGAN-GP)
            betas=(0.0, 0.99),  # departure: StarGAN v2's Adam betas (paper: 0.5, 0.999)
            ema_decay=0.999,  # departure: the EMA generator is shipped (StarGAN v2)
            augment="colour",  # departure: DiffAugment colour on every critic input (translation: measured, no)
            lambda_keep=10.0,  # departure: changes outside the landmarks' expression regions cost L1
            classifier_warmup=1500,  # departure: the critic's domain head starts as a trained classifier
        )


class StarGANTask(GANTask):
    """Eq. 5: L_D = -L_adv + lambda_cls L_cls^r and L_G = L_adv + lambda_cls L_cls^f + lambda_rec L_rec.

    Items: ``image``, ``emotion`` (the source domain) and ``landmarks``. The target domain of each
    image is drawn uniformly from the eight once per step (StarGAN shuffles the batch's labels),
    with the flips, and both players see them (:meth:`prepare`). ``validate`` measures the
    (moving-average) generator on ``curve``, a :class:`facelib.evaluation.LearningCurve`, if given.
    """

    def __init__(self, config: StarGANConfig, train: StarGANTrainConfig, dataset, curve=None):
        super().__init__(objective=train.objective, n_critic=train.n_critic,
                         lr=(train.lr, train.critic_lr or train.lr), betas=train.betas, gp_weight=train.lambda_gp,
                         r1_weight=train.r1_weight, ema_decay=train.ema_decay, warmup_steps=train.classifier_warmup)
        self.config, self.train, self.dataset, self.curve = config, train, dataset, curve

    def build_players(self, device):
        return StarGANGenerator(self.config).to(device), StarGANCritic(self.config).to(device)

    def prepare(self, batch, step):
        """``image`` (flipped at random), ``source`` and ``target`` domains, ``keep``: where changes cost."""
        images = batch["image"]
        keep = None
        if self.train.lambda_keep:
            keep = 1 - expression_region_mask(batch["landmarks"].float(), images.shape[-1])  # [B, 1, S, S]
        if self.train.flip:
            flip = (torch.rand(len(images), device=images.device) < 0.5).view(-1, 1, 1, 1)
            images = torch.where(flip, images.flip(-1), images)
            keep = None if keep is None else torch.where(flip, keep.flip(-1), keep)
        source = batch["emotion"].long()
        target = torch.randint(self.config.num_domains, source.shape, device=images.device)
        return {"image": images, "source": source, "target": target, "keep": keep}

    def critic_view(self, images):
        """What the critic sees: the images, through DiffAugment when the recipe augments."""
        return diff_augment(images, self.train.augment) if self.train.augment else images

    def _labels(self, domains):
        return F.one_hot(domains, self.config.num_domains).float()

    def warmup_losses(self, batch, step):
        # the warm start: StarGAN Eq. 2 alone, the domain head learns to classify real images
        _, logits = self.modules["critic"](self.critic_view(batch["image"]))
        return {"loss": F.cross_entropy(logits, batch["source"]),
                "critic_accuracy": (logits.argmax(1) == batch["source"]).float().mean()}

    def critic_losses(self, batch, step):
        images, source, target = batch["image"], batch["source"], batch["target"]
        with torch.no_grad():
            fake = self.modules["generator"](images, self._labels(target))
        real_view, fake_view = self.critic_view(images), self.critic_view(fake)
        (real_scores, real_logits), fake_outputs = self.critic_outputs(real_view, fake_view)
        fake_scores = fake_outputs[0]
        # a per-domain critic judges each image as a member of its domain: the real one's own, the fake's target
        real_scores = StarGANCritic.domain_scores(real_scores, source)
        fake_scores = StarGANCritic.domain_scores(fake_scores, target)
        # StarGAN Eq. 1 in its WGAN-GP form (Sec. 4): E[D(G(x, c))] - E[D(x)] + lambda_gp GP (or the CPU objective)
        terms = self.adversarial_terms(real_scores, fake_scores, real_view, fake_view, step,
                                       scores_of=lambda out: StarGANCritic.domain_scores(out[0], source))
        # StarGAN Eq. 2: D learns to classify real images into their own domain c'
        terms["critic_domain"] = F.cross_entropy(real_logits, source)
        if self.config.fake_class:
            # departure (CPU recipe): the domain head names the generated faces as the extra class
            _, fake_logits = fake_outputs
            generated = torch.full_like(target, self.config.num_domains)
            terms["critic_domain"] = terms["critic_domain"] + F.cross_entropy(fake_logits, generated)
        # StarGAN Eq. 5 (for D): L_D = -L_adv + lambda_cls L_cls^r
        terms["loss"] = terms["loss"] + self.train.lambda_cls * terms["critic_domain"]
        terms["critic_accuracy"] = (real_logits.argmax(1) == source).float().mean()
        return terms

    def generator_losses(self, batch, step):
        images, source, target = batch["image"], batch["source"], batch["target"]
        generator = self.modules["generator"]
        fake = generator(images, self._labels(target))
        scores, logits = self.modules["critic"](self.critic_view(fake))
        # StarGAN Eq. 1 (for G): -E[D(G(x, c))] (or the CPU objective's)
        adversarial = self.generator_adversarial_loss(StarGANCritic.domain_scores(scores, target))
        # StarGAN Eq. 3: G's edits must be classified as the target domain c
        domain = F.cross_entropy(logits, target)
        # StarGAN Eq. 4: reconstruction, || x - G(G(x, c), c') ||_1
        cycle = (images - generator(fake, self._labels(source))).abs().mean()
        # StarGAN Eq. 5 (for G): L_G = L_adv + lambda_cls L_cls^f + lambda_rec L_rec
        loss = adversarial + self.train.lambda_cls * domain + self.train.lambda_rec * cycle
        terms = {"generator_adversarial": adversarial, "generator_domain": domain, "cycle": cycle}
        if batch["keep"] is not None:
            # departure (CPU recipe): the change outside the expression regions, L1 (mean over the image)
            terms["keep"] = ((fake - images).abs() * batch["keep"]).mean()
            loss = loss + self.train.lambda_keep * terms["keep"]
        return {"loss": loss, **terms}

    def curve_editor(self):
        return StarGANEditor(self.shipped_generator())


CPU_STEPS = 4_000  # the CPU recipe's steps (one critic and one generator update each)
STEPS = 8_000  # critic steps (1,600 generator steps): ~0.3 s per step on 2 idle CPU cores, about 42 min
SMOKE_STEPS = 10


@torch.no_grad()
def measure(editor: StarGANEditor, n: int = 256, seed: int = 0) -> dict[str, float]:
    """The floors of the issue on held-out identities: the protocol's rows, and the neutraliser's accuracy."""
    from facelib import load_pretrained
    from facelib.evaluation import evaluate

    # spread: rafd's pairs run person by person (280 each), so the first n would all be one person
    table = evaluate(editor, "expression", preset=PRESET, split="test", n=n, seed=seed, spread=True, progress=False)
    value = dict(zip(table.metric, table.value))
    faces = SynthFaces(preset=PRESET, split="test", size=editor.image_size, seed=seed)
    singles = faces.batch(torch.linspace(0, len(faces) - 1, min(n, len(faces))).round().long())
    expressive = singles["emotion"] != EMOTIONS.index("neutral")
    from facelib.editors import Target

    neutral = editor.edit(singles["image"][expressive], Target(expression="neutral")).output
    classifier = load_pretrained("expression_classifier")
    predicted = classifier(neutral).argmax(1)
    return {
        "expression_accuracy": value["expression accuracy (facelib classifier)"],
        "identity_verification": value["identity verification (facelib embedder)"],
        "neutraliser_accuracy": float((predicted == EMOTIONS.index("neutral")).float().mean()),
        "psnr_db": value["PSNR (whole image, dB)"], "ssim": value["SSIM"],
        "fd_expression_features": value["FD (facelib expression features)"],
        "n_test_pairs": int(table.n.iloc[0]),
    }


#: The learning curve's sample and rows: 192 held-out rafd pairs (12 test identities), measured every
#: ``CURVE_EVERY`` generator updates.
CURVE_METRICS = ("expression accuracy (facelib classifier)", VERIFICATION_NAME)
CURVE_PAIRS, CURVE_EVERY = 192, 100


def learning_curve(smoke: bool = False) -> LearningCurve:
    """StarGAN's learning curve: expression accuracy and identity on held-out pairs (rafd test identities)."""
    return LearningCurve(PRESET, "expression", metrics=CURVE_METRICS, n=8 if smoke else CURVE_PAIRS,
                         split="val" if smoke else "test")


def training_faces(identities: int | None = None, size: int = 64, cache: Path | None = None) -> torch.utils.data.Dataset:
    """rafd's training faces (50 people); ``identities`` > 50 adds people rendered like rafd's but from
    another range of renderer ids, disjoint from every rafd split (the test identities stay rafd's own).

    ``cache``: a folder; the faces are rendered once into ``.npz`` files there (rendering on the fly
    takes as long as a training step on two cores)."""
    def stored(name):
        return None if cache is None else Path(cache) / f"{name}_train_{size}.npz"

    faces = SynthFaces(preset=PRESET, split="train", size=size, seed=0, cache=stored(PRESET))
    if identities is None or identities == len(faces.identities):
        return faces
    if not isinstance(identities, int) or identities < len(faces.identities):
        raise ValueError(f"identities must be None or an int >= {len(faces.identities)} (rafd's training people), "
                         f"got {identities!r}")
    pool = dataclasses.replace(get_preset(PRESET), name=f"{PRESET}_pool", identity_offset=POOL_OFFSET,
                               identities={"train": identities - len(faces.identities), "val": 0, "test": 0})
    extra = SynthFaces(preset=pool, split="train", size=size, seed=0, cache=stored(f"{pool.name}{identities}"))
    return torch.utils.data.ConcatDataset([faces, extra])


def train_stargan(name: str, config: StarGANConfig, train: StarGANTrainConfig, *, steps: int | None, seed: int,
                  out_dir, device: str, smoke: bool, default_steps: int) -> dict:
    """Train StarGAN on rafd's training identities with ``train``'s schedule, a learning curve in its log
    (``out_dir/name/log.jsonl``, ``"val"`` lines), save the (moving-average) generator, measure it."""
    out_dir = Path(out_dir)
    if smoke:
        dataset = torch.utils.data.Subset(SynthFaces(preset=PRESET, split="train", size=config.image_size), range(32))
        train = dataclasses.replace(train, classifier_warmup=min(train.classifier_warmup, 2))
    else:
        dataset = training_faces(train.identities, config.image_size, cache=out_dir / "cache")
    total = SMOKE_STEPS if smoke else (default_steps if steps is None else steps)
    task = StarGANTask(config, train, dataset, curve=learning_curve(smoke))
    every = 2 if smoke else CURVE_EVERY * train.n_critic
    fit = Trainer(task, steps=total, batch_size=4 if smoke else train.batch_size, seed=seed, out_dir=out_dir / name,
                  device=device, log_every=1 if smoke else 50, checkpoint_every=0 if smoke else 500,
                  validate_every=every, progress=not smoke).fit()
    generator = task.shipped_generator().cpu().eval()
    stem = save_model(generator, out_dir / f"{name}_generator")
    metrics = {**measure(StarGANEditor(generator), n=8 if smoke else 256, seed=seed), "train_seconds": fit.seconds,
               "generator_updates": task.generator_updates_done(total)}
    return {"checkpoints": {name: stem}, "metrics": {name: metrics}, "preset": PRESET, "steps": total}


def train_recipe(*, steps: int | None, seed: int, out_dir, device: str, smoke: bool) -> dict:
    """Recipe ``stargan``: the CPU recipe (:meth:`StarGANTrainConfig.cpu`), shipped as ``stargan``."""
    return train_stargan("stargan", StarGANConfig.cpu(), StarGANTrainConfig.cpu(), steps=steps, seed=seed,
                         out_dir=out_dir, device=device, smoke=smoke, default_steps=CPU_STEPS)


def train_paper_recipe(*, steps: int | None, seed: int, out_dir, device: str, smoke: bool) -> dict:
    """Recipe ``stargan_paper``: the paper's schedule (WGAN-GP, 5 critic steps per generator step)."""
    return train_stargan("stargan_paper", StarGANConfig(), StarGANTrainConfig(), steps=steps, seed=seed,
                         out_dir=out_dir, device=device, smoke=smoke, default_steps=STEPS)
