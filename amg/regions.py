"""Post-processing of single binary masks: fill small holes / remove small islands
(reference ``remove_small_regions``, used by ``min_mask_region_area`` in the generator).
Runs on the CPU with OpenCV; call it only on the kept masks.
"""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ["remove_small_regions"]

_MODES = ("holes", "islands")


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
