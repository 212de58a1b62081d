"""ExprGAN (Ding et al. 2018): Eq. 3's code, Fig. 3's levels, the networks, the three stages, the editor."""
from __future__ import annotations

import pytest
import torch

from facelib.data.presets import get_preset
from facelib.editors import Target
from facelib.models.exprgan import CLASSES, ExprGAN, ExprGANConfig, ExprGANCritic, ExprGANEditor, expression_code
from facelib.evaluation.exprgan import expression_intensity
from facelib.train.exprgan import ExprGANCPUTask, ExprGANTask, ExprGANTrainConfig, class_labels

TINY = ExprGANConfig(image_size=16, encoder_channels=(4, 8), identity_dim=6, decoder_channels=(8, 6, 4),
                     critic_channels=(4, 8), critic_hidden=16, q_hidden=8, q_class_hidden=4,
                     latent_critic_hidden=(8, 4))


def images(batch: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_eq3_the_label_block_is_positive_and_every_other_block_negative():
    noise = torch.tensor([[-0.5, 0.2, 0.9, -1.0, 0.1], [0.3, -0.3, 0.0, 0.7, -0.2]])
    code = expression_code(torch.tensor([2, 5]), noise).view(2, 6, 5)
    assert torch.equal(code[0, 2], noise[0].abs()) and torch.equal(code[1, 5], noise[1].abs())
    for i, label in enumerate((2, 5)):
        others = [k for k in range(6) if k != label]
        assert torch.equal(code[i, others], -noise[i].abs().expand(5, -1))
    with pytest.raises(ValueError, match="noise z_y must be"):
        expression_code(torch.tensor([0, 1]), torch.zeros(3, 5))


def test_fig3_levels_set_one_element_in_the_learned_order_and_level_0_is_all_negative():
    model = ExprGAN(TINY)
    model.intensity_order[1] = torch.tensor([4, 0, 3, 1, 2])
    code = model.level_code(torch.tensor([1, 1, 1]), torch.tensor([0.0, 1.0, 5.0])).view(3, 6, 5)
    assert torch.equal(code[0], -torch.ones(6, 5))
    assert code[1, 1, 4] == 1 and (code[1] == 1).sum() == 1  # level 1: the weakest element
    assert code[2, 1, 2] == 1 and (code[2] == 1).sum() == 1  # level 5: the strongest
    half = model.level_code(torch.tensor([1]), torch.tensor([0.5])).view(6, 5)
    assert half[1, 4] == 0 and (half == -1).sum() == 29  # between neutral and level 1
    full = model.full_code(torch.tensor([3])).view(6, 5)
    assert torch.equal(full[3], torch.ones(5)) and (full == -1).sum() == 25


def test_shapes_at_the_cpu_width_and_the_paper_configuration():
    model, critic = ExprGAN(), ExprGANCritic()
    x, labels = images(2, 64), torch.tensor([0, 3])
    identity = model.encode(x)
    assert identity.shape == (2, 50) and identity.abs().max() < 1
    out = model.decode(identity, model.full_code(labels))
    assert out.shape == (2, 3, 64, 64) and out.abs().max() <= 1
    logits, q = critic(x, labels)
    assert logits.shape == (2,) and q.shape == (2, 30) and q.abs().max() < 1
    assert critic.latent(identity).shape == (2,)
    paper = ExprGANConfig.paper()
    with torch.device("meta"):
        model, critic = ExprGAN(paper), ExprGANCritic(paper)
    assert paper.image_size == 128 and len(model.encoder) == 5 + 2  # five 5x5 stride-2 convs, flatten, FC
    assert [layer[0].out_channels for layer in list(model.encoder)[:5]] == [64, 128, 256, 512, 1024]
    assert model.encoder[-1].out_features == 50 and model.decoder_input.out_features == 1024 * 16
    assert len(model.decoder_layers) == 5 and critic.features[0].out_features == 1024
    assert len(critic.q_classes) == 6 and critic.q_classes[0][-2].out_features == 5


def test_bad_configs_and_inputs_are_refused():
    with pytest.raises(ValueError, match="4 \\* 2\\*\\*len"):
        ExprGANConfig(image_size=48)
    with pytest.raises(ValueError, match="decoder_channels needs 5"):
        ExprGANConfig(decoder_channels=(8, 4))
    model = ExprGAN(TINY)
    with pytest.raises(ValueError, match=r"codes must be \[B, 30\]"):
        model.decode(torch.zeros(2, 6), torch.zeros(2, 6))
    with pytest.raises(ValueError, match="16x16 is accepted"):
        model.encode(images(1, 32))
    with pytest.raises(ValueError, match="ExprGAN's classes"):
        class_labels(torch.tensor([0]))  # neutral is not one of the six
    with pytest.raises(ValueError, match="shares of the steps"):
        ExprGANTrainConfig(stages=(0.5, 0.5, 0.5))


def test_measured_intensity_is_the_projection_on_the_prototype():
    from facelib.data import synth

    for name in ("happy", "sad"):
        aus = synth.emotion_aus(name, torch.tensor([1.0, 3.0, 5.0]))
        torch.testing.assert_close(expression_intensity(aus, name), torch.tensor([1.0, 3.0, 5.0]))


def _task(config: ExprGANConfig, train: ExprGANTrainConfig, steps: int):
    emotions = get_preset("oulu").expression_ids * 2  # facelib.EXPRESSIONS indices of the six classes
    faces = [{"image": image, "emotion": torch.tensor(e)} for image, e in zip(images(12, 16, seed=1), emotions)]
    features = lambda x: [torch.nn.functional.avg_pool2d(x, 2), torch.nn.functional.avg_pool2d(x, 4)]  # noqa: E731
    task = ExprGANTask(config, train, faces, identity_features=features)
    task.total_steps = steps
    modules, optimizers = task.build(torch.device("cpu"))
    task.modules, task.optimizers, task.device = modules, optimizers, torch.device("cpu")
    return task, torch.utils.data.default_collate(faces)


def test_the_three_stages_train_what_the_paper_says():
    torch.manual_seed(0)
    task, batch = _task(TINY, ExprGANTrainConfig(flip=False), steps=30)
    logs = [task.training_step(batch, step) for step in range(30)]
    stages = [int(log["stage"]) for log in logs]
    assert stages == [1] * 9 + [2] * 9 + [3] * 12
    assert set(logs[0]) >= {"d_img", "q_critic", "g_adv_img", "q"} and "pixel" not in logs[0]
    assert set(logs[10]) >= {"pixel", "identity", "q", "q_critic"} and "d_img" not in logs[10] and "d_z" not in logs[10]
    assert set(logs[-1]) >= {"pixel", "identity", "q", "g_adv_img", "g_adv_z", "tv", "d_img", "d_z"}
    # stage 2 lowers the reconstruction error
    assert float(logs[17]["pixel"]) < float(logs[9]["pixel"])


def test_ablations_and_the_baseline_drop_their_parts():
    torch.manual_seed(0)
    task, batch = _task(TINY, ExprGANTrainConfig(use_q=False, flip=False), steps=6)
    logs = [task.training_step(batch, step) for step in range(6)]
    assert all("q" not in log and "q_critic" not in log for log in logs)
    task, batch = _task(TINY, ExprGANTrainConfig(stagewise=False, flip=False), steps=3)
    assert {int(task.training_step(batch, step)["stage"]) for step in range(3)} == {3}
    caae = ExprGANConfig(**{**TINY.__dict__, "controller": False})
    task, batch = _task(caae, ExprGANTrainConfig(flip=False), steps=3)
    log = task.training_step(batch, 0)
    assert "d_img" not in log and "q" not in log and {"pixel", "d_z", "g_adv_z", "tv"} <= set(log)
    assert task.unwrap("generator").decoder_input.in_features == 6 + 6  # identity + one-hot label


def test_the_editor_edits_levels_neutral_and_references():
    from facelib.models.evaluators import ExpressionClassifier, ExpressionClassifierConfig

    torch.manual_seed(0)
    model, critic = ExprGAN(TINY), ExprGANCritic(TINY)
    classifier = ExpressionClassifier(ExpressionClassifierConfig(image_size=16))
    editor = ExprGANEditor(model, critic, classifier)
    x = images(2, 16)
    identity = model.encode(x)
    out = editor.edit(x, Target(expression="happy", intensity=0.4)).output
    labels = torch.full((2,), CLASSES.index("happy"))
    torch.testing.assert_close(out, model.decode(identity, model.level_code(labels, torch.full((2,), 2.0))))
    neutral = editor.edit(x, Target(expression="neutral")).output
    torch.testing.assert_close(neutral, model.decode(identity, -torch.ones(2, 30)))
    torch.testing.assert_close(editor.edit(x, Target(expression="sad", intensity=0.0)).output, neutral)
    reference = images(2, 16, seed=3)
    _, code = editor.reference_codes(reference)
    transferred = editor.edit(x, Target(reference=reference)).output
    torch.testing.assert_close(transferred, model.decode(identity, code))
    with pytest.raises(ValueError, match="cannot edit to 'scream'"):
        editor.edit(x, Target(expression="scream"))
    baseline = ExprGANEditor(ExprGAN(ExprGANConfig(**{**TINY.__dict__, "controller": False})), name="exprgan_caae")
    assert baseline.accepts == ("expression",) and "neutral" not in baseline.expressions
    with pytest.raises(ValueError, match="does not accept reference"):
        baseline.edit(x, Target(reference=reference))


def test_a_residual_decoder_starts_as_the_source_and_needs_it():
    model = ExprGAN(ExprGANConfig(**{**TINY.__dict__, "output": "residual", "skips": True}))
    assert model.skip_channels() == [4, 3]  # G_enc's 8 px map of a 16 px face, then the face itself
    x = images(2, 16)
    code = model.level_code(torch.tensor([0, 4]), torch.tensor([5.0, 2.0]))
    torch.testing.assert_close(model(x, code), x)  # the change's head starts at zero
    with pytest.raises(ValueError, match="reads the source faces"):
        model.decode(model.encode(x), code)
    with pytest.raises(ValueError, match="output must be"):
        ExprGANConfig(output="mask")
    with pytest.raises(ValueError, match="skips need the source"):
        ExprGANConfig(skips=True)
    from facelib.evaluation.exprgan import synthesise

    with pytest.raises(ValueError, match="pass canvases"):
        synthesise(model, 2)
    faces, labels = synthesise(model, 2, canvases=x)
    assert faces.shape == (12, 3, 16, 16) and labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]


