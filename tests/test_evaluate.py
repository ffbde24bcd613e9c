"""``amg.evaluate`` and ``tools/evaluate.py``: exact checks of the proposal-recall plumbing on
hand-made ground truth (boxes on a blank image, so every IoU is known), the cache, the CLI
(with a stand-in generator), and one real run of our generator with the MobileSAM weights on
two coco_tiny photos."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import math

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from amg.evaluate import (RECALL_MAX_DETS, EvaluationError, ProposalSource, average_recall,
                          class_agnostic_coco, evaluate_proposals, evaluate_sources,
                          format_markdown, generate_proposals, load_dataset, our_source,
                          recall_summary, records_to_proposals, to_coco_rle, write_plots)

from .conftest import REPO, shared_path

H = W = 200  # hand-made image size, pixels


# --------------------------------------------------------------------------------------------
# Hand-made cases
# --------------------------------------------------------------------------------------------


def box(y0: int, y1: int, x0: int, x1: int, h: int = H, w: int = W) -> np.ndarray:
    """(h, w) bool mask of rows y0:y1, columns x0:x1."""
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def rle(m: np.ndarray) -> dict:
    r = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
    return {"size": r["size"], "counts": r["counts"].decode()}


def gt(objects, crowd=(), images=(1,)):
    """Class-agnostic GT: ``objects``/``crowd`` are (image_id, mask); mixed category ids."""
    anns = []
    for i, (img, m) in enumerate([*objects, *crowd]):
        anns.append({"id": i + 1, "image_id": img, "category_id": 7 + i, "segmentation": rle(m),
                     "area": float(m.sum()), "bbox": [0, 0, 1, 1], "iscrowd": int(i >= len(objects))})
    data = {"images": [{"id": i, "height": H, "width": W, "file_name": f"{i}.jpg"} for i in images],
            "annotations": anns, "categories": [{"id": 7 + i, "name": str(i)} for i in range(len(anns))]}
    return class_agnostic_coco(data)


def record(m, predicted_iou=0.9, stability_score=0.9):
    return {"segmentation": m, "predicted_iou": predicted_iou, "stability_score": stability_score}


def junk(n):
    """n masks overlapping nothing of the objects below (inside rows 190:200)."""
    return [box(190, 200, 2 * i, 2 * i + 2) for i in range(n)]


SMALL = box(0, 10, 0, 10)          # 100 px  < 32²
MEDIUM = box(20, 60, 20, 60)       # 1600 px
LARGE = box(80, 180, 80, 180)      # 10000 px >= 96²


def ar(coco, records, image_ids=(1,), max_dets=RECALL_MAX_DETS):
    props = []
    for img in image_ids:
        props += records_to_proposals([r for r in records if r.get("image", 1) == img], img, H, W)
    return recall_summary(evaluate_proposals(coco, props, list(image_ids), max_dets))


def test_gt_masks_as_proposals_give_recall_one():
    coco = gt([(1, SMALL), (1, MEDIUM), (1, LARGE)])
    s = ar(coco, [record(SMALL), record(MEDIUM), record(LARGE)])
    for k in ("AR@10", "AR@100", "AR@1000", "AR_small@1000", "AR_medium@1000", "AR_large@1000"):
        assert s[k] == 1.0, k
    assert s["recall_curve"]["max_dets"] == list(RECALL_MAX_DETS)
    # One proposal per image is enough for 1 of 3 objects.
    assert s["recall_curve"]["AR"][:3] == pytest.approx([1 / 3, 2 / 3, 1.0], abs=1e-12)


def test_empty_proposals_give_zero():
    coco = gt([(1, SMALL), (1, LARGE)])
    s = ar(coco, [])
    assert s["AR@10"] == s["AR@100"] == s["AR@1000"] == 0.0
    assert s["AR_small@1000"] == 0.0 and s["AR_large@1000"] == 0.0
    assert math.isnan(s["AR_medium@1000"])  # no medium ground truth: -1 entries ignored -> NaN


@pytest.mark.parametrize("n_junk, ar10", [(8, 1.0), (9, 0.5)])
def test_one_of_two_gt_within_budget(n_junk, ar10):
    # A first, then n_junk misses, then B: B is proposal n_junk + 2 of the image.
    coco = gt([(1, MEDIUM), (1, LARGE)])
    recs = [record(MEDIUM, 0.99, 0.99)] + [record(m, 0.9, 0.9) for m in junk(n_junk)] + \
        [record(LARGE, 0.5, 0.5)]
    s = ar(coco, recs)
    assert s["AR@10"] == ar10
    assert s["AR@100"] == 1.0 and s["AR@1000"] == 1.0
    curve = dict(zip(s["recall_curve"]["max_dets"], s["recall_curve"]["AR"]))
    assert curve[1] == 0.5 and curve[20] == 1.0


def test_one_proposal_matching_one_of_two_gt_gives_half():
    coco = gt([(1, MEDIUM), (1, LARGE)])
    s = ar(coco, [record(LARGE)])
    assert s["AR@10"] == s["AR@100"] == s["AR@1000"] == 0.5
    assert s["AR_medium@1000"] == 0.0 and s["AR_large@1000"] == 1.0


@pytest.mark.parametrize("true_first", [True, False])
def test_score_is_mean_of_predicted_iou_and_stability_and_ranking_decides_ar10(true_first):
    # 11 misses, each scored (0.7 + 0.9) / 2 = 0.8; the hit has predicted IoU 1.0 (the highest
    # predicted IoU of all) but its mean score is 0.85 above them or 0.75 below them.
    coco = gt([(1, LARGE)])
    hit = record(LARGE, 1.0, 0.7 if true_first else 0.5)
    recs = [record(m, 0.7, 0.9) for m in junk(11)] + [hit]
    s = ar(coco, recs)
    assert s["AR@10"] == (1.0 if true_first else 0.0)
    assert s["AR@100"] == 1.0


def test_recall_is_averaged_over_iou_thresholds():
    # IoU 72/100 = 0.72: a hit at 0.50, 0.55, 0.60, 0.65, 0.70, a miss at 0.75..0.95.
    coco = gt([(1, SMALL)])
    s = ar(coco, [record(box(0, 8, 0, 9))])
    assert s["AR@1000"] == pytest.approx(0.5, abs=1e-12)


def test_crowd_ground_truth_is_ignored():
    crowd = box(100, 200, 0, 60)
    coco = gt([(1, MEDIUM)], crowd=[(1, crowd), (2, LARGE)], images=(1, 2))
    # The crowd regions are not objects to find: finding MEDIUM is full recall ...
    assert ar(coco, [record(MEDIUM)], image_ids=(1, 2))["AR@1000"] == 1.0
    # ... and a proposal equal to a crowd region recalls nothing.
    s = ar(coco, [record(crowd), {**record(LARGE), "image": 2}], image_ids=(1, 2))
    assert s["AR@1000"] == 0.0
    # An image with only crowd ground truth has no objects: recall undefined (NaN).
    assert math.isnan(ar(coco, [], image_ids=(2,))["AR@1000"])


def test_only_evaluated_images_count():
    coco = gt([(1, MEDIUM), (2, LARGE)], images=(1, 2))
    assert ar(coco, [record(MEDIUM)], image_ids=(1,))["AR@1000"] == 1.0
    assert ar(coco, [record(MEDIUM)], image_ids=(1, 2))["AR@1000"] == 0.5
    with pytest.raises(EvaluationError, match=r"outside the evaluated set: \[2\]"):
        evaluate_proposals(coco, records_to_proposals([record(LARGE)], 2, H, W), [1])
    with pytest.raises(EvaluationError, match=r"not in the ground truth: \[3\]"):
        evaluate_proposals(coco, [], [1, 3])


@pytest.mark.parametrize("seed", [0, 1])
def test_extended_max_dets_equal_standard_and_summarize(seed):
    # Random boxes on 3 images, up to 40 proposals each: our one evaluation with RECALL_MAX_DETS
    # gives the same AR@10/100/1000 (and per size) as maxDets = [10, 100, 1000], and these equal
    # pycocotools' own summarize() for that standard list (stats[6:12]).
    rng = np.random.default_rng(seed)

    def rand_box():
        y0, x0 = rng.integers(0, 150, 2)
        hh, ww = rng.integers(3, 110, 2)
        return box(y0, min(y0 + hh, H), x0, min(x0 + ww, W))

    objects = [(img, m) for img in (1, 2, 3) for m in [SMALL, MEDIUM, LARGE, *(rand_box() for _ in range(5))]]
    coco = gt(objects, images=(1, 2, 3))
    props = []
    for img in (1, 2, 3):
        recs = [record(rand_box(), *rng.uniform(0.5, 1.0, 2)) for _ in range(40)]
        recs += [record(m, *rng.uniform(0.5, 1.0, 2)) for i, m in objects if i == img and rng.random() < 0.5]
        props += records_to_proposals(recs, img, H, W)
    ext = evaluate_proposals(coco, props, [1, 2, 3])
    std = evaluate_proposals(coco, props, [1, 2, 3], max_dets=[10, 100, 1000])
    for m in (10, 100, 1000):
        assert average_recall(ext, m) == average_recall(std, m)
    for area in ("small", "medium", "large"):
        assert average_recall(ext, 1000, area) == average_recall(std, 1000, area)
    with contextlib.redirect_stdout(io.StringIO()):
        std.summarize()
    ours = [average_recall(std, 10), average_recall(std, 100), average_recall(std, 1000),
            *(average_recall(std, 1000, a) for a in ("small", "medium", "large"))]
    ref = [v if v != -1 else float("nan") for v in std.stats[6:12]]
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-12)
    assert 0 < average_recall(ext, 10) < average_recall(ext, 100) <= 1


def test_average_recall_rejects_unevaluated_index():
    ev = evaluate_proposals(gt([(1, SMALL)]), [], [1], max_dets=[10, 100])
    with pytest.raises(EvaluationError, match="max_dets 1000 not evaluated"):
        average_recall(ev, 1000)
    with pytest.raises(EvaluationError, match="area 'tiny'"):
        average_recall(ev, 10, "tiny")
    with pytest.raises(EvaluationError, match="increasing"):
        evaluate_proposals(gt([(1, SMALL)]), [], [1], max_dets=[100, 10])


def test_segmentation_formats_agree_and_sizes_are_checked():
    m = box(3, 17, 5, 40)
    coco_rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))          # bytes counts
    counts, prev, v = [], 0, False                                                 # uncompressed
    flat = m.flatten(order="F")
    for i, x in enumerate(flat):
        if x != v:
            counts.append(i - prev)
            prev, v = i, x
    counts.append(len(flat) - prev)
    want = rle(m)
    for seg in (m, m.astype(np.uint8), coco_rle, want, {"size": [H, W], "counts": counts}):
        assert to_coco_rle(seg, H, W) == want
    with pytest.raises(EvaluationError, match=r"image 5, mask #1: mask shape \(10, 10\)"):
        records_to_proposals([record(m), record(np.zeros((10, 10), bool))], 5, H, W)
    with pytest.raises(EvaluationError, match="image 5, mask #0: mask record lacks 'stability_score'"):
        records_to_proposals([{"segmentation": m, "predicted_iou": 1.0}], 5, H, W)


# --------------------------------------------------------------------------------------------
# Dataset loading (the real coco_tiny annotations)
# --------------------------------------------------------------------------------------------


def coco_tiny_annotations():
    return shared_path("coco_tiny", "annotations", "instances_val2017.json")


def test_load_dataset_subset_is_deterministic_and_class_agnostic():
    ann = coco_tiny_annotations()
    ds = load_dataset(ann, limit=3)
    all_ids = sorted(json.loads(ann.read_text())["images"], key=lambda i: i["id"])
    assert ds.image_ids == [i["id"] for i in all_ids[:3]]
    assert ds.images_dir == ann.parent.parent / "val2017"
    assert ds.coco.getCatIds() == [1]
    assert {a["category_id"] for a in ds.coco.dataset["annotations"]} == {1}
    s = load_dataset(ann).summary()
    assert (s["images"], s["instances"], s["crowd"]) == (80, 804, 11)  # coco_tiny/README.md
    assert s["instances_by_size"] == {"small": 337, "medium": 297, "large": 170}
    ds = load_dataset(ann, image_ids=[all_ids[5]["id"], all_ids[1]["id"]], limit=1)
    assert ds.image_ids == [all_ids[5]["id"]]


def test_load_dataset_errors_name_the_file_or_ids(tmp_path):
    ann = coco_tiny_annotations()
    with pytest.raises(EvaluationError, match=r"instances_val2017.json: unknown image id\(s\) \[123\]"):
        load_dataset(ann, image_ids=[123])
    with pytest.raises(EvaluationError, match="limit must be >= 1"):
        load_dataset(ann, limit=0)
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(EvaluationError, match="bad.json: not a COCO instances file"):
        load_dataset(bad, images_dir=tmp_path)
    with pytest.raises(EvaluationError, match="missing.json: cannot read"):
        load_dataset(tmp_path / "missing.json")
    with pytest.raises(EvaluationError, match="images folder not found"):
        load_dataset(ann, images_dir=tmp_path / "nope")


# --------------------------------------------------------------------------------------------
# Generation with cache, CLI (stand-in generator: the ground-truth masks themselves)
# --------------------------------------------------------------------------------------------


class GroundTruthGenerator:
    """Returns the non-crowd ground-truth masks of the dataset image it is given (found by
    its pixels)."""

    def __init__(self, dataset):
        from amg.io import load_image
        self.dataset, self.calls = dataset, 0
        self.ids = {load_image(dataset.image_path(i))[0].tobytes(): i for i in dataset.image_ids}

    def generate(self, image):
        self.calls += 1
        coco = self.dataset.coco
        img = self.ids[image.tobytes()]
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[img], iscrowd=False))
        return [record(coco.annToMask(a).astype(bool), 0.9, 0.95) for a in anns]


def test_generate_with_cache_and_report_outputs(tmp_path):
    ds = load_dataset(coco_tiny_annotations(), limit=2)
    gen = GroundTruthGenerator(ds)
    made = []
    src = ProposalSource("gt", {"kind": "test", "v": 1}, lambda: made.append(1) or gen)
    first = generate_proposals(src, ds, cache=tmp_path / "c", progress=False)
    assert gen.calls == 2 and not any(r.cached for r in first)
    again = generate_proposals(ProposalSource("gt", {"kind": "test", "v": 1}, lambda: made.append(1) or gen),
                               ds, cache=tmp_path / "c", progress=False)
    assert gen.calls == 2 and len(made) == 1 and all(r.cached for r in again)  # never built again
    assert [r.masks for r in again] == [r.masks for r in first]
    assert [r.seconds for r in again] == [r.seconds for r in first]
    folder = src.cache_dir(tmp_path / "c")
    assert json.loads((folder / "meta.json").read_text())["key"] == {"kind": "test", "v": 1}
    # Another key is another folder: computed again.
    generate_proposals(ProposalSource("gt", {"kind": "test", "v": 2}, lambda: gen), ds,
                       cache=tmp_path / "c", progress=False)
    assert gen.calls == 4

    report = evaluate_sources([src], ds, cache=tmp_path / "c", progress=False)
    row = report["rows"][0]
    n_gt = [len(ds.coco.getAnnIds(imgIds=[i], iscrowd=False)) for i in ds.image_ids]
    assert n_gt == [17, 2]
    # Every object found with 100 proposals; with 10, at most 10 of the first image's 17.
    assert row["AR@100"] == row["AR@1000"] == 1.0
    assert row["AR@10"] == pytest.approx(12 / 19, abs=1e-12)
    assert row["images"] == 2 and row["per_image"][0]["cached"]
    assert row["masks_per_image"] == 19 / 2
    md = format_markdown(report)
    assert "| gt | 0.632 | 1.000 | 1.000 |" in md
    paths = write_plots(report, tmp_path / "plots")
    assert [p.name for p in paths] == ["recall_vs_proposals.png", "recall_by_size.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths)


def load_tool():
    spec = importlib.util.spec_from_file_location("tools_evaluate", REPO / "tools" / "evaluate.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_cli_rows_outputs_and_exit_codes(tmp_path, monkeypatch, capsys):
    tool = load_tool()
    seen = []

    def fake_source(preset, overrides, model="mobile_sam", device="cpu", name=None):
        real = our_source(preset, overrides)  # validates preset and overrides
        seen.append((preset, overrides))
        ds = load_dataset(coco_tiny_annotations(), image_ids=[5001, 10764])
        return ProposalSource(real.name, {"kind": "test", **real.key["params"]}, lambda: GroundTruthGenerator(ds))

    monkeypatch.setattr(tool, "our_source", fake_source)
    out = tmp_path / "out"
    ids = "5001,10764"
    rc = tool.main(["--image-ids", ids, "--preset", "default", "--preset", "crops:points_per_side=16,box_nms_thresh=0.5",
                    "--set", "pred_iou_thresh=0.8", "--cache", str(tmp_path / "c"), "--no-progress",
                    "--json", str(out / "r.json"), "--markdown", str(out / "r.md"), "--plots", str(out / "p")])
    assert rc == 0
    assert seen == [("default", {"pred_iou_thresh": 0.8}),
                    ("crops", {"pred_iou_thresh": 0.8, "points_per_side": 16, "box_nms_thresh": 0.5})]
    report = json.loads((out / "r.json").read_text())
    assert report["dataset"]["image_ids"] == [5001, 10764]
    assert [r["name"] for r in report["rows"]] == [
        "default[pred_iou_thresh=0.8]", "crops[pred_iou_thresh=0.8,points_per_side=16,box_nms_thresh=0.5]"]
    assert all(r["AR@1000"] == 1.0 and r["AR@10"] == pytest.approx(12 / 19) for r in report["rows"])
    assert "tools/evaluate.py --image-ids 5001,10764" in (out / "r.md").read_text()
    assert sorted(p.name for p in (out / "p").iterdir()) == ["recall_by_size.png", "recall_vs_proposals.png"]
    assert "| default[pred_iou_thresh=0.8] | 0.632 | 1.000 |" in capsys.readouterr().out

    assert tool.main(["--limit", "1", "--preset", "nosuch"]) == 2
    assert "unknown preset 'nosuch'" in capsys.readouterr().err
    assert tool.main(["--image-ids", "1,x"]) == 2
    assert "--image-ids" in capsys.readouterr().err
    assert tool.main(["--limit", "1", "--set", "points_per_sid=3"]) == 2
    assert "points_per_sid" in capsys.readouterr().err


def test_cli_reference_missing_is_reported(tmp_path, monkeypatch, capsys):
    tool = load_tool()
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "mobilesam_lite" else real_find_spec(name, *a))
    rc = tool.main(["--limit", "1", "--reference", "--no-progress"])
    assert rc == 1
    err = capsys.readouterr().err
    assert "--reference default skipped" in err and "mobilesam-lite" in err and ".[test]" in err


def test_cli_reference_row_key():
    pytest.importorskip("mobilesam_lite", reason="the reference oracle needs the test extra")
    tool = load_tool()
    src = tool.reference_source("default", {}, "cpu")
    assert src.name == "reference" and src.key["kind"] == "reference"
    assert src.key["params"]["points_per_side"] == 32 and src.key["params"]["pred_iou_thresh"] == 0.88
    assert tool.reference_source("crops", {"points_per_side": 8}, "cpu").name == "reference:crops[points_per_side=8]"


# --------------------------------------------------------------------------------------------
# Real run: our generator, MobileSAM weights, two coco_tiny photos
# --------------------------------------------------------------------------------------------


def test_real_run_on_coco_tiny(mobile_sam, tmp_path):
    ds = load_dataset(coco_tiny_annotations(), limit=2)
    src = our_source("default", {"points_per_side": 8}, model=mobile_sam)
    assert src.key["params"]["points_per_side"] == 8 and src.key["model"]["class"] == "Sam"
    report = evaluate_sources([src], ds, cache=tmp_path / "c", progress=False)
    assert report["dataset"]["image_ids"] == ds.image_ids and report["dataset"]["images"] == 2
    assert report["metric"]["use_cats"] == 0
    (row,) = report["rows"]
    assert row["name"] == "default[points_per_side=8]" and row["images"] == 2
    assert row["masks_per_image"] > 0 and row["seconds_per_image"] > 0
    for k in ("AR@10", "AR@100", "AR@1000", "AR_small@1000", "AR_medium@1000", "AR_large@1000"):
        assert 0.0 <= row[k] <= 1.0, k
    for k in ("AR@10", "AR@100", "AR@1000", "AR_large@1000"):
        assert row[k] > 0, k
    assert row["AR@10"] <= row["AR@100"] <= row["AR@1000"]
    assert len(row["recall_curve"]["AR"]) == len(RECALL_MAX_DETS)
    # Outputs.
    (tmp_path / "r.json").write_text(json.dumps(report))
    assert json.loads((tmp_path / "r.json").read_text())["rows"][0]["AR@1000"] == row["AR@1000"]
    md = format_markdown(report)
    assert md.count("| default[points_per_side=8] |") == 1 and "AR@1000" in md
    for p in write_plots(report, tmp_path / "plots"):
        assert p.stat().st_size > 1000
    # Rerun from the cache (same key): same numbers, nothing generated.
    same = ProposalSource(src.name, src.key, lambda: pytest.fail("cached images generated again"))
    again = evaluate_sources([same], ds, cache=tmp_path / "c", progress=False)
    assert again["rows"][0]["AR@1000"] == row["AR@1000"]
    assert all(p["cached"] for p in again["rows"][0]["per_image"])
