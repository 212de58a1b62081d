"""GANimation (facelib.models.ganimation, facelib.train.ganimation): shapes, Eq. 1's side, losses, editor, checkpoints."""
from __future__ import annotations

import pytest
import torch

from facelib.conventions import AU_CODES
from facelib.checkpoint import CheckpointError, load_model, load_pretrained, record_in_manifest, save_model
from facelib.editors import Target
from facelib.models.fvae import FVAE, FVAEConfig
from facelib.models.ganimation import (
    GANimationConfig, GANimationCritic, GANimationEditor, GANimationGenerator, compose,
)
from facelib.train import read_log
from facelib.losses import au_regression_loss
from facelib.train.ganimation import GANimationTask, GANimationWeights, other_sample_aus

torch.set_num_threads(1)

TINY = GANimationConfig(image_size=16, base_channels=4, residual_blocks=1, critic_base_channels=4, critic_layers=3)


@pytest.mark.parametrize("config", [GANimationConfig(), TINY], ids=["default", "tiny"])
def test_generator_and_critic_shapes(config):
    size, batch = config.image_size, 2
    images, aus = torch.rand(batch, 3, size, size) * 2 - 1, torch.rand(batch, 17)
    colour, attention = GANimationGenerator(config)(images, aus)
    assert colour.shape == (batch, 3, size, size) and attention.shape == (batch, 1, size, size)
    assert colour.abs().max() <= 1 and 0 <= attention.min() and attention.max() <= 1
    scores, predicted = GANimationCritic(config)(images)
    final = size // 2**config.critic_layers
    assert scores.shape == (batch, 1, final, final) and predicted.shape == (batch, 17)


def test_paper_config_is_the_published_network():
    config = GANimationConfig.paper()
    assert (config.image_size, config.base_channels, config.residual_blocks, config.critic_layers) == (128, 64, 6, 6)
    with torch.device("meta"):  # shapes only: no 128 px forward
        generator, critic = GANimationGenerator(config), GANimationCritic(config)
        colour, attention = generator(torch.empty(1, 3, 128, 128), torch.empty(1, 17))
        scores, predicted = critic(torch.empty(1, 3, 128, 128))
    assert colour.shape == (1, 3, 128, 128) and attention.shape == (1, 1, 128, 128)
    assert scores.shape == (1, 1, 2, 2) and predicted.shape == (1, 17)  # the published 2x2 PatchGAN map
    # The published generator: 7x7 stem 20 -> 64, 64 -> 128 -> 256 down, 6 blocks of 256, up, two 7x7 heads.
    stem = generator.body[0][0]
    assert (stem.in_channels, stem.out_channels, stem.kernel_size) == (3 + 17, 64, (7, 7))
    assert sum(p.numel() for p in generator.parameters()) == 8_471_296  # 63k stem, 655k down, 7.08M residual, 655k up, 13k heads
    assert critic.trunk[-1][0].out_channels == 2048  # 64 * 2**5


def test_composition_weights_the_source_with_attention():
    source, colour = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8)
    assert torch.equal(compose(source, colour, torch.ones(2, 1, 8, 8)), source)  # A = 1: the source exactly
    assert torch.equal(compose(source, colour, torch.zeros(2, 1, 8, 8)), colour)  # A = 0: the colour map


def test_target_aus_come_from_another_sample_with_bounded_noise():
    aus = torch.linspace(0, 1, 6)[:, None].repeat(1, 17)
    targets = other_sample_aus(aus, 0.1, generator=torch.Generator().manual_seed(0))
    assert targets.min() >= 0 and targets.max() <= 1
    nearest = (targets[:, None, :] - aus[None]).abs().amax(-1).argmin(1)  # whose AUs each target is
    assert (nearest != torch.arange(6)).all() and ((targets - aus[nearest]).abs() <= 0.1 + 1e-6).all()


def test_au_loss_is_the_codes_mse_divided_by_the_batch():
    predicted, aus = torch.zeros(4, 17), torch.full((4, 17), 0.5)
    assert au_regression_loss(predicted, aus).item() == pytest.approx(0.25 / 4)


