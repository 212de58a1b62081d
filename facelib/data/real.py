"""Loaders for the real face datasets the papers use, by their file-naming conventions.

None of these datasets can be downloaded automatically (all are licence-gated); a user who has
one points the loader at its folder. Items carry the same keys as :class:`SynthFaces` items, so
the same models train on either:

* ``image``: float ``[3, S, S]`` in ``[-1, 1]``, RGB
* ``identity``: long, the dataset's subject number (or an index for named CSV identities)
* ``emotion``: long, an index into :data:`facelib.EXPRESSIONS`
* ``intensity``: float, ``nan`` (real datasets do not grade intensity)
* ``aus``: float ``[17]`` in :data:`facelib.AU_CODES` order, ``nan`` where unknown
* ``yaw``: float degrees, ``nan`` where unknown
* ``path``: the image file, as a string

Splits are by identity (a test subject never appears in training): the sorted identities are
shuffled with ``numpy.random.default_rng(seed)`` and cut into ``fractions`` (train, val, test).
``split="all"`` keeps every identity.

Framing: ``align=True`` runs :func:`facelib.align.align_face` on each image (SynthFaces'
framing; an image without a detectable face raises :class:`facelib.align.NoFaceError` naming
the file). ``align=False`` takes the central square and resizes it, which suits datasets whose
photos are already centred on the face.
"""
from __future__ import annotations

import csv
import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from ..conventions import AU_CODES, AU_MAX, EXPRESSIONS, NUM_AUS, expression_index
from .io import load_image

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
SPLITS = ("train", "val", "test", "all")


@dataclass(frozen=True)
class Record:
    """One image of a dataset and its labels (``aus`` is None when the dataset has none)."""

    path: Path
    identity: int
    emotion: int
    yaw: float = math.nan
    aus: tuple[float, ...] | None = None
    meta: dict = field(default_factory=dict, compare=False)


