"""facelib.train, facelib.recipes and the CLI: data order, logs, checkpoints, bit-identical resume, DDP."""
from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from facelib import recipes
from facelib.checkpoint import checkpoint_files, load_model, read_manifest, sha256_file
from facelib.cli import main as cli_main
from facelib.train import EarlyStopping, Trainer, batch_indices, latest_checkpoint, read_log
from facelib.train import trainer as trainer_module
from toy_training import ShrinkingTargetTask, ToyAutoencoder, ToyTask, parameter_digest, toy_recipe, torchrun

torch.set_num_threads(1)


def run(out_dir, steps, resume_from=None, **options):
    task = ToyTask()
    options = {"batch_size": 4, "seed": 0, "log_every": 2, "progress": False, **options}
    result = Trainer(task, steps=steps, out_dir=out_dir, **options).fit(resume_from=resume_from)
    return task, result


def optimizer_state(task):
    return task.optimizers["adam"].state_dict()


def assert_same_training(a, b):
    assert parameter_digest(a.unwrap("autoencoder")) == parameter_digest(b.unwrap("autoencoder"))
    state_a, state_b = optimizer_state(a), optimizer_state(b)
    for index, values in state_a["state"].items():
        for key, value in values.items():
            assert torch.equal(state_b["state"][index][key], value), (index, key)


def test_batch_indices_cover_each_epoch_once_and_ranks_are_disjoint():
    n, batch, world = 10, 3, 2
    seen = [batch_indices(n, batch, step, seed=5, rank=rank, world_size=world)
            for step in range(5) for rank in range(world)]
    flat = torch.cat(seen).tolist()  # 30 positions = three epochs of 10
    for epoch in range(3):
        assert sorted(flat[epoch * n:(epoch + 1) * n]) == list(range(n))
    assert not set(seen[0].tolist()) & set(seen[1].tolist())  # step 0: rank 0 and rank 1 differ
    assert torch.equal(batch_indices(n, batch, 3, seed=5, rank=1, world_size=2), seen[7])  # pure function
    assert not torch.equal(batch_indices(n, batch, 0, seed=6), batch_indices(n, batch, 0, seed=5))
    with pytest.raises(ValueError, match="dataset is empty"):
        batch_indices(0, 3, 0, seed=0)


def test_resume_is_bit_identical(tmp_path):
    straight, _ = run(tmp_path / "straight", 8, checkpoint_every=4)
    first_half, _ = run(tmp_path / "resumed", 4)
    second_half, result = run(tmp_path / "resumed", 8, resume=True)
    assert result.step == 8 and first_half.seen + second_half.seen == straight.seen
    assert_same_training(straight, second_half)
    columns = ["kind", "step", "loss"]
    assert read_log(tmp_path / "resumed")[columns].equals(read_log(tmp_path / "straight")[columns])

    # From the straight run's step-4 checkpoint, into another folder, through fit(resume_from=...).
    step4 = tmp_path / "straight" / "checkpoints" / "step_00000004"
    from_checkpoint, _ = run(tmp_path / "elsewhere", 8, resume_from=step4)
    assert_same_training(straight, from_checkpoint)


def test_resume_without_restoring_state_would_differ(tmp_path):
    """Guards the test above: a run restarted at step 4 without the checkpoint ends elsewhere."""
    straight, _ = run(tmp_path / "straight", 8)
    fresh, _ = run(tmp_path / "fresh", 8, seed=1)
    assert parameter_digest(straight.unwrap("autoencoder")) != parameter_digest(fresh.unwrap("autoencoder"))


def test_validation_is_logged_and_does_not_change_training(tmp_path):
    plain, _ = run(tmp_path / "plain", 6)
    validated, _ = run(tmp_path / "validated", 6, validate_every=3)
    assert validated.validated == [3, 6]
    assert_same_training(plain, validated)
    everything = read_log(tmp_path / "validated", kind=None)
    assert everything["kind"].tolist() == ["train", "val", "train", "train", "val"]
    train_log = read_log(tmp_path / "validated")
    assert train_log["step"].tolist() == [2, 4, 6] and "val_loss" not in train_log
    assert (train_log["seconds"].diff().dropna() >= 0).all() and train_log["loss"].notna().all()


