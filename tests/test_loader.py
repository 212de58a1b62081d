"""facelib.data.loader, the Trainer's data path: the same batches as one render call per step,
rendered ahead in workers that stop when training ends, fails or is interrupted."""
from __future__ import annotations

import multiprocessing
from functools import partial

import pytest
import torch
from torch import nn

from facelib.data import SynthFaces
from facelib.data.loader import (
    RENDER_PIXELS_PER_CALL, default_num_workers, keeps_in_memory, step_batches, steps_per_group,
)
from facelib.train import Trainer, TrainingTask, batch_indices
from toy_training import ToyDataset, parameter_digest

torch.set_num_threads(1)


def assert_same_batch(got: dict, expected: dict) -> None:
    assert sorted(got) == sorted(expected)
    for key, value in expected.items():
        assert got[key].dtype == value.dtype and torch.equal(got[key], value), key


# The renderer's batch independence (tests/test_synth.py): labels exactly, pixels up to rounding.
# The flow and visible mask of pairs come from a Newton solve whose convergence test a rounding
# difference can flip at a pixel, so against another batch composition they are not compared.
ROUNDING = {"landmarks": 1e-4, "source_landmarks": 1e-4, "target_landmarks": 1e-4}
NOT_COMPARED_ACROSS_BATCHES = {"flow", "visible"}


def assert_batch_up_to_rounding(got: dict, expected: dict) -> None:
    assert sorted(got) == sorted(expected)
    for key, value in expected.items():
        assert got[key].dtype == value.dtype and got[key].shape == value.shape, key
        if key in NOT_COMPARED_ACROSS_BATCHES:
            continue
        if value.is_floating_point():
            assert (got[key] - value).abs().max() <= ROUNDING.get(key, 1e-5), key
        else:
            assert torch.equal(got[key], value), key


@pytest.mark.parametrize("options", [dict(preset="rafd"), dict(preset="multipie", pairs=True),
                                     dict(preset="oulu", sequences=True, length=3), dict(preset="emotionet")],
                         ids=["rafd", "multipie-pairs", "oulu-sequences", "emotionet"])
def test_batches_are_those_of_one_render_call_per_step_and_a_resume_changes_no_bit(options):
    data = SynthFaces(split="val", size=16, **options)
    batch_size = 6
    indices_of_step = partial(batch_indices, len(data), batch_size, seed=3)
    # several steps per render call (over an epoch boundary for oulu's 24 sequences), starting
    # inside the group (a resume)
    assert steps_per_group(data, batch_size) >= 11
    start, stop = 3, 11
    got = list(step_batches(data, indices_of_step, start, stop, batch_size=batch_size, num_workers=2))
    assert len(got) == stop - start
    # bit for bit: the group (steps 0-10, cut at the last step) is one render call, then cut into
    # steps, wherever the run (re)started
    straight = list(step_batches(data, indices_of_step, 0, stop, batch_size=batch_size, num_workers=2))
    one_call = data.batch(torch.cat([indices_of_step(step) for step in range(stop)]))
    for step, batch in zip(range(start, stop), got):
        assert_same_batch(batch, straight[step])
        part = slice(step * batch_size, (step + 1) * batch_size)
        assert_same_batch(batch, {key: value[part] for key, value in one_call.items()})
    # and each batch is what one render call per step gives, up to the renderer's rounding
    for step, batch in zip(range(start, stop), got):
        assert_batch_up_to_rounding(batch, data.batch(indices_of_step(step)))


def test_several_steps_share_a_render_call_and_cached_or_in_memory_data_do_not():
    class CountingSynthFaces(SynthFaces):
        calls: list[int] = []

        def __getitems__(self, indices):
            self.calls.append(len(indices))
            return super().__getitems__(indices)

    data = CountingSynthFaces("rafd", "val", size=16)
    assert data.render_pixels == 16 * 16
    group = steps_per_group(data, batch_size=8)
    assert group == RENDER_PIXELS_PER_CALL // (8 * 16 * 16)
    indices_of_step = partial(batch_indices, len(data), 8, seed=0)
    list(step_batches(data, indices_of_step, 0, 5, batch_size=8))  # num_workers=0: in this process
    assert data.calls == [5 * 8]  # one render call for all five steps (the group is cut at the last step)
    assert steps_per_group(SynthFaces("multipie", "val", size=64, pairs=True), 256) == 2  # 1,024 faces
    assert steps_per_group(SynthFaces("oulu", "val", size=64, sequences=True), 256) == 1

    assert steps_per_group(ToyDataset(), 4) == 1 and default_num_workers(ToyDataset()) == 0
    assert default_num_workers(None) == 0
    # a split that fits in memory is rendered once in this process; one that does not, in workers
    assert keeps_in_memory(data) and default_num_workers(data) == 0
    large = SynthFaces("emotionet", "train", size=64)  # 200,000 faces: about 16 GB
    assert not keeps_in_memory(large) and 1 <= default_num_workers(large) <= 4


