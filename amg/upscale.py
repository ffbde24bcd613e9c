"""Region-restricted upscaling of low-resolution mask logits, for the stability score, the
binary mask and its RLE (an exact rewrite of the reference's full-size post-processing).

The reference upscales every low-resolution logit map bilinearly to the padded model input
(256 -> 1024), crops the padding, and resizes bilinearly to the image (``postprocess_masks``),
then counts pixels above ``+offset`` and ``-offset`` (stability score) and above 0 (the mask).
Bilinear resampling is separable and linear, so the whole chain is ``A_y @ L @ A_x^T`` with two
small matrices (image rows x low-res rows, image columns x low-res columns), each row a convex
combination (non-negative weights summing to 1) of at most four low-res values.

Hence an output pixel all of whose taps hold logits <= -offset is itself <= -offset: it counts
in neither count and is not in the mask. Only the image region reached by low-res pixels above
``-offset`` (minus a 1e-4 float margin) is computed, with the full tap support of that region,
so every value computed equals the full computation up to float rounding, and every value not
computed is known to be below every threshold. Work and memory scale with the mask's extent,
not with the image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .masks import masks_to_boxes_xyxy
from .rle import masks_to_rle

# Float margin below -offset under which a low-res logit is known not to reach -offset.
ACTIVE_MARGIN = 1e-4


def bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) float64 matrix of 1-D bilinear resampling with ``align_corners=False``,
    reproducing PyTorch's CPU ``F.interpolate`` arithmetic for float32 tensors: the scale
    ``n_in / n_out``, the source coordinate ``(i + 0.5) * scale - 0.5`` (clamped at 0) and the
    weights are computed in float32; the upper neighbour is clamped at ``n_in - 1``."""
    f32 = np.float32
    scale = f32(f32(n_in) / f32(n_out))
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
    """(n_out, n_low) float64: upscale n_low -> n_mid, keep the first n_crop, resize to n_out."""
    return bilinear_matrix(n_crop, n_out) @ bilinear_matrix(n_low, n_mid)[:n_crop]


@dataclass
class UpscaledMask:
    """One mask after region-restricted upscaling.

    Attributes:
        stability: float stability score (nan when no pixel exceeds ``-offset``, as the reference).
        mask: (h_r, w_r) bool region of the binary mask (logit > threshold).
        y0, x0: the region's top-left corner in the upscaled frame, pixels.
    """

    stability: float
    mask: torch.Tensor
    y0: int
    x0: int


class RegionUpscaler:
    """Upscale low-res logits of one crop to its original size, only where it matters.

    Args:
        low_hw: (h, w) of the low-resolution logits given (the decoded token region x 4).
        model_input_size: side of the padded model input (1024).
        full_low: side of the full low-resolution map (256).
        input_hw: (h', w') of the resized crop inside the model input.
        out_hw: (H, W) of the crop, pixels.
        device: where the matrices live.
    """

    def __init__(self, low_hw: tuple[int, int], full_low: int, model_input_size: int,
                 input_hw: tuple[int, int], out_hw: tuple[int, int], device: torch.device) -> None:
        ay = composed_matrix(full_low, model_input_size, input_hw[0], out_hw[0])
        ax = composed_matrix(full_low, model_input_size, input_hw[1], out_hw[1])
        if ay[:, low_hw[0]:].any() or ax[:, low_hw[1]:].any():
            raise ValueError(f"low-res region {low_hw} does not cover the taps of a {out_hw} output")
        ay, ax = ay[:, : low_hw[0]], ax[:, : low_hw[1]]
        self.out_hw = out_hw
        self.ay = torch.from_numpy(ay).float().to(device)
        self.ax = torch.from_numpy(ax).float().to(device)
        # Output range touched by each low-res index, and low-res support of each output index.
        self.y_lo, self.y_hi = _reach(ay)
        self.x_lo, self.x_hi = _reach(ax)
        self.r_lo, self.r_hi = _support(ay)
        self.c_lo, self.c_hi = _support(ax)

    @staticmethod
    def needed_low_res(full_low: int, model_input_size: int, input_hw: tuple[int, int],
                       out_hw: tuple[int, int]) -> tuple[int, int]:
        """(rows, cols) of the low-res map that any output pixel reads (the rest is padding)."""
        ay = composed_matrix(full_low, model_input_size, input_hw[0], out_hw[0])
        ax = composed_matrix(full_low, model_input_size, input_hw[1], out_hw[1])
        return int(np.nonzero(ay.any(0))[0].max()) + 1, int(np.nonzero(ax.any(0))[0].max()) + 1

    def upscale(self, low: torch.Tensor, threshold: float, offset: float) -> UpscaledMask:
        """Stability score and binary mask region of one low-res logit map ``low`` (h, w)."""
        active = low > threshold - offset - ACTIVE_MARGIN
        rows = active.any(1).nonzero()
        if len(rows) == 0:
            return UpscaledMask(float("nan"), torch.zeros(0, 0, dtype=torch.bool, device=low.device), 0, 0)
        cols = active.any(0).nonzero()
        r0, r1 = int(rows[0]), int(rows[-1]) + 1
        c0, c1 = int(cols[0]), int(cols[-1]) + 1
        y0, y1 = int(self.y_lo[r0]), int(self.y_hi[r1 - 1])
        x0, x1 = int(self.x_lo[c0]), int(self.x_hi[c1 - 1])
        if y1 <= y0 or x1 <= x0:  # active low-res pixels reach no output pixel
            return UpscaledMask(float("nan"), torch.zeros(0, 0, dtype=torch.bool, device=low.device), 0, 0)
        ra, rb = int(self.r_lo[y0]), int(self.r_hi[y1 - 1])
        ca, cb = int(self.c_lo[x0]), int(self.c_hi[x1 - 1])
        region = self.ay[y0:y1, ra:rb] @ low[ra:rb, ca:cb] @ self.ax[x0:x1, ca:cb].T
        inter = int((region > threshold + offset).sum())
        union = int((region > threshold - offset).sum())
        # float32 quotient, as the reference's stability score
        stability = float(np.float32(inter) / np.float32(union)) if union else float("nan")
        return UpscaledMask(stability, region > threshold, y0, x0)


