"""``tools/evaluate.py``: report rows, outputs and exit codes with a stand-in generator, the
reference row when the oracle is missing, and the reference row's key."""

from __future__ import annotations

import importlib.util
import json

import pytest

from amg.evaluation.ground_truth import load_dataset
from amg.evaluation.sources import ProposalSource, our_source

from .conftest import SHARED
from .test_tools_bench import load_tool
from .evaluation.cases import GroundTruthGenerator, coco_tiny_annotations


# The dataset beside this checkout's tests (SEGMENT_EVERYTHING_SHARED or ../shared), not the
# tool's default, which is the folder beside the repository.
DATASET = ["--dataset", str(SHARED / "coco_tiny")]


def test_cli_rows_outputs_and_exit_codes(tmp_path, monkeypatch, capsys):
    tool = load_tool("evaluate")
    seen = []

    def fake_source(preset, overrides, model="mobile_sam", device="cpu", name=None):
        real = our_source(preset, overrides)  # validates preset and overrides
        seen.append((preset, overrides))
        ds = load_dataset(coco_tiny_annotations(), image_ids=[5001, 10764])
        return ProposalSource(real.name, {"kind": "test", **real.key["params"]}, lambda: GroundTruthGenerator(ds))

    monkeypatch.setattr(tool, "our_source", fake_source)
    out = tmp_path / "out"
    ids = "5001,10764"
    rc = tool.main([*DATASET, "--image-ids", ids, "--preset", "default", "--preset", "crops:points_per_side=16,box_nms_thresh=0.5",
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
    assert f"tools/evaluate.py --dataset {SHARED / 'coco_tiny'} --image-ids 5001,10764" in \
        (out / "r.md").read_text()
    assert sorted(p.name for p in (out / "p").iterdir()) == ["recall_by_size.png", "recall_vs_proposals.png"]
    assert "| default[pred_iou_thresh=0.8] | 0.632 | 1.000 |" in capsys.readouterr().out

    assert tool.main([*DATASET, "--limit", "1", "--preset", "nosuch"]) == 2
    assert "unknown preset 'nosuch'" in capsys.readouterr().err
    assert tool.main([*DATASET, "--image-ids", "1,x"]) == 2
    assert "--image-ids" in capsys.readouterr().err
    assert tool.main([*DATASET, "--limit", "1", "--set", "points_per_sid=3"]) == 2
    assert "points_per_sid" in capsys.readouterr().err


def test_cli_reference_missing_is_reported(tmp_path, monkeypatch, capsys):
    tool = load_tool("evaluate")
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "mobilesam_lite" else real_find_spec(name, *a))
    rc = tool.main([*DATASET, "--limit", "1", "--reference", "--no-progress"])
    assert rc == 1
    err = capsys.readouterr().err
    assert "--reference default skipped" in err and "mobilesam-lite" in err and ".[test]" in err


def test_cli_reference_row_key():
    pytest.importorskip("mobilesam_lite", reason="the reference oracle needs the test extra")
    tool = load_tool("evaluate")
    src = tool.reference_source("default", {}, "cpu")
    assert src.name == "reference" and src.key["kind"] == "reference"
    assert src.key["params"]["points_per_side"] == 32 and src.key["params"]["pred_iou_thresh"] == 0.88
    assert tool.reference_source("crops", {"points_per_side": 8}, "cpu").name == "reference:crops[points_per_side=8]"
