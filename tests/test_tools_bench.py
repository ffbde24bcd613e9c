"""``tools/bench.py`` and ``tools/bench_encoder.py``: the parity figures, the JSON report and the
argument errors (speed itself is measured by running the tools, never asserted in a test)."""
from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from .conftest import REPO, shared_path


def load_tool(name: str):
    spec = importlib.util.spec_from_file_location(f"tools_{name}", REPO / "tools" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def rle_record(mask: np.ndarray) -> dict:
    return {"segmentation": mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))}


def test_match_fractions_exact():
    bench = load_tool("bench")
    a = np.zeros((20, 20), bool); a[2:12, 2:12] = True           # 100 px
    b = np.zeros((20, 20), bool); b[14:18, 14:18] = True         # disjoint
    a_shrunk = a.copy(); a_shrunk[2, 2:7] = False                # IoU 95/100 = 0.95
    a_cut = a.copy(); a_cut[2:4, 2:12] = False                   # IoU 80/100 = 0.8
    ref = [rle_record(a), rle_record(b)]
    assert bench.match_fractions(ref, ref) == (1.0, 1.0)
    assert bench.match_fractions(ref, [rle_record(a_shrunk), rle_record(b)]) == (1.0, 1.0)
    # a at IoU 0.8 is no match at 0.9: half the reference matched, half of ours.
    assert bench.match_fractions(ref, [rle_record(a_cut), rle_record(b)]) == (0.5, 0.5)
    assert bench.match_fractions(ref, [rle_record(a_cut), rle_record(b)], thresh=0.8) == (1.0, 1.0)
    # One of ours only: it matches, one of the two reference masks is found.
    assert bench.match_fractions(ref, [rle_record(b)]) == (0.5, 1.0)
    assert bench.match_fractions([], []) == (1.0, 1.0)
    assert bench.match_fractions(ref, []) == (0.0, 0.0)


def test_parse_overrides_and_errors():
    bench = load_tool("bench")
    assert bench.parse_overrides(["points_per_side=16", "point_grids=None",
                                  "pred_iou_thresh=0.8"]) == {
        "points_per_side": 16, "point_grids": None, "pred_iou_thresh": 0.8}
    with pytest.raises(ValueError, match="points_per_side"):
        bench.parse_overrides(["points_per_side"])
    with pytest.raises(ValueError, match="not JSON"):
        bench.parse_overrides(["points_per_side=sixteen"])


