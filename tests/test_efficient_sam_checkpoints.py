"""EfficientSAM checkpoint files: the official layout (``{"model": state_dict}``, ViT-S zipped
as published) loads unchanged through our strict loader, the size is detected from the keys,
and wrong files raise named errors.

The files are made here from the official model's state dict (random weights), saved the way
the official weights are: ``torch.save({"model": state_dict})``, and for ViT-S that file inside
``efficient_sam_vits.pt.zip``.
"""

from __future__ import annotations

import zipfile

import pytest
import torch

from sam_model import (EFFICIENT_SAM_CONFIGS, MODEL_CONFIGS, CheckpointError, CheckpointMismatch,
                       Sam, load_efficient_sam, load_model)
from sam_model.checkpoints import (EFFICIENT_SAM_CHECKPOINTS, detect_efficient_sam_architecture,
                                   read_efficient_sam_state_dict)

from .efficient_sam_oracle import build_oracle, randomise_


@pytest.fixture(scope="module")
def official_files(tmp_path_factory):
    """{name: (state_dict, path of the file as published)} for both sizes."""
    d = tmp_path_factory.mktemp("esam")
    files = {}
    for seed, name in enumerate(EFFICIENT_SAM_CONFIGS):
        oracle = build_oracle(name)
        randomise_(oracle, seed)
        state = oracle.state_dict()
        pt = d / f"{name}.pt"
        torch.save({"model": state}, pt)
        if name == "efficient_sam_vits":
            zipped = d / "efficient_sam_vits.pt.zip"
            with zipfile.ZipFile(zipped, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
                z.write(pt, "efficient_sam_vits.pt")
            pt.unlink()
            pt = zipped
        files[name] = (state, pt)
    return files


@pytest.mark.parametrize("name", list(EFFICIENT_SAM_CONFIGS))
def test_official_files_load_unchanged(official_files, name):
    state, path = official_files[name]
    model = load_efficient_sam(path)
    assert type(model).__name__ == "EfficientSam" and not model.training
    assert model.cfg.name == name
    ours = model.state_dict()
    assert ours.keys() == state.keys()
    assert all(torch.equal(ours[k], state[k]) for k in state)
    assert load_efficient_sam(path, arch=name).cfg.name == name


def test_known_names_point_at_the_published_files():
    vitt = EFFICIENT_SAM_CHECKPOINTS["efficient_sam_vitt"]
    vits = EFFICIENT_SAM_CHECKPOINTS["efficient_sam_vits"]
    assert vitt.filename == "efficient_sam_vitt.pt" and vits.filename == "efficient_sam_vits.pt.zip"
    assert vitt.sources[0].url.endswith("/weights/efficient_sam_vitt.pt")
    assert vits.sources[0].url.endswith("/weights/efficient_sam_vits.pt.zip")
    assert vitt.sha256 is None and vits.sha256 is None  # none published: no automatic download
    assert vitt.license == vits.license == "Apache-2.0"


def test_known_name_loads_a_file_in_the_cache_and_explains_a_missing_one(
        official_files, tmp_path, monkeypatch):
    monkeypatch.setenv("SEGMENT_EVERYTHING_CACHE", str(tmp_path))
    with pytest.raises(CheckpointError, match=r"no published sha256.*efficient_sam_vitt\.pt"):
        load_efficient_sam("efficient_sam_vitt")
    published = official_files["efficient_sam_vitt"][1]
    (tmp_path / "efficient_sam_vitt.pt").write_bytes(published.read_bytes())
    assert load_efficient_sam("efficient_sam_vitt").cfg.name == "efficient_sam_vitt"


@pytest.mark.parametrize("name", list(EFFICIENT_SAM_CONFIGS))
def test_folder_or_truncated_file_in_the_cache_is_refused_in_one_line(
        official_files, tmp_path, monkeypatch, name):
    """Both published forms: the plain torch file (ViT-T) and the zip around one (ViT-S)."""
    monkeypatch.setenv("SEGMENT_EVERYTHING_CACHE", str(tmp_path))
    filename = EFFICIENT_SAM_CHECKPOINTS[name].filename
    (tmp_path / filename).mkdir()
    with pytest.raises(CheckpointError, match=f"{filename}: is a folder, not the {name} "
                                              "checkpoint file") as ei:
        load_model(name)
    assert "\n" not in str(ei.value)
    (tmp_path / filename).rmdir()
    data = official_files[name][1].read_bytes()
    (tmp_path / filename).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=f"{filename}: not a loadable torch checkpoint, "
                                              "truncated") as ei:
        load_efficient_sam(name)
    assert "\n" not in str(ei.value)


