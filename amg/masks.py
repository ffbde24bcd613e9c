"""Pure tensor functions on mask logits and binary masks: stability score and the tight box
of a mask. Both run on the masks' device and are vectorised over any leading dimensions.
"""

from __future__ import annotations

import torch

__all__ = ["stability_score", "masks_to_boxes_xyxy"]


def stability_score(mask_logits: torch.Tensor, mask_threshold: float, offset: float) -> torch.Tensor:
    """Stability score of each mask: IoU of the masks binarised at ``thr + offset`` and at
    ``thr - offset`` (SAM paper §B "stable masks"; reference ``calculate_stability_score``).

    Because ``{l > thr + offset}`` is a subset of ``{l > thr - offset}`` (for offset >= 0), the
    IoU is ``count(l > thr + offset) / count(l > thr - offset)``. Counts are exact int64 sums;
    the quotient is computed in float32. The thresholds are compared as python floats, i.e. at
    the logits' precision, exactly as the reference does.

    Args:
        mask_logits: ``(..., H, W)`` real (float32/16) logits.
        mask_threshold: the binarisation threshold on logits (0.0 in SAM).
        offset: half-width of the threshold band (``stability_score_offset``, 1.0 in SAM).

    Returns:
        ``(...)`` float32 in [0, 1] on ``mask_logits.device``. A mask with no pixel above
        ``thr - offset`` gives 0/0 = nan, like the reference (nan fails any ``>=`` filter).

    Raises:
        ValueError: ``mask_logits`` has fewer than 2 dimensions.
    """
    if mask_logits.ndim < 2:
        raise ValueError(f"mask_logits must have shape (..., H, W), got {tuple(mask_logits.shape)}")
    high = (mask_logits > (mask_threshold + offset)).sum(dim=(-2, -1), dtype=torch.int64)
    low = (mask_logits > (mask_threshold - offset)).sum(dim=(-2, -1), dtype=torch.int64)
    return high.to(torch.float32) / low.to(torch.float32)


def masks_to_boxes_xyxy(masks: torch.Tensor) -> torch.Tensor:
    """Tight bounding box of each binary mask (reference ``batched_mask_to_box``).

    Args:
        masks: ``(..., H, W)`` bool, rows = y, columns = x. Leading dimensions may be empty
            (zero masks) and are kept.

    Returns:
        ``(..., 4)`` int64 XYXY ``[x1, y1, x2, y2]`` where ``x1``/``y1`` are the min column/row
        index and ``x2``/``y2`` the INCLUSIVE max column/row index (so a single pixel at
        (row 2, col 3) gives ``[3, 2, 3, 2]``; width is ``x2 - x1 + 1``). An empty mask gives
        ``[0, 0, 0, 0]``. Same device as ``masks``.

    Raises:
        ValueError: fewer than 2 dimensions.
        TypeError: ``masks`` is not bool.
    """
    if masks.ndim < 2:
        raise ValueError(f"masks must have shape (..., H, W), got {tuple(masks.shape)}")
    if masks.dtype != torch.bool:
        raise TypeError(f"masks must be bool, got {masks.dtype}")
    lead = masks.shape[:-2]
    if masks.numel() == 0:
        return torch.zeros((*lead, 4), dtype=torch.int64, device=masks.device)

    def first_last(occupied: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # occupied: (..., L) bool -> min / max occupied index (L / -1 where none; masked later)
        length = occupied.shape[-1]
        idx = torch.arange(length, device=occupied.device)
        first = torch.where(occupied, idx, length).amin(dim=-1)
        last = torch.where(occupied, idx, -1).amax(dim=-1)
        return first, last

    rows = masks.any(dim=-1)  # (..., H): row y has a pixel
    cols = masks.any(dim=-2)  # (..., W): column x has a pixel
    y1, y2 = first_last(rows)
    x1, x2 = first_last(cols)
    boxes = torch.stack([x1, y1, x2, y2], dim=-1)
    nonempty = rows.any(dim=-1, keepdim=True)
    return torch.where(nonempty, boxes, torch.zeros_like(boxes))
