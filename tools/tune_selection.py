#!/usr/bin/env python3
"""Choose a preset's selection constants on the tuning half, from one cached pool of masks.

A *pool* is one ``tools/evaluate.py`` cache row run with filters looser than any candidate
without box NMS (``--split tune --preset
"default:pred_iou_thresh=0.5,stability_score_thresh=0.6,box_nms_thresh=1.0"``).
This tool reads that row's cached masks (RLE, predicted IoU, stability score) and replays, for
every combination of the constants given, the selection steps of ``MaskGenerator`` that act on
finished masks of one crop layer — the predicted-IoU and stability filters, box NMS, and the
``max_masks`` budget ranked by
``predicted_iou - nested_mask_penalty * nesting depth``, duplicates optionally last
(``amg/ranking.py``) — then scores the
selection with the evaluation of ``tools/evaluate.py`` (class-agnostic AR, pycocotools).
It only reads masks, so a grid of hundreds of combinations takes minutes instead of one
generator run each; replaying the reference filters gives the ``default`` row's AR on the same
images. Steps that change masks (zoomed refinement, hole filling) or need more crops are not
replayed: they are measured by real ``tools/evaluate.py`` runs.

    python3 tools/evaluate.py --split tune --cache .eval_cache \\
        --preset "default:pred_iou_thresh=0.5,stability_score_thresh=0.6,box_nms_thresh=1.0"
    python3 tools/tune_selection.py .eval_cache/default_pred_iou_thresh=0.5_*-<hash> --split tune \\
        --pred-iou 0.88,0.8,0.7 --stability 0.95,0.9,0.85 --penalty 0,0.03 --max-masks 100,1000

Prints one line per combination, best AR@100 first (``--rank-by 1000``: best AR@1000), with
AR@10/100/1000 and AR small/medium/large at the ranking budget. Exit code 0; 2 for bad arguments (the message names the folder or option).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils
import torch
from torchvision.ops import batched_nms

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from amg.evaluation.errors import EvaluationError  # noqa: E402
from amg.evaluation.ground_truth import DEFAULT_DATASET, SPLITS, load_dataset  # noqa: E402
from amg.evaluation.recall import average_recall, evaluate_proposals  # noqa: E402
from amg.evaluation.proposals import proposal_score  # noqa: E402
from amg.ranking import rank_masks  # noqa: E402
from amg.rle import bytes_counts  # noqa: E402


def _numbers(kind: type) -> Any:
    """An argparse type: comma-separated numbers of ``kind`` (a bad value exits with code 2)."""
    def parse(text: str) -> list:
        try:
            return [kind(t) for t in text.split(",") if t.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{kind.__name__} values separated by commas expected, got {text!r}")
    return parse


def load_pool(row_dir: Path, image_ids: list[int]) -> dict[int, dict[str, Any]]:
    """Per image: the pool's masks and what the selection needs of them.

    Returns:
        ``{image_id: {"masks": [cached record: COCO RLE, predicted IoU, stability score],
        "rles": [COCO RLE, bytes counts], "iou": (N,) float32 predicted IoU, "stab": (N,)
        float32 stability score, "boxes": (N, 4) float32 XYXY inclusive pixel boxes (as
        ``MaskGenerator`` computes them), "area": (N,) int64 pixels}}``.

    Raises:
        EvaluationError: an image has no cached file in ``row_dir``.
    """
    pool = {}
    for iid in image_ids:
        f = row_dir / f"{iid}.json"
        if not f.is_file():
            raise EvaluationError(f"{row_dir}: no cached masks for image {iid} (run tools/evaluate.py first)")
        masks = json.loads(f.read_text())["masks"]
        rles = [bytes_counts(m["segmentation"]) for m in masks]
        xywh = mask_utils.toBbox(rles).reshape(-1, 4) if rles else np.zeros((0, 4))
        boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:] - 1], axis=1)
        pool[iid] = {"masks": masks, "rles": rles, "boxes": torch.from_numpy(boxes.astype(np.float32)),
                     "area": np.array([mask_utils.area(r) for r in rles], dtype=np.int64),
                     "iou": np.array([m["predicted_iou"] for m in masks], dtype=np.float32),
                     "stab": np.array([m["stability_score"] for m in masks], dtype=np.float32)}
    return pool


def select(p: dict[str, Any], pred_iou: float, stability: float, nms: float, penalty: float,
           max_masks: int, stability_weight: float = 0.0,
           duplicate_iou: float | None = None) -> np.ndarray:
    """Indices that ``MaskGenerator`` keeps from a pool generated without box NMS, for one crop
    layer and no reserve masks: the predicted-IoU (``>``) and stability (``>=``) filters, box
    NMS at ``nms`` by predicted IoU (``torchvision.ops.batched_nms``, float32), then the
    ``max_masks`` budget of :func:`amg.ranking.rank_masks` with ``penalty``, ranking by
    ``(1 - stability_weight) * predicted IoU + stability_weight * stability score``, with
    duplicates beyond mask IoU ``duplicate_iou`` ranked last (``duplicate_mask_iou``)."""
    keep = np.flatnonzero((p["iou"] > np.float32(pred_iou)) & (p["stab"] >= np.float32(stability)))
    if len(keep) == 0:
        return keep
    iou_t = torch.from_numpy(p["iou"][keep])
    kept = batched_nms(p["boxes"][keep], iou_t, torch.zeros(len(keep), dtype=torch.int64), nms)
    keep = np.sort(keep[kept.numpy()])
    score = (1 - stability_weight) * p["iou"][keep] + stability_weight * p["stab"][keep]
    best = rank_masks([p["rles"][i] for i in keep], score, p["area"][keep], max_masks, penalty,
                      duplicate_mask_iou=duplicate_iou)
    return keep[best.numpy()]


def main(argv: list[str] | None = None) -> int:
    """Replay the selection grid; returns the exit code."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("pool", type=Path, help="a cache row folder of tools/evaluate.py (holds <image id>.json)")
    ap.add_argument("--dataset", type=Path, default=DEFAULT_DATASET)
    ap.add_argument("--split", choices=SPLITS, default="tune")
    floats, ints = _numbers(float), _numbers(int)
    ap.add_argument("--pred-iou", type=floats, default=[0.88],
                    help="predicted-IoU thresholds to try (comma-separated)")
    ap.add_argument("--stability", type=floats, default=[0.95], help="stability-score thresholds to try")
    ap.add_argument("--nms", type=floats, default=[0.7], help="box_nms_thresh values to try")
    ap.add_argument("--penalty", type=floats, default=[0.0], help="nested_mask_penalty values to try")
    ap.add_argument("--max-masks", type=ints, default=[100], help="budgets to try")
    ap.add_argument("--stability-weight", type=floats, default=[0.0],
                    help="weights w of the stability score in the budget's ranking score "
                         "(1 - w) * predicted IoU + w * stability score, to try")
    ap.add_argument("--duplicate-iou", type=_numbers(str), default=["none"],
                    help="duplicate_mask_iou values to try: thresholds in (0, 1] or 'none' (off)")
    ap.add_argument("--rank-by", type=int, choices=(100, 1000), default=100,
                    help="sort the combinations by AR at this budget (default 100)")
    ap.add_argument("--limit", type=int, default=None, help="the first N images of the half only")
    ap.add_argument("--top", type=int, default=20, help="print the best N combinations")
    ap.add_argument("--partial", action="store_true",
                    help="use the split's images that the pool has so far (a pool still running)")
    args = ap.parse_args(argv)
    try:
        dup_values = [None if v.lower() == "none" else float(v) for v in args.duplicate_iou]
    except ValueError:
        ap.error(f"--duplicate-iou: numbers or 'none' separated by commas expected, got {args.duplicate_iou}")
    if any(v is not None and not 0.0 < v <= 1.0 for v in dup_values):
        ap.error(f"--duplicate-iou: thresholds must be in (0, 1], got {args.duplicate_iou}")
    grid = list(itertools.product(args.pred_iou, args.stability, args.nms, args.penalty, args.max_masks,
                                  args.stability_weight, dup_values))
    try:
        ds = load_dataset(args.dataset / "annotations" / "instances_val2017.json",
                          args.dataset / "val2017", split=args.split, limit=args.limit)
        ids = ds.image_ids
        if args.partial:
            ids = [i for i in ids if (args.pool / f"{i}.json").is_file()]
            if not ids:
                raise EvaluationError(f"{args.pool}: no cached masks of the {args.split} half yet")
            print(f"{len(ids)} of the {len(ds.image_ids)} images of the {args.split} half", file=sys.stderr)
        pool = load_pool(args.pool, ids)
    except EvaluationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    rows = []
    for pi, st, bn, pen, mm, sw, dup in grid:
        props = []
        for iid, p in pool.items():
            for i in select(p, pi, st, bn, pen, mm, sw, dup):
                props.append({"image_id": iid, "segmentation": p["rles"][i],
                              "score": proposal_score(p["masks"][i])})
        ev = evaluate_proposals(ds.coco, props, ids, max_dets=(10, 100, 1000))
        rows.append((average_recall(ev, args.rank_by), average_recall(ev, 10),
                     average_recall(ev, 100), average_recall(ev, 1000),
                     *(average_recall(ev, args.rank_by, a) for a in ("small", "medium", "large")),
                     len(props) / len(pool), pi, st, bn, pen, mm, sw, dup))
        print(f"pred_iou {pi:.3f} stability {st:.3f} nms {bn} penalty {pen:.3f} max_masks {mm} "
              f"stability_weight {sw:.2f} duplicate_iou {dup}: "
              f"AR@{args.rank_by} {rows[-1][0]:.4f}", file=sys.stderr, flush=True)
    rows.sort(key=lambda r: -r[0])
    b = args.rank_by
    print(f"| AR@{b} (sorted) | AR@10 | AR@100 | AR@1000 | small@{b} | medium@{b} | large@{b} | masks/img "
          "| pred_iou | stability "
          "| box_nms | penalty | max_masks | stability_weight | duplicate_iou |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows[:args.top]:
        print("| " + " | ".join(f"{v:.4f}" for v in r[:7]) + " | " + f"{r[7]:.1f} | "
              + " | ".join(str(v) for v in r[8:]) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
