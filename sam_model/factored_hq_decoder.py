"""HQ-SAM's fast point decoder: SAM's exact factored decoder (:mod:`sam_model.factored_decoder`)
with the HQ token and the fused HQ-Features (Ke et al., 2023, §3.2).

Per image (crop), once: the two-way transformer's per-image terms of form (*) (the HQ token
is one more output token) and the HQ-Features ``embedding_encoder(embedding) +
compress_vit_feat(early feature)`` (:meth:`HQMaskDecoder.hq_features`).

Per prompt batch: the transformer on factored image tokens; the SAM output's predicted IoU
(the best multimask token, or token 0) and the IoU filter *before* any mask is made; then for
the survivors only, and only for the low-res region needed (the image's part of the map, or a
reject window), the one output mask

    SAM mask + HQ mask = w_sam . U + w_hq . (embedding_maskfeature(U) + HQ-Features)

with ``U`` the output upscaling's features of the region (:meth:`FactoredGridDecoder.upscaled_features`),
``w_sam`` the chosen mask token's hypernetwork weights and ``w_hq`` the HQ token's ``hf_mlp``
output (``hq_token_only``: the HQ mask alone). ``embedding_maskfeature`` is conv3x3 ->
LayerNorm2d -> GELU -> conv3x3; its last convolution is linear, so ``w_hq . conv(y)`` is one
convolution with the single kernel ``sum_c w_hq[c] K[c]`` (64 -> 1 channels instead of
64 -> 32, then a dot product). The two 3x3 convolutions see a pixel's 2-pixel neighbourhood:
the region is computed with one more token (4 low-res pixels) on every side that is not the
map's border (where the official zero padding is the truth), then cropped. Exact up to float
rounding.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch.nn import functional as F
from torch.profiler import record_function

from .factored_decoder import (FactoredContext, FactoredGridDecoder, FactoredImageTokens,
                               check_points_xy)
from .point_decoder import DecodedMasks, RejectWindow


class FactoredHQPointDecoder:
    """HQ-SAM fast point decoder (the :mod:`sam_model.point_decoder` seam): one output per
    prompt, the same outputs as :class:`sam_model.sam_hq.HQPointDecoder`.

    Args:
        decoder: :class:`FactoredGridDecoder` over the model's
            :class:`~sam_model.hq_mask_decoder.HQMaskDecoder` (its ``dtype`` is the arithmetic).
        ctx: its :meth:`FactoredGridDecoder.prepare` context of the image.
        hq_features: (1, C/8, 4h, 4w) float32 HQ-Features of the image.
        sparse_fn: ``points_xy (B, 2) float64 image pixels -> (B, Np, C)`` sparse prompt
            embeddings of single foreground points (SAM's prompt encoder).
        token_hw: (th, tw) image tokens decoded; the logits returned are low-res pixels
            ``(4*th, 4*tw)``, the top-left part of the 256 x 256 map.
        chunk_size: prompts per transformer pass (speed only).
        multimask_output: the SAM mask is the best multimask output by predicted IoU (the
            official generator's) instead of the single-mask output.
        hq_token_only: the HQ mask alone.
    """

    def __init__(self, decoder: FactoredGridDecoder, ctx: FactoredContext,
                 hq_features: torch.Tensor, sparse_fn: Callable[[torch.Tensor], torch.Tensor],
                 token_hw: tuple[int, int], chunk_size: int, multimask_output: bool,
                 hq_token_only: bool) -> None:
        self.decoder, self.ctx, self.sparse_fn = decoder, ctx, sparse_fn
        self.token_hw = tuple(token_hw)
        self.low_res_hw = (4 * token_hw[0], 4 * token_hw[1])
        self.chunk_size = chunk_size
        self.multimask_output = multimask_output
        self.hq_token_only = hq_token_only
        dec = decoder.dec  # in the decoder's dtype
        self.hq = dec
        self.final_tokens = list(range(dec.hq_token_index + 1))  # IoU, mask tokens, HQ token
        # (4h, 4w, C/8) channels last, for the per-prompt dot product with w_hq
        self.hq_features = hq_features[0].permute(1, 2, 0).to(decoder.dtype).contiguous()
        last = dec.embedding_maskfeature[3]
        self.k2, self.b2 = last.weight, last.bias  # (C/8, C/4, 3, 3), (C/8,)

    @torch.inference_mode()
    def decode(self, points_xy: torch.Tensor, iou_thresh: float,
               reject: Sequence[RejectWindow] = ()) -> DecodedMasks:
        """See :meth:`sam_model.point_decoder.PointDecoder.decode` (``points_xy`` may also be
        a numpy array; a shape other than (B, 2) raises ``ValueError``): low-res logits (K, 4*th,
        4*tw) float32, predicted IoU (K,) float32, prompt index (K,) int64 of the outputs
        that pass the IoU filter and no reject window; a prompt dropped by a window skips its
        whole-map logits."""
        points_xy = check_points_xy(points_xy, self.ctx.keys0.device)
        gd, ctx = self.decoder, self.ctx
        sparse = self.sparse_fn(points_xy)
        lows, ious, idxs = [], [], []
        for s in range(0, points_xy.shape[0], self.chunk_size):
            with record_function("decoder.transformer"):
                tokens, img = gd.run_transformer(ctx, sparse[s:s + self.chunk_size],
                                                 self.final_tokens)
                token_index, iou = self.hq.select_sam_output(tokens, self.multimask_output)
                iou = iou[:, 0].float()
            keep = iou > iou_thresh if iou_thresh > 0 else torch.ones_like(iou, dtype=torch.bool)
            rows = keep.nonzero().flatten()
            if len(rows) == 0:
                continue
            with record_function("decoder.mask_logits"):
                tok, img = tokens[rows], img[rows]
                inputs = self.mask_inputs(tok, img, token_index[rows])
                for win in reject:
                    low = self.region_logits(img, inputs, win.token_box)
                    live = (~win.reject(low.float()).to(low.device)).nonzero().flatten()
                    if len(live) < len(rows):
                        rows, img = rows[live], img[live]
                        inputs = tuple(x[live] for x in inputs)
                    if len(rows) == 0:
                        break
                if len(rows) == 0:
                    continue
                th, tw = self.token_hw
                low = torch.cat([self.region_logits(img[i:i + 1], tuple(x[i:i + 1] for x in inputs),
                                                    (0, th, 0, tw)) for i in range(len(rows))])
            lows.append(low.float())
            ious.append(iou[rows])
            idxs.append(rows + s)
        if not lows:
            return DecodedMasks.empty(self.low_res_hw, points_xy.device)
        return DecodedMasks(torch.cat(lows), torch.cat(ious), torch.cat(idxs))

    def mask_inputs(self, tokens: torch.Tensor, image_tokens: FactoredImageTokens,
                    token_index: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Per-prompt inputs of :meth:`region_logits`, shared by its windows.

        Args:
            tokens: (B, Nt, C). image_tokens: B prompts. token_index: (B,) int64 SAM mask
                token of each prompt.

        Returns:
            ``(w_sam (B, C/8), w_hq (B, C/8), rows_w1 (B, r, 4*C/4), hq_bias (B,))``:
            hypernetwork weights of the chosen mask token, the HQ token's ``hf_mlp`` output,
            the rows of form (*) through the first upscaling convolution, ``w_hq . b``
            of the last ``embedding_maskfeature`` convolution.
        """
        dec = self.hq
        every = dec.hypernetwork_weights(tokens, list(range(dec.num_mask_tokens)))  # (B, 4, c)
        w_sam = every[torch.arange(len(tokens), device=every.device), token_index]
        w_hq = dec.hf_mlp(tokens[:, dec.hq_token_index])
        rows_w1 = torch.matmul(image_tokens.rows, self.decoder.w1)
        return w_sam, w_hq, rows_w1, w_hq @ self.b2

    def region_logits(self, image_tokens: FactoredImageTokens, inputs: tuple[torch.Tensor, ...],
                      token_box: tuple[int, int, int, int]) -> torch.Tensor:
        """The output mask's low-res logits of a token window (module docstring).

        Args:
            image_tokens: B prompts. inputs: their :meth:`mask_inputs`.
            token_box: ``(y0, y1, x0, x1)`` tokens; the logits of low-res pixels
                ``[4*y0, 4*y1) x [4*x0, 4*x1)``.

        Returns:
            (B, 4*(y1-y0), 4*(x1-x0)) logits in the decoder's dtype.
        """
        w_sam, w_hq, rows_w1, hq_bias = inputs
        gh, gw = self.ctx.grid_hw
        y0, y1, x0, x1 = token_box
        # one token of context on every side inside the map (the convolutions' halo)
        e0, e1, f0, f1 = max(0, y0 - 1), min(gh, y1 + 1), max(0, x0 - 1), min(gw, x1 + 1)
        up = self.decoder.upscaled_features(image_tokens, self.ctx, (e0, e1, f0, f1), rows_w1)
        b, hh, ww, c = up.shape
        conv1, norm = self.hq.embedding_maskfeature[0], self.hq.embedding_maskfeature[1]
        # channels last throughout: the convolution reads and writes that layout, and the
        # LayerNorm2d over channels is then a plain layer_norm over the last dimension
        y = conv1(up.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)  # (B, hh, ww, C/4)
        y = F.layer_norm(y, (y.shape[-1],), norm.weight, norm.bias, norm.eps)
        torch.ops.aten.gelu_(y)
        kernel = torch.einsum("bc,cdij->bdij", w_hq, self.k2)  # (B, C/4, 3, 3)
        hq = conv3x3_one_channel(y, kernel)  # (B, hh, ww)
        feats = self.hq_features[4 * e0:4 * e1, 4 * f0:4 * f1].reshape(-1, c)
        hq = hq + (w_hq @ feats.T).view(b, hh, ww) + hq_bias[:, None, None]
        if not self.hq_token_only:
            hq = hq + torch.bmm(up.view(b, -1, c), w_sam[:, :, None]).view(b, hh, ww)
        oy, ox = 4 * (y0 - e0), 4 * (x0 - f0)
        return hq[:, oy:oy + 4 * (y1 - y0), ox:ox + 4 * (x1 - x0)]


def conv3x3_one_channel(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """A 3x3 convolution with one output channel per batch item and zero padding 1, on a
    channels-last map: ``out[b, i, j] = sum_(c, u, v) kernel[b, c, u, v] x[b, i+u-1, j+v-1, c]``.

    As one product (9 x C) @ (C x pixels), one map per kernel tap, followed by nine shifted
    additions of those maps (F.conv2d with a single output channel ran several times slower
    on a 2-core CPU).

    Args:
        x: (B, H, W, C). kernel: (B, C, 3, 3).

    Returns:
        (B, H, W), ``x``'s dtype.
    """
    b, h, w, c = x.shape
    taps = torch.bmm(kernel.reshape(b, c, 9).transpose(1, 2), x.reshape(b, h * w, c).transpose(1, 2))
    taps = F.pad(taps.view(b, 9, h, w), (1, 1, 1, 1))  # (B, 9, H + 2, W + 2), zeros outside
    out = taps[:, 0, 0:h, 0:w].clone()
    for k in range(1, 9):
        u, v = divmod(k, 3)
        out += taps[:, k, u:u + h, v:v + w]
    return out


__all__ = ["FactoredHQPointDecoder", "conv3x3_one_channel"]
