"""SAM 2's FPN neck and its sine position encoding (SAM 2 paper §4 "Image encoder"; official
``sam2.modeling.backbones.image_encoder.FpnNeck`` and ``position_encoding.PositionEmbeddingSine``).

Each Hiera stage output gets a 1x1 lateral convolution to ``d_model`` (256) channels. Going from
the coarsest level (stride 32) to the finest (stride 4), a level listed in
``fpn_top_down_levels`` adds the previous (coarser) output upsampled 2x (nearest neighbour);
the others are their lateral features alone. In the 2.1 configs only levels 2 and 3 fuse, so
the decoder's stride-16 level is lateral(stride 16) + up(lateral(stride 32)), and its stride-4
and stride-8 levels are plain laterals. The coarsest ``scalp`` (1) levels are dropped.

Levels are indexed finest first: level 0 stride 4 (256x256 at 1024), level 1 stride 8,
level 2 stride 16 (64x64, the image embedding), level 3 stride 32.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torch.nn import functional as F

from .sam2_configs import FpnNeckConfig


def sine_position_encoding(h: int, w: int, num_pos_feats: int = 256,
                           temperature: float = 10000.0, normalize: bool = True,
                           scale: float = 2 * torch.pi,
                           device: torch.device | str = "cpu") -> torch.Tensor:
    """DETR-style 2-D sine position encoding of an (h, w) grid (official
    ``PositionEmbeddingSine``): (1, num_pos_feats, h, w) float32.

    Rows and columns are numbered 1..h and 1..w, normalised by ``(last + 1e-6)`` and scaled to
    (0, ``scale``] when ``normalize``. Each axis gets ``num_pos_feats / 2`` features
    ``pos / temperature ** (2 * (i // 2) / (num_pos_feats / 2))``, sine at even and cosine at
    odd ``i``; the y features come first, then the x features.

    Raises:
        ValueError: ``num_pos_feats`` is odd.
    """
    if num_pos_feats % 2:
        raise ValueError(f"sine_position_encoding: num_pos_feats must be even, got {num_pos_feats}")
    half = num_pos_feats // 2
    y = torch.arange(1, h + 1, dtype=torch.float32, device=device).view(h, 1).expand(h, w)
    x = torch.arange(1, w + 1, dtype=torch.float32, device=device).view(1, w).expand(h, w)
    if normalize:
        eps = 1e-6
        y = y / (y[-1:, :] + eps) * scale
        x = x / (x[:, -1:] + eps) * scale
    dim_t = torch.arange(half, dtype=torch.float32, device=device)
    dim_t = temperature ** (2 * (dim_t // 2) / half)

    def encode(pos: torch.Tensor) -> torch.Tensor:
        p = pos[..., None] / dim_t
        return torch.stack((p[..., 0::2].sin(), p[..., 1::2].cos()), dim=-1).flatten(-2)

    return torch.cat((encode(y), encode(x)), dim=-1).permute(2, 0, 1)[None]


class FpnNeck(nn.Module):
    """The FPN neck (see module docstring). Keys ``convs.{j}.conv.weight/bias`` with ``j = 0``
    the coarsest level (official layout: ``convs[n - i]`` is the lateral of trunk level ``i``).

    Args:
        cfg: :class:`FpnNeckConfig`.
        backbone_channels: trunk stage widths, finest first (``HieraConfig.stage_channels``).
    """

    def __init__(self, cfg: FpnNeckConfig, backbone_channels: tuple[int, ...]) -> None:
        super().__init__()
        if cfg.fuse_type not in ("sum", "avg"):
            raise ValueError(f"FpnNeck: fuse_type must be 'sum' or 'avg', got {cfg.fuse_type!r}")
        self.cfg = cfg
        self.convs = nn.ModuleList(
            nn.Sequential(OrderedDict(conv=nn.Conv2d(c, cfg.d_model, kernel_size=1)))
            for c in reversed(backbone_channels))

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        """Fuse the trunk levels.

        Args:
            xs: trunk stage outputs, finest first, (B, C_i, H_i, W_i) float32 with
                H_i = 2 H_{i+1}.

        Returns:
            the ``len(xs) - scalp`` finest fused levels, finest first, each
            (B, d_model, H_i, W_i) float32.

        Raises:
            ValueError: ``xs`` does not have one entry per lateral convolution.
        """
        n = len(self.convs) - 1
        if len(xs) != n + 1:
            raise ValueError(f"FpnNeck: expected {n + 1} trunk levels, got {len(xs)}")
        out: list[torch.Tensor] = [None] * (n + 1)  # type: ignore[list-item]
        prev = None
        for i in range(n, -1, -1):
            lateral = self.convs[n - i](xs[i])
            if i in self.cfg.fpn_top_down_levels and prev is not None:
                top_down = F.interpolate(prev.to(torch.float32), scale_factor=2.0,
                                         mode=self.cfg.fpn_interp_mode,
                                         align_corners=None if self.cfg.fpn_interp_mode == "nearest" else False)
                prev = lateral + top_down
                if self.cfg.fuse_type == "avg":
                    prev = prev / 2
            else:
                prev = lateral
            out[i] = prev
        return out[: len(out) - self.cfg.scalp] if self.cfg.scalp > 0 else out

    def position_encodings(self, levels: list[torch.Tensor]) -> list[torch.Tensor]:
        """Sine position encoding of every level: (1, pos_num_feats, H_i, W_i) float32 each
        (the official neck's ``vision_pos_enc``; used by SAM 2's memory attention, not by the
        image-mode decoder)."""
        c = self.cfg
        return [sine_position_encoding(x.shape[-2], x.shape[-1], c.pos_num_feats,
                                       c.pos_temperature, c.pos_normalize, c.pos_scale,
                                       x.device) for x in levels]
