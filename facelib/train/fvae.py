"""FVAE training (Yeh et al. 2016, Sec. 5.2 and 5.4): data preparation, Eq. 1, Eq. 7-8, recipes."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from facelib import losses
from facelib.checkpoint import save_model
from facelib.conventions import EXPRESSIONS
from facelib.data import SynthFaces
from facelib.models.baselines import AverageFlow, AverageFlowEditor
from facelib.evaluation.fvae import table1, true_latent_editor
from facelib.models.fvae import PRESET, FVAE, ConfidenceNet, FVAEConfig, PixelVAE
from facelib.train.trainer import Trainer, TrainingTask

# ----------------------------------------------------------------------------------------
# Data preparation (Sec. 5.2)
# ----------------------------------------------------------------------------------------
# Reinhard et al. 2001's colour space: RGB -> LMS -> log10 -> l-alpha-beta (decorrelated axes).
_RGB_TO_LMS = torch.tensor([[0.3811, 0.5783, 0.0402], [0.1967, 0.7244, 0.0782], [0.0241, 0.1288, 0.8444]])
_LOG_LMS_TO_LAB = torch.diag(torch.tensor([3.0, 6.0, 2.0]).rsqrt()) @ torch.tensor(
    [[1.0, 1.0, 1.0], [1.0, 1.0, -2.0], [1.0, -1.0, 0.0]]
)


def _mix(matrix: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    return torch.einsum("ij,bjhw->bihw", matrix.to(images), images)


def reinhard_color_transfer(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Sec. 5.2 (the paper's [25], Reinhard et al. 2001): move the colours of S toward T.

    Each image pair's l-alpha-beta channels of the source get the target's mean and standard
    deviation; images ``[B, 3, H, W]`` in ``[-1, 1]``; returns the adjusted source, clamped.
    """
    if source.shape != target.shape:
        raise ValueError(f"source and target must have the same shape, got {list(source.shape)} and {list(target.shape)}")
    eps = 1e-3  # keeps log10 finite on black pixels

    def to_lab(images):
        lms = _mix(_RGB_TO_LMS, (images + 1) / 2).clamp_min(eps)
        return _mix(_LOG_LMS_TO_LAB, torch.log10(lms))

    src, tgt = to_lab(source), to_lab(target)
    src_mean, src_std = src.mean((2, 3), keepdim=True), src.std((2, 3), keepdim=True)
    tgt_mean, tgt_std = tgt.mean((2, 3), keepdim=True), tgt.std((2, 3), keepdim=True)
    matched = (src - src_mean) * (tgt_std / src_std.clamp_min(1e-6)) + tgt_mean
    lms = 10 ** _mix(torch.linalg.inv(_LOG_LMS_TO_LAB), matched)
    rgb = _mix(torch.linalg.inv(_RGB_TO_LMS), lms)
    return (rgb * 2 - 1).clamp(-1, 1)


def random_horizontal_flip(*images: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, ...]:
    """Sec. 5.2's augmentation: flip each pair (same decision for S and T) with probability 1/2."""
    flip = torch.rand(len(images[0]), generator=generator) < 0.5
    flip = flip.to(images[0].device).view(-1, 1, 1, 1)
    return tuple(torch.where(flip, x.flip(-1), x) for x in images)


class ExpressionPairs(torch.utils.data.Dataset):
    """Sec. 5.2's training pairs: every ordered (S, T) pair of expressions of each identity.

    Built from a single-image dataset (``SynthFaces(..., pairs=False)``): its images are rendered
    once, then pairs are indexed, so an epoch costs no rendering. Training needs no true flow;
    evaluation uses ``SynthFaces(..., pairs=True)``, which has it. Items: ``source``, ``target``
    ``[3, S, S]``, ``identity``, ``source_emotion``, ``target_emotion``.
    """

    def __init__(self, singles, batch_size: int = 128, progress: bool = True):
        loader = torch.utils.data.DataLoader(singles, batch_size=batch_size, shuffle=False)
        parts = [(b["image"], b["identity"], b["emotion"])
                 for b in tqdm(loader, desc="rendering training images", disable=not progress)]
        self.images = torch.cat([p[0] for p in parts])  # [N, 3, S, S]
        self.identity = torch.cat([p[1] for p in parts])  # [N]
        self.emotion = torch.cat([p[2] for p in parts])  # [N]
        same = (self.identity[:, None] == self.identity[None, :]) & ~torch.eye(len(self.identity), dtype=torch.bool)
        self.pairs = same.nonzero()  # [P, 2] (source index, target index)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitems__(self, indices) -> list[dict[str, torch.Tensor]]:
        pairs = self.pairs[torch.as_tensor(indices, dtype=torch.long)]
        return [{"source": self.images[i], "target": self.images[j], "identity": self.identity[i],
                 "source_emotion": self.emotion[i], "target_emotion": self.emotion[j]} for i, j in pairs.tolist()]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.__getitems__([index])[0]


