"""Our generator as a proposal source (:func:`amg.evaluation.sources.our_source`) on two coco_tiny
photos with the MobileSAM weights: its key, the report's numbers and outputs, and a rerun served
from the cache."""

from __future__ import annotations

import json

import pytest

from amg.evaluation.ground_truth import load_dataset
from amg.evaluation.plots import write_plots
from amg.evaluation.recall import RECALL_MAX_DETS
from amg.evaluation.report import evaluate_sources, format_markdown
from amg.evaluation.sources import ProposalSource, our_source

from .cases import coco_tiny_annotations


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
