"""Training recipes: the named, reproducible runs behind ``python -m facelib train NAME``.

A recipe is a plain function, referenced lazily as ``"module.path:function"`` so that
listing recipes imports no model code::

    RECIPES: dict[str, str] = {"fvae": "facelib.train.fvae:train_recipe", ...}

Recipe signature (keyword-only; every recipe accepts exactly these)::

    def recipe(*, steps: int | None, seed: int, out_dir: pathlib.Path,
               device: str, smoke: bool) -> dict

- ``steps``: ``None`` means the recipe's own default (what ships); an int overrides it
  (e.g. the paper-scale "full" run on a GPU).
- ``seed``: passed to ``facelib.set_seed`` / ``Trainer(seed=...)``.
- ``out_dir``: an existing folder for logs, training checkpoints and exported models.
- ``device``: ``"auto"``, ``"cpu"``, ``"cuda"``, ... (give it to ``Trainer``).
- ``smoke``: shrink to seconds (CI); a smoke run is never shipped.

It returns a dict::

    {"checkpoints": {manifest_name: stem_path},          # written with facelib.checkpoint.save_model
     "metrics": {manifest_name: {metric_name: float}},   # measured on held-out data
     "preset": str,                                      # SynthFaces preset (or dataset) used
     "steps": int}                                       # optimisation steps actually run

Public API
----------
- ``RECIPES: dict[str, str]``: name -> ``"module:function"``.
- ``register_recipe(name, target: str | Callable, *, replace=False)``: add a recipe (a
  ``"module:function"`` string or the function itself; tests register toys this way).
- ``get_recipe(name) -> Callable``: imports and returns it; an unknown name raises
  ``UnknownRecipeError`` (a ``KeyError``) listing the known ones.
- ``run_recipe(name, *, steps=None, seed=0, out_dir, device="auto", smoke=False) -> dict``:
  calls it, checks the returned dict (every checkpoint exists, metrics are numbers) and adds
  ``"wall_time_s"``.
"""
from __future__ import annotations

import importlib
import math
import numbers
import re
import time
from pathlib import Path
from typing import Any, Callable

# One line per recipe: "name": "module:function" (the function follows the signature above).
RECIPES: dict[str, str] = {
    "fvae": "facelib.train.fvae:train_recipe",  # FVAE (Eq. 1) + confidence network (Eq. 7-8)
    "fvae_pixel_vae": "facelib.train.fvae:train_pixel_vae_recipe",  # FVAE Sec. 6.1 "VAE" baseline
    "average_flow": "facelib.train.fvae:train_average_flow_recipe",  # FVAE Sec. 6.1 average-flow baseline
    "stargan": "facelib.train.stargan:train_recipe",  # StarGAN, CPU recipe, rafd's eight emotions (shipped)
    "stargan_paper": "facelib.train.stargan:train_paper_recipe",  # StarGAN, the paper's schedule (WGAN-GP, n_critic 5)
    "ganimation": "facelib.train.ganimation:train_recipe",  # GANimation (Eq. 2-6), the paper's schedule (shipped)
    "ganimation_cpu": "facelib.train.ganimation:train_cpu_recipe",  # GANimation, the CPU recipe (measured worse)
    "dftnet": "facelib.train.dftnet:train_recipe",  # DFT-Net (Eq. 1-10): GANimation + flow decoder, emotionet
    "dftnet_no_flow": "facelib.train.dftnet:train_no_flow_recipe",  # DFT-Net's ablation: X_a = X_s
    "dftnet_no_texture": "facelib.train.dftnet:train_no_texture_recipe",  # DFT-Net's ablation: A = 1 (a pure warp)
    "leed": "facelib.train.leed:train_recipe",  # LEED (Eq. 1-16), the CPU recipe, oracle neutral faces (shipped)
    "leed_paper": "facelib.train.leed:train_paper_recipe",  # LEED as written: D(C), perceptual loss, WGAN-GP x5
    "leed_no_q": "facelib.train.leed:train_no_q_recipe",  # LEED Fig. 3 ablation: without Eq. 3's Q
    "leed_no_s": "facelib.train.leed:train_no_s_recipe",  # LEED Fig. 3 ablation: without Eq. 11's siamese loss
    "eggan": "facelib.train.eggan:train_recipe",  # EGGAN (Eq. 1-7), the CPU recipe, rafd's 17 AUs (shipped)
    "eggan_paper": "facelib.train.eggan:train_paper_recipe",  # EGGAN as written: G paints the face, WGAN-GP
    "eggan_regressor_labels": "facelib.train.eggan:train_regressor_labels_recipe",  # EGGAN on the AU regressor's labels
    "exprgan": "facelib.train.exprgan:train_recipe",  # ExprGAN (Eq. 3-10), the CPU recipe, oulu preset (shipped)
    "exprgan_paper": "facelib.train.exprgan:train_paper_recipe",  # ExprGAN, the paper's three stages
    "exprgan_caae": "facelib.train.exprgan:train_caae_recipe",  # ExprGAN Fig. 2's CAAE-style baseline
    "exprgan_no_q": "facelib.train.exprgan:train_no_q_recipe",  # ExprGAN ablation: without Q
    "exprgan_joint": "facelib.train.exprgan:train_joint_recipe",  # ExprGAN ablation: the paper's losses jointly
    "evaluators": "facelib.train.evaluators:train_recipe",  # expression classifier, AU regressor, identity embedder
    "expression_classifier": "facelib.train.evaluators:train_expression_classifier_recipe",
    "au_regressor": "facelib.train.evaluators:train_au_regressor_recipe",
    "identity_embedder": "facelib.train.evaluators:train_identity_embedder_recipe",
}


