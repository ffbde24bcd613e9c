"""Coarse-to-fine prompting for the fast preset: prompt a sparse subset of the point grid
first, then only the grid points that no small mask found so far already covers.

This is *not* the reference's computation (the reference prompts every grid point); it trades a
little recall for far fewer mask-decoder runs. A grid point inside a small kept mask mostly
reproduces that mask (or one of its multimask siblings), which box NMS would then discard; a
point inside a large mask (background, a whole object) may still find parts, so it is kept.
Measured trade-offs are in ``docs/benchmarks.md``.
"""

from __future__ import annotations

import numpy as np


def grid_passes(n_points: int, stride: int) -> list[np.ndarray]:
    """Split a regular n x n point grid (row-major, y outer; see :func:`amg.grid.build_point_grid`)
    into a coarse pass (every ``stride``-th row and column, offset to the block centre) and the
    remaining points.

    Args:
        n_points: points in the grid; must be a square number for a split.
        stride: >= 1; 1 (or a non-square grid) gives one pass with every point.

    Returns:
        list of (N_i,) int64 index arrays into the grid, in prompting order.
    """
    n = int(round(np.sqrt(n_points)))
    all_idx = np.arange(n_points)
    if stride <= 1 or n * n != n_points or n < stride:
        return [all_idx]
    k = stride // 2
    iy, ix = np.divmod(all_idx, n)
    coarse = (iy % stride == k) & (ix % stride == k)
    return [all_idx[coarse], all_idx[~coarse]]


def points_in_rles(rles: list[dict], points_yx: np.ndarray) -> np.ndarray:
    """Which points lie inside which masks.

    Args:
        rles: M uncompressed RLEs (``{"size": [h, w], "counts": [...]}``, column-major, counts
            starting with zeros), all of the same size.
        points_yx: (P, 2) int64 pixel indexes (row, column) inside that size.

    Returns:
        (M, P) bool: ``out[m, p]`` is the mask value at point p.
    """
    out = np.zeros((len(rles), len(points_yx)), dtype=bool)
    if not rles or not len(points_yx):
        return out
    h = rles[0]["size"][0]
    flat = points_yx[:, 1].astype(np.int64) * h + points_yx[:, 0].astype(np.int64)
    for m, rle in enumerate(rles):
        ends = np.cumsum(rle["counts"])  # run j covers [ends[j-1], ends[j]); odd runs are ones
        run = np.searchsorted(ends, flat, side="right")
        out[m] = (run % 2) == 1
    return out


def uncovered(points_xy: np.ndarray, offset_xy: tuple[int, int], rles: list[dict],
              areas: np.ndarray, max_area: float) -> np.ndarray:
    """Indexes of the points not inside any mask of area <= ``max_area``.

    Args:
        points_xy: (P, 2) float64, xy in crop pixels.
        offset_xy: the crop's top-left corner (x0, y0) in the image, pixels.
        rles: kept masks so far (uncompressed RLE in the full image).
        areas: (M,) their areas, pixels.
        max_area: only masks at most this large (pixels) make a point redundant.

    Returns:
        (P',) int64 indexes into ``points_xy``, ascending.
    """
    small = [r for r, a in zip(rles, areas) if a <= max_area]
    if not small:
        return np.arange(len(points_xy))
    h, w = small[0]["size"]
    px = np.clip(np.floor(points_xy[:, 0]).astype(np.int64) + offset_xy[0], 0, w - 1)
    py = np.clip(np.floor(points_xy[:, 1]).astype(np.int64) + offset_xy[1], 0, h - 1)
    inside = points_in_rles(small, np.stack([py, px], 1)).any(0)
    return np.nonzero(~inside)[0]
