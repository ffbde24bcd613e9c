"""Post-processing of single binary masks: fill small holes / remove small islands
(reference ``remove_small_regions``, used by ``min_mask_region_area`` in the generator).
Runs on the CPU with OpenCV; call it only on the kept masks.
"""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ["remove_small_regions", "clean_small_regions", "fill_holes", "remove_minor_islands"]

_MODES = ("holes", "islands")


def fill_holes(mask: np.ndarray) -> tuple[np.ndarray, bool]:
    """Fill every hole of a binary mask, whatever its size (not in the reference).

    A hole is a connected component of the background (``~mask``, 8-connectivity, OpenCV)
    that does not touch the array's border; a background region that reaches the border is
    outside the mask and stays. Pass the mask's tight box (or a region that contains it)
    to work on fewer pixels: a background component that touches a tight box's border
    connects, through the pixels just outside the box, to the rest of the image.

    Args:
        mask: ``(H, W)`` bool numpy array (rows = y).

    Returns:
        ``(new_mask, changed)``: ``(H, W)`` bool and whether any hole was filled. When none is,
        the input array itself is returned with ``changed=False``.

    Raises:
        ValueError: ``mask`` is not 2-dimensional.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must have shape (H, W), got {mask.shape}")
    binary = mask.astype(bool)
    h, w = binary.shape
    n_labels, labels, stats, _ = cv2.connectedComponentsWithStats((~binary).astype(np.uint8),
                                                                  connectivity=8)
    x, y = stats[1:, cv2.CC_STAT_LEFT], stats[1:, cv2.CC_STAT_TOP]
    x1, y1 = x + stats[1:, cv2.CC_STAT_WIDTH], y + stats[1:, cv2.CC_STAT_HEIGHT]
    holes = np.flatnonzero((x > 0) & (y > 0) & (x1 < w) & (y1 < h)) + 1
    if holes.size == 0:
        return mask, False
    return binary | np.isin(labels, holes), True


def remove_minor_islands(mask: np.ndarray, area_frac: float) -> tuple[np.ndarray, bool]:
    """Drop the connected regions of a mask that are small *relative to its largest one*
    (not in the reference, whose ``min_mask_region_area`` is an absolute pixel count).

    Components use 8-connectivity (OpenCV). A component with fewer than ``area_frac`` times
    the largest component's pixels (strict ``<``) is removed; the largest always stays.

    Args:
        mask: ``(H, W)`` bool numpy array (rows = y).
        area_frac: in [0, 1); 0 removes nothing.

    Returns:
        ``(new_mask, changed)``; when nothing is removed, the input array itself with
        ``changed=False``.

    Raises:
        ValueError: ``mask`` is not 2-dimensional, or ``area_frac`` is outside [0, 1).
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must have shape (H, W), got {mask.shape}")
    if not 0.0 <= area_frac < 1.0:
        raise ValueError(f"area_frac must be in [0, 1), got {area_frac!r}")
    binary = mask.astype(bool)
    n_labels, labels, stats, _ = cv2.connectedComponentsWithStats(binary.astype(np.uint8),
                                                                  connectivity=8)
    if n_labels <= 2 or area_frac == 0.0:
        return mask, False
    areas = stats[1:, cv2.CC_STAT_AREA]
    small = np.flatnonzero(areas < area_frac * areas.max()) + 1
    if small.size == 0:
        return mask, False
    return binary & ~np.isin(labels, small), True


def remove_small_regions(mask: np.ndarray, area_thresh: float, mode: str) -> tuple[np.ndarray, bool]:
    """Fill small holes or remove small islands of a binary mask.

    Connected components use 8-connectivity (``cv2.connectedComponentsWithStats`` on uint8).
    A "small" component has fewer than ``area_thresh`` pixels (strict ``<``).

    * ``mode="holes"``: components of the background (``~mask``) that are small are set to
      True. Label 0 of ``~mask`` is the mask's foreground and is never counted as a hole.
    * ``mode="islands"``: foreground components (of ``mask``) that are small are set to False;
      if every foreground component is small, the largest one is kept (first one on ties).
      Label 0 is the background and is never counted.

    Args:
        mask: ``(H, W)`` bool numpy array (rows = y).
        area_thresh: minimum component area in pixels to keep.
        mode: ``"holes"`` or ``"islands"``.

    Returns:
        ``(new_mask, changed)``: ``(H, W)`` bool and whether any small region was found. When
        none is, the input array itself is returned with ``changed=False``.

    Raises:
        ValueError: ``mode`` is not "holes"/"islands", or ``mask`` is not 2-dimensional.
    """
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must have shape (H, W), got {mask.shape}")
    fill_holes = mode == "holes"
    binary = mask.astype(bool)
    working = (~binary if fill_holes else binary).astype(np.uint8)
    n_labels, labels, stats, _ = cv2.connectedComponentsWithStats(working, connectivity=8)
    areas = stats[1:, cv2.CC_STAT_AREA]  # component k + 1 has area areas[k]
    small = np.flatnonzero(areas < area_thresh) + 1
    if small.size == 0:
        return mask, False
    if fill_holes:
        return binary | np.isin(labels, small), True
    keep = np.flatnonzero(areas >= area_thresh) + 1
    if keep.size == 0:
        keep = np.array([int(np.argmax(areas)) + 1])
    return np.isin(labels, keep), True


