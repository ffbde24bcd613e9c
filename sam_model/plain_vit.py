"""EfficientSAM's plain ViT image encoder (Xiong et al., CVPR 2024, §3.2: the SAMI-pretrained
ViT-Tiny / ViT-Small that replaces SAM's ViT-H).

A plain ViT (Dosovitskiy et al., 2021) on the 1024x1024 input: a 16x16 patch embedding, a learned
absolute position embedding trained at 224x224 (a class-token entry plus 14x14 positions),
resized bicubically to the 64x64 token grid, then ``depth`` pre-norm blocks that all attend
globally (no windows, no relative position terms), and SAM's neck (1x1 conv, LayerNorm2d, 3x3
conv, LayerNorm2d) to the 256-channel image embedding. State-dict keys follow the official
checkpoints (``patch_embed.proj``, ``pos_embed``, ``blocks.{i}.attn.qkv``, ``blocks.{i}.mlp.fc1``,
``neck.{0..3}``), so official weights load without conversion.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .configs import PlainViTConfig
from .layers import LayerNorm2d, attention
from .vit import PatchEmbed


class PlainViTAttention(nn.Module):
    """Global multi-head self-attention, ``softmax(q k^T / sqrt(head_dim)) v`` (keys ``qkv``,
    ``proj``; qkv with bias)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"PlainViTAttention: {num_heads} heads do not divide width {dim}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)
        self.fused = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: (B, N, C) float tokens -> (B, N, C)."""
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, N, head_dim)
        out = attention(q, k, v, fused=self.fused)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class PlainViTMLP(nn.Module):
    """Block MLP: ``fc1`` -> GELU (exact, erf) -> ``fc2`` (official key names)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: (..., dim) -> (..., dim)."""
        return self.fc2(F.gelu(self.fc1(x)))


class PlainViTBlock(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``;
    LayerNorm eps 1e-6."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = PlainViTAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = PlainViTMLP(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: (B, N, C) float -> (B, N, C)."""
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PlainViTImageEncoder(nn.Module):
    """EfficientSAM ViT-T / ViT-S image encoder.

    Input: ``(B, 3, S, S)`` float32 normalised pixels, S = ``cfg.img_size`` (1024). Output:
    image embedding ``(B, 256, S/16, S/16)`` float32 (``(B, 256, 64, 64)`` at 1024).

    Raises (forward):
        ValueError: the input is not ``(B, 3, S, S)``.
    """

    def __init__(self, cfg: PlainViTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        pretrain_grid = cfg.pretrain_img_size // cfg.patch_size
        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.embed_dim)
        # (1, 1 + 14*14, C): a class-token entry (unused by the encoder) and the 14x14 grid.
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + pretrain_grid ** 2, cfg.embed_dim))
        self.blocks = nn.ModuleList(PlainViTBlock(cfg.embed_dim, cfg.num_heads, cfg.mlp_ratio)
                                    for _ in range(cfg.depth))
        self.neck = nn.Sequential(
            nn.Conv2d(cfg.embed_dim, cfg.out_chans, kernel_size=1, bias=False),
            LayerNorm2d(cfg.out_chans),
            nn.Conv2d(cfg.out_chans, cfg.out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(cfg.out_chans),
        )

    def position_embedding(self, h: int, w: int) -> torch.Tensor:
        """Absolute position embedding for an (h, w) token grid: (1, h, w, C) float.

        The class-token entry is dropped and the square pretraining grid is resized with
        ``F.interpolate(mode="bicubic", align_corners=False)`` (reference ``get_abs_pos``),
        unless it already has the size (h, w).
        """
        pos = self.pos_embed[:, 1:]
        side = int(round(pos.shape[1] ** 0.5))
        pos = pos.reshape(1, side, side, -1)
        if (side, side) != (h, w):
            pos = F.interpolate(pos.permute(0, 3, 1, 2), size=(h, w), mode="bicubic",
                                align_corners=False).permute(0, 2, 3, 1)
        return pos

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: (B, 3, S, S) float32 -> image embedding (B, 256, S/16, S/16) float32."""
        size = self.cfg.img_size
        if x.ndim != 4 or x.shape[1] != 3 or tuple(x.shape[2:]) != (size, size):
            raise ValueError(f"PlainViTImageEncoder: input must be (B, 3, {size}, {size}), "
                             f"got {tuple(x.shape)}")
        x = self.patch_embed(x)  # (B, h, w, C)
        b, h, w, c = x.shape
        x = (x + self.position_embedding(h, w)).reshape(b, h * w, c)
        for block in self.blocks:
            x = block(x)
        return self.neck(x.reshape(b, h, w, c).permute(0, 3, 1, 2))
