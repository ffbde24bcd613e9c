#!/usr/bin/env python3
"""How many grid points find each exact mask: the ceiling on prompt selection for fast presets.

For each image this runs our exact default generator (the reference's masks, by the parity
tests) and a candidate preset (default ``fast``) with every batch's kept masks recorded per
grid point (after the predicted-IoU, stability and crop-edge filters, before box NMS). Then:

- **producers**: for each exact mask, the number of grid points of the candidate whose kept
  masks include one at mask IoU >= 0.9 with it. A mask with one producer is lost by any prompt
  subset that skips that point.
- **oracle**: the fewest grid points whose masks, greedily chosen (set cover), match 90% / 95%
  of the exact masks. No rule that sees only the image can do better; it says how much
  redundancy a grid has, not how to find it.
- **subsets**: recall of the exact masks (mask IoU >= 0.9) when only some grid points are
  prompted, with box NMS (``box_nms_thresh``) re-run on their masks as the generator would:
  a checkerboard half, every second row and column (a quarter), and an agreement rule that
  prompts a coarse lattice first and skips a finer point whose two or four coarse neighbours
  kept matching mask sets (mask IoU >= 0.9 pairwise), refining spacing 4 -> 2 -> 1 or 2 -> 1.

One crop (``crop_n_layers`` 0) and a square point grid only. The kept masks of a grid point do
not depend on which other points are prompted (batches are independent), so each subset's
output is computed from the one full run. Example::

    python3 tools/prompt_producers.py ../shared/images/dog.jpg ../shared/images/groceries.jpg \\
        --config fast --json producers.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils
from torchvision.ops import batched_nms

from amg import MaskGenerator
from amg.config import AMGConfig, ConfigError
from amg.io import ImageReadError, load_image
from amg.rle import coco_encode_rle
from sam_model import load_model

MATCH_IOU = 0.9


def kept_masks_per_point(gen: MaskGenerator, image: np.ndarray) -> dict[str, Any]:
    """Run ``gen`` once and record every batch's kept masks (before box NMS).

    Returns:
        {"grid": (M,) int64 grid index (row-major, y outer) of each mask's prompt,
         "rles": M COCO RLEs, "boxes": (M, 4) float32 XYXY, "scores": (M,) float32 predicted IoU}

    Raises:
        ValueError: the config has crop layers or a non-square point grid.
    """
    cfg = gen.config
    n = int(round(np.sqrt(len(gen.point_grids[0]))))
    if cfg.crop_n_layers != 0 or n * n != len(gen.point_grids[0]):
        raise ValueError("prompt_producers: needs crop_n_layers 0 and a square point grid")
    h, w = image.shape[:2]
    batches = []
    original = gen._process_batch

    def recording(*args: Any, **kwargs: Any) -> Any:
        data = original(*args, **kwargs)
        batches.append(data)
        return data

    gen._process_batch = recording
    try:
        gen.generate(image)
    finally:
        del gen._process_batch
    rles, boxes, scores, grid = [], [], [], []
    for data in batches:
        for i in range(len(data)):
            rles.append(coco_encode_rle(data.rles[i]))
            boxes.append(data.boxes_xyxy[i].float())
            scores.append(float(data.predicted_iou[i]))
            x, y = data.points_xy[i].tolist()
            grid.append(int(round(y / h * n - 0.5)) * n + int(round(x / w * n - 0.5)))
    return {"grid": np.array(grid, dtype=np.int64), "rles": rles, "n": n,
            "boxes": torch.stack(boxes) if boxes else torch.zeros(0, 4),
            "scores": torch.tensor(scores, dtype=torch.float32)}


def subset_recall(cand: dict[str, Any], match: np.ndarray, points: set[int], nms: float) -> float:
    """Recall of the exact masks when only grid points ``points`` are prompted.

    Args:
        cand: from :func:`kept_masks_per_point`. match: (M, E) bool, candidate mask m matches
            exact mask e. points: prompted grid indexes. nms: box NMS IoU threshold.
    """
    ids = np.nonzero(np.isin(cand["grid"], list(points)))[0]
    if len(ids) == 0 or match.shape[1] == 0:
        return 0.0 if match.shape[1] else 1.0
    keep = batched_nms(cand["boxes"][ids], cand["scores"][ids],
                       torch.zeros(len(ids), dtype=torch.int64), nms).numpy()
    return float(match[ids[keep]].any(0).mean())


def oracle_points(cand: dict[str, Any], match: np.ndarray, target: float) -> int:
    """Fewest grid points (greedy set cover) whose masks match ``target`` of the exact masks;
    -1 when all points together do not reach it."""
    cover: dict[int, set[int]] = {}
    for m, p in enumerate(cand["grid"].tolist()):
        cover.setdefault(p, set()).update(np.nonzero(match[m])[0].tolist())
    need = target * match.shape[1]
    got: set[int] = set()
    chosen = 0
    while len(got) < need:
        best = max(cover, key=lambda p: len(cover[p] - got), default=None)
        if best is None or not cover[best] - got:
            return -1
        got |= cover.pop(best)
        chosen += 1
    return chosen


def agreement_points(cand: dict[str, Any], spacings: tuple[int, ...]) -> set[int]:
    """Grid points the agreement rule prompts (module docstring): spacing ``spacings[0]``
    first, then each finer lattice's new points unless their coarser neighbours' kept mask
    sets (prompted or inherited) all match pairwise."""
    n = cand["n"]
    by_point: dict[int, list[int]] = {}
    for m, p in enumerate(cand["grid"].tolist()):
        by_point.setdefault(p, []).append(m)
    rles = cand["rles"]

    def agree(a: list[int], b: list[int]) -> bool:
        if len(a) != len(b):
            return False
        if not a:
            return True
        iou = np.asarray(mask_utils.iou([rles[i] for i in a], [rles[j] for j in b], [0] * len(b)))
        return bool((iou.max(1) >= MATCH_IOU).all() and (iou.max(0) >= MATCH_IOU).all())

    known: dict[int, list[int]] = {}
    prompted: set[int] = set()
    for level, s in enumerate(spacings):
        for i in range(0, n, s):
            for j in range(0, n, s):
                p = i * n + j
                if p in known:
                    continue
                parents = []
                if level:
                    ps = 2 * s
                    ii = [i] if i % ps == 0 else [i - s, i + s]
                    jj = [j] if j % ps == 0 else [j - s, j + s]
                    parents = [a * n + b for a in ii for b in jj
                               if 0 <= a < n and 0 <= b < n and a * n + b in known]
                if len(parents) >= 2 and all(agree(known[parents[0]], known[q]) for q in parents[1:]):
                    known[p] = known[parents[0]]
                else:
                    prompted.add(p)
                    known[p] = by_point.get(p, [])
    return prompted


def analyse(model: Any, exact_cfg: AMGConfig, cand_cfg: AMGConfig, path: Path) -> dict[str, Any]:
    """The producers / oracle / subset figures of one image (module docstring)."""
    image, _ = load_image(path)
    exact = [coco_encode_rle(r) for r in MaskGenerator(model, exact_cfg).generate_mask_data(image).rles]
    cand = kept_masks_per_point(MaskGenerator(model, cand_cfg), image)
    n = cand["n"]
    if cand["rles"] and exact:
        match = np.asarray(mask_utils.iou(cand["rles"], exact, [0] * len(exact))) >= MATCH_IOU
    else:
        match = np.zeros((len(cand["rles"]), len(exact)), dtype=bool)
    producers = [len(set(cand["grid"][match[:, e]].tolist())) for e in range(len(exact))]
    counts = np.bincount(np.minimum(producers, 3), minlength=4) if producers else np.zeros(4, int)
    nms = cand_cfg.box_nms_thresh
    iy, ix = np.divmod(np.arange(n * n), n)
    subsets = {
        "all": set(range(n * n)),
        "checkerboard": set(np.nonzero((iy + ix) % 2 == 0)[0].tolist()),
        "stride2": set(np.nonzero((iy % 2 == 0) & (ix % 2 == 0))[0].tolist()),
        "agree_2_1": agreement_points(cand, (2, 1)),
        "agree_4_2_1": agreement_points(cand, (4, 2, 1)),
    }
    return {"image": path.name, "exact_masks": len(exact), "grid_points": n * n,
            "producers_0_1_2_3plus": counts.tolist(),
            "median_producers": float(np.median(producers)) if producers else 0.0,
            "oracle_points_90": oracle_points(cand, match, 0.9),
            "oracle_points_95": oracle_points(cand, match, 0.95),
            "subsets": {k: {"points": len(v), "recall": round(subset_recall(cand, match, v, nms), 3)}
                        for k, v in subsets.items()}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("images", nargs="+", type=Path)
    ap.add_argument("--config", default="fast", help="candidate preset name or YAML (default fast)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument("--json", type=Path, default=None, help="write the rows as JSON")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        cand_cfg = AMGConfig.from_preset(args.config)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    model = load_model("mobile_sam")
    rows = []
    print("| image | exact masks | producers 0 / 1 / 2 / 3+ | oracle points 90% / 95% | "
          "checkerboard | every 2nd row+col | agree 2-1 | agree 4-2-1 | all |")
    print("|---|---|---|---|---|---|---|---|---|")
    for path in args.images:
        try:
            row = analyse(model, AMGConfig(), cand_cfg, path)
        except (ImageReadError, ValueError) as err:
            print(f"error: {path}: {err}", file=sys.stderr)
            continue
        rows.append(row)
        s = row["subsets"]
        cell = lambda k: f"{s[k]['points']}: {s[k]['recall']:.3f}"  # noqa: E731
        print(f"| {row['image']} | {row['exact_masks']} | "
              f"{' / '.join(map(str, row['producers_0_1_2_3plus']))} | "
              f"{row['oracle_points_90']} / {row['oracle_points_95']} | {cell('checkerboard')} | "
              f"{cell('stride2')} | {cell('agree_2_1')} | {cell('agree_4_2_1')} | {cell('all')} |",
              flush=True)
    if args.json:
        args.json.write_text(json.dumps({"config": args.config, "rows": rows}, indent=1))
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
