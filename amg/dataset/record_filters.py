"""Filters on finished mask records (after the generator's box NMS), for dataset outputs.

Records are the generator's dicts with a COCO RLE ``segmentation`` (``output_mode="coco_rle"``).
Filters keep the survivors in their input order (the reference's order), so the ids derived from
positions (label map ids, PNG file numbers) follow the same order as the JSON records.

(Named ``record_filters`` rather than ``filters``: the generator's own score filters, which run
on tensors inside the generation loop, are a different thing.)
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from ..rle import bytes_counts

__all__ = ["filter_by_area", "mask_nms", "apply_record_filters"]


def filter_by_area(records: list[dict[str, Any]], min_area: int | None = None,
                   max_area: int | None = None) -> list[dict[str, Any]]:
    """Drop whole masks by pixel area: keep ``min_area <= record["area"] <= max_area``.

    This removes entire masks; it is unrelated to the generator's ``min_mask_region_area``,
    which removes small islands and holes *inside* masks.

    Args:
        records: mask records with an integer ``area`` (pixels).
        min_area: smallest area kept, in pixels (``None``: no lower bound).
        max_area: largest area kept, in pixels (``None``: no upper bound).

    Returns:
        The kept records, in input order.

    Raises:
        ValueError: a negative bound, or ``min_area > max_area``.
    """
    if min_area is not None and min_area < 0:
        raise ValueError(f"min_area must be >= 0, got {min_area}")
    if max_area is not None and max_area < 0:
        raise ValueError(f"max_area must be >= 0, got {max_area}")
    if min_area is not None and max_area is not None and min_area > max_area:
        raise ValueError(f"min_area ({min_area}) must be <= max_area ({max_area})")
    lo = 0 if min_area is None else min_area
    hi = float("inf") if max_area is None else max_area
    return [r for r in records if lo <= r["area"] <= hi]


def mask_iou_matrix(records: list[dict[str, Any]]) -> np.ndarray:
    """Pairwise mask IoU of the records' COCO RLE segmentations (``pycocotools.mask.iou``).

    Returns:
        ``(N, N)`` float64; entry ``[i, j]`` is IoU(mask i, mask j); ``(0, 0)`` for no records.
    """
    n = len(records)
    if n == 0:
        return np.zeros((0, 0))
    rles = [bytes_counts(r["segmentation"]) for r in records]
    return np.asarray(mask_utils.iou(rles, rles, [0] * n), dtype=np.float64).reshape(n, n)


def mask_nms(records: list[dict[str, Any]], iou_thresh: float) -> list[dict[str, Any]]:
    """Greedy mask-IoU non-maximum suppression: drop duplicates box NMS missed.

    Masks are visited by the reference ranking, predicted IoU descending (ties: earlier record
    first); a mask is dropped when its mask IoU with an already kept mask is > ``iou_thresh``.

    Args:
        records: mask records with COCO RLE ``segmentation`` and ``predicted_iou``.
        iou_thresh: mask IoU above which the lower-ranked mask is dropped, in (0, 1].

    Returns:
        The kept records, in input order.

    Raises:
        ValueError: ``iou_thresh`` outside (0, 1].
    """
    if not 0.0 < iou_thresh <= 1.0:
        raise ValueError(f"mask_nms_thresh must be in (0, 1], got {iou_thresh!r}")
    n = len(records)
    if n < 2:
        return list(records)
    ious = mask_iou_matrix(records)
    order = sorted(range(n), key=lambda i: (-records[i]["predicted_iou"], i))
    kept: list[int] = []
    for i in order:
        if all(ious[i, j] <= iou_thresh for j in kept):
            kept.append(i)
    return [records[i] for i in sorted(kept)]


def apply_record_filters(records: list[dict[str, Any]], *, min_area: int | None = None,
                         max_area: int | None = None,
                         mask_nms_thresh: float | None = None) -> list[dict[str, Any]]:
    """The dataset filters in their fixed order: area bounds first, then mask-IoU NMS.

    Area first, so that a mask dropped for its size cannot suppress a duplicate that would
    have been kept. ``None`` disables a filter. See :func:`filter_by_area` and :func:`mask_nms`
    for the arguments and errors.
    """
    if min_area is not None or max_area is not None:
        records = filter_by_area(records, min_area, max_area)
    if mask_nms_thresh is not None:
        records = mask_nms(records, mask_nms_thresh)
    return records
