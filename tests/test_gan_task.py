"""facelib.train.gan.GANTask: the n_critic schedule, the LR decay, bit-identical resume, logs, 2-rank DDP."""
from __future__ import annotations

import pytest
import torch

from facelib.train import Trainer, read_log
from facelib.train import gan as gan_module
from toy_training import Killed, ToyGAN, parameter_digest, torchrun

torch.set_num_threads(1)


def run(out_dir, steps, resume=False, log_every=1, kill_at=None, **schedule):
    """Train the toy GAN (n_critic 3, decay over the last 4 steps); ``kill_at``: stop there, with a checkpoint."""
    task = ToyGAN(kill_at=kill_at, **{"n_critic": 3, "decay_steps": 4, **schedule})
    trainer = Trainer(task, steps=steps, batch_size=4, seed=0, out_dir=out_dir, log_every=log_every, resume=resume,
                      checkpoint_every=kill_at or 0, progress=False)
    if kill_at is None:
        return task, trainer.fit()
    with pytest.raises(Killed):
        trainer.fit()
    return task, None


def digests(task):
    return {name: parameter_digest(task.unwrap(name)) for name in ("generator", "critic")}


def test_generator_updates_once_per_n_critic_critic_updates(tmp_path):
    before = []

    class Watched(ToyGAN):
        def training_step(self, batch, step):
            before.append(digests(self))
            return super().training_step(batch, step)

    task = Watched(n_critic=3)
    Trainer(task, steps=10, batch_size=4, out_dir=tmp_path, progress=False).fit()
    after = before[1:] + [digests(task)]
    changed = [step for step in range(10) if before[step]["generator"] != after[step]["generator"]]
    assert task.generator_updates == changed == [2, 5, 8]  # StarGAN's (i + 1) % n_critic == 0
    assert all(before[step]["critic"] != after[step]["critic"] for step in range(10))  # every step


def test_learning_rates_decay_linearly_to_zero_over_the_last_steps(tmp_path):
    task, _ = run(tmp_path / "four", 10, decay_steps=4, lr=(2e-4, 1e-4))
    generator_lr = [g for g, _ in task.lrs]
    assert generator_lr[:7] == [2e-4] * 7  # steps 0-5 full, step 6 = 2e-4 * (10 - 6) / 4
    assert generator_lr[7:] == pytest.approx([2e-4 * 3 / 4, 2e-4 * 2 / 4, 2e-4 * 1 / 4], rel=1e-12)
    assert [c for _, c in task.lrs][9] == pytest.approx(1e-4 / 4, rel=1e-12)
    assert task.optimizers["critic"].param_groups[0]["lr"] == 0.0  # after the last step
    half, _ = run(tmp_path / "half", 8, decay_steps=None)  # StarGAN: the second half
    assert [c for _, c in half.lrs] == pytest.approx([1e-4] * 5 + [1e-4 * 3 / 4, 1e-4 / 2, 1e-4 / 4], rel=1e-12)
    assert half.betas == (0.5, 0.999) and half.optimizers["generator"].param_groups[0]["betas"] == (0.5, 0.999)


def test_resume_is_bit_identical_schedulers_included(tmp_path):
    straight, _ = run(tmp_path / "straight", 12)
    run(tmp_path / "resumed", 12, kill_at=7)  # inside an n_critic cycle and inside the decay
    resumed, result = run(tmp_path / "resumed", 12, resume=True)
    assert result.first_step == 7 and resumed.generator_updates == [8, 11]
    assert digests(resumed) == digests(straight)
    assert resumed.lrs == straight.lrs[7:]
    for name in ("generator", "critic"):
        assert resumed.schedulers[name].state_dict() == straight.schedulers[name].state_dict()
        state_a = straight.optimizers[name].state_dict()["state"]
        state_b = resumed.optimizers[name].state_dict()["state"]
        assert all(torch.equal(state_a[i][k], state_b[i][k]) for i in state_a for k in state_a[i])
    columns = ["step", "critic_loss", "generator_loss", "gradient_penalty"]
    assert read_log(tmp_path / "resumed")[columns].equals(read_log(tmp_path / "straight")[columns])


