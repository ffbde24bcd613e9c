"""Straightforward point-grid mask generators for parity tests (test helpers, not tests).

Two drivers of the SAM automatic-mask-generator steps (Kirillov et al., 2023, §B "Automatic
mask generation"; the reference ``SamAutomaticMaskGenerator`` without crops): a regular grid of
single foreground points, all multimask outputs, predicted-IoU filter, stability score
(logits > threshold +- offset), binary masks at the mask threshold, boxes of the masks, box NMS
with the predicted IoU as score.

- :func:`efficient_sam_oracle_grid_masks` drives the official EfficientSAM model (the oracle in
  ``../shared/oracles``) through its own ``get_image_embeddings`` and ``predict_masks`` with
  the official post-processing (bicubic resize of the low-res logits to the image size, inside
  ``predict_masks``) -- what EfficientSAM's "segment everything" example does, with the SAM
  generator's filters.
- :func:`seam_grid_masks` drives any of our models through the decoder seam only
  (``encode_image``, ``point_decoder(...).decode``, ``low_res_to_image``,
  ``mask_threshold``), as the generator does.

Each is split into its candidates (every output that passes the predicted-IoU and stability
filters, as :class:`GridMask` records in prompt-major, output order) and :func:`box_nms` over
them, so one decoding pass can be compared at several NMS thresholds; the ``*_grid_masks``
functions run both steps. Compare two results mask for mask with :func:`match_fractions`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torchvision.ops import batched_nms


@dataclass(frozen=True)
class GridParams:
    """The SAM generator's parameters used by these drivers (reference defaults).

    Attributes:
        points_per_side: grid points along each side; point (i, j) at ((j + 0.5) / n * W,
            (i + 0.5) / n * H), row-major with y the slow index.
        points_per_batch: prompts per decoder call.
        pred_iou_thresh: keep outputs with predicted IoU > this (<= 0 keeps all).
        stability_score_thresh: keep masks with stability score >= this.
        stability_score_offset: the +- logit offset of the stability score.
        box_nms_thresh: box IoU above which the lower-scored mask is suppressed.
        mask_threshold: logit threshold of the binary mask.
    """

    points_per_side: int = 32
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    box_nms_thresh: float = 0.7
    mask_threshold: float = 0.0


@dataclass
class GridMask:
    """One generated mask.

    Attributes:
        segmentation: (H, W) bool.
        bbox_xywh: [x, y, w, h] of the mask's inclusive-max XYXY box, w = x_max - x_min
            (reference ``box_xyxy_to_xywh`` of ``batched_mask_to_box``).
        predicted_iou: float. stability_score: float. point_xy: (x, y) the prompt, pixels.
    """

    segmentation: np.ndarray
    bbox_xywh: list[float]
    predicted_iou: float
    stability_score: float
    point_xy: tuple[float, float]


def grid_points(points_per_side: int, hw: tuple[int, int]) -> np.ndarray:
    """(n*n, 2) float64 xy pixels of the reference point grid for an (H, W) image."""
    n = points_per_side
    offset = 0.5 / n
    side = np.linspace(offset, 1 - offset, n)
    xs, ys = np.meshgrid(side, side)  # y the slow index
    return np.stack([xs.ravel() * hw[1], ys.ravel() * hw[0]], -1)


def stability_score(logits: torch.Tensor, threshold: float, offset: float) -> torch.Tensor:
    """(K, H, W) logits -> (K,) float32: |logits > t + o| / |logits > t - o| (reference
    ``calculate_stability_score``)."""
    inter = (logits > threshold + offset).sum((-1, -2), dtype=torch.int32)
    union = (logits > threshold - offset).sum((-1, -2), dtype=torch.int32)
    return inter / union


def mask_boxes_xyxy(masks: torch.Tensor) -> torch.Tensor:
    """(K, H, W) bool -> (K, 4) int64 XYXY with inclusive max (x_max = last column with a
    pixel); empty masks give [0, 0, 0, 0] (reference ``batched_mask_to_box``)."""
    k, h, w = masks.shape
    boxes = torch.zeros(k, 4, dtype=torch.int64)
    rows, cols = masks.any(2), masks.any(1)
    for i in range(k):
        ys, xs = torch.nonzero(rows[i])[:, 0], torch.nonzero(cols[i])[:, 0]
        if len(ys):
            boxes[i] = torch.stack([xs.min(), ys.min(), xs.max(), ys.max()])
    return boxes


def _filter_and_collect(logits: torch.Tensor, iou: torch.Tensor, points: np.ndarray,
                        params: GridParams, out: list[GridMask]) -> None:
    """Stability filter, binarise, boxes; appends :class:`GridMask` records to ``out``."""
    stab = stability_score(logits, params.mask_threshold, params.stability_score_offset)
    keep = stab >= params.stability_score_thresh
    masks = logits[keep] > params.mask_threshold
    boxes = mask_boxes_xyxy(masks)
    for m, b, q, s, p in zip(masks, boxes, iou[keep], stab[keep], points[keep.numpy()]):
        x0, y0, x1, y1 = b.tolist()
        out.append(GridMask(m.numpy(), [x0, y0, x1 - x0, y1 - y0], float(q), float(s),
                            (float(p[0]), float(p[1]))))


def box_nms(candidates: list[GridMask], box_nms_thresh: float) -> list[GridMask]:
    """Box NMS (``torchvision.ops.batched_nms``, one category) over the masks' XYXY boxes with
    the predicted IoU as score; the kept records in descending score order."""
    if not candidates:
        return []
    boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in
                          (c.bbox_xywh for c in candidates)], dtype=torch.float32)
    scores = torch.tensor([c.predicted_iou for c in candidates])
    keep = batched_nms(boxes, scores, torch.zeros(len(candidates)), box_nms_thresh)
    return [candidates[i] for i in keep.tolist()]


def efficient_sam_oracle_grid_masks(oracle, image: np.ndarray, params: GridParams,
                                    embedding: torch.Tensor | None = None) -> list[GridMask]:
    """The SAM generator's steps over the official EfficientSAM model: the candidates of
    :func:`efficient_sam_oracle_grid_candidates`, then :func:`box_nms`."""
    return box_nms(efficient_sam_oracle_grid_candidates(oracle, image, params, embedding),
                   params.box_nms_thresh)


@torch.inference_mode()
def efficient_sam_oracle_grid_candidates(oracle, image: np.ndarray, params: GridParams,
                                         embedding: torch.Tensor | None = None) -> list[GridMask]:
    """Grid prompts through the official EfficientSAM model, IoU and stability filters.

    Args:
        oracle: ``efficient_sam.efficient_sam.build_efficient_sam(...)`` model, eval mode.
        image: (H, W, 3) uint8 RGB.
        params: generator parameters.
        embedding: the oracle's ``get_image_embeddings`` of ``image`` (1, 256, 64, 64), to
            reuse one already computed; computed here when None.

    Returns:
        the outputs that pass both filters, prompt-major then output order.
    """
    from torchvision.transforms.functional import to_tensor
    h, w = image.shape[:2]
    emb = embedding if embedding is not None else \
        oracle.get_image_embeddings(to_tensor(np.array(image))[None])
    points = grid_points(params.points_per_side, (h, w))
    found: list[GridMask] = []
    for start in range(0, len(points), params.points_per_batch):
        pts = points[start:start + params.points_per_batch]
        b = len(pts)
        masks, iou = oracle.predict_masks(
            emb, torch.as_tensor(pts).reshape(1, b, 1, 2), torch.ones(1, b, 1),
            multimask_output=True, input_h=h, input_w=w, output_h=h, output_w=w)
        m = masks.shape[2]
        logits = masks.reshape(b * m, h, w)
        iou = iou.reshape(b * m)
        pts_rep = np.repeat(pts, m, axis=0)
        if params.pred_iou_thresh > 0:
            keep = iou > params.pred_iou_thresh
            logits, iou, pts_rep = logits[keep], iou[keep], pts_rep[keep.numpy()]
        _filter_and_collect(logits, iou, pts_rep, params, found)
    return found


def seam_grid_masks(model, image: np.ndarray, params: GridParams, embedding=None) -> list[GridMask]:
    """The same steps over one of our models: :func:`seam_grid_candidates`, then :func:`box_nms`."""
    return box_nms(seam_grid_candidates(model, image, params, embedding), params.box_nms_thresh)


@torch.inference_mode()
def seam_grid_candidates(model, image: np.ndarray, params: GridParams, embedding=None
                         ) -> list[GridMask]:
    """Grid prompts through one of our models, through the decoder seam only; IoU and
    stability filters.

    The image-size logits of each kept output are ``ay @ low_res @ ax.T`` with the model's
    ``low_res_to_image`` matrices (its own post-processing). ``embedding``: the model's
    ``encode_image(image)`` to reuse, computed here when None.
    """
    h, w = image.shape[:2]
    emb = embedding if embedding is not None else model.encode_image(image)
    decoder = model.point_decoder(emb, plain=True)
    ay, ax = (torch.as_tensor(a, dtype=torch.float32) for a in model.low_res_to_image(emb))
    points = grid_points(params.points_per_side, (h, w))
    assert params.mask_threshold == model.mask_threshold
    found: list[GridMask] = []
    for start in range(0, len(points), params.points_per_batch):
        pts = points[start:start + params.points_per_batch]
        out = decoder.decode(torch.as_tensor(pts), params.pred_iou_thresh)
        n_low = ay.shape[1], ax.shape[1]
        low = out.low_res_logits[:, :n_low[0], :n_low[1]]
        logits = ay @ low @ ax.T
        _filter_and_collect(logits, out.predicted_iou, pts[out.prompt_index.numpy()], params, found)
    return found


def mask_iou_matrix(a: list[GridMask], b: list[GridMask]) -> np.ndarray:
    """(len(a), len(b)) float64 mask IoU."""
    fa = np.stack([m.segmentation.ravel() for m in a]).astype(np.float32)
    fb = np.stack([m.segmentation.ravel() for m in b]).astype(np.float32)
    inter = fa @ fb.T
    union = fa.sum(1)[:, None] + fb.sum(1)[None, :] - inter
    return inter / np.maximum(union, 1)


def match_fractions(a: list[GridMask], b: list[GridMask], iou_thresh: float = 0.9
                    ) -> tuple[float, float]:
    """(fraction of ``a`` matched by some mask of ``b`` at mask IoU >= ``iou_thresh``, and
    the fraction of ``b`` matched by ``a``); two empty lists match fully."""
    if not a or not b:
        return float(len(a) == len(b)), float(len(a) == len(b))
    ious = mask_iou_matrix(a, b)
    return float((ious.max(1) >= iou_thresh).mean()), float((ious.max(0) >= iou_thresh).mean())
