"""``MaskGenerator``: automatic "everything" mask generation (SAM paper §7.1, Appendix A).

For each crop box (the whole image, then crop layers): encode the crop once; prompt the mask
decoder with a grid of single foreground points in batches; keep masks whose predicted IoU and
stability score pass their thresholds and whose box does not touch an inner crop edge; box NMS
inside the crop; then box NMS across crops preferring smaller crops; optionally remove small
islands and holes; optionally (not in the reference) keep only the ``max_masks`` best
(:mod:`amg.ranking`); return the reference's mask records.

The mask decoder is reached only through the model family's point decoder
(:mod:`sam_model.point_decoder`): per crop ``model.point_decoder(embedding)``, per batch of grid
points ``decode(points, iou_thresh, reject)`` -> the IoU survivors' low-res logits. What follows
is exact (equal to the reference up to float rounding):
- only the IoU survivors are upscaled, each only inside the region its logits can reach
  (:class:`amg.upscale.RegionUpscaler`, from the family's ``low_res_to_image`` matrices); the
  stability score, box, edge filter and RLE come from that region, so no step holds a
  full-size mask, let alone a batch of them;
- in crops inside the image, a mask with a pixel in a crop-edge strip is dropped from the
  strip's few image tokens (a :class:`sam_model.point_decoder.RejectWindow`): the reference drops
  it later anyway (box near a crop edge), whatever its stability score.

Stages carry ``torch.profiler.record_function`` labels (``amg.image_encoder``,
``amg.mask_decoder``, ``amg.upscale_and_rle``, ``amg.box_nms``, ``amg.postprocess``), so a
profiler run (``tools/profile_stages.py``) splits the time by stage.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.profiler import record_function
from torchvision.ops import batched_nms, box_area

from sam_model import PointDecoder, RejectWindow, check_rgb_image, resolve_compute_dtype

from .config import AMGConfig, ConfigError, check_names
from .crops import crop_edge_strips, generate_crop_boxes, is_box_near_crop_edge
from .grid import build_all_layer_point_grids
from .mask_data import MaskData
from .records import mask_data_to_records
from .ranking import rank_masks
from .refine import clean_kept_masks, refine_in_crops
from .regions import clean_small_regions
from .rle import area_from_rle, rle_to_mask
from .upscale import RegionUpscaler, region_box_xyxy, region_to_rle

# Crop-edge strips are tested first only while their tokens are at most this share of the
# crop's tokens (always for crops of a few hundred pixels or more).
EDGE_STRIP_MAX_TOKEN_FRAC = 0.35

#: AMGConfig fields that are options of the family's ``point_decoder`` (field: option name),
#: passed only when set (not ``None``): the multimask choice and the mask-to-mask pass stay
#: inside the family.
DECODER_OPTIONS = {"decoder_chunk_size": "chunk_size", "multimask_output": "multimask_output",
                   "use_m2m": "use_m2m", "hq_token_only": "hq_token_only"}


def decoder_options(cfg: AMGConfig, model: Any) -> dict[str, Any]:
    """The keyword options of ``model.point_decoder`` that ``cfg`` sets (:data:`DECODER_OPTIONS`).

    Raises:
        ConfigError: the model's point decoder has no such option (names the field and the
            model), e.g. ``use_m2m`` with a SAM v1 model.
    """
    options = {option: getattr(cfg, name) for name, option in DECODER_OPTIONS.items()
               if getattr(cfg, name) is not None}
    try:
        model.check_decoder_options(options)
    except ValueError as exc:  # sam_model.DecoderOptionError
        raise ConfigError(str(exc)) from exc
    return options


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

    def reject_window(self, upscaler: RegionUpscaler, threshold: float) -> RejectWindow:
        """The strip as a :class:`RejectWindow`: drop a mask with an upscaled logit above
        ``threshold`` in the strip."""
        def reject(low: torch.Tensor) -> torch.Tensor:
            return upscaler.strip_any_above(low, self.first, self.axis, self.start, self.stop,
                                            threshold)
        return RejectWindow(self.token_box, reject)


def nms_scores(primary: torch.Tensor, reserve: torch.Tensor, boost: float) -> torch.Tensor:
    """Box-NMS scores that rank every main mask above every reserve mask
    (``AMGConfig.reserve_pred_iou_thresh``), so that a reserve mask never suppresses a main one:
    ``primary + boost`` for main masks (float64, so that the scores keep every float32
    difference after the offset); ``primary`` unchanged when no mask is a reserve.

    Args:
        primary: (K,) float scores (predicted IoU, or 1 / crop area).
        reserve: (K,) bool. boost: larger than the spread of ``primary``.
    """
    if not bool(reserve.any()):
        return primary
    return primary.double() + boost * (~reserve).double()


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
    """Automatic mask generator with the reference ``SamAutomaticMaskGenerator`` parameters
    (and ``SAM2AutomaticMaskGenerator``'s SAM 2 options).

    Args:
        model: a model of any family (e.g. ``load_model("mobile_sam")``): ``encode_image``,
            ``point_decoder``, ``low_res_to_image``, ``mask_threshold``, ``device``, ``family``
            and ``name``; its device is used.
        config: an :class:`AMGConfig`; keyword parameters override its fields. Fields left
            ``None`` take the model family's defaults (:meth:`AMGConfig.for_family`): a SAM 2
            model gets ``SAM2AutomaticMaskGenerator``'s. ``self.config`` holds the result.
        batch_threads: on a CPU, how many batches of ``points_per_batch`` prompts are decoded
            at once, each on its own thread with one torch intra-op thread. ``None``: torch's
            intra-op thread count at each :meth:`generate` call (``torch.get_num_threads()``)
            on a CPU, 1 on other devices. The image encoder keeps torch's intra-op threads.
            Whole batches per thread need no fork-join per operator, so a thread that another
            process holds off its core delays only its own batch; the records are those of a
            run on one intra-op thread, byte for byte (each batch's arithmetic is the
            one-thread arithmetic, in the same order). Against ``batch_threads=1`` with more
            intra-op threads they can differ in float rounding where the math library splits
            a matrix product's inner dimension across threads (on an AVX-512 host, the token
            MLP's 2048-wide second layer).
        **params: any :class:`AMGConfig` field, by the reference's names.

    Raises:
        ConfigError: an unknown parameter name, an invalid value, or an option the model's
            point decoder does not have (:func:`decoder_options`).
        ValueError: ``batch_threads`` is not an integer >= 1.
    """

    def __init__(self, model: Any, config: AMGConfig | None = None, *,
                 batch_threads: int | None = None, **params: Any) -> None:
        check_names(params)
        if batch_threads is not None and (isinstance(batch_threads, bool)
                                          or not isinstance(batch_threads, int) or batch_threads < 1):
            raise ValueError(f"batch_threads must be an integer >= 1 or None, got {batch_threads!r}")
        self.batch_threads = batch_threads
        cfg = (config or AMGConfig()).replace(**params) if params else (config or AMGConfig())
        self.config = cfg = cfg.for_family(model.family, model.mask_threshold)
        self.decoder_options = decoder_options(cfg, model)
        # input_size: the same weights run at another model-input side (not in the reference).
        self.model = model if cfg.input_size is None else model.with_input_size(int(cfg.input_size))
        self.compute_dtype = resolve_compute_dtype(cfg.compute_dtype, model.device)
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
            with record_function("amg.box_nms"):
                scores = nms_scores(1.0 / box_area(data.crop_boxes_xyxy.float()), data.reserve, 1.0)
                keep = batched_nms(data.boxes_xyxy.to(scores.dtype), scores,
                                   torch.zeros_like(scores, dtype=torch.int64), cfg.crop_nms_thresh)
            data = data.filter(keep)
        with record_function("amg.postprocess"):
            return self._postprocess(image, data)

    def _postprocess(self, image: np.ndarray, data: MaskData) -> MaskData:
        """The steps after box NMS: small-region clean-up (reference), then the levers not in
        the reference (budget ranking, zoomed refinement, hole filling, minor islands)."""
        cfg = self.config
        if cfg.min_mask_region_area > 0 and len(data):
            data = remove_small_regions_and_dedupe(
                data, cfg.min_mask_region_area, max(cfg.box_nms_thresh, cfg.crop_nms_thresh))
        data = data.to("cpu")
        if cfg.max_masks is not None and len(data) > cfg.max_masks:
            # Not in the reference: a per-image budget, the most object-like masks first.
            keep = rank_masks(data.rles, data.predicted_iou, [area_from_rle(r) for r in data.rles],
                              cfg.max_masks, cfg.nested_mask_penalty, data.reserve,
                              cfg.duplicate_mask_iou)
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
        """Every kept mask of one crop box (``[x0, y0, x1, y1]`` image pixels) of crop layer
        ``layer``: encode the crop, decode its point grid in batches, box NMS in the crop;
        boxes and points returned in image pixels."""
        model, cfg = self.model, self.config
        x0, y0, x1, y1 = crop_box
        crop = np.ascontiguousarray(image[y0:y1, x0:x1])
        with record_function("amg.image_encoder"):
            emb = model.encode_image(crop, self.compute_dtype)
        ch, cw = crop.shape[:2]
        # Shared per-crop work: the decoder's, and the upscaling matrices of the low-res rows
        # and columns that reach the image (the rest is padding).
        ay, ax = model.low_res_to_image(emb)
        with record_function("amg.mask_decoder"):
            decoder = model.point_decoder(emb, self.compute_dtype, RegionUpscaler.needed_low_res(ay, ax),
                                          **self.decoder_options)
        upscaler = RegionUpscaler(decoder.low_res_hw, ay, ax, model.device)
        token_hw = (decoder.low_res_hw[0] // 4, decoder.low_res_hw[1] // 4)
        reject = [s.reject_window(upscaler, cfg.mask_threshold)
                  for s in edge_strips_for_crop(crop_box, image.shape[:2], upscaler, token_hw)]
        points = self.point_grids[layer] * np.array([[cw, ch]])  # (N, 2) float64, crop pixels
        ppb = cfg.points_per_batch
        data = MaskData.cat(self._map_batches(
            lambda i: self._process_batch(decoder, upscaler, points[i:i + ppb], crop_box,
                                          image.shape[:2], reject),
            range(0, len(points), ppb)))
        if len(data):
            # Reserve masks (AMGConfig.reserve_pred_iou_thresh) never suppress a main mask.
            with record_function("amg.box_nms"):
                scores = nms_scores(data.predicted_iou, data.reserve, 2.0)
                keep = batched_nms(data.boxes_xyxy.to(scores.dtype), scores,
                                   torch.zeros_like(data.predicted_iou, dtype=torch.int64),
                                   cfg.box_nms_thresh)
            data = data.filter(keep)
        offset = torch.tensor([x0, y0, x0, y0], device=data.boxes_xyxy.device)
        data.boxes_xyxy = data.boxes_xyxy + offset
        data.points_xy = data.points_xy + torch.tensor([x0, y0], dtype=torch.float64,
                                                       device=data.points_xy.device)
        return data

    def _map_batches(self, fn, starts) -> list[MaskData]:
        """``[fn(s) for s in starts]``, on up to ``batch_threads`` threads (see the class) of
        one torch intra-op thread each when that is more than one; results in order."""
        starts = list(starts)
        threads = self.batch_threads
        if threads is None:
            threads = torch.get_num_threads() if self.model.device.type == "cpu" else 1
        n = min(threads, len(starts))
        if n <= 1:
            return [fn(s) for s in starts]

        def run(start: int) -> MaskData:
            with torch.inference_mode():  # grad mode is per thread
                return fn(start)

        caller = torch.get_num_threads()
        try:
            with ThreadPoolExecutor(n, thread_name_prefix="amg-batch",
                                    initializer=torch.set_num_threads, initargs=(1,)) as pool:
                return list(pool.map(run, starts))
        finally:
            # torch.set_num_threads in a worker also sets the count new threads start with.
            torch.set_num_threads(caller)

    def _process_batch(self, decoder: PointDecoder, upscaler: RegionUpscaler, points: np.ndarray,
                       crop_box: list[int], orig_hw: tuple[int, int],
                       reject: list[RejectWindow]) -> MaskData:
        """One batch of ``points_per_batch`` prompts -> its kept masks (RLE in the full image).

        Args:
            decoder: the crop's point decoder. upscaler: the crop's :class:`RegionUpscaler`.
            points: (B, 2) float64, xy in crop pixels. crop_box: ``[x0, y0, x1, y1]`` image
                pixels. orig_hw: (H, W) of the image. reject: the crop-edge strips' windows.

        Each IoU survivor is upscaled only inside the region its logits can reach
        (:class:`RegionUpscaler`), so no full-size mask is ever built.
        """
        model, cfg = self.model, self.config
        dev = model.device
        points_xy = torch.from_numpy(points).to(dev)
        with record_function("amg.mask_decoder"):
            decoded = decoder.decode(points_xy, self._filter_thresholds()[0], reject)
        low, iou, idx = decoded.low_res_logits, decoded.predicted_iou, decoded.prompt_index
        oh, ow = orig_hw
        cx0, cy0 = crop_box[0], crop_box[1]
        thr, off = cfg.mask_threshold, cfg.stability_score_offset
        s_thr = self._filter_thresholds()[1]
        rles, boxes, sel, stabs = [], [], [], []
        with record_function("amg.upscale_and_rle"):
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
