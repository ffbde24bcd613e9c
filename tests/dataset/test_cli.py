"""The ``segment-everything`` command end to end on real photos with the real MobileSAM weights:
through ``amg.dataset.cli.main`` and once through the installed console script.

Small point grids (8 x 8, or 4 x 4) keep each image to seconds on a CPU.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

import amg.generator
from amg.config import parameters
from amg.dataset.cli import build_parser, main
from amg.dataset.state import STATE_DIR

from ..conftest import shared_path

# pycocotools' decode trips a numpy-2 copy-keyword DeprecationWarning inside its C extension.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

RECORD_KEYS = {"segmentation", "area", "bbox", "predicted_iou", "point_coords",
               "stability_score", "crop_box"}
PHOTO_HW = {"dog.jpg": (534, 800), "groceries.jpg": (534, 800)}


def check_records(json_path: Path, hw: tuple[int, int], *, min_iou: float = 0.88,
                  min_stability: float = 0.95) -> list[dict]:
    """Load a records file and check every record against the documented format.

    Returns the records (at least one)."""
    h, w = hw
    records = json.loads(json_path.read_text())
    assert isinstance(records, list)
    assert len(records) >= 1, f"{json_path.name}: no mask found"
    for i, r in enumerate(records):
        assert set(r) == RECORD_KEYS, (i, sorted(r))
        seg = r["segmentation"]
        assert set(seg) == {"size", "counts"}
        assert seg["size"] == [h, w]
        assert isinstance(seg["counts"], str)
        m = mask_utils.decode(seg)
        assert m.shape == (h, w) and m.dtype == np.uint8
        assert isinstance(r["area"], int)
        assert int(mask_utils.area(seg)) == r["area"] == int(m.sum()) > 0
        # bbox: XYWH, with the reference's inclusive x2 (w = x2 - x1): it spans the mask exactly.
        x, y, bw, bh = r["bbox"]
        assert 0 <= x and 0 <= y and bw >= 0 and bh >= 0
        assert x + bw <= w - 1 and y + bh <= h - 1
        ys, xs = np.nonzero(m)
        assert (xs.min(), ys.min(), xs.max(), ys.max()) == (x, y, x + bw, y + bh), i
        # the scores passed the filters they were kept by
        assert min_iou < r["predicted_iou"]
        assert min_stability <= r["stability_score"] <= 1.0
        (px, py), = r["point_coords"]
        assert 0 <= px <= w and 0 <= py <= h
        assert r["crop_box"] == [0, 0, w, h]  # no crop layers
    return records


def copy_photos(dst: Path, *names: str) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for n in names:
        shutil.copy(shared_path("images", n), dst / n)


# --------------------------------------------------------------------------------------------
# Real runs through main()
# --------------------------------------------------------------------------------------------


def test_one_photo(tmp_path, capsys):
    out = tmp_path / "out"
    rc = main([str(shared_path("images", "dog.jpg")), "--output", str(out),
               "--points-per-side", "8"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert sorted(os.listdir(out)) == [STATE_DIR, "dog.json"]  # no temp file left over
    records = check_records(out / "dog.json", PHOTO_HW["dog.jpg"])
    assert "1/1 images" in captured.out and f"{len(records)} masks" in captured.out
    assert "error" not in captured.err.lower()


def test_crops_preset_with_flag_overrides_reach_generator(tmp_path, capsys, monkeypatch):
    seen = []
    real_init = amg.generator.MaskGenerator.__init__

    def spy_init(self, model, config=None, **params):
        seen.append(config)
        real_init(self, model, config, **params)

    monkeypatch.setattr(amg.generator.MaskGenerator, "__init__", spy_init)
    out = tmp_path / "out"
    rc = main([str(shared_path("images", "dog.jpg")), "-o", str(out), "--config", "crops",
               "--points-per-side", "4", "--crop-n-layers", "0", "--pred-iou-thresh", "0.8"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    (cfg,) = seen
    # flags override the preset ...
    assert cfg.points_per_side == 4 and cfg.crop_n_layers == 0 and cfg.pred_iou_thresh == 0.8
    # ... the rest of the preset stays ...
    assert cfg.crop_n_points_downscale_factor == 2 and cfg.min_mask_region_area == 100
    assert cfg.stability_score_thresh == 0.95
    # ... and the JSON output is always COCO RLE.
    assert cfg.output_mode == "coco_rle"
    # No crop layers: every record's crop box is the whole image.
    check_records(out / "dog.json", PHOTO_HW["dog.jpg"], min_iou=0.8)


# --------------------------------------------------------------------------------------------
# Configuration plumbing without the network (fake model and generator: fast)
# --------------------------------------------------------------------------------------------


@pytest.fixture
def fake_generator(monkeypatch):
    """Replace the model loader and MaskGenerator; returns the configs the generator got."""
    import sam_model

    seen = []

    class FakeGenerator:
        def __init__(self, model, config=None, **params):
            assert model == "fake-model" and not params
            seen.append(config)

        def generate(self, image):
            assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
            return []

    monkeypatch.setattr(sam_model, "load_model", lambda name, device="cpu": "fake-model")
    monkeypatch.setattr(amg.generator, "MaskGenerator", FakeGenerator)
    return seen


def test_yaml_config_file_and_flags(tmp_path, capsys, fake_generator):
    cfg_path = tmp_path / "mine.yaml"
    cfg_path.write_text("points_per_side: 12\nbox_nms_thresh: 0.5\nmin_mask_region_area: 7\n")
    out = tmp_path / "out"
    rc = main([str(shared_path("images", "dog.jpg")), "-o", str(out), "--config", str(cfg_path),
               "--min-mask-region-area", "0", "--crop-overlap-ratio", "0.25"])
    assert rc == 0, capsys.readouterr().err
    (cfg,) = fake_generator
    assert cfg.points_per_side == 12 and cfg.box_nms_thresh == 0.5
    assert cfg.min_mask_region_area == 0 and cfg.crop_overlap_ratio == 0.25
    assert cfg.output_mode == "coco_rle"
    assert json.loads((out / "dog.json").read_text()) == []  # no masks: an empty list


def test_default_preset_used_without_config(tmp_path, capsys, fake_generator):
    from amg.config import AMGConfig

    rc = main([str(shared_path("images", "dog.jpg")), "-o", str(tmp_path / "out")])
    assert rc == 0, capsys.readouterr().err
    (cfg,) = fake_generator
    assert cfg == AMGConfig(output_mode="coco_rle")


@pytest.fixture
def spy_real_generator(monkeypatch):
    """Random-weight models of the named architecture and the real MaskGenerator construction
    (generation skipped); returns the resolved configs."""
    import sam_model

    seen = []
    real_init = amg.generator.MaskGenerator.__init__

    def spy_init(self, model, config=None, **params):
        real_init(self, model, config, **params)
        seen.append(self.config)

    monkeypatch.setattr(sam_model, "load_model",
                        lambda name, device="cpu": sam_model.build_model(name, device))
    monkeypatch.setattr(sam_model, "fetch_checkpoint", lambda name, *a, **k: Path(name))  # start check
    monkeypatch.setattr(amg.generator.MaskGenerator, "__init__", spy_init)
    monkeypatch.setattr(amg.generator.MaskGenerator, "generate", lambda self, image: [])
    return seen


def test_sam2_model_without_flags_gets_sam2_generator_defaults(tmp_path, capsys,
                                                              spy_real_generator):
    rc = main([str(shared_path("images", "dog.jpg")), "-o", str(tmp_path / "a"),
               "--model", "sam2.1_hiera_tiny"])
    assert rc == 0, capsys.readouterr().err
    rc = main([str(shared_path("images", "dog.jpg")), "-o", str(tmp_path / "b"),
               "--model", "sam2.1_hiera_tiny", "--pred-iou-thresh", "0.9", "--use-m2m",
               "--no-multimask-output", "--mask-threshold", "0.5"])
    assert rc == 0, capsys.readouterr().err
    default, flags = spy_real_generator
    assert (default.pred_iou_thresh, default.mask_threshold, default.multimask_output,
            default.use_m2m) == (0.8, 0.0, True, False)
    assert (flags.pred_iou_thresh, flags.mask_threshold, flags.multimask_output,
            flags.use_m2m) == (0.9, 0.5, False, True)


def test_sam2_option_with_sam_v1_model_is_a_named_error(tmp_path, capsys, spy_real_generator):
    err = run_bad([str(shared_path("images", "dog.jpg")), "-o", str(tmp_path / "out"),
                   "--model", "mobile_sam", "--use-m2m", "--no-progress"], capsys)
    assert "use_m2m is not an option of mobile_sam" in err


def test_colliding_stems_get_distinct_outputs(tmp_path, capsys, fake_generator):
    copy_photos(tmp_path / "in" / "a", "dog.jpg")
    copy_photos(tmp_path / "in" / "b", "dog.jpg")
    out = tmp_path / "out"
    rc = main([str(tmp_path / "in"), "-o", str(out)])
    assert rc == 0, capsys.readouterr().err
    names = sorted(os.listdir(out))
    assert names == [STATE_DIR, "a__dog.json", "b__dog.json"]


# --------------------------------------------------------------------------------------------
# Bad arguments: exit code 2, a message, nothing written
# --------------------------------------------------------------------------------------------


def run_bad(argv: list[str], capsys) -> str:
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith("segment-everything: error:"), err
    return err


def test_unknown_preset(tmp_path, capsys):
    out = tmp_path / "out"
    err = run_bad([str(shared_path("images", "dog.jpg")), "-o", str(out), "--config", "fastestest"],
                  capsys)
    assert "unknown preset 'fastestest'" in err and "default" in err and "crops" in err
    assert not out.exists()


def test_nonexistent_input(tmp_path, capsys):
    out = tmp_path / "out"
    missing = tmp_path / "no_such_photo.jpg"
    err = run_bad([str(shared_path("images", "dog.jpg")), str(missing), "-o", str(out)], capsys)
    assert "no_such_photo.jpg" in err
    assert not out.exists()


def test_invalid_flag_value_names_parameter(tmp_path, capsys):
    err = run_bad([str(shared_path("images", "dog.jpg")), "-o", str(tmp_path / "out"),
                   "--pred-iou-thresh", "1.5"], capsys)
    assert "pred_iou_thresh" in err and "1.5" in err


def test_folder_without_images(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    err = run_bad([str(tmp_path / "empty"), "-o", str(tmp_path / "out")], capsys)
    assert "no images found" in err


def test_unknown_model(tmp_path, capsys):
    out = tmp_path / "out"
    err = run_bad([str(shared_path("images", "dog.jpg")), "-o", str(out),
                   "--model", str(tmp_path / "nope.pt")], capsys)
    assert "nope.pt" in err
    assert not out.exists()


@pytest.mark.parametrize("argv", [
    ["IMG", "--points-per-side", "eight", "-o", "OUT"],  # not an int
    ["IMG"],                                             # --output missing
    ["IMG", "-o", "OUT", "--pointz-per-side", "8"],      # unknown flag
], ids=["not-int", "no-output", "unknown-flag"])
def test_argparse_errors_exit_2(argv, tmp_path, capsys):
    argv = [str(shared_path("images", "dog.jpg")) if a == "IMG" else
            str(tmp_path / "out") if a == "OUT" else a for a in argv]
    with pytest.raises(SystemExit) as ei:
        main(argv)
    assert ei.value.code == 2
    err = capsys.readouterr().err  # one line, not the whole usage text
    assert err.startswith("segment-everything: error: ") and err.count("\n") == 1, err
    assert err.endswith(" (see segment-everything --help)\n")


def test_generation_flags_are_the_config_fields_with_help_and_default(monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # one line per flag in the help text
    text = build_parser().format_help()
    flags = [p for p in parameters() if p.flag]
    assert {p.name for p in parameters()} - {p.name for p in flags} == {"point_grids", "output_mode"}
    for p in flags:
        assert f"{p.help} (default: {p.default_label()})" in text, p.name
    assert "--compute-dtype {float32,bfloat16,auto}" in text
    assert "--points-per-side INT" in text and "--pred-iou-thresh FLOAT" in text
    assert "--fill-holes, --no-fill-holes" in text
    # Every numeric flag parses to its field's type; unset flags stay None (the preset decides).
    values = {int: "3", float: "0.5"}
    argv = ["IMG", "-o", "OUT"]
    for p in flags:
        if p.type in values:
            argv += ["--" + p.name.replace("_", "-"), values[p.type]]
    args = build_parser().parse_args(argv + ["--compute-dtype", "bfloat16"])
    for p in flags:
        if p.type in values:
            assert getattr(args, p.name) == p.type(values[p.type]), p.name
            assert type(getattr(args, p.name)) is p.type, p.name
    assert args.compute_dtype == "bfloat16" and args.fill_holes is None
    assert build_parser().parse_args(["IMG", "-o", "OUT"]).points_per_side is None


def test_compute_dtype_choices_are_checked(capsys):
    with pytest.raises(SystemExit) as ei:
        build_parser().parse_args(["IMG", "-o", "OUT", "--compute-dtype", "float16"])
    assert ei.value.code == 2
    assert "invalid choice: 'float16'" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# The installed console script
# --------------------------------------------------------------------------------------------


def console_script() -> str:
    exe = shutil.which("segment-everything")
    if exe is None:
        pytest.fail("the segment-everything console script is not installed (pip install -e .)")
    return exe


def test_console_script_help():
    proc = subprocess.run([console_script(), "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: segment-everything")
    for flag in ("--output", "--config", "--model", "--device", "--points-per-side",
                 "--crop-n-layers", "--min-mask-region-area"):
        assert flag in proc.stdout


def test_console_script_real_run(tmp_path):
    # Run from an unrelated directory: presets and weights must not depend on the cwd.
    inp, out = tmp_path / "in", tmp_path / "out"
    copy_photos(inp, "groceries.jpg")
    (inp / "truncated.jpg").write_bytes(
        shared_path("images", "dog.jpg").read_bytes()[:40000])
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [console_script(), str(inp), "-o", str(out), "--config", "default",
         "--points-per-side", "4"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert proc.returncode == 1, proc.stderr
    assert sorted(os.listdir(out)) == [STATE_DIR, "errors.csv", "groceries.json"]
    check_records(out / "groceries.json", PHOTO_HW["groceries.jpg"])
    assert "truncated.jpg" in proc.stderr and "image file is truncated" in proc.stderr
    assert "1/2 images" in proc.stdout
