"""Storage faults: writers killed between file operations, torn logs, two runs on one folder,
permissions, and shipped weights that try to reach outside their folder.

A "kill" here is real: the writer runs in a forked child whose k-th file operation
(``os.fsync``, ``os.replace`` or ``os.unlink``) calls ``os._exit``, so no ``except``/``finally``
cleanup runs, exactly as with SIGKILL or a power cut. Every k from 0 to the number of
operations a complete write makes is tried.
"""
from __future__ import annotations

import json
import os
import stat
import sys
import warnings
from pathlib import Path

import pytest
import torch

from facelib import checkpoint, utils
from facelib.checkpoint import (
    CheckpointError, checkpoint_files, load_model, load_pretrained, record_in_manifest, save_model, ship_models,
)
from facelib.train import Trainer, read_log
from facelib.utils import FolderLockedError, atomic_write_text, lock_folder
from test_checkpoint import Net, NetConfig, facelib_net  # noqa: F401  (a fixture)
from toy_training import ToyTask

torch.set_num_threads(1)
pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="the kill tests fork a writer")

FILE_OPERATIONS = ("fsync", "replace", "unlink")


def _count_file_operations(write) -> int:
    """How many fsync/replace/unlink calls ``write()`` makes when nothing goes wrong."""
    calls = []
    originals = {name: getattr(os, name) for name in FILE_OPERATIONS}

    def counting(name):
        def operation(*args, **kwargs):
            calls.append(name)
            return originals[name](*args, **kwargs)
        return operation

    try:
        for name in FILE_OPERATIONS:
            setattr(os, name, counting(name))
        write()
    finally:
        for name, original in originals.items():
            setattr(os, name, original)
    return len(calls)


