"""A source run over the images with the per-image cache (:mod:`amg.evaluation.cache`), and the
report built from it (:mod:`amg.evaluation.report`, :mod:`amg.evaluation.plots`), with a stand-in
generator returning the ground-truth masks: nothing is generated twice, another key is another
folder, and the numbers are exact."""

from __future__ import annotations

import json

import pytest

from amg.evaluation.cache import generate_proposals
from amg.evaluation.ground_truth import load_dataset
from amg.evaluation.plots import write_plots
from amg.evaluation.report import evaluate_sources, format_markdown
from amg.evaluation.sources import ProposalSource

from .cases import GroundTruthGenerator, coco_tiny_annotations


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
