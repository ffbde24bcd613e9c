"""The two-way transformer of EfficientSAM's mask decoder (the official ``TwoWayTransformer`` of
EfficientSAM; SAM paper §3 "Mask decoder", Fig. 14, for the design).

The attention layers are SAM's (:class:`~sam_model.two_way_transformer.DecoderAttention`, the
same keys and arithmetic). Two things differ from SAM's block:

- the token self-attention always has a residual connection, and when position encodings are
  used (every block but the first) they are added to the tokens *before* it and stay in them:
  ``t = t + pe; t = norm1(t + self_attn(t, t, t))`` (SAM: ``t = norm1(t + self_attn(t + pe,
  t + pe, t))``, and in its first block ``t = norm1(self_attn(t, t, t))``, no residual);
- the MLP is :class:`~sam_model.layers.EfficientSamMLP` with GELU
  (keys ``mlp.layers.0.0``, ``mlp.fc``) instead of ``lin1`` -> ReLU -> ``lin2``.

Batching convention as in SAM's module: the image side may have batch 1 while the tokens have
batch B; it is broadcast (the reference tiles the image embedding B times), so the first
block's image-side projections are computed once.
"""

from __future__ import annotations

import torch
from torch import nn

from .layers import EfficientSamMLP
from .two_way_transformer import DecoderAttention


class EfficientSamTwoWayBlock(nn.Module):
    """One two-way block: token self-attention, tokens->image attention, token MLP,
    image->tokens attention, each followed by a residual and a LayerNorm (eps 1e-5)."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, downsample_rate: int,
                 skip_first_layer_pe: bool) -> None:
        super().__init__()
        self.self_attn = DecoderAttention(dim, num_heads)
        self.norm1 = nn.LayerNorm(dim)
        self.cross_attn_token_to_image = DecoderAttention(dim, num_heads, downsample_rate)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = EfficientSamMLP(dim, mlp_dim, dim, 1)
        self.norm3 = nn.LayerNorm(dim)
        self.norm4 = nn.LayerNorm(dim)
        self.cross_attn_image_to_token = DecoderAttention(dim, num_heads, downsample_rate)
        self.skip_first_layer_pe = skip_first_layer_pe

    def token_self_attention(self, queries: torch.Tensor, query_pe: torch.Tensor,
                             key_bias: torch.Tensor | None = None) -> torch.Tensor:
        """The block's first step on the tokens alone, (B, Nt, C) -> (B, Nt, C):
        ``t = t + pe`` (every block but the first), then ``norm1(t + self_attn(t, t, t))``.
        ``key_bias``: optional (Nt,) ``log(count)`` of tokens standing for repeated ones
        (:meth:`~sam_model.two_way_transformer.TwoWayAttentionBlock.token_self_attention`)."""
        if not self.skip_first_layer_pe:
            queries = queries + query_pe
        return self.norm1(queries + self.self_attn(queries, queries, queries, key_bias))

    def forward(self, queries: torch.Tensor, keys: torch.Tensor, query_pe: torch.Tensor,
                key_pe: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``queries``: (B, Nt, C) tokens; ``keys``: (B or 1, HW, C) image tokens;
        ``query_pe`` like queries; ``key_pe``: (1, HW, C). Returns updated (queries, keys),
        keys now (B, HW, C)."""
        queries = self.token_self_attention(queries, query_pe)

        q = queries + query_pe
        k = keys + key_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image(q, k, keys))
        queries = self.norm3(queries + self.mlp(queries))

        q = queries + query_pe
        keys = self.norm4(keys + self.cross_attn_image_to_token(k, q, queries))
        return queries, keys


class EfficientSamTwoWayTransformer(nn.Module):
    """Stack of :class:`EfficientSamTwoWayBlock` plus the final tokens->image attention and
    LayerNorm (the same as SAM's)."""

    def __init__(self, depth: int, dim: int, num_heads: int, mlp_dim: int,
                 downsample_rate: int = 2) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            EfficientSamTwoWayBlock(dim, num_heads, mlp_dim, downsample_rate, i == 0)
            for i in range(depth))
        self.final_attn_token_to_image = DecoderAttention(dim, num_heads, downsample_rate)
        self.norm_final_attn = nn.LayerNorm(dim)

    def forward(self, image_embedding: torch.Tensor, image_pe: torch.Tensor,
                point_embedding: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the decoder transformer.

        Args:
            image_embedding: (B or 1, C, h, w) float32 image embedding (no dense prompt).
            image_pe: (1, C, h, w) float32 positional encoding of the grid.
            point_embedding: (B, Nt, C) float32 output tokens followed by prompt tokens.

        Returns:
            tokens (B, Nt, C) and image tokens (B, h*w, C), float32.
        """
        keys = image_embedding.flatten(2).transpose(1, 2)
        key_pe = image_pe.flatten(2).transpose(1, 2)
        queries = point_embedding
        for layer in self.layers:
            queries, keys = layer(queries, keys, point_embedding, key_pe)
        q = queries + point_embedding
        k = keys + key_pe
        queries = self.norm_final_attn(queries + self.final_attn_token_to_image(q, k, keys))
        return queries, keys
