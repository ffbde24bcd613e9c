"""Proposal ranking: keep at most ``max_masks`` masks per image, the most object-like first.

Not in the reference (which returns every mask that passes its filters). The object-proposal
evaluation of the SAM paper (§7.3, Appendix D.3) and our ``tools/evaluate.py`` score a fixed
budget of proposals per image (AR@100); a user pre-labelling a dataset likewise reviews a
limited number of masks. When an image has more masks than the budget, which ones are kept
matters, and the predicted IoU alone keeps too many *parts*: every point inside an object also
yields sub-part masks with high predicted IoU (SAM's multimask output, §3), nested inside the
object's own mask.

The ranking score of mask i (measured on coco_tiny, docs/quality.md)::

    rank_score_i = predicted_iou_i - nested_mask_penalty * depth_i

where ``depth_i`` (:func:`nesting_depth`) counts the other kept masks, larger than mask i,
that contain at least ``NESTED_FRACTION`` of its pixels. A whole object (depth 0 or 1 when it
lies on a table, a road...) therefore outranks its parts (depth 2 and more) when their
predicted IoUs are close.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from pycocotools import mask as mask_utils

from .rle import bytes_counts, check_rle

__all__ = ["NESTED_FRACTION", "containment_matrix", "nesting_depth", "defer_duplicates", "rank_masks"]

# A mask counts as nested in a larger one when at least this fraction of its pixels lies inside.
NESTED_FRACTION = 0.9


def containment_matrix(rles: Sequence[dict[str, Any]]) -> np.ndarray:
    """Fraction of each mask's pixels inside each other mask.

    Args:
        rles: N RLE dicts of one image: uncompressed (``{"size": [h, w], "counts": list[int]}``,
            column-major, zeros first) or COCO RLE (``counts`` str or bytes).

    Returns:
        ``(N, N)`` float64 ``C`` with ``C[i, j] = |m_i ∩ m_j| / |m_i|`` (0 for an empty
        ``m_i``; the diagonal is 1 for non-empty masks). Computed by ``pycocotools.mask.iou``
        with every mask marked as a crowd region, which divides the intersection by the
        first mask's area.

    Raises:
        ValueError: a malformed RLE, or RLEs of different image sizes.
    """
    n = len(rles)
    if n == 0:
        return np.zeros((0, 0))
    coco = []
    size = None
    for rle in rles:
        if isinstance(rle.get("counts"), (str, bytes)):  # already COCO RLE
            obj = bytes_counts(rle)
            h, w = obj["size"]
        else:
            h, w, counts = check_rle(rle)
            obj = mask_utils.frPyObjects({"size": [h, w], "counts": counts}, h, w)
        if size is not None and (h, w) != size:
            raise ValueError(f"masks of different sizes: {size} and {(h, w)}")
        size = (h, w)
        coco.append(obj)
    frac = mask_utils.iou(coco, coco, [1] * n)
    return np.asarray(frac, dtype=np.float64).reshape(n, n)


def nesting_depth(rles: Sequence[dict[str, Any]], areas: Sequence[int] | np.ndarray,
                  counted: Sequence[bool] | np.ndarray | None = None) -> np.ndarray:
    """How many larger masks contain each mask.

    Args:
        rles: N RLE dicts of one image, uncompressed or COCO (see :func:`containment_matrix`).
        areas: (N,) pixel areas of the masks.
        counted: optional (N, N) bool; ``counted[i, j]`` False means mask j never counts as a
            container of mask i (used for reserve masks, see :func:`rank_masks`). None: all count.

    Returns:
        ``(N,)`` int64: for mask i, the number of masks j with ``area_j > area_i`` and
        ``|m_i ∩ m_j| >= NESTED_FRACTION * |m_i|``. Masks of equal area never count each other.

    Raises:
        ValueError: ``areas`` does not have one entry per mask, or a malformed RLE.
    """
    a = _areas(areas, len(rles))
    if len(rles) == 0:
        return np.zeros(0, dtype=np.int64)
    return _depth(containment_matrix(rles), a, counted)


def _areas(areas: Sequence[int] | np.ndarray, n: int) -> np.ndarray:
    """(N,) float64 pixel areas of N masks.

    Raises:
        ValueError: ``areas`` does not have ``n`` entries.
    """
    a = np.asarray(areas, dtype=np.float64).reshape(-1)
    if a.shape[0] != n:
        raise ValueError(f"areas has {a.shape[0]} entries for {n} masks")
    return a


def _depth(contained: np.ndarray, areas: np.ndarray, counted: np.ndarray | None) -> np.ndarray:
    """:func:`nesting_depth` from the (N, N) :func:`containment_matrix` and (N,) float64 areas."""
    inside = contained >= NESTED_FRACTION
    larger = areas[None, :] > areas[:, None]
    if counted is not None:
        inside &= np.asarray(counted, dtype=bool)
    return (inside & larger).sum(axis=1).astype(np.int64)


def defer_duplicates(order: np.ndarray, mask_iou: np.ndarray, group: np.ndarray,
                     duplicate_mask_iou: float) -> np.ndarray:
    """Move duplicates behind the other masks of their group, keeping the order otherwise.

    Walking ``order``, a mask is a *duplicate* when its mask IoU with a mask met earlier that is
    not itself a duplicate exceeds ``duplicate_mask_iou``. The result lists group 0's
    non-duplicates, group 0's duplicates, group 1's non-duplicates, ..., each in walk order.
    This is box NMS's rule (a mask overlapping a better one beyond the threshold loses) on
    mask IoU, as a soft step in the manner of Soft-NMS (Bodla et al., ICCV 2017): a duplicate
    is ranked last in its group instead of removed, so it is kept whenever the budget has room.

    Args:
        order: (N,) int64 permutation of the masks, best first; every group's masks contiguous
            in group order (as the budget's score orders main masks before reserve ones).
        mask_iou: (N, N) float64 mask IoU. group: (N,) int64 group of each mask (0 main,
            1 reserve). duplicate_mask_iou: the threshold, in (0, 1].

    Returns:
        (N,) int64, the new order.
    """
    kept: list[int] = []
    dup = np.zeros(len(order), dtype=bool)
    for pos, i in enumerate(order):
        if kept and mask_iou[i, kept].max() > duplicate_mask_iou:
            dup[pos] = True
        else:
            kept.append(int(i))
    key = np.lexsort((np.arange(len(order)), dup, group[order]))
    return order[key]


def rank_masks(rles: Sequence[dict[str, Any]], predicted_iou: torch.Tensor | np.ndarray,
               areas: Sequence[int] | np.ndarray, max_masks: int,
               nested_mask_penalty: float = 0.0,
               reserve: Sequence[bool] | np.ndarray | torch.Tensor | None = None,
               duplicate_mask_iou: float | None = None) -> torch.Tensor:
    """Indices of the ``max_masks`` best masks by ``predicted_iou - penalty * nesting depth``.

    Args:
        rles: N RLE dicts of one image, uncompressed or COCO (see :func:`containment_matrix`).
        predicted_iou: (N,) float predicted IoU of each mask.
        areas: (N,) pixel areas.
        max_masks: how many to keep (>= 1). All N are kept when N <= ``max_masks``.
        nested_mask_penalty: subtracted from the predicted IoU once per containing mask
            (:func:`nesting_depth`); 0 ranks by predicted IoU alone (the depth is then not
            computed).
        reserve: optional (N,) bool, True for *reserve* masks (those that passed only the
            looser reserve filters, ``AMGConfig.reserve_pred_iou_thresh``). Every main mask
            then ranks before every reserve mask, and a main mask's depth counts main
            containers only, so the main masks' selection is exactly the one without the
            reserve; reserve masks fill the places left, by their own score (depth counted
            over all masks).
        duplicate_mask_iou: optional threshold in (0, 1]: in the ranked order, a mask whose
            mask IoU with a better-ranked mask exceeds it goes behind every other mask of its
            kind (main or reserve; :func:`defer_duplicates`), so the budget's places go to
            distinct masks first. None: no deferral.

    Returns:
        (K,) int64 indices, K = min(N, ``max_masks``), in increasing order (the generator's
        order is kept among the survivors). Ties in the score keep the earlier mask.

    Raises:
        ValueError: ``max_masks < 1``, a negative penalty, ``duplicate_mask_iou`` outside
            (0, 1], or inputs of different lengths.
    """
    if duplicate_mask_iou is not None and not 0.0 < duplicate_mask_iou <= 1.0:
        raise ValueError(f"duplicate_mask_iou must be in (0, 1] or None, got {duplicate_mask_iou}")
    if max_masks < 1:
        raise ValueError(f"max_masks must be >= 1, got {max_masks}")
    if nested_mask_penalty < 0:
        raise ValueError(f"nested_mask_penalty must be >= 0, got {nested_mask_penalty}")
    iou = np.asarray(torch.as_tensor(predicted_iou).detach().cpu(), dtype=np.float64).reshape(-1)
    n = len(rles)
    if iou.shape[0] != n:
        raise ValueError(f"predicted_iou has {iou.shape[0]} entries for {n} masks")
    res = np.zeros(n, dtype=bool) if reserve is None else \
        np.asarray(torch.as_tensor(reserve).detach().cpu(), dtype=bool).reshape(-1)
    if res.shape[0] != n:
        raise ValueError(f"reserve has {res.shape[0]} entries for {n} masks")
    if n <= max_masks:
        return torch.arange(n, dtype=torch.int64)
    a = _areas(areas, n)
    score = iou
    need_pairs = nested_mask_penalty > 0 or duplicate_mask_iou is not None
    contained = containment_matrix(rles) if need_pairs else None
    if nested_mask_penalty > 0:
        # A main mask's depth counts main containers only; a reserve mask's counts all.
        counted = (~res[None, :] | res[:, None]) if res.any() else None
        score = iou - nested_mask_penalty * _depth(contained, a, counted)
    # Main masks first (a score offset larger than any score difference), then reserve ones.
    score = score - res * (2.0 + nested_mask_penalty * n)
    order = np.argsort(-score, kind="stable")
    if duplicate_mask_iou is not None:
        inter = contained * a[:, None]  # |m_i ∩ m_j|
        union = a[:, None] + a[None, :] - inter
        mask_iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        order = defer_duplicates(order, mask_iou, res.astype(np.int64), duplicate_mask_iou)
    best = order[:max_masks]
    return torch.from_numpy(np.sort(best)).to(torch.int64)
