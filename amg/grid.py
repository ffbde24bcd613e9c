"""Point grids used as prompts for automatic mask generation (SAM paper §B, "Automatic mask
generation": a regular grid of foreground points, one grid per crop layer).

Convention: points are xy (x = column, y = row), normalised to [0, 1] by the crop's width and
height; multiply by (crop_w, crop_h) to get crop pixels.
"""

from __future__ import annotations

import numpy as np

__all__ = ["build_point_grid", "build_all_layer_point_grids"]


def build_point_grid(n_per_side: int) -> np.ndarray:
    """A regular ``n_per_side x n_per_side`` grid of points covering the unit square.

    Args:
        n_per_side: points along each side, >= 1.

    Returns:
        ``(n_per_side**2, 2)`` float64, xy normalised to [0, 1]. Point coordinates along one
        side are at ``(i + 0.5) / n`` (cell centres), computed as
        ``np.linspace(0.5/n, 1 - 0.5/n, n)`` so that the values are bit-identical to the
        reference ``segment_anything.utils.amg.build_point_grid`` (they may differ from the
        literal ``(i + 0.5) / n`` by one ulp). Order is row-major with y the outer (slow)
        index: point ``k`` is ``(x_{k % n}, y_{k // n})``.

    Raises:
        ValueError: ``n_per_side`` < 1.
    """
    n = int(n_per_side)
    if n < 1:
        raise ValueError(f"n_per_side must be >= 1, got {n_per_side!r}")
    offset = 0.5 / n
    side = np.linspace(offset, 1.0 - offset, n)
    xs = np.tile(side[None, :], (n, 1))  # varies along columns (fast index)
    ys = np.tile(side[:, None], (1, n))  # varies along rows (slow index)
    return np.stack([xs, ys], axis=-1).reshape(-1, 2)


def build_all_layer_point_grids(
    n_per_side: int, n_layers: int, scale_per_layer: int | float
) -> list[np.ndarray]:
    """One point grid per crop layer (layer 0 = whole image, then ``n_layers`` crop layers).

    Layer ``i`` (0..n_layers inclusive) gets ``int(n_per_side / scale_per_layer**i)`` points per
    side, so that the point density in image pixels stays roughly constant across layers
    (reference ``build_all_layer_point_grids``; ``crop_n_points_downscale_factor`` in the
    generator config).

    Args:
        n_per_side: points per side on layer 0, >= 1.
        n_layers: number of crop layers below the whole image, >= 0.
        scale_per_layer: downscale of points per side per layer, > 0.

    Returns:
        list of ``n_layers + 1`` arrays, each ``(m_i**2, 2)`` float64 xy in [0, 1]
        (see :func:`build_point_grid`).

    Raises:
        ValueError: ``n_layers`` < 0, ``scale_per_layer`` <= 0, or a layer whose points per
        side would be < 1 (the message names ``n_per_side``).
    """
    if n_layers < 0:
        raise ValueError(f"n_layers must be >= 0, got {n_layers!r}")
    if scale_per_layer <= 0:
        raise ValueError(f"scale_per_layer must be > 0, got {scale_per_layer!r}")
    return [build_point_grid(int(n_per_side / (scale_per_layer**i))) for i in range(n_layers + 1)]
