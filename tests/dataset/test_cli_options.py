"""Dataset features of the command without the network: inputs (lists, globs), formats and
filters, resume and its guards, the run lock, and the engine flags.

A fake generator returns hand-made masks sized to each image (fast); the real-model runs are in
``test_run.py``.
"""

from __future__ import annotations

import csv
import json
import os
import shutil

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

import amg.dataset.run
import amg.generator
from amg.dataset.cli import main
from amg.dataset.state import STATE_DIR

from ..conftest import shared_path
from .mask_cases import record

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def box_records(h: int, w: int) -> list[dict]:
    """Five masks: a box, its near-duplicate, a tiny box, the whole image, a ring with a hole."""
    def box(x0, y0, x1, y1):
        m = np.zeros((h, w), bool)
        m[y0:y1, x0:x1] = True
        return m
    ring = box(w // 2, h // 2, w // 2 + 40, h // 2 + 40)
    ring[h // 2 + 10:h // 2 + 30, w // 2 + 10:w // 2 + 30] = False
    return [record(box(10, 10, 110, 90), 0.95), record(box(11, 10, 111, 90), 0.90),
            record(box(200, 5, 203, 8), 0.93), record(box(0, 0, w, h), 0.97),
            record(ring, 0.92)]


@pytest.fixture
def box_generator(monkeypatch):
    """Fake model and generator; returns the list of image shapes it was called with."""
    import sam_model

    calls = []

    class BoxGenerator:
        def __init__(self, model, config=None, **params):
            assert model == "fake-model"

        def generate(self, image):
            calls.append(image.shape)
            return box_records(*image.shape[:2])

    monkeypatch.setattr(sam_model, "load_model", lambda name, device="cpu": "fake-model")
    monkeypatch.setattr(amg.generator, "MaskGenerator", BoxGenerator)
    return calls


def photos(dst, *names):
    dst.mkdir(parents=True, exist_ok=True)
    for n in names:
        shutil.copy(shared_path("images", n), dst / n)
    return dst


def test_formats_filters_and_polygons_through_the_command(tmp_path, capsys, box_generator):
    inp = photos(tmp_path / "in", "dog.jpg")
    out = tmp_path / "out"
    rc = main([str(inp), "-o", str(out), "--format", "json,coco", "--format", "png",
               "--segmentation", "polygon", "--category", "thing", "--min-area", "10",
               "--max-area", "100000", "--mask-nms-thresh", "0.8", "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    full = box_records(534, 800)
    # min-area drops the tiny box, max-area the whole image, mask NMS the near-duplicate.
    kept = json.loads((out / "dog.json").read_text())
    assert kept == [full[0], full[4]]
    assert sorted(os.listdir(out / "masks" / "dog")) == ["0.png", "1.png", "metadata.csv"]
    api = COCO(str(out / "annotations" / "instances_default.json"))
    assert api.loadCats(1)[0]["name"] == "thing"
    assert api.loadImgs(1)[0] == {"id": 1, "file_name": "dog.jpg", "width": 800, "height": 534}
    anns = api.loadAnns(api.getAnnIds(imgIds=1))
    assert len(anns) == 2
    for ann, rec in zip(anns, kept):
        assert isinstance(ann["segmentation"], list)  # polygons
        m = api.annToMask(ann)
        expected = mask_utils.decode({**rec["segmentation"], "counts": rec["segmentation"]["counts"].encode()})
        np.testing.assert_array_equal(m, expected)  # the ring's hole stays a hole
        assert ann["area"] == rec["area"] == int(m.sum()) and ann["score"] == rec["predicted_iou"]


def test_list_files_at_files_and_glob(tmp_path, capsys, box_generator):
    data = tmp_path / "data"
    photos(data / "a", "dog.jpg", "groceries.jpg")
    photos(data / "b", "picture1.jpg")
    (data / "b" / "copy.png").write_bytes((data / "b" / "picture1.jpg").read_bytes())
    lst = tmp_path / "lists" / "some.txt"
    lst.parent.mkdir()
    lst.write_text(f"# a comment\n\n../data/a/dog.jpg\n{data / 'b'}\n")
    out = tmp_path / "out"
    rc = main([f"@{lst}", "-o", str(out), "--glob", "*.jpg", "--format", "coco", "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    coco = json.loads((out / "annotations" / "instances_default.json").read_text())
    # dog from the list, then the folder b by the glob (the png is not matched)
    assert [(i["id"], i["file_name"]) for i in coco["images"]] == [(1, "a/dog.jpg"), (2, "b/picture1.jpg")]
    out2 = tmp_path / "out2"
    rc = main([str(data / "a" / "groceries.jpg"), "--list", str(lst), "-o", str(out2),
               "--image-root", str(data), "--format", "coco", "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    coco = json.loads((out2 / "annotations" / "instances_default.json").read_text())
    assert [i["file_name"] for i in coco["images"]] == [
        "a/groceries.jpg", "a/dog.jpg", "b/copy.png", "b/picture1.jpg"]
    # a listed path that does not exist is a usage error naming it and the list
    lst.write_text("nope.jpg\n")
    rc = main(["--list", str(lst), "-o", str(tmp_path / "out3")])
    err = capsys.readouterr().err
    assert rc == 2 and "nope.jpg" in err and "some.txt" in err


def test_resume_skips_done_images_and_guards_parameters(tmp_path, capsys, box_generator):
    inp = photos(tmp_path / "in", "dog.jpg", "groceries.jpg")
    out = tmp_path / "out"
    argv = [str(inp), "-o", str(out), "--format", "json,coco", "--points-per-side", "4"]
    assert main(argv) == 0
    assert len(box_generator) == 2
    first = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    capsys.readouterr()
    # Same arguments (batch size and workers may change): nothing redone, same files.
    assert main(argv + ["--points-per-batch", "16", "--workers", "1"]) == 0
    assert len(box_generator) == 2
    assert "2/2 images (2 done by an earlier run)" in capsys.readouterr().out
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == first
    # A changed source image is redone.
    os.utime(inp / "dog.jpg", ns=(1, 1))
    assert main(argv) == 0
    assert len(box_generator) == 3
    # Other parameters: refused, naming what differs, nothing touched.
    rc = main(argv[:-1] + ["8", "--min-area", "5"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "points_per_side: 4 there, 8 now" in err and "min_area: None there, 5 now" in err
    assert "--overwrite" in err and len(box_generator) == 3
    rc = main([str(inp), "-o", str(out), "--format", "json"])
    assert rc == 2 and "formats" in capsys.readouterr().err
    # --overwrite redoes everything with the new parameters.
    assert main(argv[:-1] + ["8", "--overwrite"]) == 0
    assert len(box_generator) == 5


def test_overwrite_removes_stale_errors(tmp_path, capsys, box_generator):
    inp = photos(tmp_path / "in", "dog.jpg")
    (inp / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    out = tmp_path / "out"
    assert main([str(inp), "-o", str(out), "--no-progress"]) == 1
    with open(out / "errors.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["path", "reason"] and rows[1][0] == str(inp / "bad.png")
    (inp / "bad.png").unlink()
    assert main([str(inp), "-o", str(out), "--no-progress"]) == 0
    assert not (out / "errors.csv").exists()


def test_run_lock(tmp_path, capsys, box_generator):
    fcntl = pytest.importorskip("fcntl", reason="run locking is POSIX-only")
    out = tmp_path / "out"
    (out / STATE_DIR).mkdir(parents=True)
    with open(out / STATE_DIR / "lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        rc = main([str(shared_path("images", "dog.jpg")), "-o", str(out)])
    assert rc == 2 and "another segment-everything run" in capsys.readouterr().err
    assert main([str(shared_path("images", "dog.jpg")), "-o", str(out)]) == 0


def test_engine_flags_reach_the_run(tmp_path, capsys, monkeypatch):
    seen = []

    def fake_run(images, options):
        seen.append((images, options))
        return amg.dataset.run.RunSummary(total=1, done=1, resumed=0, failed=[], masks=0,
                                          seconds=1.0, processed=1)

    monkeypatch.setattr(amg.dataset.run, "run_dataset", fake_run)
    rc = main([str(shared_path("images", "dog.jpg")), "-o", str(tmp_path / "out"), "--engine", "ray",
               "--ray-address", "ray://head:10001", "--ray-actors", "3", "--device", "cuda",
               "--threads", "2", "--workers", "5", "--overwrite"])
    assert rc == 0, capsys.readouterr().err
    ((images, o),) = seen
    assert images == [shared_path("images", "dog.jpg")]
    assert (o.engine, o.ray_address, o.ray_actors, o.device, o.threads, o.workers, o.overwrite) == (
        "ray", "ray://head:10001", 3, "cuda", 2, 5, True)
    assert o.formats == ("json",) and o.segmentation == "rle" and o.config.output_mode == "coco_rle"


@pytest.mark.parametrize("flags, message", [
    (["--segmentation", "polygon"], "--segmentation polygon applies to the COCO and Label Studio outputs"),
    (["--min-area", "10", "--max-area", "5"], "--min-area (10) must be <= --max-area (5)"),
    (["--min-area", "-1"], "--min-area must be an integer >= 0"),
    (["--mask-nms-thresh", "0"], "--mask-nms-thresh must be in (0, 1]"),
    (["--workers", "0"], "--workers must be an integer >= 1"),
    (["--ray-actors", "0"], "--ray-actors must be an integer >= 1"),
    (["--image-root", "/nonexistent-root"], "is not under --image-root"),
], ids=["polygon-without-coco", "min-above-max", "negative-area", "nms-zero", "workers",
        "ray-actors", "image-root"])
def test_bad_dataset_options_exit_2(flags, message, tmp_path, capsys, box_generator):
    out = tmp_path / "out"
    rc = main([str(shared_path("images", "dog.jpg")), "-o", str(out)] + flags)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith("segment-everything: error:") and message in err
    assert not out.exists()


def test_no_inputs_and_bad_format(tmp_path, capsys):
    rc = main(["-o", str(tmp_path / "out")])
    assert rc == 2 and "no INPUT given" in capsys.readouterr().err
    with pytest.raises(SystemExit) as ei:
        main([str(shared_path("images", "dog.jpg")), "-o", str(tmp_path / "out"), "--format", "coco,jpeg"])
    assert ei.value.code == 2 and "unknown format" in capsys.readouterr().err
