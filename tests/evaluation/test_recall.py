"""Proposal recall (:mod:`amg.evaluation.recall`) on hand-made ground truth: exact AR values,
the proposal score and ranking, crowd regions, the evaluated image set, and one evaluation with
the extended budgets equal to pycocotools' standard one and its ``summarize()``."""

from __future__ import annotations

import contextlib
import io
import math

import numpy as np
import pytest

from amg.evaluation.errors import EvaluationError
from amg.evaluation.proposals import records_to_proposals
from amg.evaluation.recall import RECALL_MAX_DETS, average_recall, evaluate_proposals

from .cases import LARGE, MEDIUM, SMALL, H, W, ar, box, gt, junk, record


def test_gt_masks_as_proposals_give_recall_one():
    coco = gt([(1, SMALL), (1, MEDIUM), (1, LARGE)])
    s = ar(coco, [record(SMALL), record(MEDIUM), record(LARGE)])
    for k in ("AR@10", "AR@100", "AR@1000", "AR_small@1000", "AR_medium@1000", "AR_large@1000"):
        assert s[k] == 1.0, k
    assert s["recall_curve"]["max_dets"] == list(RECALL_MAX_DETS)
    # One proposal per image is enough for 1 of 3 objects.
    assert s["recall_curve"]["AR"][:3] == pytest.approx([1 / 3, 2 / 3, 1.0], abs=1e-12)


def test_empty_proposals_give_zero():
    coco = gt([(1, SMALL), (1, LARGE)])
    s = ar(coco, [])
    assert s["AR@10"] == s["AR@100"] == s["AR@1000"] == 0.0
    assert s["AR_small@1000"] == 0.0 and s["AR_large@1000"] == 0.0
    assert math.isnan(s["AR_medium@1000"])  # no medium ground truth: -1 entries ignored -> NaN


@pytest.mark.parametrize("n_junk, ar10", [(8, 1.0), (9, 0.5)])
def test_one_of_two_gt_within_budget(n_junk, ar10):
    # A first, then n_junk misses, then B: B is proposal n_junk + 2 of the image.
    coco = gt([(1, MEDIUM), (1, LARGE)])
    recs = [record(MEDIUM, 0.99, 0.99)] + [record(m, 0.9, 0.9) for m in junk(n_junk)] + \
        [record(LARGE, 0.5, 0.5)]
    s = ar(coco, recs)
    assert s["AR@10"] == ar10
    assert s["AR@100"] == 1.0 and s["AR@1000"] == 1.0
    curve = dict(zip(s["recall_curve"]["max_dets"], s["recall_curve"]["AR"]))
    assert curve[1] == 0.5 and curve[20] == 1.0


def test_one_proposal_matching_one_of_two_gt_gives_half():
    coco = gt([(1, MEDIUM), (1, LARGE)])
    s = ar(coco, [record(LARGE)])
    assert s["AR@10"] == s["AR@100"] == s["AR@1000"] == 0.5
    assert s["AR_medium@1000"] == 0.0 and s["AR_large@1000"] == 1.0


@pytest.mark.parametrize("true_first", [True, False])
def test_score_is_mean_of_predicted_iou_and_stability_and_ranking_decides_ar10(true_first):
    # 11 misses, each scored (0.7 + 0.9) / 2 = 0.8; the hit has predicted IoU 1.0 (the highest
    # predicted IoU of all) but its mean score is 0.85 above them or 0.75 below them.
    coco = gt([(1, LARGE)])
    hit = record(LARGE, 1.0, 0.7 if true_first else 0.5)
    recs = [record(m, 0.7, 0.9) for m in junk(11)] + [hit]
    s = ar(coco, recs)
    assert s["AR@10"] == (1.0 if true_first else 0.0)
    assert s["AR@100"] == 1.0


def test_recall_is_averaged_over_iou_thresholds():
    # IoU 72/100 = 0.72: a hit at 0.50, 0.55, 0.60, 0.65, 0.70, a miss at 0.75..0.95.
    coco = gt([(1, SMALL)])
    s = ar(coco, [record(box(0, 8, 0, 9))])
    assert s["AR@1000"] == pytest.approx(0.5, abs=1e-12)


