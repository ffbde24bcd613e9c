"""``amg.io``: decoding images to (H, W, 3) uint8 RGB, errors that name the file, and atomic
writes."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import amg.io as amg_io
from amg.io import ImageReadError, load_image, write_atomic

from .conftest import shared_path

EXIF_ORIENTATION = 0x0112


# --------------------------------------------------------------------------------------------
# load_image: real photos
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, hw", [("dog.jpg", (534, 800)), ("bus.jpg", (1080, 810))])
def test_real_photo_shape_dtype_and_pixels(name, hw):
    path = shared_path("images", name)
    img, note = load_image(path)
    assert img.shape == (*hw, 3)
    assert img.dtype == np.uint8
    assert img.flags["C_CONTIGUOUS"]
    assert note is None  # already RGB: nothing converted
    with Image.open(path) as im:
        expected = np.asarray(im.convert("RGB"))
    np.testing.assert_array_equal(img, expected)
    assert img.std() > 10  # a photo, not a blank array


def test_real_photo_accepts_str_path():
    img, _ = load_image(str(shared_path("images", "dog.jpg")))
    assert img.shape == (534, 800, 3)


def test_channel_order_is_rgb(tmp_path):
    arr = np.zeros((3, 4, 3), np.uint8)
    arr[0, 0] = (255, 0, 0)
    arr[1, 1] = (0, 255, 0)
    arr[2, 2] = (0, 0, 255)
    Image.fromarray(arr, "RGB").save(tmp_path / "rgb.png")
    img, note = load_image(tmp_path / "rgb.png")
    np.testing.assert_array_equal(img, arr)
    assert note is None


# --------------------------------------------------------------------------------------------
# load_image: EXIF orientation
# --------------------------------------------------------------------------------------------


def _oriented_image(path: Path, arr: np.ndarray, orientation: int) -> None:
    im = Image.fromarray(arr, "RGB")
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    kwargs = {"quality": 95} if path.suffix == ".jpg" else {}
    im.save(path, exif=exif.tobytes(), **kwargs)
    with Image.open(path) as check:  # the file really carries the tag
        assert check.getexif().get(EXIF_ORIENTATION) == orientation
        assert check.size == (arr.shape[1], arr.shape[0])


def test_exif_orientation_6_png_rotates_clockwise(tmp_path):
    # Stored 4 rows x 6 columns; orientation 6 = display rotated 90 degrees clockwise.
    arr = np.zeros((4, 6, 3), np.uint8)
    arr[0, 0] = (255, 0, 0)      # stored top-left
    arr[3, 0] = (0, 255, 0)      # stored bottom-left
    p = tmp_path / "rot6.png"
    _oriented_image(p, arr, 6)
    img, _ = load_image(p)
    assert img.shape == (6, 4, 3)
    np.testing.assert_array_equal(img, np.rot90(arr, k=-1))  # k=-1: clockwise
    assert tuple(img[0, 3]) == (255, 0, 0)  # top-left went to the top-right
    assert tuple(img[0, 0]) == (0, 255, 0)  # bottom-left went to the top-left


def test_exif_orientation_6_jpeg_transposes_shape(tmp_path):
    arr = np.zeros((16, 40, 3), np.uint8)
    arr[:, :20] = (250, 10, 10)   # left half red
    arr[:, 20:] = (10, 10, 250)   # right half blue
    p = tmp_path / "rot6.jpg"
    _oriented_image(p, arr, 6)
    img, _ = load_image(p)
    assert img.shape == (40, 16, 3)
    # Clockwise: the stored left half (red) is now on top.
    assert img[:16, :, 0].mean() > 200 and img[:16, :, 2].mean() < 50
    assert img[-16:, :, 2].mean() > 200 and img[-16:, :, 0].mean() < 50


def test_exif_orientation_1_is_unchanged(tmp_path):
    arr = np.random.default_rng(0).integers(0, 256, (4, 6, 3), dtype=np.uint8)
    p = tmp_path / "rot1.png"
    _oriented_image(p, arr, 1)
    img, _ = load_image(p)
    np.testing.assert_array_equal(img, arr)


# --------------------------------------------------------------------------------------------
# load_image: mode conversion, with the note
# --------------------------------------------------------------------------------------------


def test_grayscale_replicated(tmp_path):
    gray = np.arange(20, dtype=np.uint8).reshape(4, 5) * 12
    Image.fromarray(gray, "L").save(tmp_path / "g.png")
    img, note = load_image(tmp_path / "g.png")
    assert img.shape == (4, 5, 3) and img.dtype == np.uint8
    for c in range(3):
        np.testing.assert_array_equal(img[..., c], gray)
    assert note is not None and "L" in note


def test_rgba_alpha_dropped(tmp_path):
    rgba = np.zeros((3, 4, 4), np.uint8)
    rgba[..., :3] = (10, 200, 30)
    rgba[..., 3] = 255  # opaque: the colour survives exactly
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    img, note = load_image(tmp_path / "a.png")
    assert img.shape == (3, 4, 3)
    np.testing.assert_array_equal(img, rgba[..., :3])
    assert note is not None and "RGBA" in note



def test_rgba_transparent_pixels_composited_on_black(tmp_path):
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[0, 0, 3] = 255   # one opaque red pixel, the rest fully transparent red
    Image.fromarray(rgba, "RGBA").save(tmp_path / "t.png")
    img, _ = load_image(tmp_path / "t.png")
    assert tuple(img[0, 0]) == (255, 0, 0)
    assert tuple(img[1, 1]) == (0, 0, 0)


def test_palette_expanded(tmp_path):
    idx = np.array([[0, 1, 2], [2, 1, 0]], np.uint8)
    im = Image.fromarray(idx, "L").convert("P")
    palette = [255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (256 * 3 - 9)
    im.putpalette(palette)
    im.putdata(idx.flatten().tolist())
    im.save(tmp_path / "p.png")
    with Image.open(tmp_path / "p.png") as check:
        assert check.mode == "P"
    img, note = load_image(tmp_path / "p.png")
    lut = np.array(palette[:9], np.uint8).reshape(3, 3)
    np.testing.assert_array_equal(img, lut[idx])
    assert note is not None and "P" in note


def test_16bit_png_rescaled_min_max(tmp_path):
    a = np.linspace(1000, 61000, 4 * 6).reshape(4, 6).astype(np.uint16)
    Image.fromarray(a).save(tmp_path / "d16.png")
    with Image.open(tmp_path / "d16.png") as check:
        assert check.mode == "I;16"
    img, note = load_image(tmp_path / "d16.png")
    assert img.shape == (4, 6, 3) and img.dtype == np.uint8
    assert img.min() == 0 and img.max() == 255  # own range stretched to 0..255
    expected = np.round((a.astype(np.float64) - 1000) / 60000 * 255).astype(np.uint8)
    np.testing.assert_array_equal(img[..., 0], expected)
    np.testing.assert_array_equal(img[..., 0], img[..., 2])
    assert "I;16" in note and "1000" in note and "61000" in note


def test_16bit_constant_image_is_black(tmp_path):
    Image.fromarray(np.full((3, 3), 777, np.uint16)).save(tmp_path / "c16.png")
    img, note = load_image(tmp_path / "c16.png")
    assert img.shape == (3, 3, 3) and not img.any()
    assert "I;16" in note


# --------------------------------------------------------------------------------------------
# load_image: errors name the file
# --------------------------------------------------------------------------------------------


def _assert_read_error(path: Path, *words: str) -> ImageReadError:
    with pytest.raises(ImageReadError) as ei:
        load_image(path)
    msg = str(ei.value)
    assert str(path) in msg, msg
    for w in words:
        assert w in msg.lower(), msg
    assert isinstance(ei.value, OSError)
    return ei.value


def test_missing_file(tmp_path):
    _assert_read_error(tmp_path / "cat.png", "no such file")


def test_directory_is_not_an_image(tmp_path):
    _assert_read_error(tmp_path, "a folder, not an image file")
    (tmp_path / "photo.jpg").mkdir()
    _assert_read_error(tmp_path / "photo.jpg", "a folder, not an image file")


def test_broken_symlink_is_named(tmp_path):
    (tmp_path / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    _assert_read_error(tmp_path / "gone.jpg", "broken symbolic link", "nowhere.jpg")


@pytest.mark.parametrize("size", [(10_000, 9_000), (15_000, 12_000)])
def test_max_pixels_refuses_from_the_header_without_pillow_warnings(tmp_path, size):
    """Above Pillow's warning (89.5 MP) and error (179 MP) limits: our one-line refusal, from
    the header, and no DecompressionBombWarning."""
    import warnings

    from amg.io import DEFAULT_MAX_PIXELS, ImageSizeError
    p = tmp_path / "huge.png"
    Image.new("1", size).save(p)  # 1-bit, so the test needs little memory
    w, h = size
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ImageSizeError) as ei:
            load_image(p)
    assert str(ei.value) == (f"{p}: image is {w} x {h} = {w * h / 1e6:.1f} MP, above the limit of "
                             f"16 MP (--max-pixels {DEFAULT_MAX_PIXELS})")


def test_max_pixels_argument(tmp_path):
    from amg.io import ImageSizeError
    p = tmp_path / "small.png"
    Image.new("RGB", (100, 60)).save(p)
    with pytest.raises(ImageSizeError, match=r"100 x 60 = 0.0 MP, above the limit of 0.005 MP"):
        load_image(p, max_pixels=5000)
    assert load_image(p, max_pixels=6000)[0].shape == (60, 100, 3)
    assert load_image(p, max_pixels=None)[0].shape == (60, 100, 3)


@pytest.mark.parametrize("hw, ok", [((16, 16), True), ((16, 1024), True), ((15, 100), False),
                                    ((1, 1), False), ((1, 5000), False), ((16, 1025), False),
                                    ((5000, 70), False)])
def test_check_image_size(hw, ok):
    from amg.io import ImageSizeError, check_image_size
    if ok:
        check_image_size("x.png", *hw)
    else:
        with pytest.raises(ImageSizeError, match=rf"x.png: image is {hw[1]} x {hw[0]} px; "):
            check_image_size("x.png", *hw)


def test_empty_file(tmp_path):
    p = tmp_path / "empty.jpg"
    p.write_bytes(b"")
    _assert_read_error(p, "empty")


def test_random_bytes_named_jpg(tmp_path):
    p = tmp_path / "noise.jpg"
    p.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    _assert_read_error(p, "not an image")


def test_text_file_named_png(tmp_path):
    p = tmp_path / "readme.png"
    p.write_text("hello, not a picture\n")
    _assert_read_error(p, "not an image")


def test_truncated_jpeg(tmp_path):
    data = shared_path("images", "dog.jpg").read_bytes()
    p = tmp_path / "half_dog.jpg"
    p.write_bytes(data[: len(data) // 2])
    _assert_read_error(p, "truncated")


def test_jpeg_header_only(tmp_path):
    data = shared_path("images", "dog.jpg").read_bytes()
    p = tmp_path / "head.jpg"
    p.write_bytes(data[:200])
    _assert_read_error(p)


# --------------------------------------------------------------------------------------------
# write_atomic
# --------------------------------------------------------------------------------------------


def test_write_atomic_bytes_and_text(tmp_path):
    p = tmp_path / "new" / "dir" / "out.json"  # parents created
    write_atomic(p, '[{"a": 1}]')
    assert p.read_text() == '[{"a": 1}]'
    write_atomic(p, b"\x00\x01")  # overwrite
    assert p.read_bytes() == b"\x00\x01"
    assert sorted(os.listdir(p.parent)) == ["out.json"]  # no temp file left


def test_write_atomic_failure_during_write_leaves_nothing(tmp_path):
    p = tmp_path / "out.json"

    class Boom(Exception):
        pass

    real_fdopen = os.fdopen

    def fdopen(fd, mode):
        f = real_fdopen(fd, mode)
        f.write("partial")  # some bytes reach the temp file before the failure

        class F:
            def __enter__(self):
                return self

            def __exit__(self, *exc):
                f.close()

            def write(self, data):
                raise Boom("disk full")
        return F()

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(amg_io.os, "fdopen", fdopen)
        with pytest.raises(Boom):
            write_atomic(p, "data")
    assert os.listdir(tmp_path) == []


def test_write_atomic_unencodable_text_leaves_nothing(tmp_path):
    p = tmp_path / "out.json"
    with pytest.raises(UnicodeEncodeError):
        write_atomic(p, "ok" * 10000 + "\ud800")  # lone surrogate: cannot be encoded
    assert os.listdir(tmp_path) == []


def test_write_atomic_failure_keeps_previous_file(tmp_path, monkeypatch):
    p = tmp_path / "out.json"
    write_atomic(p, "old")

    def bad_replace(src, dst):
        raise OSError("rename failed")

    monkeypatch.setattr(amg_io.os, "replace", bad_replace)
    with pytest.raises(OSError, match="rename failed"):
        write_atomic(p, "new")
    assert p.read_text() == "old"
    assert os.listdir(tmp_path) == ["out.json"]


def test_write_atomic_keyboard_interrupt_cleans_up(tmp_path, monkeypatch):
    p = tmp_path / "out.json"

    def interrupted(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(amg_io.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_atomic(p, b"data")
    assert os.listdir(tmp_path) == []


def test_example_image_is_the_shipped_dog_photo(tmp_path, monkeypatch):
    """The README's sample photo, found from any directory, identical to the shared dog.jpg."""
    from amg.io import example_image
    monkeypatch.chdir(tmp_path)
    path = example_image()
    assert path.is_absolute() and path.parent.name == "examples"
    assert path.read_bytes() == shared_path("images", "dog.jpg").read_bytes()
    assert "Apache License 2.0" in (path.parent / "README.md").read_text()
    assert load_image(path)[0].shape == (534, 800, 3)

