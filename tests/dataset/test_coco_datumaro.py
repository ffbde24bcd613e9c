"""Our COCO output in CVAT's "COCO 1.0" layout, imported with Datumaro (CVAT's dataset engine).

``--format coco`` writes ``annotations/instances_<subset>.json`` and ``images/<subset>/``;
Datumaro's ``coco_instances`` importer (in its own venv, tool_scripts/datumaro_dump.py) must
find every image and every mask, pixel for pixel, with the predicted IoU, the stability score
and the reserve flag as annotation attributes. Real photos with the real MobileSAM weights on
an 8 x 8 grid, and hand-made reserve records.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from amg.dataset.cli import main
from amg.dataset.outputs import OutputPaths, coco_annotations, decode_mask, write_coco

from ..conftest import shared_path
from .mask_cases import box_mask, record
from .tool_envs import run_tool_script

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

PHOTOS = ("dog.jpg", "groceries.jpg")


def run_cli(args: list[str]) -> None:
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(io.StringIO()):
        rc = main(args + ["--points-per-side", "8", "--threads", "1", "--no-progress"])
    assert rc == 0, stdout.getvalue()


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """Three datasets and what Datumaro read from them (one venv call):
    ``rle`` (both photos, subset ``default``), ``polygon`` (groceries, ``--subset val``),
    ``reserve`` (hand-made records with the reserve flag)."""
    base = tmp_path_factory.mktemp("datumaro")
    photos = base / "photos"
    photos.mkdir()
    for n in PHOTOS:
        shutil.copy(shared_path("images", n), photos / n)
    run_cli([str(photos), "-o", str(base / "rle"), "--format", "json,coco"])
    run_cli([str(photos / "groceries.jpg"), "-o", str(base / "polygon"), "--format", "json,coco",
             "--segmentation", "polygon", "--subset", "val"])
    hw = (30, 40)
    reserve_records = [{**record(box_mask(hw, 2, 2, 20, 20), 0.91, 0.97), "reserve": False},
                       {**record(box_mask(hw, 25, 5, 38, 28), 0.62, 0.81), "reserve": True}]
    paths = OutputPaths(base / "reserve")
    paths.dataset_image("a.png").parent.mkdir(parents=True)
    cv2.imwrite(str(paths.dataset_image("a.png")), np.zeros((*hw, 3), np.uint8))  # Datumaro needs images/
    write_coco(paths.coco, [{"id": 7, "file_name": "a.png", "width": 40,
                                                     "height": 30}],
               [coco_annotations(reserve_records)])
    run_tool_script("datumaro", "datumaro_dump.py", str(base / "dump.json"),
                    *(str(base / k) for k in ("rle", "polygon", "reserve")))
    dumps = json.loads((base / "dump.json").read_text())
    return {"base": base, "reserve_records": reserve_records,
            **dict(zip(("rle", "polygon", "reserve"), dumps))}


def test_layout(imported):
    base = imported["base"]
    assert sorted(p.relative_to(base / "rle").as_posix() for p in (base / "rle").rglob("*")
                  if ".segment-everything" not in p.parts and p.is_file()) == [
        "annotations/instances_default.json", "dog.json", "groceries.json",
        "images/default/dog.jpg", "images/default/groceries.jpg"]
    for n in PHOTOS:  # the images are the inputs, linked
        assert (base / "rle" / "images" / "default" / n).read_bytes() == (base / "photos" / n).read_bytes()
    assert (base / "polygon" / "annotations" / "instances_val.json").is_file()
    assert (base / "polygon" / "images" / "val" / "groceries.jpg").is_file()


def test_datumaro_reads_every_mask_and_attribute(imported):
    base, dump = imported["base"], imported["rle"]
    coco = json.loads((base / "rle" / "annotations" / "instances_default.json").read_text())
    assert dump["categories"] == ["object"]
    assert [(it["subset"], it["id"]) for it in dump["items"]] == [("default", "dog"), ("default", "groceries")]
    ids = {img["file_name"]: img["id"] for img in coco["images"]}
    for item in dump["items"]:
        name = item["id"] + ".jpg"
        assert Path(item["image_path"]) == base / "rle" / "images" / "default" / name
        assert item["size"] == [534, 800] and item["attributes"]["id"] == ids[name]
        records = json.loads((base / "rle" / f"{item['id']}.json").read_text())
        masks = [a for a in item["annotations"] if a["type"] == "RleMask"]
        assert len(masks) == len(records) > 0  # nothing dropped
        for a, r in zip(sorted(masks, key=lambda a: a["id"]), records):
            assert a["label"] == "object"
            np.testing.assert_array_equal(decode_mask(a["rle"]), decode_mask(r["segmentation"]))
            assert a["attributes"]["predicted_iou"] == r["predicted_iou"]
            assert a["attributes"]["stability_score"] == r["stability_score"]
            assert a["attributes"]["score"] == r["predicted_iou"]
            assert "reserve" not in a["attributes"]  # the default preset has no reserve masks


def test_datumaro_reads_polygons_by_fragment(imported):
    base, dump = imported["base"], imported["polygon"]
    coco = json.loads((base / "polygon" / "annotations" / "instances_val.json").read_text())
    (item,) = dump["items"]
    assert (item["subset"], item["id"]) == ("val", "groceries")
    polys = [a for a in item["annotations"] if a["type"] == "Polygon"]
    assert len(polys) == sum(len(a["segmentation"]) for a in coco["annotations"])  # every fragment
    assert any(len(a["segmentation"]) > 1 for a in coco["annotations"])
    for ann in coco["annotations"]:
        mine = [p for p in polys if p["group"] == ann["id"]]
        assert len(mine) == len(ann["segmentation"])
        union = np.zeros((534, 800), bool)
        for p in mine:
            assert p["attributes"]["stability_score"] == ann["stability_score"]
            union |= mask_utils.decode(mask_utils.frPyObjects([p["points"]], 534, 800))[..., 0].astype(bool)
        expected = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(ann["segmentation"], 534, 800)))
        np.testing.assert_array_equal(union, expected.astype(bool))


def test_datumaro_reads_the_reserve_flag(imported):
    (item,) = imported["reserve"]["items"]
    masks = sorted((a for a in item["annotations"] if a["type"] == "RleMask"), key=lambda a: a["id"])
    assert item["attributes"]["id"] == 7
    for a, r in zip(masks, imported["reserve_records"], strict=True):
        assert a["attributes"]["reserve"] is r["reserve"]
        assert a["attributes"]["predicted_iou"] == r["predicted_iou"]
        np.testing.assert_array_equal(decode_mask(a["rle"]), decode_mask(r["segmentation"]))
