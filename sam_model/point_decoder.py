"""The decoder seam: what the everything-mask generator asks of every model family.

A family's model offers ``point_decoder(emb, compute_dtype, low_res_hw, *, plain, **options)``
returning a :class:`PointDecoder`; the generator calls only its :meth:`PointDecoder.decode`
with one foreground point per prompt and receives :class:`DecodedMasks`. The multimask /
single-mask choice, the token layout, the object score, the HQ token and mask-to-mask
refinement all stay inside the family.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch


@dataclass(frozen=True)
class DecodedMasks:
    """The outputs of one :meth:`PointDecoder.decode` call that passed its filters, in
    prompt-major then output order (the reference's flatten order).

    Attributes:
        low_res_logits: (K, h, w) float32 mask logits, the top-left ``low_res_hw`` part of the
            family's low-resolution map (256 x 256 for a 1024 input).
        predicted_iou: (K,) float32 predicted IoU.
        prompt_index: (K,) int64 index of each output's prompt in ``points_xy``.
    """

    low_res_logits: torch.Tensor
    predicted_iou: torch.Tensor
    prompt_index: torch.Tensor


@dataclass(frozen=True)
class RejectWindow:
    """A filter on one window of the low-resolution logits.

    Attributes:
        token_box: (y0, y1, x0, x1) image-token rows/columns, end-exclusive; the window is the
            low-res pixels ``[4*y0:4*y1, 4*x0:4*x1]``.
        reject: called with the window's logits (K, 4*(y1-y0), 4*(x1-x0)) float32; returns (K,)
            bool, True for outputs to drop.
    """

    token_box: tuple[int, int, int, int]
    reject: Callable[[torch.Tensor], torch.Tensor]


class PointDecoder(Protocol):
    """Per-image (per-crop) decoder of single foreground-point prompts."""

    def decode(self, points_xy: np.ndarray | torch.Tensor, iou_thresh: float,
               reject: Sequence[RejectWindow] = ()) -> DecodedMasks:
        """Decode one batch of prompts.

        Args:
            points_xy: (B, 2) float64, xy in pixels of the encoded image (the crop), one
                foreground point (label 1) per prompt, no mask input.
            iou_thresh: keep only outputs with predicted IoU > ``iou_thresh`` (<= 0 keeps all).
            reject: windows whose ``reject`` drops outputs.

        Returns:
            the surviving outputs (:class:`DecodedMasks`).
        """
        ...


def bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) float64 matrix of 1-D bilinear resampling with ``align_corners=False``,
    reproducing PyTorch's ``F.interpolate`` weights for float32 tensors: the scale
    ``n_in / n_out`` in float32; the source coordinate ``(i + 0.5) * scale - 0.5`` rounded
    once to float32, as the fused multiply-add of torch's vectorised CPU kernels (and CUDA)
    computes it, then clamped at 0; the weights in float32; the upper neighbour clamped at
    ``n_in - 1``. (Equal to torch's weights for every size tried, both axes; rounding the
    product and the subtraction separately differs by one float32 ulp of the coordinate in most
    sizes, e.g. 256 -> 800.) ``amg.upscale.bilinear_matrix`` is the two-rounding variant."""
    f32 = np.float32
    scale = f32(f32(n_in) / f32(n_out))
    centres = (np.arange(n_out, dtype=f32) + f32(0.5)).astype(np.float64)
    src = (centres * np.float64(scale) - 0.5).astype(f32)  # exact product, one rounding
    src = np.maximum(src, f32(0.0)).astype(f32)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    lam = np.clip(src - i0.astype(f32), f32(0.0), f32(1.0)).astype(f32)
    m = np.zeros((n_out, n_in))
    rows = np.arange(n_out)
    np.add.at(m, (rows, i0), (f32(1.0) - lam).astype(np.float64))
    np.add.at(m, (rows, i1), lam.astype(np.float64))
    return m


def apply_filters(low_res_logits: torch.Tensor, predicted_iou: torch.Tensor,
                  prompt_index: torch.Tensor, iou_thresh: float,
                  reject: Sequence[RejectWindow], low_res_hw: tuple[int, int] | None
                  ) -> DecodedMasks:
    """The plain decoders' filtering: predicted IoU > ``iou_thresh`` (when > 0), then each
    :class:`RejectWindow` on a slice of the full map, then the top-left ``low_res_hw`` crop.

    Args:
        low_res_logits: (K, h, w) float32. predicted_iou: (K,) float32.
        prompt_index: (K,) int64.
        iou_thresh: see :meth:`PointDecoder.decode`.
        reject: see :meth:`PointDecoder.decode`.
        low_res_hw: (h', w') <= (h, w) to keep, or None for the whole map.

    Returns:
        :class:`DecodedMasks` of the survivors, order kept.
    """
    if iou_thresh > 0:
        keep = predicted_iou > iou_thresh
        low_res_logits, predicted_iou, prompt_index = (
            low_res_logits[keep], predicted_iou[keep], prompt_index[keep])
    for window in reject:
        y0, y1, x0, x1 = window.token_box
        drop = window.reject(low_res_logits[:, 4 * y0:4 * y1, 4 * x0:4 * x1])
        keep = ~drop.to(low_res_logits.device)
        low_res_logits, predicted_iou, prompt_index = (
            low_res_logits[keep], predicted_iou[keep], prompt_index[keep])
    if low_res_hw is not None:
        low_res_logits = low_res_logits[:, : low_res_hw[0], : low_res_hw[1]]
    return DecodedMasks(low_res_logits, predicted_iou, prompt_index)
