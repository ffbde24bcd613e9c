"""Image ids and file names from an existing COCO file (``--coco-images instances.json``).

With it, the run's COCO output numbers its images as that file does and keeps its file names,
so the output is at once a dataset file and a COCO *results* file for that ground truth (its
annotations carry ``image_id``, ``segmentation``, ``score`` and ``category_id``): pycocotools'
``gt.loadRes(output["annotations"])`` and ``COCOeval(gt, dt, "segm")`` with ``useCats = 0``
take it as it is.

An image of the run is matched to the COCO entry whose ``file_name`` is its path relative to
the image root; failing that, to the entry whose ``file_name`` has the same base name (when
exactly one has). Every image of the run must match a distinct entry, of the same size.
"""

from __future__ import annotations

import json
import posixpath
from pathlib import Path
from typing import Any

__all__ = ["CocoImages"]


class CocoImages:
    """The ``images`` of a COCO file, looked up by the run's file names.

    Args:
        path: a COCO instances (or image-info) JSON file with an ``images`` list of
            ``{"id", "file_name", "width", "height", ...}``.

    Raises:
        ValueError: the file cannot be read as JSON, has no ``images`` list, or an entry lacks
            one of those keys or repeats an id or a file name (the message names the file).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"--coco-images {self.path}: cannot read a COCO file ({exc})") from None
        images = data.get("images") if isinstance(data, dict) else None
        if not isinstance(images, list):
            raise ValueError(f"--coco-images {self.path}: not a COCO file (no 'images' list)")
        self.by_name: dict[str, dict[str, Any]] = {}
        ids = set()
        for img in images:
            if not isinstance(img, dict) or not {"id", "file_name", "width", "height"} <= set(img):
                raise ValueError(f"--coco-images {self.path}: an image entry lacks id, file_name, "
                                 f"width or height: {str(img)[:120]}")
            if img["id"] in ids or img["file_name"] in self.by_name:
                raise ValueError(f"--coco-images {self.path}: image id {img['id']} or file name "
                                 f"{img['file_name']!r} appears twice")
            ids.add(img["id"])
            self.by_name[img["file_name"]] = {k: img[k] for k in ("id", "file_name", "width", "height")}
        self.by_base: dict[str, list[str]] = {}
        for name in self.by_name:
            self.by_base.setdefault(posixpath.basename(name), []).append(name)

    def entry(self, file_name: str) -> dict[str, Any]:
        """The ``{"id", "file_name", "width", "height"}`` entry of an image of the run.

        Args:
            file_name: the image's path relative to the run's image root, ``/``-separated.

        Raises:
            ValueError: no entry matches (neither the path nor a unique base name).
        """
        if file_name in self.by_name:
            return self.by_name[file_name]
        same_base = self.by_base.get(posixpath.basename(file_name), [])
        if len(same_base) == 1:
            return self.by_name[same_base[0]]
        why = "several entries share its base name" if same_base else "no entry has that file_name"
        raise ValueError(f"image {file_name} is not in --coco-images {self.path} ({why})")

    def assign(self, file_names: list[str]) -> list[dict[str, Any]]:
        """The entries of every image of a run, checked to be distinct.

        Raises:
            ValueError: an image matches no entry, or two images match the same one.
        """
        entries = [self.entry(f) for f in file_names]
        seen: dict[Any, str] = {}
        for f, e in zip(file_names, entries):
            if e["id"] in seen:
                raise ValueError(f"images {seen[e['id']]} and {f} both match {e['file_name']!r} "
                                 f"of --coco-images {self.path}")
            seen[e["id"]] = f
        return entries

    @staticmethod
    def check_size(entry: dict[str, Any], hw: tuple[int, int]) -> None:
        """Check an image's ``(H, W)`` against its entry.

        Raises:
            ValueError: the sizes differ (both named).
        """
        if (entry["height"], entry["width"]) != tuple(hw):
            raise ValueError(f"image is {hw[1]}x{hw[0]} but its --coco-images entry "
                             f"{entry['file_name']!r} says {entry['width']}x{entry['height']}")
