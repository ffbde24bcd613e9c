"""MobileSAM's TinyViT-5M image encoder (Zhang et al., 2023, "Faster Segment Anything").

Convolutional stem and first stage (MBConv), then three stages of windowed self-attention with a
learned per-head bias for every (|dy|, |dx|) offset inside a window, a depth-wise local
convolution and an MLP. Patch merging between stages; the merge into the last stage keeps the
resolution (stride 1), so a 1024x1024 input yields a 64x64 grid. A neck projects to the
256-channel image embedding SAM's decoder expects. State-dict keys follow the official
``mobile_sam.pt`` (``patch_embed.seq.0.c``, ``layers.{i}.blocks.{j}.attn.attention_biases``...);
the unused ImageNet head (``norm_head``, ``head``) is kept so the checkpoint loads strictly.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .configs import TinyViTConfig
from .layers import LayerNorm2d, attention
from .vit import window_partition, window_unpartition


def gelu_temporary(x: torch.Tensor) -> torch.Tensor:
    """Exact (erf) GELU of ``x``, a temporary the caller does not read again: in place when no
    gradient is being recorded (inference), else ``F.gelu``. The same values as ``F.gelu``;
    in place the encoder skips allocating and first-touching a fresh activation-sized buffer
    per call (up to 67 MB at the 256 x 256 stage): MobileSAM's image encoder took a median
    0.63 instead of 0.82 s per 1024 x 1024 input on a 2-core CPU, float32."""
    if torch.is_grad_enabled():
        return F.gelu(x)
    return torch.ops.aten.gelu_(x)


class GELUTemporary(nn.Module):
    """:func:`gelu_temporary` as a module (no parameters: state-dict keys unchanged)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: any shape, a temporary -> GELU of it (the same tensor in inference)."""
        return gelu_temporary(x)


class ConvBN(nn.Sequential):
    """Convolution without bias followed by BatchNorm (keys ``c`` and ``bn``), used in eval mode."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 1, stride: int = 1, padding: int = 0,
                 groups: int = 1) -> None:
        super().__init__()
        self.add_module("c", nn.Conv2d(in_ch, out_ch, kernel, stride, padding, groups=groups,
                                       bias=False))
        self.add_module("bn", nn.BatchNorm2d(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: (B, in, H, W) float32 -> (B, out, H', W') float32, keeping ``x``'s memory
        format (channels-last in this encoder).

        In eval mode the BatchNorm is folded into the convolution (``w * g / sqrt(var + eps)``,
        bias ``b - mean * g / sqrt(var + eps)``): one pass over the activations instead of two,
        equal up to float rounding. Training mode runs the two modules (batch statistics)."""
        if self.training:
            return super().forward(x)
        c, bn = self.c, self.bn
        scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
        weight = c.weight * scale.view(-1, 1, 1, 1)
        bias = bn.bias - bn.running_mean * scale
        return F.conv2d(x, weight, bias, c.stride, c.padding, c.dilation, c.groups)


class StemPatchEmbed(nn.Module):
    """Two stride-2 3x3 ConvBN layers with GELU: (B, 3, H, W) -> (B, C0, H/4, W/4)."""

    def __init__(self, out_ch: int) -> None:
        super().__init__()
        self.seq = nn.Sequential(ConvBN(3, out_ch // 2, 3, 2, 1), GELUTemporary(),
                                 ConvBN(out_ch // 2, out_ch, 3, 2, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: (B, 3, H, W) float -> (B, C0, H/4, W/4)."""
        return self.seq(x)


class MBConv(nn.Module):
    """Inverted residual block: 1x1 expand, 3x3 depth-wise, 1x1 project, residual, GELU."""

    def __init__(self, dim: int, expand_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * expand_ratio)
        self.conv1 = ConvBN(dim, hidden)
        self.conv2 = ConvBN(hidden, hidden, 3, 1, 1, groups=hidden)
        self.conv3 = ConvBN(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: (B, C, H, W) float -> (B, C, H, W)."""
        y = gelu_temporary(self.conv1(x))
        y = gelu_temporary(self.conv2(y))
        return gelu_temporary(self.conv3(y) + x)


class PatchMerging(nn.Module):
    """1x1 ConvBN, GELU, 3x3 depth-wise ConvBN (stride 1 or 2), GELU, 1x1 ConvBN.

    (B, C, H, W) -> (B, C', H/s, W/s) channels-first.
    """

    def __init__(self, dim: int, out_dim: int, stride: int) -> None:
        super().__init__()
        self.conv1 = ConvBN(dim, out_dim)
        self.conv2 = ConvBN(out_dim, out_dim, 3, stride, 1, groups=out_dim)
        self.conv3 = ConvBN(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: (B, C, H, W) float -> (B, C', H', W')."""
        return self.conv3(gelu_temporary(self.conv2(gelu_temporary(self.conv1(x)))))


class TinyViTAttention(nn.Module):
    """Windowed multi-head attention with a learned bias per head and per (|dy|, |dx|) offset.

    The ``qkv`` projection is laid out per head as ``[q | k | v]`` (TinyViT's layout, not
    ``[q..., k..., v...]``). LayerNorm is applied inside, on the already-padded windows.
    """

    def __init__(self, dim: int, num_heads: int, window: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * self.head_dim * num_heads)
        self.proj = nn.Linear(self.head_dim * num_heads, dim)
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, window * window))
        ys, xs = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
        ys, xs = ys.flatten(), xs.flatten()
        # Offset (|dy|, |dx|) -> column |dy| * window + |dx| of ``attention_biases``.
        idx = (ys[:, None] - ys[None, :]).abs() * window + (xs[:, None] - xs[None, :]).abs()
        self.register_buffer("attention_bias_idxs", idx, persistent=False)
        self.fused = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: (B, N, C) float window tokens, N = window**2 -> (B, N, C)."""
        b, n, _ = x.shape
        qkv = self.qkv(self.norm(x)).view(b, n, self.num_heads, 3 * self.head_dim)
        q, k, v = qkv.permute(0, 2, 1, 3).split(self.head_dim, dim=-1)
        # (1, heads, N, N): with a 4-d mask torch's CPU SDPA runs its fused (flash) kernel;
        # a 3-d one falls back to the unfused math path (~1.5-3.5x slower on TinyViT's shapes)
        bias = self.attention_biases[:, self.attention_bias_idxs][None]
        out = attention(q, k, v, bias, fused=self.fused)
        return self.proj(out.transpose(1, 2).reshape(b, n, -1))


class TinyViTMLP(nn.Module):
    """LayerNorm -> fc1 -> GELU -> fc2 (TinyViT's MLP carries its own norm)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: (..., dim) -> (..., dim)."""
        return self.fc2(gelu_temporary(self.fc1(self.norm(x))))


class TinyViTBlock(nn.Module):
    """Windowed attention (zero-padded to whole windows), depth-wise 3x3 ConvBN, MLP."""

    def __init__(self, dim: int, num_heads: int, window: int, mlp_ratio: float,
                 local_conv_size: int) -> None:
        super().__init__()
        self.window = window
        self.attn = TinyViTAttention(dim, num_heads, window)
        self.mlp = TinyViTMLP(dim, int(dim * mlp_ratio))
        pad = local_conv_size // 2
        self.local_conv = ConvBN(dim, dim, local_conv_size, 1, pad, groups=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: (B, H, W, C) float channels-last -> (B, H, W, C)."""
        b, h, w, c = x.shape
        windows, padded = window_partition(x, self.window)
        y = self.attn(windows.reshape(windows.shape[0], -1, c))
        y = window_unpartition(y.view(-1, self.window, self.window, c), self.window, padded, (h, w))
        x = x + y
        x = self.local_conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return x + self.mlp(x)


class ConvStage(nn.Module):
    """Stage 0: MBConv blocks then patch merging. (B, C, H, W) -> (B, C', H/2, W/2)."""

    def __init__(self, dim: int, out_dim: int, depth: int, expand_ratio: float, stride: int):
        super().__init__()
        self.blocks = nn.ModuleList(MBConv(dim, expand_ratio) for _ in range(depth))
        self.downsample = PatchMerging(dim, out_dim, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: (B, C, H, W) -> (B, C', H', W') channels-first."""
        for block in self.blocks:
            x = block(x)
        return self.downsample(x)


class AttentionStage(nn.Module):
    """Stages 1-3: TinyViT blocks, then patch merging except after the last stage.

    Input and output channels-first (B, C, H, W).
    """

    def __init__(self, dim: int, out_dim: int | None, depth: int, num_heads: int, window: int,
                 mlp_ratio: float, local_conv_size: int, stride: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            TinyViTBlock(dim, num_heads, window, mlp_ratio, local_conv_size) for _ in range(depth))
        self.downsample = PatchMerging(dim, out_dim, stride) if out_dim is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: (B, C, H, W) -> (B, C', H', W')."""
        x = x.permute(0, 2, 3, 1)
        for block in self.blocks:
            x = block(x)
        x = x.permute(0, 3, 1, 2)
        return self.downsample(x) if self.downsample is not None else x


class TinyViTImageEncoder(nn.Module):
    """MobileSAM TinyViT-5M image encoder.

    Input ``(B, 3, H, W)`` float32 normalised, padded pixels (1024x1024 for MobileSAM; H and W
    multiples of 16). Output image embedding ``(B, 256, H/16, W/16)`` float32.
    """

    def __init__(self, cfg: TinyViTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        dims = cfg.embed_dims
        self.patch_embed = StemPatchEmbed(dims[0])
        stages: list[nn.Module] = []
        for i, depth in enumerate(cfg.depths):
            out_dim = dims[i + 1] if i + 1 < len(dims) else None
            stride = 1 if out_dim in cfg.merge_stride1_dims else 2
            if i == 0:
                stages.append(ConvStage(dims[0], dims[1], depth, cfg.mbconv_expand_ratio, stride))
            else:
                stages.append(AttentionStage(dims[i], out_dim, depth, cfg.num_heads[i],
                                             cfg.window_sizes[i], cfg.mlp_ratio,
                                             cfg.local_conv_size, stride))
        self.layers = nn.ModuleList(stages)
        # ImageNet classification head of the TinyViT pre-training: unused, kept for strict loads.
        self.norm_head = nn.LayerNorm(dims[-1])
        self.head = nn.Linear(dims[-1], cfg.num_classes)
        self.neck = nn.Sequential(
            nn.Conv2d(dims[-1], cfg.out_chans, kernel_size=1, bias=False),
            LayerNorm2d(cfg.out_chans),
            nn.Conv2d(cfg.out_chans, cfg.out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(cfg.out_chans),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: (B, 3, H, W) float32 -> image embedding (B, 256, H/16, W/16) float32.

        Runs channels-last throughout: convolutions (depth-wise ones especially) ran about 2x
        faster than channels-first on a 2-core AVX2 CPU, and the attention stages' NHWC
        permutes become free views. The output is contiguous channels-first."""
        return self._encode(x, interm_stage=None)[0]

    def forward_with_interm(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Image embedding and the early-layer feature the light HQ-SAM (``vit_tiny``) fuses
        into its mask features: the output of stage 1 (``layers[1]``, its patch merging
        included), as the official light HQ-SAM takes ``interm_embeddings`` after
        ``layers[1]``: ``embed_dims[2]`` (160) channels at H/16 x W/16.

        Args:
            x: (B, 3, H, W) float32 normalised, padded pixels.

        Returns:
            image embedding (B, 256, H/16, W/16) float32 and the early-layer feature
            (B, 160, H/16, W/16) float32, channels-first, contiguous.
        """
        emb, interm = self._encode(x, interm_stage=1)
        return emb, interm.contiguous()

    def _encode(self, x: torch.Tensor, interm_stage: int | None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Embedding (B, 256, h, w) and the (B, C, h', w') output of stage ``interm_stage``
        (None: not kept)."""
        x = self.patch_embed(x.contiguous(memory_format=torch.channels_last))
        interm = None
        for i, stage in enumerate(self.layers):
            x = stage(x)
            if i == interm_stage:
                interm = x
        return self.neck(x).contiguous(), interm
