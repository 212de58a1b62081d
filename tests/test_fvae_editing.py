"""FVAE editing (Algorithm 1 as FVAEEditor, Algorithm 2, Sec. 4.3 flow upsampling) and the Sec. 6 baselines, on small models."""
from __future__ import annotations

import math

import pytest
import torch

from facelib.editors import Target
from facelib.evaluation.fvae import pixel_upsample
from facelib.models.baselines import AverageFlow, AverageFlowEditor, cross_fade, mesh_morph, optical_flow, optical_flow_morph
from facelib.models.fvae import FVAE, ConfidenceNet, FVAEEditor, PixelVAE, confidence_blend, flow_upsample, interpolate
from facelib.train.fvae import expression_latents
from facelib.warp import warp

from fvae_helpers import SMALL
from fvae_helpers import smooth_images as _smooth_images


def smooth_images(batch: int, size: int, seed: int = 0) -> torch.Tensor:
    return _smooth_images(batch, size, seed, coarse_divisor=8)  # smoother than the FVAE tests' images


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return FVAE(SMALL).eval()


@pytest.fixture(scope="module")
def latents(model):
    with torch.no_grad():
        z = model.latent(smooth_images(4, 32, seed=1))
    return {"neutral": z[:2].mean(0), "happy": z[2:].mean(0)}


@pytest.fixture(scope="module")
def editor(model, latents):
    return FVAEEditor(model, latents)


def test_algorithm1_intensity_zero_is_the_source_latent_and_intensities_are_linear(model, latents, editor):
    source = smooth_images(2, 32, seed=2)
    with torch.no_grad():
        direct = model.decode(source, model.latent(source))
        z_edit = model.latent(source) + 1.0 * (latents["happy"] - latents["neutral"])
        expected = model.decode(source, z_edit)
    at_zero = editor.edit(source, Target(expression="happy", intensity=0.0, source_expression="neutral"))
    torch.testing.assert_close(at_zero.output, direct["output"])
    full = editor.edit(source, Target(expression="happy", source_expression="neutral"))
    assert full.output.shape == (2, 3, 32, 32) and full.flow.shape == (2, 2, 32, 32)
    torch.testing.assert_close(full.flow, expected["flow"])
    torch.testing.assert_close(full.latent, z_edit)
    per_image = editor.edit(source, Target(expression="happy", intensity=[0.0, 1.0], source_expression="neutral"))
    torch.testing.assert_close(per_image.output[0], direct["output"][0])
    torch.testing.assert_close(per_image.output[1], expected["output"][1])


def test_out_of_dataset_variant_walks_from_z_of_s_to_the_target_average(model, latents, editor):
    source = smooth_images(1, 32, seed=3)
    result = editor.edit(source, Target(expression="happy"))  # source expression unknown: Z_source = Z(S)
    with torch.no_grad():
        expected = model.decode(source, latents["happy"].unsqueeze(0))["output"]
    torch.testing.assert_close(result.output, expected)


def test_suppress_and_magnify_intensities_extrapolate(model, latents, editor):
    source = smooth_images(1, 32, seed=4)
    for factor in (-1.0, 2.0):
        result = editor.edit(source, Target(expression="happy", intensity=factor, source_expression="neutral"))
        with torch.no_grad():
            z = model.latent(source) + factor * (latents["happy"] - latents["neutral"])
            torch.testing.assert_close(result.flow, model.decode(source, z)["flow"])
    with pytest.raises(ValueError, match=r"intensities in \[-1, 2\]"):
        editor.edit(source, Target(expression="happy", intensity=3.0))


def test_a_reference_target_decodes_with_the_reference_latent(model, editor):
    source, reference = smooth_images(2, 32, seed=5), smooth_images(2, 32, seed=6)
    result = editor.edit(source, Target(reference=reference))
    with torch.no_grad():
        expected = model.decode(source, model.latent(reference))["output"]
    torch.testing.assert_close(result.output, expected)


def test_unknown_expressions_and_wrong_sizes_are_refused_naming_what_is_accepted(editor):
    with pytest.raises(ValueError, match="valid expressions are"):
        Target(expression="gleeful")
    with pytest.raises(ValueError, match="cannot edit to 'sad'.*happy"):
        editor.edit(smooth_images(1, 32), Target(expression="sad"))
    with pytest.raises(ValueError, match="no latent for the source expression 'sad'"):
        editor.edit(smooth_images(1, 32), Target(expression="happy", source_expression="sad"))
    with pytest.raises(ValueError, match="64x64, but 32x32 is accepted.*accepts expression"):
        editor.edit(smooth_images(1, 64), Target(expression="happy"))
    with pytest.raises(ValueError, match="does not accept aus targets; it accepts expression"):
        editor.edit(smooth_images(1, 32), Target(aus=torch.zeros(1, 17)))


