"""The quality preset's steps that are not in the reference: reserve masks for the budget's
free places, zoomed refinement in crops, and hole filling. Exact values on hand-made masks,
and the generator on a real photo with the real weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from amg import MaskGenerator
from amg.dataset.cli import build_parser
from amg.config import AMGConfig, ConfigError
from amg.crops import generate_crop_boxes
from amg.mask_data import MaskData
from amg.ranking import rank_masks
from amg.refine import (REFINE_MIN_MASK_IOU, clean_kept_masks, fill_mask_holes,
                        refine_crop_for_box, refine_in_crops)
from amg.regions import fill_holes, remove_minor_islands
from amg.rle import area_from_rle, masks_to_rle, rle_to_mask, rle_with_list_counts

from .conftest import read_photo


# ------------------------------------------------------------------ hole filling
def test_fill_holes_by_hand():
    m = np.zeros((7, 8), dtype=bool)
    m[1:6, 1:6] = True
    m[3, 3] = False            # one-pixel hole: filled
    m[2:4, 5] = False          # notch open to the right (column 6 is background): stays
    out, changed = fill_holes(m)
    assert changed
    expected = m.copy()
    expected[3, 3] = True
    np.testing.assert_array_equal(out, expected)
    # A background region closed only by the image border is outside, not a hole.
    u = np.zeros((5, 5), dtype=bool)
    u[:, 0] = u[:, 4] = u[4, :] = True   # U open at the top border
    same, changed = fill_holes(u)
    assert not changed and same is u
    # 8-connectivity: a pocket touching the outside only diagonally is outside too.
    d = np.ones((5, 5), dtype=bool)
    d[0, 0] = False            # outside corner pixel (touches the border)
    d[1, 1] = False            # diagonal neighbour of it
    out, changed = fill_holes(d)
    assert not changed
    # A large hole is filled whatever its size (a ring).
    r = np.zeros((40, 40), dtype=bool)
    r[5:35, 5:35] = True
    r[8:32, 8:32] = False
    out, changed = fill_holes(r)
    assert changed and out[5:35, 5:35].all() and out.sum() == 900
    with pytest.raises(ValueError, match=r"shape \(H, W\)"):
        fill_holes(np.zeros((2, 2, 2), dtype=bool))


def test_fill_mask_holes_on_box_regions_equals_the_full_image():
    """fill_mask_holes works on each mask's box only; that must equal filling the whole image."""
    gen = torch.Generator().manual_seed(0)
    masks = torch.rand(12, 30, 41, generator=gen) > 0.45
    masks[0] = False
    masks[1, 10:20, 10:30] = True   # a solid block with holes cut out below
    masks[1, 13:15, 12:14] = False
    from torchvision.ops import masks_to_boxes
    rles = masks_to_rle(masks)
    boxes = torch.zeros(12, 4, dtype=torch.int64)
    for i in range(12):
        if masks[i].any():
            boxes[i] = masks_to_boxes(masks[i][None])[0].long()
    data = MaskData(rles=rles, boxes_xyxy=boxes, predicted_iou=torch.rand(12),
                    stability_score=torch.rand(12), points_xy=torch.zeros(12, 2, dtype=torch.float64),
                    crop_boxes_xyxy=torch.tensor([[0, 0, 41, 30]]).expand(12, 4).clone())
    out = fill_mask_holes(data)
    n_changed = 0
    for i in range(12):
        expected, changed = fill_holes(masks[i].numpy())
        n_changed += changed
        np.testing.assert_array_equal(rle_to_mask(out.rles[i]), expected)
    assert n_changed >= 5
    torch.testing.assert_close(out.boxes_xyxy, data.boxes_xyxy)


def test_remove_minor_islands_by_hand():
    m = np.zeros((20, 30), dtype=bool)
    m[2:12, 2:12] = True        # 100 px, the largest region
    m[15:18, 20:23] = True      # 9 px: 9% of the largest
    m[0:4, 25:28] = True        # 12 px: 12%
    m[19, 0] = True             # 1 px
    out, changed = remove_minor_islands(m, 0.1)
    assert changed
    expected = m.copy()
    expected[15:18, 20:23] = False
    expected[19, 0] = False
    np.testing.assert_array_equal(out, expected)
    # strict <: at exactly 12% of the largest the 12-px region stays
    assert remove_minor_islands(m, 0.12)[0][0:4, 25:28].all()
    # diagonal neighbours are one region (8-connectivity)
    d = np.zeros((6, 6), dtype=bool)
    d[0:3, 0:3] = True
    d[3, 3] = True
    same, changed = remove_minor_islands(d, 0.5)
    assert not changed and same is d
    assert remove_minor_islands(m, 0.0)[1] is False
    single = np.zeros((4, 4), dtype=bool)
    single[1, 1] = True
    assert remove_minor_islands(single, 0.9)[1] is False  # the largest always stays
    with pytest.raises(ValueError, match="area_frac"):
        remove_minor_islands(m, 1.0)


