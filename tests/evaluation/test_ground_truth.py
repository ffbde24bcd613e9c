"""Ground truth (:mod:`amg.evaluation.ground_truth`) from the real coco_tiny annotations: the
deterministic image subset, class-agnostic categories, instance counts, errors that name the
file or the ids."""

from __future__ import annotations

import json

import pytest

from amg.evaluation.errors import EvaluationError
from amg.evaluation.ground_truth import load_dataset

from .cases import coco_tiny_annotations


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


def test_split_halves_are_disjoint_alternating_and_cover_coco_tiny():
    from amg.evaluation.ground_truth import split_ids
    ann = coco_tiny_annotations()
    ids = sorted(i["id"] for i in json.loads(ann.read_text())["images"])
    tune = load_dataset(ann, split="tune").image_ids
    report = load_dataset(ann, split="report").image_ids
    assert len(tune) == len(report) == 40
    assert not set(tune) & set(report) and sorted(tune + report) == ids
    assert tune == ids[0::2] and report == ids[1::2]
    assert split_ids(list(reversed(ids)), "report") == report  # input order does not matter
    assert load_dataset(ann, split="report", limit=2).image_ids == report[:2]
    with pytest.raises(EvaluationError, match="split must be one of tune, report"):
        split_ids(ids, "test")
    with pytest.raises(EvaluationError, match="not both"):
        load_dataset(ann, split="tune", image_ids=ids[:1])
