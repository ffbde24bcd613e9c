"""tools/tune_selection.py's replay of the generator's selection: exact indices on hand-made masks."""

from __future__ import annotations

import numpy as np
import torch

from amg.rle import bytes_counts, coco_encode_rle, masks_to_rle

from .test_tools_bench import load_tool


def _pool(iou, stab):
    """Three disjoint 2 x 2 masks on an 8 x 8 image, in the layout of ``load_pool``."""
    m = torch.zeros(3, 8, 8, dtype=torch.bool)
    m[0, 0:2, 0:2] = True
    m[1, 4:6, 4:6] = True
    m[2, 0:2, 5:7] = True
    rles = [bytes_counts(coco_encode_rle(r)) for r in masks_to_rle(m)]
    boxes = torch.tensor([[0, 0, 1, 1], [4, 4, 5, 5], [5, 0, 6, 1]], dtype=torch.float32)
    return {"rles": rles, "boxes": boxes, "area": np.array([4, 4, 4]),
            "iou": np.array(iou, dtype=np.float32), "stab": np.array(stab, dtype=np.float32)}


def test_select_ranks_the_budget_by_the_stability_weight():
    tool = load_tool("tune_selection")
    p = _pool([0.90, 0.85, 0.95], [0.90, 1.00, 0.80])
    # Filters first: mask 2 fails stability >= 0.85 whatever the weight.
    assert tool.select(p, 0.8, 0.85, 0.7, 0.0, 3).tolist() == [0, 1]
    # Budget of 1: predicted IoU alone keeps mask 0 (0.90 > 0.85) ...
    assert tool.select(p, 0.8, 0.85, 0.7, 0.0, 1).tolist() == [0]
    assert tool.select(p, 0.8, 0.85, 0.7, 0.0, 1, stability_weight=0.25).tolist() == [0]  # 0.9 > 0.8875
    # ... the mean of the two scores keeps mask 1 (0.925 > 0.90).
    assert tool.select(p, 0.8, 0.85, 0.7, 0.0, 1, stability_weight=0.5).tolist() == [1]
    # The predicted-IoU filter is strict (>), as the generator's.
    assert tool.select(p, 0.85, 0.0, 0.7, 0.0, 3).tolist() == [0, 2]


def test_select_defers_duplicates():
    """``duplicate_iou``: a near-copy (mask IoU 0.75 with a better mask) gives its budget place
    to a distinct mask; the threshold is strict (>), as the generator's."""
    tool = load_tool("tune_selection")
    m = torch.zeros(3, 8, 8, dtype=torch.bool)
    m[0, 0:4] = True   # 32 px
    m[1, 0:3] = True   # 24 px inside mask 0: mask IoU 0.75
    m[2, 6:8, 0:2] = True
    rles = [bytes_counts(coco_encode_rle(r)) for r in masks_to_rle(m)]
    boxes = torch.tensor([[0, 0, 7, 3], [0, 0, 7, 2], [0, 6, 1, 7]], dtype=torch.float32)
    p = {"rles": rles, "boxes": boxes, "area": np.array([32, 24, 4]),
         "iou": np.array([0.95, 0.90, 0.85], dtype=np.float32),
         "stab": np.array([0.95, 0.95, 0.95], dtype=np.float32)}
    assert tool.select(p, 0.8, 0.9, 1.0, 0.0, 2).tolist() == [0, 1]
    assert tool.select(p, 0.8, 0.9, 1.0, 0.0, 2, duplicate_iou=0.7).tolist() == [0, 2]
    assert tool.select(p, 0.8, 0.9, 1.0, 0.0, 2, duplicate_iou=0.75).tolist() == [0, 1]
    # Box NMS at 0.6 already removes the near-copy (box IoU 14 / 21 as torchvision computes it
    # on these inclusive boxes), at 0.7 it does not.
    assert tool.select(p, 0.8, 0.9, 0.6, 0.0, 3).tolist() == [0, 2]
    assert tool.select(p, 0.8, 0.9, 0.7, 0.0, 3).tolist() == [0, 1, 2]
