"""LEED (Wu & Lu 2020): the networks, the neutralisers, label-free training, the editor and its floors."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from facelib import losses
from facelib.data import SynthFaces
from facelib.editors import Target, editor_info, list_editors
from facelib.models.leed import (
    LEED, EditorNeutraliser, LEEDConfig, LEEDCritic, LEEDEditor, TrueRenderNeutraliser, load_neutraliser,
)
from facelib.pretrained import available_pretrained, pretrained_info
from facelib.train.leed import ITEM_FIELDS, LEEDTask, LEEDTrainConfig, neutral_faces

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def faces() -> dict[str, torch.Tensor]:
    return SynthFaces("rafd", "test", size=64).batch(range(0, 40, 5))  # one person, several poses and expressions


def tiny_model() -> LEED:
    torch.manual_seed(0)
    return LEED(LEEDConfig(channels=(4, 8, 8, 8), code_dim=8, hidden=16, latent_channels=2, siamese_dim=4)).eval()


def test_training_items_carry_images_only_no_expression_or_au_label():
    data = neutral_faces(limit=6)
    loader = torch.utils.data.DataLoader(data, batch_size=3)
    for batch in loader:
        assert set(batch) == set(ITEM_FIELDS) == {"image", "neutral"}
    task = LEEDTask(LEEDConfig(), LEEDTrainConfig(), data)
    labelled = {**next(iter(loader)), "emotion": torch.zeros(3, dtype=torch.long)}
    with pytest.raises(ValueError, match="without labels.*emotion"):
        task.prepare(labelled, 0)


def test_true_render_neutraliser_is_the_datasets_own_neutral_face_and_refuses_without_render_parameters(faces):
    neutral = TrueRenderNeutraliser().neutral(faces["image"], identity=faces["identity"], yaw=faces["yaw"])
    rafd = SynthFaces("rafd", "test", size=64)
    labels = rafd.labels()
    for k in range(len(neutral)):  # the same person and pose, expression 0 (neutral), rendered by the dataset
        match = torch.nonzero((labels["identity"] == faces["identity"][k]) & (labels["yaw"] == faces["yaw"][k])
                              & (labels["emotion"] == 0))[0, 0]
        torch.testing.assert_close(neutral[k], rafd[int(match)]["image"])
    with pytest.raises(ValueError, match="oracle.*identity and yaw.*fvae"):
        TrueRenderNeutraliser().neutral(faces["image"])
    with pytest.raises(ValueError, match="unknown neutraliser 'vgg'"):
        load_neutraliser("vgg")


def test_the_interpolator_starts_at_eq_5_and_the_edit_has_the_shapes_of_fig_1(faces):
    model = tiny_model()
    c, d = torch.randn(3, 8), torch.randn(3, 8)
    torch.testing.assert_close(model.interpolator(c, d), c + d)  # Eq. 5 before any training
    images = faces["image"][:2]
    out = model.edit(images, images.flip(0), images, torch.tensor([0.0, 1.5]))
    assert out["output"].shape == images.shape and out["code"].shape == (2, 8)
    assert out["output"].abs().max() <= 1
    assert LEEDCritic(model.config)(out["code"]).shape == (2,)
    code_only = LEED(LEEDConfig(decoder="code", channels=(4, 8, 8, 8), code_dim=8, hidden=16, latent_channels=2))
    assert code_only.decoder(torch.zeros(2, 8)).shape == (2, 3, 64, 64)
    with pytest.raises(ValueError, match="decoder must be"):
        LEEDConfig(decoder="pixels")


def test_the_decoders_start_at_the_neutral_face_and_the_code_decoder_ignores_it(faces):
    neutral = faces["image"][:2]
    for decoder in ("residual", "flow"):
        model = LEED(LEEDConfig(decoder=decoder, channels=(4, 8, 8, 8), code_dim=8, hidden=16, latent_channels=2)).eval()
        with torch.no_grad():
            torch.testing.assert_close(model.decoder(torch.randn(2, 8), neutral), neutral)  # r = 0, flow = 0
    with pytest.raises(ValueError, match="paints on the neutral face"):
        model.decoder(torch.zeros(2, 8))


def test_the_warm_start_trains_the_autoencoder_alone_and_the_critic_waits():
    data = neutral_faces(limit=8)
    config = LEEDConfig(decoder="flow", channels=(4, 8, 8, 8), code_dim=8, hidden=16, latent_channels=2)
    task = LEEDTask(config, LEEDTrainConfig(autoencoder_steps=2, n_critic=1), data)
    task.modules, task.optimizers = task.build(torch.device("cpu"))
    batch = task.prepare(next(iter(torch.utils.data.DataLoader(data, batch_size=4))), 0)
    assert batch["reference_features"] is None  # Psi is not needed yet
    assert not task.critic_losses(batch, 0)["loss"].requires_grad
    assert set(task.generator_losses(batch, 1)) == {"loss", "recon_perceptual", "recon_pixel"}
    after = task.prepare(next(iter(torch.utils.data.DataLoader(data, batch_size=4))), 2)
    assert "siamese" in task.generator_losses(after, 2) and task.critic_losses(after, 2)["loss"].requires_grad


def test_paper_config_is_128_pixels():
    model = LEED(LEEDConfig.paper()).eval()
    with torch.no_grad():
        out = model.edit(*(torch.zeros(1, 3, 128, 128),) * 3, torch.ones(1))
    assert out["output"].shape == (1, 3, 128, 128)


def test_one_step_trains_every_part_with_the_papers_losses():
    data = neutral_faces(limit=8)
    train = dataclasses.replace(LEEDTrainConfig.cpu(), autoencoder_steps=0)
    task = LEEDTask(LEEDConfig(decoder="flow", channels=(4, 8, 8, 8), code_dim=8, hidden=16, latent_channels=2), train, data)
    modules, _ = task.build(torch.device("cpu"))
    task.modules, task.optimizers = modules, _
    torch.nn.init.normal_(modules["generator"].decoder.head.weight, std=0.01)  # trained: no longer the zero start
    batch = task.prepare(next(iter(torch.utils.data.DataLoader(data, batch_size=4))), 0)
    terms = task.generator_losses(batch, 0)
    for name in ("recon_perceptual", "recon_pixel", "extractor", "q", "interpolation", "interpolator_identity",
                 "latent_adversarial", "siamese"):
        assert math.isfinite(float(torch.as_tensor(terms[name]).detach())), name
    terms["loss"].backward()
    model = modules["generator"]
    for part in ("encoder", "decoder", "extractor", "q", "interpolator", "siamese"):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in getattr(model, part).parameters()), part
    # Eq. 11 is the package's one copy: 1 - cos of the two transform vectors
    a, b = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    assert float(losses.leed_siamese(a, torch.zeros(1, 2), b, torch.zeros(1, 2))) == pytest.approx(1.0)


def test_editor_takes_references_and_stored_expression_references(faces):
    model = tiny_model()
    model.reference_images.copy_(faces["image"][:8])
    model.reference_identity.copy_(faces["identity"][:8])
    model.reference_yaw.copy_(faces["yaw"][:8])
    editor = LEEDEditor(model, TrueRenderNeutraliser())
    assert editor.name == "leed" and "oracle" in editor.paper
    images = faces["image"][:2]
    known = {"identity": faces["identity"][:2], "yaw": faces["yaw"][:2]}
    by_reference = editor.edit(images, Target(reference=faces["image"][2:4], intensity=1.0,
                                              known={**known, "reference_identity": faces["identity"][2:4],
                                                     "reference_yaw": faces["yaw"][2:4]}))
    by_name = editor.edit(images, Target(expression=["happy", "sad"], known=known))
    assert by_reference.output.shape == by_name.output.shape == images.shape
    with pytest.raises(ValueError, match="oracle"):
        editor.edit(images, Target(expression="happy"))  # a photo: no render parameters
    with pytest.raises(ValueError, match="known must map"):
        Target(expression="happy", known={"emotion": torch.zeros(2)})


def test_registry_marks_the_oracle_and_the_photo_editor_leaves_it_out():
    table = list_editors().set_index("name")
    assert table.loc["leed", "oracle"] and not table.loc["leed_fvae", "oracle"]
    assert editor_info("leed").floors == (("expression_accuracy", (0.80, None)), ("identity_verification", (0.95, None)))


def test_an_editor_that_cannot_make_neutral_faces_is_refused():
    class OnlyAUs:
        name, accepts, expressions = "aus_only", ("aus",), ()

    with pytest.raises(ValueError, match="cannot make neutral faces"):
        EditorNeutraliser(OnlyAUs())


@pytest.mark.slow
def test_shipped_leed_meets_the_floors_on_a_fresh_held_out_sample():
    """A fresh held-out sample (seed 1; the recipe measured seed 0) reproduces the manifest's figures, and they
    meet the floors (oracle neutral faces); a model shipped below them (recorded as such) is an expected failure."""
    import facelib
    from facelib.evaluation import evaluate

    if "leed" not in available_pretrained():
        pytest.skip("leed is not shipped yet: python -m facelib train leed --ship")
    editor = facelib.load_editor("leed")
    table = evaluate(editor, "reference", preset="rafd", split="test", n=384, seed=1, spread=True, progress=False,
                     metrics=["expression accuracy (facelib classifier)", "identity verification (facelib embedder)"])
    measured = dict(zip(table.metric, table.value))
    accuracy = measured["expression accuracy (facelib classifier)"]
    identity = measured["identity verification (facelib embedder)"]
    recorded = pretrained_info("leed")["metrics"]
    assert abs(accuracy - recorded["expression_accuracy"]) <= 0.08, (measured, recorded)  # 384 vs 768 pairs
    assert abs(identity - recorded["identity_verification"]) <= 0.1, (measured, recorded)
    if not editor_info("leed").meets_floors():
        pytest.xfail(f"leed ships below its floors (80 % / 95 %), as recorded: {measured}")
    assert accuracy >= 0.80 and identity >= 0.95, measured
    assert recorded["train_seconds"] <= 2 * 3600, recorded
