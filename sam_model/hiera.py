"""Hiera, the hierarchical image-encoder trunk of SAM 2 (Ryali et al., "Hiera", 2023; SAM 2
paper §4 "Image encoder").

A 7x7 stride-4 convolutional patch embedding gives a (H/4, W/4) token grid (256x256 for a 1024
input). Four stages of multi-scale transformer blocks follow; the first block of stages 2-4
max-pools its attention queries with stride 2 (Q-pooling), halving the grid and doubling the
width and heads, so the stages run at strides 4, 8, 16 and 32. Blocks attend inside square
windows (zero-padded at the bottom/right when the grid is not a multiple of the window), except
a few global-attention blocks. The absolute position embedding is "windowed" (Bolya et al.,
"Window attention is bugged", 2023): a learned background embedding resized bicubically to the
grid plus a learned window-sized embedding tiled over it.

Layout: channels-last ``(B, H, W, C)`` inside the trunk; the stage outputs are returned
channels-first. State-dict keys follow the official ``sam2.modeling.backbones.hieradet.Hiera``
(``patch_embed.proj``, ``pos_embed``, ``pos_embed_window``, ``blocks.{i}.norm1/attn.qkv/
attn.proj/norm2/mlp.layers.{0,1}/proj``).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .layers import MLP, SCRATCH_MAX_BYTES, ScratchBuffer, attention
from .sam2_configs import HieraBlockSpec, HieraConfig
from .vit import window_partition, window_unpartition


#: Largest ``qkv`` projection output (bytes) that :class:`HieraAttention` makes at once
#: without autograd; windowed blocks above it go through their windows in groups.
QKV_CHUNK_BYTES = 64 * 2**20


def max_pool_tokens(x: torch.Tensor, stride: tuple[int, int]) -> torch.Tensor:
    """Max-pool a channels-last token map: (B, H, W, C) -> (B, H // s0, W // s1, C)
    (``nn.MaxPool2d(kernel=stride, stride=stride)``, floor mode)."""
    return F.max_pool2d(x.permute(0, 3, 1, 2), stride, stride).permute(0, 2, 3, 1)


class HieraAttention(nn.Module):
    """Multi-head self-attention with optional query pooling (official ``MultiScaleAttention``).

    ``qkv`` projects ``dim`` -> 3 x ``dim_out``; with ``q_stride`` the queries are max-pooled
    over the token map before attention, so the output grid is the pooled one. Keys and values
    are never pooled.
    """

    def __init__(self, dim: int, dim_out: int, num_heads: int,
                 q_stride: tuple[int, int] | None) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q_stride = q_stride
        self.qkv = nn.Linear(dim, dim_out * 3)
        self.proj = nn.Linear(dim_out, dim_out)
        self.fused = True

    def forward(self, x: torch.Tensor, scratch: ScratchBuffer | None = None) -> torch.Tensor:
        """``x``: (B, H, W, dim) float (B counts windows) -> (B, H', W', dim_out), (H', W') the
        pooled grid with ``q_stride``, else (H, W).

        Without autograd, windows are processed in groups whose ``qkv`` output stays under
        :data:`QKV_CHUNK_BYTES` (windows are independent, so the result is the same): at
        stride 4 the whole ``qkv`` of Hiera-L's stage transition is 226 MB. With ``scratch``
        (inference) each group's ``qkv`` output is written into it.
        """
        b = x.shape[0]
        per_window = x[0].numel() // x.shape[-1] * self.qkv.out_features * x.element_size()
        group = max(1, QKV_CHUNK_BYTES // per_window)
        if b <= group or torch.is_grad_enabled():
            return self._attend(x, scratch)
        return torch.cat([self._attend(part, scratch) for part in x.split(group)], 0)

    def _attend(self, x: torch.Tensor, scratch: ScratchBuffer | None) -> torch.Tensor:
        """:meth:`forward` on one group of windows."""
        b, h, w, _ = x.shape
        qkv = self.qkv(x) if scratch is None else scratch.linear(self.qkv, x)
        qkv = qkv.reshape(b, h * w, 3, self.num_heads, -1)
        q, k, v = qkv.unbind(2)  # (B, HW, heads, d)
        if self.q_stride is not None:
            q = max_pool_tokens(q.reshape(b, h, w, -1), self.q_stride)
            h, w = q.shape[1:3]
            q = q.reshape(b, h * w, self.num_heads, -1)
        out = attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), fused=self.fused)
        return self.proj(out.transpose(1, 2).reshape(b, h, w, -1))


class HieraBlock(nn.Module):
    """One multi-scale block (official ``MultiScaleBlock``): pre-norm windowed attention (with
    query pooling at a stage transition) and a pre-norm GELU MLP, both residual.

    At a width change the shortcut is ``proj`` of the *normalised* input, max-pooled with the
    same stride as the queries. With query pooling the attention output has windows of
    ``window_size // q_stride`` tokens, which are merged back onto the pooled grid.
    """

    def __init__(self, spec: HieraBlockSpec, mlp_ratio: float, norm_eps: float) -> None:
        super().__init__()
        self.spec = spec
        self.norm1 = nn.LayerNorm(spec.dim, eps=norm_eps)
        self.attn = HieraAttention(spec.dim, spec.dim_out, spec.num_heads, spec.q_stride)
        self.norm2 = nn.LayerNorm(spec.dim_out, eps=norm_eps)
        self.mlp = MLP(spec.dim_out, int(spec.dim_out * mlp_ratio), spec.dim_out, 2,
                       activation=F.gelu)
        if spec.dim != spec.dim_out:
            self.proj = nn.Linear(spec.dim, spec.dim_out)

    def forward(self, x: torch.Tensor, scratch: ScratchBuffer | None = None) -> torch.Tensor:
        """``x``: (B, H, W, dim) float -> (B, H', W', dim_out); (H', W') = (H, W) pooled by
        ``q_stride`` (floor) when the block pools, else (H, W). ``scratch`` (inference only):
        where the ``qkv`` projection and the MLP's hidden layer are written (:class:`Hiera`)."""
        spec = self.spec
        shortcut = x
        x = self.norm1(x)
        if spec.dim != spec.dim_out:
            shortcut = self.proj(x)
            if spec.q_stride is not None:
                shortcut = max_pool_tokens(shortcut, spec.q_stride)
        window = spec.window_size
        if window > 0:
            x, padded_hw = window_partition(x, window)
        x = self.attn(x, scratch)
        if window > 0:
            h, w = shortcut.shape[1:3]
            if spec.q_stride is not None:
                window //= spec.q_stride[0]
                padded_hw = (h + (-h) % window, w + (-w) % window)
            x = window_unpartition(x.contiguous(), window, padded_hw, (h, w))
        x = shortcut + x
        if torch.is_grad_enabled() or scratch is None:
            return x + self.mlp(self.norm2(x))
        # Inference: the same arithmetic with the hidden layer in the scratch buffer and the
        # GELU and the residual sum in place, so the stage-1 MLP (4 x 144 channels on a
        # 256 x 256 grid for Hiera-L, 151 MB) holds one hidden activation instead of two.
        fc1, fc2 = self.mlp.layers
        hidden = torch.ops.aten.gelu_(scratch.linear(fc1, self.norm2(x)))
        return fc2(hidden).add_(x)


class HieraPatchEmbed(nn.Module):
    """Overlapping patch embedding: (B, 3, H, W) -> (B, H/4, W/4, C) channels-last
    (7x7 convolution, stride 4, padding 3)."""

    def __init__(self, cfg: HieraConfig) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, cfg.embed_dim, cfg.patch_kernel_size, cfg.patch_stride,
                              cfg.patch_padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: (B, 3, H, W) float normalised pixels -> (B, H', W', C), H' = H / 4 for H a
        multiple of 4."""
        return self.proj(x).permute(0, 2, 3, 1)


class Hiera(nn.Module):
    """The Hiera trunk of SAM 2 (see module docstring).

    Input: ``(B, 3, H, W)`` float32 normalised pixels (1024x1024 for the official models;
    H/4 and W/4 must be multiples of ``window_spec[0]`` for the tiled window embedding).
    Output: the four stage outputs, highest resolution first, channels-first:
    ``(B, C1, H/4, W/4)``, ``(B, 2 C1, H/8, W/8)``, ``(B, 4 C1, H/16, W/16)``,
    ``(B, 8 C1, H/32, W/32)`` float32.
    """

    def __init__(self, cfg: HieraConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.patch_embed = HieraPatchEmbed(cfg)
        self.pos_embed = nn.Parameter(
            torch.zeros(1, cfg.embed_dim, *cfg.window_pos_embed_bkg_spatial_size))
        w0 = cfg.window_spec[0]
        self.pos_embed_window = nn.Parameter(torch.zeros(1, cfg.embed_dim, w0, w0))
        self.blocks = nn.ModuleList(HieraBlock(s, cfg.mlp_ratio, cfg.norm_eps)
                                    for s in cfg.block_specs())

    def position_embedding(self, h: int, w: int) -> torch.Tensor:
        """Windowed absolute position embedding for an (h, w) token grid: (1, h, w, C) float32.

        The background embedding is resized with ``F.interpolate(mode="bicubic",
        align_corners=False)``; the window embedding is tiled ``(h // w0, w // w0)`` times.

        Raises:
            ValueError: h or w is not a multiple of the window embedding side ``w0``.
        """
        w0 = self.pos_embed_window.shape[-1]
        if h % w0 or w % w0:
            raise ValueError(f"Hiera: token grid {h}x{w} is not a multiple of the {w0}x{w0} "
                             "window position embedding")
        pos = F.interpolate(self.pos_embed, size=(h, w), mode="bicubic", align_corners=False)
        pos = pos + self.pos_embed_window.tile(1, 1, h // w0, w // w0)
        return pos.permute(0, 2, 3, 1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``x``: (B, 3, H, W) float32 -> the four stage outputs (see class docstring).

        Without autograd, every block's ``qkv`` projection and MLP hidden layer up to
        :data:`~sam_model.layers.SCRATCH_MAX_BYTES` are written into one
        :class:`~sam_model.layers.ScratchBuffer` for the whole forward (never two of them
        alive at once), instead of a fresh tensor each (same values)."""
        x = self.patch_embed(x)
        x = x + self.position_embedding(x.shape[1], x.shape[2])
        ends = set(self.cfg.stage_ends)
        outputs = []
        scratch = None if torch.is_grad_enabled() else ScratchBuffer(SCRATCH_MAX_BYTES)
        for i, block in enumerate(self.blocks):
            x = block(x, scratch)
            if i in ends:
                outputs.append(x.permute(0, 3, 1, 2))
        return outputs
