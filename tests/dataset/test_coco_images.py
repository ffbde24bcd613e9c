"""``--coco-images``: the COCO output takes an existing COCO file's image ids and file names,
so pycocotools' ``loadRes`` and ``COCOeval`` accept it against that ground truth.

Real photos of ../shared/coco_tiny with the real MobileSAM weights (8 x 8 grid) for the
evaluation; the fake box generator of test_cli_options for the matching rules and errors.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import shutil

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from amg.dataset.cli import main
from amg.dataset.coco_images import CocoImages

from ..conftest import shared_path
from .test_cli_options import box_generator, box_records  # noqa: F401 - the fixture

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

# two coco_tiny photos: 18 and 2 ground-truth instances
IMAGES = ("000000005001.jpg", "000000010764.jpg")


def gt_file():
    return shared_path("coco_tiny", "annotations", "instances_val2017.json")


def copy_images(dst, names=IMAGES):
    dst.mkdir(parents=True)
    for n in names:
        shutil.copy(shared_path("coco_tiny", "val2017", n), dst / n)
    return dst


def test_output_is_a_results_file_for_the_ground_truth(tmp_path):
    val = copy_images(tmp_path / "val2017")
    out = tmp_path / "out"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(io.StringIO()):
        rc = main([str(val), "-o", str(out), "--format", "coco", "--coco-images", str(gt_file()),
                   "--subset", "val2017", "--points-per-side", "8", "--threads", "1", "--no-progress"])
    assert rc == 0, stdout.getvalue()
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_file()))
    ours = json.loads((out / "annotations" / "instances_val2017.json").read_text())
    expected = [gt.imgs[i] for i in sorted(gt.getImgIds()) if gt.imgs[i]["file_name"] in IMAGES]
    assert ours["images"] == [{k: e[k] for k in ("id", "file_name", "width", "height")} for e in expected]
    assert sorted(p.name for p in (out / "images" / "val2017").iterdir()) == sorted(IMAGES)
    anns = ours["annotations"]
    assert anns and {a["image_id"] for a in anns} == {e["id"] for e in expected}
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(json.loads(json.dumps(anns)))  # the file's annotations, as they are
        ev = COCOeval(gt, dt, iouType="segm")
        ev.params.useCats = 0
        ev.params.imgIds = [e["id"] for e in expected]
        ev.params.maxDets = [1, 10, 100]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    ar100 = ev.stats[8]
    # COCOeval's matches must be ours: recall at IoU 0.5 over every det, computed by hand
    # from the same masks (greedy by score, each ground truth matched once, crowds ignored).
    gts = [g for g in gt.loadAnns(gt.getAnnIds(imgIds=ev.params.imgIds)) if not g["iscrowd"]]
    found = 0
    for e in expected:
        g_rles = [gt.annToRLE(g) for g in gts if g["image_id"] == e["id"]]
        d = sorted((a for a in anns if a["image_id"] == e["id"]), key=lambda a: -a["score"])[:100]
        d_rles = [{**a["segmentation"], "counts": a["segmentation"]["counts"].encode()} for a in d]
        iou = mask_utils.iou(d_rles, g_rles, [0] * len(g_rles))
        taken = np.zeros(len(g_rles), bool)
        for row in np.atleast_2d(iou):
            cand = np.where(~taken & (row >= 0.5), row, -1)
            if cand.max() >= 0.5:
                taken[int(cand.argmax())] = True
        found += int(taken.sum())
    recall50 = ev.eval["recall"][0, 0, 0, 2]  # IoU 0.5, the one class, area all, 100 dets
    assert recall50 == pytest.approx(found / len(gts))
    assert 0 < found and 0 < ar100 <= recall50


def test_matching_by_base_name_and_errors(tmp_path, capsys, box_generator):  # noqa: F811
    # an image deeper than the file's names matches by base name, and keeps the file's name
    val = copy_images(tmp_path / "data" / "sub", IMAGES[:1])
    out = tmp_path / "out"
    rc = main([str(val.parent), "-o", str(out), "--format", "coco,yolo", "--coco-images",
               str(gt_file()), "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    coco = json.loads((out / "annotations" / "instances_default.json").read_text())
    assert [(i["id"], i["file_name"]) for i in coco["images"]] == [(5001, IMAGES[0])]
    assert (out / "images" / "default" / IMAGES[0]).is_file()
    assert (out / "labels" / "default" / "000000005001.txt").is_file()

    # an image that is not in the file: a usage error naming it, before any work
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(shared_path("images", "dog.jpg"), other / "dog.jpg")
    rc = main([str(other), "-o", str(tmp_path / "out2"), "--format", "coco", "--coco-images",
               str(gt_file()), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "image dog.jpg is not in --coco-images" in err, err
    assert not (tmp_path / "out2" / "annotations").exists()

    # an entry of another size: that image fails, the run goes on
    fake = tmp_path / "fake.json"
    fake.write_text(json.dumps({"images": [{"id": 9, "file_name": "dog.jpg", "width": 10, "height": 20}]}))
    rc = main([str(other), "-o", str(tmp_path / "out3"), "--format", "coco", "--coco-images",
               str(fake), "--no-progress"])
    assert rc == 1
    with open(tmp_path / "out3" / "errors.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[1][1] == "image is 800x534 but its --coco-images entry 'dog.jpg' says 10x20"

    rc = main([str(other), "-o", str(tmp_path / "out4"), "--coco-images", str(fake)])
    assert rc == 2 and "--coco-images applies to the COCO and YOLO outputs" in capsys.readouterr().err
    rc = main([str(other), "-o", str(tmp_path / "out4"), "--format", "coco", "--coco-images",
               str(tmp_path / "missing.json")])
    assert rc == 2 and "missing.json: no such file" in capsys.readouterr().err


def test_coco_images_file_checks(tmp_path):
    bad = tmp_path / "bad.json"
    for content, message in (("{", "cannot read a COCO file"), ("[]", "no 'images' list"),
                             ('{"images": [{"id": 1}]}', "lacks id, file_name, width or height"),
                             ('{"images": [{"id": 1, "file_name": "a.jpg", "width": 1, "height": 1},'
                              ' {"id": 1, "file_name": "b.jpg", "width": 1, "height": 1}]}', "appears twice")):
        bad.write_text(content)
        with pytest.raises(ValueError, match=message):
            CocoImages(bad)
    two = tmp_path / "two.json"
    two.write_text(json.dumps({"images": [
        {"id": 1, "file_name": "x/a.jpg", "width": 4, "height": 3},
        {"id": 2, "file_name": "y/a.jpg", "width": 4, "height": 3},
        {"id": 3, "file_name": "b.jpg", "width": 4, "height": 3}]}))
    ci = CocoImages(two)
    assert ci.entry("y/a.jpg")["id"] == 2 and ci.entry("deep/b.jpg")["id"] == 3
    with pytest.raises(ValueError, match="several entries share its base name"):
        ci.entry("z/a.jpg")
    with pytest.raises(ValueError, match="both match 'b.jpg'"):
        ci.assign(["b.jpg", "c/b.jpg"])
    ci.check_size(ci.entry("b.jpg"), (3, 4))
    with pytest.raises(ValueError, match="image is 3x4"):
        ci.check_size(ci.entry("b.jpg"), (4, 3))
