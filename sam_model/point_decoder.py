"""The decoder seam: what every model family's point decoder returns to the generator.

A family's model offers ``point_decoder(emb, compute_dtype=torch.float32, low_res_hw=None, *,
plain=False, **family_options)``, whose ``decode(points_xy, iou_thresh, reject=())`` returns
:class:`DecodedMasks`. The generator (``amg``) sees only these types: the multimask choice,
token layout and any family-specific heads stay inside the family.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch


@dataclass(frozen=True)
class RejectWindow:
    """An image-token window whose low-res logits decide whether an output is dropped.

    Attributes:
        token_box: (y0, y1, x0, x1) half-open range of image-embedding tokens (rows y0..y1-1,
            columns x0..x1-1).
        reject: called with the window's low-res logits (K, s*(y1-y0), s*(x1-x0)) float32
            (s = low-res pixels per token, 4), returns (K,) bool: True drops the output.
    """

    token_box: tuple[int, int, int, int]
    reject: Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class DecodedMasks:
    """The outputs of one ``decode`` call that survive its filters.

    Attributes:
        low_res_logits: (K, h, w) float32, the top-left (h, w) = ``low_res_hw`` part of the
            family's low-res mask-logit map (256 x 256 for a 1024 input).
        predicted_iou: (K,) float32.
        prompt_index: (K,) int64, row of ``points_xy`` each output answers.
        Order: prompt-major, then output (the reference's flatten order).
    """

    low_res_logits: torch.Tensor
    predicted_iou: torch.Tensor
    prompt_index: torch.Tensor


class PointDecoder(Protocol):
    """Per-image (per-crop) decoder of single foreground-point prompts."""

    def decode(self, points_xy: torch.Tensor, iou_thresh: float,
               reject: Sequence[RejectWindow] = ()) -> DecodedMasks:
        """points_xy: (B, 2) float64, xy in pixels of the encoded image; keep outputs with
        predicted IoU > ``iou_thresh`` (<= 0 keeps all) that no ``reject`` window drops."""
        ...


__all__ = ["RejectWindow", "DecodedMasks", "PointDecoder"]
