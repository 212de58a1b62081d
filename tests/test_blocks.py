"""facelib.models.blocks: shapes at 64 and 128 px, the StarGAN-style blocks' behaviour, and the
shipped checkpoints, whose trunks now live there, still loading strictly."""
from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from facelib.pretrained import available_pretrained, load_pretrained, pretrained_files
from facelib.models.blocks import (
    ConvEncoder,
    ConvTrunk,
    LatentCritic,
    PatchCritic,
    ResidualBlock,
    SkipDecoder,
    conv_norm_act,
    down_block,
    tile_condition,
    up_block,
)

SIZES = (64, 128)


@pytest.fixture(autouse=True)
def _few_threads():
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("norm", ["batch", "instance", None])
@pytest.mark.parametrize("activation", ["relu", "leaky_relu", None])
def test_conv_norm_act_shapes_and_layers(size, norm, activation):
    x = torch.randn(2, 3, size, size)
    same = conv_norm_act(3, 8, 3, norm=norm, activation=activation)
    assert same(x).shape == (2, 8, size, size)
    halved = conv_norm_act(3, 8, 4, 2, norm=norm, activation=activation, padding=1)
    assert halved(x).shape == (2, 8, size // 2, size // 2)
    doubled = conv_norm_act(3, 8, 4, 2, norm=norm, activation=activation, padding=1, transposed=True)
    assert doubled(x).shape == (2, 8, 2 * size, 2 * size)
    kinds = [type(layer).__name__ for layer in same]
    expected = ["Conv2d"] + {"batch": ["BatchNorm2d"], "instance": ["InstanceNorm2d"], None: []}[norm] \
        + {"relu": ["ReLU"], "leaky_relu": ["LeakyReLU"], None: []}[activation]
    assert kinds == expected
    # a norm's shift replaces the conv bias
    assert (same[0].bias is None) == (norm is not None)
    if activation == "relu":
        assert float(same(x).detach().min()) >= 0


def test_conv_norm_act_names_what_it_accepts():
    with pytest.raises(ValueError, match=r"norm must be one of \['batch', 'instance', None\], got 'group'"):
        conv_norm_act(3, 8, 3, norm="group")
    with pytest.raises(ValueError, match="activation must be one of"):
        conv_norm_act(3, 8, 3, activation="gelu")


@pytest.mark.parametrize("size", SIZES)
def test_residual_block_keeps_the_shape(size):
    block = ResidualBlock(16)
    x = torch.randn(2, 16, size, size)
    assert block(x).shape == x.shape
    block.eval()
    assert block(x).shape == x.shape


def test_residual_block_is_the_identity_when_its_convs_are_zero():
    block = ResidualBlock(8)
    with torch.no_grad():
        for layer in block.modules():
            if isinstance(layer, torch.nn.Conv2d):
                layer.weight.zero_()
    x = torch.randn(2, 8, 16, 16)
    torch.testing.assert_close(block(x), x)  # training mode: per-image statistics
    block.eval()
    torch.testing.assert_close(block(x), x)  # eval mode: StarGAN's running statistics
    # and it is not the identity with its initial weights
    assert (ResidualBlock(8)(x) - x).abs().max() > 1e-3


def test_instance_norm_follows_stargans_public_code():
    norms = [m for m in ResidualBlock(8).modules() if isinstance(m, torch.nn.InstanceNorm2d)]
    assert len(norms) == 2 and all(n.affine and n.track_running_stats for n in norms)
    ganimation = [m for m in ResidualBlock(8, track_running_stats=False).modules()
                  if isinstance(m, torch.nn.InstanceNorm2d)]
    assert all(n.affine and not n.track_running_stats for n in ganimation)
    for block in (down_block(3, 8), up_block(8, 3)):
        assert isinstance(block[1], torch.nn.InstanceNorm2d) and block[1].affine
        assert isinstance(block[2], torch.nn.ReLU)


@pytest.mark.parametrize("size", SIZES)
def test_down_block_halves_and_up_block_doubles(size):
    x = torch.randn(2, 8, size, size)
    down = down_block(8, 16)
    assert tuple(down[0].kernel_size) == (4, 4) and tuple(down[0].stride) == (2, 2)
    assert down(x).shape == (2, 16, size // 2, size // 2)
    up = up_block(8, 4)
    assert isinstance(up[0], torch.nn.ConvTranspose2d) and tuple(up[0].kernel_size) == (4, 4)
    assert up(x).shape == (2, 4, 2 * size, 2 * size)


@pytest.mark.parametrize("size, num_layers, final", [(64, 5, 2), (64, 6, 1), (128, 6, 2)])
@pytest.mark.parametrize("n_aux", [8, 17])  # RaFD's 8 classes (StarGAN, LEED) or 17 AUs (GANimation, DFT-Net)
def test_patch_critic_heads(size, num_layers, final, n_aux):
    critic = PatchCritic(size, n_aux, base_channels=8, num_layers=num_layers)
    patch, aux = critic(torch.randn(3, 3, size, size))
    assert patch.shape == (3, 1, final, final)
    assert aux.shape == (3, n_aux)
    # the auxiliary conv's kernel covers the whole final map, the patch head is 3x3
    assert tuple(critic.aux.kernel_size) == (final, final)
    assert tuple(critic.patch.kernel_size) == (3, 3)
    convs = [m for m in critic.trunk.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == num_layers and all(tuple(c.stride) == (2, 2) for c in convs)
    slopes = {m.negative_slope for m in critic.modules() if isinstance(m, torch.nn.LeakyReLU)}
    assert slopes == {0.01}
    assert not any(isinstance(m, (torch.nn.BatchNorm2d, torch.nn.InstanceNorm2d)) for m in critic.modules())


def test_patch_critic_refuses_sizes_it_was_not_built_for():
    with pytest.raises(ValueError, match="divisible by 2\\*\\*num_layers"):
        PatchCritic(96, 17, num_layers=6)
    critic = PatchCritic(64, 17, base_channels=4, num_layers=5)
    with pytest.raises(ValueError, match="built for 64 px images"):
        critic(torch.randn(1, 3, 128, 128))


def test_latent_critic_gives_one_score_per_code():
    critic = LatentCritic(50)
    codes = torch.randn(4, 50)
    assert critic(codes).shape == (4,)
    widths = [m.out_features for m in critic.modules() if isinstance(m, torch.nn.Linear)]
    assert widths == [128, 64, 32, 16, 1]  # EGGAN's 512-128-64-32-16-1 with latent 512
    with_bn = LatentCritic(50, (64, 32, 16), batch_norm=True)  # ExprGAN's D_z
    assert with_bn(codes).shape == (4,)
    assert sum(isinstance(m, torch.nn.BatchNorm1d) for m in with_bn.modules()) == 3
    with pytest.raises(ValueError, match=r"codes \[B, 50\]"):
        critic(torch.randn(4, 49))


def test_tile_condition_against_a_hand_written_reference():
    images = torch.randn(2, 3, 5, 4)
    condition = torch.tensor([[1.0, 0.0, -2.5], [0.5, 3.0, 0.0]])
    tiled = tile_condition(images, condition)
    assert tiled.shape == (2, 6, 5, 4)
    reference = torch.empty(2, 6, 5, 4)
    for b in range(2):
        for c in range(6):
            for y in range(5):
                for x in range(4):
                    reference[b, c, y, x] = images[b, c, y, x] if c < 3 else condition[b, c - 3]
    assert torch.equal(tiled, reference)
    with pytest.raises(ValueError, match=r"condition must be a tensor \[B, K\] with B = 2"):
        tile_condition(images, condition[:1])
    with pytest.raises(ValueError, match=r"images must be a tensor \[B, C, H, W\]"):
        tile_condition(images[0], condition)


@pytest.mark.parametrize("size", SIZES)
def test_fvae_trunks_take_plain_channel_lists(size):
    stages = [8, 16, 32, 32, 32][: {64: 4, 128: 5}[size]]  # down to 4x4
    encoder = ConvEncoder(stages)
    source = torch.randn(2, 3, size, size)
    features = encoder(source)
    assert [tuple(f.shape[1:]) for f in features] == [(c, size // 2 ** (i + 1), size // 2 ** (i + 1))
                                                      for i, c in enumerate(stages)]
    decoder = SkipDecoder(stages, latent_channels=6, out_channels=2)
    z = torch.randn(2, 6, 4, 4)
    assert decoder(source, features, z).shape == (2, 2, size, size)


@pytest.mark.parametrize("size", SIZES)
def test_conv_trunk_feature_maps(size):
    trunk = ConvTrunk((8, 16, 16))
    maps = trunk.feature_maps(torch.randn(2, 3, size, size))
    assert [tuple(m.shape) for m in maps] == [(2, 8, size, size), (2, 16, size // 2, size // 2),
                                              (2, 16, size // 4, size // 4)]
    torch.testing.assert_close(trunk(torch.ones(1, 3, size, size)), trunk.feature_maps(torch.ones(1, 3, size, size))[-1])


@pytest.mark.parametrize("name", available_pretrained())
def test_every_shipped_checkpoint_still_loads_strictly(name):
    # The FVAE and evaluator trunks moved to blocks.py: their state_dict keys must not change.
    model = load_pretrained(name)  # load_state_dict(strict=True) inside
    weights_path, _ = pretrained_files(name)
    with safe_open(str(weights_path), "pt") as stored:
        stored_keys = set(stored.keys())
    assert set(model.state_dict()) == stored_keys


def test_resize_up_sampling_doubles_the_size_and_paints_no_checkerboard():
    """A transposed 4x4 stride-2 conv of a constant map gives a periodic pattern at the borders of its
    overlaps; nearest up-sampling + a 3x3 conv gives a constant map away from the image border."""
    from facelib.models.blocks import up_block

    torch.manual_seed(0)
    constant = torch.ones(1, 4, 8, 8)
    resize = up_block(4, 3, track_running_stats=False, mode="resize")[:2]  # up-sampling and the conv, no norm
    out = resize(constant)
    assert out.shape == (1, 3, 16, 16)
    inner = out[..., 1:-1, 1:-1]
    torch.testing.assert_close(inner, inner[..., :1, :1].expand_as(inner))
    transposed = up_block(4, 3, track_running_stats=False)[0]
    assert transposed(constant).shape == (1, 3, 16, 16)
    with pytest.raises(ValueError, match="mode must be 'transposed' or 'resize'"):
        up_block(4, 3, mode="bilinear")
