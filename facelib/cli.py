"""Command line: ``python -m facelib train NAME ...`` and ``python -m facelib list``.

``train`` runs a recipe from ``facelib.recipes.RECIPES`` (the same run a notebook's "full" mode
does) and ends with a summary: each training stage's steps, which step each exported model
kept and why, and every file written. ``--ship`` then copies its checkpoints into
``facelib/weights/`` and records each one in ``MANIFEST.json`` with the command that reproduces
it, seed, steps, wall time, sha256 and metrics (all or nothing: a ship killed midway leaves the
previously shipped weights loadable).

Every option is checked before anything is rendered, trained or created; a bad one ends the
command with a one-line ``error:`` message and exit status 2.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from . import checkpoint, pretrained, recipes, train
from .utils import FolderLockedError, get_device, lock_folder

DESCRIPTION = "Train facelib's models with their named recipes and list the shipped weights."
MAX_SEED = 2**63 - 1 - 1024  # torch seeds are 64-bit; room is left for the Trainer's seed + rank


class UsageError(Exception):
    """A bad command-line option: printed as one ``error:`` line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad option is one line (``prog: error: ...``), not the usage plus the error."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _bounded_int(least: int, most: int | None = None):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < least or (most is not None and value > most):
            accepted = f"{least}..{most}" if most is not None else f">= {least}"
            raise argparse.ArgumentTypeError(f"must be an integer {accepted}, got {value}")
        return value

    return parse


def _prog() -> str:
    """``python -m facelib`` when run that way, else the installed script's own name."""
    name = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    return "python -m facelib" if name in ("", "__main__.py", "-c") else name


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=_prog(), description=DESCRIPTION)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    train_command = commands.add_parser("train", help="run a training recipe", description=(
        "Run a training recipe and print what it did: each stage's steps, the step each model kept and "
        "every file written."))
    train_command.add_argument("name", help="recipe name (see the list command)")
    train_command.add_argument("--steps", type=_bounded_int(1), default=None,
                               help="optimisation steps (default: the recipe's own)")
    train_command.add_argument("--seed", type=_bounded_int(0, MAX_SEED), default=0,
                               help="random seed of weights, data order and noise (default: 0)")
    train_command.add_argument("--out", type=Path, default=None, help="output folder (default: runs/NAME)")
    train_command.add_argument("--device", default="auto",
                               help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps")
    train_command.add_argument("--threads", type=_bounded_int(1), default=None,
                               help="CPU threads for torch (default: torch's own choice); recorded, since wall "
                                    "time depends on it")
    train_command.add_argument("--resume", action="store_true",
                               help="continue each stage from the newest checkpoint in the output folder")
    train_command.add_argument("--checkpoint-every", type=_bounded_int(0), default=None, metavar="N",
                               help="save a resumable checkpoint every N steps of each stage (default: the "
                                    "recipe's; a checkpoint is always saved at the end)")
    train_command.add_argument("--smoke", action="store_true", help="shrink to seconds (CI); cannot be shipped")
    train_command.add_argument("--ship", action="store_true", help="copy the checkpoints into the weights folder "
                                                                   "and record them in its MANIFEST.json")
    train_command.add_argument("--weights-dir", type=Path, default=None,
                               help="where --ship writes (default: facelib/weights)")
    listing = commands.add_parser("list", help="list recipes and shipped weights")
    listing.add_argument("--weights-dir", type=Path, default=None, help="weights folder (default: facelib/weights)")
    return parser


# ---------------------------------------------------------------------------------------------
# Checks that run before anything is rendered, trained or created


def _check_device(text: str) -> None:
    try:
        device = get_device(text)
    except ValueError as err:
        raise UsageError(f"--device: {err}") from None
    if device.type not in ("cpu", "cuda", "mps"):
        raise UsageError(f"--device {text!r}: facelib trains on cpu, cuda, cuda:N or mps (or auto)")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {text}: CUDA is not available here (torch {torch.__version__}); "
                             "use --device cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"--device {text}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    mps = getattr(torch.backends, "mps", None)
    if device.type == "mps" and not (mps is not None and mps.is_available()):
        raise UsageError(f"--device {text}: MPS is not available here; use --device cpu or auto")


def _check_folder(path: Path, option: str) -> None:
    """``path`` is a folder or can become one, and we may write there."""
    if path.exists() and not path.is_dir():
        raise UsageError(f"{option} {path} is a file; give a folder")
    existing = next((parent for parent in (path, *path.parents) if parent.exists()), Path("."))
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"{option} {path}: cannot write in {existing}")


