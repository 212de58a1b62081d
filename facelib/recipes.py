"""Training recipes: the named, reproducible runs behind ``python -m facelib train NAME``.

A recipe is a plain function, referenced lazily as ``"module.path:function"`` so that
listing recipes imports no model code::

    RECIPES: dict[str, str] = {"fvae": "facelib.models.fvae:train_recipe", ...}

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
  ``KeyError`` listing the known ones.
- ``run_recipe(name, *, steps=None, seed=0, out_dir, device="auto", smoke=False) -> dict``:
  calls it, checks the returned dict (every checkpoint exists, metrics are numbers) and adds
  ``"wall_time_s"``.
"""
