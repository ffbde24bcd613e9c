"""Mask records as proposals (:mod:`amg.evaluation.proposals`, :func:`amg.rle.to_coco_rle`):
every segmentation format gives the same COCO RLE, sizes are checked, errors name the image and
the mask."""

from __future__ import annotations

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from amg.evaluation.errors import EvaluationError
from amg.evaluation.proposals import records_to_proposals
from amg.rle import to_coco_rle

from .cases import H, W, box, record, rle


def test_segmentation_formats_agree_and_sizes_are_checked():
    m = box(3, 17, 5, 40)
    coco_rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))          # bytes counts
    counts, prev, v = [], 0, False                                                 # uncompressed
    flat = m.flatten(order="F")
    for i, x in enumerate(flat):
        if x != v:
            counts.append(i - prev)
            prev, v = i, x
    counts.append(len(flat) - prev)
    want = rle(m)
    for seg in (m, m.astype(np.uint8), coco_rle, want, {"size": [H, W], "counts": counts}):
        assert to_coco_rle(seg, H, W) == want
    with pytest.raises(EvaluationError, match=r"image 5, mask #1: mask shape \(10, 10\)"):
        records_to_proposals([record(m), record(np.zeros((10, 10), bool))], 5, H, W)
    with pytest.raises(EvaluationError, match="image 5, mask #0: mask record lacks 'stability_score'"):
        records_to_proposals([{"segmentation": m, "predicted_iou": 1.0}], 5, H, W)
