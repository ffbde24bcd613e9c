"""The model table (``sam_model.model_table``): every named model once, parameter counts equal
to the built models', records from the checkpoint registry, the README's table equal to it, and
``segment-everything models`` printing it with the cache state."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from amg.dataset.cli import main
from sam_model import build_model, model_names
from sam_model.checkpoints import EFFICIENT_SAM_CHECKPOINTS, KNOWN_CHECKPOINTS
from sam_model.model_table import markdown_table, model_table

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def rows():
    return model_table()


def test_every_model_once_family_by_family(rows):
    assert sorted(r.name for r in rows) == sorted(model_names())
    families = [r.family for r in rows]
    order = ["MobileSAM", "SAM", "SAM-HQ", "SAM 2.1", "EfficientSAM"]
    assert sorted(set(families), key=order.index) == order
    assert families == sorted(families, key=order.index)  # grouped, in that order
    assert {r.family for r in rows if r.name.startswith("sam_hq_")} == {"SAM-HQ"}


def test_records_are_the_checkpoint_registry(rows):
    for r in rows:
        assert r.checkpoint is (EFFICIENT_SAM_CHECKPOINTS.get(r.name) or KNOWN_CHECKPOINTS[r.name])
        assert r.checkpoint.license == "Apache-2.0"
    pinned = {r.name for r in rows if r.checkpoint.sha256}
    assert pinned == {"mobile_sam", "vit_b", "vit_l", "vit_h", "sam2.1_hiera_tiny",
                      "sam2.1_hiera_large"}


@pytest.mark.parametrize("name", ["mobile_sam", "sam_hq_vit_tiny", "sam2.1_hiera_tiny",
                                  "efficient_sam_vitt"])
def test_parameter_counts_are_the_built_models(rows, name):
    row = next(r for r in rows if r.name == name)
    torch.manual_seed(0)
    assert row.parameters == sum(p.numel() for p in build_model(name).parameters())


def test_readme_table_is_the_model_table(rows):
    readme = (REPO / "README.md").read_text()
    table = markdown_table(rows)
    assert table in readme, "README's model table differs from sam_model.model_table: " \
                            "paste markdown_table(model_table()) into README.md"
    assert readme.count("| family | name | parameters (M)") == 1
    assert "| SAM-HQ | `sam_hq_vit_tiny` | 10.58 | `sam_hq_vit_tiny.pth` | Apache-2.0 | " \
           "not published |" in table


def test_models_command_prints_the_table_with_cache_state(tmp_path, monkeypatch, capsys, rows):
    monkeypatch.setenv("SEGMENT_EVERYTHING_CACHE", str(tmp_path))
    (tmp_path / "sam_hq_vit_tiny.pth").write_bytes(b"")  # present; verified only when loaded
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["family", "name", "params"]
    column = lines[0].index("cached")
    by_name = {line.split()[1] if not line.startswith("SAM 2.1") else line.split()[2]: line
               for line in lines[1:len(rows) + 1]}
    assert sorted(by_name) == sorted(model_names())
    for r in rows:
        line = by_name[r.name]
        assert f"{r.parameters / 1e6:.2f}" in line and r.checkpoint.filename in line
        assert (r.checkpoint.sha256[:12] if r.checkpoint.sha256 else "not published") in line
        cached = "yes" if r.name == "sam_hq_vit_tiny" else "no"
        assert line[column:column + 6].strip() == cached, line
    assert str(tmp_path) in out


def test_models_command_rejects_arguments(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["models", "--bogus"])
    assert exc.value.code == 2
    assert "segment-everything models" in capsys.readouterr().err