class CountingSynthFaces(SynthFaces):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.rendered: list[int] = []

    def __getitems__(self, indices):
        self.rendered.extend(indices)
        return super().__getitems__(indices)


def test_a_split_that_fits_in_memory_is_rendered_once_over_many_epochs():
    data = CountingSynthFaces("rafd", "val", size=16)
    batch_size = 7
    indices_of_step = partial(batch_indices, len(data), batch_size, seed=2)
    steps = 3 * len(data) // batch_size + 2  # over three epochs
    got = list(step_batches(data, indices_of_step, 0, steps, batch_size=batch_size))
    assert sorted(data.rendered) == list(range(len(data)))  # every face rendered exactly once
    for step in (0, steps // 2, steps - 1):  # and the batches are still those of one render call per step
        assert_batch_up_to_rounding(got[step], SynthFaces("rafd", "val", size=16).batch(indices_of_step(step)))
    assert not keeps_in_memory(data, budget=1000)


def test_cached_synthfaces_is_read_one_step_at_a_time_without_workers(tmp_path):
    cached = SynthFaces("rafd", "val", size=16, cache=tmp_path / "rafd.npz")
    assert cached.render_pixels == 0 and default_num_workers(cached) == 0
    indices_of_step = partial(batch_indices, len(cached), 5, seed=1)
    for step, batch in enumerate(step_batches(cached, indices_of_step, 0, 3, batch_size=5)):
        assert_same_batch(batch, cached.batch(indices_of_step(step)))


class FacesTask(TrainingTask):
    """A tiny AU regressor on SynthFaces with dropout (global RNG) and Adam."""

    def __init__(self, fail_at: int | None = None, interrupt_at: int | None = None):
        self.dataset = SynthFaces("rafd", "val", size=16)
        self.fail_at, self.interrupt_at = fail_at, interrupt_at
        self.workers: list = []

    def build(self, device):
        model = nn.Sequential(nn.Flatten(), nn.Dropout(0.2), nn.Linear(3 * 16 * 16, 17))
        return {"model": model}, {"adam": torch.optim.Adam(model.parameters(), lr=1e-3)}

    def training_step(self, batch, step):
        self.workers.extend(p for p in multiprocessing.active_children() if p not in self.workers)
        if step == self.fail_at:
            raise RuntimeError("a training step failed")
        if step == self.interrupt_at:
            raise KeyboardInterrupt
        loss = nn.functional.mse_loss(self.modules["model"](batch["image"]), batch["aus"])
        self.optimizers["adam"].zero_grad(set_to_none=True)
        loss.backward()
        self.optimizers["adam"].step()
        return {"loss": loss.detach()}


def fit(task, out_dir, steps, **options):
    options = {"batch_size": 8, "seed": 0, "progress": False, "log_every": 1, **options}
    return Trainer(task, steps=steps, out_dir=out_dir, **options).fit()


def test_trainer_data_paths_agree_and_resume_is_bit_identical(tmp_path):
    straight = FacesTask()  # default: this small split is rendered once, in this process
    fit(straight, tmp_path / "straight", 6)
    assert not straight.workers
    fit(FacesTask(), tmp_path / "resumed", 3)
    resumed = FacesTask()
    fit(resumed, tmp_path / "resumed", 6, resume=True)  # restarts inside a render group
    assert parameter_digest(resumed.unwrap("model")) == parameter_digest(straight.unwrap("model"))
    in_workers = FacesTask()
    fit(in_workers, tmp_path / "in_workers", 6, num_workers=2)
    assert in_workers.workers, "num_workers=2 renders SynthFaces in background workers"
    assert parameter_digest(in_workers.unwrap("model")) == parameter_digest(straight.unwrap("model"))


@pytest.mark.parametrize("ending", ["finished", "raised", "interrupted"])
def test_no_worker_outlives_training(tmp_path, ending):
    task = FacesTask(fail_at=2 if ending == "raised" else None, interrupt_at=2 if ending == "interrupted" else None)
    if ending == "finished":
        fit(task, tmp_path, 4, num_workers=2)
    else:
        with pytest.raises(RuntimeError if ending == "raised" else KeyboardInterrupt) as caught:
            fit(task, tmp_path, 4, num_workers=2)
        assert caught.tb is not None  # the traceback (and the fit's frame) is still alive here
    assert len(task.workers) == 2
    assert not any(worker.is_alive() for worker in task.workers)