def test_bench_against_reference_on_a_real_photo(tmp_path, capsys):
    pytest.importorskip("mobilesam_lite", reason="the reference is in the test extra")
    bench = load_tool("bench")
    out = tmp_path / "dog.json"
    overrides = {"points_per_side": 4, "pred_iou_thresh": 0.88, "stability_score_thresh": 0.95,
                 "compute_dtype": "float32"}
    assert bench.main([str(shared_path("images", "dog.jpg")), "--set",
                       *[f"{k}={json.dumps(v)}" for k, v in overrides.items()],
                       "--also", "fast", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["overrides"] == overrides
    (row,) = report["rows"]
    assert row["image"] == "dog.jpg" and row["size"] == "800x534"
    # Same computation: the same masks, all matched both ways.
    assert row["ours_masks"] == row["ref_masks"] > 0
    assert row["ref_matched"] == 1.0 and row["ours_matched"] == 1.0
    # The overrides reach the --also preset too (fast differs only by its bfloat16 arithmetic,
    # overridden here, and its decoder chunk size, which never changes the output), so it is the
    # same computation again.
    assert row["fast_masks"] == row["ref_masks"] and row["fast_ref_matched"] == 1.0
    assert row["speedup"] == pytest.approx(row["ref_s"] / row["ours_s"])
    # Peak memory holds at least the MobileSAM weights (40 MB) in each run.
    assert row["ours_peak_mb"] > 40 and row["ref_peak_mb"] > 40
    printed = capsys.readouterr().out
    assert "| dog.jpg | 800x534 |" in printed and "images/s over 1 image(s)" in printed


def test_bench_sam2_against_official_generator(tmp_path, capsys):
    """--model sam2.1_hiera_tiny: the official SAM2AutomaticMaskGenerator and ours with the same
    seeded random weights (filters lowered so that such masks pass) find the same masks."""
    pytest.importorskip("sam2", reason="the SAM 2 reference is in the test extra")
    bench = load_tool("bench")
    out = tmp_path / "dog.json"
    assert bench.main([str(shared_path("images", "dog.jpg")), "--model", "sam2.1_hiera_tiny",
                       "--set", "points_per_side=3", "pred_iou_thresh=0.5",
                       "stability_score_thresh=0.8", "box_nms_thresh=1.0",
                       "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    (row,) = report["rows"]
    assert report["model"] == "sam2.1_hiera_tiny"
    assert row["ours_masks"] == row["ref_masks"] > 0
    assert row["ref_matched"] == 1.0 and row["ours_matched"] == 1.0
    assert row["ours_peak_mb"] > 100 and row["ref_peak_mb"] > 100  # Hiera-T weights and more
    assert "model: sam2.1_hiera_tiny (random, seed 0 weights)" in capsys.readouterr().out


def test_bench_model_without_reference_is_an_argument_error(capsys):
    bench = load_tool("bench")
    with pytest.raises(SystemExit) as e:
        bench.main(["x.jpg", "--model", "vit_q"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--model vit_q: no reference generator" in err and "sam2.1_hiera_tiny" in err


@pytest.mark.parametrize("model", ["sam_hq_vit_tiny", "efficient_sam_vitt"])
def test_bench_random_weight_model_against_its_reference(model, tmp_path, capsys):
    """SAM-HQ against segment_anything_hq's generator, EfficientSAM against the grid generator
    over the official model: same random weights, the lowered filters, a 3 x 3 grid."""
    pytest.importorskip("segment_anything_hq", reason="the reference is in the test extra")
    bench = load_tool("bench")
    out = tmp_path / "r.json"
    assert bench.main([str(shared_path("images", "dog.jpg")), "--model", model,
                       "--set", "points_per_side=3", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["model"] == model and report["seed"] == 0
    assert report["overrides"]["points_per_side"] == 3
    assert report["overrides"]["box_nms_thresh"] == 1.0  # lowered for random weights
    (row,) = report["rows"]
    assert row["ours_masks"] == row["ref_masks"] >= 4
    assert row["ref_matched"] == 1.0 and row["ours_matched"] == 1.0
    assert row["speedup"] == pytest.approx(row["ref_s"] / row["ours_s"])
    assert f"model: {model} (random, seed 0 weights)" in capsys.readouterr().out


def test_bench_model_without_random_weight_reference(capsys):
    bench = load_tool("bench")
    with pytest.raises(SystemExit) as e:
        bench.main(["x.jpg", "--model", "vit_b"])
    assert e.value.code == 2
    assert "--model vit_b: " in capsys.readouterr().err


def test_bench_bad_set_is_an_argument_error(capsys):
    bench = load_tool("bench")
    with pytest.raises(SystemExit) as e:
        bench.main(["x.jpg", "--set", "points_per_side", "--no-reference"])
    assert e.value.code == 2
    assert "points_per_side" in capsys.readouterr().err


def test_bench_encoder_rejects_batch_of_one(capsys):
    tool = load_tool("bench_encoder")
    with pytest.raises(SystemExit) as e:
        tool.main(["--batch", "1"])
    assert e.value.code == 2
    assert "--batch" in capsys.readouterr().err


def test_profile_stages_counts_every_stage_call(tmp_path, capsys):
    """A 4 x 4 grid on a real photo: one encoder call, one point decoder prepared and run on
    one batch of 16 prompts in decoder chunks of 4, one upscaling pass, one box NMS, one
    post-processing; the labelled stages fit in the total."""
    prof = load_tool("profile_stages")
    out = tmp_path / "p.json"
    assert prof.main([str(shared_path("images", "dog.jpg")), "--set", "points_per_side=4",
                      "--json", str(out)]) == 0
    res = json.loads(out.read_text())["results"][0]
    stages = {k: v["calls"] for k, v in res["stages"].items()}
    assert res["size"] == "800x534" and res["masks"] > 0
    assert stages["amg.image_encoder"] == 1
    assert stages["amg.mask_decoder"] == 2              # prepare + one batch (points_per_batch 64)
    assert stages["decoder.transformer"] == 4           # 16 prompts / decoder_chunk_size 4
    # per chunk with an IoU survivor: the mask inputs, then the logits (no reject windows in
    # the whole-image crop)
    assert stages["decoder.mask_logits"] % 2 == 0 and 2 <= stages["decoder.mask_logits"] <= 8
    assert stages["amg.upscale_and_rle"] == stages["amg.box_nms"] == stages["amg.postprocess"] == 1
    top = [v["s"] for k, v in res["stages"].items() if k.startswith("amg.")]
    assert sum(top) <= res["total_s"] * 1.01
    assert "dog.jpg 800x534: total" in capsys.readouterr().out


def test_profile_stages_bad_set_is_named(capsys):
    prof = load_tool("profile_stages")
    assert prof.main([str(shared_path("images", "dog.jpg")), "--set", "points_per_side"]) == 2
    assert "points_per_side" in capsys.readouterr().err


def test_background_load_runs_and_stops_busy_processes():
    bench = load_tool("bench")
    import os
    with bench.background_load(2):
        children = [p for p in os.listdir("/proc") if p.isdigit() and _parent(p) == os.getpid()]
        assert len(children) == 2
        assert all(_state(p) in "RS" for p in children)
    assert not [p for p in os.listdir("/proc") if p.isdigit() and _parent(p) == os.getpid()
                and _state(p) != "Z"]


def _parent(pid: str) -> int:
    try:
        return int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


def _state(pid: str) -> str:
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "?"


def test_peer_without_ultralytics_is_a_usage_error(monkeypatch, capsys):
    import sys
    monkeypatch.setitem(sys.modules, "ultralytics", None)  # not installed
    bench = load_tool("bench")
    with pytest.raises(SystemExit) as exc:
        bench.main([str(shared_path("images", "dog.jpg")), "--peer", "ultralytics",
                    "--no-reference"])
    assert exc.value.code == 2
    assert "ultralytics is not installed" in capsys.readouterr().err


def test_sweep_resize_and_plot(tmp_path):
    bench = load_tool("bench")
    image = np.zeros((400, 600, 3), np.uint8)
    out = bench.resized_to(image, 0.96)  # 4x the pixels: 2x each side
    assert out.shape == (800, 1200, 3) and out.dtype == np.uint8
    assert bench.resized_to(image, 0.06).shape == (200, 300, 3)
    rows = [{"axis": "points", "value": v, "megapixels": 0.24, "ours_s": v / 8, "ours_peak_mb": 900.0,
             **({"ref_s": v, "ref_peak_mb": 1500.0} if v < 32 else {})} for v in (8, 16, 32)]
    rows += [{"axis": "size", "value": mp, "megapixels": mp, "ours_s": mp, "ours_peak_mb": 800 + mp}
             for mp in (0.3, 1.0)]
    path = tmp_path / "img" / "sweep.png"
    pytest.importorskip("matplotlib")
    bench.plot_sweep(rows, path, "test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
