"""Command line: ``python -m facelib train NAME ...`` and ``python -m facelib list``.

``train`` runs a recipe from ``facelib.recipes.RECIPES`` (the same run a notebook's "full" mode
does); ``--ship`` then copies its checkpoints into ``facelib/weights/`` and records each one in
``MANIFEST.json`` with the command that reproduces it, seed, steps, wall time, sha256 and metrics.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import torch

from . import checkpoint, recipes
from .utils import atomic_write_bytes


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m facelib", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="run a training recipe")
    train.add_argument("name", help="recipe name (see `python -m facelib list`)")
    train.add_argument("--steps", type=int, default=None, help="optimisation steps (default: the recipe's own)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--out", type=Path, default=None, help="output folder (default: runs/NAME)")
    train.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N, mps")
    train.add_argument("--threads", type=int, default=None,
                       help="CPU threads for torch (default: torch's own choice); recorded, since wall time depends on it")
    train.add_argument("--smoke", action="store_true", help="shrink to seconds (CI); cannot be shipped")
    train.add_argument("--ship", action="store_true", help="copy the checkpoints into the weights folder and record "
                                                          "them in its MANIFEST.json")
    train.add_argument("--weights-dir", type=Path, default=None, help="where --ship writes (default: facelib/weights)")
    listing = commands.add_parser("list", help="list recipes and shipped weights")
    listing.add_argument("--weights-dir", type=Path, default=None, help="weights folder (default: facelib/weights)")
    return parser


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


def _ship(args: argparse.Namespace, result: dict) -> None:
    folder = args.weights_dir if args.weights_dir is not None else checkpoint.shipped_weights_dir()
    folder.mkdir(parents=True, exist_ok=True)
    for name, stem in result["checkpoints"].items():
        for suffix in (".safetensors", ".json"):
            source = stem.with_name(stem.name + suffix)
            atomic_write_bytes(folder / f"{name}{suffix}", source.read_bytes())
        entry = checkpoint.record_in_manifest(
            name, f"{name}.safetensors", command=_reproducing_command(args), preset=result["preset"],
            steps=result["steps"], seed=args.seed, wall_time_s=result["wall_time_s"],
            metrics=result["metrics"].get(name, {}), weights_dir=folder, device=args.device,
            threads=torch.get_num_threads(), code_version=result["code_version"],
        )
        print(f"shipped {name}: {folder.name}/{entry['file']} sha256 {entry['sha256'][:12]}...")


def _train(args: argparse.Namespace) -> int:
    if args.ship and args.smoke:
        raise SystemExit("error: --ship with --smoke: smoke runs are for CI and are never shipped")
    out_dir = args.out if args.out is not None else Path("runs") / args.name
    if args.threads is not None:
        if args.threads < 1:
            raise SystemExit(f"error: --threads must be a positive integer, got {args.threads}")
        torch.set_num_threads(args.threads)
    code_version = _code_version()  # read before training: the code that produced the weights
    result = recipes.run_recipe(args.name, steps=args.steps, seed=args.seed, out_dir=out_dir,
                                device=args.device, smoke=args.smoke)
    print(f"{args.name}: {result['steps']} steps in {result['wall_time_s']:.1f} s (preset {result['preset']!r})")
    for name, stem in result["checkpoints"].items():
        metrics = ", ".join(f"{k}={v:.4g}" for k, v in result["metrics"].get(name, {}).items())
        print(f"  {name}: {stem}.safetensors  {metrics}")
    if args.ship:
        _ship(args, {**result, "code_version": code_version})
    return 0


def _list(args: argparse.Namespace) -> int:
    print("recipes:")
    for name, target in sorted(recipes.RECIPES.items()):
        print(f"  {name:28s} {target}")
    if not recipes.RECIPES:
        print("  (none registered)")
    manifest = checkpoint.read_manifest(args.weights_dir)
    print("shipped weights:")
    for name, entry in sorted(manifest.items()):
        metrics = ", ".join(f"{k}={v:.4g}" for k, v in entry.get("metrics", {}).items())
        print(f"  {name:28s} {entry.get('class', '?')}  {entry.get('steps', '?')} steps  {metrics}")
    if not manifest:
        print("  (none shipped yet)")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _train(args) if args.command == "train" else _list(args)
    except recipes.UnknownRecipeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
