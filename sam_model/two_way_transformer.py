"""The two-way transformer of SAM's mask decoder (paper §3 "Mask decoder", Appendix A, Fig. 14).

Each block: self-attention of the prompt tokens, cross-attention tokens->image, an MLP on the
tokens, cross-attention image->tokens; position encodings are re-added to queries and keys at
every attention. A final tokens->image attention follows the blocks.

Batching convention: the image side may have batch 1 while the tokens have batch B (one image,
B prompts). The image tensor is then *broadcast*, not repeated: the image-side projections of
the first block (keys and values of tokens->image, queries of image->tokens) are computed once
and shared by every prompt, which the reference recomputes B times.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .layers import MLP, attention


class DecoderAttention(nn.Module):
    """Multi-head attention with q/k/v projections to ``dim // downsample_rate`` channels."""

    def __init__(self, dim: int, num_heads: int, downsample_rate: int = 1) -> None:
        super().__init__()
        inner = dim // downsample_rate
        if inner % num_heads:
            raise ValueError(f"DecoderAttention: {num_heads} heads do not divide width {inner}")
        self.num_heads = num_heads
        self.q_proj = nn.Linear(dim, inner)
        self.k_proj = nn.Linear(dim, inner)
        self.v_proj = nn.Linear(dim, inner)
        self.out_proj = nn.Linear(inner, dim)
        self.fused = True

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                key_bias: torch.Tensor | None = None) -> torch.Tensor:
        """``q``: (Bq, Nq, C), ``k``/``v``: (Bk, Nk, C), Bq and Bk equal or one of them 1;
        ``key_bias``: optional (Nk,) float added to every query's logit of each key (the log
        of a key's multiplicity: attention over Nk distinct keys standing for repeated ones,
        see :meth:`TwoWayAttentionBlock.token_self_attention`).

        Returns (max(Bq, Bk), Nq, C) float.
        """
        qh, kh, vh = self._heads(self.q_proj(q)), self._heads(self.k_proj(k)), self._heads(self.v_proj(v))
        b = max(qh.shape[0], kh.shape[0])
        qh, kh, vh = (t.expand(b, *t.shape[1:]) for t in (qh, kh, vh))
        out = attention(qh, kh, vh, None if key_bias is None else key_bias.to(qh.dtype)[None],
                        fused=self.fused)
        b, h, n, d = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, n, h * d))


class DecoderMLP(nn.Module):
    """``lin1`` -> ReLU -> ``lin2`` (official key names)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.lin1 = nn.Linear(dim, hidden)
        self.lin2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: (..., dim) -> (..., dim)."""
        return self.lin2(F.relu(self.lin1(x)))


class TwoWayAttentionBlock(nn.Module):
    """One two-way block. The first block adds no position encoding in its token
    self-attention and has no residual there (``skip_first_layer_pe``, reference behaviour).

    ``mlp_layout`` names the token MLP's keys, the math (linear, ReLU, linear) being the same:
    ``"lin"`` gives ``mlp.lin1/lin2`` (SAM, MobileSAM), ``"layers"`` gives ``mlp.layers.0/1``
    (SAM 2).
    """

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, downsample_rate: int,
                 skip_first_layer_pe: bool, mlp_layout: str = "lin") -> None:
        super().__init__()
        if mlp_layout not in ("lin", "layers"):
            raise ValueError(f"mlp_layout must be 'lin' or 'layers', got {mlp_layout!r}")
        self.self_attn = DecoderAttention(dim, num_heads)
        self.norm1 = nn.LayerNorm(dim)
        self.cross_attn_token_to_image = DecoderAttention(dim, num_heads, downsample_rate)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = DecoderMLP(dim, mlp_dim) if mlp_layout == "lin" else MLP(dim, mlp_dim, dim, 2)
        self.norm3 = nn.LayerNorm(dim)
        self.norm4 = nn.LayerNorm(dim)
        self.cross_attn_image_to_token = DecoderAttention(dim, num_heads, downsample_rate)
        self.skip_first_layer_pe = skip_first_layer_pe

    def token_self_attention(self, queries: torch.Tensor, query_pe: torch.Tensor,
                             key_bias: torch.Tensor | None = None) -> torch.Tensor:
        """The block's first step on the tokens alone, (B, Nt, C) -> (B, Nt, C):
        ``norm1(self_attn(t, t, t))`` in the first block (no position encoding, no residual),
        else ``norm1(t + self_attn(t + pe, t + pe, t))``.

        ``key_bias``: optional (Nt,) float, ``log(count)`` of tokens that stand for ``count``
        identical tokens: attention over the distinct tokens with this bias equals the
        attention over all of them (a key repeated ``count`` times has ``count`` times its
        softmax weight, and identical queries get identical outputs)."""
        if self.skip_first_layer_pe:
            return self.norm1(self.self_attn(queries, queries, queries, key_bias))
        q = queries + query_pe
        return self.norm1(queries + self.self_attn(q, q, queries, key_bias))

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


class TwoWayTransformer(nn.Module):
    """Stack of :class:`TwoWayAttentionBlock` plus the final tokens->image attention
    (``mlp_layout``: see :class:`TwoWayAttentionBlock`)."""

    def __init__(self, depth: int, dim: int, num_heads: int, mlp_dim: int,
                 downsample_rate: int = 2, mlp_layout: str = "lin") -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(dim, num_heads, mlp_dim, downsample_rate, i == 0, mlp_layout)
            for i in range(depth))
        self.final_attn_token_to_image = DecoderAttention(dim, num_heads, downsample_rate)
        self.norm_final_attn = nn.LayerNorm(dim)

    def forward(self, image_embedding: torch.Tensor, image_pe: torch.Tensor,
                point_embedding: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the decoder transformer.

        Args:
            image_embedding: (B or 1, C, h, w) float32 (image embedding plus dense prompt).
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
