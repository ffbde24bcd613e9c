"""Names of a run's images in its outputs: the output stem and the COCO ``file_name``.

Both are fixed once per run from the whole image list (:func:`amg.dataset.jobs.make_jobs`), so
the same inputs give the same names in every run and a resume finds its earlier files.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["output_stems", "visible_name", "coco_file_names", "image_root_folder"]


def output_stems(paths: list[Path]) -> list[str]:
    """A distinct output name per image, stable across runs for the same inputs.

    The name is the file's stem. Where stems collide, each colliding file is named by the
    shortest tail of its path that tells the group apart, parts joined by ``__``: first
    ``folder__stem`` (``a/dog.jpg`` and ``b/dog.jpg`` give ``a__dog`` and ``b__dog``), then the
    same tail with the extension (``dog.jpg`` and ``dog.png`` give ``dog.jpg`` and ``dog.png``),
    then one more folder, and so on. A name that would start with ``.`` (``..jpg`` has the stem
    ``.``, ``...jpg`` the stem ``..``, ``.hidden.png`` ``.hidden``) has its leading dots replaced
    by ``_`` (``_``, ``__``, ``_hidden``), so that every output stays a visible file inside its
    folder (``masks/..`` would be the output folder itself). A name still taken after that gets
    ``-2``, ``-3``... in input order.

    Args:
        paths: the image files, in run order.

    Returns:
        One name per path (no extension added), all distinct.
    """
    stems = [p.stem for p in paths]
    groups: dict[str, list[int]] = {}
    for i, s in enumerate(stems):
        groups.setdefault(s, []).append(i)
    names = list(stems)
    for members in groups.values():
        if len(members) < 2:
            continue
        parts = [[x for x in paths[i].parts if x not in ("/", "\\")] for i in members]
        depth = max(len(p) for p in parts)
        for k in range(1, depth + 1):
            found = False
            for with_ext in (False, True):
                tails = []
                for i, pp in zip(members, parts):
                    last = pp[-1] if with_ext else stems[i]
                    tails.append("__".join(pp[-k:-1] + [last]).replace(":", ""))
                if len(set(tails)) == len(tails):
                    found = True
                    break
            if found:
                break
        for i, t in zip(members, tails):
            names[i] = t
    out, used = [], set()
    for name in names:
        name = visible_name(name)
        candidate, k = name, 1
        while candidate in used:
            k += 1
            candidate = f"{name}-{k}"
        used.add(candidate)
        out.append(candidate)
    return out


def visible_name(name: str) -> str:
    """``name`` with its leading dots replaced by ``_`` (``"."`` -> ``"_"``, ``".."`` -> ``"__"``,
    ``".a"`` -> ``"_a"``), and ``"_"`` for an empty name: never a hidden file, the folder itself
    or its parent."""
    stripped = name.lstrip(".")
    return ("_" * (len(name) - len(stripped)) + stripped) or "_"


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
    root = image_root_folder(paths, image_root)
    names = []
    for p, r in zip(paths, resolved):
        try:
            names.append(r.relative_to(root).as_posix())
        except ValueError:
            raise ValueError(f"image {p} is not under --image-root {image_root}") from None
    return names


def image_root_folder(paths: list[Path], image_root: str | Path | None = None) -> Path:
    """The folder the COCO ``file_name`` of :func:`coco_file_names` is relative to, resolved:
    ``image_root``, or the deepest folder holding every image (``paths`` not empty then)."""
    if image_root is not None:
        return Path(image_root).resolve()
    return Path(os.path.commonpath([str(p.resolve().parent) for p in paths]))
