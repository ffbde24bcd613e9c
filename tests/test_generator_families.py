"""The generator drives every model family through the decoder seam alone: SAM 2.1, SAM-HQ and
EfficientSAM (random weights, seeded) on a real photo, with the filters off so every decoded
output reaches the records."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from amg import AMGConfig, MaskGenerator
from amg.config import ConfigError
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


def test_sam2_model_gets_the_official_sam2_generator_defaults():
    torch.manual_seed(0)
    model = build_model("sam2.1_hiera_tiny")
    cfg = MaskGenerator(model).config
    assert (cfg.pred_iou_thresh, cfg.mask_threshold, cfg.multimask_output, cfg.use_m2m) == \
        (0.8, 0.0, True, False)
    # explicit values win, in the keyword parameters and in a given config
    cfg = MaskGenerator(model, AMGConfig(pred_iou_thresh=0.88, use_m2m=True),
                        multimask_output=False, mask_threshold=0.5).config
    assert (cfg.pred_iou_thresh, cfg.mask_threshold, cfg.multimask_output, cfg.use_m2m) == \
        (0.88, 0.5, False, True)
    assert MaskGenerator(build_model("mobile_sam")).config.pred_iou_thresh == 0.88


@pytest.mark.parametrize("name, option", [("mobile_sam", "use_m2m"),
                                          ("mobile_sam", "multimask_output"),
                                          ("efficient_sam_vitt", "use_m2m")])
def test_option_a_family_lacks_is_refused_naming_option_and_model(name, option):
    model = build_model(name)
    with pytest.raises(ConfigError) as ei:
        MaskGenerator(model, **{option: True})
    msg = str(ei.value)
    assert "\n" not in msg and msg.startswith(f"{option} is not an option of {name}")
    MaskGenerator(model, **{option: None})  # unset: the family's own behaviour


def test_mask_threshold_moves_the_binarisation():
    """A higher mask threshold gives the same prompts' masks inside the default ones."""
    torch.manual_seed(0)
    model = build_model("sam2.1_hiera_tiny")
    image = np.ascontiguousarray(read_photo("dog.jpg")[::4, ::4])
    params = dict(points_per_side=3, pred_iou_thresh=0.0, stability_score_thresh=0.0,
                  box_nms_thresh=1.0, output_mode="coco_rle")
    low = MaskGenerator(model, **params).generate(image)
    high = MaskGenerator(model, mask_threshold=1.0, **params).generate(image)
    by_key = {(tuple(r["point_coords"][0]), round(r["predicted_iou"], 6)): r for r in low}
    assert len(high) > 0 and sum(r["area"] for r in high) < sum(r["area"] for r in low)
    for r in high:
        ref = by_key[(tuple(r["point_coords"][0]), round(r["predicted_iou"], 6))]
        inter = mask_utils.area(mask_utils.merge([r["segmentation"], ref["segmentation"]], 1))
        assert inter == r["area"] <= ref["area"]


# --------------------------------------------------------------------------------------------
# Family options (hq_token_only): taken by SAM-HQ, refused by name elsewhere
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mobile_sam", "sam2.1_hiera_tiny", "efficient_sam_vitt"])
def test_hq_token_only_refused_by_families_without_it(name):
    from sam_model import DecoderOptionError
    model = build_model(name)
    msg = rf"^hq_token_only is not an option of {name}'s point decoder \(its options: [^\n]*\)$"
    with pytest.raises(ConfigError, match=msg):
        MaskGenerator(model, hq_token_only=True)  # refused before any image is encoded
    with pytest.raises(DecoderOptionError, match=msg):  # checked before the embedding is read
        model.point_decoder(None, hq_token_only=True)
    MaskGenerator(model, hq_token_only=None)  # unset: the family's own behaviour


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
