"""YOLO segmentation labels read back by supervision's YOLO loader, and our records through
``supervision.Detections.from_sam`` and its ``MaskAnnotator``.

Real photos with the real MobileSAM weights on an 8 x 8 grid.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil

import numpy as np
import pytest
import yaml
from pycocotools import mask as mask_utils

from amg.dataset.cli import main
from amg.dataset.outputs import decode_mask
from amg.dataset.polygons import DEFAULT_MIN_POLYGON_AREA, mask_to_polygons
from amg.dataset.yolo import data_yaml, yolo_label_text

from ..conftest import read_photo, shared_path
from .mask_cases import box_mask, record

sv = pytest.importorskip("supervision", reason="the reader needs the test extra")

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

PHOTOS = ("dog.jpg", "groceries.jpg")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    base = tmp_path_factory.mktemp("yolo")
    photos = base / "photos"
    photos.mkdir()
    for n in PHOTOS:
        shutil.copy(shared_path("images", n), photos / n)
    out = base / "out"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(io.StringIO()):
        rc = main([str(photos), "-o", str(out), "--format", "json,yolo", "--points-per-side", "8",
                   "--threads", "1", "--no-progress"])
    assert rc == 0, stdout.getvalue()
    return out


def parity_raster(xy_flat, hw) -> np.ndarray:
    return mask_utils.decode(mask_utils.frPyObjects([list(xy_flat)], *hw))[..., 0].astype(bool)


def test_yolo_labels_read_back_by_supervision(run):
    assert yaml.safe_load((run / "data.yaml").read_text()) == {
        "train": "images/default", "val": "images/default", "names": {0: "object"}}
    ds = sv.DetectionDataset.from_yolo(
        images_directory_path=str(run / "images" / "default"),
        annotations_directory_path=str(run / "labels" / "default"),
        data_yaml_path=str(run / "data.yaml"), force_masks=True)
    assert ds.classes == ["object"] and len(ds) == len(PHOTOS)
    multi = 0
    for path, image, det in ds:
        stem = path.rsplit("/", 1)[-1].rsplit(".", 1)[0]
        records = json.loads((run / f"{stem}.json").read_text())
        hw = image.shape[:2]
        polys = [p for r in records
                 for p in mask_to_polygons(decode_mask(r["segmentation"]), DEFAULT_MIN_POLYGON_AREA)]
        multi += sum(len(mask_to_polygons(decode_mask(r["segmentation"]))) > 1 for r in records)
        lines = (run / "labels" / "default" / f"{stem}.txt").read_text().splitlines()
        assert len(det) == len(lines) == len(polys) > 0  # one detection per fragment
        assert (det.class_id == 0).all()
        for line, poly, m in zip(lines, polys, det.mask):
            cls, *vals = line.split()
            xy = np.asarray(vals, np.float64).reshape(-1, 2) * (hw[1], hw[0])
            assert cls == "0" and (np.asarray(vals, float) >= 0).all() and (np.asarray(vals, float) <= 1).all()
            # the file's polygon rasterises (COCO parity) to exactly our polygon's pixels
            ours = parity_raster(poly, hw)
            np.testing.assert_array_equal(parity_raster(xy.ravel(), hw), ours)
            # supervision rounds vertices to whole pixels before filling: near, not exact
            inter, union = (m & ours).sum(), (m | ours).sum()
            if ours.sum() >= 400:
                assert inter / union > 0.85, (stem, inter / union)
    assert multi > 0  # multi-part masks were written as several lines


def test_yolo_text_and_yaml_by_hand():
    hw = (20, 40)
    two = box_mask(hw, 0, 0, 4, 4) | box_mask(hw, 30, 10, 40, 20)
    text = yolo_label_text([record(two), record(box_mask(hw, 10, 5, 12, 6))], hw, min_polygon_area=0)
    lines = text.splitlines()
    assert len(lines) == 3 and text.endswith("\n")
    bounds = set()
    for line in lines[:2]:  # the two fragments of the first mask, quarter-pixel vertices
        xy = np.asarray(line.split()[1:], float).reshape(-1, 2) * (40, 20)
        bounds.add((*xy.min(axis=0).tolist(), *xy.max(axis=0).tolist()))
    assert bounds == {(0.25, 0.25, 3.75, 3.75), (30.25, 10.25, 39.75, 19.75)}
    assert yolo_label_text([], hw) == ""
    assert yaml.safe_load(data_yaml("val", 'a: "b"')) == {"train": "images/val", "val": "images/val",
                                                          "names": {0: 'a: "b"'}}


def test_records_through_from_sam_and_mask_annotator(run):
    records = json.loads((run / "dog.json").read_text())
    det = sv.Detections.from_sam(records)
    order = sorted(range(len(records)), key=lambda i: -records[i]["area"])  # from_sam's order
    assert len(det) == len(records) > 0
    for k, i in enumerate(order):
        np.testing.assert_array_equal(det.mask[k], decode_mask(records[i]["segmentation"]))
        x, y, w, h = records[i]["bbox"]
        np.testing.assert_array_equal(det.xyxy[k], [x, y, x + w, y + h])
    image = read_photo("dog.jpg")[..., ::-1].copy()  # supervision draws on BGR
    painted = sv.MaskAnnotator(opacity=0.5, color_lookup=sv.ColorLookup.INDEX).annotate(scene=image.copy(), detections=det)
    covered = det.mask.any(axis=0)
    np.testing.assert_array_equal(painted[~covered], image[~covered])  # outside every mask: the photo
    assert (painted[covered] != image[covered]).any(axis=1).mean() > 0.9