class UnknownRecipeError(KeyError):
    """An unknown recipe name; the message lists the known ones."""

    def __str__(self) -> str:
        return str(self.args[0])

_TARGET = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_]*$")
_registered_functions: dict[str, Callable] = {}


def register_recipe(name: str, target: str | Callable, *, replace: bool = False) -> None:
    """Add recipe ``name``: a ``"module:function"`` string (imported lazily) or the function itself."""
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise ValueError(f"recipe name {name!r}: use letters, digits, '_', '-' and '.'")
    if name in RECIPES and not replace:
        raise ValueError(f"recipe {name!r} is already registered (as {RECIPES[name]}); pass replace=True")
    if callable(target):
        _registered_functions[name] = target
        RECIPES[name] = f"{target.__module__}:{target.__qualname__}"
    elif isinstance(target, str) and _TARGET.match(target):
        _registered_functions.pop(name, None)
        RECIPES[name] = target
    else:
        raise ValueError(f"recipe target {target!r}: expected 'package.module:function' or a function")


def get_recipe(name: str) -> Callable:
    """The recipe function ``name`` (imports its module); unknown names list the known ones."""
    if name not in RECIPES:
        known = ", ".join(sorted(RECIPES)) or "none registered"
        raise UnknownRecipeError(f"unknown recipe {name!r}; known recipes: {known}")
    if name in _registered_functions:
        return _registered_functions[name]
    module_name, function_name = RECIPES[name].split(":")
    function = getattr(importlib.import_module(module_name), function_name, None)
    if not callable(function):
        raise ImportError(f"recipe {name!r} points to {RECIPES[name]}, which is not a function")
    return function


def _check_result(name: str, result: Any) -> dict:
    if not isinstance(result, dict) or "checkpoints" not in result:
        raise TypeError(f"recipe {name!r} must return a dict with 'checkpoints', 'metrics', 'preset', 'steps'")
    from .checkpoint import CheckpointError, checkpoint_files

    checkpoints = result["checkpoints"]
    for checkpoint_name, stem in checkpoints.items():
        try:
            weights = checkpoint_files(stem)[1]
        except CheckpointError as err:
            raise FileNotFoundError(f"recipe {name!r}: checkpoint {checkpoint_name!r}: {err}") from None
        if not weights.exists():
            raise FileNotFoundError(f"recipe {name!r}: checkpoint {checkpoint_name!r} has no {weights.name}")
    metrics = result.get("metrics", {})
    for checkpoint_name, values in metrics.items():
        if checkpoint_name not in checkpoints:
            raise ValueError(f"recipe {name!r}: metrics for {checkpoint_name!r}, which is not among its checkpoints "
                             f"{sorted(checkpoints)}")
        for metric, value in values.items():
            if not isinstance(value, numbers.Real) or isinstance(value, bool) or not math.isfinite(value):
                raise ValueError(f"recipe {name!r}: metric {checkpoint_name}.{metric} = {value!r} is not a finite number")
    return {
        "checkpoints": {key: Path(value) for key, value in checkpoints.items()},
        # plain int/float (not NumPy scalars) so that the manifest can be written as JSON
        "metrics": {key: {metric: int(value) if isinstance(value, numbers.Integral) else float(value)
                          for metric, value in metrics.get(key, {}).items()} for key in checkpoints},
        "preset": str(result.get("preset", "")),
        "steps": int(result["steps"]),
    }


def run_recipe(
    name: str, *, steps: int | None = None, seed: int = 0, out_dir: str | Path, device: str = "auto",
    smoke: bool = False,
) -> dict:
    """Run recipe ``name`` in ``out_dir``; returns its checked result plus ``wall_time_s``."""
    recipe = get_recipe(name)
    if steps is not None and (not isinstance(steps, int) or steps < 1):
        raise ValueError(f"steps must be a positive int or None (the recipe's default), got {steps!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    result = recipe(steps=steps, seed=seed, out_dir=out_dir, device=device, smoke=smoke)
    checked = _check_result(name, result)
    checked["wall_time_s"] = time.perf_counter() - start
    return checked
