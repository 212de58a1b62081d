"""DFT-Net (facelib.models.dftnet, facelib.train.dftnet): shapes, Eq. 3 and 5, the ablations, losses, editor."""
from __future__ import annotations

import pytest
import torch

from facelib.editors import Target
from facelib.models.dftnet import DFTNetConfig, DFTNetCritic, DFTNetEditor, DFTNetGenerator
from facelib.models.ganimation import GANimationEditor, GANimationGenerator
from facelib.train.dftnet import DFTNetTask, DFTNetWeights
from facelib.warp import warp
from test_ganimation import generator_losses_before_and_after

torch.set_num_threads(1)

TINY = dict(image_size=16, base_channels=4, residual_blocks=1, critic_base_channels=4, critic_layers=3)


def _inputs(size: int, batch: int = 2, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, size, size, generator=generator) * 2 - 1, torch.rand(batch, 17, generator=generator)


@pytest.mark.parametrize("switches", [{}, {"flow": False}, {"texture": False}], ids=["full", "no_flow", "no_texture"])
def test_generator_returns_every_map_of_eq_2_to_5(switches):
    config = DFTNetConfig(**TINY, **switches)
    images, aus = _inputs(16)
    parts = DFTNetGenerator(config)(images, aus)
    assert parts.output.shape == parts.aligned.shape == parts.texture.shape == (2, 3, 16, 16)
    assert parts.flow.shape == (2, 2, 16, 16) and parts.attention.shape == (2, 1, 16, 16)
    assert 0 <= parts.attention.min() and parts.attention.max() <= 1 and parts.texture.abs().max() <= 1
    assert parts.flow.abs().max() <= config.max_flow * 16
    # Eq. 3: X_a is the source sampled along Phi (facelib.conventions' backward flow)
    assert torch.allclose(parts.aligned, warp(images, parts.flow), atol=1e-6)
    # Eq. 5: X_t = (1 - A) B + A X_a, A on the aligned source's side
    expected = (1 - parts.attention) * parts.texture + parts.attention * parts.aligned
    assert torch.allclose(parts.output, expected, atol=1e-6)


def test_ablations_switch_one_decoder_off():
    images, aus = _inputs(16)
    torch.manual_seed(0)
    no_flow = DFTNetGenerator(DFTNetConfig(**TINY, flow=False))(images, aus)
    assert torch.equal(no_flow.flow, torch.zeros_like(no_flow.flow)) and torch.equal(no_flow.aligned, images)
    no_texture_generator = DFTNetGenerator(DFTNetConfig(**TINY, texture=False))
    with torch.no_grad():  # a non-zero flow head, so the warp moves pixels
        no_texture_generator.flow_head.weight.normal_(0, 0.5)
    no_texture = no_texture_generator(images, aus)
    assert torch.equal(no_texture.attention, torch.ones_like(no_texture.attention))
    assert torch.equal(no_texture.output, no_texture.aligned) and not torch.allclose(no_texture.output, images)
    assert not hasattr(no_texture_generator, "texture_head")
    with pytest.raises(ValueError, match="switch at most one decoder off"):
        DFTNetConfig(flow=False, texture=False)
    with pytest.raises(ValueError, match="max_flow must be in"):
        DFTNetConfig(max_flow=2.0)


def test_the_flow_starts_as_the_identity_warp():
    images, aus = _inputs(16)
    parts = DFTNetGenerator(DFTNetConfig(**TINY))(images, aus)
    assert torch.equal(parts.flow, torch.zeros_like(parts.flow)) and torch.equal(parts.aligned, warp(images, parts.flow))


def test_paper_config_is_ganimations_published_size_with_two_decoders():
    config = DFTNetConfig.paper()
    assert (config.image_size, config.base_channels, config.residual_blocks, config.critic_layers) == (128, 64, 6, 6)
    generator, critic = DFTNetGenerator(config), DFTNetCritic(config)
    with torch.no_grad():
        parts = generator(torch.zeros(1, 3, 128, 128), torch.zeros(1, 17))
        scores, predicted = critic(torch.zeros(1, 3, 128, 128))
    assert parts.output.shape == (1, 3, 128, 128) and parts.flow.shape == (1, 2, 128, 128)
    assert scores.shape == (1, 1, 2, 2) and predicted.shape == (1, 17)
    # GANimation's 8.47 M plus the second decoder and its skip connections: 9.27 M
    assert sum(p.numel() for p in generator.parameters()) == 9_273_792
    assert sum(p.numel() for p in GANimationGenerator(config).parameters()) == 8_471_296


