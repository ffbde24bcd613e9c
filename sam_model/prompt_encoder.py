"""SAM's prompt encoder (paper §3 "Prompt encoder", Appendix A).

Sparse prompts (points, box corners) become 256-d tokens: a random Fourier-feature encoding of
their position (Tancik et al., 2020) plus a learned embedding for their type. Dense prompts (a
low-resolution mask hint) are downscaled by strided convolutions; without one, the learned
"no mask" embedding is broadcast over the image-embedding grid.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .configs import PromptDecoderConfig
from .layers import LayerNorm2d

# Point labels, as in the reference predictor.
LABEL_PAD = -1
LABEL_BACKGROUND = 0
LABEL_FOREGROUND = 1


class RandomFourierEncoding(nn.Module):
    """Random Fourier-feature position encoding (buffer ``positional_encoding_gaussian_matrix``).

    A position p in [0, 1]^2 (xy) maps to ``[sin(2*pi*(2p-1) G), cos(2*pi*(2p-1) G)]`` with
    G a fixed (2, C/2) Gaussian matrix, giving C features.
    """

    def __init__(self, num_pos_feats: int, scale: float = 1.0) -> None:
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix",
                             scale * torch.randn((2, num_pos_feats)))

    def encode(self, coords01_xy: torch.Tensor) -> torch.Tensor:
        """``coords01_xy``: (..., 2) float, xy normalised to [0, 1] -> (..., C) float."""
        proj = (2 * coords01_xy - 1) @ self.positional_encoding_gaussian_matrix
        proj = 2 * math.pi * proj
        return torch.cat([proj.sin(), proj.cos()], dim=-1)

    def grid(self, h: int, w: int) -> torch.Tensor:
        """Encoding of the centres of an (h, w) grid of cells: (C, h, w) float."""
        device = self.positional_encoding_gaussian_matrix.device
        ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h
        xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w
        xy = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)  # (h, w, 2)
        return self.encode(xy).permute(2, 0, 1)

    def encode_pixels(self, coords_xy: torch.Tensor, image_hw: tuple[int, int]) -> torch.Tensor:
        """``coords_xy``: (..., 2) float (float64 accepted), xy in pixels of an ``image_hw``
        frame -> (..., C) float32. Normalised in the input dtype, then cast to float32
        (reference ``forward_with_coords``)."""
        size = coords_xy.new_tensor([image_hw[1], image_hw[0]])
        return self.encode((coords_xy / size).float())


class PromptEncoder(nn.Module):
    """Encodes point, box and mask prompts for the mask decoder.

    Learned embeddings (official key names): ``point_embeddings.0`` background point,
    ``.1`` foreground point, ``.2`` box top-left, ``.3`` box bottom-right; ``not_a_point_embed``
    for padding points (label -1); ``no_mask_embed`` for the dense prompt when no mask is given.
    """

    def __init__(self, cfg: PromptDecoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        dim = cfg.embed_dim
        self.pe_layer = RandomFourierEncoding(dim // 2)
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, dim) for _ in range(4))
        self.not_a_point_embed = nn.Embedding(1, dim)
        c = cfg.mask_in_chans
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, c // 4, kernel_size=2, stride=2), LayerNorm2d(c // 4), nn.GELU(),
            nn.Conv2d(c // 4, c, kernel_size=2, stride=2), LayerNorm2d(c), nn.GELU(),
            nn.Conv2d(c, dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, dim)

    @property
    def input_hw(self) -> tuple[int, int]:
        """The model-input frame (pixels) that prompt coordinates refer to: (1024, 1024)."""
        return (self.cfg.input_image_size, self.cfg.input_image_size)

    def dense_positional_encoding(self, grid_hw: tuple[int, int]) -> torch.Tensor:
        """Positional encoding of the image-embedding grid: (1, C, h, w) float32."""
        return self.pe_layer.grid(*grid_hw)[None]

    def embed_points(self, points_xy: torch.Tensor, labels: torch.Tensor, pad: bool) -> torch.Tensor:
        """Point tokens.

        Args:
            points_xy: (B, N, 2) float32, xy in model-input pixels (the 1024 frame).
            labels: (B, N) int, 1 foreground, 0 background, -1 padding.
            pad: append one padding point (done when no box is given, as the reference does).

        Returns:
            (B, N (+1), C) float32. The +0.5 shift moves integer pixel coordinates to pixel
            centres before encoding (reference behaviour).
        """
        points_xy = points_xy + 0.5
        if pad:
            points_xy = torch.cat([points_xy, points_xy.new_zeros(points_xy.shape[0], 1, 2)], 1)
            labels = torch.cat([labels, labels.new_full((labels.shape[0], 1), LABEL_PAD)], 1)
        emb = self.pe_layer.encode_pixels(points_xy, self.input_hw)
        lab = labels[..., None]
        emb = torch.where(lab == LABEL_PAD, self.not_a_point_embed.weight, emb)
        emb = emb + torch.where(lab == LABEL_BACKGROUND, self.point_embeddings[0].weight, 0.0)
        emb = emb + torch.where(lab == LABEL_FOREGROUND, self.point_embeddings[1].weight, 0.0)
        return emb

    def embed_boxes(self, boxes_xyxy: torch.Tensor) -> torch.Tensor:
        """``boxes_xyxy``: (B, 4) float32 in model-input pixels -> corner tokens (B, 2, C)."""
        corners = (boxes_xyxy + 0.5).reshape(-1, 2, 2)
        emb = self.pe_layer.encode_pixels(corners, self.input_hw)
        emb[:, 0] = emb[:, 0] + self.point_embeddings[2].weight
        emb[:, 1] = emb[:, 1] + self.point_embeddings[3].weight
        return emb

    def forward(self, points_xy: torch.Tensor | None, labels: torch.Tensor | None,
                boxes_xyxy: torch.Tensor | None, mask_input: torch.Tensor | None,
                grid_hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Sparse and dense prompt embeddings.

        Args:
            points_xy: (B, N, 2) float32 xy in model-input pixels, or None.
            labels: (B, N) int point labels, or None (required with points).
            boxes_xyxy: (B, 4) float32 XYXY in model-input pixels, or None.
            mask_input: (B, 1, 4h, 4w) float32 low-resolution mask logits, or None.
            grid_hw: (h, w) of the image embedding.

        Returns:
            sparse (B, Nt, C) float32 and dense (B or 1, C, h, w) float32. Without a mask the
            dense embedding is ``no_mask_embed`` broadcast as a (1, C, h, w) tensor.

        Raises:
            ValueError: no prompt at all, or points without labels.
        """
        if points_xy is None and boxes_xyxy is None and mask_input is None:
            raise ValueError("PromptEncoder: give at least one of points, boxes or mask_input")
        if points_xy is not None and labels is None:
            raise ValueError("PromptEncoder: points_xy were given without labels")
        bs = next(t.shape[0] for t in (points_xy, boxes_xyxy, mask_input) if t is not None)
        sparse = [self.embed_points(points_xy, labels, pad=boxes_xyxy is None)] \
            if points_xy is not None else []
        if boxes_xyxy is not None:
            sparse.append(self.embed_boxes(boxes_xyxy))
        dim = self.cfg.embed_dim
        device = self.no_mask_embed.weight.device
        sparse_t = torch.cat(sparse, 1) if sparse else torch.empty(bs, 0, dim, device=device)
        if mask_input is not None:
            dense = self.mask_downscaling(mask_input)
        else:
            dense = self.no_mask_embed.weight.reshape(1, dim, 1, 1).expand(1, dim, *grid_hw)
        return sparse_t, dense