def _killed_at(write, k: int) -> int:
    """Run ``write()`` in a forked child killed (``os._exit``) at its k-th file operation; its exit status."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            calls = [0]
            for name in FILE_OPERATIONS:
                original = getattr(os, name)

                def operation(*args, _original=original, **kwargs):
                    if calls[0] == k:
                        os._exit(9)  # killed: no cleanup, no flush
                    calls[0] += 1
                    return _original(*args, **kwargs)
                setattr(os, name, operation)
            write()
            os._exit(0)
        except BaseException:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def _width(model) -> int:
    return model.config.width


def test_a_model_is_replaced_as_a_whole_or_not_at_all(tmp_path, facelib_net):
    """Reproduced the loss of the previous model: weights renamed, then killed before the JSON."""
    stem = tmp_path / "net"
    old, new = facelib_net(NetConfig(width=3)), facelib_net(NetConfig(width=7))
    save_model(old, tmp_path / "count" / "net")
    operations = _count_file_operations(lambda: save_model(new, tmp_path / "count" / "net"))
    assert operations >= 4  # two files, each fsynced and renamed, plus the old weights deleted
    outcomes = []
    for k in range(operations + 1):
        save_model(old, stem)
        status = _killed_at(lambda: save_model(new, stem), k)
        loaded = load_model(stem)  # never raises: the old or the new pair is complete
        outcomes.append(_width(loaded))
        assert _width(loaded) in (3, 7) and (status == 0) == (k == operations), (k, status)
        original = {3: old, 7: new}[_width(loaded)]
        assert torch.equal(loaded.linear.weight, original.linear.weight), k
        save_model(old, stem)  # the next write cleans what the killed one left
        json_path, weights_path = checkpoint_files(stem)
        assert sorted(p.name for p in tmp_path.iterdir() if p.name != "count") == sorted(
            [json_path.name, weights_path.name]), k
    assert outcomes[0] == 3 and outcomes[-1] == 7 and 3 in outcomes[1:-1]  # the switch is one rename
    print(f"save_model: {operations} kills injected, 0 lost models")


def test_a_killed_training_checkpoint_never_blocks_resume(tmp_path):
    task = ToyTask()
    Trainer(task, steps=4, batch_size=4, out_dir=tmp_path, progress=False).fit()
    stem = tmp_path / "checkpoints" / "step_00000004"
    save_again = lambda: checkpoint.save_training_state(  # noqa: E731
        stem, {"autoencoder": task.unwrap("autoencoder")}, {"adam": task.optimizers["adam"]}, step=4)
    operations = _count_file_operations(save_again)
    for k in range(operations):
        _killed_at(save_again, k)
        result = Trainer(ToyTask(), steps=4, batch_size=4, out_dir=tmp_path, resume=True, progress=False).fit()
        assert result.first_step == 4, k
        leftovers = [p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.endswith(".tmp")]
        assert leftovers == [], k  # the resumed run removed the killed writer's temporary files


def _ship(folder: Path, model, runs: Path) -> dict:
    stem = save_model(model, runs / "net")
    fields = dict(command="python -m facelib train net --seed 0 --ship", preset="toy", steps=1, seed=0,
                  wall_time_s=1.0, metrics={})
    return ship_models({"net": stem}, {"net": fields}, weights_dir=folder)["net"]


def test_a_killed_ship_leaves_the_shipped_model_loadable(tmp_path, facelib_net):
    """Reproduced --ship destroying the shipped weights (``sha256 mismatch``) when killed midway."""
    weights, runs = tmp_path / "weights", tmp_path / "runs"
    old, new = facelib_net(NetConfig(width=3)), facelib_net(NetConfig(width=7))
    _ship(tmp_path / "count", old, tmp_path / "count_old_runs")
    operations = _count_file_operations(lambda: _ship(tmp_path / "count", new, tmp_path / "count_runs"))
    save_model(new, runs / "net")
    shipped_new = lambda: ship_models(  # noqa: E731
        {"net": runs / "net"}, {"net": dict(command="c", preset="toy", steps=1, seed=0, wall_time_s=1.0,
                                             metrics={})}, weights_dir=weights)
    widths = []
    for k in range(operations + 1):
        _ship(weights, old, tmp_path / "old_runs")
        save_model(new, runs / "net")
        _killed_at(shipped_new, k)
        widths.append(_width(load_pretrained("net", weights_dir=weights)))  # sha256s verified
    assert widths[0] == 3 and widths[-1] == 7 and set(widths) == {3, 7}
    _ship(weights, old, tmp_path / "old_runs")  # a complete ship removes every leftover
    entry = checkpoint.read_manifest(weights)["net"]
    names = {entry["file"], entry["file"].replace(".safetensors", ".json"), checkpoint.MANIFEST_NAME}
    assert {p.name for p in weights.iterdir()} - {".facelib.lock"} == names
    print(f"ship: {operations} kills injected, 0 unloadable shipped models")


# ---------------------------------------------------------------------------------------------
# Logs and locks


def test_a_torn_last_log_line_is_skipped_with_a_warning(tmp_path):
    """Reproduced a bare JSONDecodeError from resume and read_log after a full disk."""
    Trainer(ToyTask(), steps=4, batch_size=4, out_dir=tmp_path, log_every=2, progress=False).fit()
    with open(tmp_path / "log.jsonl", "a") as log:
        log.write('{"kind": "train", "step": 150,')
    with pytest.warns(UserWarning, match=r"log.jsonl: skipping its torn last line"):
        assert read_log(tmp_path)["step"].tolist() == [2, 4]
    with pytest.warns(UserWarning, match=str(tmp_path / "log.jsonl")):
        result = Trainer(ToyTask(), steps=6, batch_size=4, out_dir=tmp_path, log_every=2, resume=True,
                         progress=False).fit()
    assert result.first_step == 4
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the resumed run rewrote the log without the torn line
        assert read_log(tmp_path)["step"].tolist() == [2, 4, 6]
    (tmp_path / "log.jsonl").write_text('{"kind": "train", "step": 2}\n{"kind": "tr\n{"kind": "train", "step": 6}\n')
    with pytest.raises(ValueError, match="line 2 is not a JSON object"):
        read_log(tmp_path)


def test_the_log_of_a_resumed_run_equals_an_uninterrupted_one(tmp_path):
    """Reproduced an extra row at the resume step and a next average over fewer steps."""
    options = {"batch_size": 4, "log_every": 3, "progress": False}
    Trainer(ToyTask(), steps=8, out_dir=tmp_path / "straight", **options).fit()
    Trainer(ToyTask(), steps=4, out_dir=tmp_path / "resumed", **options).fit()  # rows 3 and 4 (partial)
    Trainer(ToyTask(), steps=8, out_dir=tmp_path / "resumed", resume=True, **options).fit()
    columns = ["kind", "step", "loss"]
    straight, resumed = read_log(tmp_path / "straight")[columns], read_log(tmp_path / "resumed")[columns]
    assert straight["step"].tolist() == [3, 6, 8]
    assert resumed.equals(straight), (resumed, straight)


def _hold_lock_in_child(folder: Path):
    """Fork a process holding ``folder``'s lock; returns (pid, release) once it holds it."""
    ready_read, ready_write = os.pipe()
    stop_read, stop_write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            with lock_folder(folder):
                os.write(ready_write, b"x")
                os.read(stop_read, 1)
        finally:
            os._exit(0)
    os.read(ready_read, 1)

    def release():
        os.write(stop_write, b"x")
        os.waitpid(pid, 0)
        for fd in (ready_read, ready_write, stop_read, stop_write):
            os.close(fd)
    return pid, release