def split_identities(identities, split: str, seed: int = 0,
                     fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> list[int]:
    """The identities of ``split``: sorted ids shuffled by ``seed``, cut into train/val/test ``fractions``.

    val and test get at least one identity each; train gets the rest.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits are {list(SPLITS)}")
    ids = sorted(set(int(i) for i in identities))
    if split == "all":
        return ids
    if len(fractions) != 3 or min(fractions) < 0 or not math.isclose(sum(fractions), 1.0, abs_tol=1e-6):
        raise ValueError(f"fractions must be three non-negative numbers (train, val, test) summing to 1, got {fractions}")
    if len(ids) < 3:
        raise ValueError(f"splitting by identity needs at least 3 identities, found {len(ids)}; use split='all'")
    order = [ids[i] for i in np.random.default_rng(seed).permutation(len(ids))]
    n_val = max(1, round(fractions[1] * len(ids)))
    n_test = max(1, round(fractions[2] * len(ids)))
    n_train = len(ids) - n_val - n_test
    if n_train < 1:
        raise ValueError(f"{len(ids)} identities leave none for training with fractions {fractions}")
    parts = {"train": order[:n_train], "val": order[n_train:n_train + n_val], "test": order[n_train + n_val:]}
    return sorted(parts[split])


def _expression_filter(names) -> set[int] | None:
    """Indices of the expression names a user asked for (``ValueError`` lists the valid names)."""
    if names is None:
        return None
    if isinstance(names, str):
        names = [names]
    return {expression_index(str(name).strip().lower()) for name in names}


class RealFaces(Dataset):
    """A list of :class:`Record` served as SynthFaces-style items (base class of the loaders)."""

    #: Name used in error messages.
    dataset_name = "image"

    def __init__(self, records: list[Record], *, split: str = "train", size: int = 64, align: bool = False,
                 seed: int = 0, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1), emotions=None):
        if not isinstance(size, int) or size < 16:
            raise ValueError(f"size must be an integer >= 16 (e.g. 64 or 128), got {size!r}")
        wanted = _expression_filter(emotions)
        if wanted is not None:
            records = [r for r in records if r.emotion in wanted]
        if not records:
            raise ValueError(f"no {self.dataset_name} images left after filtering")
        for record in records:
            if not _INT64_MIN <= record.identity <= _INT64_MAX:
                raise ValueError(f"{record.path.name}: identity {record.identity} does not fit a 64-bit integer")
        self.identities = split_identities([r.identity for r in records], split, seed, fractions)
        keep = set(self.identities)
        self.records = [r for r in records if r.identity in keep]
        self.split, self.size, self.align = split, size, align
        #: Names of the expressions present in this split, in facelib.EXPRESSIONS order.
        self.expressions = [EXPRESSIONS[i] for i in sorted({r.emotion for r in self.records})]

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        record = self.records[index]
        rgb = load_image(record.path)
        if self.align:
            from ..align import NoFaceError, align_face

            try:
                crop = align_face(rgb, self.size).crop
            except NoFaceError as err:
                raise NoFaceError(f"{record.path}: {err}") from None
        else:
            height, width = rgb.shape[:2]
            side = min(height, width)
            top, left = (height - side) // 2, (width - side) // 2
            crop = cv2.resize(rgb[top:top + side, left:left + side], (self.size, self.size),
                              interpolation=cv2.INTER_AREA if side > self.size else cv2.INTER_CUBIC)
        image = torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1).float() / 127.5 - 1.0  # [3, S, S]
        aus = torch.full((NUM_AUS,), math.nan) if record.aus is None else torch.tensor(record.aus, dtype=torch.float32)
        return {
            "image": image,
            "identity": torch.tensor(record.identity, dtype=torch.long),
            "emotion": torch.tensor(record.emotion, dtype=torch.long),
            "intensity": torch.tensor(math.nan),
            "aus": aus,
            "yaw": torch.tensor(float(record.yaw)),
            "path": str(record.path),
        }

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(split={self.split!r}, images={len(self)}, "
                f"identities={len(self.identities)}, expressions={self.expressions})")


def _dataset_root(root, name: str) -> Path:
    root = Path(root).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"{name} root folder does not exist: {root}")
    if not root.is_dir():
        raise NotADirectoryError(f"{name} root must be a folder, got a file: {root}")
    return root


def _image_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _warn_skipped(skipped: list[Path], name: str, example: str, stacklevel: int = 3) -> None:
    if skipped:
        warnings.warn(f"skipped {len(skipped)} image file(s) not named like {name} files "
                      f"(e.g. {skipped[0].name}; expected names like {example})", stacklevel=stacklevel)


def _named_images(root: Path, pattern: re.Pattern, name: str, example: str):
    """``(path, match)`` for the image files under ``root`` whose stem matches ``pattern``.

    The other image files are skipped with one warning at the end (naming ``example``).
    """
    skipped = []
    for path in _image_files(root):
        match = pattern.match(path.stem)
        if match is None:
            skipped.append(path)
        else:
            yield path, match
    _warn_skipped(skipped, name, example, stacklevel=4)  # the loader's caller, past this generator


def _select(value, allowed, what: str) -> set | None:
    """A user's filter (one value or several) checked against the allowed values."""
    if value is None:
        return None
    values = {value} if isinstance(value, (str, int)) else set(value)
    unknown = values - set(allowed)
    if unknown:
        raise ValueError(f"unknown {what} {sorted(unknown, key=str)}; valid values are {list(allowed)}")
    return values


# ---------------------------------------------------------------------------------------------
# RaFD (Langner et al. 2010): 67 adults and children, 8 emotions, 5 camera angles, 3 gaze directions.

#: RaFD's camera angles (degrees around the sitter; 090 is frontal).
RAFD_ANGLES = (0, 45, 90, 135, 180)
RAFD_GAZES = ("frontal", "left", "right")
_RAFD_NAME = re.compile(
    r"^Rafd(?P<angle>\d{3})_(?P<subject>\d+)_(?P<ethnicity>[A-Za-z]+)_(?P<gender>male|female)_"
    r"(?P<emotion>[a-z]+)_(?P<gaze>frontal|left|right)$", re.IGNORECASE)


class RaFD(RealFaces):
    """The Radboud Faces Database, from files named ``Rafd090_01_Caucasian_female_angry_frontal.jpg``.

    Name fields: camera angle (000, 045, 090, 135, 180; 090 frontal), subject number, ethnicity,
    gender, emotion (RaFD's eight, which are facelib's first eight EXPRESSIONS), gaze (frontal,
    left, right). ``yaw`` is the camera angle minus 90 degrees, in RaFD's camera numbering.
    Filters: ``angles``, ``gazes``, ``emotions`` (None keeps all). Files anywhere under ``root``.
    """

    dataset_name = "RaFD"

    def __init__(self, root, split: str = "train", size: int = 64, *, angles=None, gazes=None, emotions=None,
                 align: bool = False, seed: int = 0, fractions=(0.8, 0.1, 0.1)):
        root = _dataset_root(root, "RaFD")
        angles, gazes = _select(angles, RAFD_ANGLES, "RaFD angle"), _select(gazes, RAFD_GAZES, "RaFD gaze")
        records = []
        for path, match in _named_images(root, _RAFD_NAME, "RaFD", "Rafd090_01_Caucasian_female_angry_frontal.jpg"):
            fields = match.groupdict()
            angle, gaze = int(fields["angle"]), fields["gaze"].lower()
            if angle not in RAFD_ANGLES:
                raise ValueError(f"{path.name}: camera angle {angle:03d} is not one of RaFD's {list(RAFD_ANGLES)}")
            if (angles is not None and angle not in angles) or (gazes is not None and gaze not in gazes):
                continue
            try:
                emotion = expression_index(fields["emotion"].lower())
            except ValueError as err:
                raise ValueError(f"{path.name}: {err}") from None
            meta = {"angle": angle, "gaze": gaze, "gender": fields["gender"].lower(), "ethnicity": fields["ethnicity"]}
            records.append(Record(path, int(fields["subject"]), emotion, yaw=float(angle - 90), meta=meta))
        if not records:
            raise ValueError(f"no RaFD images found under {root} (with the filters given); expected files "
                             f"named like Rafd090_01_Caucasian_female_angry_frontal.jpg")
        super().__init__(records, split=split, size=size, align=align, seed=seed, fractions=fractions,
                         emotions=emotions)


# ---------------------------------------------------------------------------------------------
# Oulu-CASIA NIR&VIS (Zhao et al. 2011): 80 subjects, 6 expressions, each a sequence from a neutral
# onset to the peak, filmed with visible light (VL) and near-infrared (NI) under 3 illuminations.

OULU_EXPRESSIONS = {
    "anger": "angry", "disgust": "disgusted", "fear": "fearful",
    "happiness": "happy", "sadness": "sad", "surprise": "surprised",
}
OULU_MODALITIES = ("VL", "NI")
OULU_ILLUMINATIONS = ("Strong", "Weak", "Dark")
_OULU_SUBJECT = re.compile(r"^P(\d{3})$")


class OuluCASIA(RealFaces):
    """Oulu-CASIA NIR&VIS sequences, from the tree ``VL/Strong/P001/Happiness/000.jpeg``.

    Each sequence runs from a neutral onset to the peak expression. ExprGAN trains on the last
    three frames, labelled with the sequence's expression: ``frames=3`` (the default) does the
    same; ``neutral_frames=k`` also adds the first ``k`` frames labelled neutral. Defaults:
    visible light, strong illumination (``modality="VL"``, ``illumination="Strong"``; None keeps
    all). ``.sequences`` lists every selected sequence: ``(identity, emotion, [paths])``.
    The tree may sit anywhere under ``root`` (e.g. ``root/OriginalImg/VL/...``).
    """

    dataset_name = "Oulu-CASIA"

    def __init__(self, root, split: str = "train", size: int = 64, *, modality="VL", illumination="Strong",
                 frames: int = 3, neutral_frames: int = 0, emotions=None, align: bool = False, seed: int = 0,
                 fractions=(0.8, 0.1, 0.1)):
        root = _dataset_root(root, "Oulu-CASIA")
        modalities = _select(modality, OULU_MODALITIES, "Oulu-CASIA modality")
        illuminations = _select(illumination, OULU_ILLUMINATIONS, "Oulu-CASIA illumination")
        if frames < 1 or neutral_frames < 0:
            raise ValueError(f"frames must be >= 1 and neutral_frames >= 0, got {frames} and {neutral_frames}")
        groups: dict[tuple, list[Path]] = {}
        skipped = []
        for path in _image_files(root):
            parts = path.relative_to(root).parts
            subject = _OULU_SUBJECT.match(parts[-3]) if len(parts) >= 5 else None
            if subject is None or parts[-5] not in OULU_MODALITIES or parts[-4] not in OULU_ILLUMINATIONS \
                    or not re.fullmatch(r"[0-9]+", path.stem):
                skipped.append(path)
                continue
            expression = parts[-2].lower()
            if expression not in OULU_EXPRESSIONS:
                raise ValueError(f"{path}: unknown Oulu-CASIA expression folder {parts[-2]!r}; valid folders "
                                 f"are {[name.capitalize() for name in OULU_EXPRESSIONS]}")
            if (modalities is None or parts[-5] in modalities) and (illuminations is None or parts[-4] in illuminations):
                key = (parts[-5], parts[-4], int(subject.group(1)), OULU_EXPRESSIONS[expression])
                groups.setdefault(key, []).append(path)
        _warn_skipped(skipped, "Oulu-CASIA", "VL/Strong/P001/Happiness/000.jpeg")
        self.sequences = []
        records = []
        neutral = expression_index("neutral")
        for (modality_name, light, identity, expression), paths in sorted(groups.items()):
            paths = sorted(paths, key=lambda p: int(p.stem))
            emotion = expression_index(expression)
            self.sequences.append((identity, emotion, paths))
            meta = {"modality": modality_name, "illumination": light}
            # The first frames are the neutral onset, the last ones the peak; a frame is never both.
            onset = paths[:max(0, min(neutral_frames, len(paths) - frames))]
            records += [Record(p, identity, neutral, meta={**meta, "frame": int(p.stem)}) for p in onset]
            records += [Record(p, identity, emotion, meta={**meta, "frame": int(p.stem)}) for p in paths[-frames:]]
        if not records:
            raise ValueError(f"no Oulu-CASIA sequences found under {root} (with the filters given); expected "
                             f"a tree like VL/Strong/P001/Happiness/000.jpeg")
        super().__init__(records, split=split, size=size, align=align, seed=seed, fractions=fractions,
                         emotions=emotions)
        keep = set(self.identities)
        self.sequences = [s for s in self.sequences if s[0] in keep]


# ---------------------------------------------------------------------------------------------
# CMU Multi-PIE (Gross et al. 2010): 337 subjects, 4 sessions, 15 cameras, 20 flash illuminations.

#: Expression of each (session, recording), from the Multi-PIE documentation (Gross et al. 2010, Table 1).
MULTIPIE_EXPRESSIONS = {
    (1, 1): "neutral", (1, 2): "happy",                          # session 1: neutral, smile
    (2, 1): "neutral", (2, 2): "surprised", (2, 3): "squint",    # session 2: neutral, surprise, squint
    (3, 1): "neutral", (3, 2): "happy", (3, 3): "disgusted",     # session 3: neutral, smile, disgust
    (4, 1): "neutral", (4, 2): "neutral", (4, 3): "scream",      # session 4: neutral, neutral, scream
}
#: Yaw of the 13 cameras at head height (degrees; 05_1 is frontal). The two cameras mounted
#: above the head, 08_1 and 19_1, look down at the subject and have no single yaw: ``nan``.
MULTIPIE_CAMERA_YAW = {
    "11_0": -90.0, "12_0": -75.0, "09_0": -60.0, "08_0": -45.0, "13_0": -30.0, "14_0": -15.0,
    "05_1": 0.0, "05_0": 15.0, "04_1": 30.0, "19_0": 45.0, "20_0": 60.0, "01_0": 75.0, "24_0": 90.0,
    "08_1": math.nan, "19_1": math.nan,
}
_MULTIPIE_NAME = re.compile(r"^(?P<subject>\d{3})_(?P<session>\d{2})_(?P<recording>\d{2})_"
                            r"(?P<camera>\d{3})_(?P<illumination>\d{2})$")


class MultiPIE(RealFaces):
    """CMU Multi-PIE multiview images, from files named ``001_01_01_051_00.png``.

    Name fields: subject, session, recording, camera (``051`` is camera ``05_1``, frontal),
    illumination (flash 00-19). The tree is ``session01/multiview/001/01/05_1/...`` but only
    the file name is read. Expression comes from (session, recording), see
    :data:`MULTIPIE_EXPRESSIONS`: Multi-PIE's smile, surprise and disgust are facelib's happy,
    surprised and disgusted; squint and scream keep their names. FVAE's selection (frontal,
    one fixed light) is ``MultiPIE(root, cameras="05_1", illuminations=7)``.
    """

    dataset_name = "Multi-PIE"

    def __init__(self, root, split: str = "train", size: int = 64, *, cameras=None, illuminations=None,
                 sessions=None, emotions=None, align: bool = False, seed: int = 0, fractions=(0.8, 0.1, 0.1)):
        root = _dataset_root(root, "Multi-PIE")
        cameras = _select(cameras, tuple(MULTIPIE_CAMERA_YAW), "Multi-PIE camera")
        illuminations = _select(illuminations, tuple(range(20)), "Multi-PIE illumination")
        sessions = _select(sessions, (1, 2, 3, 4), "Multi-PIE session")
        records = []
        for path, match in _named_images(root, _MULTIPIE_NAME, "Multi-PIE", "001_01_01_051_00.png"):
            fields = {k: int(v) for k, v in match.groupdict().items() if k != "camera"}
            camera = f"{match['camera'][:2]}_{match['camera'][2]}"
            if camera not in MULTIPIE_CAMERA_YAW:
                raise ValueError(f"{path.name}: unknown Multi-PIE camera {camera}; valid cameras are "
                                 f"{list(MULTIPIE_CAMERA_YAW)}")
            key = (fields["session"], fields["recording"])
            if key not in MULTIPIE_EXPRESSIONS:
                raise ValueError(f"{path.name}: session {key[0]} has no recording {key[1]}; valid (session, "
                                 f"recording) pairs are {sorted(MULTIPIE_EXPRESSIONS)}")
            if (cameras is not None and camera not in cameras) \
                    or (illuminations is not None and fields["illumination"] not in illuminations) \
                    or (sessions is not None and fields["session"] not in sessions):
                continue
            meta = {"session": key[0], "recording": key[1], "camera": camera, "illumination": fields["illumination"]}
            records.append(Record(path, fields["subject"], expression_index(MULTIPIE_EXPRESSIONS[key]),
                                  yaw=MULTIPIE_CAMERA_YAW[camera], meta=meta))
        if not records:
            raise ValueError(f"no Multi-PIE images found under {root} (with the filters given); expected files "
                             f"named like session01/multiview/001/01/05_1/001_01_01_051_00.png")
        super().__init__(records, split=split, size=size, align=align, seed=seed, fractions=fractions,
                         emotions=emotions)


# ---------------------------------------------------------------------------------------------
# Any dataset, described by a CSV file.

#: AU column names of a CSV manifest, in facelib.AU_CODES order: au01, au02, au04, ..., au45.
AU_COLUMNS = tuple(f"au{code:02d}" for code in AU_CODES)


class CSVManifest(RealFaces):
    """Images listed in a CSV file with columns ``path, identity, emotion`` (+ optional ``yaw``, AUs).

    ``path`` is relative to ``root`` (default: the CSV's folder) or absolute. ``identity`` is an
    integer or a name (names are numbered in sorted order; ``.identity_names`` maps back).
    ``emotion`` is a name from :data:`facelib.EXPRESSIONS` (case-insensitive). Optional AU
    columns ``au01 ... au45`` (:data:`AU_COLUMNS`) hold intensities in ``[0, 5]``; missing
    columns or empty cells are ``nan``.
    """

    dataset_name = "CSV manifest"

    def __init__(self, csv_path, split: str = "train", size: int = 64, *, root=None, emotions=None,
                 align: bool = False, seed: int = 0, fractions=(0.8, 0.1, 0.1)):
        csv_path = Path(csv_path).expanduser()
        if not csv_path.is_file():
            raise FileNotFoundError(f"CSV manifest not found: {csv_path}")
        base = Path(root).expanduser() if root is not None else csv_path.parent
        columns, rows = _read_csv(csv_path)
        missing = [c for c in ("path", "identity", "emotion") if c not in columns]
        if missing:
            raise ValueError(f"{csv_path.name} lacks the column(s) {missing}; required columns are "
                             f"path, identity, emotion; optional: yaw, {', '.join(AU_COLUMNS)}")
        if not rows:
            raise ValueError(f"{csv_path.name} lists no images")
        raw_ids = [_required_cell(row, columns["identity"], f"{csv_path.name} line {line}")
                   for line, row in rows]
        if all(re.fullmatch(r"-?[0-9]+", i) for i in raw_ids):
            ids = [int(i) for i in raw_ids]
            self.identity_names = None
        else:
            self.identity_names = sorted(set(raw_ids))
            number = {name: n for n, name in enumerate(self.identity_names)}
            ids = [number[i] for i in raw_ids]
        au_columns = [columns.get(name) for name in AU_COLUMNS]
        records = []
        for (line, row), identity in zip(rows, ids):
            where = f"{csv_path.name} line {line}"
            path = Path(_required_cell(row, columns["path"], where))
            path = path if path.is_absolute() else base / path
            try:
                is_file = path.is_file()
            except OSError as err:  # e.g. a name longer than the file system allows
                raise ValueError(f"{where}: cannot use the image path {str(path)[:200]!r}: {err.strerror}") from None
            if not is_file:
                raise FileNotFoundError(f"{where}: image not found: {path}")
            try:
                emotion = expression_index(_required_cell(row, columns["emotion"], where).lower())
            except ValueError as err:
                raise ValueError(f"{where}: {err}") from None
            aus = None
            if any(au_columns):
                aus = tuple(_au_value(row.get(col) if col else "", name, where)
                            for col, name in zip(au_columns, AU_COLUMNS))
            yaw = _number(row.get(columns["yaw"]), "yaw", where) if "yaw" in columns else math.nan
            records.append(Record(path, identity, emotion, yaw=yaw, aus=aus))
        super().__init__(records, split=split, size=size, align=align, seed=seed, fractions=fractions,
                         emotions=emotions)


def _read_csv(csv_path: Path) -> tuple[dict[str, str], list[tuple[int, dict]]]:
    """The header (lower-cased name -> name as written) and the ``(line number, row)`` pairs of a CSV file.

    The file must be UTF-8 (a byte-order mark is fine); anything the csv module cannot parse, or
    another encoding, raises ``ValueError`` naming the file and the line.
    """
    rows = []
    with open(csv_path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        try:
            columns = {name.strip().lower(): name for name in (reader.fieldnames or [])}
            for row in reader:
                rows.append((reader.line_num, row))
        except UnicodeDecodeError as err:
            raise ValueError(f"{csv_path.name} is not UTF-8 text (byte {err.object[err.start]:#04x} at offset "
                             f"{err.start}); save the manifest as UTF-8") from None
        except csv.Error as err:
            raise ValueError(f"{csv_path.name}: the row after line {reader.line_num} is not readable CSV ({err})") from None
    return columns, rows


def _required_cell(row: dict, column: str, where: str) -> str:
    """The stripped text of a required cell; ``ValueError`` when the row ends early or the cell is empty."""
    text = (row.get(column) or "").strip()
    if not text:
        raise ValueError(f"{where}: the {column!r} cell is empty or missing; every row needs path, identity "
                         "and emotion")
    return text


def _number(text: str | None, column: str, where: str) -> float:
    """A numeric cell: empty (or missing at the end of a short row) or ``nan`` means unknown."""
    text = (text or "").strip()
    if not text:
        return math.nan
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{where}: column {column} must be a number or empty, got {text[:50]!r}") from None
    if math.isinf(value):
        raise ValueError(f"{where}: column {column} must be a finite number or empty, got {text[:50]!r}")
    return value


def _au_value(text: str | None, column: str, where: str) -> float:
    value = _number(text, column, where)
    if not math.isnan(value) and not 0.0 <= value <= AU_MAX:
        raise ValueError(f"{where}: {column} = {value} is out of range; AU intensities lie in [0, {AU_MAX:g}]")
    return value