def early_stopping_run(out_dir, steps, task_class=ShrinkingTargetTask, **options):
    """24 steps validated every 2: ShrinkingTargetTask's best validation is step 14."""
    task = task_class()
    options = {"batch_size": 4, "seed": 0, "log_every": 2, "validate_every": 2, "progress": False,
               "early_stopping": "val_loss", **options}
    return task, Trainer(task, steps=steps, out_dir=out_dir, **options).fit()


def test_early_stopping_ships_the_same_best_weights_after_a_resume(tmp_path):
    straight, straight_fit = early_stopping_run(tmp_path / "straight", 24)
    assert 2 < straight_fit.best_step < 16  # inside the run, before the interruption below
    values = read_log(tmp_path / "straight", kind="val").set_index("step")["val_loss"]
    assert straight_fit.best_value == values.min() and values.idxmin() == straight_fit.best_step
    early_stopping_run(tmp_path / "resumed", 16)  # interrupted after the best step
    resumed, resumed_fit = early_stopping_run(tmp_path / "resumed", 24, resume=True)
    assert resumed_fit.first_step == 16 and resumed.validated == [18, 20, 22, 24]
    assert (resumed_fit.best_step, resumed_fit.best_value) == (straight_fit.best_step, straight_fit.best_value)
    assert parameter_digest(resumed.unwrap("autoencoder")) == parameter_digest(straight.unwrap("autoencoder"))
    # The modules hold the best weights, not the last (which the final checkpoint keeps).
    last, _ = early_stopping_run(tmp_path / "last", 24, early_stopping=None)
    assert parameter_digest(last.unwrap("autoencoder")) != parameter_digest(straight.unwrap("autoencoder"))
    # One EarlyStopping object for two fresh fits: the second does not inherit the first one's best.
    monitor = EarlyStopping("val_loss")
    early_stopping_run(tmp_path / "first", 24, early_stopping=monitor)
    _, short = early_stopping_run(tmp_path / "second", 4, early_stopping=monitor)
    assert short.best_step in (2, 4) and monitor.best_step == short.best_step


class KeepsItsOwnBest(ShrinkingTargetTask):
    """Early stopping as FVAE's task did it before the Trainer had it: the best in task attributes."""

    best_value, best_state = float("inf"), None

    def validate(self, step):
        metrics = super().validate(step)
        if float(metrics["val_loss"]) < self.best_value:
            self.best_value = float(metrics["val_loss"])
            self.best_state = {k: v.clone() for k, v in self.unwrap("autoencoder").state_dict().items()}
        return metrics


def test_early_stopping_kept_by_the_task_is_lost_on_resume(tmp_path):
    """Guards the test above: the old way ships other weights after the same interruption."""
    def shipped(out_dir, steps, **options):
        task, _ = early_stopping_run(out_dir, steps, KeepsItsOwnBest, early_stopping=None, **options)
        task.unwrap("autoencoder").load_state_dict(task.best_state)
        return parameter_digest(task.unwrap("autoencoder"))

    straight = shipped(tmp_path / "straight", 24)
    shipped(tmp_path / "resumed", 16)
    assert shipped(tmp_path / "resumed", 24, resume=True) != straight


def test_early_stopping_options_are_checked(tmp_path):
    with pytest.raises(ValueError, match="needs validate_every > 0"):
        Trainer(ShrinkingTargetTask(), steps=4, batch_size=2, out_dir=tmp_path, early_stopping="val_loss")
    with pytest.raises(ValueError, match="mode must be 'min' or 'max'"):
        EarlyStopping("val_loss", mode="lowest")
    with pytest.raises(KeyError, match=r"monitors 'val_psnr', but validate\(\) returned \['val_loss'\]"):
        early_stopping_run(tmp_path / "missing", 4, early_stopping=EarlyStopping("val_psnr", mode="max"))
    # mode="max" keeps the highest value; a resume under another monitor is refused.
    _, highest = early_stopping_run(tmp_path / "max", 24, early_stopping=EarlyStopping("val_loss", mode="max"))
    values = read_log(tmp_path / "max", kind="val").set_index("step")["val_loss"]
    assert highest.best_step == values.idxmax() and highest.best_value == values.max()
    with pytest.raises(ValueError, match="monitored 'val_loss' \\(max\\), this run monitors 'val_loss' \\(min\\)"):
        early_stopping_run(tmp_path / "max", 26, resume=True)
    # A checkpoint written without early stopping resumes with it: the best is sought from there on.
    early_stopping_run(tmp_path / "older", 16, early_stopping=None)
    with pytest.warns(UserWarning, match="step_00000016 holds no early-stopping state"):
        _, later = early_stopping_run(tmp_path / "older", 24, resume=True)
    assert later.best_step in (18, 20, 22, 24)


