"""The decoder seam: what every model family's ``point_decoder(...)`` returns and takes.

A family's model offers ``point_decoder(emb, compute_dtype, low_res_hw, *, plain, **options)``
returning a :class:`PointDecoder`, whose ``decode(points_xy, iou_thresh, reject)`` gives
:class:`DecodedMasks`. The multimask/single-mask choice, token layout, object score and HQ
token stay inside the family; the generator sees only these types.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

import numpy as np
import torch


@dataclass(frozen=True)
class RejectWindow:
    """Drop outputs by a test on one window of their low-resolution logits.

    Attributes:
        token_box: (y0, y1, x0, x1) image-token indices (end exclusive) of the window; its
            low-res logits are the (4*(y1-y0), 4*(x1-x0)) pixels starting at (4*y0, 4*x0).
        reject: ``fn(logits)``, logits (K, 4*(y1-y0), 4*(x1-x0)) float32 -> (K,) bool, True
            for outputs to drop.
    """

    token_box: tuple[int, int, int, int]
    reject: Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class DecodedMasks:
    """The outputs a point decoder keeps, in prompt-major then output order.

    Attributes:
        low_res_logits: (K, h, w) float32, the top-left ``low_res_hw`` part of the family's
            low-res mask-logit map (256 x 256 for a 1024 input).
        predicted_iou: (K,) float32.
        prompt_index: (K,) int64 index of each output's prompt in the ``points_xy`` given.
    """

    low_res_logits: torch.Tensor
    predicted_iou: torch.Tensor
    prompt_index: torch.Tensor


class PointDecoder(Protocol):
    """One image's (crop's) decoder for single foreground-point prompts."""

    def decode(self, points_xy: np.ndarray | torch.Tensor, iou_thresh: float,
               reject: Sequence[RejectWindow] = ()) -> DecodedMasks:
        """Masks of the outputs that survive the filters.

        Args:
            points_xy: (B, 2) float64, xy in pixels of the encoded image, one foreground
                point (label 1) per prompt, no mask input.
            iou_thresh: keep outputs with predicted IoU > ``iou_thresh`` (<= 0 keeps all).
            reject: windows whose ``reject`` test drops outputs.
        """
        ...


def filter_outputs(low_res_logits: torch.Tensor, predicted_iou: torch.Tensor,
                   prompt_index: torch.Tensor, iou_thresh: float,
                   reject: Sequence[RejectWindow], low_res_hw: tuple[int, int]) -> DecodedMasks:
    """The filters of a plain point decoder on whole low-res maps, in seam order: predicted
    IoU > ``iou_thresh`` (when > 0, as the reference generator), then each reject window on
    the survivors, then the top-left ``low_res_hw`` crop.

    Args:
        low_res_logits: (K, H4, W4) float32 full low-res maps, prompt-major order.
        predicted_iou: (K,) float32.
        prompt_index: (K,) int64.
        iou_thresh: see :meth:`PointDecoder.decode`.
        reject: see :class:`RejectWindow`.
        low_res_hw: (h, w) <= (H4, W4) part of the map to return.

    Returns:
        :class:`DecodedMasks` of the survivors, order kept.
    """
    keep = predicted_iou > iou_thresh if iou_thresh > 0 else \
        torch.ones_like(predicted_iou, dtype=torch.bool)
    low, iou, idx = low_res_logits[keep], predicted_iou[keep], prompt_index[keep]
    for window in reject:
        if low.shape[0] == 0:
            break
        y0, y1, x0, x1 = window.token_box
        drop = window.reject(low[:, 4 * y0:4 * y1, 4 * x0:4 * x1])
        low, iou, idx = low[~drop], iou[~drop], idx[~drop]
    h, w = low_res_hw
    return DecodedMasks(low[:, :h, :w].contiguous(), iou, idx)
