"""The generator drives every model family through the decoder seam alone: SAM 2.1, SAM-HQ and
EfficientSAM (random weights, seeded) on a real photo, with the filters off so every decoded
output reaches the records."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from amg import MaskGenerator
from sam_model import build_model

from .conftest import read_photo

# Outputs per point prompt with multimask output: SAM 2 and EfficientSAM three; HQ-SAM one
# (the best SAM mask by predicted IoU plus the HQ mask, as segment_anything_hq returns it).
FAMILIES = [("sam2.1_hiera_tiny", 3), ("sam_hq_vit_tiny", 1), ("efficient_sam_vitt", 3)]


@pytest.mark.parametrize("name, outputs", FAMILIES)
def test_every_family_runs_through_the_seam(name, outputs):
    torch.manual_seed(0)
    model = build_model(name)
    image = np.ascontiguousarray(read_photo("dog.jpg")[::4, ::4])  # (134, 200, 3)
    h, w = image.shape[:2]
    gen = MaskGenerator(model, points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0,
                        box_nms_thresh=1.0, output_mode="coco_rle")
    records = gen.generate(image)
    assert len(records) == 16 * outputs  # nothing filtered, nothing merged
    grid = {(round(x, 6), round(y, 6)) for x, y in gen.point_grids[0] * [w, h]}
    for r in records:
        assert r["segmentation"]["size"] == [h, w]
        assert r["area"] == int(mask_utils.area(r["segmentation"]))
        x, y, bw, bh = r["bbox"]
        assert 0 <= x and 0 <= y and x + bw <= w and y + bh <= h
        assert tuple(round(v, 6) for v in r["point_coords"][0]) in grid
        assert r["crop_box"] == [0, 0, w, h]


# --------------------------------------------------------------------------------------------
# Family options (hq_token_only): taken by SAM-HQ, refused by name elsewhere
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mobile_sam", "sam2.1_hiera_tiny", "efficient_sam_vitt"])
def test_hq_token_only_refused_by_families_without_it(name):
    from sam_model import DecoderOptionError
    model = build_model(name)
    msg = rf"^hq_token_only is not an option of {name}'s point decoder \(its options: [^\n]*\)$"
    with pytest.raises(DecoderOptionError, match=msg):
        MaskGenerator(model, hq_token_only=True)  # refused before any image is encoded
    with pytest.raises(DecoderOptionError, match=msg):  # checked before the embedding is read
        model.point_decoder(None, hq_token_only=True)
    MaskGenerator(model, hq_token_only=False)  # the default is every family's


def test_hq_token_only_reaches_the_sam_hq_decoder(monkeypatch):
    from sam_model.factored_hq_decoder import FactoredHQPointDecoder
    torch.manual_seed(0)
    model = build_model("sam_hq_vit_tiny")
    assert "hq_token_only" in model.decoder_options()
    seen = []
    decode = FactoredHQPointDecoder.decode

    def spy(self, *args, **kwargs):
        seen.append(self.hq_token_only)
        return decode(self, *args, **kwargs)
    monkeypatch.setattr(FactoredHQPointDecoder, "decode", spy)
    image = np.ascontiguousarray(read_photo("dog.jpg")[::8, ::8])
    for flag in (False, True):
        MaskGenerator(model, points_per_side=2, hq_token_only=flag).generate(image)
    assert seen == [False, True]
