"""The images of a run: files, folders (recursive or by glob pattern) and list files.

An input is one of
- an image file, taken as given (whatever its extension, so a bad one is reported, not skipped);
- a folder: its image files (jpg/jpeg/png/bmp/tif/tiff/webp) searched recursively, or the files
  matching ``pattern`` (``Path.glob`` syntax relative to the folder, e.g. ``"**/*.png"`` or
  ``"*.jpg"``), sorted by path, hidden files and folders excluded;
- a list file, given as ``@list.txt`` or with ``--list``: one path per line (a file or folder,
  expanded as above), blank lines and lines starting with ``#`` ignored, relative paths taken
  relative to the list file's folder.

The result is de-duplicated (by resolved path, first occurrence kept) and keeps input order.
"""

from __future__ import annotations

import os
from pathlib import Path

from .io import find_images

__all__ = ["collect_images", "read_list_file", "coco_file_names"]


def read_list_file(path: str | Path) -> list[Path]:
    """The paths listed in a text file (one per line; blank and ``#`` lines ignored).

    Relative paths are resolved against the list file's folder.

    Raises:
        FileNotFoundError: the list file does not exist (the message names it).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"list file not found: {path}")
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        p = Path(line).expanduser()
        out.append(p if p.is_absolute() else path.parent / p)
    return out


def _folder_files(folder: Path, pattern: str | None) -> list[Path]:
    if pattern is None:
        return find_images([folder])  # image extensions, recursive, hidden excluded, sorted
    return sorted(f for f in folder.glob(pattern) if f.is_file()
                  and not any(part.startswith(".") for part in f.relative_to(folder).parts))


def collect_images(inputs: list[str | Path], list_files: list[str | Path] = (),
                   pattern: str | None = None) -> list[Path]:
    """Expand inputs into the run's image paths (see the module docstring for the rules).

    Args:
        inputs: image files, folders, and ``@list.txt`` list files, in run order.
        list_files: more list files (``--list``), expanded after ``inputs``.
        pattern: glob pattern for folders (``None``: image extensions, recursive).

    Returns:
        The image paths, de-duplicated, in input order (folders contribute sorted paths).

    Raises:
        FileNotFoundError: an input, a list file or a listed path does not exist (named).
    """
    items: list[tuple[Path, str]] = []
    for item in inputs:
        s = str(item)
        if s.startswith("@") and not Path(s).exists():
            items.extend((p, f"listed in {s[1:]}") for p in read_list_file(s[1:]))
        else:
            items.append((Path(s), "input"))
    for lf in list_files:
        items.extend((p, f"listed in {lf}") for p in read_list_file(lf))

    found: list[Path] = []
    for p, origin in items:
        if p.is_dir():
            found.extend(_folder_files(p, pattern))
        elif p.is_file():
            found.append(p)
        elif origin == "input":
            raise FileNotFoundError(f"input not found: {p}")
        else:
            raise FileNotFoundError(f"input not found: {p} ({origin})")
    seen, unique = set(), []
    for f in found:
        key = f.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique


def coco_file_names(paths: list[Path], image_root: str | Path | None = None) -> list[str]:
    """The COCO ``file_name`` of each image: its path relative to ``image_root``, '/'-separated.

    Args:
        paths: the run's image paths.
        image_root: the folder names are relative to; ``None``: the deepest folder holding
            every image (for one input folder, that folder: ``dog.jpg``, ``sub/cat.png``).

    Returns:
        One name per path; distinct paths give distinct names, and the same inputs give the
        same names in every run.

    Raises:
        ValueError: an image is not under ``image_root`` (the message names both).
    """
    if not paths:
        return []
    resolved = [p.resolve() for p in paths]
    if image_root is None:
        root = Path(os.path.commonpath([str(p.parent) for p in resolved]))
    else:
        root = Path(image_root).resolve()
    names = []
    for p, r in zip(paths, resolved):
        try:
            names.append(r.relative_to(root).as_posix())
        except ValueError:
            raise ValueError(f"image {p} is not under --image-root {image_root}") from None
    return names
