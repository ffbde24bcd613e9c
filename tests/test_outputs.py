"""Output writers, polygons and record filters on small hand-made masks (exact, fast).

Each fast function is checked against a slow, obvious computation written here: per-pixel
loops for the label map, brute-force greedy suppression for mask NMS, pycocotools decoding for
the polygons.
"""

from __future__ import annotations

import csv
import json

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from amg.outputs import (METADATA_HEADER, OutputPaths, assemble_coco, coco_annotations,
                         coco_json, decode_mask, label_map, mask_colors, metadata_rows,
                         outline_thickness, overlay_image, write_coco, write_image_outputs)
from amg.polygons import mask_to_polygons
from amg.record_filters import apply_record_filters, filter_by_area, mask_nms
from amg.rle import mask_to_coco_rle

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def record(mask: np.ndarray, iou: float = 0.9, stability: float = 0.96) -> dict:
    """A mask record like the generator's (COCO RLE, the reference's bbox convention)."""
    ys, xs = np.nonzero(mask)
    return {"segmentation": mask_to_coco_rle(mask), "area": int(mask.sum()),
            "bbox": [int(xs.min()), int(ys.min()), int(xs.max() - xs.min()), int(ys.max() - ys.min())],
            "predicted_iou": iou, "point_coords": [[float(xs.mean()), float(ys.mean())]],
            "stability_score": stability, "crop_box": [0, 0, mask.shape[1], mask.shape[0]]}


def box_mask(hw, x0, y0, x1, y1) -> np.ndarray:
    m = np.zeros(hw, bool)
    m[y0:y1, x0:x1] = True
    return m


def random_blob(rng, hw, sigma=None, level=None) -> np.ndarray:
    noise = rng.random(hw).astype(np.float32)
    sigma = float(rng.uniform(0.7, 3.0)) if sigma is None else sigma
    level = float(rng.uniform(0.4, 0.6)) if level is None else level
    return cv2.GaussianBlur(noise, (0, 0), sigma) > level


def decode_polygons(polygons, h, w) -> np.ndarray:
    if not polygons:
        return np.zeros((h, w), bool)
    return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polygons, h, w))).astype(bool)


# --------------------------------------------------------------------------------------------
# Polygons
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_polygons_decode_back_exactly(seed):
    # Random blobs with islands and holes (of every size: min_area=0 keeps all of them).
    rng = np.random.default_rng(seed)
    for _ in range(20):
        h, w = (int(v) for v in rng.integers(3, 70, 2))
        m = random_blob(rng, (h, w))
        polygons = mask_to_polygons(m, min_area=0)
        assert all(len(p) >= 6 and len(p) % 2 == 0 for p in polygons)
        np.testing.assert_array_equal(decode_polygons(polygons, h, w), m)


def test_polygon_holes_are_cut_not_filled():
    m = box_mask((30, 40), 2, 2, 38, 28)
    m[6:12, 5:15] = False          # a hole
    m[15:25, 20:35] = False        # a second hole ...
    m[18:22, 24:30] = True         # ... with an island inside it
    polygons = mask_to_polygons(m)
    assert len(polygons) == 2      # outer ring with both holes bridged in, and the island
    np.testing.assert_array_equal(decode_polygons(polygons, 30, 40), m)
    # One polygon per fragment: the holes do not appear as polygons of their own (COCO would
    # union them and fill the holes).
    decoded_each = [decode_polygons([p], 30, 40) for p in polygons]
    assert not decoded_each[0][8, 8] and not decoded_each[0][16, 21]


def test_polygon_tolerance_drops_tiny_fragments_and_fills_tiny_holes():
    m = box_mask((20, 30), 3, 3, 15, 15)
    m[8, 8] = False                 # one-pixel hole: filled (0.25 px² < 2)
    m[18, 25] = True                # one-pixel fragment: dropped
    m[2:4, 20:22] = True            # 2 x 2 fragment: kept (2.25 px²)
    polygons = mask_to_polygons(m)
    expected = m.copy()
    expected[8, 8] = True
    expected[18, 25] = False
    np.testing.assert_array_equal(decode_polygons(polygons, 20, 30), expected)
    assert mask_to_polygons(m, min_area=0) != polygons
    assert mask_to_polygons(np.zeros((5, 5), bool)) == []
    assert mask_to_polygons(box_mask((5, 5), 2, 2, 3, 3)) == []  # a lone pixel: nothing left
    with pytest.raises(ValueError, match="min_area"):
        mask_to_polygons(m, min_area=-1)
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        mask_to_polygons(np.zeros((2, 2, 2)))


