"""StarGAN (Choi et al. 2018): network shapes, the paper's configuration, a few steps lower the losses, the editor."""
from __future__ import annotations

import pytest
import torch

from facelib.editors import Target
from facelib.models.stargan import DOMAINS, StarGANConfig, StarGANCritic, StarGANEditor, StarGANGenerator, one_hot
from facelib.train.stargan import StarGANTask, StarGANTrainConfig

TINY = StarGANConfig(image_size=16, base_channels=4, residual_blocks=1, critic_channels=8, critic_layers=3)


def images(batch: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_shapes_at_the_cpu_width():
    config = StarGANConfig()
    generator, critic = StarGANGenerator(config), StarGANCritic(config)
    x = images(2, 64)
    out = generator(x, one_hot(["happy", "sad"]))
    assert out.shape == (2, 3, 64, 64) and out.abs().max() <= 1
    scores, logits = critic(x)
    assert scores.shape == (2, 1, 2, 2) and logits.shape == (2, len(DOMAINS))


def test_the_paper_configuration_is_the_published_network():
    config = StarGANConfig.paper()
    with torch.device("meta"):
        generator, critic = StarGANGenerator(config), StarGANCritic(config)
    assert config.image_size == 128 and generator.stem[0].out_channels == 64
    assert len(generator.bottleneck) == 6 and generator.bottleneck[0].body[0][0].in_channels == 256
    assert len(critic.trunk) == 6 and critic.final_size == 2 and critic.aux.out_channels == 8
    # the published generator has about 8.4 M parameters, its critic about 44.8 M (StarGAN at 128 px, 8 domains)
    assert 8.3e6 < sum(p.numel() for p in generator.parameters()) < 8.6e6
    assert 44e6 < sum(p.numel() for p in critic.parameters()) < 46e6


def test_the_optional_shortcuts_are_parameter_free_additions_the_paper_leaves_out():
    assert StarGANConfig().skips == 0 and StarGANConfig.paper().skips == 0
    torch.manual_seed(0)
    generators = {skips: StarGANGenerator(StarGANConfig(**{**TINY.__dict__, "skips": skips})) for skips in (0, 1, 2)}
    for generator in generators.values():  # the same parameters: the shortcuts add none
        generator.load_state_dict(generators[2].state_dict())
    x, labels = images(2, 16), one_hot(["happy", "sad"])
    g = generators[2]
    full = g.stem(torch.cat([x, labels[:, :, None, None].expand(-1, -1, 16, 16)], 1))
    half = g.down[0](full)
    up = g.up[0](g.bottleneck(g.down[1](half)))
    expected = {0: g.up[1](up), 1: g.up[1](up + half), 2: g.up[1](up + half) + full}
    for skips, generator in generators.items():
        torch.testing.assert_close(generator(x, labels), torch.tanh(g.head(expected[skips])))


def test_bad_configs_and_inputs_are_refused():
    with pytest.raises(ValueError, match="divisible"):
        StarGANConfig(image_size=48, critic_layers=5)
    with pytest.raises(ValueError, match="skips must be 0"):
        StarGANConfig(skips=3)
    generator = StarGANGenerator(TINY)
    with pytest.raises(ValueError, match=r"labels must be \[B, 8\]"):
        generator(images(2, 16), torch.zeros(2, 5))
    with pytest.raises(ValueError, match="but 16x16 is accepted"):
        generator(images(2, 32), torch.zeros(2, 8))


@pytest.mark.slow
def test_a_few_steps_lower_the_domain_and_cycle_losses():
    torch.manual_seed(0)
    faces = [{"image": image, "emotion": torch.tensor(i % 8)} for i, image in enumerate(images(16, 16, seed=1))]
    task = StarGANTask(TINY, StarGANTrainConfig(n_critic=1, lr=2e-3, flip=False), faces)
    task.total_steps = 40
    modules, optimizers = task.build(torch.device("cpu"))
    task.modules, task.optimizers, task.device = modules, optimizers, torch.device("cpu")
    batch = torch.utils.data.default_collate(faces)
    logs = [task.training_step(batch, step) for step in range(40)]
    first, last = logs[0], logs[-1]
    assert float(last["critic_domain"]) < 0.75 * float(first["critic_domain"])
    assert float(last["cycle"]) < 0.9 * float(first["cycle"])  # measured: 0.555 -> 0.467


def test_the_editor_follows_the_interface():
    editor = StarGANEditor(StarGANGenerator(TINY))
    faces = images(2, 16)
    out = editor.edit(faces, Target(expression=["happy", "neutral"])).output
    assert out.shape == (2, 3, 16, 16)
    full = editor.edit(faces, Target(expression="happy", source_expression="sad")).output
    torch.testing.assert_close(full, editor.generator(faces, one_hot(["happy", "happy"])))
    with pytest.raises(ValueError, match="cannot edit to 'scream'"):
        editor.edit(faces, Target(expression="scream"))
    with pytest.raises(ValueError, match="source_expression \\['squint'\\] is not one of them"):
        editor.edit(faces, Target(expression="happy", source_expression="squint"))
    with pytest.raises(ValueError, match="does not accept aus targets"):
        editor.edit(faces, Target(aus=torch.zeros(17)))


def test_loading_another_model_as_stargan_fails_clearly(tmp_path):
    from facelib.checkpoint import CheckpointError, load_model, save_model
    from facelib.models.fvae import FVAE, FVAEConfig

    stem = save_model(FVAE(FVAEConfig(image_size=16, base_channels=4, max_channels=8, latent_channels=2)), tmp_path / "x")
    with pytest.raises(CheckpointError):
        load_model(stem, cls=StarGANGenerator)


@pytest.mark.slow
def test_shipped_stargan_meets_the_floors_on_a_fresh_held_out_sample():
    """A fresh held-out sample (seed 1; the recipe measured seed 0) reproduces the manifest's figures, and
    they meet the floors; a model shipped below them (recorded as such) is an expected failure, with its figures."""
    from facelib.editors import editor_info
    from facelib.pretrained import available_pretrained, pretrained_info
    from facelib.train.stargan import measure

    if "stargan" not in available_pretrained():
        pytest.skip("stargan is not shipped yet: python -m facelib train stargan --ship")
    import facelib

    measured = measure(facelib.load_editor("stargan"), n=128, seed=1)
    recorded = pretrained_info("stargan")["metrics"]
    # measured spread between samples: 0.61 (seed 0, 256 pairs) and 0.46 (seed 1, 128 pairs) of target expression
    for name in ("expression_accuracy", "identity_verification", "neutraliser_accuracy"):
        assert abs(measured[name] - recorded[name]) <= 0.2, (name, measured, recorded)
    if not editor_info("stargan").meets_floors():
        pytest.xfail(f"stargan ships below its floors (85 % / 95 % / 90 %), as recorded: {measured}")
    assert measured["expression_accuracy"] >= 0.85, measured
    assert measured["identity_verification"] >= 0.95, measured
    assert measured["neutraliser_accuracy"] >= 0.90, measured


def test_the_cpu_network_starts_near_the_identity_and_its_critic_has_a_map_per_domain_and_a_fake_class():
    config = StarGANConfig(image_size=16, base_channels=4, residual_blocks=1, critic_channels=8, critic_layers=3,
                           output="attention", per_domain_critic=True, fake_class=True)
    generator, critic = StarGANGenerator(config), StarGANCritic(config)
    faces = images(2, 16)
    edited, attention = generator.translate(faces, one_hot(["happy", "sad"]))
    assert attention.shape == (2, 1, 16, 16) and attention.min() > 0.98  # sigmoid(4) = 0.982
    assert (edited - faces).abs().mean() < 0.05
    scores, logits = critic(edited)
    assert scores.shape == (2, len(DOMAINS), 2, 2) and logits.shape == (2, len(DOMAINS) + 1)
    picked = StarGANCritic.domain_scores(scores, torch.tensor([5, 2]))
    torch.testing.assert_close(picked[:, 0], torch.stack([scores[0, 5], scores[1, 2]]))
    with pytest.raises(ValueError, match="output must be 'image'"):
        StarGANConfig(output="residual")


def test_the_keep_mask_covers_brows_eyes_nose_and_mouth_and_nothing_far_from_them():
    from facelib.data import SynthFaces
    from facelib.data.synth import LANDMARK_NAMES
    from facelib.data.synth import expression_region_mask

    faces = SynthFaces("rafd", "val", size=64).batch(torch.arange(0, 40, 7))
    mask = expression_region_mask(faces["landmarks"].float(), 64)
    assert mask.shape == (6, 1, 64, 64) and set(mask.unique().tolist()) <= {0.0, 1.0}
    x, y = faces["landmarks"][..., 0].round().long(), faces["landmarks"][..., 1].round().long()
    for name in ("brow_left_mid", "eye_right_top", "nose_tip", "lip_lower_bottom", "mouth_left"):
        k = LANDMARK_NAMES.index(name)
        assert all(mask[i, 0, y[i, k], x[i, k]] == 1 for i in range(6)), name
    assert (mask[:, :, :3, :] == 0).all() and 0.1 < mask.mean() < 0.6  # the top rows (hair) are outside


def test_extra_training_people_are_disjoint_from_every_rafd_split():
    from facelib.data import SynthFaces
    from facelib.train.stargan import training_faces

    faces = training_faces(52)
    assert len(faces) == 52 * 40
    extra = set(faces.datasets[1].identities)
    for split in ("train", "val", "test"):
        assert not extra & set(SynthFaces("rafd", split).identities), split
    with pytest.raises(ValueError, match=r"identities must be None or an int >= 50"):
        training_faces(10)


def test_both_recipes_run_in_smoke_mode_and_log_a_learning_curve(tmp_path):
    from facelib.recipes import run_recipe
    from facelib.train import read_log

    for name in ("stargan", "stargan_paper"):
        result = run_recipe(name, out_dir=tmp_path, smoke=True, device="cpu")
        assert {"expression_accuracy", "identity_verification", "train_seconds", "generator_updates"} <= set(
            result["metrics"][name])
        curve = read_log(tmp_path / name, kind="val")
        assert {"expression accuracy (facelib classifier)", "generator_updates"} <= set(curve.columns)


def test_edits_use_each_images_own_statistics_in_eval_mode_too():
    """Running statistics, used in eval mode, tinted every edit per domain (seen at step 2,000): none are kept."""
    generator = StarGANGenerator(TINY)
    x, labels = images(3, 16, seed=3), one_hot(["happy", "sad", "neutral"])
    with torch.no_grad():
        trained = generator.train()(x, labels)
        evaluated = generator.eval()(x, labels)
    torch.testing.assert_close(evaluated, trained)
    assert not any("running" in name for name, _ in generator.named_buffers())


def test_the_residual_colour_map_starts_at_the_source_and_edits_only_where_the_mask_opens():
    config = StarGANConfig(image_size=16, base_channels=4, residual_blocks=1, critic_channels=8, critic_layers=3,
                           output="attention", residual_colour=True, upsample="resize")
    generator = StarGANGenerator(config)
    faces = images(2, 16)
    edited, attention = generator.translate(faces, one_hot(["happy", "sad"]))
    torch.testing.assert_close(edited, faces)  # the change head starts at zero
    torch.nn.init.normal_(generator.head.weight, std=0.5)
    edited, attention = generator.translate(faces, one_hot(["happy", "sad"]))
    captured = []
    generator.head.register_forward_hook(lambda module, inputs, output: captured.append(output))
    edited, attention = generator.translate(faces, one_hot(["happy", "sad"]))
    colour = (faces + torch.tanh(captured[-1])).clamp(-1, 1)
    # GANimation Eq. 1 with the colour map source + change: edit - source = (1 - A) (colour - source)
    torch.testing.assert_close(edited - faces, (1 - attention) * (colour - faces))
    assert (edited - faces).abs().max() > 0


def test_the_editor_returns_the_mask_of_an_attention_generator():
    config = StarGANConfig(image_size=16, base_channels=4, residual_blocks=1, critic_channels=8, critic_layers=3,
                           output="attention")
    result = StarGANEditor(StarGANGenerator(config)).edit(images(2, 16), Target(expression="happy"))
    assert result.attention.shape == (2, 1, 16, 16)
    assert StarGANEditor(StarGANGenerator(TINY)).edit(images(2, 16), Target(expression="happy")).attention is None