def test_regularisers_are_eq_9_and_10_with_the_papers_weights():
    task = DFTNetTask(DFTNetConfig(**TINY))
    assert task.weights == DFTNetWeights(au=4000.0, cycle=10.0, attention=1.0, flow_tv=1e-4, target_noise=0.1)
    flow = torch.zeros(2, 2, 4, 4)
    flow[:, 0, :, 2:] = 1.0  # one vertical edge of height 4: 4 squared differences of 1 per image
    forward = {"flow": flow, "attention": torch.full((2, 1, 4, 4), 0.75)}
    back = {"flow": torch.zeros(2, 2, 4, 4), "attention": torch.full((2, 1, 4, 4), 0.25)}
    terms = task.regularisers(forward, back)
    assert terms["flow_tv"].item() == pytest.approx(1e-4 * 4)
    assert terms["attention"].item() == pytest.approx(-(0.75 + 0.25))  # Eq. 10 rewards A on both passes


def test_training_computes_eq_7_and_8_as_the_hand_reference():
    """DFTNetTask's logged ``au`` and ``cycle`` are Eq. 7 (GANimation's code's scale) and Eq. 8, recomputed here by hand."""
    torch.manual_seed(0)
    task = DFTNetTask(DFTNetConfig(**TINY), n_critic=1)
    task.total_steps, task.device = 1, torch.device("cpu")
    task.modules, task.optimizers = task.build(task.device)
    images, aus = _inputs(16, batch=3)
    batch = task.prepare({"image": images, "aus": aus * 5}, 0)
    logs = task.generator_losses(batch, 0)
    generator, critic = task.modules["generator"], task.modules["critic"]
    with torch.no_grad():
        fake = generator(images, batch["target_aus01"]).output
        _, predicted = critic(fake)
        back = generator(fake, batch["aus01"]).output
    # Eq. 7 written out: the squared error summed over the 17 AUs and the 3 images, / 17 AUs / 3 images / 3 (the code's / B)
    squared = sum(float(predicted[b, k] - batch["target_aus01"][b, k]) ** 2 for b in range(3) for k in range(17))
    assert logs["au"].item() == pytest.approx(squared / 17 / 3 / 3, rel=1e-5)
    # Eq. 8: the mean absolute difference between the way back and the source
    assert logs["cycle"].item() == pytest.approx(float((back - images).abs().sum()) / images.numel(), rel=1e-5)


def test_generator_steps_lower_the_au_loss_and_move_the_flow():
    first, last = generator_losses_before_and_after(40, lambda **options: DFTNetTask(DFTNetConfig(**TINY), **options))
    assert last["au"] < 0.9 * first["au"]
    assert first["flow_magnitude"] == 0 and last["flow_magnitude"] > 0  # the flow decoder learns
    assert {"flow_tv", "attention", "attention_mean", "cycle", "adversarial"} <= set(last)


def test_editor_returns_the_maps_and_edits_large_faces():
    editor = DFTNetEditor(DFTNetGenerator(DFTNetConfig()))
    faces = torch.rand(2, 3, 64, 64) * 2 - 1
    result = editor.edit(faces, Target(aus=torch.rand(2, 17) * 5))
    assert set(result.extras()) == {"flow", "aligned", "texture", "attention"}
    assert result.output.shape == (2, 3, 64, 64) and result.output.abs().max() <= 1
    expression = editor.edit(faces, Target(expression="happy", intensity=0.5))
    assert not torch.equal(expression.output, result.output)
    large = editor.edit_highres(torch.rand(1, 3, 128, 128) * 2 - 1, Target(expression="surprised"))
    assert large.output.shape == (1, 3, 128, 128) and large.flow.shape == (1, 2, 64, 64)
    with pytest.raises(ValueError, match="does not accept reference targets"):
        editor.edit(faces, Target(reference=faces))
    with pytest.raises(TypeError, match="DFTNetEditor needs a DFTNetGenerator, got GANimationGenerator"):
        DFTNetEditor(GANimationGenerator())
    with pytest.raises(TypeError, match="GANimationEditor needs a GANimationGenerator, got DFTNetGenerator"):
        GANimationEditor(DFTNetGenerator())