def test_the_cpu_recipe_edits_half_the_batch_to_targets_drawn_apart_from_x():
    torch.manual_seed(0)
    config = ExprGANConfig(**{**TINY.__dict__, "output": "residual"})
    emotions = get_preset("oulu").expression_ids * 2
    landmarks = torch.rand(29, 2) * 16
    faces = [{"image": image, "target": target, "emotion": torch.tensor(e), "target_intensity": torch.tensor(2.5),
              "landmarks": landmarks}
             for image, target, e in zip(images(12, 16, seed=1), images(12, 16, seed=2), emotions)]
    features = lambda x: [torch.nn.functional.avg_pool2d(x, 2)]  # noqa: E731
    task = ExprGANCPUTask(config, ExprGANTrainConfig.cpu(), faces, identity_features=features)
    task.total_steps = 4
    modules, optimizers = task.build(torch.device("cpu"))
    task.modules, task.optimizers, task.device = modules, optimizers, torch.device("cpu")
    batch = torch.utils.data.default_collate(faces)
    prepared = task.prepare(batch, 0)
    assert prepared["paired"].tolist() == [True] * 6 + [False] * 6
    own = class_labels(batch["emotion"])
    assert torch.equal(prepared["labels"][:6], own[:6])  # the source's own label at its frame's level
    torch.testing.assert_close(prepared["code"][:6], task.unwrap("generator").level_code(own[:6], torch.full((6,), 2.5)))
    log = task.training_step(batch, 0)
    assert {"pixel", "identity", "q", "q_critic", "g_adv_img", "d_img", "d_z", "keep", "r1"} <= set(log)
    assert "generator_ema" in task.modules


