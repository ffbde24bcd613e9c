"""The decoder seam: what the automatic mask generator asks of a model family.

Per image (or crop), ``decoder = model.point_decoder(embedding, ...)`` does the shared work
once; per batch of grid points, ``decoder.decode(points_xy, iou_thresh, reject)`` returns the
low-resolution logits of the outputs that pass the predicted-IoU filter
(:class:`DecodedMasks`). Everything family-specific stays behind it: the prompt encoder, the
token layout, the multimask or single-mask choice, an object score, an HQ token, a mask-to-mask
refinement. The generator (``amg``) only sees single foreground points in, low-res logits out.

Every family has a plain point decoder (:class:`PlainPointDecoder`: its prompt encoder and
mask decoder forward, as the paper draws it, then the IoU filter) and may have a fast one with
the same results; tests hold fast == plain == the official implementation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

import torch


@dataclass(frozen=True)
class DecodedMasks:
    """The outputs of one prompt batch that passed the predicted-IoU filter.

    Attributes:
        low_res_logits: (K, h, w) float32 mask logits, the top-left (h, w) part of the family's
            low-resolution map (the part that reaches the image; 256 x 256 for a 1024 input).
        predicted_iou: (K,) float32.
        prompt_index: (K,) int64 index of each output's prompt in the batch. Order: prompt
            major, then output (the reference's ``flatten(0, 1)`` order).
    """

    low_res_logits: torch.Tensor
    predicted_iou: torch.Tensor
    prompt_index: torch.Tensor

    def __len__(self) -> int:
        return int(self.predicted_iou.shape[0])

    @staticmethod
    def empty(low_res_hw: tuple[int, int], device: torch.device) -> "DecodedMasks":
        """No output: (0, h, w) logits, (0,) IoU and (0,) prompt index."""
        z = torch.zeros(0, device=device)
        return DecodedMasks(z.reshape(0, *low_res_hw), z, z.long())


@dataclass(frozen=True)
class RejectWindow:
    """A window of the low-res map whose logits alone decide to drop an output.

    Attributes:
        token_box: ``(y0, y1, x0, x1)`` image-embedding tokens; the window is low-res pixels
            ``[4*y0, 4*y1) x [4*x0, 4*x1)`` (each token is a 4 x 4 patch of the low-res map).
        reject: ``(K, 4*(y1-y0), 4*(x1-x0)) float32 logits -> (K,) bool``, True to drop.
    """

    token_box: tuple[int, int, int, int]
    reject: Callable[[torch.Tensor], torch.Tensor]


class PointDecoder(Protocol):
    """A family's decoder of single-point prompts on one image embedding (see module doc)."""

    low_res_hw: tuple[int, int]

    def decode(self, points_xy: torch.Tensor, iou_thresh: float,
               reject: Sequence[RejectWindow] = ()) -> DecodedMasks:
        """Decode one batch of single foreground points.

        Args:
            points_xy: (B, 2) float64, xy in pixels of the encoded image.
            iou_thresh: keep outputs with predicted IoU > ``iou_thresh``; <= 0 keeps all.
            reject: windows whose ``reject`` drops outputs (e.g. masks reaching a crop edge).
        """
        ...


def window_logits(low: torch.Tensor, token_box: tuple[int, int, int, int]) -> torch.Tensor:
    """The low-res pixels of an image-token window: ``low[..., 4*y0:4*y1, 4*x0:4*x1]``."""
    y0, y1, x0, x1 = token_box
    return low[..., 4 * y0:4 * y1, 4 * x0:4 * x1]


def apply_filters(low_res_logits: torch.Tensor, predicted_iou: torch.Tensor,
                  prompt_index: torch.Tensor, iou_thresh: float,
                  reject: Sequence[RejectWindow], low_res_hw: tuple[int, int] | None
                  ) -> DecodedMasks:
    """The plain decoders' filters on whole low-res maps, in seam order: predicted IoU >
    ``iou_thresh`` (when > 0, as the reference generator), then each :class:`RejectWindow` on
    the survivors, then the top-left ``low_res_hw`` crop.

    Args:
        low_res_logits: (K, h, w) float32 full low-res maps, prompt-major order.
        predicted_iou: (K,) float32. prompt_index: (K,) int64.
        iou_thresh: see :meth:`PointDecoder.decode`. reject: see :class:`RejectWindow`.
        low_res_hw: (h', w') <= (h, w) to keep, or None for the whole map.

    Returns:
        :class:`DecodedMasks` of the survivors, order kept.
    """
    keep = predicted_iou > iou_thresh if iou_thresh > 0 else \
        torch.ones_like(predicted_iou, dtype=torch.bool)
    low, iou, idx = low_res_logits[keep], predicted_iou[keep], prompt_index[keep]
    for window in reject:
        if low.shape[0] == 0:
            break
        drop = window.reject(window_logits(low, window.token_box)).to(low.device)
        low, iou, idx = low[~drop], iou[~drop], idx[~drop]
    if low_res_hw is not None:
        low = low[:, :low_res_hw[0], :low_res_hw[1]].contiguous()
    return DecodedMasks(low, iou, idx)


class PlainPointDecoder:
    """The straightforward point decoder: the family's full prompt encoder + mask decoder
    forward on each prompt, then :func:`apply_filters` on the full maps.

    Args:
        decode_fn: ``(points_xy (B, 1, 2) float64 xy in image pixels, labels (B, 1) int64)
            -> (low-res logits (B, M, n, n) float32, predicted IoU (B, M) float32)``: the
            family's plain decode with its multimask choice.
        low_res_hw: (h, w) top-left part of the low-res map to return.
        device: where the prompts go.
        chunk: prompts per ``decode_fn`` call (memory only; results do not depend on it).
    """

    def __init__(self, decode_fn: Callable[[torch.Tensor, torch.Tensor],
                                           tuple[torch.Tensor, torch.Tensor]],
                 low_res_hw: tuple[int, int], device: torch.device, chunk: int = 64) -> None:
        self.decode_fn = decode_fn
        self.low_res_hw = tuple(low_res_hw)
        self.device = device
        self.chunk = chunk

    def decode(self, points_xy: torch.Tensor, iou_thresh: float,
               reject: Sequence[RejectWindow] = ()) -> DecodedMasks:
        """See :meth:`PointDecoder.decode`."""
        parts = []
        for s in range(0, len(points_xy), self.chunk):
            pts = points_xy[s:s + self.chunk].to(self.device)
            labels = torch.ones(len(pts), 1, dtype=torch.int64, device=self.device)
            low, iou = self.decode_fn(pts[:, None, :], labels)
            b, m = iou.shape
            index = (torch.arange(b, device=iou.device)[:, None] + s).expand(b, m).flatten()
            parts.append(apply_filters(low.flatten(0, 1).float(), iou.flatten().float(), index,
                                       iou_thresh, reject, self.low_res_hw))
        if not parts:
            return DecodedMasks.empty(self.low_res_hw, self.device)
        return DecodedMasks(*(torch.cat([getattr(p, f) for p in parts]) for f in
                              ("low_res_logits", "predicted_iou", "prompt_index")))


__all__ = ["DecodedMasks", "RejectWindow", "PointDecoder", "PlainPointDecoder", "apply_filters",
           "window_logits"]
