"""The command with bad input on purpose: every failure ends with one line naming the file or
the flag (no traceback), with the documented exit code (0 all done, 1 some image failed or the
run stopped, 2 usage / cannot start), and nothing lost: a start that fails writes nothing, so
the corrected command runs without ``--overwrite``; a disk that fills up keeps the finished
images and the same command resumes to the uninterrupted run's files.

A fake model and generator (``box_generator``) keep each run to a fraction of a second; the
weight-cache cases use a temporary cache folder (the real cache is never touched)."""

from __future__ import annotations

import csv
import errno
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import amg.io
from amg.dataset.cli import EXIT_CODES, GENERATION_FLAGS, build_parser, main
from amg.dataset.outputs import FORMATS
from amg.dataset.state import STATE_DIR

from ..conftest import shared_path
from .test_cli_options import box_generator, photos  # noqa: F401 - fixture

DOG = str(shared_path("images", "dog.jpg"))


def one_error_line(err: str, only: bool = True) -> str:
    """The single ``segment-everything: error: ...`` line of ``err``, without its prefix; no
    traceback. ``only``: it is the only line (else the per-image ``error: <path>: ...`` lines
    reported during the run may precede it)."""
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    if not only:
        lines = [ln for ln in lines if ln.startswith("segment-everything: error: ")]
    assert len(lines) == 1, err
    assert lines[0].startswith("segment-everything: error: "), err
    return lines[0][len("segment-everything: error: "):]


def tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` but the run lock (relative path -> bytes)."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != "lock"}


def error_rows(out: Path) -> dict[str, str]:
    with open(out / "errors.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["path", "reason"]
    return {Path(p).name: reason for p, reason in rows[1:]}


# --------------------------------------------------------------------------------------------
# The output folder
# --------------------------------------------------------------------------------------------


def test_output_is_an_existing_file(tmp_path, capsys, box_generator):
    out = tmp_path / "out.txt"
    out.write_text("keep me")
    assert main([DOG, "-o", str(out)]) == 2
    assert one_error_line(capsys.readouterr().err) == f"--output {out}: exists and is not a folder"
    assert out.read_text() == "keep me" and box_generator == []
    assert main([DOG, "-o", str(out / "sub")]) == 2
    assert one_error_line(capsys.readouterr().err) == f"--output {out}/sub: {out} is not a folder"


def test_output_not_writable(tmp_path, capsys, monkeypatch, box_generator):
    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr("amg.dataset.preflight.tempfile.mkstemp", refuse)
    out = tmp_path / "ro" / "out"
    assert main([DOG, "-o", str(out)]) == 2
    assert one_error_line(capsys.readouterr().err) == (
        f"--output {out}: cannot create files in {tmp_path} (Permission denied)")
    assert not (tmp_path / "ro").exists()


@pytest.mark.skipif(not Path("/sys/kernel").is_dir(), reason="needs Linux sysfs")
def test_output_on_a_file_system_that_refuses_files(tmp_path, capsys, box_generator):
    """sysfs refuses new files even to root (a chmod test cannot fail for root)."""
    out = Path("/sys/kernel/segment-everything-out")
    assert main([DOG, "-o", str(out)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith(f"--output {out}: cannot create files in /sys/kernel (")
    assert not out.exists()


# --------------------------------------------------------------------------------------------
# Device and parameters
# --------------------------------------------------------------------------------------------


def test_device_cuda_without_a_gpu(tmp_path, capsys, monkeypatch, box_generator):
    import torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "out"
    assert main([DOG, "-o", str(out), "--device", "cuda"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith("--device cuda: no CUDA GPU is available here (") and \
        line.endswith("); use --device cpu")
    assert not out.exists() and box_generator == []
    # the corrected command starts at once, without --overwrite
    assert main([DOG, "-o", str(out), "--device", "cpu"]) == 0


def test_device_index_beyond_the_gpus(tmp_path, capsys, monkeypatch, box_generator):
    import torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert main([DOG, "-o", str(tmp_path / "out"), "--device", "cuda:3"]) == 2
    assert one_error_line(capsys.readouterr().err) == (
        "--device cuda:3: this machine has 1 CUDA GPU(s), cuda:0 to cuda:0")


def test_device_nonsense(tmp_path, capsys, box_generator):
    out = tmp_path / "out"
    assert main([DOG, "-o", str(out), "--device", "nonsense"]) == 2
    assert one_error_line(capsys.readouterr().err) == (
        "--device nonsense: not a torch device (e.g. cpu, cuda, cuda:1, mps)")
    assert not out.exists()


def test_huge_points_per_side_fails_at_once(tmp_path, capsys, box_generator):
    out = tmp_path / "out"
    assert main([DOG, "-o", str(out), "--points-per-side", "100000"]) == 2
    assert one_error_line(capsys.readouterr().err) == (
        "--points-per-side: points_per_side must be an integer in [1, 1024] (at most one grid "
        "point per model-input pixel), got 100000")
    assert not out.exists() and box_generator == []


def test_usage_errors_are_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as ei:
        main([DOG, "-o", str(tmp_path / "out"), "--points-per-side", "many"])
    assert ei.value.code == 2
    assert one_error_line(capsys.readouterr().err) == (
        "argument --points-per-side: invalid int value: 'many' (see segment-everything --help)")
    with pytest.raises(SystemExit):
        main([DOG])
    assert "the following arguments are required: --output" in one_error_line(
        capsys.readouterr().err)


# --------------------------------------------------------------------------------------------
# The weights' cache entry (a temporary cache folder)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("entry", ["folder", "truncated"])
def test_bad_weight_cache_entry_writes_nothing(entry, tmp_path, capsys, monkeypatch, box_generator):
    from sam_model.checkpoints import fetch_checkpoint
    real_weights = fetch_checkpoint("mobile_sam")  # the real cache, read only
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("SEGMENT_EVERYTHING_CACHE", str(cache))
    if entry == "folder":
        (cache / "mobile_sam.pt").mkdir()
        expected = (f"{cache}/mobile_sam.pt: is a folder, not the mobile_sam checkpoint file; "
                    "remove it to download the file again")
    else:
        (cache / "mobile_sam.pt").write_bytes(b"\0" * 1234)
        expected = (f"{cache}/mobile_sam.pt: 1,234 bytes, but the mobile_sam checkpoint has "
                    "40,728,226 (truncated or another file); delete it to download it again")
    out = tmp_path / "out"
    assert main([DOG, "-o", str(out)]) == 2
    assert one_error_line(capsys.readouterr().err) == expected
    assert not out.exists()  # no run.json: the corrected command needs no --overwrite
    out.mkdir()  # an existing output folder is left as it was too
    assert main([DOG, "-o", str(out)]) == 2
    assert list(out.iterdir()) == []
    if entry == "folder":
        (cache / "mobile_sam.pt").rmdir()
    else:
        (cache / "mobile_sam.pt").unlink()
    (cache / "mobile_sam.pt").symlink_to(real_weights)
    assert main([DOG, "-o", str(out)]) == 0


def test_start_failure_after_an_earlier_run_keeps_it(tmp_path, capsys, monkeypatch, box_generator):
    out = tmp_path / "out"
    argv = [DOG, "-o", str(out), "--format", "json,coco"]
    assert main(argv) == 0
    capsys.readouterr()
    before = tree(out)
    cache = tmp_path / "cache"
    (cache / "mobile_sam.pt").mkdir(parents=True)
    monkeypatch.setenv("SEGMENT_EVERYTHING_CACHE", str(cache))
    # --overwrite with unusable weights: the earlier run is not forgotten
    assert main(argv + ["--overwrite"]) == 2
    one_error_line(capsys.readouterr().err)
    assert tree(out) == before and (out / STATE_DIR / "lock").exists()


# --------------------------------------------------------------------------------------------
# Disk full during a run
# --------------------------------------------------------------------------------------------


def test_disk_full_keeps_finished_images_and_resumes(tmp_path, capsys, monkeypatch, box_generator):
    inp = photos(tmp_path / "in", "dog.jpg", "groceries.jpg")
    (inp / "bad.png").write_bytes(b"not a png")
    flags = ["--format", "json,coco,png,labelmap", "--no-progress", "--workers", "1"]
    clean = tmp_path / "clean"
    assert main([str(inp), "-o", str(clean)] + flags) == 1  # bad.png fails
    capsys.readouterr()

    # The disk fills up once the first image is done: every later write fails with ENOSPC.
    from amg.dataset.state import RunState
    real_temp, real_mark = amg.io._temp_beside, RunState.mark_done
    full = []

    def temp_beside(path):
        if full:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_temp(path)

    def mark_done(self, job, part):
        real_mark(self, job, part)
        full.append(job.path.name)

    monkeypatch.setattr(amg.io, "_temp_beside", temp_beside)
    monkeypatch.setattr(RunState, "mark_done", mark_done)
    out = tmp_path / "out"
    assert main([str(inp), "-o", str(out)] + flags) == 1
    # bad.png fails first (errors.csv written), dog.jpg is done, then the disk is full
    assert full == ["dog.jpg"]
    assert one_error_line(capsys.readouterr().err, only=False) == (
        f"stopped: cannot write the outputs of {inp / 'groceries.jpg'} in {out}: No space left "
        "on device; the 1 image(s) finished so far are kept: make room and run the same command "
        "again to resume")
    assert sorted(p.name for p in (out / STATE_DIR / "done").iterdir()) == ["dog.json"]
    for f in ("dog.json", "labelmaps/dog.png", "masks/dog/metadata.csv", "masks/dog/0.png"):
        assert (out / f).read_bytes() == (clean / f).read_bytes(), f
    assert error_rows(out) == error_rows(clean)
    assert not [p for p in out.rglob("*.part")]
    monkeypatch.setattr(amg.io, "_temp_beside", real_temp)  # space freed
    monkeypatch.setattr(RunState, "mark_done", real_mark)

    assert main([str(inp), "-o", str(out)] + flags) == 1  # only bad.png fails
    assert "(1 done by an earlier run)" in capsys.readouterr().out
    resumed, uninterrupted = tree(out), tree(clean)
    assert sorted(resumed) == sorted(uninterrupted)
    assert [f for f in resumed if resumed[f] != uninterrupted[f]] == []


def test_errors_csv_unwritable_stops_in_one_line(tmp_path, capsys, monkeypatch, box_generator):
    inp = photos(tmp_path / "in", "dog.jpg")
    (inp / "bad.png").write_bytes(b"not a png")
    import amg.dataset.progress

    def no_space(path, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(amg.dataset.progress, "write_atomic", no_space)
    out = tmp_path / "out"
    assert main([str(inp), "-o", str(out), "--no-progress"]) == 1
    assert one_error_line(capsys.readouterr().err, only=False) == (
        f"stopped: cannot write {out / 'errors.csv'}: No space left on device; the 0 image(s) "
        "finished so far are kept: make room and run the same command again to resume")


# --------------------------------------------------------------------------------------------
# Inputs: degenerate sizes, odd names, non-files, huge images
# --------------------------------------------------------------------------------------------


def test_degenerate_sizes_listed_with_the_reason(tmp_path, capsys, box_generator):
    inp = photos(tmp_path / "in", "dog.jpg")
    Image.new("RGB", (5000, 1)).save(inp / "strip.png")
    Image.new("RGB", (1, 1)).save(inp / "dot.png")
    Image.new("RGB", (2000, 20)).save(inp / "narrow.png")
    Image.new("RGB", (300, 16)).save(inp / "small_ok.png")  # smallest side allowed
    out = tmp_path / "out"
    assert main([str(inp), "-o", str(out), "--no-progress"]) == 1
    assert error_rows(out) == {
        "dot.png": "image is 1 x 1 px; both sides must be at least 16 px",
        "narrow.png": "image is 2000 x 20 px; the long side must be at most 64 times the short side",
        "strip.png": "image is 5000 x 1 px; both sides must be at least 16 px",
    }
    assert sorted(p.name for p in out.glob("*.json")) == ["dog.json", "small_ok.json"]
    assert box_generator == [(534, 800, 3), (16, 300, 3)]


def test_dot_names_write_inside_the_output_folder(tmp_path, capsys, box_generator):
    inp = tmp_path / "in"
    inp.mkdir()
    for name in ("..jpg", "...jpg"):
        shutil.copy(DOG, inp / name)
    out = tmp_path / "data" / "out"
    assert main([str(inp / "..jpg"), str(inp / "...jpg"), "-o", str(out), "--format",
                 "json,png,labelmap"]) == 0
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")
                   if p.is_file() and STATE_DIR not in p.parts and p.parent != inp)
    masks = [f"data/out/masks/{stem}/{f}" for stem in ("_", "__")
             for f in ("0.png", "1.png", "2.png", "3.png", "4.png", "metadata.csv")]
    assert files == ["data/out/_.json", "data/out/__.json", "data/out/labelmaps/_.png",
                     "data/out/labelmaps/__.png", *masks]


def test_broken_links_and_folders_named_like_images(tmp_path, capsys, box_generator):
    inp = photos(tmp_path / "in", "dog.jpg")
    (inp / "gone.jpg").symlink_to(tmp_path / "deleted.jpg")
    (inp / "album.png").mkdir()
    out = tmp_path / "out"
    assert main([str(inp), "-o", str(out), "--no-progress"]) == 1
    assert error_rows(out) == {
        "album.png": "a folder, not an image file",
        "gone.jpg": f"broken symbolic link (to {tmp_path / 'deleted.jpg'}, which does not exist)",
    }
    err = capsys.readouterr().err
    assert f"{inp / 'gone.jpg'}: broken symbolic link" in err


def test_max_pixels_names_image_and_limit(tmp_path, capsys, box_generator):
    import warnings
    inp = photos(tmp_path / "in", "dog.jpg")
    Image.new("1", (10_000, 9_000)).save(inp / "huge.png")  # above Pillow's own 89.5 MP
    out = tmp_path / "out"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert main([str(inp), "-o", str(out), "--no-progress"]) == 1
    assert error_rows(out) == {
        "huge.png": "image is 10000 x 9000 = 90.0 MP, above the limit of 16 MP "
                    "(--max-pixels 16000000)"}
    assert main([str(inp), "-o", str(tmp_path / "o2"), "--max-pixels", "400000"]) == 1
    assert error_rows(tmp_path / "o2")["dog.jpg"] == (
        "image is 800 x 534 = 0.4 MP, above the limit of 0.4 MP (--max-pixels 400000)")
    capsys.readouterr()
    assert main([DOG, "-o", str(tmp_path / "o3"), "--max-pixels", "-1"]) == 2
    assert one_error_line(capsys.readouterr().err) == (
        "--max-pixels must be >= 0 (0: no limit), got -1")


# --------------------------------------------------------------------------------------------
# --help and --version
# --------------------------------------------------------------------------------------------


def test_help_describes_every_flag_with_its_default(capsys):
    parser = build_parser()
    for action in parser._actions:
        if not action.option_strings or action.dest in ("help", "version"):
            continue
        assert action.help, action.dest
        if not action.required:
            assert "(default: " in action.help, action.option_strings
    with pytest.raises(SystemExit) as ei:
        main(["--help"])
    assert ei.value.code == 0
    text = capsys.readouterr().out
    assert "--compute-dtype {float32,bfloat16,auto}" in text
    assert ", ".join(FORMATS) in " ".join(text.split())  # argparse may wrap the list
    assert "label-studio" in FORMATS and "yolo" in FORMATS
    for name in ("default", "crops", "fast", "fastest", "quality", "recall"):
        assert any(line.strip().startswith(f"{name}: ") for line in text.splitlines()), name
    examples = text[text.index("examples:"):text.index("exit codes:")]
    commands = [ln.strip() for ln in examples.splitlines() if ln.strip().startswith("segment-everything ")]
    assert commands == [
        "segment-everything examples/dog.jpg --output out",
        "segment-everything photos/ --output dataset --format coco --segmentation polygon",
        "segment-everything photos/ --output labels --config quality --format coco,png"]
    for code in EXIT_CODES:
        assert f"\n  {code} " in text
    assert len(GENERATION_FLAGS) >= 21


def test_help_examples_parse():
    parser = build_parser()
    args = parser.parse_args("photos/ --output labels --config quality --format coco,png".split())
    assert args.config == "quality" and args.formats == ["coco", "png"]


def test_version(capsys):
    from importlib import metadata
    with pytest.raises(SystemExit) as ei:
        main(["--version"])
    assert ei.value.code == 0
    out = capsys.readouterr().out.strip()
    try:
        expected = metadata.version("segment-everything")
    except metadata.PackageNotFoundError:
        expected = "0.1.0 (not installed)"
    assert out == f"segment-everything {expected}"


# --------------------------------------------------------------------------------------------
# Large images: the overlay is blended in bands of rows (memory), with the same pixels
# --------------------------------------------------------------------------------------------


def test_overlay_in_bands_equals_the_whole_image_formula():
    from amg.dataset.outputs import label_map, mask_colors, overlay_image
    from amg.rle import mask_to_coco_rle
    rng = np.random.default_rng(5)
    hw = (700, 90)  # three bands of 256 rows, the last one partial
    image = rng.integers(0, 256, (*hw, 3), dtype=np.uint8)
    masks = []
    for y0, y1 in ((0, 300), (200, 650), (240, 260)):
        m = np.zeros(hw, bool)
        m[y0:y1, 10:80] = True
        masks.append(m)
    recs = [{"segmentation": mask_to_coco_rle(m), "area": int(m.sum())} for m in masks]
    labels = label_map(recs, hw)
    lut = np.zeros((len(recs) + 1, 3), np.uint16)
    lut[1:] = mask_colors(len(recs))
    whole = np.where((labels > 0)[..., None],
                     ((image.astype(np.uint16) + lut[labels] + 1) >> 1).astype(np.uint8), image)
    out = overlay_image(image, recs, labels)
    inner = np.zeros(hw, bool)  # away from the outlines drawn afterwards
    inner[:, 14:76] = True
    for y in (0, 200, 240, 260, 300, 650):
        inner[max(0, y - 3):y + 3] = False
    np.testing.assert_array_equal(out[inner], whole[inner])
    assert (out[inner] != image[inner]).any()


def test_unexpected_error_is_one_line_unless_debugging(tmp_path, capsys, monkeypatch):
    import amg.dataset.run

    def boom(images, options):
        raise RuntimeError("boom")

    monkeypatch.setattr(amg.dataset.run, "run_dataset", boom)
    monkeypatch.delenv("SEGMENT_EVERYTHING_DEBUG", raising=False)
    assert main([DOG, "-o", str(tmp_path / "out")]) == 1
    assert one_error_line(capsys.readouterr().err) == (
        "unexpected RuntimeError: boom (set SEGMENT_EVERYTHING_DEBUG=1 for the traceback)")
    monkeypatch.setenv("SEGMENT_EVERYTHING_DEBUG", "1")
    with pytest.raises(RuntimeError, match="boom"):
        main([DOG, "-o", str(tmp_path / "out")])
