"""Crop boxes for multi-layer automatic mask generation and the maps from crop to image
coordinates (SAM paper §B: "we process ... overlapping zoomed-in image crops"; layer ``i`` has
``2**i x 2**i`` crops).

Conventions used throughout this module:
  * boxes are XYXY in pixels, ``x1``/``y1`` EXCLUSIVE for crop boxes (``[0, 0, w, h]`` is the
    whole image); mask boxes coming from :func:`amg.masks.masks_to_boxes_xyxy` use the
    reference's inclusive ``x2``/``y2`` convention, and the maps below only add offsets, so they
    preserve whichever convention the input uses;
  * points are xy (x = column, y = row) in pixels;
  * masks are ``(..., H, W)`` (row = y, column = x).
"""

from __future__ import annotations

import math
from itertools import product

import torch

__all__ = [
    "generate_crop_boxes",
    "uncrop_boxes_xyxy",
    "uncrop_points",
    "uncrop_masks",
    "is_box_near_crop_edge",
    "crop_edge_strips",
]


def _check_box(name: str, box) -> list[int]:
    box = [int(v) for v in box]
    if len(box) != 4:
        raise ValueError(f"{name} must have 4 values (x0, y0, x1, y1), got {len(box)}")
    return box


def generate_crop_boxes(
    im_size: tuple[int, int], n_layers: int, overlap_ratio: float
) -> tuple[list[list[int]], list[int]]:
    """Overlapping crop boxes for every crop layer (reference ``generate_crop_boxes``).

    Layer 0 is the whole image ``[0, 0, w, h]``. Layer ``i`` (1..n_layers) has ``n = 2**i``
    crops per side with ``overlap = int(overlap_ratio * min(h, w) * (2 / n))`` pixels of overlap
    between neighbours, crop size ``crop_w = ceil((overlap * (n - 1) + w) / n)`` (``crop_h``
    likewise), origins ``x0_j = int((crop_w - overlap) * j)``; boxes are enumerated x0-outer,
    y0-inner and clipped to the image: ``[x0, y0, min(x0 + crop_w, w), min(y0 + crop_h, h)]``.
    (The product is evaluated as ``overlap_ratio * short_side * (2 / n)``, in the reference's
    order, so the ``int`` truncation matches it exactly.)

    Args:
        im_size: ``(h, w)`` of the image in pixels (note: height first).
        n_layers: number of crop layers below the whole image, >= 0.
        overlap_ratio: overlap as a fraction of the short side at layer 1, in [0, 1).

    Returns:
        ``(crop_boxes, layer_idxs)``: ``crop_boxes`` is a list of ``[x0, y0, x1, y1]`` python
        ints (XYXY pixels, x1/y1 exclusive), ``layer_idxs`` the layer of each box.

    Raises:
        ValueError: non-positive image size, ``n_layers`` < 0, or ``overlap_ratio`` outside
        [0, 1).
    """
    im_h, im_w = (int(v) for v in im_size)
    if im_h < 1 or im_w < 1:
        raise ValueError(f"im_size must be a positive (h, w), got {tuple(im_size)!r}")
    if n_layers < 0:
        raise ValueError(f"n_layers must be >= 0, got {n_layers!r}")
    if not 0.0 <= overlap_ratio < 1.0:
        raise ValueError(f"overlap_ratio must be in [0, 1), got {overlap_ratio!r}")

    short_side = min(im_h, im_w)
    crop_boxes: list[list[int]] = [[0, 0, im_w, im_h]]
    layer_idxs: list[int] = [0]
    for layer in range(1, n_layers + 1):
        n = 2**layer
        overlap = int(overlap_ratio * short_side * (2 / n))
        crop_w = int(math.ceil((overlap * (n - 1) + im_w) / n))
        crop_h = int(math.ceil((overlap * (n - 1) + im_h) / n))
        x0s = [int((crop_w - overlap) * j) for j in range(n)]
        y0s = [int((crop_h - overlap) * j) for j in range(n)]
        for x0, y0 in product(x0s, y0s):
            crop_boxes.append([x0, y0, min(x0 + crop_w, im_w), min(y0 + crop_h, im_h)])
            layer_idxs.append(layer)
    return crop_boxes, layer_idxs


