"""Dataset runs end to end with the real MobileSAM weights on real photos.

One run of the command over a folder with two photos and two bad files writes every format
(module fixture); the tests check each output's defining property, then that a rerun, a killed
and resumed run (a subprocess killed after its first image), and the Ray engine all produce the
same files byte for byte. Tiny parameters (4 x 4 points, one torch thread) keep it to seconds
per image on a CPU.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from amg.dataset.cli import main
from amg.dataset.outputs import METADATA_HEADER, decode_mask, mask_colors
from amg.dataset.state import STATE_DIR

from ..conftest import shared_path
from .mask_cases import border_band
from .test_cli import PHOTO_HW, check_records, console_script

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

PHOTOS = ("dog.jpg", "groceries.jpg")
FLAGS = ["--format", "json,coco,label-studio,yolo,png,labelmap,overlay", "--points-per-side", "4",
         "--threads", "1"]


def tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (relative path -> bytes)."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """The input folder, and the output of one uninterrupted run of the command over it."""
    base = tmp_path_factory.mktemp("dataset")
    inp, out = base / "in", base / "out"
    inp.mkdir()
    for n in PHOTOS:
        shutil.copy(shared_path("images", n), inp / n)
    (inp / "bad.jpg").write_bytes(np.random.default_rng(0).integers(0, 256, 5000, np.uint8).tobytes())
    (inp / "empty.png").write_bytes(b"")
    stdout, stderr = io.StringIO(), io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        rc = main([str(inp), "-o", str(out)] + FLAGS)
    return {"inp": inp, "out": out, "rc": rc, "stdout": stdout.getvalue(),
            "stderr": stderr.getvalue(), "seconds": time.perf_counter() - t0}


def records_of(dataset, stem: str) -> list[dict]:
    hw = PHOTO_HW[f"{stem}.jpg"]
    return check_records(dataset["out"] / f"{stem}.json", hw)


def test_bad_files_reported_and_listed(dataset):
    assert dataset["rc"] == 1, dataset["stderr"]
    out, inp = dataset["out"], dataset["inp"]
    assert sorted(os.listdir(out)) == [STATE_DIR, "annotations", "data.yaml", "dog.json", "errors.csv",
                                       "groceries.json", "images", "label-studio", "labelmaps",
                                       "labels", "masks", "overlays"]
    assert sorted(os.listdir(out / "labels" / "default")) == ["dog.txt", "groceries.txt"]
    assert len(json.loads((out / "label-studio" / "tasks.json").read_text())) == 2
    assert sorted(os.listdir(out / "images" / "default")) == ["dog.jpg", "groceries.jpg"]
    with open(out / "errors.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows == [["path", "reason"],
                    [str(inp / "bad.jpg"), "not an image file (unrecognised format)"],
                    [str(inp / "empty.png"), "empty file (0 bytes)"]]
    err = dataset["stderr"]
    assert "bad.jpg" in err and "not an image file" in err and "empty.png" in err
    assert "2 image(s) failed" in err
    assert "dog.jpg" not in err and "groceries.jpg" not in err
    n = sum(len(records_of(dataset, s)) for s in ("dog", "groceries"))
    assert f"2/4 images, {n} masks" in dataset["stdout"]
    assert not [p for p in out.rglob(".*.part")]  # no temp file left over


def test_coco_file(dataset):
    api = COCO(str(dataset["out"] / "annotations" / "instances_default.json"))
    # ids: position in the input list (bad.jpg 1, dog.jpg 2, empty.png 3, groceries.jpg 4)
    assert api.loadImgs(sorted(api.getImgIds())) == [
        {"id": 2, "file_name": "dog.jpg", "width": 800, "height": 534},
        {"id": 4, "file_name": "groceries.jpg", "width": 800, "height": 534}]
    assert api.loadCats(api.getCatIds()) == [{"id": 1, "name": "object", "supercategory": "object"}]
    next_id = 1
    for img_id, stem in ((2, "dog"), (4, "groceries")):
        records = records_of(dataset, stem)
        anns = api.loadAnns(api.getAnnIds(imgIds=img_id))
        assert [a["id"] for a in anns] == list(range(next_id, next_id + len(records)))
        next_id += len(records)
        for a, r in zip(anns, records, strict=True):
            assert a["segmentation"] == r["segmentation"] and a["iscrowd"] == 0
            assert a["category_id"] == 1 and a["image_id"] == img_id
            assert a["score"] == r["predicted_iou"] and a["stability_score"] == r["stability_score"]
            m = api.annToMask(a)
            assert int(m.sum()) == a["area"] == r["area"]
            x, y, w, h = r["bbox"]
            assert a["bbox"] == [x, y, w + 1, h + 1]  # COCO's width counts columns


def test_png_masks_and_metadata(dataset):
    for stem in ("dog", "groceries"):
        records = records_of(dataset, stem)
        folder = dataset["out"] / "masks" / stem
        assert sorted(os.listdir(folder)) == sorted([f"{i}.png" for i in range(len(records))] + ["metadata.csv"])
        with open(folder / "metadata.csv", newline="") as f:
            rows = list(csv.reader(f))
        assert rows[0] == METADATA_HEADER
        assert len(rows) == len(records) + 1
        for i, (row, r) in enumerate(zip(rows[1:], records)):
            png = cv2.imread(str(folder / f"{i}.png"), cv2.IMREAD_UNCHANGED)
            np.testing.assert_array_equal(png == 255, decode_mask(r["segmentation"]))
            assert int(row[0]) == i and int(row[1]) == r["area"]
            assert [int(v) for v in row[2:6]] == r["bbox"]
            assert [float(v) for v in row[6:8]] == r["point_coords"][0]
            assert float(row[8]) == r["predicted_iou"] and float(row[9]) == r["stability_score"]
            assert [int(v) for v in row[10:14]] == r["crop_box"]


def smallest_cover(masks: list[np.ndarray]) -> np.ndarray:
    """Per pixel: 1 + index of the smallest covering mask (ties: lowest index), 0 if none."""
    best_area = np.full(masks[0].shape, np.inf)
    labels = np.zeros(masks[0].shape, np.int64)
    for i, m in enumerate(masks):
        better = m & (m.sum() < best_area)
        best_area[better] = m.sum()
        labels[better] = i + 1
    return labels


def test_label_maps(dataset):
    for stem in ("dog", "groceries"):
        masks = [decode_mask(r["segmentation"]) for r in records_of(dataset, stem)]
        lm = cv2.imread(str(dataset["out"] / "labelmaps" / f"{stem}.png"), cv2.IMREAD_UNCHANGED)
        assert lm.dtype == np.uint16 and lm.shape == PHOTO_HW[f"{stem}.jpg"]
        np.testing.assert_array_equal(lm, smallest_cover(masks))
        assert set(np.unique(lm)) - {0} <= set(range(1, len(masks) + 1))


def test_overlays(dataset):
    for stem in ("dog", "groceries"):
        masks = [decode_mask(r["segmentation"]) for r in records_of(dataset, stem)]
        photo = cv2.imread(str(dataset["inp"] / f"{stem}.jpg"))[..., ::-1].astype(np.int64)
        ov = cv2.imread(str(dataset["out"] / "overlays" / f"{stem}.png"))[..., ::-1].astype(np.int64)
        assert ov.shape == photo.shape
        labels = smallest_cover(masks)
        colors = mask_colors(len(masks)).astype(np.int64)
        band = np.zeros(labels.shape, bool)
        for m in masks:
            band |= border_band(m)
        expected = photo.copy()
        cov = labels > 0
        expected[cov] = (photo[cov] + colors[labels[cov] - 1] + 1) // 2
        np.testing.assert_array_equal(ov[~band], expected[~band])
        # every mask's outline shows in its own colour
        for i, m in enumerate(masks):
            assert (ov[border_band(m)] == colors[i]).all(axis=1).any(), (stem, i)


def test_rerun_skips_finished_images_and_keeps_files(dataset, capsys):
    before = tree(dataset["out"])
    rc = main([str(dataset["inp"]), "-o", str(dataset["out"])] + FLAGS)
    captured = capsys.readouterr()
    assert rc == 1  # the bad files are retried, and fail again
    assert "2/4 images (2 done by an earlier run)" in captured.out
    assert tree(dataset["out"]) == before


def test_kill_and_resume_gives_the_uninterrupted_output(dataset, tmp_path):
    out = tmp_path / "out"
    cmd = [console_script(), str(dataset["inp"]), "-o", str(out)] + FLAGS
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    first_marker = out / STATE_DIR / "done" / "dog.json"
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.monotonic() + 240
        while not first_marker.exists():
            assert proc.poll() is None, "the run ended before its first image was done"
            assert time.monotonic() < deadline, "no image done in 240 s"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    # killed half way: the second photo is not done, its COCO file not assembled
    assert not (out / STATE_DIR / "done" / "groceries.json").exists()
    assert not (out / "annotations" / "instances_default.json").exists()
    resumed = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert resumed.returncode == 1, resumed.stderr
    assert "2/4 images (1 done by an earlier run)" in resumed.stdout
    assert tree(out) == tree(dataset["out"])


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Ray's own, on start-up
def test_ray_engine_matches_local_engine(dataset, tmp_path):
    ray = pytest.importorskip("ray", reason='the Ray engine needs Ray Data: pip install "segment-everything[ray]"')
    pytest.importorskip("ray.data", reason='the Ray engine needs Ray Data: pip install "ray[data]"')
    from amg.config import AMGConfig
    from amg.dataset.inputs import collect_images
    from amg.dataset.options import RunOptions
    from amg.dataset.run import run_dataset

    out = tmp_path / "out"
    options = RunOptions(output=out, config=AMGConfig.from_preset("default", points_per_side=4),
                         formats=("json", "coco", "label-studio", "yolo", "png", "labelmap", "overlay"), threads=1,
                         engine="ray", progress=False)
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    try:
        summary = run_dataset(collect_images([dataset["inp"]]), options)
    finally:
        ray.shutdown()
    assert (summary.total, summary.done, summary.resumed) == (4, 2, 0)
    assert [Path(p).name for p, _ in summary.failed] == ["bad.jpg", "empty.png"]
    assert tree(out) == tree(dataset["out"])
