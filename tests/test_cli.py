"""The command line: options checked first (one-line errors, exit 2), resume, and the summary."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from facelib import checkpoint, cli, recipes
from facelib.cli import main as cli_main
from facelib.train import read_log
from toy_training import toy_recipe

torch.set_num_threads(1)


@pytest.fixture
def toy_recipe_registered(monkeypatch):
    """Recipe ``toy`` (the real Trainer on a tiny autoencoder), recording every call in ``calls``."""
    calls = []

    def recorded(**options):
        calls.append(options)
        return toy_recipe(**options)

    monkeypatch.setattr(recipes, "RECIPES", dict(recipes.RECIPES))
    monkeypatch.setattr(recipes, "_registered_functions", dict(recipes._registered_functions))
    recipes.register_recipe("toy", recorded)
    return calls


def _exit_status(argv) -> int:
    try:
        return cli_main(argv)
    except SystemExit as exit:  # argparse's own errors
        return exit.code


@pytest.mark.parametrize("options, message", [
    (["--steps", "-5"], "argument --steps: must be an integer >= 1, got -5"),
    (["--device", "tpu"], "unknown device 'tpu'"),
    (["--seed", str(2**70)], "argument --seed: must be an integer 0.."),
    (["--threads", "0"], "argument --threads: must be an integer >= 1, got 0"),
    (["--checkpoint-every", "x"], "expected an integer, got 'x'"),
    (["--smoke", "--ship"], "never shipped"),
])
def test_bad_options_get_one_line_before_any_work(tmp_path, toy_recipe_registered, capsys, options, message):
    """Reproduced tracebacks (some after the whole dataset had rendered) for each of these."""
    out = tmp_path / "run"
    assert _exit_status(["train", "toy", "--out", str(out), *options]) == 2
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1, error
    assert toy_recipe_registered == [] and not out.exists()  # nothing ran, no folder was created


def test_cuda_without_cuda_and_out_naming_a_file(tmp_path, toy_recipe_registered, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cli_main(["train", "toy", "--device", "cuda", "--out", str(tmp_path / "run")]) == 2
    assert "--device cuda: CUDA is not available here" in capsys.readouterr().err
    (tmp_path / "a_file").write_text("")
    assert cli_main(["train", "toy", "--out", str(tmp_path / "a_file")]) == 2
    assert f"--out {tmp_path / 'a_file'} is a file; give a folder" in capsys.readouterr().err
    assert cli_main(["train", "toy", "--out", str(tmp_path / "a_file" / "run")]) == 2
    assert "cannot write in" in capsys.readouterr().err
    assert toy_recipe_registered == []


def test_ship_checks_the_weights_folder_before_training(tmp_path, toy_recipe_registered, capsys):
    """Reproduced a read-only weights folder failing only after the whole training."""
    (tmp_path / "a_file").write_text("")
    argv = ["train", "toy", "--out", str(tmp_path / "run"), "--ship", "--weights-dir", str(tmp_path / "a_file" / "w")]
    assert cli_main(argv) == 2
    assert "--weights-dir" in capsys.readouterr().err and toy_recipe_registered == []


def test_a_second_cli_run_on_the_same_folder_is_refused(tmp_path, toy_recipe_registered, capsys):
    from test_storage_faults import _hold_lock_in_child

    pid, release = _hold_lock_in_child(tmp_path / "run")
    try:
        assert cli_main(["train", "toy", "--out", str(tmp_path / "run")]) == 2
    finally:
        release()
    error = capsys.readouterr().err
    assert f"in use by another process (PID {pid})" in error and error.count("\n") == 1
    assert toy_recipe_registered == []


def test_train_summary_names_stages_kept_steps_and_every_file(tmp_path, toy_recipe_registered, capsys):
    out = tmp_path / "run"
    assert cli_main(["train", "toy", "--steps", "4", "--device", "cpu", "--out", str(out),
                     "--checkpoint-every", "2", "--ship", "--weights-dir", str(tmp_path / "weights")]) == 0
    summary = capsys.readouterr().out
    assert summary.startswith("toy: 4 steps in 1 stage(s) (4) in ")
    assert f"stage ToyTask: steps 1-4; log {out / 'log.jsonl'}" in summary
    assert "model toy_autoencoder: kept the final weights, the last step; mse=" in summary
    listed = [Path(line.strip()) for line in summary.split("files written")[1].splitlines()[1:]]
    on_disk = sorted(p for p in out.rglob("*") if p.is_file() and p.name != ".facelib.lock")
    assert sorted(p for p in listed if out in p.parents) == on_disk
    assert len([p for p in on_disk if "checkpoints" in p.parts]) == 4  # steps 2 and 4, two files each
    entry = checkpoint.read_manifest(tmp_path / "weights")["toy_autoencoder"]
    assert tmp_path / "weights" / entry["file"] in listed and tmp_path / "weights" / "MANIFEST.json" in listed
    assert entry["recipe"] == "toy"


def test_resume_from_the_command_line_continues_the_run(tmp_path, toy_recipe_registered, capsys):
    out = tmp_path / "run"
    assert cli_main(["train", "toy", "--steps", "4", "--device", "cpu", "--out", str(out)]) == 0
    capsys.readouterr()
    assert cli_main(["train", "toy", "--steps", "6", "--device", "cpu", "--out", str(out), "--resume"]) == 0
    assert "stage ToyTask: steps 5-6 (resumed at 4)" in capsys.readouterr().out
    # toy_recipe logs every 10 steps, so only a run's last step: the first run's partial line at
    # step 4 is carried on into step 6, as in one uninterrupted 6-step run
    assert read_log(out)["step"].tolist() == [6]
    assert toy_recipe_registered[-1]["steps"] == 6


def test_help_and_listing_say_what_things_are(tmp_path, capsys, monkeypatch):
    """Reproduced reST backticks in --help, --seed without help, and the installed script calling
    itself ``python -m facelib``; ``list`` now names the recipe of fvae_confidence."""
    monkeypatch.setattr(sys, "argv", ["/usr/local/bin/facelib"])
    with pytest.raises(SystemExit):
        cli_main(["train", "--help"])
    help_text = capsys.readouterr().out
    assert "``" not in help_text and "usage: facelib train" in help_text
    assert "random seed" in help_text and "--resume" in help_text and "--checkpoint-every" in help_text
    assert cli_main(["list"]) == 0
    listing = capsys.readouterr().out.split("shipped weights")[1]
    fvae_confidence = next(line for line in listing.splitlines() if line.strip().startswith("fvae_confidence"))
    assert "recipe 'fvae'" in fvae_confidence
    classifier = next(line for line in listing.splitlines() if line.strip().startswith("expression_classifier"))
    assert "900 of recipe 'evaluators''s 2000 steps" in classifier


def test_module_usage_is_python_dash_m(capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", [str(Path(cli.__file__).with_name("__main__.py"))])
    assert _exit_status(["train", "toy", "--steps", "-5"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "python -m facelib train: error: argument --steps: must be an integer >= 1, got -5 (see --help)"]
