"""GANTask's pluggable parts: the objectives against independent references, lazy R1, the EMA generator,
prepare() once per step, the critic warm-up, DiffAugment, resume with all of them, and LearningCurve."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from facelib.losses import gan_discriminator_loss, gan_generator_loss, hinge_critic_loss, r1_penalty
from facelib.train import read_log
from facelib.train.gan import GANTask, diff_augment
from test_gan_task import run as fit
from toy_training import ToyGAN, parameter_digest

torch.set_num_threads(1)


def test_hinge_and_non_saturating_losses_match_their_formulas():
    real, fake = torch.tensor([2.0, 0.5, -1.0]), torch.tensor([-3.0, 0.2, 1.5])
    hinge = (sum(max(0.0, 1 - r) for r in real.tolist()) + sum(max(0.0, 1 + f) for f in fake.tolist())) / 3
    assert hinge_critic_loss(real, fake).item() == pytest.approx(hinge)
    sigmoid = torch.sigmoid
    assert gan_discriminator_loss(real, fake).item() == pytest.approx(
        (-torch.log(sigmoid(real)).mean() - torch.log(1 - sigmoid(fake)).mean()).item(), rel=1e-6)
    assert gan_generator_loss(fake).item() == pytest.approx(-torch.log(sigmoid(fake)).mean().item(), rel=1e-6)


def test_r1_is_the_mean_squared_gradient_norm_at_the_real_samples():
    weight = torch.tensor([[1.0, -2.0, 3.0]])
    real = torch.randn(5, 3)

    def critic(x):  # D(x) = (w.x)^2: grad = 2 (w.x) w, |grad|^2 = 4 (w.x)^2 |w|^2
        return (x @ weight.T).square()

    expected = (4 * (real @ weight.T).square() * weight.square().sum()).mean()
    penalty = r1_penalty(critic, real)
    assert penalty.item() == pytest.approx(expected.item(), rel=1e-5) and penalty.requires_grad


@pytest.mark.parametrize("objective, options", [("non-saturating", {"r1_weight": 1.0, "r1_every": 2}),
                                                ("hinge", {})])
def test_each_objective_trains_with_one_critic_step_per_generator_step(tmp_path, objective, options):
    task, _ = fit(tmp_path, 6, objective=objective, n_critic=1, **options)
    assert task.generator_updates == list(range(6))
    log = read_log(tmp_path)
    assert "gradient_penalty" not in log.columns
    if options:  # lazy R1: on critic steps 0, 2, 4 only
        assert log["r1"].notna().tolist() == [True, False, True, False, True, False]


def test_bad_objectives_are_refused():
    with pytest.raises(ValueError, match="objective must be one of"):
        ToyGAN(objective="wgan")
    with pytest.raises(ValueError, match="r1_weight is for the non-saturating and hinge objectives"):
        ToyGAN(objective="wgan-gp", r1_weight=1.0)
    with pytest.raises(ValueError, match="ema_decay must be a float in"):
        ToyGAN(ema_decay=1.0)
    with pytest.raises(ValueError, match="warmup_steps must be an int >= 0"):
        ToyGAN(warmup_steps=-1)


def test_prepare_runs_once_per_step_and_both_players_see_it(tmp_path):
    task, _ = fit(tmp_path, 6, n_critic=2)
    critic = {step: draw for player, step, draw in task.seen if player == "critic"}
    generator = {step: draw for player, step, draw in task.seen if player == "generator"}
    assert sorted(generator) == [1, 3, 5] and all(generator[step] == critic[step] for step in generator)
    assert len(set(critic.values())) == 6  # a new draw every step


def test_the_ema_is_a_ramped_moving_average_of_the_generator_and_is_what_ships(tmp_path):
    task, _ = fit(tmp_path, 4, n_critic=1, ema_decay=0.9)
    assert [task.ema_beta(step) for step in range(3)] == pytest.approx([1 / 10, 2 / 11, 3 / 12])
    assert task.ema_beta(10_000) == 0.9
    assert task.shipped_generator() is task.unwrap("generator_ema")
    assert not any(p.requires_grad for p in task.shipped_generator().parameters())
    # one more update by hand: ema <- beta ema + (1 - beta) generator
    ema, generator = task.unwrap("generator_ema"), task.unwrap("generator")
    before = [p.clone() for p in ema.parameters()]
    beta = task.ema_beta(4)
    task.update_ema(4)
    for old, new, current in zip(before, ema.parameters(), generator.parameters()):
        torch.testing.assert_close(new, beta * old + (1 - beta) * current)
    assert parameter_digest(ema) != parameter_digest(generator)


def test_the_warm_up_trains_only_the_critic_then_the_schedule_starts(tmp_path):
    task, _ = fit(tmp_path, 7, n_critic=2, warmup_steps=3)
    assert [step for player, step, _ in task.seen if player == "warmup"] == [0, 1, 2]
    assert task.generator_updates == [4, 6]
    log = read_log(tmp_path)
    assert log["warmup_critic_loss"].notna().tolist() == [True] * 3 + [False] * 4


def test_resume_is_bit_identical_with_ema_r1_and_warm_up(tmp_path):
    options = dict(objective="non-saturating", n_critic=1, r1_weight=0.5, r1_every=3, ema_decay=0.9,
                   warmup_steps=2, decay_steps=4)
    straight, _ = fit(tmp_path / "straight", 10, **options)
    fit(tmp_path / "resumed", 10, kill_at=5, **options)
    resumed, result = fit(tmp_path / "resumed", 10, resume=True, **options)
    assert result.first_step == 5
    for name in ("generator", "critic", "generator_ema"):
        assert parameter_digest(resumed.unwrap(name)) == parameter_digest(straight.unwrap(name))


def test_diff_augment_translates_by_whole_pixels_and_keeps_gradients():
    torch.manual_seed(0)
    images = torch.randn(6, 3, 16, 16, requires_grad=True)
    torch.manual_seed(1)
    shifted = diff_augment(images, "translation")
    torch.manual_seed(1)
    dy = torch.randint(-2, 3, (6,))
    dx = torch.randint(-2, 3, (6,))
    for i in range(6):  # an independent reference: zero-pad, then cut the window out
        padded = F.pad(images[i], (2, 2, 2, 2))
        window = padded[:, 2 - dy[i]:2 - dy[i] + 16, 2 - dx[i]:2 - dx[i] + 16]
        torch.testing.assert_close(shifted[i], window)
    shifted.sum().backward()
    assert images.grad.abs().sum() > 0
    coloured = diff_augment(images.detach(), "colour")
    assert coloured.shape == images.shape and not torch.equal(coloured, images.detach())
    with pytest.raises(ValueError, match=r"unknown transforms \['cutout'\].*accepted: \['colour', 'translation'\]"):
        diff_augment(images, "colour,cutout")


def test_a_task_without_warmup_losses_says_what_is_missing():
    class NoWarmup(GANTask):
        pass

    with pytest.raises(NotImplementedError, match="has warmup_steps but no warmup_losses"):
        NoWarmup(warmup_steps=1).warmup_losses({}, 0)
