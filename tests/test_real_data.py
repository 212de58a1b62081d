"""Real-dataset loaders on small fixture trees that use each dataset's real naming."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

import facelib
from facelib.data import CSVManifest, MultiPIE, OuluCASIA, RaFD
from facelib.data.real import AU_COLUMNS, MULTIPIE_EXPRESSIONS, split_identities


def _write_image(path, value: int, size=(24, 20)):
    """A tiny picture whose grey level encodes ``value`` (to check which file an item came from)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), value, dtype=np.uint8)).save(path)


@pytest.fixture
def rafd_root(tmp_path):
    root = tmp_path / "RaFD"
    for subject in range(1, 11):
        gender = "female" if subject % 2 else "male"
        for emotion in ("angry", "happy", "contemptuous"):
            for angle in (90, 45):
                _write_image(root / f"Rafd{angle:03d}_{subject:02d}_Caucasian_{gender}_{emotion}_frontal.jpg", subject)
    (root / "README.txt").write_text("not an image")
    _write_image(root / "thumbnail.png", 0)
    return root


def test_rafd_parses_names_labels_and_yaw(rafd_root):
    with pytest.warns(UserWarning, match="skipped 1 image"):
        data = RaFD(rafd_root, split="all", size=32)
    assert len(data) == 10 * 3 * 2
    assert data.identities == list(range(1, 11))
    assert data.expressions == ["angry", "contemptuous", "happy"]
    record = next(r for r in data.records if r.path.name == "Rafd045_03_Caucasian_female_happy_frontal.jpg")
    assert (record.identity, facelib.EXPRESSIONS[record.emotion], record.yaw) == (3, "happy", -45.0)
    assert record.meta == {"angle": 45, "gaze": "frontal", "gender": "female", "ethnicity": "Caucasian"}
    item = data[data.records.index(record)]
    assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.float32
    # The fixture image for subject 3 is uniformly grey level 3 -> 3 / 127.5 - 1 (JPEG may shift it a little).
    assert abs(item["image"].mean().item() - (3 / 127.5 - 1)) < 0.05
    assert item["identity"].item() == 3 and facelib.EXPRESSIONS[item["emotion"]] == "happy"
    assert torch.isnan(item["aus"]).all() and item["aus"].shape == (17,)
    assert item["yaw"].item() == -45.0


def test_rafd_filters_and_unknown_emotion(rafd_root):
    with pytest.warns(UserWarning):
        frontal_happy = RaFD(rafd_root, split="all", angles=90, emotions=["happy"])
    assert len(frontal_happy) == 10 and {r.yaw for r in frontal_happy.records} == {0.0}
    with pytest.raises(ValueError, match="valid expressions are"), pytest.warns(UserWarning):
        RaFD(rafd_root, split="all", emotions=["joyful"])
    with pytest.raises(ValueError, match="valid values are"):
        RaFD(rafd_root, split="all", angles=30)
    _write_image(rafd_root / "Rafd090_11_Caucasian_male_bored_frontal.jpg", 11)
    with pytest.raises(ValueError, match="bored.*valid expressions"):
        RaFD(rafd_root, split="all")


def test_splits_are_by_identity_disjoint_and_fixed(rafd_root):
    with pytest.warns(UserWarning):
        splits = {name: RaFD(rafd_root, split=name) for name in ("train", "val", "test")}
    ids = {name: set(d.identities) for name, d in splits.items()}
    assert ids["train"] | ids["val"] | ids["test"] == set(range(1, 11))
    assert not (ids["train"] & ids["val"] or ids["train"] & ids["test"] or ids["val"] & ids["test"])
    assert (len(ids["train"]), len(ids["val"]), len(ids["test"])) == (8, 1, 1)
    for name, data in splits.items():
        assert {r.identity for r in data.records} == ids[name]
    # Same seed, same split; another seed shuffles differently; file order does not matter.
    assert split_identities(range(1, 11), "test", seed=0) == sorted(ids["test"])
    assert split_identities(list(range(10, 0, -1)), "test", seed=0) == sorted(ids["test"])
    assert any(split_identities(range(1, 11), "train", seed=s) != sorted(ids["train"]) for s in range(1, 5))
    with pytest.raises(ValueError, match="valid splits"):
        split_identities(range(5), "training")
    with pytest.raises(ValueError, match="at least 3 identities"):
        split_identities([1, 2], "train")


def test_wrong_root_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        RaFD(tmp_path / "nowhere")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(NotADirectoryError):
        MultiPIE(tmp_path / "file.txt")
    empty = tmp_path / "empty"
    empty.mkdir()
    for loader, hint in ((RaFD, "Rafd090_01"), (OuluCASIA, "VL/Strong/P001"), (MultiPIE, "001_01_01_051_00")):
        with pytest.raises(ValueError, match=hint):
            loader(empty)


