"""``MaskGenerator``: automatic "everything" mask generation (SAM paper §7.1, Appendix A).

For each crop box (the whole image, then crop layers): encode the crop once; prompt the mask
decoder with a grid of single foreground points in batches; keep masks whose predicted IoU and
stability score pass their thresholds and whose box does not touch an inner crop edge; box NMS
inside the crop; then box NMS across crops preferring smaller crops; optionally remove small
islands and holes; optionally (not in the reference) keep only the ``max_masks`` best
(:mod:`amg.ranking`); return the reference's mask records.

Differences from the reference are in *how*, not *what* (each step is an exact rewrite; results
equal the reference's up to float rounding):
- the mask decoder runs through :class:`sam_model.factored_decoder.FactoredGridDecoder`: the
  first two-way block's image-side projections are computed once per crop, and each prompt's
  image tokens are kept as ``scale * shared base + coefficients @ rows`` (the image->tokens
  updates have rank heads x tokens), so the per-prompt work is on (HW x ~128) instead of
  (HW x 256) arrays and every projection of the shared base is made once per crop; prompts are
  decoded in cache-sized chunks (``decoder_chunk_size``) whatever ``points_per_batch`` is;
- the predicted-IoU filter runs before any mask is upscaled, and only the surviving masks go
  through the output upscaling, over the image tokens that cover the image (not the padding);
- each survivor is upscaled only inside the region its logits can reach
  (:class:`amg.upscale.RegionUpscaler`); the stability score, box, edge filter and RLE are
  computed from that region, so no step holds a full-size mask, let alone a batch of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torchvision.ops import batched_nms, box_area

from sam_model import ImageEmbedding, Sam
from sam_model.factored_decoder import FactoredGridDecoder, FactoredContext
from sam_model.sam import check_rgb_image, has_native_bfloat16

from .config import AMGConfig, check_names
from .coarse_to_fine import grid_passes, uncovered
from .crops import crop_edge_strips, generate_crop_boxes, is_box_near_crop_edge
from .grid import build_all_layer_point_grids
from .mask_data import MaskData
from .records import mask_data_to_records
from .ranking import rank_masks
from .refine import clean_kept_masks, refine_in_crops
from .regions import clean_small_regions
from .rle import area_from_rle, rle_to_mask
from .upscale import RegionUpscaler, region_box_xyxy, region_to_rle

MULTIMASK_TOKENS = [1, 2, 3]
# Output tokens read after the transformer: the IoU token (0) and the multimask tokens.
FINAL_TOKENS = [0] + [1 + i for i in MULTIMASK_TOKENS]
DECODER = FactoredGridDecoder  # the batched mask decoder the generator runs
# Crop-edge strips are tested first only while their tokens are at most this share of the
# crop's tokens (always for crops of a few hundred pixels or more).
EDGE_STRIP_MAX_TOKEN_FRAC = 0.35


@dataclass(frozen=True)
class EdgeStrip:
    """A crop-edge strip (:func:`amg.crops.crop_edge_strips`) and what decodes it.

    Attributes:
        axis, start, stop: crop-frame columns (axis 1) or rows (axis 0) ``[start, stop)``.
        token_box: ``(y0, y1, x0, x1)`` image tokens whose logits the strip reads.
        first: low-res index of the window's first column (axis 1) or row (axis 0).
    """

    axis: int
    start: int
    stop: int
    token_box: tuple[int, int, int, int]
    first: int


def edge_strips_for_crop(crop_box: list[int], orig_hw: tuple[int, int], upscaler: RegionUpscaler,
                         token_hw: tuple[int, int]) -> list[EdgeStrip]:
    """The crop's :class:`EdgeStrip` list (empty when the crop has no edge inside the image,
    or when the strips would cover more than ``EDGE_STRIP_MAX_TOKEN_FRAC`` of its tokens).

    Args:
        crop_box: ``[x0, y0, x1, y1]`` in image pixels. orig_hw: (H, W) of the image.
        upscaler: the crop's :class:`RegionUpscaler` (its low-res support per output pixel).
        token_hw: (th, tw) image tokens decoded for the crop.
    """
    th, tw = token_hw
    out = []
    for axis, start, stop in crop_edge_strips(crop_box, [0, 0, orig_hw[1], orig_hw[0]]):
        lo, hi = upscaler.strip_low_res(axis, start, stop)
        n_tok = th if axis == 0 else tw
        t0, t1 = lo // 4, min(-(-hi // 4), n_tok)
        box = (t0, t1, 0, tw) if axis == 0 else (0, th, t0, t1)
        out.append(EdgeStrip(axis, start, stop, box, 4 * t0))
    used = sum((s.token_box[1] - s.token_box[0]) * (s.token_box[3] - s.token_box[2]) for s in out)
    return out if used <= EDGE_STRIP_MAX_TOKEN_FRAC * th * tw else []


class MaskGenerator:
    """Automatic mask generator with the reference ``SamAutomaticMaskGenerator`` parameters.

    Args:
        model: a :class:`sam_model.Sam` (e.g. ``load_model("mobile_sam")``); its device is used.
        config: an :class:`AMGConfig`; keyword parameters override its fields.
        **params: any :class:`AMGConfig` field, by the reference's names.

    Raises:
        ConfigError: an unknown parameter name or an invalid value.
    """

    def __init__(self, model: Sam, config: AMGConfig | None = None, **params: Any) -> None:
        check_names(params)
        self.config = (config or AMGConfig()).replace(**params) if params else (config or AMGConfig())
        cfg = self.config
        # input_size: the same weights run at another model-input side (not in the reference).
        self.model = model if cfg.input_size is None else model.with_input_size(int(cfg.input_size))
        self.compute_dtype = resolve_compute_dtype(cfg.compute_dtype, model.device)
        with torch.no_grad():
            self.grid_decoder = DECODER(model.mask_decoder, dtype=self.compute_dtype)
        if cfg.point_grids is not None:
            self.point_grids = [np.asarray(g, dtype=np.float64) for g in cfg.point_grids]
        else:
            self.point_grids = build_all_layer_point_grids(
                cfg.points_per_side, cfg.crop_n_layers, cfg.crop_n_points_downscale_factor)

    # ------------------------------------------------------------------ public API
    def generate(self, image: np.ndarray) -> list[dict[str, Any]]:
        """Every mask of an image, as the reference's records.

        Args:
            image: (H, W, 3) uint8 RGB.

        Returns:
            list of dicts with ``segmentation`` (per ``output_mode``), ``area`` (int),
            ``bbox`` (XYWH), ``predicted_iou``, ``point_coords`` ([[x, y]]),
            ``stability_score`` and ``crop_box`` (XYWH); order as in the reference. With
            reserve filters (``reserve_pred_iou_thresh``) also ``reserve`` (bool, True for a
            mask that passed only the reserve filters).

        Raises:
            ValueError: ``image`` is not an (H, W, 3) uint8 array.
        """
        return mask_data_to_records(self.generate_mask_data(image), self.config.output_mode,
                                    with_reserve=self.config.reserve_pred_iou_thresh is not None)

    @torch.inference_mode()
    def generate_mask_data(self, image: np.ndarray) -> MaskData:
        """The kept masks as :class:`MaskData` (RLE + aligned tensors), before record encoding."""
        check_rgb_image(image)
        cfg = self.config
        h, w = image.shape[:2]
        crop_boxes, layer_idxs = generate_crop_boxes((h, w), cfg.crop_n_layers, cfg.crop_overlap_ratio)
        parts = [self._process_crop(image, box, layer) for box, layer in zip(crop_boxes, layer_idxs)]
        data = MaskData.cat(parts)
        if len(crop_boxes) > 1 and len(data):
            # Prefer masks from smaller crops (reference: score = 1 / crop area).
            scores = 1.0 / box_area(data.crop_boxes_xyxy.float())
            if bool(data.reserve.any()):  # main masks before reserve ones (float64: 1 + 1/area)
                scores = scores.double() + (~data.reserve).double()
            keep = batched_nms(data.boxes_xyxy.to(scores.dtype), scores,
                               torch.zeros_like(scores, dtype=torch.int64), cfg.crop_nms_thresh)
            data = data.filter(keep)
        if cfg.min_mask_region_area > 0 and len(data):
            data = remove_small_regions_and_dedupe(
                data, cfg.min_mask_region_area, max(cfg.box_nms_thresh, cfg.crop_nms_thresh))
        data = data.to("cpu")
        if cfg.max_masks is not None and len(data) > cfg.max_masks:
            # Not in the reference: a per-image budget, the most object-like masks first.
            keep = rank_masks(data.rles, data.predicted_iou, [area_from_rle(r) for r in data.rles],
                              cfg.max_masks, cfg.nested_mask_penalty, data.reserve)
            data = data.filter(keep)
        if cfg.refine_crop_n_layers > 0 and len(data):
            data = refine_in_crops(self.model, image, data, cfg.refine_crop_n_layers,
                                   cfg.crop_overlap_ratio, self.compute_dtype,
                                   cfg.stability_score_offset).to("cpu")
        if (cfg.fill_holes or cfg.island_area_frac > 0) and len(data):
            data = clean_kept_masks(data, cfg.fill_holes, cfg.island_area_frac)
        return data

    # ------------------------------------------------------------------ steps
    def _process_crop(self, image: np.ndarray, crop_box: list[int], layer: int) -> MaskData:
        model = self.model
        x0, y0, x1, y1 = crop_box
        crop = np.ascontiguousarray(image[y0:y1, x0:x1])
        emb = model.encode_image(crop, self.compute_dtype)
        ch, cw = crop.shape[:2]
        # Shared per-crop work: first-block image projections, and the upscaling matrices of
        # the low-res rows/columns that reach the image (the rest is padding).
        no_mask = model.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)  # (1, C, 1, 1)
        ctx = self.grid_decoder.prepare(emb.embedding, model.dense_pe(emb),
                                        no_mask.expand_as(emb.embedding))
        full_low = 4 * emb.grid_hw[0]
        nh, nw = RegionUpscaler.needed_low_res(full_low, model.input_size, emb.input_hw, emb.original_hw)
        token_hw = (-(-nh // 4), -(-nw // 4))
        upscaler = RegionUpscaler((4 * token_hw[0], 4 * token_hw[1]), full_low, model.input_size,
                                  emb.input_hw, emb.original_hw, model.device)
        strips = edge_strips_for_crop(crop_box, image.shape[:2], upscaler, token_hw)
        points = self.point_grids[layer] * np.array([[cw, ch]])  # (N, 2) float64, crop pixels
        cfg = self.config
        ppb = cfg.points_per_batch
        parts: list[MaskData] = []
        for p, idx in enumerate(grid_passes(len(points), cfg.coarse_to_fine_stride)):
            pts = points[idx]
            if p > 0 and parts:  # fast preset: skip points that a small mask already covers
                found = MaskData.cat(parts)
                areas = np.array([area_from_rle(r) for r in found.rles])
                pts = pts[uncovered(pts, (x0, y0), found.rles, areas,
                                    cfg.coarse_cover_area_frac * ch * cw)]
            parts += [self._process_batch(emb, ctx, token_hw, upscaler, pts[i:i + ppb], crop_box,
                                          image.shape[:2], strips)
                      for i in range(0, len(pts), ppb)]
        data = MaskData.cat(parts)
        if len(data):
            # Reserve masks (AMGConfig.reserve_pred_iou_thresh) never suppress a main mask.
            # (float64, so that main scores keep every float32 difference after the offset.)
            scores = data.predicted_iou.double() + 2.0 * (~data.reserve).double() \
                if bool(data.reserve.any()) else data.predicted_iou
            keep = batched_nms(data.boxes_xyxy.to(scores.dtype), scores,
                               torch.zeros_like(data.predicted_iou, dtype=torch.int64),
                               self.config.box_nms_thresh)
            data = data.filter(keep)
        offset = torch.tensor([x0, y0, x0, y0], device=data.boxes_xyxy.device)
        data.boxes_xyxy = data.boxes_xyxy + offset
        data.points_xy = data.points_xy + torch.tensor([x0, y0], dtype=torch.float64,
                                                       device=data.points_xy.device)
        return data

    def _decode_survivors(self, emb: ImageEmbedding, ctx: FactoredContext, token_hw: tuple[int, int],
                          points_xy: torch.Tensor, upscaler: RegionUpscaler | None = None,
                          strips: list[EdgeStrip] | None = None
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Decode a batch of single-point prompts; keep multimask outputs passing the IoU filter.

        With ``strips`` (a crop inside the image), a mask with a pixel in a crop-edge strip is
        dropped from the logits of the strip's few token rows or columns alone: the reference
        drops it later anyway (box near a crop edge), whatever its stability score. Prompts
        left without a mask skip the whole-map logits.

        Args:
            emb: the crop's image embedding. ctx: its :meth:`FactoredGridDecoder.prepare` context.
            token_hw: image tokens to upscale (those under the image, not the padding).
            points_xy: (B, 2) float64, xy in crop pixels.
            upscaler: the crop's :class:`RegionUpscaler` (needed with ``strips``).
            strips: from :func:`edge_strips_for_crop`, or None.

        Returns:
            low-res logits (K, 4*th, 4*tw) float32 (the top-left part of the reference's
            256x256 map that reaches the image), predicted IoU (K,) float32, and the prompt
            index of each kept mask (K,) int64, in prompt-major then token order (reference).
        """
        model, cfg = self.model, self.config
        gd = self.grid_decoder
        n = points_xy.shape[0]
        labels = torch.ones(n, 1, dtype=torch.int64, device=model.device)
        pts = model.to_input_frame(points_xy[:, None, :], emb)
        sparse = model.prompt_encoder(pts, labels, None, None, emb.grid_hw)[0]
        lows, ious, idxs = [], [], []
        step = cfg.decoder_chunk_size or (4 if self.compute_dtype == torch.float32 else 8)
        for s in range(0, n, step):
            tokens, img_tokens = gd.run_transformer(ctx, sparse[s:s + step], FINAL_TOKENS)
            iou = gd.predict_iou(tokens)[:, MULTIMASK_TOKENS]  # (b, 3)
            iou_thresh = self._filter_thresholds()[0]
            keep = iou > iou_thresh if iou_thresh > 0 else torch.ones_like(iou, dtype=torch.bool)
            rows = keep.any(1).nonzero().flatten()
            if len(rows) == 0:
                continue
            k = keep[rows]
            tok, img = tokens[rows], img_tokens[rows]
            inputs = gd.mask_inputs(tok, img, MULTIMASK_TOKENS)  # shared by strips and maps
            if strips:
                k = k & ~self._near_crop_edge(tok, img, inputs, ctx, upscaler, strips, k)
                live = k.any(1).nonzero().flatten()
                if len(live) == 0:
                    continue
                if len(live) < len(rows):
                    rows, k, tok, img = rows[live], k[live], tok[live], img[live]
                    inputs = tuple(x[live] for x in inputs)
            low = gd.predict_mask_logits(tok, img, ctx.grid_hw, MULTIMASK_TOKENS, token_hw, ctx,
                                         weights=inputs[0], rows_w1=inputs[1])  # (r, 3, 4th, 4tw)
            lows.append(low[k])
            ious.append(iou[rows][k])
            idxs.append((rows[:, None] + s).expand(-1, 3)[k])
        if not lows:
            empty = torch.zeros(0, device=model.device)
            return empty.reshape(0, 4 * token_hw[0], 4 * token_hw[1]), empty, empty.long()
        return torch.cat(lows), torch.cat(ious), torch.cat(idxs)

    def _near_crop_edge(self, tokens: torch.Tensor, image_tokens, inputs: tuple,
                        ctx: FactoredContext, upscaler: RegionUpscaler, strips: list[EdgeStrip],
                        wanted: torch.Tensor) -> torch.Tensor:
        """(B, 3) bool: the multimask output has a pixel above the mask threshold in a
        crop-edge strip (so the reference drops it); from the strips' token windows only.

        ``inputs`` is ``FactoredGridDecoder.mask_inputs`` of the B prompts. ``wanted`` (B, 3)
        bool marks the masks that matter (the IoU survivors): a prompt whose wanted masks are
        all near an edge already is not decoded for the next strips (its other entries may
        then stay False)."""
        near = torch.zeros_like(wanted)
        todo = torch.arange(len(wanted), device=wanted.device)
        for s in strips:
            every = len(todo) == len(wanted)  # no copies then
            tok, img = (tokens, image_tokens) if every else (tokens[todo], image_tokens[todo])
            weights, rows_w1 = inputs if every else (inputs[0][todo], inputs[1][todo])
            low = self.grid_decoder.predict_mask_logits(
                tok, img, ctx.grid_hw, MULTIMASK_TOKENS, ctx=ctx, token_box=s.token_box,
                weights=weights, rows_w1=rows_w1)  # (b, 3, h, w)
            near[todo] |= upscaler.strip_any_above(
                low.flatten(0, 1), s.first, s.axis, s.start, s.stop,
                self.model.mask_threshold).view(len(todo), -1)
            todo = (wanted & ~near).any(1).nonzero().flatten()
            if len(todo) == 0:
                break
        return near

    def _process_batch(self, emb: ImageEmbedding, ctx: FactoredContext, token_hw: tuple[int, int],
                       upscaler: RegionUpscaler, points: np.ndarray, crop_box: list[int],
                       orig_hw: tuple[int, int], strips: list[EdgeStrip] | None = None) -> MaskData:
        """One batch of ``points_per_batch`` prompts -> its kept masks (RLE in the full image).

        Each IoU survivor is upscaled only inside the region its logits can reach
        (:class:`RegionUpscaler`), so no full-size mask is ever built.
        """
        model, cfg = self.model, self.config
        dev = model.device
        points_xy = torch.from_numpy(points).to(dev)
        low, iou, idx = self._decode_survivors(emb, ctx, token_hw, points_xy, upscaler, strips)
        oh, ow = orig_hw
        cx0, cy0 = crop_box[0], crop_box[1]
        thr, off = model.mask_threshold, cfg.stability_score_offset
        s_thr = self._filter_thresholds()[1]
        rles, boxes, sel, stabs = [], [], [], []
        for i in range(len(low)):
            up = upscaler.upscale(low[i], thr, off)
            if s_thr > 0 and not up.stability >= s_thr:  # nan fails, as in the reference
                continue
            box = region_box_xyxy(up.mask, up.y0, up.x0)  # crop frame, XYXY inclusive
            if bool(is_box_near_crop_edge(box[None], crop_box, [0, 0, ow, oh])[0]):
                continue
            rles.append(region_to_rle(up.mask, up.y0 + cy0, up.x0 + cx0, oh, ow))
            boxes.append(box)
            sel.append(i)
            stabs.append(up.stability)
        if not rles:
            return MaskData().to(dev)
        sel_t = torch.tensor(sel, dtype=torch.int64, device=dev)
        crop_t = torch.tensor([crop_box], dtype=torch.int64, device=dev).expand(len(rles), 4)
        kept_iou = iou[sel_t]
        stab_t = torch.tensor(stabs, dtype=torch.float32, device=dev)
        reserve = torch.zeros(len(rles), dtype=torch.bool, device=dev)
        if cfg.reserve_pred_iou_thresh is not None:  # passed only the looser reserve filters
            main = torch.ones_like(reserve)
            if cfg.pred_iou_thresh > 0:
                main &= kept_iou > cfg.pred_iou_thresh
            if cfg.stability_score_thresh > 0:
                main &= stab_t >= cfg.stability_score_thresh
            reserve = ~main
        return MaskData(rles=rles, boxes_xyxy=torch.stack(boxes), predicted_iou=kept_iou,
                        stability_score=stab_t, points_xy=points_xy[idx[sel_t]],
                        crop_boxes_xyxy=crop_t.clone(), reserve=reserve)

    def _filter_thresholds(self) -> tuple[float, float]:
        """(predicted-IoU, stability-score) thresholds a mask must pass to be kept at all:
        the main filters, or the looser of main and reserve filters when a reserve is set."""
        cfg = self.config
        if cfg.reserve_pred_iou_thresh is None:
            return cfg.pred_iou_thresh, cfg.stability_score_thresh
        return (min(cfg.pred_iou_thresh, cfg.reserve_pred_iou_thresh),
                min(cfg.stability_score_thresh, cfg.reserve_stability_score_thresh))


