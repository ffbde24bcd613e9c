"""Mask records: the reference ``SamAutomaticMaskGenerator.generate`` output dicts.

Keys: ``segmentation`` (by output mode: (H, W) bool array, uncompressed RLE dict, or COCO RLE
dict with ``counts`` as str), ``area`` (pixels), ``bbox`` (XYWH, the reference's width
``x2 - x1`` with x2 inclusive), ``predicted_iou``, ``point_coords`` (``[[x, y]]``, image
pixels), ``stability_score``, ``crop_box`` (XYWH); and, only when the generator has reserve
filters (``AMGConfig.reserve_pred_iou_thresh``), ``reserve`` (bool: the mask passed only the
looser reserve filters and fills a free place of the ``max_masks`` budget).
"""

from __future__ import annotations

from typing import Any

from .mask_data import MaskData
from .rle import area_from_rle, coco_encode_rle, rle_to_mask, rle_with_list_counts


def xyxy_to_xywh(box: list[int] | list[float]) -> list:
    """[x1, y1, x2, y2] -> [x1, y1, x2 - x1, y2 - y1] (reference ``box_xyxy_to_xywh``)."""
    x1, y1, x2, y2 = box
    return [x1, y1, x2 - x1, y2 - y1]


def encode_segmentation(rle: dict[str, Any], output_mode: str) -> Any:
    """An uncompressed RLE in the requested output mode.

    Raises:
        ValueError: unknown ``output_mode``.
    """
    if output_mode == "coco_rle":
        return coco_encode_rle(rle)
    if output_mode == "binary_mask":
        return rle_to_mask(rle)
    if output_mode == "uncompressed_rle":
        return rle_with_list_counts(rle)
    raise ValueError(f"unknown output_mode {output_mode!r}")


def mask_data_to_records(data: MaskData, output_mode: str,
                         with_reserve: bool = False) -> list[dict[str, Any]]:
    """One record per mask, in ``data`` order (the reference's order).

    Args:
        data: the kept masks. output_mode: see :func:`encode_segmentation`.
        with_reserve: add the ``reserve`` key (``data.reserve``) to every record; off for the
            reference's keys only.

    Raises:
        ValueError: unknown ``output_mode``.
    """
    boxes = data.boxes_xyxy.cpu().tolist()
    crops = data.crop_boxes_xyxy.cpu().tolist()
    ious = data.predicted_iou.cpu().tolist()
    stabs = data.stability_score.cpu().tolist()
    points = data.points_xy.cpu().tolist()
    records = [
        {
            "segmentation": encode_segmentation(rle, output_mode),
            "area": area_from_rle(rle),
            "bbox": xyxy_to_xywh(boxes[i]),
            "predicted_iou": ious[i],
            "point_coords": [points[i]],
            "stability_score": stabs[i],
            "crop_box": xyxy_to_xywh(crops[i]),
        }
        for i, rle in enumerate(data.rles)
    ]
    if with_reserve:
        for record, reserve in zip(records, data.reserve.cpu().tolist()):
            record["reserve"] = bool(reserve)
    return records

