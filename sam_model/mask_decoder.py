"""SAM's mask decoder (paper §3 "Mask decoder", Appendix A).

Output tokens (one IoU token, four mask tokens) are prepended to the prompt tokens and run with
the image embedding through the two-way transformer. The image tokens are upscaled 4x by two
transposed convolutions; each mask token, through its hypernetwork MLP, gives the weights of a
dot product with the upscaled features: one low-resolution mask-logit map per token. The IoU
token's MLP head gives each mask's predicted IoU. Token 0 is the single-mask output; tokens 1-3
are the multimask outputs for ambiguous prompts.

The decoder is split into :meth:`MaskDecoder.run_transformer`, :meth:`predict_iou` and
:meth:`predict_mask_logits` so that a caller can filter by predicted IoU *before* paying for the
output upscaling, and upscale only the masks it keeps (exact: the IoU head never sees masks).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .configs import PromptDecoderConfig
from .layers import MLP, LayerNorm2d
from .two_way_transformer import TwoWayTransformer

MULTIMASK = slice(1, None)
SINGLE_MASK = slice(0, 1)


class MaskDecoder(nn.Module):
    """Mask decoder with the official state-dict layout (``iou_token``, ``mask_tokens``,
    ``output_upscaling``, ``output_hypernetworks_mlps``, ``iou_prediction_head``, ``transformer``)."""

    def __init__(self, cfg: PromptDecoderConfig) -> None:
        super().__init__()
        dim = cfg.embed_dim
        self.cfg = cfg
        self.transformer = TwoWayTransformer(cfg.transformer_depth, dim, cfg.transformer_num_heads,
                                             cfg.transformer_mlp_dim, cfg.attention_downsample_rate)
        self.num_mask_tokens = cfg.num_multimask_outputs + 1
        self.iou_token = nn.Embedding(1, dim)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(dim, dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(dim // 4),
            nn.GELU(),
            nn.ConvTranspose2d(dim // 4, dim // 8, kernel_size=2, stride=2),
            nn.GELU(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(dim, dim, dim // 8, 3) for _ in range(self.num_mask_tokens))
        self.iou_prediction_head = MLP(dim, cfg.iou_head_hidden_dim, self.num_mask_tokens,
                                       cfg.iou_head_depth)

    def run_transformer(self, image_embedding: torch.Tensor, image_pe: torch.Tensor,
                        sparse: torch.Tensor, dense: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """Two-way transformer over output tokens + prompt tokens and the image embedding.

        Args:
            image_embedding: (1 or B, C, h, w) float32.
            image_pe: (1, C, h, w) float32 grid positional encoding.
            sparse: (B, Np, C) float32 prompt tokens.
            dense: (1 or B, C, h, w) float32 dense prompt embedding.

        Returns:
            tokens (B, 1 + 4 + Np, C) and image tokens (B, h*w, C), float32.
        """
        b = sparse.shape[0]
        tokens = torch.cat([self.output_tokens()[None].expand(b, -1, -1), sparse], 1)
        return self.transformer(image_embedding + dense, image_pe, tokens)

    def output_tokens(self) -> torch.Tensor:
        """The learned output tokens put before the prompt tokens: (1 + 4, C) float32, the
        IoU token then the four mask tokens."""
        return torch.cat([self.iou_token.weight, self.mask_tokens.weight], 0)

    def predict_iou(self, tokens: torch.Tensor) -> torch.Tensor:
        """``tokens``: (B, Nt, C) transformer output -> predicted IoU (B, 4) float32, all tokens."""
        return self.iou_prediction_head(tokens[:, 0])

    def upscale(self, image_tokens: torch.Tensor, grid_hw: tuple[int, int]) -> torch.Tensor:
        """``image_tokens``: (B, h*w, C) -> upscaled features (B, C/8, 4h, 4w) float32."""
        b, _, c = image_tokens.shape
        feats = image_tokens.transpose(1, 2).reshape(b, c, *grid_hw)
        return self.output_upscaling(feats)

    def hypernetwork_weights(self, tokens: torch.Tensor, mask_index: list[int]) -> torch.Tensor:
        """Per-mask weights: (B, len(mask_index), C/8) from the chosen mask tokens."""
        return torch.stack([self.output_hypernetworks_mlps[i](tokens[:, 1 + i]) for i in mask_index], 1)

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
        weights = self.hypernetwork_weights(tokens, mask_index)
        return (weights @ up.reshape(b, c, h * w)).reshape(b, -1, h, w)

    def forward(self, image_embedding: torch.Tensor, image_pe: torch.Tensor,
                sparse: torch.Tensor, dense: torch.Tensor, multimask_output: bool
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Masks and predicted IoU (reference ``MaskDecoder.forward``).

        Returns:
            mask logits (B, M, 4h, 4w) float32 and predicted IoU (B, M) float32, M = 3 with
            ``multimask_output`` (tokens 1-3) else 1 (token 0).
        """
        tokens, image_tokens = self.run_transformer(image_embedding, image_pe, sparse, dense)
        sel = MULTIMASK if multimask_output else SINGLE_MASK
        index = list(range(self.num_mask_tokens))[sel]
        masks = self.predict_mask_logits(tokens, image_tokens, image_embedding.shape[-2:], index)
        return masks, self.predict_iou(tokens)[:, sel]


def upscale_mask_logits(low_res: torch.Tensor, model_input_size: int, input_hw: tuple[int, int],
                        original_hw: tuple[int, int]) -> torch.Tensor:
    """Low-resolution logits to the original image size (reference ``postprocess_masks``).

    Bilinear (align_corners=False) to the square model input, crop away the padding, bilinear to
    the original size.

    Args:
        low_res: (B, M, 256, 256) float32 logits.
        model_input_size: side of the padded model input (1024).
        input_hw: (h, w) of the resized image inside the model input, before padding.
        original_hw: (H, W) of the original image.

    Returns:
        (B, M, H, W) float32 logits.
    """
    x = F.interpolate(low_res, (model_input_size, model_input_size), mode="bilinear",
                      align_corners=False)
    x = x[..., : input_hw[0], : input_hw[1]]
    return F.interpolate(x, original_hw, mode="bilinear", align_corners=False)