def uncrop_boxes_xyxy(boxes: torch.Tensor, crop_box: list[int]) -> torch.Tensor:
    """Move boxes from crop coordinates to image coordinates by adding ``[x0, y0, x0, y0]``.

    Args:
        boxes: ``(N, 4)`` or ``(B, N, 4)`` (any ``(..., 4)``), XYXY in crop pixels, any real
            dtype; the x2 convention of the input is kept.
        crop_box: ``[x0, y0, x1, y1]`` of the crop in image pixels.

    Returns:
        same shape, XYXY in image pixels, on ``boxes.device``; dtype follows torch promotion
        with an int64 offset (float stays float, integer becomes int64).

    Raises:
        ValueError: last dimension of ``boxes`` is not 4, or ``crop_box`` has not 4 values.
    """
    x0, y0, _, _ = _check_box("crop_box", crop_box)
    if boxes.ndim < 1 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must have shape (..., 4), got {tuple(boxes.shape)}")
    offset = torch.tensor([x0, y0, x0, y0], device=boxes.device)
    return boxes + offset


def uncrop_points(points: torch.Tensor, crop_box: list[int]) -> torch.Tensor:
    """Move points from crop coordinates to image coordinates by adding ``[x0, y0]``.

    Args:
        points: ``(N, 2)`` (any ``(..., 2)``), xy in crop pixels.
        crop_box: ``[x0, y0, x1, y1]`` of the crop in image pixels.

    Returns:
        same shape, xy in image pixels, on ``points.device``.

    Raises:
        ValueError: last dimension of ``points`` is not 2, or ``crop_box`` has not 4 values.
    """
    x0, y0, _, _ = _check_box("crop_box", crop_box)
    if points.ndim < 1 or points.shape[-1] != 2:
        raise ValueError(f"points must have shape (..., 2), got {tuple(points.shape)}")
    offset = torch.tensor([x0, y0], device=points.device)
    return points + offset


def uncrop_masks(masks: torch.Tensor, crop_box: list[int], orig_h: int, orig_w: int) -> torch.Tensor:
    """Zero-pad crop masks to full-image masks, placing the crop's pixel (0, 0) at (y0, x0).

    Args:
        masks: ``(N, h, w)`` (any ``(..., h, w)``) bool (or any dtype; padding is zero/False),
            rows = y, columns = x, in crop pixels; ``(h, w) == (y1 - y0, x1 - x0)``.
        crop_box: ``[x0, y0, x1, y1]`` of the crop in image pixels.
        orig_h, orig_w: full image size.

    Returns:
        ``(N, orig_h, orig_w)`` same dtype and device; the input object itself when the crop is
        the whole image (``crop_box == [0, 0, orig_w, orig_h]``).

    Raises:
        ValueError: ``masks`` has fewer than 2 dims, its ``(h, w)`` is not the crop box's
        ``(y1 - y0, x1 - x0)``, or the crop box does not fit inside ``(orig_h, orig_w)``.
    """
    x0, y0, x1, y1 = _check_box("crop_box", crop_box)
    if masks.ndim < 2:
        raise ValueError(f"masks must have shape (..., h, w), got {tuple(masks.shape)}")
    if x0 == 0 and y0 == 0 and x1 == orig_w and y1 == orig_h:
        return masks
    h, w = masks.shape[-2:]
    if (h, w) != (y1 - y0, x1 - x0):
        raise ValueError(
            f"masks are {h}x{w} (h x w) but crop_box {crop_box} is {y1 - y0}x{x1 - x0}"
        )
    if x0 < 0 or y0 < 0 or y1 > orig_h or x1 > orig_w:
        raise ValueError(
            f"crop_box {crop_box} (XYXY) does not fit in a {orig_h}x{orig_w} (h x w) image"
        )
    out = masks.new_zeros((*masks.shape[:-2], orig_h, orig_w))
    out[..., y0 : y0 + h, x0 : x0 + w] = masks
    return out


