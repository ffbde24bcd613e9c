"""Label Studio writer (:mod:`amg.dataset.label_studio`) on hand-made masks: the brush RLE
against label-studio-converter's encoder and decoder (byte for byte), the results of both
segmentation kinds back to pixels, the task and the labelling config.

The real server round trip is tests/dataset/test_label_studio_server.py.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from amg.dataset.label_studio import (brush_rle_encode, image_url, label_studio_results,
                                      label_studio_task, labeling_config, local_files_url,
                                      mask_to_brush_rle, write_label_studio_tasks)
from amg.dataset.polygons import mask_to_polygons

from .mask_cases import box_mask, random_blob, record

brush = pytest.importorskip("label_studio_converter.brush", reason="the oracle needs the test extra")

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def runs_array(rng, lengths, values) -> np.ndarray:
    return np.repeat(np.asarray(values, np.uint8), lengths)


# Run lengths at every width boundary of the codec (1; 8/9; 16/17; 256/257; 65536/65537; more
# than two pieces of 65536, with a remainder of 1).
BOUNDARY_LENGTHS = [1, 2, 7, 8, 9, 15, 16, 17, 255, 256, 257, 65535, 65536, 65537, 2 * 65536 + 1]


@pytest.mark.parametrize("length", BOUNDARY_LENGTHS)
def test_brush_rle_run_lengths_match_converter(length):
    rng = np.random.default_rng(length)
    values = np.concatenate([[3], np.full(length, 200, np.uint8), [4, 4], rng.integers(0, 256, 5)])
    ours = brush_rle_encode(values.astype(np.uint8))
    assert ours == brush.encode_rle(values.astype(np.uint8))
    np.testing.assert_array_equal(brush.decode_rle(bytes(ours)), values)


@pytest.mark.parametrize("seed", range(4))
def test_brush_rle_random_arrays_match_converter(seed):
    rng = np.random.default_rng(seed)
    n_runs = int(rng.integers(1, 400))
    lengths = rng.choice([1, 1, 2, 5, 9, 17, 300, 70000], n_runs)
    values = runs_array(rng, lengths, rng.integers(0, 256, n_runs))
    ours = brush_rle_encode(values)
    assert all(0 <= b <= 255 for b in ours)
    assert ours == brush.encode_rle(values)
    np.testing.assert_array_equal(brush.decode_rle(bytes(ours)), values)


@pytest.mark.parametrize("seed", range(3))
def test_mask_to_brush_rle_is_converter_mask2rle(seed):
    rng = np.random.default_rng(seed)
    hw = (37, 53)
    for mask in (random_blob(rng, hw), box_mask(hw, 0, 0, 53, 37), np.zeros(hw, bool),
                 box_mask(hw, 52, 36, 53, 37)):
        ours = mask_to_brush_rle(mask)
        assert ours == brush.mask2rle(mask.astype(np.uint8) * 255)
        rgba = brush.decode_rle(bytes(ours)).reshape(*hw, 4)
        np.testing.assert_array_equal(rgba[..., 3] > 0, mask)
        assert set(np.unique(rgba)) <= {0, 255}


def test_brush_rle_errors():
    with pytest.raises(ValueError, match="1-d"):
        brush_rle_encode(np.zeros((2, 2), np.uint8))
    with pytest.raises(ValueError, match=r"\[0, 255\]"):
        brush_rle_encode(np.array([0, 256]))
    with pytest.raises(ValueError, match="shape"):
        mask_to_brush_rle(np.zeros(4, bool))
    # an empty array: the header alone (count 0), padded to whole bytes
    assert brush_rle_encode(np.zeros(0, np.uint8))[:4] == [0, 0, 0, 0]


def poly_pixels(points_pct, hw) -> np.ndarray:
    """Label Studio polygon points (percent) back to pixels by COCO's parity rasterisation."""
    h, w = hw
    xy = (np.asarray(points_pct, np.float64) * (w / 100.0, h / 100.0)).ravel().tolist()
    return mask_utils.decode(mask_utils.frPyObjects([xy], h, w))[..., 0].astype(bool)