def _check_train_args(args: argparse.Namespace) -> None:
    if args.ship and args.smoke:
        raise UsageError("--ship with --smoke: smoke runs are for CI and are never shipped")
    recipes.get_recipe(args.name)  # an unknown name lists the known ones
    _check_device(args.device)
    _check_folder(args.out, "--out")
    if args.ship:
        weights = args.weights_dir if args.weights_dir is not None else pretrained.shipped_weights_dir()
        _check_folder(weights, "--weights-dir")
        try:
            pretrained.check_writable(weights)
        except checkpoint.CheckpointError as err:
            raise UsageError(f"--ship: {err}") from None


# ---------------------------------------------------------------------------------------------
# Training, shipping and the summary


def _reproducing_command(args: argparse.Namespace) -> str:
    """The command recorded in the manifest: every option that changes the result, no local paths."""
    parts = ["python -m facelib train", args.name, f"--seed {args.seed}"]
    if args.steps is not None:
        parts.append(f"--steps {args.steps}")
    if args.device != "auto":
        parts.append(f"--device {args.device}")
    if args.threads is not None:
        parts.append(f"--threads {args.threads}")
    return " ".join(parts + ["--ship"])


def _code_version() -> str:
    """The git commit the package was run from (``+dirty`` with uncommitted changes), or ``unknown``."""
    package_dir = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=package_dir, capture_output=True,
                                text=True, check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "."], cwd=package_dir, capture_output=True,
                               text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def _kept_step(stem: Path) -> tuple[int | None, str]:
    """The step an exported model's weights come from, and why (read from its JSON's ``extra``)."""
    extra = checkpoint.read_metadata(stem).get("extra", {})
    best = extra.get("best_val_step") if isinstance(extra, dict) else None
    if isinstance(best, int) and best >= 0:
        return best, "its lowest validation loss (early stopping)"
    return None, "the last step"


def _ship(args: argparse.Namespace, result: dict) -> list[Path]:
    """Ship every checkpoint of the run at once; returns the files written into the weights folder."""
    folder = args.weights_dir if args.weights_dir is not None else pretrained.shipped_weights_dir()
    fields = {}
    for name, stem in result["checkpoints"].items():
        kept, _ = _kept_step(stem)
        fields[name] = dict(
            command=_reproducing_command(args), preset=result["preset"], steps=result["steps"], seed=args.seed,
            wall_time_s=result["wall_time_s"], metrics=result["metrics"].get(name, {}), device=args.device,
            # the Trainer's own clock, summed over stages; it counts the time before a --resume too
            train_seconds=round(sum(fit.seconds for fit in result.get("fits", [])), 1),
            threads=torch.get_num_threads(), code_version=result["code_version"], recipe=args.name,
            **({"kept_step": kept} if kept is not None else {}),
        )
    entries = pretrained.ship_models(result["checkpoints"], fields, weights_dir=folder)
    written = []
    for entry in entries.values():
        written += [folder / entry["file"], folder / (entry["file"][:-len(".safetensors")] + ".json")]
    return written + [folder / pretrained.MANIFEST_NAME]


def _files_written(folder: Path, since_ns: int) -> list[Path]:
    """Every file under ``folder`` modified since ``since_ns`` (the lock file aside), sorted."""
    found = []
    for root, _, names in os.walk(folder):
        for name in names:
            path = Path(root) / name
            if name != ".facelib.lock" and path.stat().st_mtime_ns >= since_ns:
                found.append(path)
    return sorted(found)