def test_crowd_ground_truth_is_ignored():
    crowd = box(100, 200, 0, 60)
    coco = gt([(1, MEDIUM)], crowd=[(1, crowd), (2, LARGE)], images=(1, 2))
    # The crowd regions are not objects to find: finding MEDIUM is full recall ...
    assert ar(coco, [record(MEDIUM)], image_ids=(1, 2))["AR@1000"] == 1.0
    # ... and a proposal equal to a crowd region recalls nothing.
    s = ar(coco, [record(crowd), {**record(LARGE), "image": 2}], image_ids=(1, 2))
    assert s["AR@1000"] == 0.0
    # An image with only crowd ground truth has no objects: recall undefined (NaN).
    assert math.isnan(ar(coco, [], image_ids=(2,))["AR@1000"])


def test_only_evaluated_images_count():
    coco = gt([(1, MEDIUM), (2, LARGE)], images=(1, 2))
    assert ar(coco, [record(MEDIUM)], image_ids=(1,))["AR@1000"] == 1.0
    assert ar(coco, [record(MEDIUM)], image_ids=(1, 2))["AR@1000"] == 0.5
    with pytest.raises(EvaluationError, match=r"outside the evaluated set: \[2\]"):
        evaluate_proposals(coco, records_to_proposals([record(LARGE)], 2, H, W), [1])
    with pytest.raises(EvaluationError, match=r"not in the ground truth: \[3\]"):
        evaluate_proposals(coco, [], [1, 3])


@pytest.mark.parametrize("seed", [0, 1])
def test_extended_max_dets_equal_standard_and_summarize(seed):
    # Random boxes on 3 images, up to 40 proposals each: our one evaluation with RECALL_MAX_DETS
    # gives the same AR@10/100/1000 (and per size) as maxDets = [10, 100, 1000], and these equal
    # pycocotools' own summarize() for that standard list (stats[6:12]).
    rng = np.random.default_rng(seed)

    def rand_box():
        y0, x0 = rng.integers(0, 150, 2)
        hh, ww = rng.integers(3, 110, 2)
        return box(y0, min(y0 + hh, H), x0, min(x0 + ww, W))

    objects = [(img, m) for img in (1, 2, 3) for m in [SMALL, MEDIUM, LARGE, *(rand_box() for _ in range(5))]]
    coco = gt(objects, images=(1, 2, 3))
    props = []
    for img in (1, 2, 3):
        recs = [record(rand_box(), *rng.uniform(0.5, 1.0, 2)) for _ in range(40)]
        recs += [record(m, *rng.uniform(0.5, 1.0, 2)) for i, m in objects if i == img and rng.random() < 0.5]
        props += records_to_proposals(recs, img, H, W)
    ext = evaluate_proposals(coco, props, [1, 2, 3])
    std = evaluate_proposals(coco, props, [1, 2, 3], max_dets=[10, 100, 1000])
    for m in (10, 100, 1000):
        assert average_recall(ext, m) == average_recall(std, m)
    for area in ("small", "medium", "large"):
        assert average_recall(ext, 1000, area) == average_recall(std, 1000, area)
    with contextlib.redirect_stdout(io.StringIO()):
        std.summarize()
    ours = [average_recall(std, 10), average_recall(std, 100), average_recall(std, 1000),
            *(average_recall(std, 1000, a) for a in ("small", "medium", "large"))]
    ref = [v if v != -1 else float("nan") for v in std.stats[6:12]]
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-12)
    assert 0 < average_recall(ext, 10) < average_recall(ext, 100) <= 1


def test_average_recall_rejects_unevaluated_index():
    ev = evaluate_proposals(gt([(1, SMALL)]), [], [1], max_dets=[10, 100])
    with pytest.raises(EvaluationError, match="max_dets 1000 not evaluated"):
        average_recall(ev, 1000)
    with pytest.raises(EvaluationError, match="area 'tiny'"):
        average_recall(ev, 10, "tiny")
    with pytest.raises(EvaluationError, match="increasing"):
        evaluate_proposals(gt([(1, SMALL)]), [], [1], max_dets=[100, 10])