def test_polygon_vertices_are_corners_only():
    # A rectangle is 4 vertices (the pixel chain's straight runs are compressed), a quarter
    # pixel inside the pixel edges.
    (poly,) = mask_to_polygons(box_mask((10, 10), 2, 3, 7, 9))
    xs, ys = poly[0::2], poly[1::2]
    assert len(poly) == 8
    assert (min(xs), max(xs), min(ys), max(ys)) == (2.25, 6.75, 3.25, 8.75)


# --------------------------------------------------------------------------------------------
# Record filters
# --------------------------------------------------------------------------------------------


def test_filter_by_area_bounds_inclusive():
    recs = [record(box_mask((10, 10), 0, 0, k, 1)) for k in (1, 3, 5, 7)]  # areas 1, 3, 5, 7
    assert [r["area"] for r in filter_by_area(recs, 3, 5)] == [3, 5]
    assert [r["area"] for r in filter_by_area(recs, min_area=4)] == [5, 7]
    assert [r["area"] for r in filter_by_area(recs, max_area=1)] == [1]
    assert filter_by_area(recs) == recs
    with pytest.raises(ValueError, match="min_area"):
        filter_by_area(recs, 5, 3)


def slow_greedy_mask_nms(masks, ious, thresh):
    def iou(a, b):
        return (a & b).sum() / (a | b).sum()
    order = sorted(range(len(masks)), key=lambda i: (-ious[i], i))
    kept = []
    for i in order:
        if all(iou(masks[i], masks[j]) <= thresh for j in kept):
            kept.append(i)
    return sorted(kept)


@pytest.mark.parametrize("seed", range(4))
def test_mask_nms_matches_slow_greedy(seed):
    rng = np.random.default_rng(seed)
    base = [random_blob(rng, (40, 50), sigma=4.0, level=0.5) for _ in range(4)]
    masks = []
    for b in base:  # near-duplicates of each base mask, and the base itself
        masks.append(b)
        for _ in range(2):
            m = b.copy()
            m[rng.integers(0, 40, 60), rng.integers(0, 50, 60)] ^= True
            masks.append(m)
    masks = [m for m in masks if m.any()]
    ious = [float(v) for v in rng.choice(np.linspace(0.8, 1.0, 5), len(masks))]  # ties included
    recs = [record(m, iou) for m, iou in zip(masks, ious)]
    for thresh in (0.5, 0.8, 0.95, 1.0):
        kept = mask_nms(recs, thresh)
        expected = slow_greedy_mask_nms(masks, ious, thresh)
        assert [recs.index(r) for r in kept] == expected


def test_mask_nms_at_threshold_keeps_and_orders():
    a = box_mask((10, 10), 0, 0, 4, 5)     # 20 px
    b = box_mask((10, 10), 0, 0, 5, 5)     # 25 px, IoU(a, b) = 0.8 exactly
    recs = [record(a, 0.90), record(b, 0.95)]
    assert mask_nms(recs, 0.8) == recs                # IoU not above the threshold: both kept
    assert mask_nms(recs, 0.79) == [recs[1]]          # the higher predicted IoU wins
    assert mask_nms([], 0.5) == [] and mask_nms(recs[:1], 0.5) == recs[:1]
    with pytest.raises(ValueError, match="mask_nms_thresh"):
        mask_nms(recs, 0.0)
    # Area first, then NMS: b is too big, so it cannot suppress a.
    assert apply_record_filters(recs, max_area=20, mask_nms_thresh=0.5) == [recs[0]]


# --------------------------------------------------------------------------------------------
# Label map, colours, overlay
# --------------------------------------------------------------------------------------------


def slow_label_map(masks) -> np.ndarray:
    """Per pixel: 1 + index of the smallest covering mask (ties: lowest index), 0 if none."""
    h, w = masks[0].shape
    out = np.zeros((h, w), np.uint16)
    for y in range(h):
        for x in range(w):
            best = None
            for i, m in enumerate(masks):
                if m[y, x] and (best is None or m.sum() < masks[best].sum()):
                    best = i
            out[y, x] = 0 if best is None else best + 1
    return out