def _print_summary(args: argparse.Namespace, result: dict, fits: list, files: list[Path]) -> None:
    stages = " + ".join(f"{fit.step - fit.first_step}" for fit in fits) or "0"
    print(f"{args.name}: {result['steps']} steps in {len(fits)} stage(s) ({stages}) in {result['wall_time_s']:.1f} s, "
          f"preset {result['preset']!r}")
    for fit in fits:
        if fit.step == fit.first_step:
            ran = f"nothing left to train (resumed at its last step, {fit.step})"
        else:
            ran = f"steps {fit.first_step + 1}-{fit.step}" + (f" (resumed at {fit.first_step})" if fit.first_step else "")
        print(f"  stage {fit.task}: {ran}; log {fit.log_path}, checkpoint {fit.checkpoint}")
    for name, stem in result["checkpoints"].items():
        kept, why = _kept_step(stem)
        metrics = ", ".join(f"{k}={v:.4g}" for k, v in result["metrics"].get(name, {}).items())
        step = f"step {kept}" if kept is not None else "the final weights"
        print(f"  model {name}: kept {step}, {why}; {metrics}")
    print(f"files written ({len(files)}):")
    for path in files:
        print(f"  {path}")


def _train(args: argparse.Namespace) -> int:
    args.out = args.out if args.out is not None else Path("runs") / args.name
    _check_train_args(args)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    code_version = _code_version()  # read before training: the code that produced the weights
    started_ns = time.time_ns() - 1_000_000_000  # filesystem timestamps can be a little coarse
    fits: list[train.FitResult] = []
    with lock_folder(args.out, "training run"), train.run_options(
            resume=args.resume or None, checkpoint_every=args.checkpoint_every, on_fit=fits.append):
        result = recipes.run_recipe(args.name, steps=args.steps, seed=args.seed, out_dir=args.out,
                                    device=args.device, smoke=args.smoke)
    files = _files_written(args.out, started_ns)
    if args.ship:
        files += _ship(args, {**result, "code_version": code_version, "fits": fits})
    _print_summary(args, result, fits, files)
    return 0


def _recipe_of(entry: dict) -> str:
    """The recipe that made a shipped model (from its reproducing command)."""
    if isinstance(entry.get("recipe"), str):
        return entry["recipe"]
    words = str(entry.get("command", "")).split()
    return words[words.index("train") + 1] if "train" in words[:-1] else "?"


def _list(args: argparse.Namespace) -> int:
    print("recipes:")
    for name, target in sorted(recipes.RECIPES.items()):
        print(f"  {name:28s} {target}")
    if not recipes.RECIPES:
        print("  (none registered)")
    manifest = pretrained.read_manifest(args.weights_dir)
    print("shipped weights (the recipe that made each, and its steps):")
    for name, entry in sorted(manifest.items()):
        entry = entry if isinstance(entry, dict) else {}
        metrics = {k: v for k, v in entry.get("metrics", {}).items() if isinstance(v, (int, float))}
        own = metrics.pop("train_steps", None)
        recipe, total = _recipe_of(entry), entry.get("steps", "?")
        steps = (f"{own} of recipe {recipe!r}'s {total} steps" if own is not None
                 else f"recipe {recipe!r}, {total} steps in all its stages")
        kept = f", kept step {entry['kept_step']}" if "kept_step" in entry else ""
        shown = ", ".join(f"{k}={v:.4g}" for k, v in metrics.items())
        print(f"  {name:22s} {str(entry.get('class', '?')).rpartition('.')[2]:21s} {steps}{kept}  {shown}")
    if not manifest:
        print("  (none shipped yet)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return _train(args) if args.command == "train" else _list(args)
    except (UsageError, recipes.UnknownRecipeError, FolderLockedError) as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
