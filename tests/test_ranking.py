"""Proposal ranking (``max_masks``, ``nested_mask_penalty``): exact values on hand-made masks,
and the generator's budget on a real photo with the real weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from amg.config import AMGConfig, ConfigError
from amg.ranking import containment_matrix, defer_duplicates, nesting_depth, rank_masks
from amg.rle import bytes_counts, coco_encode_rle, masks_to_rle, str_counts

from .conftest import read_photo


def _nested_masks():
    """Four 10 x 10 masks: 0 the whole image (100 px), 1 a 6 x 6 square inside it (36 px),
    2 a 2 x 2 square inside both (4 px), 3 a 2 x 2 square in a corner, inside 0 only."""
    m = torch.zeros(4, 10, 10, dtype=torch.bool)
    m[0] = True
    m[1, 2:8, 2:8] = True
    m[2, 3:5, 3:5] = True
    m[3, 0:2, 8:10] = True
    return masks_to_rle(m), m.sum((1, 2)).numpy()


def test_containment_matrix_exact():
    rles, _ = _nested_masks()
    c = containment_matrix(rles)
    expected = np.array([[1, 36 / 100, 4 / 100, 4 / 100],
                         [1, 1, 4 / 36, 0],
                         [1, 1, 1, 0],
                         [1, 0, 0, 1]])
    np.testing.assert_allclose(c, expected, rtol=0, atol=1e-12)
    assert containment_matrix([]).shape == (0, 0)
    # COCO RLE (str or bytes counts, as the evaluation cache keeps masks) gives the same matrix.
    coco = [coco_encode_rle(r) for r in rles]
    np.testing.assert_allclose(containment_matrix([str_counts(r) for r in coco]), expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(containment_matrix([bytes_counts(r) for r in coco]), expected, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="different sizes"):
        containment_matrix([str_counts(coco[0]), {"size": [5, 20], "counts": [100]}])


def test_nesting_depth_exact():
    rles, areas = _nested_masks()
    assert nesting_depth(rles, areas).tolist() == [0, 1, 2, 1]
    # 3 of 4 pixels inside (0.75 < 0.9) does not count as nested; 9 of 10 does.
    m = torch.zeros(3, 10, 10, dtype=torch.bool)
    m[0, :5] = True                      # top half, 50 px
    m[1, 4:6, 0:2] = True                # 4 px, 2 of them in the top half
    m[2, 4, 0:9] = True
    m[2, 5, 0] = True                    # 10 px, 9 in the top half
    rles2 = masks_to_rle(m)
    assert nesting_depth(rles2, m.sum((1, 2)).numpy()).tolist() == [0, 0, 1]
    # equal areas never contain each other
    same = masks_to_rle(torch.ones(2, 4, 4, dtype=torch.bool))
    assert nesting_depth(same, [16, 16]).tolist() == [0, 0]
    with pytest.raises(ValueError, match="areas has 3 entries for 4 masks"):
        nesting_depth(rles, areas[:3])


def test_rank_masks_exact():
    rles, areas = _nested_masks()
    iou = torch.tensor([0.90, 0.95, 0.99, 0.905])
    # By predicted IoU alone the two best are the parts 2 and 1.
    assert rank_masks(rles, iou, areas, 2).tolist() == [1, 2]
    # Penalty 0.05 per containing mask: scores 0.90, 0.90, 0.89, 0.855 -> masks 0 and 1
    # (0.95 - 0.05 rounds just below 0.90: the earlier mask 0 wins the tie either way).
    assert rank_masks(rles, iou, areas, 2, nested_mask_penalty=0.05).tolist() == [0, 1]
    assert rank_masks(rles, iou, areas, 3, nested_mask_penalty=0.05).tolist() == [0, 1, 2]
    # Budget not exceeded: everything, in order.
    assert rank_masks(rles, iou, areas, 4, nested_mask_penalty=0.05).tolist() == [0, 1, 2, 3]
    assert rank_masks(rles, iou, areas, 10).tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="max_masks must be >= 1"):
        rank_masks(rles, iou, areas, 0)
    with pytest.raises(ValueError, match="nested_mask_penalty must be >= 0"):
        rank_masks(rles, iou, areas, 2, nested_mask_penalty=-0.1)
    with pytest.raises(ValueError, match="predicted_iou has 3 entries for 4 masks"):
        rank_masks(rles, iou[:3], areas, 2)


def _duplicate_masks():
    """Four 10 x 10 masks: 0 rows 0-4 (50 px); 1 rows 0-3 (40 px, mask IoU 0.8 with 0);
    2 rows 6-9, columns 0-4 (20 px); 3 rows 6-9, columns 6-9 (16 px). 2 and 3 are disjoint
    from the others."""
    m = torch.zeros(4, 10, 10, dtype=torch.bool)
    m[0, 0:5] = True
    m[1, 0:4] = True
    m[2, 6:10, 0:5] = True
    m[3, 6:10, 6:10] = True
    return masks_to_rle(m), m.sum((1, 2)).numpy()


def test_defer_duplicates_exact():
    iou = np.array([[1.0, 0.8, 0.0, 0.0],
                    [0.8, 1.0, 0.0, 0.5],
                    [0.0, 0.0, 1.0, 0.75],
                    [0.0, 0.5, 0.75, 1.0]])
    main = np.zeros(4, dtype=np.int64)
    # Walk 0, 1, 2, 3: 1 duplicates 0 (0.8 > 0.7); 3 duplicates 2 (0.75); 3's 0.5 with the
    # duplicate 1 would not count anyway.
    assert defer_duplicates(np.array([0, 1, 2, 3]), iou, main, 0.7).tolist() == [0, 2, 1, 3]
    # At 0.8 only 3 is a duplicate (0.8 is not above 0.8).
    assert defer_duplicates(np.array([0, 1, 2, 3]), iou, main, 0.8).tolist() == [0, 1, 2, 3]
    assert defer_duplicates(np.array([1, 0, 3, 2]), iou, main, 0.7).tolist() == [1, 3, 0, 2]
    # Groups stay apart: main 0, 1 then reserve 2, 3; the main duplicate 1 stays before them.
    groups = np.array([0, 0, 1, 1])
    assert defer_duplicates(np.array([0, 1, 2, 3]), iou, groups, 0.7).tolist() == [0, 1, 2, 3]
    # A reserve mask is a duplicate of a main one too.
    iou2 = iou.copy()
    iou2[0, 2] = iou2[2, 0] = 0.9
    assert defer_duplicates(np.array([0, 1, 2, 3]), iou2, groups, 0.7).tolist() == [0, 1, 3, 2]


def test_rank_masks_defers_duplicates():
    rles, areas = _duplicate_masks()
    pred = torch.tensor([0.95, 0.94, 0.9, 0.85])
    # By predicted IoU the near-copy 1 takes a place; deferred (mask IoU 0.8 > 0.7), mask 3 does.
    assert rank_masks(rles, pred, areas, 3).tolist() == [0, 1, 2]
    assert rank_masks(rles, pred, areas, 3, duplicate_mask_iou=0.7).tolist() == [0, 2, 3]
    assert rank_masks(rles, pred, areas, 3, duplicate_mask_iou=0.85).tolist() == [0, 1, 2]
    # With reserve masks, the deferred main mask still ranks before every reserve mask.
    reserve = [False, False, True, True]
    assert rank_masks(rles, pred, areas, 2, 0.0, reserve, 0.7).tolist() == [0, 1]
    assert rank_masks(rles, pred, areas, 3, 0.0, reserve, 0.7).tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="duplicate_mask_iou must be in"):
        rank_masks(rles, pred, areas, 3, duplicate_mask_iou=0.0)
    with pytest.raises(ValueError, match="areas has 3 entries for 4 masks"):
        rank_masks(rles, pred, areas[:3], 3, duplicate_mask_iou=0.7)


@pytest.mark.parametrize("params, name", [
    ({"max_masks": 0}, "max_masks"), ({"max_masks": 2.5}, "max_masks"),
    ({"max_masks": 10, "duplicate_mask_iou": 0.0}, "duplicate_mask_iou"),
    ({"max_masks": 10, "duplicate_mask_iou": 1.5}, "duplicate_mask_iou"),
    ({"duplicate_mask_iou": 0.7}, "duplicate_mask_iou"),
    ({"nested_mask_penalty": -0.01}, "nested_mask_penalty"),
    ({"nested_mask_penalty": "a"}, "nested_mask_penalty"),
])
def test_config_checks_the_budget(params, name):
    with pytest.raises(ConfigError, match=name):
        AMGConfig(**params)


def test_generator_keeps_the_best_masks_of_its_full_set(mobile_sam):
    """On a real photo: with a budget, the output is exactly the budget's best masks of the
    unbudgeted output (same records, same order), ranked by predicted IoU minus the penalty
    per containing mask, recomputed here from the records themselves."""
    from pycocotools import mask as mask_utils

    from amg import MaskGenerator
    image = read_photo("groceries.jpg")
    params = dict(points_per_side=12, output_mode="coco_rle", pred_iou_thresh=0.8,
                  stability_score_thresh=0.9)
    full = MaskGenerator(mobile_sam, **params).generate(image)
    assert len(full) >= 40
    k, penalty = 25, 0.03
    capped = MaskGenerator(mobile_sam, max_masks=k, nested_mask_penalty=penalty,
                           **params).generate(image)
    assert len(capped) == k
    # the expected choice, from the full output's records (pycocotools, not amg.ranking)
    segs = [r["segmentation"] for r in full]
    area = np.array([r["area"] for r in full], dtype=np.float64)
    inside = np.asarray(mask_utils.iou(segs, segs, [1] * len(segs))) >= 0.9
    depth = (inside & (area[None, :] > area[:, None])).sum(1)
    score = np.array([r["predicted_iou"] for r in full]) - penalty * depth
    best = sorted(np.argsort(-score, kind="stable")[:k].tolist())
    assert capped == [full[i] for i in best]
    assert depth.max() >= 2  # the photo has nested masks, so the penalty is exercised
    # Without the penalty: the k highest predicted IoUs.
    by_iou = MaskGenerator(mobile_sam, max_masks=k, **params).generate(image)
    top = sorted(np.argsort(-np.array([r["predicted_iou"] for r in full]), kind="stable")[:k].tolist())
    assert by_iou == [full[i] for i in top]
    assert by_iou != capped
    # A budget above the mask count changes nothing.
    assert MaskGenerator(mobile_sam, max_masks=len(full), nested_mask_penalty=penalty,
                         **params).generate(image) == full


def test_generator_defers_duplicates_of_its_full_set(mobile_sam):
    """On a real photo: with ``duplicate_mask_iou``, the budget keeps the first masks of the
    unbudgeted output ordered by predicted IoU with every mask whose mask IoU (pycocotools)
    with a better non-duplicate exceeds the threshold moved last, recomputed here from the
    records."""
    from pycocotools import mask as mask_utils

    from amg import MaskGenerator
    image = read_photo("groceries.jpg")
    params = dict(points_per_side=12, output_mode="coco_rle", pred_iou_thresh=0.8,
                  stability_score_thresh=0.9)
    full = MaskGenerator(mobile_sam, **params).generate(image)
    k, thr = 25, 0.5
    segs = [r["segmentation"] for r in full]
    iou = np.asarray(mask_utils.iou(segs, segs, [0] * len(segs)))
    order = np.argsort(-np.array([r["predicted_iou"] for r in full]), kind="stable")
    first, dups = [], []
    for i in order:
        (dups if first and iou[i, first].max() > thr else first).append(int(i))
    assert len(dups) >= 1 and len(first) < len(full)  # the photo has duplicates at 0.5
    expected = [full[i] for i in sorted((first + dups)[:k])]
    got = MaskGenerator(mobile_sam, max_masks=k, duplicate_mask_iou=thr, **params).generate(image)
    assert got == expected
    # A duplicate among the k highest predicted IoUs, and enough distinct masks to replace it.
    assert len(first) >= k and any(i in dups for i in order[:k].tolist())
    assert got != MaskGenerator(mobile_sam, max_masks=k, **params).generate(image)
