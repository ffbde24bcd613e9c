"""Zoomed refinement of kept masks, and hole filling (not in the reference; quality preset).

SAM predicts a mask as 256 x 256 low-resolution logits for the whole model input (SAM paper
§3), so a small object of a large photo spans only a few low-resolution pixels. Refinement
decodes each kept mask once more in a crop of the image where it is larger: the crop boxes
are those of the reference's crop layers 1..n (:func:`amg.crops.generate_crop_boxes`), each
mask goes to the deepest layer that has a crop holding its box with a margin, and the crop is
encoded like any image. The prompt is the mask's own box and its grid point (single-mask
output, SAM's choice for unambiguous prompts, §3). The new mask replaces the old one only
when the two agree (mask IoU >= ``REFINE_MIN_MASK_IOU``: the same object) and the new
predicted IoU is at least the old one; otherwise the old mask stays.

Measured on coco_tiny with the quality preset (docs/quality.md): AR@100 0.3731 -> 0.3776 on
the first 40 images offline; replacing every mask instead lowered it (0.343-0.347). Cost: one image-encoder run per crop that holds a mask (up to 4 + 16
with two layers) and one mask-decoder run per kept mask.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch

from sam_model import Sam

from .crops import generate_crop_boxes
from .masks import stability_score
from .mask_data import MaskData
from .regions import fill_holes, remove_minor_islands
from .rle import rle_to_mask
from .upscale import region_box_xyxy, region_to_rle

__all__ = ["REFINE_MIN_MASK_IOU", "REFINE_MARGIN_FRAC", "REFINE_MIN_MARGIN", "refine_crop_for_box",
           "refine_in_crops", "clean_kept_masks", "fill_mask_holes"]

# The new mask must overlap the old one this much (mask IoU) to replace it.
REFINE_MIN_MASK_IOU = 0.7
# Margin around a mask's box that its refinement crop must also hold: this fraction of the
# box's longer side, at least REFINE_MIN_MARGIN pixels (context for the image encoder).
REFINE_MARGIN_FRAC = 0.15
REFINE_MIN_MARGIN = 8
# Prompts per mask-decoder call.
REFINE_BATCH = 16


def refine_crop_for_box(box_xyxy: list[int] | np.ndarray, crop_boxes: list[list[int]],
                        layer_idxs: list[int], image_hw: tuple[int, int]) -> int | None:
    """Index of the crop a mask is refined in, or None.

    Args:
        box_xyxy: (4,) the mask's tight box, image pixels, x2/y2 inclusive (reference).
        crop_boxes: XYXY crop boxes (x2/y2 exclusive), from :func:`generate_crop_boxes`.
        layer_idxs: the crop layer of each box; layer 0 (the whole image) is never chosen.
        image_hw: (H, W) of the image.

    Returns:
        Among the crops of the deepest layer that contain the box grown by its margin
        (clipped to the image), the one whose centre is nearest the box's centre (first on
        ties); None when no crop of layer >= 1 contains it.
    """
    h, w = image_hw
    x0, y0, x1, y1 = (float(v) for v in box_xyxy)
    x1, y1 = x1 + 1, y1 + 1  # exclusive ends
    m = max(REFINE_MIN_MARGIN, REFINE_MARGIN_FRAC * max(x1 - x0, y1 - y0))
    need = (max(0.0, x0 - m), max(0.0, y0 - m), min(float(w), x1 + m), min(float(h), y1 + m))
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    best: tuple[int, float, int] | None = None  # (-layer, distance, index)
    for i, (cb, layer) in enumerate(zip(crop_boxes, layer_idxs)):
        if layer == 0:
            continue
        if cb[0] <= need[0] and cb[1] <= need[1] and cb[2] >= need[2] and cb[3] >= need[3]:
            d = ((cb[0] + cb[2]) / 2 - cx) ** 2 + ((cb[1] + cb[3]) / 2 - cy) ** 2
            key = (-layer, d, i)
            if best is None or key < best:
                best = key
    return None if best is None else best[2]


@torch.inference_mode()
def refine_in_crops(model: Sam, image: np.ndarray, data: MaskData, n_layers: int,
                    overlap_ratio: float, compute_dtype: torch.dtype = torch.float32,
                    stability_offset: float = 1.0) -> MaskData:
    """Decode each mask again in a zoomed crop and keep the better of the two (module doc).

    Args:
        model: the :class:`sam_model.Sam` that found the masks (its device is used).
        image: (H, W, 3) uint8 RGB, the image the masks belong to.
        data: the kept masks (full-image RLE, XYXY inclusive boxes, prompt points in image
            pixels), on the CPU.
        n_layers: crop layers 1..n_layers to refine in (>= 1).
        overlap_ratio: crop overlap (``AMGConfig.crop_overlap_ratio``).
        compute_dtype: the image encoder's dtype (the generator's).
        stability_offset: offset of the replaced masks' stability scores.

    Returns:
        a new :class:`MaskData` in the same order; a replaced mask gets the new RLE, box,
        predicted IoU and stability score, and keeps its prompt point and crop box.

    Raises:
        ValueError: ``n_layers < 1``.
    """
    if n_layers < 1:
        raise ValueError(f"n_layers must be >= 1, got {n_layers}")
    h, w = image.shape[:2]
    crop_boxes, layer_idxs = generate_crop_boxes((h, w), n_layers, overlap_ratio)
    by_crop: dict[int, list[int]] = defaultdict(list)
    for k in range(len(data)):
        c = refine_crop_for_box(data.boxes_xyxy[k].tolist(), crop_boxes, layer_idxs, (h, w))
        if c is not None:
            by_crop[c].append(k)
    rles = list(data.rles)
    boxes = data.boxes_xyxy.clone()
    ious = data.predicted_iou.clone()
    stabs = data.stability_score.clone()
    dev = model.device
    thr = model.mask_threshold
    for c in sorted(by_crop):
        ks = by_crop[c]
        x0, y0, x1, y1 = crop_boxes[c]
        emb = model.encode_image(np.ascontiguousarray(image[y0:y1, x0:x1]), compute_dtype)
        offset = torch.tensor([x0, y0], dtype=torch.float64)
        for s in range(0, len(ks), REFINE_BATCH):
            kk = ks[s:s + REFINE_BATCH]
            idx = torch.tensor(kk)
            pts = (data.points_xy[idx].to(torch.float64) - offset)[:, None, :]
            box = data.boxes_xyxy[idx].to(torch.float64)
            box[:, 2:] += 1  # exclusive ends, as measured (docs/quality.md)
            box = box - offset.repeat(2)
            labels = torch.ones(len(kk), 1, dtype=torch.int64)
            low, iou = model.decode(emb, pts.float(), labels, box.float(), multimask_output=False)
            logits = model.upscale_masks(low, emb)[:, 0]  # (b, ch, cw) float32
            new = (logits > thr).cpu()
            stab = stability_score(logits, thr, stability_offset).cpu()
            iou = iou[:, 0].float().cpu()
            for j, k in enumerate(kk):
                old = torch.from_numpy(rle_to_mask(rles[k])[y0:y1, x0:x1])
                inter = int((old & new[j]).sum())
                union = int((old | new[j]).sum())
                if union == 0 or inter / union < REFINE_MIN_MASK_IOU or iou[j] < ious[k]:
                    continue
                rles[k] = region_to_rle(new[j], y0, x0, h, w)
                boxes[k] = region_box_xyxy(new[j], y0, x0).to(boxes.dtype)
                ious[k] = iou[j]
                stabs[k] = stab[j]
    return MaskData(rles=rles, boxes_xyxy=boxes, predicted_iou=ious, stability_score=stabs,
                    points_xy=data.points_xy, crop_boxes_xyxy=data.crop_boxes_xyxy,
                    reserve=data.reserve)


def clean_kept_masks(data: MaskData, fill: bool = True, island_frac: float = 0.0) -> MaskData:
    """Each mask with its holes filled (:func:`amg.regions.fill_holes`), then its regions
    below ``island_frac`` of its largest region removed (:func:`amg.regions.remove_minor_islands`),
    on the mask's box region (holes and islands lie inside the box).

    Args:
        data: kept masks on the CPU (full-image RLE, XYXY inclusive boxes).
        fill: fill holes. island_frac: in [0, 1); 0 removes no island.

    Returns:
        a new :class:`MaskData`: RLEs changed, and the box of a mask that lost an island
        shrunk to what is left; scores, points and crop boxes as they were.

    Raises:
        ValueError: ``island_frac`` outside [0, 1).
    """
    if not 0.0 <= island_frac < 1.0:
        raise ValueError(f"island_frac must be in [0, 1), got {island_frac!r}")
    rles = list(data.rles)
    boxes = data.boxes_xyxy.clone()
    for k, rle in enumerate(rles):
        x0, y0, x1, y1 = (int(v) for v in data.boxes_xyxy[k].tolist())
        h, w = rle["size"]
        region = rle_to_mask(rle)[y0:y1 + 1, x0:x1 + 1]
        changed = dropped = False
        if fill:
            region, changed = fill_holes(region)
        if island_frac > 0:
            region, dropped = remove_minor_islands(region, island_frac)
        if changed or dropped:
            t = torch.from_numpy(np.ascontiguousarray(region))
            rles[k] = region_to_rle(t, y0, x0, h, w)
            if dropped:
                boxes[k] = region_box_xyxy(t, y0, x0).to(boxes.dtype)
    return MaskData(rles=rles, boxes_xyxy=boxes, predicted_iou=data.predicted_iou,
                    stability_score=data.stability_score, points_xy=data.points_xy,
                    crop_boxes_xyxy=data.crop_boxes_xyxy, reserve=data.reserve)


def fill_mask_holes(data: MaskData) -> MaskData:
    """Every mask with its holes filled (:func:`clean_kept_masks` with ``fill=True`` only);
    only the RLEs change (a filled hole lies inside the box)."""
    return clean_kept_masks(data, fill=True)
