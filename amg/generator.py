"""``MaskGenerator``: automatic "everything" mask generation (SAM paper §7.1, Appendix A).

For each crop box (the whole image, then crop layers): encode the crop once; prompt the mask
decoder with a grid of single foreground points in batches; keep masks whose predicted IoU and
stability score pass their thresholds and whose box does not touch an inner crop edge; box NMS
inside the crop; then box NMS across crops preferring smaller crops; optionally remove small
islands and holes; return the reference's mask records.

Differences from the reference are in *how*, not *what*:
- the predicted-IoU filter runs before any mask is upscaled, and only the prompts with a
  surviving mask go through the output upscaling (the IoU head never sees the masks, so this is
  exact);
- the image embedding is broadcast over the prompts, not repeated, so the first two-way block's
  image-side projections are computed once per batch (see ``two_way_transformer``);
- surviving masks are upscaled to full size in small chunks, so no step holds a whole batch of
  full-size masks; only RLE leaves the loop.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torchvision.ops import batched_nms, box_area

from sam_model import ImageEmbedding, Sam
from sam_model.sam import check_rgb_image

from .config import AMGConfig, check_names
from .crops import generate_crop_boxes, is_box_near_crop_edge, uncrop_masks
from .grid import build_all_layer_point_grids
from .mask_data import MaskData
from .masks import masks_to_boxes_xyxy, stability_score
from .records import mask_data_to_records
from .regions import remove_small_regions
from .rle import masks_to_rle, rle_to_mask

MULTIMASK_TOKENS = [1, 2, 3]
# Full-size float32 logits upscaled at once: bounded by pixels, not by the batch size.
UPSCALE_PIXEL_BUDGET = 32 * 1024 * 1024


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
        self.model = model
        self.config = (config or AMGConfig()).replace(**params) if params else (config or AMGConfig())
        cfg = self.config
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
            ``stability_score`` and ``crop_box`` (XYWH); order as in the reference.

        Raises:
            ValueError: ``image`` is not an (H, W, 3) uint8 array.
        """
        return mask_data_to_records(self.generate_mask_data(image), self.config.output_mode)

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
            keep = batched_nms(data.boxes_xyxy.float(), scores,
                               torch.zeros_like(scores, dtype=torch.int64), cfg.crop_nms_thresh)
            data = data.filter(keep)
        if cfg.min_mask_region_area > 0 and len(data):
            data = remove_small_regions_and_dedupe(
                data, cfg.min_mask_region_area, max(cfg.box_nms_thresh, cfg.crop_nms_thresh))
        return data.to("cpu")

    # ------------------------------------------------------------------ steps
    def _process_crop(self, image: np.ndarray, crop_box: list[int], layer: int) -> MaskData:
        x0, y0, x1, y1 = crop_box
        crop = np.ascontiguousarray(image[y0:y1, x0:x1])
        emb = self.model.encode_image(crop)
        ch, cw = crop.shape[:2]
        points = self.point_grids[layer] * np.array([[cw, ch]])  # (N, 2) float64, crop pixels
        ppb = self.config.points_per_batch
        parts = [self._process_batch(emb, points[i:i + ppb], crop_box, image.shape[:2])
                 for i in range(0, len(points), ppb)]
        data = MaskData.cat(parts)
        if len(data):
            keep = batched_nms(data.boxes_xyxy.float(), data.predicted_iou,
                               torch.zeros_like(data.predicted_iou, dtype=torch.int64),
                               self.config.box_nms_thresh)
            data = data.filter(keep)
        offset = torch.tensor([x0, y0, x0, y0], device=data.boxes_xyxy.device)
        data.boxes_xyxy = data.boxes_xyxy + offset
        data.points_xy = data.points_xy + torch.tensor([x0, y0], dtype=torch.float64,
                                                       device=data.points_xy.device)
        return data

    def _decode_survivors(self, emb: ImageEmbedding, points_xy: torch.Tensor
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Decode a batch of single-point prompts; keep multimask outputs passing the IoU filter.

        Returns:
            low-res logits (K, 256, 256) float32, predicted IoU (K,) float32, and the prompt
            index of each kept mask (K,) int64, in prompt-major then token order (reference).
        """
        model, cfg = self.model, self.config
        dec = model.mask_decoder
        n = points_xy.shape[0]
        labels = torch.ones(n, 1, dtype=torch.int64, device=model.device)
        pts = model.to_input_frame(points_xy[:, None, :], emb)
        sparse, dense = model.prompt_encoder(pts, labels, None, None, emb.grid_hw)
        pe = model.dense_pe(emb)
        lows, ious, idxs = [], [], []
        step = cfg.decoder_chunk_size
        for s in range(0, n, step):
            tokens, img_tokens = dec.run_transformer(emb.embedding, pe, sparse[s:s + step], dense)
            iou = dec.predict_iou(tokens)[:, MULTIMASK_TOKENS]  # (b, 3)
            keep = iou > cfg.pred_iou_thresh if cfg.pred_iou_thresh > 0 else torch.ones_like(iou, dtype=torch.bool)
            rows = keep.any(1).nonzero().flatten()
            if len(rows) == 0:
                continue
            low = dec.predict_mask_logits(tokens[rows], img_tokens[rows], emb.grid_hw,
                                          MULTIMASK_TOKENS)  # (r, 3, 256, 256)
            k = keep[rows]
            lows.append(low[k])
            ious.append(iou[rows][k])
            idxs.append((rows[:, None] + s).expand(-1, 3)[k])
        if not lows:
            empty = torch.zeros(0, device=model.device)
            return empty.reshape(0, 256, 256), empty, empty.long()
        return torch.cat(lows), torch.cat(ious), torch.cat(idxs)

    def _process_batch(self, emb: ImageEmbedding, points: np.ndarray, crop_box: list[int],
                       orig_hw: tuple[int, int]) -> MaskData:
        model, cfg = self.model, self.config
        dev = model.device
        points_xy = torch.from_numpy(points).to(dev)
        low, iou, idx = self._decode_survivors(emb, points_xy)
        oh, ow = orig_hw
        ch, cw = emb.original_hw
        chunk = max(1, UPSCALE_PIXEL_BUDGET // (ch * cw))
        rles, boxes, ious, stabs, pts = [], [], [], [], []
        for s in range(0, len(low), chunk):
            logits = model.upscale_masks(low[s:s + chunk, None], emb)[:, 0]  # (c, ch, cw)
            stab = stability_score(logits, model.mask_threshold, cfg.stability_score_offset)
            keep = stab >= cfg.stability_score_thresh if cfg.stability_score_thresh > 0 \
                else torch.ones_like(stab, dtype=torch.bool)
            masks = logits[keep] > model.mask_threshold
            del logits
            box = masks_to_boxes_xyxy(masks)
            inner = ~is_box_near_crop_edge(box, crop_box, [0, 0, ow, oh])
            masks, box = masks[inner], box[inner]
            rles.extend(masks_to_rle(uncrop_masks(masks, crop_box, oh, ow)))
            boxes.append(box)
            sel = keep.nonzero().flatten()[inner]
            ious.append(iou[s:s + chunk][sel])
            stabs.append(stab[sel])
            pts.append(points_xy[idx[s:s + chunk][sel]])
        if not rles:
            return MaskData().to(dev)
        crop_t = torch.tensor([crop_box], dtype=torch.int64, device=dev).expand(len(rles), 4)
        return MaskData(rles=rles, boxes_xyxy=torch.cat(boxes), predicted_iou=torch.cat(ious),
                        stability_score=torch.cat(stabs), points_xy=torch.cat(pts),
                        crop_boxes_xyxy=crop_t.clone())


def remove_small_regions_and_dedupe(data: MaskData, min_area: int, nms_thresh: float) -> MaskData:
    """Remove islands and fill holes below ``min_area`` pixels in every mask, then box NMS that
    prefers masks the clean-up did not change (reference ``postprocess_small_regions``).

    Changed masks that survive get their RLE and box recomputed. Runs on the CPU (OpenCV).
    """
    rles, boxes, unchanged = [], [], []
    for rle in data.rles:
        mask, changed_holes = remove_small_regions(rle_to_mask(rle), min_area, "holes")
        mask, changed_islands = remove_small_regions(mask, min_area, "islands")
        changed = changed_holes or changed_islands
        mask_t = torch.from_numpy(mask)[None]
        # Encode changed masks now so that no full-size mask stack is ever held.
        rles.append(masks_to_rle(mask_t)[0] if changed else rle)
        boxes.append(masks_to_boxes_xyxy(mask_t)[0])
        unchanged.append(float(not changed))
    boxes_t = torch.stack(boxes)
    scores = torch.tensor(unchanged)
    keep = batched_nms(boxes_t.float(), scores, torch.zeros(len(scores), dtype=torch.int64), nms_thresh)
    data = data.to("cpu")
    data.rles, data.boxes_xyxy = rles, boxes_t
    return data.filter(keep)