def resolve_compute_dtype(name: str, device: torch.device) -> torch.dtype:
    """``AMGConfig.compute_dtype`` -> the torch dtype used on ``device``: ``"float32"`` and
    ``"bfloat16"`` as named; ``"auto"`` is bfloat16 where :func:`has_native_bfloat16`, else
    float32 (bfloat16 emulated in software is slower than float32).

    Raises:
        ValueError: an unknown name.
    """
    if name == "auto":
        return torch.bfloat16 if has_native_bfloat16(device) else torch.float32
    if name not in ("float32", "bfloat16"):
        raise ValueError(f"compute_dtype must be float32, bfloat16 or auto, got {name!r}")
    return getattr(torch, name)


def remove_small_regions_and_dedupe(data: MaskData, min_area: int, nms_thresh: float) -> MaskData:
    """Remove islands and fill holes below ``min_area`` pixels in every mask, then box NMS that
    prefers masks the clean-up did not change (reference ``postprocess_small_regions``).

    Changed masks that survive get their RLE and box recomputed. Runs on the CPU (OpenCV),
    on each mask's box plus a one-pixel ring (:func:`amg.regions.clean_small_regions`, exact).
    """
    rles, boxes, unchanged = [], [], []
    for rle in data.rles:
        h, w = rle["size"]
        window, y0, x0, changed = clean_small_regions(rle_to_mask(rle), min_area)
        window_t = torch.from_numpy(window)
        # Encode changed masks now so that no full-size mask stack is ever held.
        rles.append(region_to_rle(window_t, y0, x0, h, w) if changed else rle)
        boxes.append(region_box_xyxy(window_t, y0, x0))
        unchanged.append(float(not changed))
    boxes_t = torch.stack(boxes)
    scores = torch.tensor(unchanged)
    keep = batched_nms(boxes_t.float(), scores, torch.zeros(len(scores), dtype=torch.int64), nms_thresh)
    data = data.to("cpu")
    data.rles, data.boxes_xyxy = rles, boxes_t
    return data.filter(keep)
