"""``MaskData``: the kept masks of a crop or image as aligned, typed fields.

Masks are held compactly as uncompressed RLE (one dict per mask, see :mod:`amg.rle`); every
other field is a tensor whose first axis is the mask index. ``filter`` and ``cat`` keep the
fields aligned.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class MaskData:
    """Aligned per-mask fields.

    Attributes:
        rles: N uncompressed RLE dicts over the full image (column-major, zeros first;
            ``counts`` a list of ints or a (K,) int64 numpy array, :mod:`amg.rle`).
        boxes_xyxy: (N, 4) int64 tight boxes in image pixels, x2/y2 inclusive (reference).
        predicted_iou: (N,) float32 predicted IoU.
        stability_score: (N,) float32.
        points_xy: (N, 2) float64 prompt point of each mask, xy in image pixels.
        crop_boxes_xyxy: (N, 4) int64 crop box each mask came from, XYXY, x2/y2 exclusive.
        reserve: (N,) bool, True for a mask that passed only the looser reserve filters
            (``AMGConfig.reserve_pred_iou_thresh``); all False when not given.
    """

    rles: list[dict[str, Any]] = field(default_factory=list)
    boxes_xyxy: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 4, dtype=torch.int64))
    predicted_iou: torch.Tensor = field(default_factory=lambda: torch.zeros(0))
    stability_score: torch.Tensor = field(default_factory=lambda: torch.zeros(0))
    points_xy: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 2, dtype=torch.float64))
    crop_boxes_xyxy: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 4, dtype=torch.int64))
    reserve: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.bool))

    def __post_init__(self) -> None:
        if self.reserve.numel() == 0 and len(self.rles):
            self.reserve = torch.zeros(len(self.rles), dtype=torch.bool,
                                       device=self.predicted_iou.device)

    def __len__(self) -> int:
        return len(self.rles)

    def filter(self, keep: torch.Tensor) -> "MaskData":
        """Subset by a (N,) bool mask or a (K,) int64 index tensor (order kept as given)."""
        idx = keep.nonzero().flatten() if keep.dtype == torch.bool else keep
        idx_list = idx.tolist()
        return MaskData(
            rles=[self.rles[i] for i in idx_list],
            boxes_xyxy=self.boxes_xyxy[idx.to(self.boxes_xyxy.device)],
            predicted_iou=self.predicted_iou[idx.to(self.predicted_iou.device)],
            stability_score=self.stability_score[idx.to(self.stability_score.device)],
            points_xy=self.points_xy[idx.to(self.points_xy.device)],
            crop_boxes_xyxy=self.crop_boxes_xyxy[idx.to(self.crop_boxes_xyxy.device)],
            reserve=self.reserve[idx.to(self.reserve.device)],
        )

    @staticmethod
    def cat(parts: list["MaskData"]) -> "MaskData":
        """Concatenate in order; an empty list gives an empty ``MaskData``."""
        if not parts:
            return MaskData()
        return MaskData(
            rles=[r for p in parts for r in p.rles],
            boxes_xyxy=torch.cat([p.boxes_xyxy for p in parts]),
            predicted_iou=torch.cat([p.predicted_iou for p in parts]),
            stability_score=torch.cat([p.stability_score for p in parts]),
            points_xy=torch.cat([p.points_xy for p in parts]),
            crop_boxes_xyxy=torch.cat([p.crop_boxes_xyxy for p in parts]),
            reserve=torch.cat([p.reserve.to(parts[0].reserve.device) for p in parts]),
        )

    def to(self, device: str | torch.device) -> "MaskData":
        """All tensors moved to ``device``."""
        return MaskData(self.rles, self.boxes_xyxy.to(device), self.predicted_iou.to(device),
                        self.stability_score.to(device), self.points_xy.to(device),
                        self.crop_boxes_xyxy.to(device), self.reserve.to(device))