# ----------------------------------------------------------------------------------------
# Training (Sec. 5.4): Eq. 1 for the FVAE and the pixel VAE, then Eq. 7-8 for the mask network
# ----------------------------------------------------------------------------------------
@dataclass
class FVAETrainConfig:
    """Sec. 5.4's optimisation settings (CPU batch size; the paper uses 64)."""

    lambda_prior: float = 0.003  # lambda_1 of Eq. 1
    lambda_flow: float = 0.001  # lambda_2 of Eq. 1
    coherence_alpha: float = 10.0  # alpha of Eq. 6 (the paper does not give it)
    lr: float = 3e-4
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 5.0  # clipping by value at +-5
    color_transfer: bool = True
    flip: bool = True
    confidence_beta: float | None = None  # beta of Eq. 7; None: the losses module's default


class _EarlyStoppingTask(TrainingTask):
    """One Adam step on ``losses(...)["loss"]`` with gradients clipped by value (Sec. 5.4), and
    the validation of early stopping (Sec. 5.4): the losses on a fixed held-out batch, logged as
    ``val_<name>``. ``_fit`` gives the Trainer ``early_stopping="val_loss"``, which keeps the
    weights of the lowest ``val_loss`` (through resumes too); those are what ships.
    """

    module_name = "model"

    def __init__(self, train: FVAETrainConfig, dataset, val_batch: dict[str, torch.Tensor]):
        self.train, self.dataset, self.val_batch = train, dataset, val_batch

    def losses(self, module, source: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError  # each task defines its objective

    def augment(self, source: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Sec. 5.2: horizontal flips of each pair."""
        return random_horizontal_flip(source, target) if self.train.flip else (source, target)

    def training_step(self, batch, step):
        source, target = self.augment(batch["source"], batch["target"])
        module = self.modules[self.module_name]
        terms = self.losses(module, source, target)
        optimizer = self.optimizers["adam"]
        optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        torch.nn.utils.clip_grad_value_(module.parameters(), self.train.grad_clip)
        optimizer.step()
        return {name: value.detach() for name, value in terms.items()}

    def validate(self, step):
        module = self.unwrap(self.module_name)
        batch = {k: v.to(self.device) for k, v in self.val_batch.items()}
        terms = self.losses(module, batch["source"], batch["target"])
        return {f"val_{name}": float(value) for name, value in terms.items()}


class FVAETrainingTask(_EarlyStoppingTask):
    """Eq. 1: L = L_reconstruct + lambda_1 L_prior + lambda_2 L_flow, for the FVAE or the pixel VAE
    (which has no flow, so no L_flow)."""

    def __init__(self, model_class, config: FVAEConfig, train: FVAETrainConfig, dataset, val_batch: dict[str, torch.Tensor]):
        super().__init__(train, dataset, val_batch)
        self.model_class, self.config = model_class, config

    def build(self, device):
        model = self.model_class(self.config).to(device)
        return {"model": model}, {"adam": torch.optim.Adam(model.parameters(), lr=self.train.lr, betas=self.train.betas)}

    def augment(self, source, target):
        if self.train.color_transfer:
            # Sec. 5.2: colour transfer of S toward T (Reinhard et al.), before flipping the pair.
            source = reinhard_color_transfer(source, target)
        return super().augment(source, target)

    def losses(self, model, source, target):

        out = model(source, target)
        terms = {
            # FVAE Eq. 4: reconstruction of T from S
            "reconstruct": losses.fvae_reconstruction(out["output"], target),
            # FVAE Eq. 3: KL divergence of the posterior from N(0, I)
            "prior": losses.fvae_kl(out["mu"], out["logvar"]),
        }
        if "flow" in out:
            # FVAE Eq. 6: flow coherence, 7x7 neighbourhood, bilateral weights on the target's colours
            terms["flow"] = losses.fvae_flow_coherence(out["flow"], target, alpha=self.train.coherence_alpha, window=7)
        # FVAE Eq. 1: L = L_reconstruct + lambda_1 L_prior + lambda_2 L_flow
        terms["loss"] = (terms["reconstruct"] + self.train.lambda_prior * terms["prior"]
                         + self.train.lambda_flow * terms.get("flow", 0.0))
        return terms


class ConfidenceTrainingTask(_EarlyStoppingTask):
    """Sec. 3.2: train M(S, Z(T)) on the frozen FVAE's errors with Eq. 7 labels and Eq. 8 cross-entropy."""

    module_name = "mask"

    def __init__(self, fvae: FVAE, train: FVAETrainConfig, dataset, val_batch: dict[str, torch.Tensor]):
        super().__init__(train, dataset, val_batch)
        self.fvae = fvae

    def build(self, device):
        self.fvae.to(device).eval().requires_grad_(False)
        mask_net = ConfidenceNet(self.fvae.config).to(device)
        return {"mask": mask_net}, {"adam": torch.optim.Adam(mask_net.parameters(), lr=self.train.lr, betas=self.train.betas)}

    def losses(self, mask_net, source, target):

        with torch.no_grad():
            z = self.fvae.latent(target)
            output = self.fvae.decode(source, z)["output"]
            beta = {} if self.train.confidence_beta is None else {"beta": self.train.confidence_beta}
            # FVAE Eq. 7: y = exp(-||T - g(S, Z(T))||^2 / beta), per pixel
            label = losses.fvae_confidence_label(output, target, **beta)
        # FVAE Eq. 8: per-pixel binary cross-entropy between M(S, Z(T)) and y
        loss = losses.fvae_confidence_loss(mask_net(source, z), label)
        return {"loss": loss, "label_mean": label.mean()}


# ----------------------------------------------------------------------------------------
# Algorithm 1, lines 2-3: the expression latents the editor needs, stored with the checkpoint
# ----------------------------------------------------------------------------------------
LATENTS_PER_EXPRESSION = 200


@torch.no_grad()
def expression_latents(model, dataset, *, max_per_expression: int = LATENTS_PER_EXPRESSION, batch_size: int = 64,
                       progress: bool = True) -> dict[str, torch.Tensor]:
    """Algorithm 1, lines 2-3: the average latent Z(I) of the labelled training images of each expression.

    ``dataset`` yields items with ``image`` and ``emotion`` (index into ``facelib.EXPRESSIONS``),
    e.g. ``SynthFaces(..., pairs=False)``; the first ``max_per_expression`` images of each label
    are averaged. Returns ``{name: [C, h, w]}`` in ``facelib.EXPRESSIONS`` order.
    """

    was_training = model.training
    model.eval()
    sums: dict[int, torch.Tensor] = {}
    counts: dict[int, int] = {}
    expected = len(getattr(dataset, "expressions", ())) or None  # stop early once every label is full
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    for batch in tqdm(loader, desc="expression latents", disable=not progress):
        emotions = torch.as_tensor(batch["emotion"]).long()
        z = model.latent(batch["image"])  # [B, C, h, w]
        for label in emotions.unique().tolist():
            selected = z[emotions == label][:max_per_expression - counts.get(label, 0)]
            if len(selected):
                sums[label] = sums.get(label, 0) + selected.sum(0)
                counts[label] = counts.get(label, 0) + len(selected)
        if expected and len(counts) >= expected and min(counts.values()) >= max_per_expression:
            break
    model.train(was_training)
    if not counts:
        raise ValueError("expression_latents found no images: is the dataset empty?")
    return {EXPRESSIONS[label]: sums[label] / counts[label] for label in sorted(counts)}


def latents_for_checkpoint(latents: dict[str, torch.Tensor]) -> dict:
    """The JSON form of the latents in a checkpoint's ``extra`` (read back by ``facelib.models.fvae``)."""
    shape = list(next(iter(latents.values())).shape)
    return {"shape": shape, "values": {name: z.flatten().tolist() for name, z in latents.items()},
            "per_expression": LATENTS_PER_EXPRESSION, "dataset": f"SynthFaces({PRESET!r}, 'train', size=64)"}


def training_latents(model, smoke: bool = False) -> dict:
    """Expression latents of ``model`` over the preset's training images, ready for ``save_model(extra=...)``."""

    singles = SynthFaces(preset=PRESET, split="train", size=model.config.image_size, seed=0)
    count = 2 if smoke else LATENTS_PER_EXPRESSION
    return latents_for_checkpoint(expression_latents(model, singles, max_per_expression=count, progress=False))


# ----------------------------------------------------------------------------------------
# Recipes: `python -m facelib train fvae` (FVAE + confidence network), `... fvae_pixel_vae`
# ----------------------------------------------------------------------------------------
FVAE_STEPS = 1500  # shipped run: about 20 min on one busy CPU core
MASK_STEPS = 300
PIXEL_VAE_STEPS = 1500
BATCH_SIZE = 32  # the paper's 64 halved for CPU
SMOKE_STEPS = 4


def _pairs(split: str, size: int):
    """Held-out pairs of the multipie preset with their true flow and visible mask."""

    return SynthFaces(preset=PRESET, split=split, size=size, pairs=True, seed=0)


def _training_pairs(size: int, smoke: bool) -> ExpressionPairs:
    """All expression pairs per identity of the multipie training identities (Sec. 5.2)."""

    singles = SynthFaces(preset=PRESET, split="train", size=size, seed=0)
    if smoke:
        singles = torch.utils.data.Subset(singles, range(12))  # two identities
    return ExpressionPairs(singles)


def _first_items(dataset, count: int) -> dict[str, torch.Tensor]:
    """The first ``count`` items of a dataset, collated into one batch."""
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, range(min(count, len(dataset)))),
                                         batch_size=count, shuffle=False)
    return next(iter(loader))


