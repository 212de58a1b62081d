"""SynthFaces: the embedded face dataset, rendered on the fly (see ``facelib.data.synth``).

Every item is a pure function of (preset, split, seed, size, index): batched rendering through
``__getitems__`` (which ``torch.utils.data.DataLoader`` uses automatically) gives exactly the
same tensors as item-by-item access. An optional ``.npz`` cache stores a rendered dataset.
"""
from __future__ import annotations

import io
import os
import zlib
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..conventions import AU_MAX, EXPRESSIONS, NUM_AUS
from ..utils import atomic_write_bytes
from . import synth
from .presets import SPLITS, Preset, get_preset

_CACHE_VERSION = 1


class SynthFaces(Dataset):
    """Synthetic faces of one preset and split, with every label the papers use.

    Args:
        preset: ``"multipie"``, ``"rafd"``, ``"oulu"`` or ``"emotionet"`` (``facelib.data.PRESETS``).
        split: ``"train"``, ``"val"`` or ``"test"``: disjoint identities.
        size: image side in pixels.
        pairs: items are (source, target) expression pairs of one identity with the true flow.
        sequences: items are onset sequences from neutral to the item's expression.
        length: frames per sequence (``sequences=True`` only; default: the preset's, or 10).
        seed: changes every random choice (intensities, AU draws, light, background, noise).
        cache: path of an ``.npz`` file: loaded if it exists, otherwise the whole dataset is
            rendered once and written there (atomically).

    Items (dicts of tensors):
        single: ``image`` [3,S,S] in [-1,1], ``identity`` (long, renderer id), ``emotion`` (long,
        index into ``facelib.EXPRESSIONS``), ``intensity`` (float, 0-5), ``aus`` [17], ``yaw``
        (float, degrees), ``landmarks`` [K,2] pixel (x, y).
        pairs: ``source``, ``target``, ``flow`` [2,S,S] (backward, pixels: target ~= warp(source,
        flow)), ``visible`` [1,S,S], ``identity``, ``source_emotion``, ``target_emotion``,
        ``source_aus``, ``target_aus``, ``yaw``, ``source_landmarks``, ``target_landmarks``
        (plus ``source_intensity``, ``target_intensity``).
        sequences: ``frames`` [T,3,S,S], ``identity``, ``emotion``, ``intensity`` (peak),
        ``aus`` [T,17], ``yaw``, ``landmarks`` [T,K,2].

    Enumeration (index order): multipie/rafd: identity x yaw x expression (pairs: x target
    expression != source); oulu: identity x expression x the last three frames of its onset
    sequence (pairs: neutral first frame -> each of those); emotionet: identity x sample (pairs:
    two random AU combinations of the identity).
    """

    def __init__(self, preset: str = "multipie", split: str = "train", size: int = 64, pairs: bool = False,
                 sequences: bool = False, length: int | None = None, seed: int = 0, cache=None):
        self.preset: Preset = get_preset(preset)
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; valid splits are {list(SPLITS)}")
        if not isinstance(size, int) or isinstance(size, bool) or not 8 <= size <= 4096:
            raise ValueError(f"size must be an int between 8 and 4096 pixels; got {size!r}")
        if pairs and sequences:
            raise ValueError("choose pairs=True or sequences=True, not both")
        if length is not None and not sequences:
            raise ValueError("length is the number of frames of a sequence; it needs sequences=True")
        if length is not None and (not isinstance(length, int) or length < 2):
            raise ValueError(f"length must be an int >= 2 frames; got {length!r}")
        self.split, self.size, self.pairs, self.sequences, self.seed = split, size, bool(pairs), bool(sequences), int(seed)
        self.length = length if length is not None else (self.preset.sequence_length or 10)
        self.identities = list(self.preset.identity_range(split))
        self.expressions = self.preset.expressions
        self._salt = zlib.crc32(f"{self.preset.name}/{split}/{self.seed}".encode()) & 0xFFFFFF
        self._layout = self._make_layout()
        self._cache = None
        if cache is not None:
            self._cache = self._load_or_build_cache(Path(cache))

    # ------------------------------------------------------------------ enumeration
    def _make_layout(self) -> tuple[int, ...]:
        p = self.preset
        n_id, n_yaw, n_expr = len(self.identities), len(p.yaws), len(p.expressions)
        if p.random_aus:
            return (n_id, p.samples_per_identity)
        if p.sequence_length and not self.sequences:
            return (n_id, n_expr, p.last_frames)
        if self.pairs:
            return (n_id, n_yaw, n_expr, n_expr - 1)
        return (n_id, n_yaw, n_expr)

    def __len__(self) -> int:
        return int(np.prod(self._layout))

    @property
    def render_pixels(self) -> int:
        """Pixels one item costs to render (faces x size^2), 0 when items come from the cache.

        The Trainer's loader (``facelib.data.loader``) reads it to render several steps per call
        in background workers.
        """
        if self._cache is not None:
            return 0
        faces = 2 if self.pairs else self.length if self.sequences else 1
        return faces * self.size * self.size

    def _unravel(self, index: Tensor) -> list[Tensor]:
        out = []
        for dim in reversed(self._layout):
            out.append(index % dim)
            index = index // dim
        return out[::-1]

    def _uniforms(self, index: Tensor, count: int, salt: int) -> Tensor:
        return synth.hash_uniform(index, count, salt=(self._salt + salt * 7919) & 0xFFFFFF)

    def _labels(self, index: Tensor) -> dict[str, Tensor]:
        """Everything about items ``index`` except the pixels."""
        p = self.preset
        ids = torch.tensor(self.identities, dtype=torch.long)
        parts = self._unravel(index)
        u = self._uniforms(index, 8, salt=1)
        lo, hi = p.intensity
        out: dict[str, Tensor] = {}
        if p.random_aus:
            identity = ids[parts[0]]
            yaw = torch.tensor(p.yaws)[(u[:, 0] * len(p.yaws)).long().clamp(max=len(p.yaws) - 1)]
            out["source_aus"] = self._random_aus(index, salt=2)
            out["target_aus"] = self._random_aus(index, salt=3)
            for key in ("source", "target"):
                out[f"{key}_emotion"] = _nearest_expression(out[f"{key}_aus"])
                out[f"{key}_intensity"] = out[f"{key}_aus"].amax(1)
                out[f"{key}_asym"] = synth.identity_params(identity)["au_asym"]
        elif p.sequence_length and not self.sequences:
            identity, expr, frame = ids[parts[0]], parts[1], parts[2]
            yaw = torch.zeros(len(index))
            t = (p.sequence_length - p.last_frames + frame).float() / (p.sequence_length - 1)
            peak = 4.0 + u[:, 1]
            emotion = torch.tensor(p.expression_ids)[expr]
            out["target_emotion"] = emotion
            out["target_intensity"] = peak * _onset(t)
            out["source_emotion"] = torch.full_like(emotion, EXPRESSIONS.index("neutral"))
            out["source_intensity"] = torch.zeros(len(index))
        else:
            identity = ids[parts[0]]
            yaw = torch.tensor(p.yaws)[parts[1]]
            expr_ids = torch.tensor(p.expression_ids)
            source = parts[2]
            intensity = lo + (hi - lo) * u[:, 2]
            if self.sequences:  # a sequence rises to a near-peak expression
                intensity = hi - 0.2 * (hi - lo) * u[:, 2]
            out["source_emotion"] = expr_ids[source]
            out["source_intensity"] = intensity
            if self.pairs:
                target = parts[3] + (parts[3] >= source).long()  # every expression but the source
                out["target_emotion"] = expr_ids[target]
                out["target_intensity"] = lo + (hi - lo) * u[:, 3]
        for key in ("source", "target"):
            if f"{key}_emotion" in out and f"{key}_aus" not in out:
                neutral = out[f"{key}_emotion"] == EXPRESSIONS.index("neutral")
                out[f"{key}_intensity"] = torch.where(neutral, torch.zeros(len(index)), out[f"{key}_intensity"])
                out[f"{key}_aus"] = synth.emotion_aus(out[f"{key}_emotion"], out[f"{key}_intensity"], identity)
                out[f"{key}_asym"] = synth.emotion_asymmetry(out[f"{key}_emotion"], identity)
        out["identity"] = identity
        out["yaw"] = yaw.float()
        out["seed"] = (self._uniforms(index, 1, salt=4)[:, 0] * 2**31).long()
        return out

    def _random_aus(self, index: Tensor, salt: int) -> Tensor:
        u = self._uniforms(index, 2 * NUM_AUS, salt=salt)
        on = u[:, :NUM_AUS] < 0.3
        return torch.where(on, u[:, NUM_AUS:] * AU_MAX, torch.zeros(len(index), NUM_AUS))

    # ------------------------------------------------------------------ rendering
    def _render(self, index: Tensor) -> dict[str, Tensor]:
        p = self.preset
        lab = self._labels(index)
        kw = dict(size=self.size, light=None if p.light == "fixed" else "random",
                  background=None if p.background == "plain" else p.background, noise=p.noise, seeds=lab["seed"])
        if self.pairs:
            r = synth.render_pair(lab["identity"], lab["source_aus"], lab["target_aus"], lab["yaw"],
                                  source_asymmetry=lab["source_asym"], target_asymmetry=lab["target_asym"], **kw)
            return {
                "source": r["source"], "target": r["target"], "flow": r["flow"], "visible": r["visible"],
                "identity": lab["identity"], "source_emotion": lab["source_emotion"],
                "target_emotion": lab["target_emotion"], "source_intensity": lab["source_intensity"],
                "target_intensity": lab["target_intensity"], "source_aus": lab["source_aus"],
                "target_aus": lab["target_aus"], "yaw": lab["yaw"],
                "source_landmarks": r["source_landmarks"], "target_landmarks": r["target_landmarks"],
            }
        key = self._single_key()
        aus, asym = lab[f"{key}_aus"], lab[f"{key}_asym"]
        if self.sequences:
            T, n = self.length, len(index)
            ramp = _onset(torch.arange(T, dtype=torch.float32) / (T - 1))
            seq_aus = (aus[:, None] * ramp[None, :, None]).reshape(n * T, NUM_AUS)
            r = synth.render(lab["identity"].repeat_interleave(T), seq_aus, lab["yaw"].repeat_interleave(T),
                             asymmetry=asym.repeat_interleave(T, 0), **(kw | {"seeds": lab["seed"].repeat_interleave(T)}))
            S = self.size
            return {
                "frames": r["image"].reshape(n, T, 3, S, S), "identity": lab["identity"],
                "emotion": lab[f"{key}_emotion"], "intensity": lab[f"{key}_intensity"],
                "aus": seq_aus.reshape(n, T, NUM_AUS), "yaw": lab["yaw"],
                "landmarks": r["landmarks"].reshape(n, T, -1, 2),
            }
        r = synth.render(lab["identity"], aus, lab["yaw"], asymmetry=asym, **kw)
        return {
            "image": r["image"], "identity": lab["identity"], "emotion": lab[f"{key}_emotion"],
            "intensity": lab[f"{key}_intensity"], "aus": aus, "yaw": lab["yaw"], "landmarks": r["landmarks"],
        }

    def _single_key(self) -> str:
        """Which of the pair labels a single-image item shows: the expressive frame of a sequence preset."""
        p = self.preset
        return "target" if p.random_aus or (p.sequence_length and not self.sequences) else "source"

    def labels(self, indices=None) -> dict[str, Tensor]:
        """The labels of items ``indices`` (default: every item) without rendering a pixel.

        Single-image items: ``identity``, ``emotion``, ``intensity``, ``aus`` ``[N, 17]``, ``yaw``
        (a sequence's peak AUs). Pairs: ``identity``, ``yaw`` and the ``source_``/``target_``
        ``emotion``, ``intensity`` and ``aus``.
        """
        index = torch.arange(len(self)) if indices is None else self._check_indices(indices)
        lab = self._labels(index)
        if self.pairs:
            names = [f"{side}_{what}" for side in ("source", "target") for what in ("emotion", "intensity", "aus")]
            return {name: lab[name] for name in ("identity", "yaw", *names)}
        key = self._single_key()
        return {"identity": lab["identity"], "emotion": lab[f"{key}_emotion"], "intensity": lab[f"{key}_intensity"],
                "aus": lab[f"{key}_aus"], "yaw": lab["yaw"]}

    def render_parameters(self, indices) -> dict[str, Tensor]:
        """Everything the renderer needs for items ``indices``, pixels aside: what :meth:`labels`
        summarises, plus both sides' AUs and asymmetry of every item and the ``seed`` of each item's
        light and background, so that a held-out face can be rendered again with other AUs."""
        return self._labels(self._check_indices(indices))

    def _check_indices(self, indices) -> Tensor:
        index = torch.as_tensor(list(indices) if not isinstance(indices, Tensor) else indices).long().reshape(-1)
        n = len(self)
        if ((index < -n) | (index >= n)).any():
            raise IndexError(f"index out of range for SynthFaces of length {n}")
        return torch.where(index < 0, index + n, index)

    def __getitems__(self, indices) -> list[dict[str, Tensor]]:
        """Render many items in one batch (exactly equal to rendering them one by one)."""
        index = self._check_indices(indices)
        if self._cache is not None:
            batch = {key: torch.from_numpy(value[index.numpy()]) for key, value in self._cache.items()}
        else:
            batch = self._render(index)
        return [{key: value[i] for key, value in batch.items()} for i in range(len(index))]

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        if not isinstance(index, (int, np.integer)) and not (isinstance(index, Tensor) and index.ndim == 0):
            raise TypeError(f"SynthFaces index must be an int; got {type(index).__name__} (use __getitems__ for many)")
        return self.__getitems__([int(index)])[0]

    def batch(self, indices) -> dict[str, Tensor]:
        """Items ``indices`` as one dict of stacked tensors (what a DataLoader would collate)."""
        index = self._check_indices(indices)
        if self._cache is not None:
            return {key: torch.from_numpy(value[index.numpy()]) for key, value in self._cache.items()}
        return self._render(index)

    def across_expressions(self, count: int = 10, candidates: int = 120, seed: int = 0) -> Tensor:
        """``count`` item indices that cycle through the split's expressions (for showing a preset).

        Evenly spaced indices alias with the identity x yaw x expression order (every 10th item of
        multipie is nearly always a scream), so the indices come from a seeded random draw of
        ``candidates`` items, taken so that no expression repeats before the others have appeared.
        """
        draw = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:candidates]
        emotions = self.labels(draw)["emotion"].tolist()
        distinct = len(set(emotions))
        chosen, seen = [], []
        while len(chosen) < min(count, len(draw)):
            for index, emotion in zip(draw.tolist(), emotions):
                if index not in chosen and emotion not in seen[-(distinct - 1):] and len(chosen) < count:
                    chosen.append(index)
                    seen.append(emotion)
            seen.clear()
        return torch.tensor(chosen)

    # ------------------------------------------------------------------ cache
    def _cache_meta(self) -> np.ndarray:
        return np.array(f"v{_CACHE_VERSION}|{self.preset.name}|{self.split}|{self.size}|{self.pairs}|"
                        f"{self.sequences}|{self.length}|{self.seed}")

    def _load_or_build_cache(self, path: Path) -> dict[str, np.ndarray]:
        if path.suffix != ".npz":
            raise ValueError(f"cache must be a path ending in .npz; got {str(path)!r}")
        if path.exists():
            with np.load(path, allow_pickle=False) as data:
                meta = str(data["__meta__"])
                if meta != str(self._cache_meta()):
                    raise ValueError(f"cache {str(path)!r} holds a different dataset ({meta}); expected "
                                     f"{self._cache_meta()}. Delete it or choose another path.")
                return {key: data[key] for key in data.files if key != "__meta__"}
        from tqdm.auto import tqdm

        parts: dict[str, list[np.ndarray]] = {}
        step = 256
        for start in tqdm(range(0, len(self), step), desc=f"rendering {self.preset.name}/{self.split} cache"):
            batch = self._render(torch.arange(start, min(len(self), start + step)))
            for key, value in batch.items():
                parts.setdefault(key, []).append(value.numpy())
        arrays = {key: np.concatenate(value) for key, value in parts.items()}
        buffer = io.BytesIO()
        np.savez_compressed(buffer, __meta__=self._cache_meta(), **arrays)
        atomic_write_bytes(os.fspath(path), buffer.getvalue())
        return arrays

    def __repr__(self) -> str:
        kind = "pairs" if self.pairs else "sequences" if self.sequences else "images"
        return (f"SynthFaces(preset={self.preset.name!r}, split={self.split!r}, size={self.size}, {kind}, "
                f"{len(self)} items, {len(self.identities)} identities)")


