"""Filters on finished records (:mod:`amg.dataset.record_filters`): area bounds, mask-IoU NMS
against a brute-force greedy suppression, exact thresholds, and the fixed filter order."""

from __future__ import annotations

import numpy as np
import pytest

from amg.dataset.record_filters import apply_record_filters, filter_by_area, mask_nms

from .mask_cases import box_mask, random_blob, record

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def test_filter_by_area_bounds_inclusive():
    recs = [record(box_mask((10, 10), 0, 0, k, 1)) for k in (1, 3, 5, 7)]  # areas 1, 3, 5, 7
    assert [r["area"] for r in filter_by_area(recs, 3, 5)] == [3, 5]
    assert [r["area"] for r in filter_by_area(recs, min_area=4)] == [5, 7]
    assert [r["area"] for r in filter_by_area(recs, max_area=1)] == [1]
    assert filter_by_area(recs) == recs
    with pytest.raises(ValueError, match="min_area"):
        filter_by_area(recs, 5, 3)


def slow_greedy_mask_nms(masks, ious, thresh):
    def iou(a, b):
        return (a & b).sum() / (a | b).sum()
    order = sorted(range(len(masks)), key=lambda i: (-ious[i], i))
    kept = []
    for i in order:
        if all(iou(masks[i], masks[j]) <= thresh for j in kept):
            kept.append(i)
    return sorted(kept)


@pytest.mark.parametrize("seed", range(4))
def test_mask_nms_matches_slow_greedy(seed):
    rng = np.random.default_rng(seed)
    base = [random_blob(rng, (40, 50), sigma=4.0, level=0.5) for _ in range(4)]
    masks = []
    for b in base:  # near-duplicates of each base mask, and the base itself
        masks.append(b)
        for _ in range(2):
            m = b.copy()
            m[rng.integers(0, 40, 60), rng.integers(0, 50, 60)] ^= True
            masks.append(m)
    masks = [m for m in masks if m.any()]
    ious = [float(v) for v in rng.choice(np.linspace(0.8, 1.0, 5), len(masks))]  # ties included
    recs = [record(m, iou) for m, iou in zip(masks, ious)]
    for thresh in (0.5, 0.8, 0.95, 1.0):
        kept = mask_nms(recs, thresh)
        expected = slow_greedy_mask_nms(masks, ious, thresh)
        assert [recs.index(r) for r in kept] == expected


def test_mask_nms_at_threshold_keeps_and_orders():
    a = box_mask((10, 10), 0, 0, 4, 5)     # 20 px
    b = box_mask((10, 10), 0, 0, 5, 5)     # 25 px, IoU(a, b) = 0.8 exactly
    recs = [record(a, 0.90), record(b, 0.95)]
    assert mask_nms(recs, 0.8) == recs                # IoU not above the threshold: both kept
    assert mask_nms(recs, 0.79) == [recs[1]]          # the higher predicted IoU wins
    assert mask_nms([], 0.5) == [] and mask_nms(recs[:1], 0.5) == recs[:1]
    with pytest.raises(ValueError, match="mask_nms_thresh"):
        mask_nms(recs, 0.0)
    # Area first, then NMS: b is too big, so it cannot suppress a.
    assert apply_record_filters(recs, max_area=20, mask_nms_thresh=0.5) == [recs[0]]