def test_sec_4_3_edit_highres_warps_the_large_face_by_the_upsampled_flow(model, editor):
    highres = smooth_images(1, 128, seed=12)
    result = editor.edit_highres(highres, Target(expression="happy"))
    assert result.output.shape == (1, 3, 128, 128) and result.flow.shape == (1, 2, 32, 32)
    torch.testing.assert_close(result.output, flow_upsample(highres, result.flow))


def test_confidence_blend_is_a_softmax_over_the_masks():
    a, b = torch.full((1, 3, 4, 4), -1.0), torch.full((1, 3, 4, 4), 1.0)
    logit_a = torch.zeros(1, 1, 4, 4)
    logit_b = torch.zeros(1, 1, 4, 4)
    logit_b[..., :2] = 20.0  # source b is confident on the left half only
    blended, weights = confidence_blend([a, b], [logit_a, logit_b])
    torch.testing.assert_close(weights.sum(0), torch.ones(1, 1, 4, 4))
    assert torch.allclose(blended[..., :2], b[..., :2], atol=1e-6)
    assert torch.allclose(blended[..., 2:], torch.zeros(1, 3, 4, 2))  # equal confidence -> the average
    expected = math.exp(1.0) / (math.exp(1.0) + math.exp(0.0))
    _, weights = confidence_blend([a, b], [torch.ones(1, 1, 1, 1), torch.zeros(1, 1, 1, 1)])
    assert abs(float(weights[0]) - expected) < 1e-6
    with pytest.raises(ValueError, match="same number"):
        confidence_blend([a], [logit_a])


def test_algorithm2_ends_at_the_second_latent_and_blends_both_sources(model):
    torch.manual_seed(1)
    mask_net = ConfidenceNet(SMALL).eval()
    s1, s2 = smooth_images(2, 32, seed=5), smooth_images(2, 32, seed=6)
    result = interpolate(model, mask_net, s1, s2, [1 / 3, 2 / 3, 1.0])
    assert result["outputs"].shape == (3, 2, 3, 32, 32) and result["weight1"].shape == (3, 2, 1, 32, 32)
    z2 = model.latent(s2)
    torch.testing.assert_close(result["from_source2"][-1], model.decode(s2, z2)["output"])
    w = result["weight1"]
    torch.testing.assert_close(result["outputs"], w * result["from_source1"] + (1 - w) * result["from_source2"])


def test_flow_upsampling_applies_the_rescaled_flow_to_the_highres_source():
    highres = smooth_images(1, 128, seed=7)
    flow = torch.zeros(1, 2, 32, 32)
    flow[:, 0] = 32 / 128  # both sizes cover the same image plane: 1/4 low-res px = 1 high-res px
    out = flow_upsample(highres, flow)
    torch.testing.assert_close(out[..., :, :-1], highres[..., :, 1:], atol=1e-5, rtol=0)
    assert pixel_upsample(smooth_images(2, 32), 128).shape == (2, 3, 128, 128)


def test_pixel_vae_edits_have_no_flow():
    torch.manual_seed(2)
    vae = PixelVAE(SMALL).eval()
    with torch.no_grad():
        z = vae.latent(smooth_images(2, 32))
    result = FVAEEditor(vae, {"neutral": z[0], "happy": z[1]}, name="pixel").edit(smooth_images(1, 32), Target(expression="happy"))
    assert result.flow is None and result.output.shape == (1, 3, 32, 32)
    # no flow to upsample: a large face gets the output enlarged (pixel upsampling, Fig. 7)
    large = FVAEEditor(vae, {"happy": z[1]}, name="pixel").edit_highres(smooth_images(1, 64), Target(expression="happy"))
    assert large.flow is None and large.output.shape == (1, 3, 64, 64)
    small = FVAEEditor(vae, {"happy": z[1]}, name="pixel").edit(smooth_images(1, 32), Target(expression="happy"))
    torch.testing.assert_close(large.output, pixel_upsample(small.output, 64))


# ------------------------------------------------------------------ baselines (FVAE Sec. 6)
def test_optical_flow_recovers_a_known_shift():
    source = smooth_images(1, 64, seed=8)
    true_flow = torch.zeros(1, 2, 64, 64)
    true_flow[:, 0], true_flow[:, 1] = 1.5, -0.75
    target = warp(source, true_flow)
    for method in ("dis", "farneback"):
        estimated = optical_flow(source, target, method=method)
        error = (estimated - true_flow)[..., 16:48, 16:48].norm(dim=1).mean()
        assert error < 0.1, (method, float(error))
    with pytest.raises(ValueError, match="'dis' or 'farneback'"):
        optical_flow(source, target, method="epicflow")


