"""Resampling of low-resolution mask logits as matrices (the families' mask post-processing).

Bilinear and bicubic resampling (``F.interpolate``, ``align_corners=False``) are separable and
linear: resizing an (h, w) map ``L`` to (H, W) is ``A_y @ L @ A_x.T`` with an (H, h) and a
(W, w) matrix, one row per output pixel. The matrices here reproduce the weights and tap
indices of PyTorch's CPU kernels for float32 tensors.
"""

from __future__ import annotations

import numpy as np

# Cubic convolution coefficient of PyTorch's bicubic kernel (Keys, 1981, with a = -0.75, as
# OpenCV and TensorFlow use).
CUBIC_A = -0.75


def _fma32(a, b, c) -> np.ndarray:
    """``a * b + c`` rounded once to float32 (a fused multiply-add of float32 operands; the
    float64 product of two float32 values is exact)."""
    f64 = np.float64
    return (np.asarray(a, f64) * np.asarray(b, f64) + np.asarray(c, f64)).astype(np.float32)


def bicubic_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) float64 matrix of 1-D bicubic resampling with ``align_corners=False``.

    Reproduces PyTorch's CPU ``F.interpolate(mode="bicubic")`` for float32 tensors
    (``HelperInterpCubic``), to within one float32 ulp per weight: in float32, the scale
    ``n_in / n_out``, the source coordinate ``(i + 0.5) * scale - 0.5`` (not clamped at 0,
    unlike bilinear), its integer part ``min(floor(src), n_in - 1)`` and fraction ``t``
    clamped to [0, 1]; the four weights are Keys' cubic convolution with a = -0.75 at the
    distances ``1 + t, t, 1 - t, 2 - t`` of the taps ``floor - 1 .. floor + 2``, each tap index
    clamped to ``[0, n_in - 1]`` (taps that clamp to the same row add up). The source
    coordinate and the cubic polynomials are evaluated with fused multiply-adds, as the
    compiled x86 kernel does (plain float32 evaluation differs by up to 1e-5 for
    non-power-of-two ratios). Rows sum to 1, but weights can be negative: unlike bilinear, an
    output is not always within the range of its taps.

    Raises:
        ValueError: ``n_in`` or ``n_out`` < 1.
    """
    if n_in < 1 or n_out < 1:
        raise ValueError(f"bicubic_matrix sizes must be >= 1, got {n_in} -> {n_out}")
    f32 = np.float32
    a = f32(CUBIC_A)
    scale = f32(f32(n_in) / f32(n_out))
    src = _fma32(np.arange(n_out, dtype=f32) + f32(0.5), scale, f32(-0.5))
    floor = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    t = np.clip(src - floor.astype(f32), f32(0.0), f32(1.0)).astype(f32)

    def near(x: np.ndarray) -> np.ndarray:  # |x| <= 1: ((a + 2) x - (a + 3)) x^2 + 1
        return _fma32(_fma32(a + f32(2.0), x, -(a + f32(3.0))) * x, x, f32(1.0))

    def far(x: np.ndarray) -> np.ndarray:  # 1 <= |x| <= 2: ((a x - 5a) x + 8a) x - 4a
        return _fma32(_fma32(_fma32(a, x, -f32(5.0) * a), x, f32(8.0) * a), x, -f32(4.0) * a)

    one = f32(1.0)
    weights = (far(t + one), near(t), near(one - t), far((one - t) + one))
    m = np.zeros((n_out, n_in))
    rows = np.arange(n_out)
    for k, w in enumerate(weights):
        taps = np.clip(floor - 1 + k, 0, n_in - 1)
        np.add.at(m, (rows, taps), w.astype(np.float64))
    return m


def bilinear_matrix(n_in: int, n_out: int, fused_coordinate: bool = False) -> np.ndarray:
    """(n_out, n_in) float64 matrix of 1-D bilinear resampling with ``align_corners=False``,
    reproducing PyTorch's CPU ``F.interpolate`` weights for float32 tensors: the scale
    ``n_in / n_out`` in float32, the source coordinate ``(i + 0.5) * scale - 0.5`` (clamped
    at 0), the weights in float32; the upper neighbour clamped at ``n_in - 1``.

    Args:
        n_in, n_out: input and output lengths.
        fused_coordinate: round the source coordinate once (a fused multiply-add, as torch's
            vectorised CPU kernels and CUDA compute it: equal to torch's weights for every
            size tried), instead of rounding the product and the subtraction separately (the
            form SAM v1's region upscaling uses; it differs by one float32 ulp of the
            coordinate at some sizes, e.g. 256 -> 800, well inside the float tolerance).
    """
    f32 = np.float32
    scale = f32(f32(n_in) / f32(n_out))
    if fused_coordinate:
        centres = (np.arange(n_out, dtype=f32) + f32(0.5)).astype(np.float64)
        src = (centres * np.float64(scale) - 0.5).astype(f32)  # exact product, one rounding
    else:
        src = (np.arange(n_out, dtype=f32) + f32(0.5)) * scale - f32(0.5)
    src = np.maximum(src, f32(0.0)).astype(f32)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    lam = np.clip(src - i0.astype(f32), f32(0.0), f32(1.0)).astype(f32)
    m = np.zeros((n_out, n_in))
    rows = np.arange(n_out)
    np.add.at(m, (rows, i0), (f32(1.0) - lam).astype(np.float64))
    np.add.at(m, (rows, i1), lam.astype(np.float64))
    return m


def composed_matrix(n_low: int, n_mid: int, n_crop: int, n_out: int) -> np.ndarray:
    """(n_out, n_low) float64: upscale n_low -> n_mid, keep the first n_crop, resize to n_out
    (SAM v1's ``postprocess_masks`` along one axis)."""
    return bilinear_matrix(n_crop, n_out) @ bilinear_matrix(n_low, n_mid)[:n_crop]


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
    return (composed_matrix(n_low, input_size, input_hw[0], original_hw[0]),
            composed_matrix(n_low, input_size, input_hw[1], original_hw[1]))
