"""Helpers for the SAM 2.1 parity tests: the official ``sam2`` package (test-only oracle) with
seeded random weights, and our :class:`sam_model.Sam2` holding the same weights."""

from __future__ import annotations

import warnings

import numpy as np
import torch

from sam_model import SAM2_CONFIGS, Sam2
from sam_model.sam2_checkpoints import image_state_dict

OFFICIAL_CONFIGS = {
    "sam2.1_hiera_tiny": "configs/sam2.1/sam2.1_hiera_t.yaml",
    "sam2.1_hiera_small": "configs/sam2.1/sam2.1_hiera_s.yaml",
    "sam2.1_hiera_base_plus": "configs/sam2.1/sam2.1_hiera_b+.yaml",
    "sam2.1_hiera_large": "configs/sam2.1/sam2.1_hiera_l.yaml",
}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b| (float64)."""
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max()).item()


def randomise_(module: torch.nn.Module, seed: int) -> None:
    """Seeded noise in every floating parameter and buffer: norm weights 1 + 0.1 n, the prompt
    encoder's Gaussian matrix n (its official scale), the last layer of the hypernetwork MLPs
    2 n (so that the low-res logits reach beyond the +-32 clamp, as trained models' do),
    everything else 0.05 n (the official init leaves the position embeddings and
    ``no_mem_embed`` nearly or exactly zero, which would make their parity trivial)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if not t.dtype.is_floating_point:
                continue
            noise = torch.randn(t.shape, generator=g)
            if name.endswith("positional_encoding_gaussian_matrix"):
                t.copy_(noise)
            elif "output_hypernetworks_mlps" in name and ".layers.2." in name:
                t.copy_(2.0 * noise)
            elif t.ndim == 1 and name.endswith(".weight") and ("norm" in name or "upscaling.1" in name
                                                               or "downscaling" in name):
                t.copy_(1.0 + 0.1 * noise)
            else:
                t.copy_(0.05 * noise)


def oracle_model(name: str, seed: int = 0) -> torch.nn.Module:
    """The official SAM 2.1 model of size ``name`` (``build_sam2`` with the post-processing
    overrides), seeded random weights, eval mode, CPU."""
    from sam2.build_sam import build_sam2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = build_sam2(OFFICIAL_CONFIGS[name], None, device="cpu")
    randomise_(ref, seed)
    return ref.eval()


def ours_like(ref: torch.nn.Module, name: str) -> Sam2:
    """Our model with the oracle's weights, loaded strictly (image-mode keys only)."""
    ours = Sam2(SAM2_CONFIGS[name]).eval()
    ours.load_state_dict(image_state_dict(ref.state_dict()), strict=True)
    return ours


def oracle_predictor(ref: torch.nn.Module, image: np.ndarray):
    """``SAM2ImagePredictor`` with ``image`` set."""
    from sam2.sam2_image_predictor import SAM2ImagePredictor
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pred = SAM2ImagePredictor(ref)
        pred.set_image(image)
    return pred


def capture_output(module: torch.nn.Module, store: list):
    """Forward hook appending ``module``'s outputs to ``store``; returns the handle."""
    return module.register_forward_hook(lambda _m, _i, out: store.append(out))


def oracle_decode(pred, points_xy, labels, boxes_xyxy=None, mask_input=None, multimask=True):
    """The reference's ``SAM2ImagePredictor._predict`` on prompts in image pixels (numpy),
    plus the object-score logits read from the mask decoder's output.

    Returns low-res logits (B, M, 256, 256) (clamped), IoU (B, M), object score (B, 1).
    """
    store: list = []
    handle = capture_output(pred.model.sam_mask_decoder, store)
    try:
        mask_in, pts, lab, box = pred._prep_prompts(points_xy, labels, boxes_xyxy, mask_input,
                                                    normalize_coords=True)
        _, iou, low = pred._predict(pts, lab, box, mask_in, multimask, return_logits=True)
    finally:
        handle.remove()
    return low, iou, store[-1][3]


# ---------------------------------------------------------------- one encoded photo per size
class EncodedPair:
    """The oracle and our model of one size, both having encoded the same photo.

    Attributes:
        name: size name. image: (H, W, 3) uint8. ref / ours: the two models.
        pred: the oracle predictor with the image set. emb: our :class:`Sam2ImageEmbedding`.
        ref_levels / ref_pos: the oracle neck's four levels and sine encodings (pre-scalp).
        our_levels: our neck's three levels (post-scalp).
    """

    def __init__(self, name: str, image: np.ndarray, seed: int = 0) -> None:
        self.name, self.image = name, image
        self.ref = oracle_model(name, seed)
        self.ours = ours_like(self.ref, name)
        ref_out: list = []
        handle = capture_output(self.ref.image_encoder.neck, ref_out)
        try:
            self.pred = oracle_predictor(self.ref, image)
        finally:
            handle.remove()
        self.ref_levels, self.ref_pos = ref_out[0]
        our_out: list = []
        handle = capture_output(self.ours.image_encoder.neck, our_out)
        try:
            self.emb = self.ours.encode_image(image)
        finally:
            handle.remove()
        self.our_levels = our_out[0]


# Prompt sets in image pixels of an 800 x 534 photo: (points_xy (B, N, 2), labels (B, N),
# boxes_xyxy (B, 4) or None).
PROMPTS = {
    "one_point_each": (np.array([[[400.3, 300.7]], [[100.0, 50.0]], [[799.0, 533.0]], [[0.0, 0.0]]]),
                       np.ones((4, 1), np.int64), None),
    "points_pos_neg": (np.array([[[420.0, 280.0], [150.5, 400.25], [600.0, 100.0]],
                                 [[50.0, 500.0], [700.0, 30.0], [333.3, 222.2]]]),
                       np.array([[1, 0, 1], [1, 1, 0]]), None),
    "boxes": (None, None, np.array([[100.0, 80.0, 500.0, 450.0], [300.5, 10.0, 790.0, 300.0]])),
    "box_and_point": (np.array([[[300.0, 260.0]], [[620.0, 120.0]]]), np.array([[1], [0]]),
                      np.array([[100.0, 80.0, 500.0, 450.0], [300.5, 10.0, 790.0, 300.0]])),
}


def check_encoder(pair: EncodedPair, tol: float = 1e-4) -> None:
    """Neck levels, the conv_s0/s1 projections and the no_mem_embed level vs the oracle."""
    assert len(pair.our_levels) == 3
    for ours, ref in zip(pair.our_levels, pair.ref_levels[:3]):
        assert ours.shape == ref.shape
        assert rel_err(ours, ref) < tol
    feats = pair.pred._features
    assert pair.emb.image_embedding.shape == (1, 256, 64, 64)
    assert rel_err(pair.emb.image_embedding, feats["image_embed"]) < tol
    for ours, ref, shape in zip(pair.emb.high_res_features, feats["high_res_feats"],
                                [(1, 32, 256, 256), (1, 64, 128, 128)]):
        assert ours.shape == shape
        assert rel_err(ours, ref) < tol
    # no_mem_embed really changes the level (not a zero parameter)
    assert rel_err(pair.our_levels[2], pair.emb.image_embedding) > 1e-3


def check_decoder(pair: EncodedPair, prompt: str, multimask: bool, tol: float = 1e-4,
                  with_mask_input: bool = False) -> None:
    """``Sam2.decode`` vs ``SAM2ImagePredictor._predict`` (logits, IoU, object score); with
    ``with_mask_input`` also the first output fed back as mask input with the same prompts."""
    pts, labels, boxes = PROMPTS[prompt]
    low_ref, iou_ref, obj_ref = oracle_decode(pair.pred, pts, labels, boxes, None, multimask)
    low, iou, obj = pair.ours.decode(
        pair.emb, None if pts is None else torch.as_tensor(pts),
        None if labels is None else torch.as_tensor(labels),
        None if boxes is None else torch.as_tensor(boxes), multimask_output=multimask)
    m = 3 if multimask else 1
    assert low.shape == low_ref.shape == (len(iou_ref), m, 256, 256)
    assert rel_err(low, low_ref) < tol
    assert rel_err(iou, iou_ref) < tol
    assert obj.shape == obj_ref.shape == (len(iou_ref), 1)
    assert rel_err(obj, obj_ref) < tol
    if not with_mask_input:
        return
    mask_in = low_ref[:, :1].numpy()
    low_ref2, iou_ref2, obj_ref2 = oracle_decode(pair.pred, pts, labels, boxes, mask_in, multimask)
    low2, iou2, obj2 = pair.ours.decode(
        pair.emb, None if pts is None else torch.as_tensor(pts),
        None if labels is None else torch.as_tensor(labels),
        None if boxes is None else torch.as_tensor(boxes), torch.as_tensor(mask_in),
        multimask_output=multimask)
    assert rel_err(low2, low_ref2) < tol and rel_err(iou2, iou_ref2) < tol
    assert rel_err(obj2, obj_ref2) < tol
    assert rel_err(low2, low) > 1e-3  # the mask input matters
