"""The fast point decoders of SAM-HQ (:class:`sam_model.factored_hq_decoder.FactoredHQPointDecoder`)
and EfficientSAM (:class:`sam_model.factored_decoder.FactoredPointDecoder` over its decoder)
equal their plain decoders (prompt encoder + mask decoder forward, proven equal to the official
code in the parity tests): the same surviving outputs in the same order, predicted IoU within
1e-5, low-res logits within 1e-4 of the map's largest magnitude, hence the same masks
(logits > 0) wherever a logit is not within that of 0. Then the whole generator with each
decoder, crops included (reject windows on the crop-edge strips): the same records.

Random weights (seeded, shaped for grids as in the generator parity tests), real photos.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from amg import MaskGenerator
from sam_model.point_decoder import DecodedMasks, RejectWindow

from . import hq_oracle
from .conftest import read_photo
from .efficient_sam_oracle import random_pair as esam_random_pair
from .efficient_sam_oracle import shape_decoder_for_grids_
from .hq_oracle import split_between
from .test_generator_parity import match_fractions

FAMILIES = ["sam_hq_vit_tiny", "efficient_sam_vitt"]


def shaped_model(name: str):
    if name.startswith("sam_hq"):
        ours, ref = hq_oracle.random_pair(name)
        hq_oracle.shape_for_grids_((ours, ref))
        return ours
    ours, _ = esam_random_pair(name, seed=0)
    shape_decoder_for_grids_(ours)
    return ours


@pytest.fixture(scope="module", params=FAMILIES)
def setup(request):
    model = shaped_model(request.param)
    image = read_photo("dog.jpg")  # 800 x 534: SAM-HQ's map has padding rows, EfficientSAM's not
    emb = model.encode_image(image)
    points = torch.as_tensor(np.random.default_rng(0).uniform([0, 0], [800, 534], (8, 2)))
    return request.param, model, emb, points


def assert_same(fast, plain) -> None:
    assert fast.prompt_index.tolist() == plain.prompt_index.tolist()
    assert fast.low_res_logits.shape == plain.low_res_logits.shape
    assert fast.low_res_logits.dtype == fast.predicted_iou.dtype == torch.float32
    torch.testing.assert_close(fast.predicted_iou, plain.predicted_iou, rtol=0, atol=1e-5)
    if len(plain) == 0:
        return
    tol = 1e-4 * float(plain.low_res_logits.abs().max())
    torch.testing.assert_close(fast.low_res_logits, plain.low_res_logits, rtol=0, atol=tol)
    sure = plain.low_res_logits.abs() > tol
    assert torch.equal((fast.low_res_logits > 0)[sure], (plain.low_res_logits > 0)[sure])


OPTIONS = {"sam_hq_vit_tiny": [{}, {"hq_token_only": True}, {"multimask_output": False},
                               {"hq_token_only": True, "multimask_output": False}],
           "efficient_sam_vitt": [{}]}


def test_fast_equals_plain(setup):
    name, model, emb, points = setup
    h, w = (172, 256) if name.startswith("sam_hq") else (256, 256)  # the map's image part
    for options in OPTIONS[name]:
        plain = model.point_decoder(emb, low_res_hw=(h, w), plain=True, **options)
        fast = model.point_decoder(emb, low_res_hw=(h, w), **options)
        assert type(fast) is not type(plain) and fast.low_res_hw == (h, w)
        everything = plain.decode(points, 0.0)
        assert_same(fast.decode(points, 0.0), everything)
        thresh = split_between(everything.predicted_iou)  # about half survive
        keep = everything.predicted_iou > thresh  # the plain decoder's own filter
        some = DecodedMasks(everything.low_res_logits[keep], everything.predicted_iou[keep],
                            everything.prompt_index[keep])
        assert 0 < len(some) < len(everything)
        assert_same(fast.decode(points, thresh), some)


def test_fast_reject_windows_equal_plain(setup):
    """Two windows, one at the map's border and one inside (the HQ convolutions' halo)."""
    name, model, emb, points = setup
    plain = model.point_decoder(emb, plain=True)
    full = plain.decode(points, 0.0).low_res_logits
    windows = []
    for box in [(0, 8, 0, 64), (20, 30, 12, 40)]:
        y0, y1, x0, x1 = box
        cut = split_between(full[:, 4 * y0:4 * y1, 4 * x0:4 * x1].amax((1, 2)))
        windows.append(RejectWindow(box, lambda win, cut=cut: win.amax((1, 2)) > cut))
    expected = plain.decode(points, 0.0, windows)
    assert 0 < len(expected) < len(full)
    assert_same(model.point_decoder(emb).decode(points, 0.0, windows), expected)


def test_fast_in_bfloat16_is_close(setup):
    name, model, emb, points = setup
    plain = model.point_decoder(emb, plain=True).decode(points, 0.0)
    fast = model.point_decoder(emb, torch.bfloat16).decode(points, 0.0)
    assert fast.prompt_index.tolist() == plain.prompt_index.tolist()
    assert (fast.predicted_iou - plain.predicted_iou).abs().max() < 0.05
    agree = ((fast.low_res_logits > 0) == (plain.low_res_logits > 0)).float().mean()
    assert agree > 0.9


class PlainDecoders:
    """A model whose point decoders are the plain ones (everything else delegated)."""

    def __init__(self, model) -> None:
        self.model = model

    def __getattr__(self, name):
        return getattr(self.model, name)

    def point_decoder(self, *args, **options):
        return self.model.point_decoder(*args, plain=True, **options)


@pytest.mark.parametrize("name", FAMILIES)
def test_generator_with_fast_decoder_equals_plain(name):
    """One crop layer (crop-edge strips as reject windows; random-weight masks are speckled
    over their whole crop, so the windows drop every mask of the inner crops in both),
    lowered filters."""
    model = shaped_model(name)
    image = np.ascontiguousarray(read_photo("groceries.jpg")[::2, ::2])  # 400 x 267
    params = dict(points_per_side=4, crop_n_layers=1, crop_n_points_downscale_factor=2,
                  pred_iou_thresh=0.0,
                  stability_score_thresh=0.5, box_nms_thresh=1.0, crop_nms_thresh=1.0,
                  output_mode="coco_rle")
    fast = MaskGenerator(model, **params).generate(image)
    plain = MaskGenerator(PlainDecoders(model), **params).generate(image)
    assert len(fast) == len(plain) >= 8
    assert match_fractions(fast, plain, 0.99) == (1.0, 1.0)
    assert [r["point_coords"] for r in fast] == [r["point_coords"] for r in plain]
    assert np.allclose([r["predicted_iou"] for r in fast], [r["predicted_iou"] for r in plain],
                       rtol=0, atol=1e-5)
