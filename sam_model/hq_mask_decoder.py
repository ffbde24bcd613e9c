"""HQ-SAM's mask decoder (Ke et al., 2023, "Segment Anything in High Quality", §3.2).

SAM's mask decoder (:class:`sam_model.mask_decoder.MaskDecoder`, unchanged and with its weights)
plus the HQ additions:

- the **HQ output token** (``hf_token``), appended after SAM's four mask tokens and run through
  the same two-way transformer, and its own three-layer hypernetwork MLP (``hf_mlp``);
- **global-local fusion** into *HQ-Features*: the early-layer encoder feature upscaled 4x by
  ``compress_vit_feat`` (two transposed convolutions) plus the final image embedding upscaled 4x
  by ``embedding_encoder``; per prompt, SAM's upscaled mask features refined by
  ``embedding_maskfeature`` (two 3x3 convolutions) are added to them;
- the HQ mask, the dot product of the HQ token's MLP output with those fused features, is
  **added to the SAM mask** (or, with ``hq_token_only``, returned alone).

Output selection follows the official ``MaskDecoderHQ.forward`` exactly: there is always **one
mask per prompt**. With ``multimask_output`` the SAM mask is the one of the three multimask
outputs (tokens 1-3) with the highest predicted IoU, and that IoU is the output's predicted IoU;
without it, the single-mask output (token 0) and its IoU. The HQ token has no IoU prediction of
its own. This one mask per prompt is what the official ``SamAutomaticMaskGenerator`` consumes.

State-dict keys follow the official checkpoints: SAM's decoder keys plus ``hf_token``,
``hf_mlp.layers.{0,1,2}``, ``compress_vit_feat.{0,1,3}``, ``embedding_encoder.{0,1,3}``,
``embedding_maskfeature.{0,1,3}``.
"""

from __future__ import annotations

import torch
from torch import nn

from .configs import PromptDecoderConfig
from .layers import MLP, LayerNorm2d
from .mask_decoder import MaskDecoder


