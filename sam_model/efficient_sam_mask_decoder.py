"""EfficientSAM's mask decoder (Xiong et al., CVPR 2024: "we keep SAM's mask decoder"; the
official ``MaskDecoder`` of EfficientSAM).

SAM's design (Kirillov et al., 2023, §3 "Mask decoder"): one IoU token and four mask tokens are
prepended to the prompt tokens and run with the image embedding through the two-way
transformer (:mod:`sam_model.efficient_sam_two_way_transformer`); the image tokens are upscaled
4x by two transposed convolutions; each mask token's hypernetwork MLP gives the weights of a
dot product with the upscaled features (one low-resolution logit map per token), and the IoU
token's MLP head gives each mask's predicted IoU. Token 0 is the single-mask output, tokens 1-3
the three multimask outputs.

Differences from SAM's decoder, all in the official EfficientSAM code: no dense prompt is
added to the image embedding; the upscaling stages are ``ConvTranspose2d`` -> ``GroupNorm(1, C)``
(one group: statistics over channels *and* pixels, eps 1e-5) -> GELU, then ``ConvTranspose2d``
-> GELU (SAM: LayerNorm2d per pixel); the hypernetwork and IoU MLPs use GELU, not ReLU. Keys:
``iou_token``, ``mask_tokens``, ``transformer``, ``final_output_upscaling_layers.{0,1}``,
``output_hypernetworks_mlps.{0..3}``, ``iou_prediction_head``.
"""

from __future__ import annotations

import torch
from torch import nn

from .configs import EfficientSamDecoderConfig
from .efficient_sam_two_way_transformer import EfficientSamTwoWayTransformer
from .layers import EfficientSamMLP

MULTIMASK = slice(1, None)
SINGLE_MASK = slice(0, 1)


class EfficientSamMaskDecoder(nn.Module):
    """EfficientSAM mask decoder with the official state-dict layout."""

    def __init__(self, cfg: EfficientSamDecoderConfig) -> None:
        super().__init__()
        dim = cfg.embed_dim
        self.cfg = cfg
        self.transformer = EfficientSamTwoWayTransformer(
            cfg.transformer_depth, dim, cfg.transformer_num_heads, cfg.transformer_mlp_dim,
            cfg.attention_downsample_rate)
        self.num_mask_tokens = cfg.num_multimask_outputs + 1
        self.iou_token = nn.Embedding(1, dim)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, dim)
        stages, width = [], dim
        for i, out in enumerate(cfg.upscaling_layer_dims):
            last = i == len(cfg.upscaling_layer_dims) - 1
            stages.append(nn.Sequential(nn.ConvTranspose2d(width, out, kernel_size=2, stride=2),
                                        nn.Identity() if last else nn.GroupNorm(1, out),
                                        nn.GELU()))
            width = out
        self.final_output_upscaling_layers = nn.ModuleList(stages)
        self.output_hypernetworks_mlps = nn.ModuleList(
            EfficientSamMLP(dim, dim, width, cfg.hypernetwork_depth - 1)
            for _ in range(self.num_mask_tokens))
        self.iou_prediction_head = EfficientSamMLP(dim, cfg.iou_head_hidden_dim,
                                                   self.num_mask_tokens, cfg.iou_head_depth - 1)

    def run_transformer(self, image_embedding: torch.Tensor, image_pe: torch.Tensor,
                        sparse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Two-way transformer over output tokens + prompt tokens and the image embedding.

        Args:
            image_embedding: (1 or B, C, h, w) float32.
            image_pe: (1, C, h, w) float32 grid positional encoding.
            sparse: (B, Np, C) float32 prompt tokens.

        Returns:
            tokens (B, 1 + 4 + Np, C) and image tokens (B, h*w, C), float32.
        """
        b = sparse.shape[0]
        tokens = torch.cat([self.output_tokens()[None].expand(b, -1, -1), sparse], 1)
        return self.transformer(image_embedding, image_pe, tokens)

    def output_tokens(self) -> torch.Tensor:
        """The learned output tokens put before the prompt tokens: (1 + 4, C) float32, the
        IoU token then the four mask tokens."""
        return torch.cat([self.iou_token.weight, self.mask_tokens.weight], 0)

    def hypernetwork_weights(self, tokens: torch.Tensor, mask_index: list[int]) -> torch.Tensor:
        """Per-mask weights: (B, len(mask_index), 32) from the chosen mask tokens."""
        return torch.stack([self.output_hypernetworks_mlps[i](tokens[:, 1 + i])
                            for i in mask_index], 1)

    def predict_iou(self, tokens: torch.Tensor) -> torch.Tensor:
        """``tokens``: (B, Nt, C) transformer output -> predicted IoU (B, 4) float32, all tokens."""
        return self.iou_prediction_head(tokens[:, 0])

    def upscale(self, image_tokens: torch.Tensor, grid_hw: tuple[int, int]) -> torch.Tensor:
        """``image_tokens``: (B, h*w, C) -> upscaled features (B, 32, 4h, 4w) float32."""
        b, _, c = image_tokens.shape
        x = image_tokens.transpose(1, 2).reshape(b, c, *grid_hw)
        for stage in self.final_output_upscaling_layers:
            x = stage(x)
        return x

    def predict_mask_logits(self, tokens: torch.Tensor, image_tokens: torch.Tensor,
                            grid_hw: tuple[int, int], mask_index: list[int]) -> torch.Tensor:
        """Low-resolution mask logits for the chosen mask tokens.

        Args:
            tokens: (B, Nt, C) transformer output tokens.
            image_tokens: (B, h*w, C) transformer output image tokens.
            grid_hw: (h, w) of the image embedding.
            mask_index: which of the 4 mask tokens to decode (0 single, 1-3 multimask).

        Returns:
            (B, len(mask_index), 4h, 4w) float32 logits (256x256 for a 64x64 embedding).
        """
        up = self.upscale(image_tokens, grid_hw)
        b, c, h, w = up.shape
        weights = self.hypernetwork_weights(tokens, mask_index)  # (B, M, 32)
        return (weights @ up.reshape(b, c, h * w)).reshape(b, -1, h, w)

    def forward(self, image_embedding: torch.Tensor, image_pe: torch.Tensor,
                sparse: torch.Tensor, multimask_output: bool
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Masks and predicted IoU (reference ``MaskDecoder.forward``).

        Args:
            image_embedding: (1 or B, C, h, w) float32. image_pe: (1, C, h, w) float32.
            sparse: (B, Np, C) float32 prompt tokens. multimask_output: tokens 1-3 or token 0.

        Returns:
            mask logits (B, M, 4h, 4w) float32 and predicted IoU (B, M) float32, M = 3 with
            ``multimask_output`` (tokens 1-3) else 1 (token 0).
        """
        tokens, image_tokens = self.run_transformer(image_embedding, image_pe, sparse)
        sel = MULTIMASK if multimask_output else SINGLE_MASK
        index = list(range(self.num_mask_tokens))[sel]
        masks = self.predict_mask_logits(tokens, image_tokens, image_embedding.shape[-2:], index)
        return masks, self.predict_iou(tokens)[:, sel]
