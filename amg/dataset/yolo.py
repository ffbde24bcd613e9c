"""YOLO segmentation labels: one text file per image, one line per polygon, and a ``data.yaml``.

Layout (under the run's output folder ``DIR``, ``<subset>`` from ``--subset``, ``default``
unless given): ``DIR/images/<subset>/<file_name>`` (the image, linked, shared with the COCO
layout), ``DIR/labels/<subset>/<file_name with .txt>`` and ``DIR/data.yaml`` — the layout
Ultralytics finds labels by (``/images/`` -> ``/labels/``, extension -> ``.txt``) and that
``supervision.DetectionDataset.from_yolo`` reads.

A line is ``0 x1 y1 x2 y2 ...``: class 0 (the one category), then the vertices of one polygon,
x divided by the image width and y by its height (so in ``[0, 1]``), 6 decimals. A mask of
several fragments gives one line per fragment (YOLO has no multi-polygon instance); the
polygons are :func:`amg.dataset.polygons.mask_to_polygons`' (holes bridged into their ring,
vertices on quarter pixels; 6 decimals keep every vertex within 0.25 px for images up to
500,000 px wide, so the polygons still rasterise back to the mask by parity). An image without
masks gets an empty file (a background image).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from ..rle import bytes_counts
from .polygons import DEFAULT_MIN_POLYGON_AREA, mask_to_polygons

__all__ = ["yolo_label_text", "data_yaml"]


def yolo_label_text(records: list[dict[str, Any]], hw: tuple[int, int],
                    min_polygon_area: float = DEFAULT_MIN_POLYGON_AREA) -> str:
    """The YOLO segmentation label file of one image (see the module docstring).

    Args:
        records: mask records with COCO RLE ``segmentation`` of size ``hw``, in output order
            (lines follow the records, then each record's polygons).
        hw: ``(H, W)`` of the image.
        min_polygon_area: polygon tolerance in px² (:func:`amg.dataset.polygons.mask_to_polygons`).

    Returns:
        The file's text, one ``\\n``-terminated line per polygon (``""`` for no polygon).

    Raises:
        ValueError: a segmentation whose size is not ``hw``.
    """
    h, w = (int(v) for v in hw)
    lines = []
    for i, r in enumerate(records):
        mask = mask_utils.decode(bytes_counts(r["segmentation"]))
        if mask.shape != (h, w):
            raise ValueError(f"record {i}: segmentation size {mask.shape} != image size {(h, w)}")
        for poly in mask_to_polygons(mask, min_polygon_area):
            xy = np.asarray(poly, np.float64).reshape(-1, 2) / (w, h)
            lines.append("0 " + " ".join(f"{v:.6f}" for v in xy.ravel()) + "\n")
    return "".join(lines)


def data_yaml(subset: str = "default", category: str = "object") -> str:
    """``data.yaml`` of the dataset: the subset's image folder as both ``train`` and ``val``
    (relative to the folder holding ``data.yaml``; no ``path`` key, so Ultralytics takes that
    folder when given ``data.yaml``'s absolute path) and ``names: {0: category}``."""
    return (f"train: images/{subset}\n"
            f"val: images/{subset}\n"
            f"names:\n"
            f"  0: {json.dumps(category)}\n")
