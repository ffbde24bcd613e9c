"""Class-agnostic segmentation recall with pycocotools, and AR read from it.

One evaluation with ``params.maxDets = RECALL_MAX_DETS`` (a superset of ``[10, 100, 1000]``
ending in 1000) gives every number at once: pycocotools matches the top ``maxDets[-1]``
proposals of each image once and ``accumulate`` then truncates each image's score-sorted
proposals to each ``maxDets`` entry, so the values at 10/100/1000 are those of
``maxDets = [10, 100, 1000]`` (tested). The numbers are read from ``COCOeval.eval['recall']``
by the areaRng and maxDets indexes, not from ``summarize()``, whose indexes are hard-coded.
"""

from __future__ import annotations

import contextlib
import io
from typing import Any, Sequence

from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from .errors import EvaluationError
from .ground_truth import OBJECT_CATEGORY

__all__ = ["RECALL_MAX_DETS", "REPORT_MAX_DETS", "AREA_LABELS", "evaluate_proposals",
           "average_recall", "recall_summary"]

#: Proposal budgets at which recall is computed (one pycocotools evaluation; ends in 1000).
RECALL_MAX_DETS = (1, 2, 3, 5, 7, 10, 20, 30, 50, 70, 100, 200, 300, 500, 700, 1000)
#: Budgets of the report's AR columns.
REPORT_MAX_DETS = (10, 100, 1000)
#: pycocotools' area-range labels, in the order of ``COCOeval.params.areaRng``.
AREA_LABELS = ("all", "small", "medium", "large")


def evaluate_proposals(gt: COCO, proposals: Sequence[dict[str, Any]], image_ids: Sequence[int],
                       max_dets: Sequence[int] = RECALL_MAX_DETS) -> COCOeval:
    """Class-agnostic segmentation recall of proposals with pycocotools.

    Args:
        gt: class-agnostic ground truth (:func:`class_agnostic_coco`).
        proposals: COCO result dicts (``image_id``, ``segmentation`` COCO RLE, ``score``);
            ``category_id`` is ignored (``useCats = 0``). May be empty.
        image_ids: the images evaluated; ground truth of other images is not counted, and an
            image here without proposals counts all its objects as missed.
        max_dets: increasing proposal budgets per image; the largest one caps the matching.

    Returns:
        the accumulated ``COCOeval`` (``eval['recall']``: (T=10 IoU thresholds, K=1, A=4 area
        ranges, M=len(max_dets)), -1 where there is no ground truth). pycocotools' printing is
        suppressed.

    Raises:
        EvaluationError: proposals for images outside ``image_ids`` or unknown to ``gt``, or
            ``max_dets`` not increasing.
    """
    ids = [int(i) for i in image_ids]
    unknown = sorted({int(i) for i in ids} - set(gt.imgs))
    if unknown:
        raise EvaluationError(f"image ids not in the ground truth: {unknown}")
    stray = sorted({int(p["image_id"]) for p in proposals} - set(ids))
    if stray:
        raise EvaluationError(f"proposals for image ids outside the evaluated set: {stray}")
    md = [int(m) for m in max_dets]
    if not md or any(b <= a for a, b in zip(md, md[1:])) or md[0] < 1:
        raise EvaluationError(f"max_dets must be increasing positive integers, got {list(max_dets)}")

    dt = COCO()
    anns = []
    for i, p in enumerate(proposals, start=1):
        seg = p["segmentation"]
        anns.append({"id": i, "image_id": int(p["image_id"]), "category_id": OBJECT_CATEGORY["id"],
                     "segmentation": seg, "score": float(p["score"]), "iscrowd": 0,
                     "area": float(mask_utils.area(seg)),
                     "bbox": mask_utils.toBbox(seg).tolist()})
    dt.dataset = {"images": [gt.imgs[i] for i in ids], "annotations": anns,
                  "categories": [dict(OBJECT_CATEGORY)]}
    with contextlib.redirect_stdout(io.StringIO()):
        dt.createIndex()
        ev = COCOeval(gt, dt, "segm")
        ev.params.imgIds = ids
        ev.params.catIds = [OBJECT_CATEGORY["id"]]
        ev.params.useCats = 0
        ev.params.maxDets = md
        ev.evaluate()
        ev.accumulate()
    return ev


def average_recall(ev: COCOeval, max_dets: int = 1000, area: str = "all") -> float:
    """AR: recall averaged over the IoU thresholds, read from ``ev.eval['recall']``.

    Args:
        ev: an accumulated :class:`COCOeval` (:func:`evaluate_proposals`).
        max_dets: a budget present in ``ev.params.maxDets``.
        area: ``all``, ``small``, ``medium`` or ``large`` (an ``areaRngLbl`` of ``ev``).

    Returns:
        the mean over IoU thresholds of the recall, entries of -1 (no ground truth) ignored;
        NaN when there is no ground truth at all in that area range.

    Raises:
        EvaluationError: ``max_dets`` or ``area`` not among the evaluation's indexes.
    """
    p = ev.params
    if max_dets not in p.maxDets:
        raise EvaluationError(f"max_dets {max_dets} not evaluated (maxDets = {list(p.maxDets)})")
    if area not in p.areaRngLbl:
        raise EvaluationError(f"area {area!r} not evaluated (areaRngLbl = {list(p.areaRngLbl)})")
    r = ev.eval["recall"][:, :, p.areaRngLbl.index(area), list(p.maxDets).index(max_dets)]
    r = r[r > -1]
    return float(r.mean()) if r.size else float("nan")


def recall_summary(ev: COCOeval) -> dict[str, Any]:
    """The report's numbers from one evaluation.

    Returns:
        ``{"AR@10", "AR@100", "AR@1000"}`` (all sizes, present budgets of REPORT_MAX_DETS),
        ``AR_small@1000``, ``AR_medium@1000``, ``AR_large@1000`` (at the largest budget) and
        ``recall_curve``: ``{"max_dets": [...], "AR": [...]}`` over every evaluated budget.
        Values are floats in [0, 1] or NaN.
    """
    md = list(ev.params.maxDets)
    out: dict[str, Any] = {f"AR@{m}": average_recall(ev, m) for m in REPORT_MAX_DETS if m in md}
    for area in AREA_LABELS[1:]:
        out[f"AR_{area}@{md[-1]}"] = average_recall(ev, md[-1], area)
    out["recall_curve"] = {"max_dets": md, "AR": [average_recall(ev, m) for m in md]}
    return out
