"""Hand-made masks and mask records for the dataset tests (COCO RLE records like the
generator's, boxes, random blobs with islands and holes, outline bands)."""

from __future__ import annotations

import cv2
import numpy as np

from amg.rle import mask_to_coco_rle


def record(mask: np.ndarray, iou: float = 0.9, stability: float = 0.96) -> dict:
    """A mask record like the generator's (COCO RLE, the reference's bbox convention)."""
    ys, xs = np.nonzero(mask)
    return {"segmentation": mask_to_coco_rle(mask), "area": int(mask.sum()),
            "bbox": [int(xs.min()), int(ys.min()), int(xs.max() - xs.min()), int(ys.max() - ys.min())],
            "predicted_iou": iou, "point_coords": [[float(xs.mean()), float(ys.mean())]],
            "stability_score": stability, "crop_box": [0, 0, mask.shape[1], mask.shape[0]]}


def box_mask(hw, x0, y0, x1, y1) -> np.ndarray:
    m = np.zeros(hw, bool)
    m[y0:y1, x0:x1] = True
    return m


def random_blob(rng, hw, sigma=None, level=None) -> np.ndarray:
    noise = rng.random(hw).astype(np.float32)
    sigma = float(rng.uniform(0.7, 3.0)) if sigma is None else sigma
    level = float(rng.uniform(0.4, 0.6)) if level is None else level
    return cv2.GaussianBlur(noise, (0, 0), sigma) > level


def border_band(mask: np.ndarray) -> np.ndarray:
    """Mask pixels with a 4-neighbour outside the mask (the image edge counts as outside)."""
    padded = np.pad(mask.astype(np.uint8), 1)
    inner = cv2.erode(padded, cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3)))[1:-1, 1:-1]
    return mask & ~inner.astype(bool)
