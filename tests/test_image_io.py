"""load_image on bad and unusual input: every case is a clear error or documented handling."""
from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from facelib.data.io import MAX_PIXELS, MIN_SIDE, load_image, to_tensor, to_uint8


def test_rgb_file_round_trip(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (40, 30, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    loaded = load_image(tmp_path / "a.png")
    assert loaded.dtype == np.uint8 and loaded.shape == (40, 30, 3)
    np.testing.assert_array_equal(loaded, pixels)
    np.testing.assert_array_equal(to_uint8(to_tensor(pixels)), pixels)
    assert to_tensor(pixels).shape == (1, 3, 40, 30) and to_tensor(pixels).min() >= -1


def test_missing_folder_corrupt_and_non_image(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_image(tmp_path / "missing.jpg")
    with pytest.raises(IsADirectoryError, match="folder"):
        load_image(tmp_path)
    (tmp_path / "notes.txt").write_text("these are not pixels\n" * 10)
    with pytest.raises(ValueError, match="not an image.*PNG, JPEG"):
        load_image(tmp_path / "notes.txt")
    Image.fromarray(np.zeros((64, 64, 3), np.uint8) + 90).save(tmp_path / "whole.jpg")
    data = (tmp_path / "whole.jpg").read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="could not be decoded"):
        load_image(tmp_path / "truncated.jpg")
    (tmp_path / "garbage.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    with pytest.raises(ValueError):
        load_image(tmp_path / "garbage.png")
    with pytest.raises(TypeError, match="accepted"):
        load_image(12345)


def test_grayscale_becomes_rgb(tmp_path):
    gray = np.arange(32 * 32, dtype=np.uint8).reshape(32, 32)
    Image.fromarray(gray, mode="L").save(tmp_path / "g.png")
    rgb = load_image(tmp_path / "g.png")
    assert rgb.shape == (32, 32, 3)
    for channel in range(3):
        np.testing.assert_array_equal(rgb[..., channel], gray)
    np.testing.assert_array_equal(load_image(gray[..., None]), rgb)


def test_rgba_is_composited_on_white(tmp_path):
    rgba = np.zeros((20, 20, 4), np.uint8)
    rgba[..., 0] = 200  # red
    rgba[:10, :, 3] = 255  # top half opaque, bottom half transparent
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    rgb = load_image(tmp_path / "a.png")
    assert rgb.shape == (20, 20, 3)
    assert tuple(rgb[0, 0]) == (200, 0, 0) and tuple(rgb[-1, -1]) == (255, 255, 255)
    np.testing.assert_array_equal(load_image(rgba), rgb)


def test_sixteen_bit_is_scaled_to_eight(tmp_path):
    values = np.linspace(0, 65535, 24 * 24).astype(np.uint16).reshape(24, 24)
    Image.fromarray(values).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    rgb = load_image(tmp_path / "deep.png")
    assert rgb.dtype == np.uint8 and rgb[0, 0, 0] == 0 and rgb[-1, -1, 0] == 255
    np.testing.assert_array_equal(rgb[..., 0], np.round(values / 257.0).astype(np.uint8))


def test_float_arrays_must_be_in_unit_range():
    assert load_image(np.ones((20, 20, 3)) * 0.5)[0, 0, 0] == 128
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        load_image(np.ones((20, 20, 3)) * 3.0)
    with pytest.raises(ValueError, match="shape"):
        load_image(np.zeros((20, 20, 5), np.uint8))
    with pytest.raises(ValueError, match=r"\[3, H, W\]"):
        to_uint8(torch.zeros(2, 20, 20))


def test_exif_orientation_is_applied(tmp_path):
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20] = 255  # white left half of a landscape image
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.fromarray(pixels).save(tmp_path / "phone.jpg", exif=exif, quality=95)
    upright = load_image(tmp_path / "phone.jpg")
    assert upright.shape == (40, 20, 3)  # portrait after applying the tag
    assert upright[:18].mean() > 200 and upright[22:].mean() < 50  # the white half is now on top


def test_tiny_image_is_refused(tmp_path):
    Image.fromarray(np.zeros((MIN_SIDE - 1, 100, 3), np.uint8)).save(tmp_path / "tiny.png")
    with pytest.raises(ValueError, match=f"too small.*at least {MIN_SIDE}"):
        load_image(tmp_path / "tiny.png")
    assert load_image(np.zeros((MIN_SIDE, MIN_SIDE), np.uint8)).shape == (MIN_SIDE, MIN_SIDE, 3)


def _png_claiming(width: int, height: int) -> bytes:
    """A 1x1 black PNG whose IHDR claims ``width`` x ``height``: a bomb's header, a few bytes long."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00\x00\x00\x00")) \
        + chunk(b"IEND", b"")


def test_gigantic_image_is_refused_before_decoding(tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_claiming(100_000, 100_000))  # 10 gigapixels, 30 GB if decoded
    with pytest.raises(ValueError, match="10000000000 pixels.*decompression-bomb guard"):
        load_image(bomb)
    bomb.write_bytes(_png_claiming(10_000, 10_000))  # under Pillow's own limit, over facelib's
    with pytest.raises(ValueError, match="10000x10000 = 100,000,000 pixels.*decompression-bomb guard"):
        load_image(bomb)
    # The user's own limit applies too, to a genuine (small) image.
    Image.fromarray(np.zeros((100, 100, 3), np.uint8)).save(tmp_path / "ok.png")
    with pytest.raises(ValueError, match="max_pixels=5,000"):
        load_image(tmp_path / "ok.png", max_pixels=5_000)
    assert load_image(tmp_path / "ok.png").shape == (100, 100, 3) and MAX_PIXELS > 10_000


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_tensors_and_arrays_are_refused(bad):
    # an all-NaN tensor used to come out as a black image
    for image in (torch.full((3, 20, 20), bad), torch.full((1, 3, 20, 20), bad)):
        with pytest.raises(ValueError, match="1200 NaN/inf values; only finite values in \\[-1, 1\\]"):
            load_image(image)
    one_bad = torch.zeros(3, 20, 20)
    one_bad[1, 2, 3] = bad
    with pytest.raises(ValueError, match="1 NaN/inf values"):
        to_uint8(one_bad)
    array = np.full((20, 20, 3), 0.5, np.float32)
    array[4, 5, 0] = bad
    with pytest.raises(ValueError, match="must be finite and lie in \\[0, 1\\]; got 1 NaN/inf values"):
        load_image(array)


def test_pillow_value_error_on_a_broken_tiff_names_the_file(tmp_path):
    # found by tests/test_fuzz.py: Pillow raised a bare ValueError("invalid extents") for this 1x1 TIFF
    broken = bytes.fromhex(
        "49492a00080000000a000001040001000000010000000101040001000000010000000201030001000000200000000301030001"
        "000000010000000601030001000000010000001101040001000000860000001601050001000000010000001701040001000000"
        "040000001c0103000100000001000000530103000100000002000000000000000fa30000")
    (tmp_path / "broken.tiff").write_bytes(broken)
    with pytest.raises(ValueError, match=r"broken.tiff could not be decoded .*invalid extents"):
        load_image(tmp_path / "broken.tiff")
    with Image.open(tmp_path / "broken.tiff") as lazy:  # the same data as an opened, not yet decoded PIL image
        with pytest.raises(ValueError, match="PIL image could not be decoded"):
            load_image(lazy)


def test_an_empty_path_is_a_value_error_not_the_current_folder():
    # before: Path("") is ".", and load_image("") raised IsADirectoryError about the working folder
    with pytest.raises(ValueError, match="empty"):
        load_image("")
