"""Reading images, and writing files that appear complete or not at all.

Images are decoded with Pillow, EXIF orientation applied, and converted to (H, W, 3) uint8 RGB:
grayscale is replicated, alpha dropped (composited on black), palette expanded, 16/32-bit
integer and float images rescaled from their own min..max range to 0..255. Every failure is an
:class:`ImageReadError` that names the file and the reason. An image above ``max_pixels`` is
refused from its header, before it is decoded (this limit replaces Pillow's decompression-bomb
warning and error); :func:`check_image_size` is the generator's lower bound on the image sides.

Atomic writes (:func:`write_atomic`, :func:`open_atomic`) go to a hidden temp file beside the
target, ``.<name><random>.part``, renamed onto the target when complete; a process killed in
between leaves only such a temp file, which :func:`remove_temp_files` deletes.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import threading
from pathlib import Path
from typing import IO, Iterator

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

_UMASK = os.umask(0)
os.umask(_UMASK)


# Images up to this many pixels are read by default: the peak memory of a run grows with the
# pixel count (measured, one dense street photo resized, default preset, every output format:
# 1.74 GB at 12 MP, 1.95 GB at 16 MP, 2.09 GB at 20 MP; 2.95 GB at 50 MP with JSON only), and
# 16 MP keeps it within 2 GB. --max-pixels sets another limit.
DEFAULT_MAX_PIXELS = 16_000_000
# The smallest image side the generator accepts, and the longest side as a multiple of the
# shortest: at the model's 1024-pixel input the short side is then at least 16 pixels (one image
# token); below that the point grid and the masks degenerate (zero-area masks, empty resizes).
MIN_IMAGE_SIDE = 16
MAX_ASPECT_RATIO = 64

_PILLOW_LIMIT = threading.Lock()  # guards Image.MAX_IMAGE_PIXELS while a header is read


class ImageReadError(OSError):
    """An image file cannot be read or decoded; the message names the file and the reason."""


class ImageSizeError(ImageReadError):
    """An image is too large (``max_pixels``) or too small or narrow for the generator
    (:func:`check_image_size`); the message names the file, its size and the limit."""


def _not_a_file_reason(path: Path) -> str:
    """Why ``path`` (not a regular file) cannot be read: missing, a broken link, a folder..."""
    if path.is_symlink() and not path.exists():
        return f"broken symbolic link (to {os.readlink(path)}, which does not exist)"
    if path.is_dir():
        return "a folder, not an image file"
    if path.exists():
        return "not a regular file"
    return "no such file"


def check_image_size(path: str | Path, height: int, width: int) -> None:
    """Refuse an image the generator cannot segment meaningfully.

    Args:
        path: the image file (for the message).
        height, width: its size in pixels.

    Raises:
        ImageSizeError: a side below :data:`MIN_IMAGE_SIDE` pixels, or the long side more than
            :data:`MAX_ASPECT_RATIO` times the short one.
    """
    short, long = min(height, width), max(height, width)
    if short < MIN_IMAGE_SIDE:
        raise ImageSizeError(f"{path}: image is {width} x {height} px; both sides must be at least "
                             f"{MIN_IMAGE_SIDE} px")
    if long > MAX_ASPECT_RATIO * short:
        raise ImageSizeError(f"{path}: image is {width} x {height} px; the long side must be at "
                             f"most {MAX_ASPECT_RATIO} times the short side")


def load_image(path: str | Path, max_pixels: int | None = DEFAULT_MAX_PIXELS
               ) -> tuple[np.ndarray, str | None]:
    """Decode an image file to RGB.

    Args:
        path: image file (jpg/png/bmp/tiff/webp, anything Pillow reads).
        max_pixels: refuse images with more pixels than this, from the header, before decoding
            (``None``: no limit). Pillow's own decompression-bomb check is replaced by this one.

    Returns:
        ``(image, note)``: (H, W, 3) uint8 RGB, and a note describing any conversion made
        (e.g. ``"converted from I;16"``) or ``None``.

    Raises:
        ImageSizeError: more than ``max_pixels`` pixels.
        ImageReadError: missing (or a folder, a broken link), empty, truncated, corrupt or
            zero-size images.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: {_not_a_file_reason(path)}")
    if path.stat().st_size == 0:
        raise ImageReadError(f"{path}: empty file (0 bytes)")
    try:
        with _PILLOW_LIMIT:
            saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            try:
                opened = Image.open(path)
            finally:
                Image.MAX_IMAGE_PIXELS = saved
        with opened as im:
            w, h = im.size
            if max_pixels is not None and w * h > max_pixels:
                raise ImageSizeError(f"{path}: image is {w} x {h} = {w * h / 1e6:.1f} MP, above "
                                     f"the limit of {max_pixels / 1e6:g} MP (--max-pixels "
                                     f"{max_pixels})")
            im.load()
            im = ImageOps.exif_transpose(im)
            mode = im.mode
            if mode == "RGB":
                rgb, note = np.asarray(im), None
            elif mode in ("I", "I;16", "I;16B", "I;16L", "F"):
                arr = np.asarray(im, dtype=np.float64)
                lo, hi = float(arr.min()), float(arr.max())
                arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
                gray = np.clip(arr + 0.5, 0, 255).astype(np.uint8)
                rgb, note = np.repeat(gray[..., None], 3, axis=2), f"converted from {mode} (range {lo:g}..{hi:g})"
            elif mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in im.info):
                black = Image.new("RGBA", im.size, (0, 0, 0, 255))
                rgb = np.asarray(Image.alpha_composite(black, im.convert("RGBA")).convert("RGB"))
                note = f"converted from {mode} (alpha composited on black)"
            else:
                rgb, note = np.asarray(im.convert("RGB")), f"converted from {mode}"
    except ImageReadError:
        raise
    except UnidentifiedImageError:
        raise ImageReadError(f"{path}: not an image file (unrecognised format)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageReadError(f"{path}: cannot decode image ({exc})") from None
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ImageReadError(f"{path}: image has zero size {rgb.shape[:2]}")
    return np.ascontiguousarray(rgb), note


def example_image() -> Path:
    """The sample photo shipped with the project, ``dog.jpg`` (800 x 534, Apache-2.0, from the
    official Segment Anything repository; ``examples/README.md``): ``examples/dog.jpg`` of the
    source tree (checkouts and editable installs), else
    ``<prefix>/share/segment-everything/examples/dog.jpg`` (wheel installs).

    Raises:
        FileNotFoundError: in neither place (the message names both).
    """
    places = [Path(__file__).resolve().parent.parent / "examples" / "dog.jpg",
              Path(sys.prefix) / "share" / "segment-everything" / "examples" / "dog.jpg"]
    for p in places:
        if p.is_file():
            return p
    raise FileNotFoundError(f"the sample photo is in neither {places[0]} nor {places[1]}")


@contextlib.contextmanager
def _temp_beside(path: Path) -> Iterator[int]:
    """The file descriptor of a hidden temp file beside ``path`` (``.<name>...part``, the usual
    permissions), renamed onto ``path`` when the block ends without an exception and removed
    otherwise. The one home of the atomic-write protocol."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix="." + path.name, suffix=".part")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the usual permissions
        yield fd
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write a file so that it either exists complete or not at all (temp file + rename).

    Args:
        path: the file to write (its folder is created).
        data: the content (``str``: text mode, the locale's encoding).

    Raises:
        OSError, UnicodeEncodeError: nothing is left but an earlier file at ``path``.
    """
    mode = "wb" if isinstance(data, bytes) else "w"
    with _temp_beside(path) as fd, os.fdopen(fd, mode) as f:
        f.write(data)


@contextlib.contextmanager
def open_atomic(path: Path, mode: str = "w") -> Iterator[IO]:
    """Open a file for streaming writes that appears complete or not at all.

    The data goes to a hidden temp file beside ``path`` (``.<name>...part``), renamed onto
    ``path`` when the block ends without an exception, and removed otherwise.

    Args:
        path: the file to write.
        mode: ``"w"`` (text, UTF-8) or ``"wb"``.
    """
    encoding = {} if "b" in mode else {"encoding": "utf-8"}
    with _temp_beside(path) as fd, os.fdopen(fd, mode, **encoding) as f:
        yield f


def remove_temp_files(folder: Path) -> None:
    """Delete the hidden ``.<name>...part`` files an atomic write leaves when killed.

    Args:
        folder: the folder to clean (not its sub-folders); nothing happens if it is missing.
    """
    if folder.is_dir():
        for f in folder.glob(".*.part"):
            f.unlink(missing_ok=True)