def test_clean_kept_masks_fills_then_drops_islands_and_shrinks_boxes():
    m = torch.zeros(2, 20, 30, dtype=torch.bool)
    m[0, 2:12, 2:12] = True
    m[0, 5, 5] = False             # a hole
    m[0, 15:17, 25:27] = True      # a 4-px island, far right: the box shrinks without it
    m[1, 3:6, 3:6] = True
    rles = masks_to_rle(m)
    boxes = torch.tensor([[2, 2, 26, 16], [3, 3, 5, 5]])
    data = MaskData(rles=rles, boxes_xyxy=boxes, predicted_iou=torch.tensor([0.9, 0.8]),
                    stability_score=torch.tensor([0.95, 0.9]),
                    points_xy=torch.zeros(2, 2, dtype=torch.float64),
                    crop_boxes_xyxy=torch.tensor([[0, 0, 30, 20]] * 2))
    out = clean_kept_masks(data, fill=True, island_frac=0.1)
    expected = np.zeros((20, 30), dtype=bool)
    expected[2:12, 2:12] = True
    np.testing.assert_array_equal(rle_to_mask(out.rles[0]), expected)
    assert out.boxes_xyxy.tolist() == [[2, 2, 11, 11], [3, 3, 5, 5]]
    assert out.rles[1] == rles[1]
    # holes only: the island and the box stay
    only = clean_kept_masks(data, fill=True, island_frac=0.0)
    assert rle_to_mask(only.rles[0])[5, 5] and rle_to_mask(only.rles[0])[15, 25]
    assert only.boxes_xyxy.tolist() == boxes.tolist()
    with pytest.raises(ValueError, match="island_frac"):
        clean_kept_masks(data, island_frac=-0.1)


# ------------------------------------------------------------------ reserve masks
def _ranking_fixture():
    """Five 10 x 10 masks: 0 whole image, 1 a 6 x 6 square in it, 2 a 2 x 2 in both,
    3 a 2 x 2 corner square, 4 a 3 x 3 square inside mask 1."""
    m = torch.zeros(5, 10, 10, dtype=torch.bool)
    m[0] = True
    m[1, 2:8, 2:8] = True
    m[2, 3:5, 3:5] = True
    m[3, 0:2, 8:10] = True
    m[4, 5:8, 5:8] = True
    return masks_to_rle(m), m.sum((1, 2)).numpy()


def test_rank_masks_with_reserve_by_hand():
    rles, areas = _ranking_fixture()
    iou = torch.tensor([0.90, 0.95, 0.99, 0.905, 0.97])
    # Masks 1 and 4 are reserve masks. Main masks 0, 2, 3; mask 2's depth counts main
    # containers only (mask 0: depth 1, not 2): scores 0.90, 0.94, 0.855.
    reserve = torch.tensor([False, True, False, False, True])
    assert rank_masks(rles, iou, areas, 2, 0.05, reserve).tolist() == [0, 2]
    # Three places: all main masks, whatever the reserve masks' predicted IoU.
    assert rank_masks(rles, iou, areas, 3, 0.05, reserve).tolist() == [0, 2, 3]
    # Four: the best reserve mask by its own score over all containers:
    # mask 1: 0.95 - 0.05 (in 0) = 0.90; mask 4: 0.97 - 0.10 (in 0 and 1) = 0.87.
    assert rank_masks(rles, iou, areas, 4, 0.05, reserve).tolist() == [0, 1, 2, 3]
    # Without the penalty: reserve masks by predicted IoU (4 before 1).
    assert rank_masks(rles, iou, areas, 4, 0.0, reserve).tolist() == [0, 2, 3, 4]
    # The main masks' selection is the one without any reserve mask.
    main = [0, 2, 3]
    for k in (1, 2):
        alone = rank_masks([rles[i] for i in main], iou[main], areas[main], k, 0.05).tolist()
        assert rank_masks(rles, iou, areas, k, 0.05, reserve).tolist() == [main[i] for i in alone]
    with pytest.raises(ValueError, match="reserve has 4 entries for 5 masks"):
        rank_masks(rles, iou, areas, 2, 0.05, reserve[:4])