def test_resume_without_the_schedulers_would_differ(tmp_path, monkeypatch):
    """Guards the test above: with stateful() empty the resumed run restarts the decay and ends elsewhere."""
    straight, _ = run(tmp_path / "straight", 12)
    monkeypatch.setattr(gan_module.GANTask, "stateful", lambda self: {})
    run(tmp_path / "resumed", 12, kill_at=7)
    resumed, _ = run(tmp_path / "resumed", 12, resume=True)
    assert resumed.lrs != straight.lrs[7:] and digests(resumed) != digests(straight)


def test_both_players_are_logged_and_generator_losses_average_over_generator_steps(tmp_path):
    task, _ = run(tmp_path, 12, log_every=6, decay_steps=0)
    log = read_log(tmp_path)
    assert {"critic_loss", "critic_real", "critic_fake", "gradient_penalty", "critic_classification",
            "generator_loss", "adversarial", "classification", "attention_mean"} <= set(log.columns)
    for line, window in zip(log.itertuples(), (range(0, 6), range(6, 12))):
        reported = [task.reported[step] for step in window]
        generator = [r["generator_loss"] for r in reported if "generator_loss" in r]
        assert len(generator) == 2  # steps 2, 5 / 8, 11
        assert line.generator_loss == pytest.approx(sum(generator) / 2, rel=1e-6)  # not / 6
        assert line.critic_loss == pytest.approx(sum(r["critic_loss"] for r in reported) / 6, rel=1e-6)
        assert 0 < line.attention_mean < 1 and line.gradient_penalty >= 0
    every_step = read_log(run(tmp_path / "every", 4, n_critic=2)[1].log_path)
    assert every_step["generator_loss"].isna().tolist() == [True, False, True, False]


def test_bad_schedules_and_shared_names_are_refused(tmp_path):
    with pytest.raises(ValueError, match="n_critic must be an int >= 1"):
        ToyGAN(n_critic=0)
    with pytest.raises(ValueError, match=r"lr must be a positive number or \(generator_lr, critic_lr\), got -0.1"):
        ToyGAN(lr=-0.1)
    with pytest.raises(ValueError, match="decay_steps=20 is more than the run's 10 steps"):
        run(tmp_path / "long", 10, decay_steps=20)

    class SharedName(ToyGAN):
        def generator_losses(self, batch, step):
            return {**super().generator_losses(batch, step), "gradient_penalty": torch.tensor(0.0)}

    with pytest.raises(ValueError, match=r"both return \['gradient_penalty'\]"):
        Trainer(SharedName(n_critic=1), steps=1, batch_size=4, out_dir=tmp_path / "shared", progress=False).fit()


def test_the_module_docstring_example_runs(tmp_path, monkeypatch):
    doc = gan_module.__doc__
    block = doc[doc.index("::\n") + 3:doc.index("What a subclass provides")]
    code = "\n".join(line[4:] for line in block.splitlines())
    monkeypatch.chdir(tmp_path)
    images = torch.rand(32, 3, 8, 8) * 2 - 1
    namespace = {"dataset": [{"image": image} for image in images]}
    exec(compile(code, "gan docstring", "exec"), namespace)
    log = read_log(tmp_path / "runs/tiny_gan")
    assert log["step"].iloc[-1] == 200 and log["generator_loss"].notna().all()


@pytest.mark.slow
def test_torchrun_gan_keeps_both_players_identical_on_two_ranks(tmp_path):
    ranks, seconds = torchrun(tmp_path, "--task", "gan", "--steps", "6")
    assert [r["world_size"] for r in ranks] == [2, 2] and all(r["ddp"] for r in ranks)
    assert ranks[0]["generator_updates"] == ranks[1]["generator_updates"] == [1, 3, 5]
    for name in ("generator", "critic"):
        # Each rank read other images: identical weights mean every gradient, the gradient
        # penalty's included, was averaged across ranks.
        assert ranks[0][f"{name}_digest"] == ranks[1][f"{name}_digest"], name
        assert ranks[0][f"resumed_{name}_digest"] == ranks[0][f"{name}_digest"], name
    initial = ToyGAN(n_critic=2)
    Trainer(initial, steps=0, batch_size=4, out_dir=tmp_path / "init", progress=False).fit()
    assert digests(initial) != {name: ranks[0][f"{name}_digest"] for name in ("generator", "critic")}
    print(f"torchrun GAN test: {seconds:.1f} s")