def test_losses_reported_on_some_steps_are_averaged_over_those_steps(tmp_path):
    class SometimesReports(ToyTask):
        def training_step(self, batch, step):
            losses = {"always": float(step)}
            if step % 3 == 2:
                losses["sometimes"] = float(10 * step)
            return losses

    Trainer(SometimesReports(), steps=8, batch_size=2, out_dir=tmp_path, log_every=4, progress=False).fit()
    log = read_log(tmp_path)
    assert log["always"].tolist() == [1.5, 5.5]  # mean of 0..3 and of 4..7
    assert log["sometimes"].tolist() == [20.0, 50.0]  # step 2 alone, then step 5 alone (not divided by 4)


def test_the_module_docstring_example_runs(tmp_path, monkeypatch, capsys):
    doc = trainer_module.__doc__
    block = doc[doc.index("::\n", doc.index("Example")) + 3:doc.index("The same script runs unchanged")]
    code = "\n".join(line[4:] for line in block.splitlines())
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(code, "trainer docstring", "exec"), namespace)
    result, task = namespace["result"], namespace["task"]
    assert result.step == 200 and result.best_step is not None and (tmp_path / "runs/line/log.jsonl").exists()
    line = task.unwrap("line")
    assert abs(line.weight.item() - 3) < 0.1 and abs(line.bias.item() + 1) < 0.1


def test_checkpoints_are_pruned_and_a_fresh_run_starts_clean(tmp_path):
    _, result = run(tmp_path, 8, checkpoint_every=2, keep_checkpoints=2)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == sorted(name for s in (6, 8) for name in (f"step_0000000{s}.json", checkpoint_files(
        tmp_path / "checkpoints" / f"step_0000000{s}")[1].name))
    assert result.checkpoint == latest_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step_00000008"
    run(tmp_path, 2)
    assert latest_checkpoint(tmp_path).name == "step_00000002"
    assert read_log(tmp_path)["step"].tolist() == [2]


def test_non_finite_loss_stops_training(tmp_path):
    class Diverging(ToyTask):
        def training_step(self, batch, step):
            return {"loss": float("nan") if step == 2 else 1.0}

    with pytest.raises(FloatingPointError, match="loss 'loss' is nan at step 4"):
        Trainer(Diverging(), steps=6, batch_size=2, out_dir=tmp_path, log_every=2, progress=False).fit()


def test_non_scalar_loss_is_named(tmp_path):
    class Vector(ToyTask):
        def training_step(self, batch, step):
            return {"per_sample": torch.ones(3)}

    with pytest.raises(ValueError, match=r"'per_sample' with shape \[3\]; losses must be scalars"):
        Trainer(Vector(), steps=1, batch_size=2, out_dir=tmp_path, progress=False).fit()


def test_bad_arguments_are_named(tmp_path):
    with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
        Trainer(ToyTask(), steps=3, batch_size=0, out_dir=tmp_path)
    with pytest.raises(TypeError, match="has no build"):
        Trainer(object(), steps=3, batch_size=2, out_dir=tmp_path)


@pytest.mark.slow
def test_torchrun_ddp_keeps_ranks_identical_on_different_data(tmp_path):
    ranks, _ = torchrun(tmp_path, "--steps", "4")
    assert [r["world_size"] for r in ranks] == [2, 2] and all(r["ddp"] for r in ranks)
    assert ranks[0]["digest"] == ranks[1]["digest"]  # gradients were averaged across ranks
    assert len(ranks[0]["seen"]) == len(ranks[1]["seen"]) == 16
    assert not set(ranks[0]["seen"]) & set(ranks[1]["seen"])  # each rank read other samples
    assert ranks[0]["resumed_digest"] == ranks[1]["resumed_digest"] == ranks[0]["digest"]
    assert (tmp_path / "resumed" / "checkpoints" / "step_00000002.rank1.rng.safetensors").exists()
    # the parameters moved away from their (identical) initial values
    initial = ToyTask()
    Trainer(initial, steps=0, batch_size=4, out_dir=tmp_path / "init", progress=False).fit()
    assert parameter_digest(initial.unwrap("autoencoder")) != ranks[0]["digest"]
    assert read_log(tmp_path / "straight")["step"].tolist() == [1, 2, 3, 4]
    # Early stopping: only rank 0 validates, yet both ranks end with the same best weights.
    assert ranks[0]["validated"] == list(range(2, 25, 2)) and ranks[1]["validated"] == []
    assert ranks[0]["best_step"] == ranks[1]["best_step"] < 24
    assert ranks[0]["best_digest"] == ranks[1]["best_digest"]


