"""EGGAN (Tang et al. 2020): the networks at the CPU and paper sizes, Eq. 1-8, one training step, the editor, floors."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from facelib.conventions import AU_MAX
from facelib.data import SynthFaces
from facelib.editors import Target, editor_info
from facelib.models.eggan import EGGAN, EGGANClassifier, EGGANConfig, EGGANCritics, EGGANEditor
from facelib.models.evaluators import AURegressor
from facelib.pretrained import available_pretrained, pretrained_info
from facelib.train.eggan import EGGANTask, EGGANTrainConfig

torch.set_num_threads(1)

TINY = dict(image_size=32, encoder_channels=(4, 8, 8), latent_dim=8, generator_channels=(8, 8, 4, 4),
            latent_critic_hidden=(8, 4), critic_channels=(4, 8), classifier_channels=(4, 8))


def _inputs(size: int, batch: int = 2, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, size, size, generator=generator) * 2 - 1, torch.rand(batch, 17, generator=generator)


@pytest.mark.parametrize("config", [EGGANConfig(), EGGANConfig.cpu(), EGGANConfig.paper()], ids=["paper_nets_64", "cpu", "paper_128"])
def test_shapes_of_e_g_and_the_critics(config):
    size = config.image_size
    images, aus01 = _inputs(size)
    model, critics = EGGAN(config).eval(), EGGANCritics(config).eval()
    with torch.no_grad():
        code, maps = model.encode(images)
        assert code.shape == (2, config.latent_dim)
        assert [m.shape[-1] for m in maps] == [size // 2**(i + 1) for i in range(5)]  # five stride-2 convs
        out = model(images, aus01)
        assert out.shape == (2, 3, size, size) and out.abs().max() <= 1
        assert critics(images).shape == (2,) and critics.latent(code).shape == (2,)
        assert critics.expression(images).shape == (2, 17, 6)  # Eq. 3: 17 AUs x (m + 1) levels, m = 5
    assert EGGANClassifier(config, outputs=50)(images).shape == (2, 50)  # C_id: one architecture with C_exp
    if size == 128:  # the published sizes: latent 512, D_z 256-128-64-32-16-1, D_img six stride-2 convs
        assert config.latent_dim == 512 and len(config.critic_channels) == 6
        widths = [layer.out_features for layer in critics.latent_critic.net if isinstance(layer, torch.nn.Linear)]
        assert widths == [256, 128, 64, 32, 16, 1]


def test_the_cpu_generator_starts_as_the_identity_mapping_and_the_papers_paints_a_face():
    images, aus01 = _inputs(32)
    with torch.no_grad():
        torch.testing.assert_close(EGGAN(EGGANConfig(**TINY, skips=True, output="residual", film=True))(images, aus01),
                                   images)
        painted = EGGAN(EGGANConfig(**TINY))(images, aus01)
    assert not torch.allclose(painted, images)


def test_bad_configs_and_inputs_are_refused():
    with pytest.raises(ValueError, match="divisible by 2\\*\\*5"):
        EGGANConfig(image_size=48)
    with pytest.raises(ValueError, match="generator_channels needs 6 entries"):
        EGGANConfig(generator_channels=(8, 4))
    with pytest.raises(ValueError, match="output must be 'image'"):
        EGGANConfig(output="flow")
    with pytest.raises(ValueError, match="labels must be one of"):
        EGGANTrainConfig(labels="openface")
    model = EGGAN(EGGANConfig(**TINY, skips=True, output="residual"))
    images, aus01 = _inputs(32)
    code, maps = model.encode(images)
    with pytest.raises(ValueError, match="AUs must be \\[B=2, 17\\]"):
        model.generate(code, aus01[:, :5], maps, images)
    with pytest.raises(ValueError, match="reads the source faces"):
        model.generate(code, aus01, maps)
    with pytest.raises(ValueError, match="needs the frozen C_id"):
        EGGANTask(EGGANConfig(**TINY), EGGANTrainConfig())


def _tiny_task(train: EGGANTrainConfig, config: EGGANConfig) -> tuple[EGGANTask, dict]:
    pairs = SynthFaces("rafd", "train", size=32, pairs=True, seed=0)
    ids = torch.tensor(pairs.identities, dtype=torch.long)
    identity_classifier = EGGANClassifier(config, outputs=len(ids)).eval().requires_grad_(False)
    perceptual = lambda x: [x, torch.nn.functional.avg_pool2d(x, 2), torch.nn.functional.avg_pool2d(x, 4)]  # noqa: E731
    task = EGGANTask(config, train, identity_classifier=identity_classifier, identity_ids=ids)
    task.perceptual = type("Features", (torch.nn.Module,), {"forward": lambda self, x: perceptual(x)})()
    task.total_steps = 10
    task.modules, task.optimizers = task.build(torch.device("cpu"))
    batch = task.prepare(pairs.batch(range(0, 40, 10)), 0)
    return task, batch


@pytest.mark.parametrize("recipe", ["paper", "cpu"])
def test_one_step_of_eq_7_trains_every_part(recipe):
    cpu = recipe == "cpu"
    config = EGGANConfig(**TINY, skips=cpu, output="residual" if cpu else "image", film=cpu)
    train = dataclasses.replace(EGGANTrainConfig.cpu(), warmup_steps=0, translator_steps=0) if cpu else EGGANTrainConfig()
    task, batch = _tiny_task(train, config)
    if cpu:  # trained: no longer the zero start of the change head
        torch.nn.init.normal_(task.modules["generator"].generator_head.weight, std=0.01)
    assert batch["identity"].tolist() == [0, 0, 0, 0] and batch["target_aus"].shape == (4, 17)
    critic = task.critic_losses(batch, 0)
    assert {"latent_critic", "classifier_real", "critic_real", "critic_fake"} <= set(critic)
    assert ("gradient_penalty" in critic) == (not cpu)  # the paper's WGAN-GP, penalty at real faces
    critic["loss"].backward()
    critics = task.modules["critic"]
    for part in ("image_trunk", "latent_critic", "classifier"):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in getattr(critics, part).parameters()), part
    critics.zero_grad()
    terms = task.generator_losses(batch, 0)
    for name in ("latent_adversarial", "adversarial", "expression", "identity", "perceptual", "reconstruction"):
        assert math.isfinite(float(terms[name].detach())), name
    assert ("target" in terms) == cpu
    terms["loss"].backward()
    model = task.modules["generator"]
    for part in ("encoder_convs", "encoder_fc", "generator_fc", "generator_blocks", "generator_head"):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in getattr(model, part).parameters()), part
    if cpu:  # FiLM: the AUs' scale and shift of G's instance norms learn
        assert all(block.film.weight.grad.abs().sum() > 0 for block in model.generator_blocks)
    assert all(p.grad is None for p in task.identity_classifier.parameters())  # C_id is frozen (Sec. 3.3)


def test_the_cpu_recipes_warm_starts_train_c_exp_then_e_and_g_alone():
    config = EGGANConfig(**TINY, skips=True, output="residual", film=True)
    train = dataclasses.replace(EGGANTrainConfig.cpu(), warmup_steps=2, translator_steps=3)
    task, batch = _tiny_task(train, config)
    warm = task.warmup_losses(batch, 0)
    assert set(warm) == {"loss"} and warm["loss"].requires_grad  # Eq. 3 on real faces, C_exp alone
    assert [task.translating(step) for step in range(6)] == [False, False, True, True, True, False]
    assert not task.critic_losses(batch, 2)["loss"].requires_grad  # the critics' step is skipped
    assert set(task.generator_losses(batch, 2)) == {"loss", "perceptual", "reconstruction", "target"}
    assert "adversarial" in task.generator_losses(batch, 5)
    assert not task.updates_generator(1) and task.updates_generator(2)


def test_c_exp_has_its_own_learning_rate_and_both_decay_over_the_second_half():
    config = EGGANConfig(**TINY)
    task, _ = _tiny_task(EGGANTrainConfig(), config)
    groups = task.optimizers["critic"].param_groups
    assert [g["lr"] for g in groups] == [1e-4, 2e-4]  # Sec. 4.1: 1e-4, C_exp 2e-4
    assert task.optimizers["generator"].param_groups[0]["lr"] == 1e-4
    assert task.lr_factor(4) == 1.0 and task.lr_factor(7) == pytest.approx(0.6)  # linear decay after half
    classifier = {id(p) for p in task.modules["critic"].classifier.parameters()}
    assert {id(p) for p in groups[1]["params"]} == classifier


def test_paper_weights_are_eq_7s():
    paper = EGGANTrainConfig()
    assert (paper.lambda_exp, paper.lambda_id, paper.lambda_per, paper.lambda_rec, paper.lambda_gp) == (100, 60, 20, 100, 20)
    assert paper.objective == "wgan-gp" and paper.lambda_target == 0 and paper.labels == "true"


def test_editor_eq_8_interpolates_from_the_source_aus_and_takes_every_kind():
    torch.manual_seed(0)
    model = EGGAN(EGGANConfig.cpu()).eval()
    with torch.no_grad():  # a non-zero change head, so the AUs change the output
        model.generator_head.weight.normal_(0, 0.05)
    editor = EGGANEditor(model, AURegressor().eval())
    images = SynthFaces("rafd", "test", size=64).batch(range(0, 16, 8))["image"]
    wanted = torch.full((2, 17), 4.0)
    source = editor.read_aus(images)
    for alpha in (0.0, 0.3, 1.0):
        got = editor.target_aus(Target(aus=wanted, intensity=alpha), images)
        torch.testing.assert_close(got, (source + alpha * (wanted - source)).clamp(0, AU_MAX))  # Eq. 8
    for target in (Target(aus=wanted), Target(expression="happy", intensity=0.5), Target(reference=images.flip(0))):
        result = editor.edit(images, target)
        assert result.output.shape == images.shape and result.latent.shape == (2, 128 + 17)
    assert set(editor.accepts) == {"aus", "expression", "reference"}
    with pytest.raises(TypeError, match="needs an EGGAN"):
        EGGANEditor(torch.nn.Identity(), AURegressor())


def test_registry_entry_and_floors():
    info = editor_info("eggan")
    assert dict(info.floors) == {"au_pcc": (0.8, None), "identity_verification": (0.95, None),
                                 "train_seconds": (None, 7200)}
    assert info.weights == ("eggan", "au_regressor") and set(info.accepts) == {"aus", "expression", "reference"}


@pytest.mark.slow
def test_shipped_eggan_meets_the_floors_on_a_fresh_held_out_sample():
    """A fresh held-out sample (seed 1; the recipe measured seed 0) reproduces the manifest's figures, and they
    meet the floors (AU PCC >= 0.8, identity >= 95 %, at most 2 hours of training); a model shipped below them
    (recorded as such) is an expected failure, with its figures."""
    import facelib
    from facelib.evaluation import evaluate

    if "eggan" not in available_pretrained():
        pytest.skip("eggan is not shipped yet: python -m facelib train eggan --ship")
    editor = facelib.load_editor("eggan")
    table = evaluate(editor, "aus", preset="rafd", split="test", n=256, seed=1, spread=True, progress=False,
                     metrics=["AU PCC (facelib AU regressor)", "identity verification (facelib embedder)"])
    measured = dict(zip(table.metric, table.value))
    pcc, identity = measured["AU PCC (facelib AU regressor)"], measured["identity verification (facelib embedder)"]
    recorded = pretrained_info("eggan")["metrics"]
    assert math.isfinite(pcc) and abs(pcc - recorded["au_pcc"]) <= 0.1, (measured, recorded)
    assert abs(identity - recorded["identity_verification"]) <= 0.1, (measured, recorded)
    if not editor_info("eggan").meets_floors():
        pytest.xfail(f"eggan ships below its floors (AU PCC 0.8, identity 95 %, 2 h), as recorded: {recorded}; "
                     f"measured again: {measured}")
    assert pcc >= 0.8 and identity >= 0.95, measured
    assert recorded["train_seconds"] <= 2 * 3600, recorded


def test_the_notebooks_measurements_shapes_and_errors():
    """facelib.evaluation.eggan on an untrained 64x64 EGGAN: Table 1's layout, Fig. 3, the single-AU sweep."""
    from facelib.evaluation.eggan import (
        ALPHAS, interpolation, interpolation_progress, single_au_control, table1, table1_pairs,
    )

    torch.manual_seed(0)
    from facelib.checkpoint import load_pretrained

    editor = EGGANEditor(EGGAN(EGGANConfig.cpu()).eval(), load_pretrained("au_regressor"))
    pairs = table1_pairs(n=8, seed=0)
    assert pairs.count == 8 and pairs.target_aus.shape == (8, 17)
    test_people = set(SynthFaces("rafd", "test", size=64).identities)
    assert set(pairs.source_identity.tolist()) <= test_people  # sources: test people; targets: training faces
    table = table1({"eggan": editor}, pairs, progress=False)
    assert list(table.columns.get_level_values(0).unique()) == ["eggan", "Real"]
    assert list(table.index)[-1] == "Avg" and len(table) == 18 and table.attrs["n"] == {"eggan": 8, "Real": 8}
    assert table.loc["Avg", ("Real", "PCC")] > 0.8  # the instrument reads the real targets' AUs
    sources = pairs.source[:2]
    assert interpolation(editor, sources, pairs.target_aus[:2]).shape == (2 * len(ALPHAS), 3, 64, 64)
    progress = interpolation_progress(editor, sources, pairs.target_aus[:2])
    assert list(progress.columns) == ["alpha", "progress", "AU MAE vs requested"] and len(progress) == len(ALPHAS)
    faces = SynthFaces("rafd", "test", size=64).batch(range(0, 16, 8))
    curves, summary = single_au_control({"eggan": editor}, faces, aus=("AU12",), values=(0.0, 5.0))
    assert len(curves) == 4 and set(summary["method"]) == {"eggan", "true render"}
    true_slope = summary.set_index("method").loc["true render", "slope"]
    assert true_slope > 0.5  # the renderer's smile reads as a smile
    with pytest.raises(TypeError, match="non-empty dict"):
        table1({}, pairs)
    with pytest.raises(ValueError, match="unknown AU 'AU3'"):
        single_au_control({"eggan": editor}, faces, aus=("AU3",))