def _reach(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each input index j: the output range ``[first, last)`` reached by the input indices
    ``>= j`` (first) and ``<= j`` (last) that have a nonzero weight.

    Input indices no output reads (padding beyond the image, or rows skipped by a downscale)
    reach nothing; looking to the nearest reached index on each side makes ``first[r0]`` and
    ``last[r1 - 1]`` the exact output range of any input span ``[r0, r1)``, because the reach
    of the reached indices is monotone. An empty span gives ``last <= first``.
    """
    nz = m != 0
    n_out, n_in = m.shape
    reached = nz.any(0)
    first = np.where(reached, nz.argmax(0), n_out)
    last = np.where(reached, n_out - nz[::-1].argmax(0), 0)
    # nearest reached index at or after j (first) / at or before j (last)
    first = np.minimum.accumulate(first[::-1])[::-1].copy()
    last = np.maximum.accumulate(last)
    return first, last


def _support(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each output index i: [first, last + 1) of input indices with a nonzero weight."""
    nz = m != 0
    first = nz.argmax(1)
    last = m.shape[1] - nz[:, ::-1].argmax(1)
    return first, last


def region_box_xyxy(mask: torch.Tensor, y0: int, x0: int) -> torch.Tensor:
    """Tight XYXY box (x2/y2 inclusive, reference convention) of a region mask placed at
    (y0, x0); an empty mask gives [0, 0, 0, 0] like the reference. (4,) int64."""
    if mask.numel() == 0 or not bool(mask.any()):
        return torch.zeros(4, dtype=torch.int64, device=mask.device)
    box = masks_to_boxes_xyxy(mask[None])[0]
    return box + torch.tensor([x0, y0, x0, y0], device=box.device)


def region_to_rle(mask: torch.Tensor, y0: int, x0: int, h: int, w: int) -> dict:
    """Uncompressed RLE (column-major, zeros first) of an (h, w) image that is zero except for
    the region ``mask`` (h_r, w_r) bool placed at (y0, x0). Only the region's columns are
    materialised; the columns left and right of it are added as zero runs."""
    hr, wr = mask.shape
    if hr == 0 or wr == 0 or not bool(mask.any()):
        return {"size": [h, w], "counts": [h * w]}
    cols = torch.zeros(1, h, wr, dtype=torch.bool, device=mask.device)
    cols[0, y0:y0 + hr] = mask
    counts = list(masks_to_rle(cols)[0]["counts"])
    lead, trail = x0 * h, (w - x0 - wr) * h
    counts[0] += lead
    if len(counts) % 2 == 1:  # ends with a run of zeros
        counts[-1] += trail
    elif trail:
        counts.append(trail)
    return {"size": [h, w], "counts": counts}