# Box corners given as labelled points (SAM 2's predictor passes boxes this way).
LABEL_BOX_TOP_LEFT = 2
LABEL_BOX_BOTTOM_RIGHT = 3


class Sam2PromptEncoder(PromptEncoder):
    """SAM 2's prompt encoder (official ``sam2.modeling.sam.prompt_encoder``): SAM's layout and
    math, and point labels 2 and 3 for box corners (``point_embeddings.2`` / ``.3`` added to the
    point's position encoding). SAM 2's image predictor passes a box as these two labelled
    points ahead of the click points, and always appends the padding point."""

    def embed_points(self, points_xy: torch.Tensor, labels: torch.Tensor, pad: bool) -> torch.Tensor:
        """Point tokens; as :meth:`PromptEncoder.embed_points`, labels also 2 (box top-left)
        and 3 (box bottom-right). ``points_xy`` (B, N, 2) float32 xy in model-input pixels,
        ``labels`` (B, N) int -> (B, N (+1), C) float32."""
        emb = super().embed_points(points_xy, labels, pad)
        if pad:
            labels = torch.cat([labels, labels.new_full((labels.shape[0], 1), LABEL_PAD)], 1)
        lab = labels[..., None]
        emb = emb + torch.where(lab == LABEL_BOX_TOP_LEFT, self.point_embeddings[2].weight, 0.0)
        return emb + torch.where(lab == LABEL_BOX_BOTTOM_RIGHT, self.point_embeddings[3].weight, 0.0)