def test_oulu_sequences_last_three_frames(tmp_path):
    root = tmp_path / "Oulu_CASIA_NIR_VIS" / "OriginalImg"
    for subject in range(1, 6):
        for folder in ("Happiness", "Anger", "Surprise"):
            for frame in range(9):
                for modality, light in (("VL", "Strong"), ("NI", "Dark")):
                    _write_image(root / modality / light / f"P{subject:03d}" / folder / f"{frame:03d}.jpeg", 10 * frame)
    data = OuluCASIA(tmp_path, split="all")
    assert len(data) == 5 * 3 * 3 and len(data.sequences) == 15
    assert {r.meta["frame"] for r in data.records} == {6, 7, 8}
    assert {r.meta["modality"] for r in data.records} == {"VL"}
    assert data.expressions == ["angry", "happy", "surprised"]
    identity, emotion, paths = data.sequences[0]
    assert len(paths) == 9 and [p.stem for p in paths] == [f"{i:03d}" for i in range(9)]
    with_onset = OuluCASIA(tmp_path, split="all", frames=2, neutral_frames=1, illumination=None, modality=None)
    neutral = facelib.EXPRESSIONS.index("neutral")
    assert sum(r.emotion == neutral for r in with_onset.records) == 5 * 3 * 2
    assert {r.meta["frame"] for r in with_onset.records if r.emotion == neutral} == {0}
    item = data[0]
    assert math.isnan(item["yaw"].item()) and item["image"].shape == (3, 64, 64)
    bad = root / "VL" / "Strong" / "P001" / "Contempt" / "000.jpeg"
    _write_image(bad, 0)
    with pytest.raises(ValueError, match="Contempt.*Happiness"):
        OuluCASIA(tmp_path, split="all")


def test_multipie_expression_table_and_cameras(tmp_path):
    root = tmp_path / "Multi-Pie" / "data"
    for subject in (1, 2, 3, 4):
        for (session, recording) in MULTIPIE_EXPRESSIONS:
            for camera in ("05_1", "19_0", "08_1"):
                for light in (0, 7):
                    name = f"{subject:03d}_{session:02d}_{recording:02d}_{camera.replace('_', '')}_{light:02d}.png"
                    _write_image(root / f"session{session:02d}" / "multiview" / f"{subject:03d}"
                                 / f"{recording:02d}" / camera / name, subject)
    data = MultiPIE(tmp_path, split="all")
    assert len(data) == 4 * 11 * 3 * 2
    by_name = {r.path.name: r for r in data.records}
    expected = {"02_02": "surprised", "02_03": "squint", "03_03": "disgusted", "04_03": "scream",
                "01_02": "happy", "03_02": "happy", "04_02": "neutral", "01_01": "neutral"}
    for session_recording, expression in expected.items():
        record = by_name[f"001_{session_recording}_051_00.png"]
        assert facelib.EXPRESSIONS[record.emotion] == expression, session_recording
    assert by_name["002_01_01_190_07.png"].yaw == 45.0 and by_name["002_01_01_051_07.png"].yaw == 0.0
    assert math.isnan(by_name["002_01_01_081_07.png"].yaw)
    assert by_name["003_04_03_051_07.png"].meta == {"session": 4, "recording": 3, "camera": "05_1", "illumination": 7}
    fvae = MultiPIE(tmp_path, split="all", cameras="05_1", illuminations=7)
    assert len(fvae) == 4 * 11 and set(fvae.expressions) == {"neutral", "happy", "surprised", "squint",
                                                            "disgusted", "scream"}
    with pytest.raises(ValueError, match="valid values"):
        MultiPIE(tmp_path, cameras="05_2")
    _write_image(root / "001_02_04_051_00.png", 0)  # session 2 has only three recordings
    with pytest.raises(ValueError, match="no recording 4"):
        MultiPIE(tmp_path, split="all")


