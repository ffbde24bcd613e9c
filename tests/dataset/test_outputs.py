"""Output writers (:mod:`amg.dataset.outputs`) on small hand-made masks (exact, fast): label
maps against a per-pixel loop, colours, overlays, COCO annotations and files, the PNG layout.
"""

from __future__ import annotations

import csv
import json

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO

from amg.dataset.outputs import (METADATA_HEADER, OutputPaths, assemble_coco, coco_annotations,
                                 coco_json, decode_mask, label_map, link_image, mask_colors, metadata_rows,
                                 outline_thickness, overlay_image, write_coco, write_image_outputs)
from amg.rle import mask_to_coco_rle

from .mask_cases import border_band, box_mask, random_blob, record

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


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
    # CVAT's and Datumaro's per-annotation attributes
    assert a["attributes"] == {"predicted_iou": 0.93, "stability_score": 0.97}
    # Records of a generator with reserve filters carry the flag into the annotations.
    flagged = [dict(recs[0], reserve=False), dict(recs[1], reserve=True)]
    assert [a["reserve"] for a in coco_annotations(flagged, "rle")] == [False, True]
    assert [a["attributes"]["reserve"] for a in coco_annotations(flagged, "rle")] == [False, True]
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


def test_dataset_paths_and_image_links(tmp_path, monkeypatch):
    paths = OutputPaths(tmp_path / "out", "val")
    assert paths.coco == tmp_path / "out" / "annotations" / "instances_val.json"
    assert paths.dataset_image("sub/a.jpg") == tmp_path / "out" / "images" / "val" / "sub" / "a.jpg"
    assert paths.yolo_labels("sub/a.b.jpg") == tmp_path / "out" / "labels" / "val" / "sub" / "a.b.txt"
    for bad in ("/etc/passwd", "../a.jpg", "a/../../b.jpg", ""):
        with pytest.raises(ValueError, match="not a relative path"):
            paths.dataset_image(bad)
    src = tmp_path / "a.jpg"
    src.write_bytes(b"photo")
    dst = paths.dataset_image("sub/a.jpg")
    link_image(src, dst)
    link_image(src, dst)  # again: replaced in place
    assert dst.samefile(src) and not dst.is_symlink() and src.stat().st_nlink == 2

    def no_hard_link(a, b):  # as across file systems
        raise OSError(18, "Invalid cross-device link")
    monkeypatch.setattr("amg.dataset.outputs.os.link", no_hard_link)
    other = paths.dataset_image("b.jpg")
    link_image(src, other)
    assert other.is_symlink() and other.resolve() == src.resolve() and other.read_bytes() == b"photo"
    assert not list(other.parent.glob(".*.part"))
