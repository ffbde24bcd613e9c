"""MaskGenerator against the reference SamAutomaticMaskGenerator (MobileSAM's reference code)
on real photos with the same real weights and parameters.

Criterion (issue #2): at least 0.95 of the reference masks matched by one of ours at mask
IoU >= 0.9, and at least 0.95 of ours matched by the reference. Small grids keep it fast.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from amg import MaskGenerator

from .conftest import read_photo

pytestmark = pytest.mark.parity


def match_fractions(ref_records, our_records, iou_thresh=0.9):
    """(fraction of reference masks matched by ours, fraction of ours matched by the reference)."""
    a = [r["segmentation"] for r in ref_records]
    b = [r["segmentation"] for r in our_records]
    if not a or not b:
        return float(len(a) == len(b)), float(len(a) == len(b))
    ious = mask_utils.iou(a, b, [0] * len(b))
    return float((ious.max(1) >= iou_thresh).mean()), float((ious.max(0) >= iou_thresh).mean())


def reference_generator(ref_model, **params):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from mobilesam_lite.mobile_sam import SamAutomaticMaskGenerator
    return SamAutomaticMaskGenerator(ref_model, **params)


CASES = [
    ("dog.jpg", dict(points_per_side=8)),
    ("groceries.jpg", dict(points_per_side=12, pred_iou_thresh=0.86)),
    ("bus.jpg", dict(points_per_side=8, stability_score_thresh=0.92, box_nms_thresh=0.6)),
    ("picture1.jpg", dict(points_per_side=8, crop_n_layers=1, crop_n_points_downscale_factor=2,
                          min_mask_region_area=100)),
]


@pytest.mark.parametrize("photo,params", CASES, ids=[c[0] for c in CASES])
def test_masks_match_reference(mobile_sam, ref_mobile_sam, photo, params):
    image = read_photo(photo)
    ref = reference_generator(ref_mobile_sam, output_mode="coco_rle", **params).generate(image)
    ours = MaskGenerator(mobile_sam, output_mode="coco_rle", **params).generate(image)
    assert len(ref) >= 5, "a meaningful comparison needs masks"
    ref_matched, ours_matched = match_fractions(ref, ours)
    assert ref_matched >= 0.95 and ours_matched >= 0.95, (len(ref), len(ours), ref_matched, ours_matched)
    # Same records, field by field, for the masks that pair up.
    ious = mask_utils.iou([r["segmentation"] for r in ref], [o["segmentation"] for o in ours],
                          [0] * len(ours))
    for i, r in enumerate(ref):
        j = int(ious[i].argmax())
        if ious[i, j] < 0.9:
            continue
        o = ours[j]
        assert o["point_coords"][0] == pytest.approx(r["point_coords"][0])
        assert o["crop_box"] == r["crop_box"]
        assert o["predicted_iou"] == pytest.approx(r["predicted_iou"], abs=1e-4)
        assert o["stability_score"] == pytest.approx(r["stability_score"], abs=2e-3)
        assert abs(o["area"] - r["area"]) <= max(5, 0.002 * r["area"])
        assert np.allclose(o["bbox"], r["bbox"], atol=2)


def test_binary_mask_output_matches_reference(mobile_sam, ref_mobile_sam):
    """The default output mode: (H, W) bool arrays, compared pixel for pixel."""
    image = read_photo("dog.jpg")
    params = dict(points_per_side=6)
    ref = reference_generator(ref_mobile_sam, **params).generate(image)
    ours = MaskGenerator(mobile_sam, **params).generate(image)
    assert len(ours) == len(ref) > 0
    for r, o in zip(sorted(ref, key=lambda m: m["area"]), sorted(ours, key=lambda m: m["area"])):
        assert o["segmentation"].dtype == bool and o["segmentation"].shape == image.shape[:2]
        assert (o["segmentation"] != r["segmentation"]).sum() <= 0.001 * r["area"] + 5
        assert o["area"] == int(o["segmentation"].sum())


def test_output_does_not_depend_on_batching(mobile_sam):
    """points_per_batch and the internal decoder chunk change memory use, not the masks."""
    image = read_photo("groceries.jpg")
    outs = [MaskGenerator(mobile_sam, output_mode="uncompressed_rle", points_per_side=6,
                          points_per_batch=ppb, decoder_chunk_size=chunk).generate(image)
            for ppb, chunk in [(64, 8), (7, 3), (36, 36)]]
    # uncompressed RLE records hold the reference's type: a list of python ints
    assert outs[0] and all(isinstance(r["segmentation"]["counts"], list)
                           and all(type(c) is int for c in r["segmentation"]["counts"])
                           for r in outs[0])
    for other in outs[1:]:
        assert len(other) == len(outs[0])
        for a, b in zip(outs[0], other):
            assert a["segmentation"] == b["segmentation"]
            assert a["bbox"] == b["bbox"] and a["point_coords"] == b["point_coords"]


def test_records_are_self_consistent(mobile_sam):
    """area equals the decoded area, bbox is the tight XYWH box (reference's x2-x1 width)."""
    image = read_photo("picture2.jpg")
    h, w = image.shape[:2]
    records = MaskGenerator(mobile_sam, output_mode="coco_rle", points_per_side=6).generate(image)
    assert records
    for r in records:
        m = mask_utils.decode(r["segmentation"]).astype(bool)
        assert m.shape == (h, w) and r["area"] == int(m.sum()) == mask_utils.area(r["segmentation"])
        ys, xs = np.nonzero(m)
        assert r["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min(), ys.max() - ys.min()]
        assert r["predicted_iou"] > 0.88 and r["stability_score"] >= 0.95
        assert r["crop_box"] == [0, 0, w, h]
        x, y = r["point_coords"][0]
        assert 0 <= x < w and 0 <= y < h


def test_generate_rejects_bad_images(mobile_sam):
    gen = MaskGenerator(mobile_sam, points_per_side=2)
    with pytest.raises(ValueError, match="shape"):
        gen.generate(np.zeros((8, 8), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        gen.generate(np.zeros((8, 8, 3), np.float64))


def reference_model_at_input_size(ref_model, size):
    """The reference MobileSAM built for a ``size`` x ``size`` input (its TinyViT and prompt
    encoder take the input size at construction), with ``ref_model``'s weights."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from mobilesam_lite.mobile_sam.modeling import PromptEncoder, Sam, TinyViT
    encoder = TinyViT(img_size=size, in_chans=3, num_classes=1000, embed_dims=[64, 128, 160, 320],
                      depths=[2, 2, 6, 2], num_heads=[2, 4, 5, 10], window_sizes=[7, 7, 14, 7],
                      mlp_ratio=4.0, drop_rate=0.0, drop_path_rate=0.0, use_checkpoint=False,
                      mbconv_expand_ratio=4.0, local_conv_size=3, layer_lr_decay=0.8)
    encoder.load_state_dict(ref_model.image_encoder.state_dict())
    grid = size // 16

    def forward_features(x):
        # The reference's TinyViT.forward_features hard-codes a 64x64 token grid (a 1024 input);
        # the same layers, reshaped to the grid of a ``size`` input.
        x = encoder.patch_embed(x)
        for layer in encoder.layers:
            x = layer(x)
        return encoder.neck(x.view(x.shape[0], grid, grid, x.shape[2]).permute(0, 3, 1, 2))

    encoder.forward_features = forward_features
    prompt_encoder = PromptEncoder(embed_dim=256, image_embedding_size=(size // 16, size // 16),
                                   input_image_size=(size, size), mask_in_chans=16)
    prompt_encoder.load_state_dict(ref_model.prompt_encoder.state_dict())
    return Sam(image_encoder=encoder, prompt_encoder=prompt_encoder,
               mask_decoder=ref_model.mask_decoder, pixel_mean=[123.675, 116.28, 103.53],
               pixel_std=[58.395, 57.12, 57.375]).eval()


def test_input_size_matches_reference_built_at_that_size(mobile_sam, ref_mobile_sam):
    """``input_size=1536`` (not a reference parameter) equals the reference model constructed
    for a 1536 input (its ``ResizeLongestSide`` follows ``image_encoder.img_size``)."""
    image = read_photo("bus.jpg")
    params = dict(points_per_side=8, pred_iou_thresh=0.8, stability_score_thresh=0.9)
    ref = reference_generator(reference_model_at_input_size(ref_mobile_sam, 1536),
                              output_mode="coco_rle", **params).generate(image)
    ours = MaskGenerator(mobile_sam, output_mode="coco_rle", input_size=1536, **params).generate(image)
    at_1024 = MaskGenerator(mobile_sam, output_mode="coco_rle", **params).generate(image)
    assert len(ref) >= 5
    assert min(match_fractions(ref, ours)) >= 0.95, (len(ref), len(ours), match_fractions(ref, ours))
    # The input size really changes the masks (otherwise the comparison above proves nothing).
    assert min(match_fractions(ref, at_1024)) < 0.95
    ious = mask_utils.iou([r["segmentation"] for r in ref], [o["segmentation"] for o in ours],
                          [0] * len(ours))
    for i, r in enumerate(ref):
        j = int(ious[i].argmax())
        if ious[i, j] >= 0.9:
            assert ours[j]["predicted_iou"] == pytest.approx(r["predicted_iou"], abs=1e-4)
            assert ours[j]["stability_score"] == pytest.approx(r["stability_score"], abs=2e-3)