def test_mesh_morph_ends_and_cross_fade():
    a, b = smooth_images(1, 32, seed=9), smooth_images(1, 32, seed=10)
    landmarks = torch.tensor([[[10.0, 10.0], [22.0, 10.0], [16.0, 18.0], [16.0, 25.0]]])
    moved = landmarks + torch.tensor([1.0, 2.0])
    torch.testing.assert_close(mesh_morph(a, b, landmarks, moved, 0.0), a, atol=1e-5, rtol=0)
    torch.testing.assert_close(mesh_morph(a, b, landmarks, moved, 1.0), b, atol=1e-5, rtol=0)
    # A pure translation of the landmarks moves the in-between image's interior content.
    half = mesh_morph(a, a, landmarks, landmarks, 0.5)
    torch.testing.assert_close(half, a, atol=1e-5, rtol=0)
    torch.testing.assert_close(cross_fade(a, b, 0.25), 0.75 * a + 0.25 * b)
    with pytest.raises(ValueError, match=r"\[B, K, 2\]"):
        mesh_morph(a, b, landmarks, landmarks[:, :3], 0.5)
    assert optical_flow_morph(a, b, 0.5).shape == a.shape


def test_average_flow_warps_by_the_mean_flow():
    flows = torch.zeros(4, 2, 16, 16)
    flows[:2, 0] = 1.0
    flows[2:, 0] = 3.0
    visible = torch.ones(4, 1, 16, 16)
    flows[0, :, :, :3], visible[0, :, :, :3] = 1e6, 0.0  # undefined true flow where not visible: ignored
    items = [{"flow": f, "visible": v, "source_emotion": torch.tensor(0), "target_emotion": torch.tensor(5)}
             for f, v in zip(flows, visible)]
    average = AverageFlow.fit(items, batch_size=3)
    torch.testing.assert_close(average.flow("neutral", "happy")[0, :, :3], torch.full((16, 3), 7 / 3))
    flows[0, 0, :, :3], flows[0, 1, :, :3] = 1.0, 0.0
    items = [{"flow": f, "source_emotion": torch.tensor(0), "target_emotion": torch.tensor(5)} for f in flows]
    average = AverageFlow.fit(items, batch_size=3)
    torch.testing.assert_close(average.flow("neutral", "happy"), torch.stack([torch.full((16, 16), 2.0),
                                                                              torch.zeros(16, 16)]))
    image = smooth_images(1, 16)
    torch.testing.assert_close(average(image, "neutral", "happy"), warp(image, average.flow(0, 5).unsqueeze(0)))
    with pytest.raises(ValueError, match="fitted pairs"):
        average.flow("neutral", "sad")
    editor = AverageFlowEditor(average)
    half = editor.edit(image, Target(expression="happy", intensity=0.5))  # unknown source: taken as neutral
    torch.testing.assert_close(half.output, warp(image, 0.5 * average.flow(0, 5).unsqueeze(0)))
    with pytest.raises(ValueError, match="no flow for angry -> happy"):
        editor.edit(image, Target(expression="happy", source_expression="angry"))
    with pytest.raises(ValueError, match="valid expressions"):
        average.flow("neutral", "elated")


def test_expression_latents_average_each_label_and_respect_the_limits(model):
    images = smooth_images(6, 32, seed=11)
    items = [{"image": image, "emotion": torch.tensor(label)} for image, label in zip(images, [0, 0, 5, 5, 5, 7])]
    latents = expression_latents(model, items, max_per_expression=2, batch_size=4, progress=False)
    with torch.no_grad():
        z = model.latent(images)
    assert sorted(latents) == ["happy", "neutral", "surprised"]
    torch.testing.assert_close(latents["neutral"], z[:2].mean(0))
    torch.testing.assert_close(latents["happy"], z[2:4].mean(0))  # the third smile is over the limit
    torch.testing.assert_close(latents["surprised"], z[5])


@pytest.mark.parametrize("call", [
    lambda bad, good: optical_flow(bad, good),
    lambda bad, good: cross_fade(bad, good, 0.5),
    lambda bad, good: cross_fade(good, bad, 0.5),
])
def test_baselines_refuse_images_outside_the_conventions(call):
    good = torch.zeros(1, 3, 16, 16)
    with pytest.raises(ValueError, match=r"outside the accepted range \[-1, 1\]"):
        call(good + 255, good)
    with pytest.raises(ValueError, match="NaN"):
        call(torch.full_like(good, float("nan")), good)
    with pytest.raises(TypeError, match="torch.Tensor"):
        call(good.numpy(), good)
