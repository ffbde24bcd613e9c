"""Bilinear resampling of mask logits as matrices (separable and linear).

SAM's mask post-processing (reference ``postprocess_masks``) is bilinear resampling
(``align_corners=False``) of the low-res logits to the square model input, a crop to the resized
image, and bilinear resampling to the original size. Each step acts on rows and columns
separately, so the whole map is ``ay @ low_res @ ax.T`` with two small matrices.
"""

from __future__ import annotations

import numpy as np


def bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) float64 matrix of 1-D bilinear resampling with ``align_corners=False``.

    Reproduces PyTorch's CPU ``F.interpolate`` arithmetic for float32 tensors: the scale
    ``n_in / n_out``, the source coordinate ``(i + 0.5) * scale - 0.5`` clamped at 0 and the
    interpolation weights are computed in float32; the upper neighbour is clamped at
    ``n_in - 1``. Each row sums to 1.
    """
    f32 = np.float32
    scale = f32(f32(n_in) / f32(n_out))
    src = np.maximum((np.arange(n_out, dtype=f32) + f32(0.5)) * scale - f32(0.5), f32(0.0))
    lower = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    upper = np.minimum(lower + 1, n_in - 1)
    frac = np.clip(src - lower.astype(f32), f32(0.0), f32(1.0)).astype(f32)
    m = np.zeros((n_out, n_in))
    rows = np.arange(n_out)
    np.add.at(m, (rows, lower), (f32(1.0) - frac).astype(np.float64))
    np.add.at(m, (rows, upper), frac.astype(np.float64))
    return m


def sam_postprocess_matrices(n_low: int, input_size: int, input_hw: tuple[int, int],
                             original_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """SAM's mask post-processing as ``(ay, ax)``: image logits = ``ay @ low_res @ ax.T``.

    Bilinear ``n_low -> input_size``, keep the first ``input_hw`` rows/columns (the resized
    image inside the padded input), bilinear to ``original_hw`` (reference
    ``postprocess_masks``; :func:`sam_model.mask_decoder.upscale_mask_logits`).

    Args:
        n_low: side of the low-res map (256 for a 1024 input).
        input_size: side of the square, padded model input in pixels (1024).
        input_hw: (h', w') of the resized image inside the model input, pixels.
        original_hw: (H, W) of the encoded image, pixels.

    Returns:
        ay (H, n_low) and ax (W, n_low), float64.
    """
    def axis(n_crop: int, n_out: int) -> np.ndarray:
        return bilinear_matrix(n_crop, n_out) @ bilinear_matrix(n_low, input_size)[:n_crop]
    return axis(input_hw[0], original_hw[0]), axis(input_hw[1], original_hw[1])