# ------------------------------------------------------------------ the shipped model against the floors
def _shipped(name: str) -> bool:
    from facelib.checkpoint import available_pretrained

    return name in available_pretrained()


@pytest.mark.slow
def test_shipped_exprgan_meets_the_floors_on_a_fresh_held_out_sample():
    """Issue 33's floors on the oulu test identities with seed 1 (the recipe measured seed 0): the fresh
    sample reproduces the manifest's figures; a model shipped below the floors (recorded as such) is an
    expected failure, with its figures."""
    if not _shipped("exprgan"):
        pytest.skip("exprgan is not shipped yet: python -m facelib train exprgan --ship")
    import facelib
    from facelib.editors import editor_info
    from facelib.pretrained import pretrained_info
    from facelib.train.exprgan import measure

    measured = measure(facelib.load_editor("exprgan"), seed=1)
    recorded = pretrained_info("exprgan")["metrics"]
    for name in ("expression_accuracy", "identity_verification"):
        assert abs(measured[name] - recorded[name]) <= 0.15, (name, measured, recorded)
    assert abs(measured["intensity_classes_meeting_floor"] - recorded["intensity_classes_meeting_floor"]) <= 2
    if not editor_info("exprgan").meets_floors():
        pytest.xfail(f"exprgan ships below its floors (85 % / 95 % / 5 of 6 classes), as recorded: {measured}")
    assert measured["expression_accuracy"] >= 0.85, measured
    assert measured["identity_verification"] >= 0.95, measured
    assert measured["intensity_classes_meeting_floor"] >= 5, measured


def test_shipped_exprgan_stores_its_intensity_order_and_edits_neutral_from_all_negative_codes():
    if not _shipped("exprgan"):
        pytest.skip("exprgan is not shipped yet: python -m facelib train exprgan --ship")
    import facelib

    editor = facelib.load_editor("exprgan")
    order = editor.model.intensity_order
    assert order.shape == (6, 5) and all(sorted(row.tolist()) == list(range(5)) for row in order)
    from facelib.data import SynthFaces

    faces = SynthFaces("oulu", "test", size=64).batch([0, 20])["image"]
    neutral = editor.edit(faces, Target(expression="neutral")).output
    torch.testing.assert_close(neutral, editor.model.decode(editor.model.encode(faces), -torch.ones(len(faces), 30), faces))
