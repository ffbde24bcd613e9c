"""Reading images, and writing files that appear complete or not at all.

Images are decoded with Pillow, EXIF orientation applied, and converted to (H, W, 3) uint8 RGB:
grayscale is replicated, alpha dropped (composited on black), palette expanded, 16/32-bit
integer and float images rescaled from their own min..max range to 0..255. Every failure is an
:class:`ImageReadError` that names the file and the reason.

Atomic writes (:func:`write_atomic`, :func:`open_atomic`) go to a hidden temp file beside the
target, ``.<name><random>.part``, renamed onto the target when complete; a process killed in
between leaves only such a temp file, which :func:`remove_temp_files` deletes.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import IO, Iterator

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

_UMASK = os.umask(0)
os.umask(_UMASK)


class ImageReadError(OSError):
    """An image file cannot be read or decoded; the message names the file and the reason."""


def load_image(path: str | Path) -> tuple[np.ndarray, str | None]:
    """Decode an image file to RGB.

    Args:
        path: image file (jpg/png/bmp/tiff/webp, anything Pillow reads).

    Returns:
        ``(image, note)``: (H, W, 3) uint8 RGB, and a note describing any conversion made
        (e.g. ``"converted from I;16"``) or ``None``.

    Raises:
        ImageReadError: missing, empty, truncated, corrupt or zero-size images.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise ImageReadError(f"{path}: empty file (0 bytes)")
    try:
        with Image.open(path) as im:
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
    except UnidentifiedImageError:
        raise ImageReadError(f"{path}: not an image file (unrecognised format)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageReadError(f"{path}: cannot decode image ({exc})") from None
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ImageReadError(f"{path}: image has zero size {rgb.shape[:2]}")
    return np.ascontiguousarray(rgb), note


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