@pytest.fixture
def toy_recipe_registered(monkeypatch):
    monkeypatch.setattr(recipes, "RECIPES", dict(recipes.RECIPES))
    monkeypatch.setattr(recipes, "_registered_functions", dict(recipes._registered_functions))
    recipes.register_recipe("toy", toy_recipe)


def test_cli_train_ships_into_the_manifest(tmp_path, toy_recipe_registered, capsys):
    weights = tmp_path / "weights"
    argv = ["train", "toy", "--steps", "3", "--seed", "2", "--device", "cpu", "--out", str(tmp_path / "run"),
            "--ship", "--weights-dir", str(weights)]
    assert cli_main(argv) == 0
    entry = read_manifest(weights)["toy_autoencoder"]
    assert entry["command"] == "python -m facelib train toy --seed 2 --steps 3 --device cpu --ship"
    assert (entry["steps"], entry["seed"], entry["preset"]) == (3, 2, "toy")
    assert entry["sha256"] == sha256_file(weights / entry["file"])
    assert set(entry["metrics"]) == {"mse"} and entry["wall_time_s"] >= 0
    assert str(tmp_path) not in json.dumps(entry)  # no local paths in a repository file
    shipped = load_model(weights / entry["file"], cls=ToyAutoencoder)
    trained = load_model(tmp_path / "run" / "toy_autoencoder", cls=ToyAutoencoder)
    assert parameter_digest(shipped) == parameter_digest(trained)
    assert "toy_autoencoder" in capsys.readouterr().out


def test_cli_errors_and_listing(tmp_path, toy_recipe_registered, capsys, monkeypatch):
    assert cli_main(["train", "nope", "--out", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert "unknown recipe 'nope'; known recipes:" in error and "toy" in error
    assert cli_main(["train", "toy", "--smoke", "--ship", "--out", str(tmp_path)]) == 2
    assert "never shipped" in capsys.readouterr().err
    monkeypatch.setattr(sys, "argv", ["facelib", "list", "--weights-dir", str(tmp_path)])
    with pytest.raises(SystemExit):
        runpy.run_module("facelib", run_name="__main__")
    listing = capsys.readouterr().out
    assert "toy" in listing and "(none shipped yet)" in listing


def test_recipe_results_are_checked(tmp_path, toy_recipe_registered):
    def broken(*, steps, seed, out_dir, device, smoke):
        return {"checkpoints": {"ghost": out_dir / "ghost"}, "metrics": {}, "preset": "toy", "steps": 1}

    recipes.register_recipe("broken", broken)
    with pytest.raises(FileNotFoundError, match="checkpoint 'ghost': checkpoint metadata not found: .*ghost.json"):
        recipes.run_recipe("broken", out_dir=tmp_path)
    with pytest.raises(ValueError, match="already registered"):
        recipes.register_recipe("toy", toy_recipe)
    result = recipes.run_recipe("toy", steps=2, out_dir=tmp_path, device="cpu", smoke=True)
    assert result["steps"] == 2 and result["metrics"]["toy_autoencoder"]["mse"] > 0

    def numpy_metrics(**options):
        result = toy_recipe(**options)
        result["metrics"]["toy_autoencoder"] = {"n": np.int64(3), "mse": np.float32(0.5)}
        return result

    recipes.register_recipe("numpy_metrics", numpy_metrics)
    metrics = recipes.run_recipe("numpy_metrics", steps=1, out_dir=tmp_path, device="cpu")["metrics"]
    assert json.dumps(metrics) == '{"toy_autoencoder": {"n": 3, "mse": 0.5}}'
    bad = {"toy_autoencoder": {"mse": float("nan")}}
    recipes.register_recipe("nan_metric", lambda **o: {**toy_recipe(**o), "metrics": bad})
    with pytest.raises(ValueError, match="metric toy_autoencoder.mse = nan is not a finite number"):
        recipes.run_recipe("nan_metric", steps=1, out_dir=tmp_path, device="cpu")