def test_label_map_smallest_mask_wins_ties_to_earlier():
    hw = (12, 16)
    masks = [box_mask(hw, 0, 0, 16, 12),      # whole image, area 192
             box_mask(hw, 2, 2, 8, 8),        # 36
             box_mask(hw, 5, 5, 11, 11),      # 36: ties with the previous one
             box_mask(hw, 6, 6, 7, 7),        # 1
             box_mask(hw, 12, 0, 16, 3)]      # 12
    labels = label_map([record(m) for m in masks], hw)
    assert labels.dtype == np.uint16 and labels.shape == hw
    np.testing.assert_array_equal(labels, slow_label_map(masks))
    assert labels[6, 6] == 4 and labels[5, 5] == 2 and labels[9, 9] == 3 and labels[0, 0] == 1


@pytest.mark.parametrize("seed", range(3))
def test_label_map_random_matches_slow(seed):
    rng = np.random.default_rng(seed)
    hw = (20, 24)
    masks = [m for m in (random_blob(rng, hw) for _ in range(6)) if m.any()]
    np.testing.assert_array_equal(label_map([record(m) for m in masks], hw), slow_label_map(masks))
    assert not label_map([], hw).any()


def test_mask_colors_distinct_and_stable():
    for n in (0, 1, 7, 300, 2000):
        c = mask_colors(n)
        assert c.shape == (n, 3) and c.dtype == np.uint8
        assert len({tuple(v) for v in c}) == n
    np.testing.assert_array_equal(mask_colors(50)[:10], mask_colors(10))


def border_band(mask: np.ndarray) -> np.ndarray:
    """Mask pixels with a 4-neighbour outside the mask (the image edge counts as outside)."""
    padded = np.pad(mask.astype(np.uint8), 1)
    inner = cv2.erode(padded, cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3)))[1:-1, 1:-1]
    return mask & ~inner.astype(bool)


def test_overlay_tints_by_smallest_mask_and_outlines():
    rng = np.random.default_rng(3)
    hw = (40, 60)
    image = rng.integers(0, 256, (*hw, 3), dtype=np.uint8)
    masks = [box_mask(hw, 5, 5, 50, 35), box_mask(hw, 10, 10, 25, 25), random_blob(rng, hw, 3.0, 0.55)]
    recs = [record(m) for m in masks]
    assert outline_thickness(hw) == 1
    out = overlay_image(image, recs)
    assert out.shape == image.shape and out.dtype == np.uint8
    labels = slow_label_map(masks)
    colors = mask_colors(len(masks)).astype(np.int64)
    band = np.zeros(hw, bool)
    for m in masks:
        band |= border_band(m)
    # Away from outlines: the photo where no mask is, else photo and colour half and half.
    expected = image.astype(np.int64)
    covered = labels > 0
    expected[covered] = (expected[covered] + colors[labels[covered] - 1] + 1) // 2
    np.testing.assert_array_equal(out[~band], expected[~band])
    # Outlines: drawn in the masks' own colours.
    on_band = out[band].astype(np.int64)
    is_color = (on_band[:, None, :] == colors[None, :, :]).all(axis=2).any(axis=1)
    assert is_color.mean() > 0.95
    # Each mask's own colour is visible on its outline.
    for i, m in enumerate(masks):
        own = (out[border_band(m)].astype(np.int64) == colors[i]).all(axis=1)
        assert own.any(), i
    with pytest.raises(ValueError, match="uint8"):
        overlay_image(image.astype(np.float32), recs)


# --------------------------------------------------------------------------------------------
# COCO and the PNG layout
# --------------------------------------------------------------------------------------------