def _onset(t: Tensor) -> Tensor:
    """Intensity profile of an onset sequence: 0 at the neutral first frame, 1 at the peak."""
    return t.clamp(0, 1) ** 1.3


def _nearest_expression(aus: Tensor) -> Tensor:
    """The expression whose prototype is closest in direction to ``aus`` (neutral if all are weak)."""
    proto = synth.PROTOTYPE_AUS
    cos = torch.nn.functional.normalize(aus, dim=1) @ torch.nn.functional.normalize(proto + 1e-9, dim=1).T
    cos[:, EXPRESSIONS.index("neutral")] = -1
    label = cos.argmax(1)
    return torch.where(aus.amax(1) < 1.0, torch.full_like(label, EXPRESSIONS.index("neutral")), label)


__all__ = ["SynthFaces"]


def expression_aus(preset: str = "rafd", split: str = "train") -> dict[str, Tensor]:
    """Each expression's mean ground-truth AU intensities ``[17]`` over a preset's split.

    What the AU-driven editors (GANimation, DFT-Net, EGGAN) take as the target of an edit named
    by an expression: DFT-Net Sec. 3.2 takes these means from RaFD, so the default is the
    ``rafd`` preset's training identities. Keys are the preset's expressions, values are in
    ``[0, 5]`` in ``facelib.AU_CODES`` order. No pixel is rendered.
    """
    labels = SynthFaces(preset=preset, split=split, size=8).labels()
    means = {}
    for index in labels["emotion"].unique().tolist():
        means[EXPRESSIONS[index]] = labels["aus"][labels["emotion"] == index].mean(0)
    return {name: means[name] for name in EXPRESSIONS if name in means}
