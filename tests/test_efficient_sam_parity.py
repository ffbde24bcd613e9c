"""EfficientSAM against its official code (``../shared/oracles/efficient_sam``, test-only oracle).

Both sizes (ViT-T, ViT-S) with the same seeded random weights in ours and in the official model
(the state dicts must be key-for-key compatible), float32, at the real 1024 input, on real
photos: image embeddings, decoder outputs for point / box / mixed prompts, the bicubic
post-processing and its matrices, and the point decoder of the seam. Then the grid generator
comparison (ViT-T): the SAM generator's steps over the official model
(:func:`tests.grid_generators.efficient_sam_oracle_grid_masks`) against the same steps driven
through our seam, mask for mask. Tolerances: relative to the reference output's max magnitude,
1e-4.

The grid test uses a 6 x 6 point grid to stay within CPU time (each decoded prompt costs about
0.2-0.4 s on 2 cores); set ``SEGMENT_EVERYTHING_GRID_POINTS=32`` for the generator's default
32 x 32 grid.
"""

from __future__ import annotations

import copy
import os

import numpy as np
import pytest
import torch

from sam_model.point_decoder import RejectWindow

from .conftest import read_photo
from .efficient_sam_oracle import (build_oracle, random_pair, rel_err,
                                   shape_decoder_for_grids_)
from .grid_generators import (GridParams, box_nms, efficient_sam_oracle_grid_candidates,
                              mask_iou_matrix, match_fractions, seam_grid_candidates)

pytestmark = pytest.mark.parity

SIZES = ["efficient_sam_vitt", "efficient_sam_vits"]
PHOTOS = {"efficient_sam_vitt": "dog.jpg",  # 800 x 534: the stretch to 1024 upsamples
          "efficient_sam_vits": "truck.jpg"}  # 1800 x 1200: it downsamples


@pytest.fixture(scope="module", params=SIZES)
def encoded(request):
    """(name, ours, oracle, image, our embedding, oracle embedding), one photo per size."""
    from torchvision.transforms.functional import to_tensor
    name = request.param
    ours, oracle = random_pair(name, seed=0)
    image = read_photo(PHOTOS[name])
    with torch.no_grad():
        ref = oracle.get_image_embeddings(to_tensor(np.array(image))[None])
    return name, ours, oracle, image, ours.encode_image(image), ref


@pytest.mark.parametrize("name", SIZES)
def test_state_dict_layout_matches_official(name):
    from sam_model import build_efficient_sam
    ref = {k: tuple(v.shape) for k, v in build_oracle(name).state_dict().items()}
    ours = {k: tuple(v.shape) for k, v in build_efficient_sam(name).state_dict().items()}
    assert sorted(ours) == sorted(ref)
    assert ours == ref


def test_image_embedding_matches_official(encoded):
    name, ours, oracle, image, emb, ref = encoded
    assert emb.embedding.shape == ref.shape == (1, 256, 64, 64)
    assert emb.original_hw == image.shape[:2]
    assert rel_err(emb.embedding, ref) < 1e-4


def oracle_predict(oracle, ref_emb, image, points, labels, multimask=True, full=False):
    """Official ``predict_masks`` for one image: points (B, N, 2) float, labels (B, N)."""
    h, w = image.shape[:2]
    with torch.no_grad():
        masks, iou = oracle.predict_masks(ref_emb, torch.as_tensor(points)[None],
                                          torch.as_tensor(labels)[None], multimask, h, w,
                                          h if full else -1, w if full else -1)
    return masks[0], iou[0]


def test_point_prompts_match_official(encoded):
    """Several points per prompt, foreground / background / explicit padding labels, float64
    pixel coordinates; low-res logits, predicted IoU, the bicubic upscaling and its matrices."""
    name, ours, oracle, image, emb, ref = encoded
    h, w = image.shape[:2]
    rng = np.random.default_rng(1)
    pts = rng.uniform([0, 0], [w, h], size=(5, 3, 2))
    labels = np.array([[1, 0, 1], [1, 1, 0], [0, 1, -1], [1, -1, -1], [1, 1, 1]])
    low_ref, iou_ref = oracle_predict(oracle, ref, image, pts, labels)
    full_ref, _ = oracle_predict(oracle, ref, image, pts, labels, full=True)
    low, iou = ours.decode(emb, torch.as_tensor(pts), torch.as_tensor(labels))
    assert low.shape == (5, 3, 256, 256) and iou.shape == (5, 3)
    assert rel_err(low, low_ref) < 1e-4
    assert rel_err(iou, iou_ref) < 1e-4
    full = ours.upscale_masks(low, emb)
    assert full.shape == (5, 3, h, w)
    assert rel_err(full, full_ref) < 1e-4
    ay, ax = ours.low_res_to_image(emb)
    assert ay.shape == (h, 256) and ax.shape == (w, 256)
    ay, ax = (torch.as_tensor(a, dtype=torch.float32) for a in (ay, ax))
    composed = ay @ low @ ax.T
    assert rel_err(composed, full_ref) < 1e-4