@pytest.mark.slow
def test_recipe_smoke_runs_for_the_model_and_both_ablations(tmp_path):
    from facelib.checkpoint import load_model
    from facelib.recipes import run_recipe

    for name in ("dftnet", "dftnet_no_flow", "dftnet_no_texture"):
        result = run_recipe(name, out_dir=tmp_path / name, smoke=True, device="cpu")
        metrics = result["metrics"][name]
        assert {"au_pcc", "identity_verification", "attention_mean_test"} <= set(metrics)
        generator = load_model(result["checkpoints"][name])
        assert isinstance(generator, DFTNetGenerator)
        assert generator.config.flow == (name != "dftnet_no_flow")
        assert generator.config.texture == (name != "dftnet_no_texture")
        if name == "dftnet_no_texture":
            assert metrics["attention_mean_test"] == 1.0


@pytest.mark.slow
def test_shipped_dftnet_meets_the_floors_on_a_fresh_held_out_sample():
    """A fresh held-out sample (seed 1; the recipe measured seed 0) reproduces the manifest's figures, and
    they meet the floors (AU PCC >= 0.8 and >= the shipped GANimation's, identity >= 95 %, attention mean in
    (0.05, 0.95)); a model shipped below them (recorded as such) is an expected failure, with its figures."""
    import math

    import facelib
    from facelib.editors import editor_info
    from facelib.evaluation import evaluate
    from facelib.pretrained import available_pretrained, pretrained_info

    if "dftnet" not in available_pretrained():
        pytest.skip("dftnet is not shipped yet: python -m facelib train dftnet --ship")
    editor = facelib.load_editor("dftnet")
    table = evaluate(editor, "aus", preset="emotionet", split="test", n=128, seed=1, progress=False,
                     metrics=["AU PCC (facelib AU regressor)", "identity verification (facelib embedder)"])
    measured = dict(zip(table.metric, table.value))
    pcc, identity = measured["AU PCC (facelib AU regressor)"], measured["identity verification (facelib embedder)"]
    recorded = pretrained_info("dftnet")["metrics"]
    assert math.isfinite(pcc) and abs(pcc - recorded["au_pcc"]) <= 0.1, (measured, recorded)
    assert abs(identity - recorded["identity_verification"]) <= 0.1, (measured, recorded)
    ganimation = pretrained_info("ganimation")["metrics"]["au_pcc"]
    if not editor_info("dftnet").meets_floors() or recorded["au_pcc"] < ganimation:
        pytest.xfail(f"dftnet ships below its floors (PCC 0.8 and GANimation's {ganimation:.3f}, identity 95 %, "
                     f"attention in (0.05, 0.95)), as recorded: {recorded}; measured again: {measured}")
    assert pcc >= max(0.8, ganimation) and identity >= 0.95, measured
    assert 0.05 < recorded["attention_mean_test"] < 0.95, recorded


def test_the_notebooks_measurements_shapes_and_errors():
    """facelib.evaluation.dftnet on two untrained 64x64 editors: Fig. 4's columns, Fig. 3's table, Fig. 5, timing."""
    from facelib.evaluation.dftnet import EYELID_LEVELS, SCALES, eyelids, fig4, inference_seconds, interpolation

    torch.manual_seed(0)
    editors = {"DFT-Net": DFTNetEditor(DFTNetGenerator().eval()), "GANimation": GANimationEditor(GANimationGenerator().eval())}
    grid, columns, rows = fig4(editors)
    assert columns == ["source", "aligned X_a", "texture B", "attention A", "DFT-Net", "GANimation", "true render"]
    assert grid.shape == (len(rows) * len(columns), 3, 64, 64)
    table, picture, names = eyelids(editors, n=2)
    assert list(table.index) == EYELID_LEVELS.tolist() and names == ["DFT-Net", "GANimation", "true render"]
    assert {"PSNR DFT-Net", "AU45 GANimation", "AU45 true render", "PSNR source (no edit)"} <= set(table.columns)
    assert table["AU45 true render"].iloc[-1] > table["AU45 true render"].iloc[0]  # the instrument sees the lid close
    assert picture.shape[0] == len(names) * len(EYELID_LEVELS)
    grid, columns, rows = interpolation(editors)
    assert len(columns) == len(SCALES) + 2 and grid.shape[0] == len(columns) * len(rows)
    assert (inference_seconds(editors, batch=2, repeats=1) > 0).all()
    with pytest.raises(ValueError, match="must hold 'DFT-Net'"):
        fig4({"GANimation": editors["GANimation"]})
    with pytest.raises(TypeError, match="facelib Editors"):
        eyelids({"DFT-Net": "dftnet"})
    with pytest.raises(ValueError, match="positive number of faces"):
        eyelids(editors, n=0)