@pytest.mark.parametrize("params, name", [
    ({"reserve_pred_iou_thresh": 0.7, "max_masks": 10}, "go together"),
    ({"reserve_stability_score_thresh": 0.7, "max_masks": 10}, "go together"),
    ({"reserve_pred_iou_thresh": 0.7, "reserve_stability_score_thresh": 0.8}, "max_masks"),
    ({"reserve_pred_iou_thresh": 1.5, "reserve_stability_score_thresh": 0.8, "max_masks": 5},
     "reserve_pred_iou_thresh"),
    ({"reserve_pred_iou_thresh": 0.5, "reserve_stability_score_thresh": "x", "max_masks": 5},
     "reserve_stability_score_thresh"),
    ({"refine_crop_n_layers": -1}, "refine_crop_n_layers"),
    ({"refine_crop_n_layers": 1.5}, "refine_crop_n_layers"),
    ({"fill_holes": 1}, "fill_holes"),
    ({"island_area_frac": 1.0}, "island_area_frac"),
    ({"island_area_frac": -0.1}, "island_area_frac"),
])
def test_config_checks_the_quality_levers(params, name):
    with pytest.raises(ConfigError, match=name):
        AMGConfig(**params)


def test_cli_flags_for_the_quality_levers():
    args = build_parser().parse_args(["x.jpg", "-o", "out", "--fill-holes",
                                      "--reserve-pred-iou-thresh", "0.7",
                                      "--refine-crop-n-layers", "2", "--island-area-frac", "0.1"])
    assert args.fill_holes is True and args.reserve_pred_iou_thresh == 0.7
    assert args.refine_crop_n_layers == 2 and args.island_area_frac == 0.1
    assert build_parser().parse_args(["x.jpg", "-o", "o", "--no-fill-holes"]).fill_holes is False
    assert build_parser().parse_args(["x.jpg", "-o", "o"]).fill_holes is None


def _records_key(recs):
    return [(r["segmentation"]["counts"], r["predicted_iou"]) for r in recs]


def test_generator_reserve_masks_only_fill_free_places(mobile_sam):
    """On a real photo: with reserve filters, the output holds exactly the main-filter output
    (same records, same order relative to each other) plus masks that pass only the looser
    filters, up to the budget."""
    image = read_photo("dog.jpg")
    params = dict(points_per_side=10, output_mode="coco_rle", pred_iou_thresh=0.88,
                  stability_score_thresh=0.95, nested_mask_penalty=0.03)
    main = MaskGenerator(mobile_sam, max_masks=100, **params).generate(image)
    loose = MaskGenerator(mobile_sam, max_masks=100, **{**params, "pred_iou_thresh": 0.7,
                                                        "stability_score_thresh": 0.85}).generate(image)
    both = MaskGenerator(mobile_sam, max_masks=100, reserve_pred_iou_thresh=0.7,
                         reserve_stability_score_thresh=0.85, **params).generate(image)
    assert len(loose) > len(main) >= 5
    keys = _records_key(both)
    main_keys = _records_key(main)
    assert [k for k in keys if k in main_keys] == main_keys
    extra = [r for r in both if _records_key([r])[0] not in main_keys]
    assert extra, "the photo has reserve masks at these thresholds"
    for r in extra:
        assert r["predicted_iou"] > 0.7 and r["stability_score"] >= 0.85
        assert not (r["predicted_iou"] > 0.88 and r["stability_score"] >= 0.95)
    # The records say which masks are reserve fillers (the main-filter run has no such key).
    assert all("reserve" not in r for r in main)
    assert [r["reserve"] for r in both] == [_records_key([r])[0] not in main_keys for r in both]
    # With a budget of exactly the main count, no reserve mask gets in.
    tight = MaskGenerator(mobile_sam, max_masks=len(main), reserve_pred_iou_thresh=0.7,
                          reserve_stability_score_thresh=0.85, **params).generate(image)
    assert [r.pop("reserve") for r in tight] == [False] * len(main)
    assert tight == main
    # Two places more: exactly two reserve masks, the main ones all kept.
    plus2 = MaskGenerator(mobile_sam, max_masks=len(main) + 2, reserve_pred_iou_thresh=0.7,
                          reserve_stability_score_thresh=0.85, **params).generate(image)
    assert len(plus2) == len(main) + 2
    assert [k for k in _records_key(plus2) if k in main_keys] == main_keys