def generator_losses_before_and_after(steps, make_task=None, **weights):
    """A tiny seeded task: generator updates only (critic fixed), the same batch and target AUs.

    ``make_task(**options)``: another AU-conditioned task on 16x16 faces (DFT-Net's tests use it).
    """
    torch.manual_seed(0)
    options = dict(n_critic=1, lr=1e-3, decay_steps=0)
    task = (GANimationTask(TINY, None, weights=GANimationWeights(**weights), **options) if make_task is None
            else make_task(**options))
    task.total_steps = steps
    task.modules, task.optimizers = task.build(torch.device("cpu"))
    task.device = torch.device("cpu")
    generator = torch.Generator().manual_seed(1)
    batch = {"image": torch.rand(4, 3, 16, 16, generator=generator) * 2 - 1,
             "aus": torch.rand(4, 17, generator=generator) * 5}
    losses = []
    batch = task.prepare(batch, 0)  # step 0's target AUs throughout
    for step in range(steps + 1):
        logs = task.generator_step(batch, 0) if step < steps else task.generator_losses(batch, 0)
        losses.append({name: float(torch.as_tensor(value).detach()) for name, value in logs.items()})
    return losses[0], losses[-1]


def test_generator_steps_lower_the_au_loss():
    first, last = generator_losses_before_and_after(40)  # the published weights
    assert last["au"] < 0.9 * first["au"]
    assert 0 < last["attention_mean"] < first["attention_mean"]  # Eq. 3's mean(A) term and the AU term paint


def test_generator_steps_lower_the_cycle_loss():
    # With the published weights the AU term (4000) outweighs the cycle (10) on a random batch and
    # the mask falls, so the cycle term is checked on its own: its gradient must reach both passes.
    first, last = generator_losses_before_and_after(20, au=0.0, attention=0.0, attention_tv=0.0)
    assert last["cycle"] < 0.7 * first["cycle"]


def test_editor_accepts_aus_and_expressions_and_refuses_the_rest():
    editor = GANimationEditor(GANimationGenerator(GANimationConfig()))
    faces = torch.rand(2, 3, 64, 64) * 2 - 1
    result = editor.edit(faces, Target(aus=torch.rand(2, 17) * 5))
    assert result.output.shape == (2, 3, 64, 64) and result.attention.shape == (2, 1, 64, 64)
    assert result.texture.shape == (2, 3, 64, 64) and result.output.abs().max() <= 1
    happy = editor.edit(faces, Target(expression="happy", intensity=0.5))
    assert torch.allclose(editor.target_aus(Target(expression="happy", intensity=0.5), 1),
                          0.5 * editor.expression_aus["happy"][None])
    assert not torch.equal(happy.output, result.output)
    with pytest.raises(ValueError, match="does not accept reference targets"):
        editor.edit(faces, Target(reference=faces))
    with pytest.raises(ValueError, match="64"):
        editor.edit(torch.zeros(1, 3, 32, 32), Target(aus=torch.zeros(17)))
    with pytest.raises(ValueError, match=r"intensities in \[0, 1\]"):
        editor.edit(faces, Target(expression="happy", intensity=1.5))
    with pytest.raises(TypeError, match="GANimationGenerator"):
        GANimationEditor(GANimationCritic())


def test_a_checkpoint_of_another_model_is_refused_under_the_name(tmp_path):
    save_model(FVAE(FVAEConfig()), tmp_path / "ganimation")
    with pytest.raises(CheckpointError, match="holds a facelib.models.fvae.FVAE, not a .*GANimationGenerator"):
        load_model(tmp_path / "ganimation", cls=GANimationGenerator)
    record_in_manifest("ganimation", "ganimation.safetensors", command="python -m facelib train ganimation --ship",
                       preset="emotionet", steps=1, seed=0, wall_time_s=1.0, metrics={}, weights_dir=tmp_path)
    with pytest.raises(CheckpointError, match="names class facelib.models.fvae.FVAE, but 'ganimation' is a "
                                              "facelib.models.ganimation.GANimationGenerator"):
        load_pretrained("ganimation", weights_dir=tmp_path)
    generator = GANimationGenerator(TINY)
    save_model(generator, tmp_path / "real")
    assert torch.equal(load_model(tmp_path / "real", cls=GANimationGenerator).colour_head.weight,
                       generator.colour_head.weight)


