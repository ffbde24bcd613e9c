"""``tools/prompt_producers.py``: greedy oracle, subset recall with box NMS and the agreement
rule, on hand-made masks with known answers (the tool's figures on photos are in
docs/benchmarks.md)."""
from __future__ import annotations

import numpy as np
import torch
from pycocotools import mask as mask_utils

from .test_tools_bench import load_tool


def rle(mask: np.ndarray) -> dict:
    return mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))


def square(y0: int, x0: int, size: int, hw: int = 40) -> np.ndarray:
    m = np.zeros((hw, hw), bool)
    m[y0:y0 + size, x0:x0 + size] = True
    return m


def candidates(grid: list[int], masks: list[np.ndarray], scores: list[float], n: int) -> dict:
    boxes = []
    for m in masks:
        ys, xs = np.nonzero(m)
        boxes.append([xs.min(), ys.min(), xs.max(), ys.max()])
    return {"grid": np.array(grid), "rles": [rle(m) for m in masks], "n": n,
            "boxes": torch.tensor(boxes, dtype=torch.float32),
            "scores": torch.tensor(scores, dtype=torch.float32)}


def test_oracle_points_greedy_cover():
    tool = load_tool("prompt_producers")
    cand = {"grid": np.array([0, 0, 1, 2, 3])}
    # exact masks 0..3; point 0 finds 0 and 1 (two masks), point 1 finds 1, 2 finds 2, 3 none.
    match = np.zeros((5, 4), bool)
    match[0, 0] = match[1, 1] = match[2, 1] = match[3, 2] = True
    assert tool.oracle_points(cand, match, 0.5) == 1      # point 0 covers 2 of 4
    assert tool.oracle_points(cand, match, 0.75) == 2     # + point 2
    assert tool.oracle_points(cand, match, 1.0) == -1     # exact mask 3 has no producer


def test_subset_recall_reruns_box_nms():
    tool = load_tool("prompt_producers")
    a, a2, b = square(2, 2, 10), square(2, 2, 11), square(25, 25, 8)
    # point 0: a2 (high score), point 1: a, point 2: b. Exact masks: a and b.
    cand = candidates([0, 1, 2], [a2, a, b], [0.99, 0.95, 0.9], n=2)
    match = np.array(mask_utils.iou(cand["rles"], [rle(a), rle(b)], [0, 0])) >= 0.9
    assert match[0, 0] == (100 / 121 >= 0.9)  # a2 vs a: IoU 0.83, no match
    # all points: box NMS keeps a2 over a (box IoU 0.83 > 0.7): a is lost, b found.
    assert tool.subset_recall(cand, match, {0, 1, 2}, 0.7) == 0.5
    # without point 0, a survives NMS and is found.
    assert tool.subset_recall(cand, match, {1, 2}, 0.7) == 1.0
    assert tool.subset_recall(cand, match, set(), 0.7) == 0.0


def test_agreement_rule_skips_only_between_agreeing_neighbours():
    tool = load_tool("prompt_producers")
    n = 4
    big, small = square(0, 0, 30), square(31, 31, 5)
    # Points 0 and 2 of row 0 and rows 2 (8, 10) keep the same mask; point 10 also a second one.
    grid, masks = [], []
    for p in (0, 2, 8):
        grid.append(p); masks.append(big)
    grid += [10, 10]; masks += [big, small]
    cand = candidates(grid, masks, [0.9] * len(grid), n)
    prompted = tool.agreement_points(cand, (2, 1))
    # lattice of spacing 2 first: 0, 2, 8, 10.
    assert {0, 2, 8, 10} <= prompted
    # 1 lies between 0 and 2 (same single mask): skipped; 4 between 0 and 8: skipped;
    # 9 between 8 and 10 (1 mask vs 2): prompted; 5 (0, 2, 8, 10 around it): prompted;
    # 3 (edge column, one coarse neighbour 2): prompted.
    assert 1 not in prompted and 4 not in prompted
    assert {9, 5, 3} <= prompted