class HQMaskDecoder(MaskDecoder):
    """SAM's mask decoder with the HQ output token and global-local feature fusion.

    Args:
        cfg: the shared prompt/decoder configuration (width C = 256).
        interm_dim: channels of the early-layer encoder feature (``SamHQConfig.interm_dim``).
    """

    def __init__(self, cfg: PromptDecoderConfig, interm_dim: int) -> None:
        super().__init__(cfg)
        dim = cfg.embed_dim
        self.hf_token = nn.Embedding(1, dim)
        self.hf_mlp = MLP(dim, dim, dim // 8, 3)
        self.compress_vit_feat = nn.Sequential(
            nn.ConvTranspose2d(interm_dim, dim, kernel_size=2, stride=2),
            LayerNorm2d(dim),
            nn.GELU(),
            nn.ConvTranspose2d(dim, dim // 8, kernel_size=2, stride=2),
        )
        self.embedding_encoder = nn.Sequential(
            nn.ConvTranspose2d(dim, dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(dim // 4),
            nn.GELU(),
            nn.ConvTranspose2d(dim // 4, dim // 8, kernel_size=2, stride=2),
        )
        self.embedding_maskfeature = nn.Sequential(
            nn.Conv2d(dim // 8, dim // 4, kernel_size=3, padding=1),
            LayerNorm2d(dim // 4),
            nn.GELU(),
            nn.Conv2d(dim // 4, dim // 8, kernel_size=3, padding=1),
        )

    @property
    def hq_token_index(self) -> int:
        """Position of the HQ output token in the transformer's token sequence (5: after the
        IoU token and the four SAM mask tokens)."""
        return 1 + self.num_mask_tokens

    def hq_features(self, image_embedding: torch.Tensor, interm_embedding: torch.Tensor
                    ) -> torch.Tensor:
        """Global-local fusion of one image's features (paper §3.2, "HQ-Features"), computed
        once per image and shared by every prompt.

        Args:
            image_embedding: (1, C, h, w) float32 final image embedding.
            interm_embedding: (1, interm_dim, h, w) float32 early-layer encoder feature.

        Returns:
            (1, C/8, 4h, 4w) float32: ``embedding_encoder(image_embedding) +
            compress_vit_feat(interm_embedding)``.
        """
        return self.embedding_encoder(image_embedding) + self.compress_vit_feat(interm_embedding)

    def run_transformer(self, image_embedding: torch.Tensor, image_pe: torch.Tensor,
                        sparse: torch.Tensor, dense: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """Two-way transformer over [IoU token, 4 mask tokens, HQ token] + prompt tokens.

        Args:
            image_embedding: (1 or B, C, h, w) float32.
            image_pe: (1, C, h, w) float32 grid positional encoding.
            sparse: (B, Np, C) float32 prompt tokens.
            dense: (1 or B, C, h, w) float32 dense prompt embedding.

        Returns:
            tokens (B, 1 + 4 + 1 + Np, C) and image tokens (B, h*w, C), float32.
        """
        b = sparse.shape[0]
        tokens = torch.cat([self.output_tokens()[None].expand(b, -1, -1), sparse], 1)
        return self.transformer(image_embedding + dense, image_pe, tokens)

    def output_tokens(self) -> torch.Tensor:
        """The learned output tokens: (1 + 4 + 1, C) float32, the IoU token, SAM's four mask
        tokens, then the HQ token (at :attr:`hq_token_index`)."""
        return torch.cat([self.iou_token.weight, self.mask_tokens.weight, self.hf_token.weight], 0)

    def select_sam_output(self, tokens: torch.Tensor, multimask_output: bool
                          ) -> tuple[torch.Tensor, torch.Tensor]:
        """The SAM mask token each prompt's output uses, and its predicted IoU.

        With ``multimask_output``: the multimask token (1-3) of highest predicted IoU
        (``torch.max`` over the three, first index on ties, as the official code); else token 0.

        Args:
            tokens: (B, Nt, C) transformer output tokens.
            multimask_output: see the module docstring.

        Returns:
            mask-token index (B,) int64 in 0..3 and predicted IoU (B, 1) float32.
        """
        iou = self.predict_iou(tokens)
        if multimask_output:
            best_iou, best = torch.max(iou[:, 1:self.num_mask_tokens], dim=1)
            return best + 1, best_iou[:, None]
        return torch.zeros(iou.shape[0], dtype=torch.int64, device=iou.device), iou[:, :1]

    def sam_mask_logits(self, tokens: torch.Tensor, upscaled: torch.Tensor,
                        token_index: torch.Tensor) -> torch.Tensor:
        """SAM's mask logits of one chosen mask token per prompt.

        Args:
            tokens: (B, Nt, C) transformer output tokens.
            upscaled: (B, C/8, 4h, 4w) float32 upscaled image tokens (``output_upscaling``).
            token_index: (B,) int64 mask-token index 0..3 per prompt.

        Returns:
            (B, 1, 4h, 4w) float32 logits.
        """
        b, c, h, w = upscaled.shape
        weights = self.hypernetwork_weights(tokens, list(range(self.num_mask_tokens)))
        weights = weights[torch.arange(b, device=weights.device), token_index][:, None]
        return (weights @ upscaled.reshape(b, c, h * w)).reshape(b, 1, h, w)

    def hq_mask_logits(self, tokens: torch.Tensor, upscaled: torch.Tensor,
                       hq_features: torch.Tensor) -> torch.Tensor:
        """The HQ token's mask logits (paper §3.2, "High-quality Output Token").

        Args:
            tokens: (B, Nt, C) transformer output tokens.
            upscaled: (B, C/8, 4h, 4w) float32 SAM's upscaled image tokens.
            hq_features: (1, C/8, 4h, 4w) float32 from :meth:`hq_features`.

        Returns:
            (B, 1, 4h, 4w) float32: ``hf_mlp(HQ token) . (embedding_maskfeature(upscaled) +
            hq_features)`` at every pixel.
        """
        fused = self.embedding_maskfeature(upscaled) + hq_features
        b, c, h, w = fused.shape
        weights = self.hf_mlp(tokens[:, self.hq_token_index])[:, None]
        return (weights @ fused.reshape(b, c, h * w)).reshape(b, 1, h, w)

    def forward(self, image_embedding: torch.Tensor, image_pe: torch.Tensor,
                sparse: torch.Tensor, dense: torch.Tensor, multimask_output: bool,
                hq_features: torch.Tensor, hq_token_only: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """One mask and its predicted IoU per prompt (official ``MaskDecoderHQ.forward``).

        Args:
            image_embedding: (1, C, h, w) float32 image embedding.
            image_pe: (1, C, h, w) float32 grid positional encoding.
            sparse: (B, Np, C) float32 prompt tokens.
            dense: (1 or B, C, h, w) float32 dense prompt embedding.
            multimask_output: the SAM mask is the best of the three multimask outputs (by
                predicted IoU) instead of the single-mask output.
            hq_features: (1, C/8, 4h, 4w) float32 from :meth:`hq_features` for this image.
            hq_token_only: return the HQ mask alone instead of SAM mask + HQ mask.

        Returns:
            mask logits (B, 1, 4h, 4w) float32 and predicted IoU (B, 1) float32.
        """
        tokens, image_tokens = self.run_transformer(image_embedding, image_pe, sparse, dense)
        token_index, iou = self.select_sam_output(tokens, multimask_output)
        upscaled = self.upscale(image_tokens, image_embedding.shape[-2:])
        masks = self.hq_mask_logits(tokens, upscaled, hq_features)
        if not hq_token_only:
            masks = self.sam_mask_logits(tokens, upscaled, token_index) + masks
        return masks, iou