def test_box_and_single_mask_prompts_match_official(encoded):
    """Boxes are the official corner points with labels 2 / 3, alone and after a point."""
    name, ours, oracle, image, emb, ref = encoded
    h, w = image.shape[:2]
    boxes = np.array([[0.1 * w, 0.2 * h, 0.6 * w, 0.9 * h], [0.5 * w, 0.1 * h, 0.95 * w, 0.5 * h]])
    corners = boxes.reshape(2, 2, 2)
    low_ref, iou_ref = oracle_predict(oracle, ref, image, corners, np.array([[2, 3]] * 2), False)
    low, iou = ours.decode(emb, boxes_xyxy=torch.as_tensor(boxes), multimask_output=False)
    assert low.shape == (2, 1, 256, 256)
    assert rel_err(low, low_ref) < 1e-4 and rel_err(iou, iou_ref) < 1e-4
    point = np.array([[[0.3 * w, 0.5 * h]], [[0.7 * w, 0.3 * h]]])
    low_ref, iou_ref = oracle_predict(oracle, ref, image, np.concatenate([point, corners], 1),
                                      np.array([[1, 2, 3]] * 2))
    low, iou = ours.decode(emb, torch.as_tensor(point), torch.ones(2, 1, dtype=torch.int64),
                           boxes_xyxy=torch.as_tensor(boxes))
    assert low.shape == (2, 3, 256, 256)
    assert rel_err(low, low_ref) < 1e-4 and rel_err(iou, iou_ref) < 1e-4


def gap_threshold(values: torch.Tensor) -> float:
    """The midpoint of the widest gap between sorted ``values`` in their middle half."""
    v = values.double().sort().values
    n = len(v)
    lo, hi = n // 4, 3 * n // 4
    gaps = v[lo + 1:hi + 1] - v[lo:hi]
    i = int(gaps.argmax())
    return float((v[lo + i] + v[lo + i + 1]) / 2)


