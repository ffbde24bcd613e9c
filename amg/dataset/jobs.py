"""The images of a run as jobs: :class:`ImageJob` (position, path, output names) and
:func:`make_jobs`, which fixes every name once for the whole list."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .names import coco_file_names, output_stems

__all__ = ["ImageJob", "make_jobs"]


@dataclass(frozen=True)
class ImageJob:
    """One image of a run.

    Attributes:
        index: position in the run's image list (0-based); the COCO image id is ``index + 1``.
        path: the image file.
        stem: its output name (:func:`amg.dataset.names.output_stems`).
        file_name: its COCO ``file_name`` (:func:`amg.dataset.names.coco_file_names`).
    """

    index: int
    path: Path
    stem: str
    file_name: str


def make_jobs(images: list[Path], image_root: Path | None = None) -> list[ImageJob]:
    """The run's :class:`ImageJob` list (output names and COCO file names fixed here).

    Raises:
        ValueError: an image is not under ``image_root``.
    """
    images = [Path(p) for p in images]
    return [ImageJob(i, p, s, f) for i, (p, s, f) in
            enumerate(zip(images, output_stems(images), coco_file_names(images, image_root)))]
