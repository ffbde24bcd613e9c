"""Binary masks as COCO polygons (``segmentation: [[x0, y0, x1, y1, ...], ...]``).

COCO rasterises a polygon by parity (pycocotools ``frPyObjects``: every boundary crossing of a
column toggles the pixel state) and an annotation's polygons are *unioned*, so a hole cannot be
given as a polygon of its own. We therefore cut every hole into the ring around it with a
zero-width bridge: the ring runs to the hole's nearest vertex, around the hole, and back along
the same segment. The two copies of the bridge cross every column twice and cancel, so parity
rasterisation leaves the hole empty.

Coordinates: ``x`` right, ``y`` down, continuous pixel coordinates in which pixel ``(col, row)``
covers ``[col, col + 1) x [row, row + 1)`` (its centre is at ``col + 0.5``), as COCO reads them.
The contours are traced on the mask upsampled 2x (nearest), so every vertex lies a quarter pixel
inside the outer edge of a boundary pixel (values are multiples of 0.25); every pixel centre of
the mask is then inside the polygon and every other centre outside, and pycocotools decodes the
polygon back to the mask exactly, up to the fragments and holes dropped below the tolerance.

Tolerance: an outer ring (a connected fragment, with its holes) or a hole whose polygon area is
below ``min_area`` px² is dropped (fragment) or filled (hole). The default ``2.0`` drops
fragments and fills holes of about three pixels or fewer (one pixel: 0.25 px², a 2 x 2 block:
2.25 px², a 1 x 5 line: 2.25 px²).
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy.spatial import cKDTree

DEFAULT_MIN_POLYGON_AREA = 2.0

__all__ = ["mask_to_polygons", "DEFAULT_MIN_POLYGON_AREA"]


def mask_to_polygons(mask: np.ndarray, min_area: float = DEFAULT_MIN_POLYGON_AREA) -> list[list[float]]:
    """COCO polygons of a binary mask, holes bridged into their outer rings.

    Args:
        mask: ``(H, W)`` bool or integer array (nonzero = foreground), rows = y.
        min_area: polygon area in px² below which a fragment is dropped or a hole filled
            (see the module docstring); must be >= 0.

    Returns:
        One flat ``[x0, y0, x1, y1, ...]`` list per kept fragment (at least 3 vertices, so at
        least 6 numbers — pycocotools would read 4 numbers as a box), xy in continuous pixel
        coordinates (see the module docstring). ``[]`` when nothing is left.

    Raises:
        ValueError: ``mask`` is not 2-dimensional, or ``min_area`` is negative.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must have shape (H, W), got {mask.shape}")
    if min_area < 0:
        raise ValueError(f"min_area must be >= 0, got {min_area!r}")
    rows = np.flatnonzero(mask.any(axis=1))
    if len(rows) == 0:
        return []
    cols = np.flatnonzero(mask.any(axis=0))
    # Work on the mask's box (plus a 1-pixel margin) upsampled 2x; map back at the end.
    r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    sub = np.zeros((r1 - r0 + 2, c1 - c0 + 2), np.uint8)
    sub[1:-1, 1:-1] = mask[r0:r1, c0:c1] != 0
    x0, y0 = c0 - 1, r0 - 1
    up = cv2.resize(sub, None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST)
    contours, hierarchy = cv2.findContours(up, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
    if hierarchy is None:
        return []
    hierarchy = hierarchy[0]  # (n, 4): next, previous, first child, parent
    offset = np.array([x0, y0], np.float64)

    def to_image(contour: np.ndarray) -> np.ndarray:
        # upsampled pixel index u -> its centre (u + 0.5) / 2 in sub-mask coordinates
        return (contour.reshape(-1, 2).astype(np.float64) + 0.5) / 2.0 + offset

    polygons = []
    for i, (_, _, child, parent) in enumerate(hierarchy):
        if parent != -1:
            continue
        ring = to_image(contours[i])
        if len(ring) < 3 or _area(ring) < min_area:
            continue
        holes = []
        while child != -1:
            hole = to_image(contours[child])
            if len(hole) >= 3 and _area(hole) >= min_area:
                holes.append(hole)
            child = hierarchy[child][0]
        for hole in holes:
            ring = _bridge(ring, hole)
        ring = _drop_collinear(ring)
        if len(ring) >= 3:
            polygons.append([float(v) for v in ring.ravel()])
    return polygons


def _area(points: np.ndarray) -> float:
    """Shoelace area of a closed polygon, (N, 2) xy."""
    x, y = points[:, 0], points[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def _bridge(ring: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """Splice ``hole`` into ``ring`` through the closest vertex pair (a zero-width cut).

    Both (N, 2) xy. The closest pair of two disjoint boundaries is joined by a segment that
    crosses neither, so the cut stays inside the fragment."""
    dist, idx = cKDTree(ring).query(hole)
    j = int(np.argmin(dist))
    k = int(idx[j])
    hole_loop = np.concatenate([hole[j:], hole[: j + 1]])  # starts and ends at hole[j]
    return np.concatenate([ring[: k + 1], hole_loop, ring[k:]])


def _drop_collinear(points: np.ndarray) -> np.ndarray:
    """Remove vertices that continue a straight run (same direction in and out) and repeats.

    A dense pixel chain becomes its corners; bridge ends are kept (the direction changes)."""
    if len(points) < 3:
        return points
    keep = np.ones(len(points), bool)
    prev_pts = np.roll(points, 1, axis=0)
    next_pts = np.roll(points, -1, axis=0)
    d_in = points - prev_pts
    d_out = next_pts - points
    cross = d_in[:, 0] * d_out[:, 1] - d_in[:, 1] * d_out[:, 0]
    dot = (d_in * d_out).sum(axis=1)
    straight = (cross == 0) & (dot > 0)
    repeat = (d_in == 0).all(axis=1)
    keep &= ~(straight | repeat)
    return points[keep]
