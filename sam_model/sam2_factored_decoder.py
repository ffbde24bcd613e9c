"""SAM 2's fast point decoder: the exact factored rewrite of the mask decoder
(:mod:`sam_model.factored_decoder`) behind the decoder seam, for the generator's grids of
single foreground points.

Per image (crop) the shared work is done once (:meth:`FactoredGridDecoder.prepare`): the first
block's projections of the image embedding, the per-image terms of every LayerNorm and
attention over image tokens in form (*), and the upscaling's per-image biases, which carry
SAM 2's high-resolution skip features (``conv_s1`` after the first transposed convolution,
``conv_s0`` after the second). Per prompt only the small factored arrays are computed; the
predicted IoU comes before any mask logits, so outputs that fail the IoU filter are never
upscaled, and crop-edge reject windows are decoded from their few image tokens alone.

Output selection, as ``Sam2MaskDecoder.select_masks`` (official ``MaskDecoder``):

- ``multimask_output``: the three multimask tokens (1-3); the same pass as SAM's
  :class:`~sam_model.factored_decoder.FactoredPointDecoder` with SAM 2's token positions (the
  object-score token comes first).
- single-mask output: token 0 when its whole low-res map is stable (stability at +-0.05 logits
  >= 0.98), else the multimask token with the highest predicted IoU. A prompt whose token-0 IoU
  and best multimask IoU both fail the IoU filter is dropped before any logits; otherwise token
  0's whole map is decoded (the stability needs it), and the best multimask token's map where
  token 0 is unstable and the selected output passes the filter.
- ``use_m2m`` (``SAM2AutomaticMaskGenerator.refine_with_m2m``): the first pass (either mode
  above, every output, whole maps, no filter) is fast; the refinement feeds each output's
  clamped logits back as a mask input, whose dense embedding differs per prompt, so form (*)
  does not apply: it is the plain decoder's (:meth:`Sam2PlainPointDecoder.refine`), then the
  filters.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Callable

import torch
from torch.profiler import record_function

from .factored_decoder import (MULTIMASK_TOKENS, FactoredContext, FactoredGridDecoder,
                               FactoredPointDecoder)
from .point_decoder import DecodedMasks, RejectWindow, apply_filters, window_logits
from .sam2_mask_decoder import mask_stability_scores

# Mask tokens of single-mask output: token 0 and the multimask tokens it may fall back to.
ALL_MASK_TOKENS = [0] + MULTIMASK_TOKENS


class Sam2FactoredPointDecoder:
    """SAM 2's fast point decoder (the :mod:`sam_model.point_decoder` seam; module docstring).

    Built by :meth:`sam_model.sam2.Sam2.point_decoder`.

    Args:
        model: the :class:`~sam_model.sam2.Sam2` model (prompt encoder, mask decoder, input
            frame, device).
        emb: the crop's :class:`~sam_model.sam2.Sam2ImageEmbedding`.
        compute_dtype: arithmetic of the per-prompt work (:class:`FactoredGridDecoder`).
        low_res_hw: (h, w) top-left part of the low-res map needed, or None for all of it;
            rounded up to whole image tokens.
        multimask_output: three outputs per point, else one (dynamic stability fallback).
        refiner: for ``use_m2m``, the plain decoder's :meth:`Sam2PlainPointDecoder.refine`;
            None without the mask-to-mask pass.
        chunk_size: prompts per decoder pass (a cache knob: the results do not depend on it).
    """

    def __init__(self, model: Any, emb: Any, compute_dtype: torch.dtype,
                 low_res_hw: tuple[int, int] | None, *, multimask_output: bool,
                 refiner: Callable[[torch.Tensor, torch.Tensor, torch.Tensor],
                                   tuple[torch.Tensor, torch.Tensor]] | None,
                 chunk_size: int) -> None:
        self.model, self.emb = model, emb
        self.multimask_output = multimask_output
        self.refiner = refiner
        self.chunk_size = chunk_size
        gh, gw = self.grid_hw = emb.grid_hw
        nh, nw = low_res_hw or (4 * gh, 4 * gw)
        self.token_hw = (min(-(-nh // 4), gh), min(-(-nw // 4), gw))
        self.low_res_hw = (4 * self.token_hw[0], 4 * self.token_hw[1])
        dec = model.sam_mask_decoder
        self.t0 = dec.first_mask_token  # output-token position of mask token 0
        self.delta = dec.cfg.dynamic_multimask_stability_delta
        self.stable_thresh = dec.cfg.dynamic_multimask_stability_thresh
        self.dynamic = dec.cfg.dynamic_multimask_via_stability
        with torch.no_grad():
            self.grid = FactoredGridDecoder(dec, dtype=compute_dtype)
            no_mask = model.sam_prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
            self.ctx: FactoredContext = self.grid.prepare(
                emb.image_embedding, model.dense_pe(emb), no_mask.expand_as(emb.image_embedding),
                emb.high_res_features)
        multimask_final = [self.t0 - 1] + [self.t0 + i for i in MULTIMASK_TOKENS]
        self.multimask = FactoredPointDecoder(self.grid, self.ctx, self.sparse, self.token_hw,
                                              chunk_size, multimask_final)
        # the m2m first pass needs whole maps (they are the second pass's mask inputs)
        self.multimask_whole = FactoredPointDecoder(self.grid, self.ctx, self.sparse,
                                                    self.grid_hw, chunk_size, multimask_final)

    def sparse(self, points_xy: torch.Tensor) -> torch.Tensor:
        """Prompt tokens of single foreground points: ``points_xy`` (B, 2) xy in crop pixels
        (cast to float32, as the reference generator does) -> (B, 2, C) float32 (the point and
        the padding point)."""
        pts = torch.as_tensor(points_xy, dtype=torch.float32, device=self.model.device)
        labels = torch.ones(len(pts), 1, dtype=torch.int32, device=pts.device)
        sparse, _ = self.model.sam_prompt_encoder(
            self.model.to_input_frame(pts[:, None], self.emb), labels, None, None,
            self.emb.grid_hw)
        return sparse

    @torch.inference_mode()
    def decode(self, points_xy: torch.Tensor, iou_thresh: float,
               reject: Sequence[RejectWindow] = ()) -> DecodedMasks:
        """See :meth:`sam_model.point_decoder.PointDecoder.decode`.

        ``points_xy``: (B, 2) float64 xy in crop pixels. Returns :class:`DecodedMasks` with
        (K, 4*th, 4*tw) float32 unclamped logits (the top-left part of the 256 x 256 map).

        Raises:
            ValueError: ``points_xy`` is not (B, 2).
        """
        pts = torch.as_tensor(points_xy, dtype=torch.float32, device=self.model.device)
        if pts.ndim != 2 or pts.shape[1] != 2:
            raise ValueError(f"points_xy must be (B, 2) xy, got shape {tuple(pts.shape)}")
        if self.refiner is None:
            if self.multimask_output:
                return self.multimask.decode(pts, iou_thresh, reject)
            return self._single_mask(pts, iou_thresh, reject, self.token_hw)
        if self.multimask_output:
            first = self.multimask_whole.decode(pts, 0.0)
        else:
            first = self._single_mask(pts, 0.0, (), self.grid_hw)
        with record_function("decoder.m2m"):
            low, iou = self.refiner(pts, first.low_res_logits, first.prompt_index)
        return apply_filters(low, iou, first.prompt_index, iou_thresh, reject, self.low_res_hw)

    def _single_mask(self, pts: torch.Tensor, iou_thresh: float, reject: Sequence[RejectWindow],
                     token_hw: tuple[int, int]) -> DecodedMasks:
        """Single-mask output with the dynamic stability fallback (module docstring), then the
        IoU filter and the reject windows; logits of the top-left ``token_hw`` tokens."""
        gd, ctx = self.grid, self.ctx
        sparse = self.sparse(pts)
        final = [self.t0 - 1] + [self.t0 + i for i in ALL_MASK_TOKENS]
        hh, ww = 4 * token_hw[0], 4 * token_hw[1]
        lows, ious, idxs = [], [], []
        for s in range(0, len(pts), self.chunk_size):
            with record_function("decoder.transformer"):
                tokens, img = gd.run_transformer(ctx, sparse[s:s + self.chunk_size], final)
                iou4 = gd.predict_iou(tokens)  # (b, 4)
            b = len(iou4)
            best = 1 + iou4[:, 1:].argmax(-1)  # (b,) multimask token with the highest IoU
            iou_best = iou4[torch.arange(b), best]
            if not self.dynamic:  # token 0 only
                iou_best = torch.full_like(iou_best, float("-inf"))
            if iou_thresh > 0:
                rows = ((iou4[:, 0] > iou_thresh) | (iou_best > iou_thresh)).nonzero().flatten()
            else:
                rows = torch.arange(b)
            if len(rows) == 0:
                continue
            tok, im = tokens[rows], img[rows]
            best, iou_best, iou0 = best[rows], iou_best[rows], iou4[rows, 0]
            with record_function("decoder.mask_logits"):
                weights, rows_w1 = gd.mask_inputs(tok, im, ALL_MASK_TOKENS)  # (n, 4, c2)
                # token 0's whole map: its stability decides the output
                low = gd.predict_mask_logits(tok, im, ctx.grid_hw, [0], None, ctx,
                                             weights=weights[:, :1], rows_w1=rows_w1)[:, 0]
                stable = mask_stability_scores(low, self.delta) >= self.stable_thresh
                if not self.dynamic:
                    stable = torch.ones_like(stable)
                iou = torch.where(stable, iou0, iou_best)
                keep = iou > iou_thresh if iou_thresh > 0 else torch.ones_like(stable)
                swap = (~stable & keep).nonzero().flatten()
                if len(swap):
                    w = weights[swap, best[swap]][:, None]  # (u, 1, c2)
                    low[swap] = gd.predict_mask_logits(tok[swap], im[swap], ctx.grid_hw, [0],
                                                       None, ctx, weights=w,
                                                       rows_w1=rows_w1[swap])[:, 0]
            low, iou, idx = low[keep], iou[keep], rows[keep] + s
            for window in reject:
                if len(low) == 0:
                    break
                drop = window.reject(window_logits(low, window.token_box)).to(low.device)
                low, iou, idx = low[~drop], iou[~drop], idx[~drop]
            lows.append(low[:, :hh, :ww].contiguous())
            ious.append(iou)
            idxs.append(idx.to(pts.device))
        if not lows:
            return DecodedMasks.empty((hh, ww), pts.device)
        return DecodedMasks(torch.cat(lows), torch.cat(ious), torch.cat(idxs))


__all__ = ["Sam2FactoredPointDecoder"]