def test_csv_manifest_names_aus_and_errors(tmp_path):
    for i in range(6):
        _write_image(tmp_path / "img" / f"{i}.png", 40 * i)
    header = "path,identity,emotion,yaw," + ",".join(AU_COLUMNS[:3]) + "\n"
    lines = [f"img/{i}.png,person_{i % 3},{['Happy', 'sad'][i % 2]},{5 * i},1.5,,{i % 6}\n" for i in range(6)]
    manifest = tmp_path / "faces.csv"
    manifest.write_text(header + "".join(lines))
    data = CSVManifest(manifest, split="all", size=16)
    assert data.identity_names == ["person_0", "person_1", "person_2"]
    item = data[4]
    assert item["identity"].item() == 1 and facelib.EXPRESSIONS[item["emotion"]] == "happy"
    assert item["yaw"].item() == 20.0
    assert item["aus"][0].item() == 1.5 and math.isnan(item["aus"][1].item()) and item["aus"][2].item() == 4.0
    assert torch.isnan(item["aus"][3:]).all()
    assert abs(item["image"].mean().item() - (160 / 127.5 - 1)) < 1e-6
    batch = next(iter(torch.utils.data.DataLoader(data, batch_size=3)))
    assert batch["image"].shape == (3, 3, 16, 16) and batch["aus"].shape == (3, 17)

    bad_emotion = tmp_path / "bad_emotion.csv"
    bad_emotion.write_text("path,identity,emotion\nimg/0.png,1,joy\n")
    with pytest.raises(ValueError, match="line 2.*joy.*valid expressions"):
        CSVManifest(bad_emotion)
    bad_au = tmp_path / "bad_au.csv"
    bad_au.write_text("path,identity,emotion,au12\nimg/0.png,1,happy,7\n")
    with pytest.raises(ValueError, match=r"au12 = 7.0 is out of range.*\[0, 5\]"):
        CSVManifest(bad_au)
    no_column = tmp_path / "no_column.csv"
    no_column.write_text("file,identity,emotion\nimg/0.png,1,happy\n")
    with pytest.raises(ValueError, match="required columns are path, identity, emotion"):
        CSVManifest(no_column)
    missing_file = tmp_path / "missing.csv"
    missing_file.write_text("path,identity,emotion\nimg/99.png,1,happy\n")
    with pytest.raises(FileNotFoundError, match="99.png"):
        CSVManifest(missing_file)


# ----------------------------------------------------------------------------- known faults (issue 10)
@pytest.fixture
def three_images(tmp_path):
    for i in range(3):
        _write_image(tmp_path / "img" / f"{i}.png", 40 * i)
    return tmp_path


@pytest.mark.parametrize("row, column", [("img/0.png,1", "emotion"), ("img/0.png", "identity"),
                                         (",1,happy", "path"), ("img/0.png, ,happy", "identity")])
def test_csv_row_with_a_missing_or_empty_cell_names_line_and_column(three_images, row, column):
    # a short row used to raise AttributeError ('NoneType' object has no attribute 'strip')
    manifest = three_images / "short.csv"
    manifest.write_text(f"path,identity,emotion,yaw\nimg/1.png,1,happy,0\n{row}\n")
    with pytest.raises(ValueError, match=f"short.csv line 3: the '{column}' cell is empty or missing"):
        CSVManifest(manifest, split="all")


def test_csv_short_row_leaves_optional_cells_unknown(three_images):
    manifest = three_images / "short_optional.csv"
    manifest.write_text("path,identity,emotion,yaw,au01\nimg/0.png,1,happy\nimg/1.png,2,sad,10,2\n")
    data = CSVManifest(manifest, split="all", size=16)
    assert math.isnan(data[0]["yaw"].item()) and torch.isnan(data[0]["aus"]).all()
    assert data[1]["yaw"].item() == 10.0 and data[1]["aus"][0].item() == 2.0


def test_csv_in_another_encoding_is_a_value_error_naming_the_file(three_images):
    # used to raise a bare UnicodeDecodeError that did not say which file
    manifest = three_images / "latin1.csv"
    manifest.write_bytes("path,identity,emotion\nimg/0.png,Zoë,happy\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1.csv is not UTF-8 text \(byte 0xeb .*save the manifest as UTF-8"):
        CSVManifest(manifest, split="all")


def test_csv_unparseable_row_infinite_yaw_and_huge_identity(three_images):
    unparseable = three_images / "long.csv"  # a cell over the csv module's field size limit (131072)
    unparseable.write_text("path,identity,emotion\nimg/0.png,1,happy\nimg/1.png,2," + "x" * 200_000 + "\n")
    with pytest.raises(ValueError, match="long.csv: the row after line 2 is not readable CSV .*field larger than field limit"):
        CSVManifest(unparseable, split="all")
    infinite = three_images / "inf.csv"
    infinite.write_text("path,identity,emotion,yaw\nimg/0.png,1,happy,inf\n")
    with pytest.raises(ValueError, match="inf.csv line 2: column yaw must be a finite number"):
        CSVManifest(infinite, split="all")
    huge = three_images / "huge.csv"
    huge.write_text(f"path,identity,emotion\nimg/0.png,{2**70},happy\n")
    with pytest.raises(ValueError, match="does not fit a 64-bit integer"):
        CSVManifest(huge, split="all")


def test_oulu_frame_names_with_non_ascii_digits_are_skipped(tmp_path):
    # '²'.isdigit() is True but int('²') fails: such names used to crash the loader
    root = tmp_path / "VL" / "Strong" / "P001" / "Happiness"
    for frame in range(4):
        _write_image(root / f"{frame:03d}.jpeg", 10 * frame)
    _write_image(root / "00\u00b2.jpeg", 0)
    with pytest.warns(UserWarning, match="skipped 1 image"):
        data = OuluCASIA(tmp_path, split="all")
    assert len(data) == 3
