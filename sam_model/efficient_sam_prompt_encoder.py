"""EfficientSAM's prompt encoder (Xiong et al., CVPR 2024; the official ``PromptEncoder``).

Like SAM's (Kirillov et al., 2023, §3), a prompt point becomes a 256-d token: the random
Fourier-feature encoding of its position (:class:`~sam_model.prompt_encoder.RandomFourierEncoding`,
the same buffer and formula) plus a learned embedding for its type. EfficientSAM differs from
SAM in the prompt layout:

- every prompt has exactly ``max_num_input_points`` (6) points; missing ones are padding points
  with coordinates (-1, -1) and label -1 (:func:`pad_points`), and boxes are two points with
  labels 2 (top-left) and 3 (bottom-right);
- a padding point keeps its position encoding and *adds* ``invalid_points`` (SAM replaces it);
- a background point (label 0) gets no type embedding, only its position encoding;
- there is no dense (mask) prompt and no "no mask" embedding.

Learned embeddings (official key names): ``invalid_points`` (label -1), ``point_embeddings``
(label 1), ``bbox_top_left_embeddings`` (2), ``bbox_bottom_right_embeddings`` (3).
"""

from __future__ import annotations

import torch
from torch import nn

from .configs import EfficientSamDecoderConfig
from .prompt_encoder import RandomFourierEncoding

LABEL_INVALID = -1
LABEL_BACKGROUND = 0
LABEL_FOREGROUND = 1
LABEL_BOX_TOP_LEFT = 2
LABEL_BOX_BOTTOM_RIGHT = 3


def pad_points(points_xy: torch.Tensor, labels: torch.Tensor, num_points: int
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad every prompt to ``num_points`` points with invalid points (reference ``predict_masks``).

    Args:
        points_xy: (B, N, 2) float, xy in any pixel frame.
        labels: (B, N) int or float point labels.
        num_points: points per prompt after padding (6).

    Returns:
        points (B, num_points, 2) with padding coordinates -1.0, and labels (B, num_points) with
        padding label -1, in the input dtypes.

    Raises:
        ValueError: N > ``num_points`` (the reference silently keeps the first ``num_points``).
    """
    b, n = labels.shape
    if n > num_points:
        raise ValueError(f"EfficientSAM takes at most {num_points} points per prompt, got {n}")
    if n == num_points:
        return points_xy, labels
    pad = num_points - n
    points_xy = torch.cat([points_xy, points_xy.new_full((b, pad, 2), -1.0)], 1)
    labels = torch.cat([labels, labels.new_full((b, pad), LABEL_INVALID)], 1)
    return points_xy, labels


class EfficientSamPromptEncoder(nn.Module):
    """Encodes EfficientSAM point prompts (boxes are corner points) for its mask decoder."""

    def __init__(self, cfg: EfficientSamDecoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        dim = cfg.embed_dim
        self.pe_layer = RandomFourierEncoding(dim // 2)
        self.invalid_points = nn.Embedding(1, dim)
        self.point_embeddings = nn.Embedding(1, dim)
        self.bbox_top_left_embeddings = nn.Embedding(1, dim)
        self.bbox_bottom_right_embeddings = nn.Embedding(1, dim)

    @property
    def input_hw(self) -> tuple[int, int]:
        """The model-input frame (pixels) that prompt coordinates refer to: (1024, 1024)."""
        return (self.cfg.input_image_size, self.cfg.input_image_size)

    def dense_positional_encoding(self, grid_hw: tuple[int, int]) -> torch.Tensor:
        """Positional encoding of the image-embedding grid cell centres: (1, C, h, w) float32."""
        return self.pe_layer.grid(*grid_hw)[None]

    def forward(self, points_xy: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Sparse prompt tokens.

        Args:
            points_xy: (B, N, 2) float (float64 accepted), xy in model-input pixels (the
                1024 x 1024 frame), padding points at (-1, -1) (see :func:`pad_points`).
            labels: (B, N) int or float: -1 padding, 0 background, 1 foreground, 2 box
                top-left, 3 box bottom-right.

        Returns:
            (B, N, C) float32 tokens: the position encoding of ``points_xy + 0.5`` (the
            pixel-centre shift, reference behaviour), normalised by the 1024 frame in the
            input dtype and then cast to float32, plus the label's learned embedding.
        """
        emb = self.pe_layer.encode_pixels(points_xy + 0.5, self.input_hw)
        lab = labels[..., None]
        for value, table in ((LABEL_INVALID, self.invalid_points),
                             (LABEL_FOREGROUND, self.point_embeddings),
                             (LABEL_BOX_TOP_LEFT, self.bbox_top_left_embeddings),
                             (LABEL_BOX_BOTTOM_RIGHT, self.bbox_bottom_right_embeddings)):
            emb = emb + torch.where(lab == value, table.weight, 0.0)
        return emb