def test_a_second_run_on_the_same_folder_fails_at_once(tmp_path):
    """Reproduced two trainings on one folder both exiting 0 with interleaved logs."""
    pid, release = _hold_lock_in_child(tmp_path)
    try:
        task = ToyTask()
        with pytest.raises(FolderLockedError, match=rf"{tmp_path} is in use by another process \(PID {pid}\)"):
            Trainer(task, steps=2, batch_size=4, out_dir=tmp_path, progress=False).fit()
        assert task.seen == [] and not (tmp_path / "log.jsonl").exists()
    finally:
        release()
    Trainer(ToyTask(), steps=2, batch_size=4, out_dir=tmp_path, progress=False).fit()  # free again


# ---------------------------------------------------------------------------------------------
# Permissions


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_atomic_writes_honour_the_umask(tmp_path, umask, mode):
    """Reproduced 0600 (mkstemp's mode) for every written file whatever the umask."""
    previous = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "MANIFEST.json", "{}")
        stem = save_model(Net(NetConfig()), tmp_path / "net")
    finally:
        os.umask(previous)
    for path in (tmp_path / "MANIFEST.json", *checkpoint_files(stem)):
        assert stat.S_IMODE(path.stat().st_mode) == mode, path.name


# ---------------------------------------------------------------------------------------------
# Shipped weights that reach outside, never end, or lie about what they are


def _shipped_folder(tmp_path, facelib_net):
    folder = tmp_path / "weights"
    save_model(facelib_net(NetConfig()), folder / "net")
    record_in_manifest("net", "net", command="c", preset="toy", steps=1, seed=0, wall_time_s=0.0, metrics={},
                       weights_dir=folder)
    return folder


def _edit_manifest(folder: Path, **changes) -> None:
    manifest = json.loads((folder / "MANIFEST.json").read_text())
    manifest["net"].update(changes)
    manifest["net"] = {k: v for k, v in manifest["net"].items() if v is not None}
    (folder / "MANIFEST.json").write_text(json.dumps(manifest))


def test_manifest_files_outside_the_weights_folder_are_refused(tmp_path, facelib_net):
    """Reproduced ``"../outside/evil.safetensors"`` loading."""
    folder = _shipped_folder(tmp_path, facelib_net)
    outside = tmp_path / "outside"
    save_model(facelib_net(NetConfig()), outside / "evil")
    evil = checkpoint_files(outside / "evil")[1]
    for file in (f"../outside/{evil.name}", str(evil), "/dev/zero"):
        _edit_manifest(folder, file=file)
        with pytest.raises(CheckpointError, match="absolute paths and '..' are refused"):
            load_pretrained("net", weights_dir=folder)
    (folder / "link.safetensors").symlink_to(evil)
    _edit_manifest(folder, file="link.safetensors")
    with pytest.raises(CheckpointError, match="leads outside the weights folder"):
        load_pretrained("net", weights_dir=folder)


def _with_alarm(seconds: int):
    """Fail instead of hanging forever (what a FIFO or /dev/zero did)."""
    import signal

    def timeout(*_):
        raise AssertionError(f"hung for {seconds} s")
    signal.signal(signal.SIGALRM, timeout)
    signal.alarm(seconds)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_fifos_and_devices_are_refused_without_hanging(tmp_path, facelib_net):
    """Reproduced load_model, load_image and load_pretrained hanging on a FIFO or /dev/zero."""
    from facelib.data.io import load_image

    folder = _shipped_folder(tmp_path, facelib_net)
    json_path, weights_path = checkpoint_files(folder / "net")
    _with_alarm(20)
    try:
        weights_path.unlink()
        os.mkfifo(weights_path)
        with pytest.raises(CheckpointError, match="not a regular file"):
            load_pretrained("net", weights_dir=folder)
        with pytest.raises(CheckpointError, match="not a regular file"):
            load_model(json_path)
        os.mkfifo(tmp_path / "fifo.json")
        with pytest.raises(CheckpointError, match="not a regular file"):
            load_model(tmp_path / "fifo")
        os.mkfifo(tmp_path / "face.png")
        with pytest.raises(ValueError, match="not a regular file"):
            load_image(tmp_path / "face.png")
        (folder / "zero.safetensors").symlink_to("/dev/zero")
        _edit_manifest(folder, file="zero.safetensors")
        with pytest.raises(CheckpointError, match="outside the weights folder|not a regular file"):
            load_pretrained("net", weights_dir=folder)
        with pytest.raises(CheckpointError, match="not a regular file"):
            checkpoint.sha256_file("/dev/zero")
    finally:
        import signal
        signal.alarm(0)


