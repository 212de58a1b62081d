"""Checks at the boundary: a network's forward checks shapes only and never reads a value.

Reading a value on the host (``bool(t)``, ``float(t)``, ``t.item()``) waits for the device; the
value checks (NaN, range) belong where images enter facelib (``Editor.edit``, the loaders, the
public metric and warp functions), once, not inside every forward pass of every training step.
"""
from __future__ import annotations

import pytest
import torch

from facelib.models.dftnet import DFTNetConfig, DFTNetGenerator
from facelib.models.eggan import EGGAN, EGGANClassifier, EGGANConfig, EGGANCritics
from facelib.models.evaluators import AURegressor, ExpressionClassifier, IdentityEmbedder, PerceptualFeatures
from facelib.models.exprgan import ExprGAN, ExprGANConfig, ExprGANCritic
from facelib.models.fvae import FVAE, ConfidenceNet, FVAEConfig, PixelVAE
from facelib.models.ganimation import GANimationConfig, GANimationCritic, GANimationGenerator
from facelib.models.leed import LEEDConfig, LEEDDecoder, LEEDEncoder, SiameseNetwork
from facelib.models.stargan import StarGANConfig, StarGANCritic, StarGANGenerator
from facelib.warp import warp, warp_kernel

torch.set_num_threads(1)


@pytest.fixture
def no_value_reads(monkeypatch):
    """Make every host read of a tensor's value fail, as a device synchronisation would cost."""
    def refuse(self, *args, **kwargs):
        raise AssertionError("a forward pass read a tensor's value on the host (a device synchronisation)")

    for method in ("__bool__", "__float__", "__int__", "item", "tolist"):
        monkeypatch.setattr(torch.Tensor, method, refuse)


def images(batch: int, size: int) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(size)) * 2 - 1


def forward_passes():
    """(name, module, inputs) for every network of facelib.models, at a tiny size."""
    x16, x32, x64 = images(2, 16), images(2, 32), images(2, 64)
    gan = dict(image_size=16, base_channels=4, residual_blocks=1, critic_base_channels=4, critic_layers=3)
    fvae = FVAEConfig(image_size=32, base_channels=4, max_channels=8, latent_channels=2)
    z = torch.zeros(2, 2, 4, 4)
    stargan = StarGANConfig(image_size=16, base_channels=4, residual_blocks=1, critic_channels=4, critic_layers=3)
    exprgan = ExprGANConfig(image_size=16, encoder_channels=(4, 8), identity_dim=6, decoder_channels=(8, 6, 4),
                            critic_channels=(4, 8), critic_hidden=16, q_hidden=8, q_class_hidden=4,
                            latent_critic_hidden=(8, 4))
    aus = torch.rand(2, 17)
    leed = LEEDConfig(image_size=16, channels=(4, 8), code_dim=8, latent_channels=2)
    eggan = EGGANConfig(image_size=16, encoder_channels=(4, 8), latent_dim=8, generator_channels=(8, 4, 4),
                        latent_critic_hidden=(8, 4), critic_channels=(4, 8), classifier_channels=(4, 8), skips=True,
                        output="residual", film=True)
    return [
        ("FVAE", FVAE(fvae), (x32, x32)),
        ("PixelVAE", PixelVAE(fvae), (x32, x32)),
        ("ConfidenceNet", ConfidenceNet(fvae), (x32, z)),
        ("StarGANGenerator", StarGANGenerator(stargan), (x16, torch.eye(8)[:2])),
        ("StarGANCritic", StarGANCritic(stargan), (x16,)),
        ("GANimationGenerator", GANimationGenerator(GANimationConfig(**gan)), (x16, aus)),
        ("GANimationCritic", GANimationCritic(GANimationConfig(**gan)), (x16,)),
        ("DFTNetGenerator", DFTNetGenerator(DFTNetConfig(**gan)), (x16, aus)),
        ("ExprGAN", ExprGAN(exprgan), (x16, torch.zeros(2, exprgan.code_size))),
        ("ExprGANCritic", ExprGANCritic(exprgan), (x16, torch.tensor([0, 3]))),
        ("LEEDEncoder", LEEDEncoder(leed), (x16,)),
        ("LEEDDecoder", LEEDDecoder(leed), (torch.zeros(2, 8), x16)),
        ("SiameseNetwork", SiameseNetwork(leed), (x16,)),
        ("EGGAN", EGGAN(eggan), (x16, aus)),
        ("EGGANCritics", EGGANCritics(eggan), (x16,)),
        ("EGGANClassifier", EGGANClassifier(eggan, outputs=5), (x16,)),
        ("ExpressionClassifier.forward", ExpressionClassifier(), (x64,)),
        ("AURegressor.forward", AURegressor(), (x64,)),
        ("IdentityEmbedder.forward", IdentityEmbedder(), (x64,)),
        ("PerceptualFeatures", PerceptualFeatures(IdentityEmbedder()), (x64,)),
    ]


@pytest.mark.parametrize("name, module, inputs", forward_passes(), ids=[case[0] for case in forward_passes()])
def test_forward_passes_read_no_values(name, module, inputs, no_value_reads):
    module.eval()
    with torch.no_grad():
        module.forward(*inputs)


def test_forward_passes_still_refuse_wrong_shapes():
    for name, module, inputs in forward_passes():
        if name == "PerceptualFeatures":
            continue  # resizes another size, with a warning (an instrument, see its docstring)
        if name == "LEEDDecoder":  # (codes, neutral): the neutral face is the image
            wrong = (inputs[0], inputs[1][:, :, :8, :8])
        else:
            wrong = (inputs[0][:, :, :8, :8],) + inputs[1:]
        with pytest.raises(ValueError, match=r"8x8|\[B, 3, |expects images|built for 16 px"):
            module.forward(*wrong)


def test_calling_an_evaluator_is_its_boundary():
    """``classifier(images)`` measures, so it checks the values; ``forward`` does not."""
    nan = torch.full((1, 3, 64, 64), float("nan"))
    for evaluator in (ExpressionClassifier(), AURegressor(), IdentityEmbedder()):
        with pytest.raises(ValueError, match="NaN"):
            evaluator.eval()(nan)
        assert evaluator.forward(nan).isnan().any()  # shape-checked only: NaN flows through


def test_warp_kernel_is_warp_without_the_value_checks():
    src = images(3, 16).double()
    for scale in (1.0, 5.0, 1e6):  # ordinary, larger than the image, far outside (clamped in both)
        flow = scale * (torch.rand(3, 2, 16, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64) - 0.5)
        torch.testing.assert_close(warp_kernel(src, flow), warp(src, flow), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="NaN"):
        warp(src.clone().fill_(float("nan")), torch.zeros(3, 2, 16, 16, dtype=torch.float64))
    with pytest.raises(ValueError, match="same H, W"):
        warp_kernel(src, torch.zeros(3, 2, 8, 8, dtype=torch.float64))
