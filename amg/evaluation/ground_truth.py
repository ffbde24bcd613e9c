"""Class-agnostic ground truth: a COCO instances file with every annotation in one category,
and the subset of its images to evaluate (:func:`load_dataset`, :class:`Dataset`)."""

from __future__ import annotations

import contextlib
import copy
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from pycocotools.coco import COCO

from .errors import EvaluationError

__all__ = ["DEFAULT_DATASET", "OBJECT_CATEGORY", "Dataset", "size_label", "class_agnostic_coco",
           "load_dataset", "SPLITS", "split_ids"]

#: The shared tiny COCO subset beside the repository (``../shared/coco_tiny``).
DEFAULT_DATASET = Path(__file__).resolve().parents[3] / "shared" / "coco_tiny"
#: The two fixed halves of a dataset (:func:`split_ids`): presets are tuned on one, reported
#: on the other (docs/quality.md).
SPLITS = ("tune", "report")
#: The one category of class-agnostic evaluation.
OBJECT_CATEGORY = {"id": 1, "name": "object", "supercategory": "object"}


@dataclass
class Dataset:
    """Class-agnostic ground truth and the images to evaluate.

    Attributes:
        coco: the class-agnostic ground truth (``pycocotools.coco.COCO``; every annotation in
            category 1, ``iscrowd`` kept).
        images_dir: folder holding the images' ``file_name`` paths.
        image_ids: the evaluated subset, in evaluation order (ascending unless given).
        annotations: the annotation file it came from (``None`` for in-memory datasets).
    """

    coco: COCO
    images_dir: Path
    image_ids: list[int]
    annotations: Path | None = None

    def image_info(self, image_id: int) -> dict[str, Any]:
        """The COCO ``images`` entry (``file_name``, ``height``, ``width``) of an image."""
        return self.coco.imgs[image_id]

    def image_path(self, image_id: int) -> Path:
        """Path of an image file: ``images_dir / file_name``."""
        return self.images_dir / self.image_info(image_id)["file_name"]

    def summary(self) -> dict[str, Any]:
        """JSON-able description: files, image ids, instance counts by size (non-crowd) and crowd."""
        anns = self.coco.loadAnns(self.coco.getAnnIds(imgIds=self.image_ids))
        sizes = {"small": 0, "medium": 0, "large": 0}
        for a in anns:
            if not a.get("iscrowd", 0):
                sizes[size_label(a["area"])] += 1
        return {
            "annotations": str(self.annotations) if self.annotations else None,
            "images_dir": str(self.images_dir),
            "image_ids": list(self.image_ids),
            "images": len(self.image_ids),
            "instances": sum(sizes.values()),
            "instances_by_size": sizes,
            "crowd": sum(1 for a in anns if a.get("iscrowd", 0)),
        }


def size_label(area: float) -> str:
    """pycocotools' size bins: small < 32², medium < 96², large otherwise (pixels)."""
    return "small" if area < 32 ** 2 else "medium" if area < 96 ** 2 else "large"


def class_agnostic_coco(dataset: dict[str, Any], source: str = "dataset") -> COCO:
    """A COCO ground truth with every annotation mapped to the single category 1.

    Args:
        dataset: a COCO instances dict (``images``, ``annotations``; ``categories`` optional);
            not modified. Annotations keep ``segmentation`` (polygons or RLE), ``area`` and
            ``iscrowd`` (missing ``iscrowd`` is read as 0).
        source: name used in error messages (e.g. the file path).

    Returns:
        an indexed ``pycocotools.coco.COCO``.

    Raises:
        EvaluationError: missing ``images``/``annotations`` keys or annotation fields.
    """
    if not isinstance(dataset, dict) or "images" not in dataset or "annotations" not in dataset:
        raise EvaluationError(f"{source}: not a COCO instances file (needs 'images' and 'annotations')")
    data = copy.deepcopy({k: dataset[k] for k in ("images", "annotations")})
    for i, ann in enumerate(data["annotations"]):
        missing = [k for k in ("image_id", "segmentation", "area") if k not in ann]
        if missing:
            raise EvaluationError(f"{source}: annotation #{i} (id {ann.get('id')}) lacks {missing}")
        ann["category_id"] = OBJECT_CATEGORY["id"]
        ann.setdefault("iscrowd", 0)
        ann.setdefault("id", i + 1)
    data["categories"] = [dict(OBJECT_CATEGORY)]
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def split_ids(image_ids: Sequence[int], split: str) -> list[int]:
    """One fixed half of a dataset's images: the tuning half or the report half.

    The image ids are sorted in ascending order; the images at even positions (0, 2, 4, ...)
    are the ``"tune"`` half, those at odd positions the ``"report"`` half. The rule depends on
    the ids only, so it is the same on every machine and for any COCO file; on the 80
    coco_tiny photos each half has 40 images.

    Args:
        image_ids: the dataset's image ids (any order, no duplicates).
        split: ``"tune"`` or ``"report"``.

    Returns:
        the half's ids, ascending.

    Raises:
        EvaluationError: ``split`` is not one of :data:`SPLITS`.
    """
    if split not in SPLITS:
        raise EvaluationError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    ids = sorted(int(i) for i in image_ids)
    return ids[SPLITS.index(split)::2]


def load_dataset(annotations: str | Path, images_dir: str | Path | None = None,
                 limit: int | None = None, image_ids: Sequence[int] | None = None,
                 split: str | None = None) -> Dataset:
    """Load a COCO instances file as class-agnostic ground truth and choose the images.

    Args:
        annotations: COCO instances JSON (e.g. ``coco_tiny/annotations/instances_val2017.json``).
        images_dir: folder of the images; default: ``val2017`` beside the ``annotations``
            folder if it exists, else the annotation file's folder.
        limit: keep the first ``limit`` images (after ``image_ids`` selection, ascending id
            order when ``image_ids`` is not given) — a deterministic subset.
        image_ids: evaluate exactly these image ids, in this order.
        split: ``"tune"`` or ``"report"``: only that half of the images (:func:`split_ids`),
            applied before ``limit``; cannot be combined with ``image_ids``. None: all images.

    Returns:
        a :class:`Dataset`.

    Raises:
        EvaluationError: unreadable/invalid file, unknown image ids, ``limit`` < 1, missing
            images folder, an unknown ``split`` or ``split`` together with ``image_ids``.
    """
    annotations = Path(annotations)
    try:
        raw = json.loads(annotations.read_text())
    except (OSError, ValueError) as exc:
        raise EvaluationError(f"{annotations}: cannot read the annotations ({exc})") from exc
    coco = class_agnostic_coco(raw, source=str(annotations))
    if images_dir is None:
        cand = annotations.parent.parent / "val2017"
        images_dir = cand if cand.is_dir() else annotations.parent
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise EvaluationError(f"images folder not found: {images_dir}")
    if split is not None and image_ids is not None:
        raise EvaluationError("choose the images by split or by image ids, not both")
    if image_ids is not None:
        ids = [int(i) for i in image_ids]
        unknown = [i for i in ids if i not in coco.imgs]
        if unknown:
            raise EvaluationError(f"{annotations}: unknown image id(s) {unknown}")
        if len(set(ids)) != len(ids):
            raise EvaluationError(f"image_ids: duplicate ids in {ids}")
    elif split is not None:
        ids = split_ids(coco.getImgIds(), split)
    else:
        ids = sorted(coco.getImgIds())
    if limit is not None:
        if limit < 1:
            raise EvaluationError(f"limit must be >= 1, got {limit}")
        ids = ids[:limit]
    return Dataset(coco=coco, images_dir=images_dir, image_ids=ids, annotations=annotations)