def test_flat_state_dict_and_zip_with_macos_entries_load(official_files, tmp_path):
    state, path = official_files["efficient_sam_vitt"]
    flat = tmp_path / "flat.pt"
    torch.save(state, flat)
    assert read_efficient_sam_state_dict(flat).keys() == state.keys()
    zipped = tmp_path / "vitt.zip"
    with zipfile.ZipFile(zipped, "w") as z:
        z.write(path, "weights/efficient_sam_vitt.pt")
        z.writestr("__MACOSX/weights/._efficient_sam_vitt.pt", b"resource fork")
    assert load_efficient_sam(zipped).cfg.name == "efficient_sam_vitt"


def test_wrong_size_is_refused(official_files):
    _, path = official_files["efficient_sam_vitt"]
    with pytest.raises(CheckpointMismatch, match=r"efficient_sam_vitt \(EfficientSAM ViT, width "
                                                  r"192.*but efficient_sam_vits .* was asked"):
        load_efficient_sam(path, arch="efficient_sam_vits")


def test_missing_unexpected_and_misshapen_keys_are_listed(official_files, tmp_path):
    state = dict(official_files["efficient_sam_vitt"][0])
    del state["mask_decoder.iou_token.weight"]
    state["mask_decoder.extra.weight"] = torch.zeros(1)
    state["prompt_encoder.invalid_points.weight"] = torch.zeros(1, 128)
    path = tmp_path / "broken.pt"
    torch.save({"model": state}, path)
    with pytest.raises(CheckpointMismatch) as err:
        load_efficient_sam(path)
    msg = str(err.value)
    assert "1 missing keys: mask_decoder.iou_token.weight" in msg
    assert "1 unexpected keys: mask_decoder.extra.weight" in msg
    assert "prompt_encoder.invalid_points.weight: file (1, 128) vs model (1, 256)" in msg


def test_sam_checkpoint_is_named_and_refused(tmp_path):
    path = tmp_path / "mobile_sam.pt"
    torch.save(Sam(MODEL_CONFIGS["mobile_sam"]).state_dict(), path)
    with pytest.raises(CheckpointMismatch, match=r"mobile_sam\.pt has SAM mobile_sam \(TinyViT.*"
                                                  r"but EfficientSAM was asked for"):
        load_efficient_sam(path)


def test_efficient_sam_file_is_named_by_the_sam_loader(official_files, tmp_path):
    path = tmp_path / "flat_vitt.pt"
    torch.save(official_files["efficient_sam_vitt"][0], path)
    with pytest.raises(CheckpointMismatch, match="has EfficientSAM keys, not SAM's"):
        load_model(path)


def test_unknown_width_and_non_checkpoints(official_files, tmp_path):
    state = dict(official_files["efficient_sam_vitt"][0])
    state["image_encoder.pos_embed"] = torch.zeros(1, 197, 256)
    with pytest.raises(CheckpointMismatch, match="width 256 and 12 blocks matches none"):
        detect_efficient_sam_architecture(state, "odd.pt")
    with pytest.raises(CheckpointMismatch, match="not an EfficientSAM checkpoint"):
        detect_efficient_sam_architecture({"weight": torch.zeros(1)}, "x.pt")
    with pytest.raises(CheckpointError, match="not found"):
        load_efficient_sam(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a loadable torch checkpoint"):
        load_efficient_sam(junk)
    two = tmp_path / "two.zip"
    with zipfile.ZipFile(two, "w") as z:
        z.writestr("a.pt", b"1")
        z.writestr("b.pt", b"2")
    with pytest.raises(CheckpointError, match="2 checkpoint members"):
        load_efficient_sam(two)
    other = tmp_path / "other.pt"
    torch.save({"model": {"a": 1}}, other)
    with pytest.raises(CheckpointMismatch, match="flat state dict of tensors"):
        load_efficient_sam(other)