def is_box_near_crop_edge(
    boxes_xyxy: torch.Tensor, crop_box: list[int], orig_box: list[int], atol: float = 20.0
) -> torch.Tensor:
    """Flag boxes that touch a crop edge which is not also an image edge.

    Reference ``is_box_near_crop_edge``: the boxes are uncropped to image coordinates and cast
    to float32; coordinate ``k`` is near the crop edge when ``|box_k - crop_box_k| <= atol``
    (``torch.isclose`` with ``rtol=0``) and NOT ``|box_k - orig_box_k| <= atol``; a box is
    flagged when any of its 4 coordinates is. Masks cut by a crop border are dropped this way
    because a neighbouring crop (or the whole image) sees the full object.

    Args:
        boxes_xyxy: ``(N, 4)`` XYXY in crop pixels (inclusive x2/y2 from
            :func:`amg.masks.masks_to_boxes_xyxy`), any real dtype.
        crop_box: ``[x0, y0, x1, y1]`` crop in image pixels (x1/y1 exclusive).
        orig_box: ``[0, 0, w, h]`` the image box in image pixels.
        atol: distance in pixels, >= 0.

    Returns:
        ``(N,)`` bool on ``boxes_xyxy.device``.

    Raises:
        ValueError: ``boxes_xyxy`` is not ``(N, 4)``, or a box argument has not 4 values.
    """
    crop = _check_box("crop_box", crop_box)
    orig = _check_box("orig_box", orig_box)
    if boxes_xyxy.ndim != 2 or boxes_xyxy.shape[-1] != 4:
        raise ValueError(f"boxes_xyxy must have shape (N, 4), got {tuple(boxes_xyxy.shape)}")
    dev = boxes_xyxy.device
    boxes = uncrop_boxes_xyxy(boxes_xyxy, crop).float()
    crop_t = torch.tensor(crop, dtype=torch.float32, device=dev)
    orig_t = torch.tensor(orig, dtype=torch.float32, device=dev)
    near_crop = torch.isclose(boxes, crop_t[None, :], atol=atol, rtol=0)
    near_image = torch.isclose(boxes, orig_t[None, :], atol=atol, rtol=0)
    return (near_crop & ~near_image).any(dim=1)


def crop_edge_strips(crop_box: list[int], orig_box: list[int], atol: float = 20.0
                     ) -> list[tuple[int, int, int]]:
    """Strips of a crop in which any mask pixel makes :func:`is_box_near_crop_edge` flag the
    mask's box, so the mask is dropped whatever its other pixels are.

    A mask's box is its pixels' extremes (x2/y2 inclusive). If a pixel lies at crop-frame
    ``x <= atol``, the box's left coordinate ``min_x + x0`` is within ``atol`` of the crop's
    left edge ``x0``; it is also more than ``atol`` from the image's left edge when
    ``x0 - orig_x0 > atol``, so coordinate 0 is flagged. Likewise a pixel at
    ``x >= w - atol`` (``w`` the crop width) flags the right coordinate when
    ``orig_x1 - x1 + 1 > atol`` (the box's right coordinate is at most ``x1 - 1``); rows
    the same way. Edges shared with the image (or closer to it than ``atol``) give no strip.
    The generator uses the strips to drop such masks from a few columns or rows of their
    logits, before decoding and upscaling the whole mask (the reference's result unchanged).

    Args:
        crop_box: ``[x0, y0, x1, y1]`` crop in image pixels (x1/y1 exclusive).
        orig_box: ``[0, 0, w, h]`` the image box in image pixels.
        atol: the distance of :func:`is_box_near_crop_edge`, pixels, >= 0.

    Returns:
        list of ``(axis, start, stop)``: crop-frame columns (axis 1) or rows (axis 0)
        ``[start, stop)``, empty when no edge of the crop is inside the image.

    Raises:
        ValueError: a box argument has not 4 values, or ``atol`` is negative.
    """
    x0, y0, x1, y1 = _check_box("crop_box", crop_box)
    ox0, oy0, ox1, oy1 = _check_box("orig_box", orig_box)
    if not atol >= 0:
        raise ValueError(f"atol must be >= 0, got {atol}")
    strips = []
    for axis, lo, hi, olo, ohi in ((1, x0, x1, ox0, ox1), (0, y0, y1, oy0, oy1)):
        size = int(hi - lo)
        if size <= 0:
            continue
        if lo - olo > atol:  # pixels at crop-frame index <= atol
            strips.append((axis, 0, min(int(math.floor(atol)) + 1, size)))
        if ohi - hi + 1 > atol:  # pixels at crop-frame index >= size - atol
            strips.append((axis, max(int(math.ceil(size - atol)), 0), size))
    return strips