def test_point_decoder_matches_official(encoded):
    """The seam: one foreground point per prompt, outputs prompt-major, IoU filter, reject
    windows on token boxes, and the low_res_hw crop."""
    name, ours, oracle, image, emb, ref = encoded
    h, w = image.shape[:2]
    pts = np.random.default_rng(2).uniform([0, 0], [w, h], size=(6, 2))
    low_ref, iou_ref = oracle_predict(oracle, ref, image, pts[:, None], np.ones((6, 1)))
    low_ref, iou_ref = low_ref.reshape(18, 256, 256), iou_ref.reshape(18)
    decoder = ours.point_decoder(emb)
    out = decoder.decode(torch.as_tensor(pts), iou_thresh=0.0)
    assert out.low_res_logits.shape == (18, 256, 256) and out.low_res_logits.dtype == torch.float32
    assert out.prompt_index.tolist() == [i // 3 for i in range(18)]
    assert rel_err(out.low_res_logits, low_ref) < 1e-4
    assert rel_err(out.predicted_iou, iou_ref) < 1e-4

    # Thresholds in the middle of a wide gap between the reference values, so that float
    # rounding cannot move an output across them.
    thresh = gap_threshold(iou_ref)
    window = (8, 24, 16, 40)  # token rows 8..23, columns 16..39
    window_mean = low_ref[:, 32:96, 64:160].mean((1, 2))
    mean_thresh = gap_threshold(window_mean)

    def reject(logits):
        assert logits.shape[1:] == (64, 96)
        return logits.mean((1, 2)) > mean_thresh

    expected = [i for i in range(18) if iou_ref[i] > thresh and not window_mean[i] > mean_thresh]
    assert 0 < len(expected) < 18
    out = decoder.decode(torch.as_tensor(pts), thresh, reject=[RejectWindow(window, reject)])
    assert out.prompt_index.tolist() == [i // 3 for i in expected]
    assert rel_err(out.predicted_iou, iou_ref[expected]) < 1e-4
    assert rel_err(out.low_res_logits, low_ref[expected]) < 1e-4

    part = ours.point_decoder(emb, low_res_hw=(200, 180)).decode(torch.as_tensor(pts[:2]), 0.0)
    assert part.low_res_logits.shape == (6, 200, 180)
    assert rel_err(part.low_res_logits, low_ref[:6, :200, :180]) < 1e-4
    fast = ours.point_decoder(emb, torch.bfloat16).decode(torch.as_tensor(pts[:2]), 0.0)
    assert fast.low_res_logits.dtype == torch.float32 and fast.low_res_logits.shape == (6, 256, 256)
    assert ((fast.low_res_logits > 0) == (low_ref[:6] > 0)).float().mean() > 0.9
    with pytest.raises(ValueError, match="low_res_hw"):
        ours.point_decoder(emb, low_res_hw=(300, 10))
    with pytest.raises(ValueError, match=r"\(B, 2\)"):
        decoder.decode(torch.as_tensor(pts[:, None]), 0.0)


@pytest.mark.parametrize("tile", ["whole map", 100])
def test_point_decoder_upscale_tiling_matches_official(encoded, monkeypatch, tile):
    """The whole-map logits with other tilings of the output upscaling than the CPU's 512
    tokens: the whole map as one tile (what a GPU runs) and 100-token tiles (4096 tokens:
    40 whole tiles and a partial one). The GroupNorm statistics combine the tiles' means and
    squared deviations, so every tiling must give the official logits."""
    from sam_model.factored_decoder import FactoredGridDecoder
    name, ours, oracle, image, emb, ref = encoded
    h, w = image.shape[:2]
    pts = np.random.default_rng(3).uniform([0, 0], [w, h], size=(2, 2))
    low_ref, _ = oracle_predict(oracle, ref, image, pts[:, None], np.ones((2, 1)))
    monkeypatch.setattr(FactoredGridDecoder, "upscale_tile_tokens", staticmethod(
        lambda n, device: n if tile == "whole map" else tile))
    out = ours.point_decoder(emb).decode(torch.as_tensor(pts), iou_thresh=0.0)
    assert out.low_res_logits.shape == (6, 256, 256)
    assert rel_err(out.low_res_logits, low_ref.reshape(6, 256, 256)) < 1e-4


def test_too_many_points_are_refused(encoded):
    name, ours, oracle, image, emb, ref = encoded
    with pytest.raises(ValueError, match="at most 6 points"):
        ours.decode(emb, torch.zeros(1, 7, 2), torch.ones(1, 7, dtype=torch.int64))


@pytest.mark.parametrize("encoded", ["efficient_sam_vitt"], indirect=True)
def test_grid_generator_matches_official(encoded):
    """Our model through the seam against the official model, the SAM generator's steps.

    Random weights give every output a speckled mask spread over the whole image, so every
    box is the image box and box NMS below 1.0 keeps a single mask: the mask-for-mask
    comparison is made at ``box_nms_thresh=1.0`` (NMS keeps all, in score order) over the
    candidates of one decoding pass, and the default 0.7 is checked on the same candidates.
    """
    name, ours, oracle, image, emb, ref = encoded  # ViT-T only: both sizes share the decoder
    ours, oracle = copy.deepcopy(ours), copy.deepcopy(oracle)
    shape_decoder_for_grids_(ours)
    shape_decoder_for_grids_(oracle)
    n = int(os.environ.get("SEGMENT_EVERYTHING_GRID_POINTS", "6"))
    params = GridParams(points_per_side=n, pred_iou_thresh=0.02, stability_score_thresh=0.6)
    theirs = efficient_sam_oracle_grid_candidates(oracle, image, params, ref)
    mine = seam_grid_candidates(ours, image, params, emb)
    assert len(theirs) >= 0.15 * 3 * n * n, "a meaningful comparison needs masks"
    # Different prompts give different masks: a wrong point or output would not match at 0.9.
    self_iou = mask_iou_matrix(theirs, theirs)
    np.fill_diagonal(self_iou, 0.0)
    assert np.median(self_iou.max(1)) < 0.9

    ref_kept, our_kept = box_nms(theirs, 1.0), box_nms(mine, 1.0)
    ref_matched, ours_matched = match_fractions(ref_kept, our_kept)
    assert ref_matched >= 0.95 and ours_matched >= 0.95, (len(ref_kept), len(our_kept),
                                                          ref_matched, ours_matched)
    # Record for record: the same prompt point and predicted IoU, the same mask.
    paired = 0
    for r in theirs:
        same = [o for o in mine if o.point_xy == r.point_xy
                and abs(o.predicted_iou - r.predicted_iou) < 1e-4]
        if same:
            paired += 1
            assert mask_iou_matrix([r], same[:1])[0, 0] >= 0.9
            assert abs(same[0].stability_score - r.stability_score) < 2e-3
    assert paired >= 0.95 * len(theirs)

    ref_nms, our_nms = box_nms(theirs, 0.7), box_nms(mine, 0.7)
    assert len(ref_nms) == len(our_nms) >= 1
    assert all(mask_iou_matrix([a], [b])[0, 0] >= 0.9 and a.point_xy == b.point_xy
               for a, b in zip(ref_nms, our_nms))
