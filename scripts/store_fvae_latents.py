"""Store Algorithm 1's expression latents with the shipped FVAE and pixel VAE checkpoints.

The weights are unchanged (same sha256); each checkpoint's JSON gains ``extra.expression_latents``,
computed by ``facelib.train.fvae.training_latents``, the function the ``fvae`` and ``fvae_pixel_vae``
recipes now call at the end of training. Their manifest entries keep their training record and
gain a note saying so. Run once from the repository root::

    python scripts/store_fvae_latents.py
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

from facelib import checkpoint, pretrained
from facelib.train.fvae import training_latents

NAMES = ("fvae", "fvae_pixel_vae")
COMPUTED = {"file", "class", "config", "sha256", "config_sha256", "versions"}  # manifest_entry fills these in


def main() -> None:
    folder = pretrained.shipped_weights_dir()
    stems, fields = {}, {}
    with tempfile.TemporaryDirectory() as scratch:
        for name in NAMES:
            model = pretrained.load_pretrained(name)
            extra = dict(pretrained.pretrained_metadata(name).get("extra", {}))
            clock = time.perf_counter()
            extra["expression_latents"] = training_latents(model)
            seconds = time.perf_counter() - clock
            stems[name] = checkpoint.save_model(model, Path(scratch) / name, extra=extra)
            entry = pretrained.pretrained_info(name)
            fields[name] = {key: value for key, value in entry.items() if key not in COMPUTED}
            fields[name]["expression_latents"] = (
                "added by scripts/store_fvae_latents.py from these weights (facelib.train.fvae.training_latents, "
                f"{seconds:.1f} s); the recipe now stores them at the end of training")
            print(f"{name}: latents of {sorted(extra['expression_latents']['values'])} in {seconds:.1f} s")
        pretrained.ship_models(stems, fields, weights_dir=folder)


if __name__ == "__main__":
    main()