def _fit(task, *, steps: int, seed: int, out_dir, device: str, smoke: bool, name: str):
    """Run a task with facelib's Trainer, validating 20 times; returns its module with the weights of
    the lowest validation loss (the Trainer's early stopping, Sec. 5.4) and the ``FitResult``."""

    trainer = Trainer(task, steps=steps, batch_size=4 if smoke else BATCH_SIZE, seed=seed, out_dir=out_dir / name,
                      device=device, log_every=1 if smoke else 10, validate_every=max(1, steps // 20),
                      checkpoint_every=0, early_stopping="val_loss")
    result = trainer.fit()
    return task.unwrap(task.module_name).eval(), result


def _best_step(result) -> int:
    """The step of the best validation, -1 when no validation loss was finite (the last weights ship)."""
    return -1 if result.best_step is None else result.best_step


def _steps(default: int, steps: int | None, smoke: bool) -> int:
    return SMOKE_STEPS if smoke else (default if steps is None else steps)


def train_recipe(*, steps: int | None, seed: int, out_dir, device: str, smoke: bool) -> dict:
    """Recipe ``fvae``: the FVAE with Eq. 1, then its confidence network with Eq. 7-8 (FVAE frozen)."""

    out_dir = Path(out_dir)
    size = FVAEConfig().image_size
    train_set = _training_pairs(size, smoke)
    val_batch = _first_items(_pairs("val", size), 8 if smoke else 128)
    schedule = FVAETrainConfig()
    fvae_steps = _steps(FVAE_STEPS, steps, smoke)
    fvae_task = FVAETrainingTask(FVAE, FVAEConfig(), schedule, train_set, val_batch)
    fvae, fvae_fit = _fit(fvae_task, steps=fvae_steps, seed=seed, out_dir=out_dir, device=device, smoke=smoke,
                          name="fvae")
    mask_steps = _steps(MASK_STEPS, None if steps is None else max(1, steps // 5), smoke)
    mask_task = ConfidenceTrainingTask(fvae, schedule, train_set, val_batch)
    mask_net, mask_fit = _fit(mask_task, steps=mask_steps, seed=seed, out_dir=out_dir, device=device, smoke=smoke,
                              name="mask")
    fvae_stem = save_model(fvae.cpu(), out_dir / "fvae", extra={"best_val_step": _best_step(fvae_fit),
                                                                 "expression_latents": training_latents(fvae, smoke)})
    mask_stem = save_model(mask_net.cpu(), out_dir / "fvae_confidence", extra={"best_val_step": _best_step(mask_fit)})
    table = table1([true_latent_editor(fvae)], mask_net=mask_net, split="val" if smoke else "test", n=8 if smoke else 256)
    metrics = {row.method: row for row in table.itertuples()}
    fvae_row, conf_row = metrics["FVAE (true latent)"], metrics["FVAE + confidence (true latent, 2 sources)"]
    return {
        "checkpoints": {"fvae": fvae_stem, "fvae_confidence": mask_stem},
        "metrics": {
            "fvae": {"psnr_visible_db": float(fvae_row.psnr_visible_db), "psnr_db": float(fvae_row.psnr_db),
                     "flow_epe_visible_px": float(fvae_row.flow_epe_visible_px), "n_test_pairs": table.attrs["n"]},
            "fvae_confidence": {"psnr_visible_db": float(conf_row.psnr_visible_db), "psnr_db": float(conf_row.psnr_db)},
        },
        "preset": PRESET,
        "steps": fvae_steps + mask_steps,
    }


def train_pixel_vae_recipe(*, steps: int | None, seed: int, out_dir, device: str, smoke: bool) -> dict:
    """Recipe ``fvae_pixel_vae``: the paper's "VAE" baseline, trained with Eq. 1 minus the flow term."""

    out_dir = Path(out_dir)
    size = FVAEConfig().image_size
    val_batch = _first_items(_pairs("val", size), 8 if smoke else 128)
    total = _steps(PIXEL_VAE_STEPS, steps, smoke)
    task = FVAETrainingTask(PixelVAE, FVAEConfig(), FVAETrainConfig(), _training_pairs(size, smoke), val_batch)
    model, fit = _fit(task, steps=total, seed=seed, out_dir=out_dir, device=device, smoke=smoke, name="pixel_vae")
    stem = save_model(model.cpu(), out_dir / "fvae_pixel_vae", extra={"best_val_step": _best_step(fit),
                                                                      "expression_latents": training_latents(model, smoke)})
    table = table1([true_latent_editor(model)], split="val" if smoke else "test", n=8 if smoke else 256)
    row = next(table[table.method == "Pixel VAE (true latent)"].itertuples())
    return {
        "checkpoints": {"fvae_pixel_vae": stem},
        "metrics": {"fvae_pixel_vae": {"psnr_visible_db": float(row.psnr_visible_db), "psnr_db": float(row.psnr_db),
                                       "sharpness": float(row.sharpness)}},
        "preset": PRESET,
        "steps": total,
    }




def train_average_flow_recipe(*, steps: int | None, seed: int, out_dir, device: str, smoke: bool) -> dict:
    """Recipe ``average_flow``: Sec. 6.1's baseline, the training pairs' average true flow per expression pair.

    No optimisation: "training" is one averaging pass over every 31st multipie training pair
    (every identity, expression pair and yaw is represented). ``steps`` is ignored.
    """

    train_pairs = SynthFaces(preset=PRESET, split="train", size=FVAEConfig().image_size, pairs=True, seed=0)
    subset = torch.utils.data.Subset(train_pairs, range(0, len(train_pairs), 31))
    average = AverageFlow.fit(subset, max_pairs=64 if smoke else 4000)
    stem = save_model(average, Path(out_dir) / "average_flow", extra={"pairs_averaged": min(len(subset), 64 if smoke else 4000)})
    table = table1([AverageFlowEditor(average)], split="val" if smoke else "test", n=8 if smoke else 256)
    row = next(table[table.method == "Average flow of the expression pair (Sec. 6.1)"].itertuples())
    return {
        "checkpoints": {"average_flow": stem},
        "metrics": {"average_flow": {"psnr_db": float(row.psnr_db), "psnr_visible_db": float(row.psnr_visible_db),
                                     "n_test_pairs": table.attrs["n"]}},
        "preset": PRESET,
        "steps": 0,
    }