def test_results_brush_and_polygon_give_back_the_pixels():
    rng = np.random.default_rng(7)
    hw = (40, 60)
    ring = box_mask(hw, 5, 5, 30, 30) & ~box_mask(hw, 12, 12, 20, 20)  # a hole
    two = box_mask(hw, 35, 2, 45, 10) | box_mask(hw, 48, 20, 58, 38)  # two fragments
    masks = [ring, two, random_blob(rng, hw, 1.5, 0.55)]
    recs = [record(m, iou=0.8 + 0.05 * i) for i, m in enumerate(masks)]

    rle = label_studio_results(recs, hw, "rle", "cat")
    assert [r["id"] for r in rle] == ["m0", "m1", "m2"]
    for r, m, rec in zip(rle, masks, recs):
        assert r["type"] == "brushlabels" and r["from_name"] == "label" and r["to_name"] == "image"
        assert (r["original_width"], r["original_height"], r["image_rotation"]) == (60, 40, 0)
        assert r["score"] == rec["predicted_iou"]
        assert r["value"]["format"] == "rle" and r["value"]["brushlabels"] == ["cat"]
        np.testing.assert_array_equal(brush.decode_rle(bytes(r["value"]["rle"])).reshape(40, 60, 4)[..., 3] > 0, m)

    poly = label_studio_results(recs, hw, "polygon", "cat", min_polygon_area=0)
    by_mask: dict[str, list] = {}
    for r in poly:
        assert r["type"] == "polygonlabels" and r["value"]["closed"] is True
        assert r["value"]["polygonlabels"] == ["cat"]
        pts = np.asarray(r["value"]["points"])
        assert pts.shape[1] == 2 and (pts >= 0).all() and (pts <= 100).all()
        by_mask.setdefault(r["id"].split("-")[0], []).append(r)
    assert [r["id"] for r in by_mask["m1"]] == ["m1-0", "m1-1"]  # one result per fragment
    for i, m in enumerate(masks):
        union = np.zeros(hw, bool)
        for r in by_mask[f"m{i}"]:
            union |= poly_pixels(r["value"]["points"], hw)
        expected = np.zeros(hw, bool)
        for p in mask_to_polygons(m, 0):
            expected |= mask_utils.decode(mask_utils.frPyObjects([p], *hw))[..., 0].astype(bool)
        np.testing.assert_array_equal(union, expected)
        np.testing.assert_array_equal(union, m)  # tolerance 0: every pixel kept

    with pytest.raises(ValueError, match="segmentation"):
        label_studio_results(recs, hw, "bitmap")
    with pytest.raises(ValueError, match="image size"):
        label_studio_results(recs, (40, 61))


def test_task_config_and_urls(tmp_path):
    hw = (10, 12)
    recs = [record(box_mask(hw, 1, 1, 5, 5), iou=0.9), record(box_mask(hw, 6, 2, 11, 9), iou=0.7)]
    results = label_studio_results(recs, hw)
    task = label_studio_task("/img/a b.jpg", results, [0.9, 0.7], "segment-everything/mobile_sam")
    assert task["data"] == {"image": "/img/a b.jpg"}
    (pred,) = task["predictions"]
    assert pred["model_version"] == "segment-everything/mobile_sam"
    assert pred["score"] == pytest.approx(0.8) and pred["result"] == results
    assert label_studio_task("u", [], [], "m")["predictions"][0]["score"] == 0.0

    for kind, tag in (("rle", "BrushLabels"), ("polygon", "PolygonLabels")):
        root = ET.fromstring(labeling_config('a "cat" & <dog>', kind))
        image = root.find("Image")
        labels = root.find(tag)
        assert image.get("name") == "image" and image.get("value") == "$image"
        assert labels.get("name") == "label" and labels.get("toName") == "image"
        assert [x.get("value") for x in labels.findall("Label")] == ['a "cat" & <dog>']
    with pytest.raises(ValueError):
        labeling_config("x", "mask")

    assert image_url("sub dir/a#1.jpg", "/data/local-files/?d=in/") == "/data/local-files/?d=in/sub%20dir/a%231.jpg"
    assert image_url("x.png", "https://h/i/") == "https://h/i/x.png"
    assert local_files_url(tmp_path / "my photos") == "/data/local-files/?d=my%20photos/"

    path = tmp_path / "tasks.json"
    assert write_label_studio_tasks(path, iter([task, task])) == 2
    assert json.loads(path.read_text()) == [task, task]
    assert write_label_studio_tasks(path, iter([])) == 0 and json.loads(path.read_text()) == []