def test_coco_annotations_and_file_load(tmp_path):
    hw = (30, 40)
    m1 = box_mask(hw, 3, 4, 20, 25)
    m1[10:15, 8:12] = False  # a hole
    m2 = box_mask(hw, 30, 0, 31, 1)  # one pixel
    recs = [record(m1, 0.93, 0.97), record(m2, 0.91, 0.99)]
    rle_anns = coco_annotations(recs, "rle")
    poly_anns = coco_annotations(recs, "polygon")
    assert len(rle_anns) == 2 and len(poly_anns) == 1  # the lone pixel has no polygon
    a = rle_anns[0]
    assert a["area"] == int(m1.sum()) and a["iscrowd"] == 0
    assert a["bbox"] == [3, 4, 17, 21]  # COCO: w, h = columns, rows (the record says 16, 20)
    assert a["score"] == 0.93 and a["stability_score"] == 0.97
    assert rle_anns[1]["bbox"] == [30, 0, 1, 1] and rle_anns[1]["area"] == 1
    assert all("reserve" not in a for a in rle_anns)
    # Records of a generator with reserve filters carry the flag into the annotations.
    flagged = [dict(recs[0], reserve=False), dict(recs[1], reserve=True)]
    assert [a["reserve"] for a in coco_annotations(flagged, "rle")] == [False, True]
    images = [{"id": 1, "file_name": "a.jpg", "width": 40, "height": 30},
              {"id": 3, "file_name": "sub/b.png", "width": 40, "height": 30}]
    for anns in (rle_anns, poly_anns):
        path = tmp_path / "instances.json"
        # streamed from a generator, byte for byte the in-memory assembly
        assert write_coco(path, images, (a for a in [anns, anns]), "thing") == 2 * len(anns)
        assert path.read_text() == coco_json(assemble_coco(images, [anns, anns], "thing"))
        assert [p.name for p in tmp_path.iterdir()] == ["instances.json"]
        api = COCO(str(path))
        assert api.getCatIds() == [1] and api.loadCats(1)[0]["name"] == "thing"
        assert sorted(api.getImgIds()) == [1, 3]
        ann_ids = api.getAnnIds()
        assert ann_ids == list(range(1, 2 * len(anns) + 1))
        for ann in api.loadAnns(ann_ids):
            m = api.annToMask(ann)
            assert int(m.sum()) == ann["area"]
            ys, xs = np.nonzero(m)
            assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        np.testing.assert_array_equal(api.annToMask(api.loadAnns(1)[0]), m1)
    with pytest.raises(ValueError, match="segmentation"):
        coco_annotations(recs, "mask")


def test_write_image_outputs_layout(tmp_path):
    rng = np.random.default_rng(0)
    hw = (16, 20)
    image = rng.integers(0, 256, (*hw, 3), dtype=np.uint8)
    masks = [box_mask(hw, 0, 0, 10, 10), box_mask(hw, 5, 5, 15, 12)]
    recs = [record(m) for m in masks]
    paths = OutputPaths(tmp_path)
    folder = paths.png_dir("img")
    folder.mkdir(parents=True)
    (folder / "7.png").write_bytes(b"stale")   # from an earlier run with more masks
    write_image_outputs(paths, "img", image, recs, ["json", "png", "labelmap", "overlay"])
    assert json.loads(paths.json("img").read_text()) == recs
    assert sorted(p.name for p in folder.iterdir()) == ["0.png", "1.png", "metadata.csv"]
    for i, m in enumerate(masks):
        png = cv2.imread(str(folder / f"{i}.png"), cv2.IMREAD_UNCHANGED)
        assert png.dtype == np.uint8 and set(np.unique(png)) == {0, 255}
        np.testing.assert_array_equal(png == 255, m)
    with open(folder / "metadata.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == METADATA_HEADER == (
        "id,area,bbox_x0,bbox_y0,bbox_w,bbox_h,point_input_x,point_input_y,predicted_iou,"
        "stability_score,crop_box_x0,crop_box_y0,crop_box_w,crop_box_h").split(",")
    assert rows[1:] == metadata_rows(recs)
    assert rows[2][:6] == ["1", "70", "5", "5", "9", "6"]
    # Records with the reserve flag (reserve filters) get one more column.
    flagged = [dict(recs[0], reserve=False), dict(recs[1], reserve=True)]
    write_image_outputs(paths, "img", image, flagged, ["png"])
    with open(folder / "metadata.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == METADATA_HEADER + ["reserve"]
    assert [r[-1] for r in rows[1:]] == ["False", "True"] and rows[1][:-1] == metadata_rows(recs)[0]
    lm = cv2.imread(str(paths.labelmap("img")), cv2.IMREAD_UNCHANGED)
    assert lm.dtype == np.uint16
    np.testing.assert_array_equal(lm, slow_label_map(masks))
    ov = cv2.imread(str(paths.overlay("img")), cv2.IMREAD_UNCHANGED)[..., ::-1]
    np.testing.assert_array_equal(ov, overlay_image(image, recs))
    with pytest.raises(ValueError, match="unknown output format"):
        write_image_outputs(paths, "img", image, recs, ["jpeg"])


def test_decode_mask_accepts_str_and_bytes():
    m = box_mask((5, 7), 1, 1, 4, 3)
    rle = mask_to_coco_rle(m)
    np.testing.assert_array_equal(decode_mask(rle), m)
    np.testing.assert_array_equal(decode_mask({**rle, "counts": rle["counts"].encode()}), m)