def test_headers_and_json_are_read_with_a_size_limit(tmp_path, monkeypatch):
    stem = save_model(Net(NetConfig()), tmp_path / "net")
    json_path, weights_path = checkpoint_files(stem)
    monkeypatch.setattr(checkpoint, "MAX_JSON_BYTES", 100)
    with pytest.raises(CheckpointError, match="larger than the 0 MiB accepted"):
        load_model(stem, cls=Net)
    monkeypatch.undo()
    data = weights_path.read_bytes()
    weights_path.write_bytes((2**40).to_bytes(8, "little") + data[8:])  # a header "of one TiB"
    with pytest.raises(CheckpointError, match="over the 16 MiB limit"):
        load_model(stem, cls=Net)


def test_a_config_implying_huge_tensors_is_refused_before_allocating(tmp_path):
    """Reproduced a 500-byte JSON (base_channels=4096) asking for 7.3 GiB."""
    shipped = checkpoint.shipped_weights_dir()
    json_path, weights_path = checkpoint_files(shipped / checkpoint.pretrained_info("fvae")["file"])
    metadata = json.loads(json_path.read_text())
    metadata.pop("weights_file", None)  # the copy below is the unversioned fvae.safetensors
    metadata["config"]["base_channels"] = metadata["config"]["max_channels"] = 4096
    (tmp_path / "fvae.json").write_text(json.dumps(metadata))
    (tmp_path / "fvae.safetensors").write_bytes(weights_path.read_bytes())
    import resource
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(CheckpointError, match=r"asks FVAE for \d+\.\d MiB of tensors, but fvae.safetensors holds "
                                              r"only 2.1 MiB"):
        load_model(tmp_path / "fvae")
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 500, grown_mib


def test_shipped_weights_need_their_sha256_and_the_right_class(tmp_path, facelib_net):
    folder = _shipped_folder(tmp_path, facelib_net)
    for key in ("sha256", "config_sha256"):
        saved = json.loads((folder / "MANIFEST.json").read_text())
        _edit_manifest(folder, **{key: None})
        with pytest.raises(CheckpointError, match=f"has no '{key}'"):
            load_pretrained("net", weights_dir=folder)
        (folder / "MANIFEST.json").write_text(json.dumps(saved))
    assert type(load_pretrained("net", weights_dir=folder)) is facelib_net

    # 'fvae' pointing at the pixel VAE (entry self-consistent): refused by name
    shipped = checkpoint.shipped_weights_dir()
    manifest = checkpoint.read_manifest()
    for file in (manifest["fvae_pixel_vae"]["file"], manifest["fvae_pixel_vae"]["file"][:-12] + ".json"):
        (folder / file).write_bytes((shipped / file).read_bytes())
    (folder / "MANIFEST.json").write_text(json.dumps({"fvae": manifest["fvae_pixel_vae"]}))
    with pytest.raises(CheckpointError, match="names class facelib.models.fvae.PixelVAE, but 'fvae' is a "
                                              "facelib.models.fvae.FVAE"):
        load_pretrained("fvae", weights_dir=folder)
    (folder / "MANIFEST.json").write_text(json.dumps({"fvae": {**manifest["fvae_pixel_vae"], "class":
                                                               "facelib.models.fvae.FVAE"}}))
    with pytest.raises(CheckpointError, match="holds a facelib.models.fvae.PixelVAE, not the facelib.models.fvae.FVAE"):
        load_pretrained("fvae", weights_dir=folder)


def test_every_shipped_name_still_loads():
    for name in checkpoint.available_pretrained():
        assert checkpoint._class_path(type(load_pretrained(name))) == checkpoint.PRETRAINED_CLASSES[name], name


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