# ------------------------------------------------------------------ zoomed refinement
def test_refine_crop_for_box_by_hand():
    boxes, layers = generate_crop_boxes((600, 800), 2, 512 / 1500)
    # layer 1: 2 x 2 crops of 502 x 402 (overlap 204); layer 2: 4 x 4 crops of 277 x 227
    assert boxes[1] == [0, 0, 502, 402] and boxes[5] == [0, 0, 277, 227]
    # A 20 x 20 box near the top-left corner: deepest layer (2), the crop nearest its centre.
    c = refine_crop_for_box([10, 10, 29, 29], boxes, layers, (600, 800))
    assert layers[c] == 2 and boxes[c] == [0, 0, 277, 227]
    # A box too big for any layer-2 crop but inside a layer-1 crop.
    c = refine_crop_for_box([20, 20, 400, 300], boxes, layers, (600, 800))
    assert layers[c] == 1 and boxes[c] == [0, 0, 502, 402]
    # The margin counts: 15% of the longer side (here 57 px) must fit as well.
    assert refine_crop_for_box([100, 100, 479, 299], boxes, layers, (600, 800)) is None
    # Nothing but the whole image holds a box that spans it.
    assert refine_crop_for_box([0, 0, 799, 599], boxes, layers, (600, 800)) is None


def test_refine_in_crops_on_a_real_photo(mobile_sam):
    """Every replaced mask agrees with the old one (mask IoU >= 0.7) and has a predicted IoU at
    least as high; every other mask is unchanged; points and order are kept."""
    from amg.generator import MaskGenerator as Gen
    image = read_photo("groceries.jpg")
    gen = Gen(mobile_sam, points_per_side=8, pred_iou_thresh=0.8, stability_score_thresh=0.9)
    data = gen.generate_mask_data(image)
    assert len(data) >= 8
    out = refine_in_crops(mobile_sam, image, data, 2, 512 / 1500)
    assert len(out) == len(data)
    torch.testing.assert_close(out.points_xy, data.points_xy)
    n_replaced = 0
    for i in range(len(data)):
        old = rle_to_mask(data.rles[i])
        new = rle_to_mask(out.rles[i])
        if rle_with_list_counts(out.rles[i]) == rle_with_list_counts(data.rles[i]):
            assert float(out.predicted_iou[i]) == float(data.predicted_iou[i])
            continue
        n_replaced += 1
        iou = (old & new).sum() / (old | new).sum()
        assert iou >= REFINE_MIN_MASK_IOU
        assert float(out.predicted_iou[i]) >= float(data.predicted_iou[i])
        ys, xs = np.nonzero(new)
        assert out.boxes_xyxy[i].tolist() == [xs.min(), ys.min(), xs.max(), ys.max()]
        assert area_from_rle(out.rles[i]) == int(new.sum())
        assert 0.0 <= float(out.stability_score[i]) <= 1.0
    assert 0 < n_replaced < len(data)
    with pytest.raises(ValueError, match="n_layers must be >= 1"):
        refine_in_crops(mobile_sam, image, data, 0, 512 / 1500)


def test_generator_with_refinement_and_hole_filling(mobile_sam):
    """The generator's last steps are refinement, hole filling and island removal of the
    budget's masks."""
    image = read_photo("groceries.jpg")
    params = dict(points_per_side=8, pred_iou_thresh=0.8, stability_score_thresh=0.9,
                  max_masks=20, nested_mask_penalty=0.03)
    base = MaskGenerator(mobile_sam, **params).generate_mask_data(image)
    both = MaskGenerator(mobile_sam, refine_crop_n_layers=1, fill_holes=True, island_area_frac=0.1,
                         **params).generate_mask_data(image)
    expected = clean_kept_masks(refine_in_crops(mobile_sam, image, base, 1, 512 / 1500), True, 0.1)
    assert ([rle_with_list_counts(r) for r in both.rles]
            == [rle_with_list_counts(r) for r in expected.rles])
    torch.testing.assert_close(both.predicted_iou, expected.predicted_iou)
    torch.testing.assert_close(both.boxes_xyxy, expected.boxes_xyxy)
    segs = [mask_utils.frPyObjects(r, *r["size"]) for r in both.rles]
    assert all(mask_utils.area(s) > 0 for s in segs)


def test_generator_reserve_with_crop_layers_keeps_the_main_masks(mobile_sam):
    """With a crop layer, the cross-crop NMS also puts main masks first: the main-filter output
    is contained, in order, in the output with reserve masks."""
    image = read_photo("dog.jpg")
    params = dict(points_per_side=6, crop_n_layers=1, output_mode="coco_rle",
                  pred_iou_thresh=0.88, stability_score_thresh=0.95, max_masks=100)
    main = MaskGenerator(mobile_sam, **params).generate(image)
    both = MaskGenerator(mobile_sam, reserve_pred_iou_thresh=0.6,
                         reserve_stability_score_thresh=0.8, **params).generate(image)
    main_keys = _records_key(main)
    assert len(main) >= 3 and len(both) > len(main)
    assert [k for k in _records_key(both) if k in main_keys] == main_keys
