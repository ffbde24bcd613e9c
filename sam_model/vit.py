"""SAM's ViTDet image encoder for ViT-B/L/H (SAM paper, Appendix A "Image encoder").

A 16x16 patch embedding, a learned absolute position embedding, transformer blocks that attend
inside 14x14 windows except at the global-attention indexes, decomposed relative position terms
(MViTv2 / ViTDet) in every block, and a neck that projects to the 256-channel image embedding.
State-dict keys follow the official checkpoints (``patch_embed.proj``, ``pos_embed``,
``blocks.{i}.attn.rel_pos_h`` ...), so official weights load without conversion.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .configs import ViTConfig
from .layers import SCRATCH_MAX_BYTES, LayerNorm2d, ScratchBuffer, attention


def window_partition(x: torch.Tensor, window: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Split a token map into non-overlapping square windows, zero-padding the bottom/right.

    Args:
        x: (B, H, W, C) float tokens.
        window: window side in tokens.

    Returns:
        windows ``(B * nH * nW, window, window, C)`` and the padded size ``(Hp, Wp)``.
    """
    b, h, w, c = x.shape
    pad_h, pad_w = (-h) % window, (-w) % window
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    hp, wp = h + pad_h, w + pad_w
    x = x.view(b, hp // window, window, wp // window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window, window, c), (hp, wp)


def window_unpartition(windows: torch.Tensor, window: int, padded_hw: tuple[int, int],
                       hw: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`window_partition`: ``(B*nH*nW, window, window, C)`` -> ``(B, H, W, C)``."""
    hp, wp = padded_hw
    h, w = hw
    b = windows.shape[0] // ((hp // window) * (wp // window))
    x = windows.view(b, hp // window, wp // window, window, window, -1)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, -1)
    return x[:, :h, :w, :]


def relative_position_table(q_size: int, k_size: int, rel_pos: torch.Tensor) -> torch.Tensor:
    """Relative position embeddings for every (query, key) pair along one axis (ViTDet).

    The learned table has ``2 * size - 1`` rows; when the query/key sizes differ from the size it
    was trained for it is resized linearly, and coordinates are scaled so that the shorter axis
    is stretched to the longer one (reference ``get_rel_pos`` behaviour).

    Args:
        q_size: query extent along the axis, tokens. k_size: key extent, tokens.
        rel_pos: (L, C) float learned table.

    Returns:
        (q_size, k_size, C) float.
    """
    max_dist = 2 * max(q_size, k_size) - 1
    if rel_pos.shape[0] != max_dist:
        rel_pos = F.interpolate(rel_pos.T[None], size=max_dist, mode="linear")[0].T
    q_coords = torch.arange(q_size, device=rel_pos.device)[:, None] * max(k_size / q_size, 1.0)
    k_coords = torch.arange(k_size, device=rel_pos.device)[None, :] * max(q_size / k_size, 1.0)
    relative = (q_coords - k_coords) + (k_size - 1) * max(q_size / k_size, 1.0)
    return rel_pos[relative.long()]


class ViTAttention(nn.Module):
    """Multi-head self-attention with decomposed relative position terms (ViTDet / MViTv2)."""

    def __init__(self, dim: int, num_heads: int, input_size: tuple[int, int]) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)
        head_dim = dim // num_heads
        self.rel_pos_h = nn.Parameter(torch.zeros(2 * input_size[0] - 1, head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(2 * input_size[1] - 1, head_dim))
        self.fused = True

    def forward(self, x: torch.Tensor, scratch: ScratchBuffer | None = None) -> torch.Tensor:
        """``x``: (B, H, W, C) float tokens -> (B, H, W, C); ``scratch`` (inference only):
        where the ``qkv`` projection is written."""
        b, h, w, c = x.shape
        heads = self.num_heads
        qkv = self.qkv(x) if scratch is None else scratch.linear(self.qkv, x)
        qkv = qkv.reshape(b, h * w, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, heads, HW, head_dim)
        rh = relative_position_table(h, h, self.rel_pos_h)  # (H, H, hd)
        rw = relative_position_table(w, w, self.rel_pos_w)  # (W, W, hd)
        q_map = q.reshape(b, heads, h, w, -1)
        rel_h = torch.einsum("bnhwc,hkc->bnhwk", q_map, rh)  # (B, heads, H, W, Hk)
        rel_w = torch.einsum("bnhwc,wkc->bnhwk", q_map, rw)  # (B, heads, H, W, Wk)
        bias = (rel_h[..., :, None] + rel_w[..., None, :]).reshape(b, heads, h * w, h * w)
        out = attention(q, k, v, bias, fused=self.fused)
        out = out.transpose(1, 2).reshape(b, h, w, c)
        return self.proj(out)


class ViTMLP(nn.Module):
    """Block MLP: ``lin1`` -> GELU -> ``lin2`` (official key names)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.lin1 = nn.Linear(dim, hidden)
        self.lin2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: (..., dim) -> (..., dim)."""
        return self.lin2(F.gelu(self.lin1(x)))


class ViTBlock(nn.Module):
    """Pre-norm transformer block; ``window_size`` 0 means global attention."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, window_size: int,
                 grid_size: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        size = (window_size, window_size) if window_size > 0 else (grid_size, grid_size)
        self.attn = ViTAttention(dim, num_heads, size)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = ViTMLP(dim, int(dim * mlp_ratio))
        self.window_size = window_size

    def forward(self, x: torch.Tensor, scratch: ScratchBuffer | None = None) -> torch.Tensor:
        """``x``: (B, H, W, C) float -> (B, H, W, C). ``scratch`` (inference only): where the
        ``qkv`` projection and the MLP's hidden layer are written (:class:`ViTImageEncoder`);
        the MLP's GELU then runs in place (the same values)."""
        shortcut = x
        x = self.norm1(x)
        if self.window_size > 0:
            hw = x.shape[1:3]
            x, padded = window_partition(x, self.window_size)
            x = self.attn(x, scratch)
            x = window_unpartition(x, self.window_size, padded, hw)
        else:
            x = self.attn(x, scratch)
        x = shortcut + x
        if scratch is None or torch.is_grad_enabled():
            return x + self.mlp(self.norm2(x))
        hidden = torch.ops.aten.gelu_(scratch.linear(self.mlp.lin1, self.norm2(x)))
        return x + self.mlp.lin2(hidden)


class PatchEmbed(nn.Module):
    """Non-overlapping patch projection: (B, 3, H, W) -> (B, H/16, W/16, C) channels-last."""

    def __init__(self, patch_size: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: (B, 3, H, W) float normalised pixels -> (B, H/p, W/p, C)."""
        return self.proj(x).permute(0, 2, 3, 1)


class ViTImageEncoder(nn.Module):
    """SAM ViT-B/L/H image encoder.

    Input: ``(B, 3, H, W)`` float32, normalised and padded pixels, H and W multiples of 16
    (1024x1024 for the official models). Output: image embedding ``(B, 256, H/16, W/16)``
    float32 (``(B, 256, 64, 64)`` at 1024). Other input sizes interpolate the absolute position
    embedding bicubically.
    """

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        grid = cfg.img_size // cfg.patch_size
        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, cfg.embed_dim))
        self.blocks = nn.ModuleList(
            ViTBlock(cfg.embed_dim, cfg.num_heads, cfg.mlp_ratio,
                     0 if i in cfg.global_attn_indexes else cfg.window_size, grid)
            for i in range(cfg.depth)
        )
        self.neck = nn.Sequential(
            nn.Conv2d(cfg.embed_dim, cfg.out_chans, kernel_size=1, bias=False),
            LayerNorm2d(cfg.out_chans),
            nn.Conv2d(cfg.out_chans, cfg.out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(cfg.out_chans),
        )

    def position_embedding(self, h: int, w: int) -> torch.Tensor:
        """Absolute position embedding for an (h, w) token grid: (1, h, w, C)."""
        pos = self.pos_embed
        if pos.shape[1:3] != (h, w):
            pos = F.interpolate(pos.permute(0, 3, 1, 2), size=(h, w), mode="bicubic",
                                align_corners=False).permute(0, 2, 3, 1)
        return pos

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: (B, 3, H, W) float32 -> image embedding (B, 256, H/16, W/16) float32."""
        return self._encode(x, interm_block=None)[0]

    def forward_with_interm(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Image embedding and the early-layer feature HQ-SAM fuses into its mask features.

        The early-layer feature is the token map after the first global-attention block
        (``global_attn_indexes[0]``: block 2 of ViT-B, 5 of ViT-L, 7 of ViT-H), before the neck:
        HQ-SAM paper §3.2 "Global-local Fusion for High-quality Features"; the official
        ``interm_embeddings[0]``.

        Args:
            x: (B, 3, H, W) float32 normalised, padded pixels.

        Returns:
            image embedding (B, 256, H/16, W/16) float32 and the early-layer feature
            (B, embed_dim, H/16, W/16) float32, channels-first.
        """
        emb, interm = self._encode(x, interm_block=min(self.cfg.global_attn_indexes))
        return emb, interm.permute(0, 3, 1, 2)

    def _encode(self, x: torch.Tensor, interm_block: int | None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Embedding (B, 256, h, w) and the (B, h, w, C) tokens after block ``interm_block``
        (None: not kept)."""
        x = self.patch_embed(x)
        x = x + self.position_embedding(x.shape[1], x.shape[2])
        interm = None
        # Without autograd every block's qkv projection and MLP hidden layer up to
        # SCRATCH_MAX_BYTES go into one buffer for the whole forward (never two of them alive
        # at once), not a fresh tensor each.
        scratch = None if torch.is_grad_enabled() else ScratchBuffer(SCRATCH_MAX_BYTES)
        for i, block in enumerate(self.blocks):
            x = block(x, scratch)
            if i == interm_block:
                interm = x
        return self.neck(x.permute(0, 3, 1, 2)), interm
