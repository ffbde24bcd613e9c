"""tools/gpu_check.py on the CPU: the same steps as on a GPU (parity, timing rows, JSON)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tools import gpu_check  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "dog.jpg"


def test_cpu_run_writes_parity_and_rows(tmp_path, mobile_sam):
    out = tmp_path / "gpu.json"
    assert gpu_check.main(["--device", "cpu", "--images", str(EXAMPLE), "--random-models",
                           "--set", "points_per_side=4", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    parity = report["parity_vs_cpu_float32"]["float32"]
    assert parity["cpu_matched"] == 1.0 and parity["device_matched"] == 1.0  # same device
    assert parity["cpu_masks"] > 0
    (row,) = report["rows"]
    assert row["model"] == "mobile_sam" and row["weights"] == "real"
    assert row["masks"] == [parity["cpu_masks"]]
    assert row["images_per_s"] > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without a GPU")
def test_missing_cuda_is_one_line_and_exit_2(capsys):
    assert gpu_check.main(["--device", "cuda", "--images", str(EXAMPLE)]) == 2
    assert "torch sees no CUDA device" in capsys.readouterr().err
