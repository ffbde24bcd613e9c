"""The images of a run: files, folders (recursive or by glob pattern) and list files.

An input is one of
- an image file, taken as given (whatever its extension, so a bad one is reported, not skipped);
- a folder: its image files (:data:`IMAGE_EXTENSIONS`) searched recursively, or the files
  matching ``pattern`` (``Path.glob`` syntax relative to the folder, e.g. ``"**/*.png"`` or
  ``"*.jpg"``), sorted by path, hidden files and folders excluded. Entries named like images
  that are not files — a folder named ``x.jpg``, a broken symbolic link, a pipe — are kept
  too, so that the run lists each of them in ``errors.csv`` with the reason
  (:func:`amg.io.load_image` names it) instead of skipping it without a word;
- a list file, given as ``@list.txt`` or with ``--list``: one path per line (a file or folder,
  expanded as above), blank lines and lines starting with ``#`` ignored, relative paths taken
  relative to the list file's folder.

The result is de-duplicated (by resolved path, first occurrence kept) and keeps input order.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

__all__ = ["IMAGE_EXTENSIONS", "collect_images", "find_images", "folder_images",
           "read_list_file", "unique_paths"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


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


def folder_images(folder: Path, pattern: str | None = None, recursive: bool = True) -> list[Path]:
    """The entries a folder contributes, sorted by path, hidden files and folders excluded.

    Args:
        folder: the folder.
        pattern: ``Path.glob`` pattern relative to ``folder`` (any extension); ``None``: the
            files with an image extension (:data:`IMAGE_EXTENSIONS`, any case).
        recursive: with ``pattern=None``, search sub-folders too.

    Returns:
        The matching files, and the matching entries that are not files but named like images
        (a folder ``x.jpg``, a broken link): reading them fails with the reason, so the run
        reports them. A folder is searched whatever its name.
    """
    glob = pattern if pattern is not None else ("**/*" if recursive else "*")
    found = []
    for f in folder.glob(glob):
        if any(part.startswith(".") for part in f.relative_to(folder).parts):
            continue
        named_like_an_image = f.suffix.lower() in IMAGE_EXTENSIONS
        if f.is_file():
            keep = pattern is not None or named_like_an_image
        elif f.is_dir():
            keep = named_like_an_image
        else:  # a broken link, a pipe, a socket...
            keep = pattern is not None or named_like_an_image
        if keep:
            found.append(f)
    return sorted(found)


def unique_paths(paths: Iterable[Path]) -> list[Path]:
    """``paths`` without repeats of the same file (compared by resolved path), first kept."""
    seen, unique = set(), []
    for f in paths:
        key = f.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique


def _expand(items: Iterable[tuple[Path, str]], pattern: str | None, recursive: bool) -> list[Path]:
    """Files as given, folders as :func:`folder_images`, de-duplicated; ``origin`` names where
    a missing path came from (``"input"`` or ``"listed in FILE"``)."""
    found: list[Path] = []
    for p, origin in items:
        if p.is_dir():
            found.extend(folder_images(p, pattern, recursive))
        elif p.is_file():
            found.append(p)
        else:
            where = [] if origin == "input" else [origin]
            if p.is_symlink():
                where.insert(0, f"a broken symbolic link to {os.readlink(p)}")
            elif p.exists():
                found.append(p)  # a pipe or device given by name: reported when read
                continue
            raise FileNotFoundError(f"input not found: {p}"
                                    + (f" ({'; '.join(where)})" if where else ""))
    return unique_paths(found)


def find_images(inputs: list[str | Path], recursive: bool = True) -> list[Path]:
    """Expand files and folders into a de-duplicated list of image paths.

    Files are taken as given, in the order given (whatever their extension, so a bad one is
    reported rather than skipped silently); folders contribute their files with an image
    extension (:func:`folder_images`).

    Raises:
        FileNotFoundError: an input path does not exist.
    """
    return _expand(((Path(p), "input") for p in inputs), None, recursive)


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
    return _expand(items, pattern, recursive=True)