@pytest.mark.slow
def test_recipe_smoke_run_returns_the_documented_keys(tmp_path):
    from facelib.recipes import run_recipe

    result = run_recipe("ganimation", out_dir=tmp_path, smoke=True, device="cpu")
    assert set(result["checkpoints"]) == {"ganimation"} and result["preset"] == "emotionet" and result["steps"] == 5
    per_au = {f"au_pcc_AU{code}" for code in AU_CODES}
    metrics = set(result["metrics"]["ganimation"])
    assert metrics - per_au == {"au_pcc", "au_mse", "identity_verification", "psnr_db", "ssim", "fd", "attention_mean",
                                "attention_mean_test", "n_test_pairs", "train_seconds", "generator_updates"}
    assert metrics & per_au  # an AU without variance among 20 smoke pairs has no PCC and is left out
    assert 0 < result["metrics"]["ganimation"]["attention_mean"] < 1
    assert 0 < result["metrics"]["ganimation"]["attention_mean_test"] < 1
    assert isinstance(load_model(result["checkpoints"]["ganimation"]), GANimationGenerator)
    cpu = run_recipe("ganimation_cpu", out_dir=tmp_path, smoke=True, device="cpu")  # the CPU recipe, with its curve
    assert load_model(cpu["checkpoints"]["ganimation_cpu"]).config.residual_colour
    assert "AU PCC (facelib AU regressor)" in read_log(tmp_path / "ganimation_cpu", kind="val").columns


def test_the_cpu_recipes_identity_start_and_keep_loss():
    """attention_start: every mask starts at sigmoid(start), the edit is the source; keep: the change
    outside the landmarks' expression regions, weighted; the AU head's warm-up is Eq. 4 on real faces."""
    from facelib.data import SynthFaces

    config = GANimationConfig(image_size=64, base_channels=4, residual_blocks=1, critic_base_channels=4,
                              attention_start=4.0)
    generator = GANimationGenerator(config)
    faces = SynthFaces("emotionet", "val", size=64).batch(range(3))
    colour, attention = generator(faces["image"], torch.rand(3, 17))
    torch.testing.assert_close(attention, torch.full_like(attention, torch.sigmoid(torch.tensor(4.0)).item()))
    assert generator.attention_head.bias is not None and GANimationGenerator(TINY).attention_head.bias is None
    task = GANimationTask(config, weights=GANimationWeights(keep=10.0), n_critic=1, decay_steps=0,
                          objective="non-saturating", warmup_steps=1)
    task.total_steps = 2
    task.modules, task.optimizers = task.build(torch.device("cpu"))
    task.device = torch.device("cpu")
    batch = task.prepare({key: faces[key] for key in ("image", "aus", "landmarks")}, 0)
    assert batch["keep"].shape == (3, 1, 64, 64) and 0.3 < batch["keep"].mean() < 0.9
    terms = task.generator_losses(batch, 1)
    edit = task.translate(batch["image"], batch["target_aus01"])["output"]
    expected = 10.0 * ((edit - batch["image"]).abs() * batch["keep"]).mean()
    torch.testing.assert_close(terms["keep"], expected)
    _, real_aus = task.modules["critic"](batch["image"])
    torch.testing.assert_close(task.warmup_losses(batch, 0)["loss"],
                               task.weights.au * au_regression_loss(real_aus, batch["aus01"]))
    with pytest.raises(ValueError, match="attention_start must be a number"):
        GANimationConfig(attention_start="high")


@pytest.mark.slow
def test_shipped_ganimation_meets_the_floors_on_a_fresh_held_out_sample():
    """A fresh held-out sample (seed 1; the recipe measured seed 0) reproduces the manifest's figures, and
    they meet the floors; a model shipped below them (recorded as such) is an expected failure, with its figures."""
    import math

    import facelib
    from facelib.editors import editor_info
    from facelib.evaluation import evaluate
    from facelib.pretrained import available_pretrained, pretrained_info

    if "ganimation" not in available_pretrained():
        pytest.skip("ganimation is not shipped yet: python -m facelib train ganimation --ship")
    editor = facelib.load_editor("ganimation")
    table = evaluate(editor, "aus", preset="emotionet", split="test", n=128, seed=1, progress=False,
                     metrics=["AU PCC (facelib AU regressor)", "identity verification (facelib embedder)"])
    measured = dict(zip(table.metric, table.value))
    pcc, identity = measured["AU PCC (facelib AU regressor)"], measured["identity verification (facelib embedder)"]
    recorded = pretrained_info("ganimation")["metrics"]
    assert math.isfinite(pcc) and abs(pcc - recorded["au_pcc"]) <= 0.1, (measured, recorded)
    assert abs(identity - recorded["identity_verification"]) <= 0.1, (measured, recorded)
    if not editor_info("ganimation").meets_floors():
        pytest.xfail(f"ganimation ships below its floors (PCC 0.75, identity 95 %), as recorded: {measured}")
    assert pcc >= 0.75 and identity >= 0.95, measured
    assert 0.05 < recorded["attention_mean_test"] < 0.95, recorded