def clean_small_regions(mask: np.ndarray, area_thresh: float
                        ) -> tuple[np.ndarray, int, int, bool]:
    """Fill small holes, then remove small islands (the generator's ``min_mask_region_area``
    clean-up, reference ``postprocess_small_regions``), computed on the mask's bounding box
    plus a one-pixel ring instead of the whole image. Same result as
    ``remove_small_regions(remove_small_regions(mask, t, "holes")[0], t, "islands")``.

    Why it is exact. Every foreground pixel lies in the box, so the islands are the same.
    Background outside the box is connected to the ring (the pixels of the window around the
    box, on the sides where the box does not touch the image border), and the ring pieces are
    connected exactly as the outside pieces are (one piece, or two strips when the box touches
    two opposite borders). A background component that touches the ring therefore has, in the
    whole image, its pixels inside the box plus the whole outside piece(s) it touches; its area
    is computed so. If such a component would be a small hole (the outside itself is tiny),
    this falls back to the whole-image computation.

    Args:
        mask: ``(H, W)`` bool numpy array (rows = y). area_thresh: as
            :func:`remove_small_regions`.

    Returns:
        ``(window_mask, y0, x0, changed)``: the cleaned mask is zero outside the
        ``(h_w, w_w)`` bool ``window_mask`` placed at row ``y0``, column ``x0``; ``changed``
        as in :func:`remove_small_regions` (either step found a small region).

    Raises:
        ValueError: ``mask`` is not 2-dimensional.
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"mask must have shape (H, W), got {mask.shape}")
    h, w = mask.shape
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if rows.size == 0:
        return _whole(mask, area_thresh)
    by0, by1, bx0, bx1 = int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])
    y0, y1, x0, x1 = max(by0 - 1, 0), min(by1 + 1, h - 1), max(bx0 - 1, 0), min(bx1 + 1, w - 1)
    win = mask[y0:y1 + 1, x0:x1 + 1]
    ring = np.ones(win.shape, dtype=bool)
    ring[by0 - y0:by1 - y0 + 1, bx0 - x0:bx1 - x0 + 1] = False
    # outside pieces: (area, ring pixels of the piece)
    top, bottom, left, right = by0 == 0, by1 == h - 1, bx0 == 0, bx1 == w - 1
    pieces = []
    if top and bottom and not (left and right):
        if not left:
            pieces.append((h * bx0, (slice(None), 0)))
        if not right:
            pieces.append((h * (w - 1 - bx1), (slice(None), -1)))
    elif left and right and not (top and bottom):
        if not top:
            pieces.append((w * by0, (0, slice(None))))
        if not bottom:
            pieces.append((w * (h - 1 - by1), (-1, slice(None))))
    elif ring.any():
        pieces.append((h * w - (by1 - by0 + 1) * (bx1 - bx0 + 1), ring))
    n, labels, stats, _ = cv2.connectedComponentsWithStats((~win).astype(np.uint8), connectivity=8)
    areas = stats[:, cv2.CC_STAT_AREA].astype(np.int64)
    ring_count = np.bincount(labels[ring], minlength=n)
    areas = areas - ring_count
    for area, where in pieces:
        touched = np.unique(labels[where])
        areas[touched] += area
    areas[0] = 0  # label 0: the mask itself, never a hole
    small = np.flatnonzero(areas[1:] < area_thresh) + 1
    if np.any(ring_count[small] > 0):  # a small hole reaching outside the box: rare
        return _whole(mask, area_thresh)
    changed = small.size > 0
    if changed:
        win = win | np.isin(labels, small)
    win, changed_islands = remove_small_regions(win, area_thresh, "islands")
    return win, y0, x0, changed or changed_islands


def _whole(mask: np.ndarray, area_thresh: float) -> tuple[np.ndarray, int, int, bool]:
    """:func:`clean_small_regions` on the whole image (the fallback)."""
    m, a = remove_small_regions(mask, area_thresh, "holes")
    m, b = remove_small_regions(m, area_thresh, "islands")
    return m, 0, 0, a or b
