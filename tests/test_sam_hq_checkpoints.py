"""HQ-SAM checkpoints: the official state-dict layout for every size, architecture detection
that never confuses an HQ-SAM file with a SAM v1 / MobileSAM one, strict loading of official
state dicts (round trip), named errors for wrong layouts, and the no-sha256 records."""

from __future__ import annotations

import warnings

import pytest
import torch

from sam_model import (KNOWN_CHECKPOINTS, MODEL_CONFIGS, SAM_HQ_CONFIGS, CheckpointError,
                       CheckpointMismatch, Sam, SamHQ, build_model, detect_architecture,
                       fetch_checkpoint, load_model)

from . import hq_oracle as hq

HQ_NAMES = ["sam_hq_vit_b", "sam_hq_vit_l", "sam_hq_vit_h", "sam_hq_vit_tiny"]
V1_OF = {"sam_hq_vit_b": "vit_b", "sam_hq_vit_l": "vit_l", "sam_hq_vit_h": "vit_h",
         "sam_hq_vit_tiny": "mobile_sam"}


def meta_state_dict(name: str) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        model = SamHQ(SAM_HQ_CONFIGS[name]) if name in SAM_HQ_CONFIGS else Sam(MODEL_CONFIGS[name])
    return model.state_dict()


def save_skeleton(path, name: str, drop: tuple[str, ...] = (), extra: tuple[str, ...] = ()) -> None:
    """A file with the keys of ``name`` (minus ``drop``, plus ``extra``) and tiny tensors,
    except the tensor that architecture detection reads."""
    sd = {k: torch.zeros(v.shape) if k == "image_encoder.pos_embed" else torch.zeros(1)
          for k, v in meta_state_dict(name).items() if k not in drop}
    sd.update({k: torch.zeros(1) for k in extra})
    torch.save(sd, path)


def official_model(name: str):
    sa = hq.oracle()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if name == "sam_hq_vit_tiny":  # small; its TinyViT cannot be built on the meta device
            return sa.sam_model_registry["vit_tiny"]()
        with torch.device("meta"):
            return sa.sam_model_registry[hq.OFFICIAL_NAME[name]]()


@pytest.mark.parity
@pytest.mark.parametrize("name", HQ_NAMES)
def test_state_dict_layout_matches_official(name):
    ref = {k: tuple(v.shape) for k, v in official_model(name).state_dict().items()}
    ours = {k: tuple(v.shape) for k, v in meta_state_dict(name).items()}
    assert sorted(ours) == sorted(ref)
    assert ours == ref


@pytest.mark.parametrize("name", HQ_NAMES)
def test_hq_and_v1_files_are_told_apart(name):
    assert detect_architecture(meta_state_dict(name)) == name
    assert detect_architecture(meta_state_dict(V1_OF[name])) == V1_OF[name]


@pytest.mark.parity
@pytest.mark.parametrize("name", ["sam_hq_vit_tiny", "sam_hq_vit_b"])
def test_official_state_dict_round_trip(tmp_path, name):
    """An official-format file (the oracle's random-weight state dict, saved with torch.save)
    loads strictly into ours, the architecture detected from its keys, every tensor equal."""
    sa = hq.oracle()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = sa.sam_model_registry[hq.OFFICIAL_NAME[name]]()
    hq.randomise_(ref, seed=3)
    official = ref.state_dict()
    path = tmp_path / f"{name}.pth"
    torch.save(official, path)
    model = load_model(path)
    assert isinstance(model, SamHQ) and model.cfg.name == name and not model.training
    ours = model.state_dict()
    assert ours.keys() == official.keys()
    assert all(torch.equal(ours[k], official[k]) for k in official)
    assert load_model(path, arch=name).cfg.name == name


def test_v1_file_asked_as_hq_names_both(tmp_path):
    path = tmp_path / "sam_vit_b.pth"
    save_skeleton(path, "vit_b")
    with pytest.raises(CheckpointMismatch, match=r"holds vit_b \(ViT, width 768, 12 blocks\) "
                                                 r"weights, but sam_hq_vit_b \(HQ-SAM, ViT"):
        load_model(path, arch="sam_hq_vit_b")


def test_hq_file_asked_as_v1_names_both(tmp_path):
    path = tmp_path / "sam_hq_vit_tiny.pth"
    save_skeleton(path, "sam_hq_vit_tiny")
    with pytest.raises(CheckpointMismatch, match=r"holds sam_hq_vit_tiny \(HQ-SAM, TinyViT.*"
                                                 r"but mobile_sam \(TinyViT"):
        load_model(path, arch="mobile_sam")


def test_hq_file_with_missing_and_unexpected_keys_lists_them(tmp_path):
    sd = hq_tiny_state_dict()
    sd.pop("mask_decoder.hf_mlp.layers.2.weight")
    sd["mask_decoder.hf_extra.weight"] = torch.zeros(2)
    sd["mask_decoder.compress_vit_feat.0.weight"] = torch.zeros(320, 256, 2, 2)
    path = tmp_path / "edited.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointMismatch) as err:
        load_model(path)
    msg = str(err.value)
    assert "1 missing keys: mask_decoder.hf_mlp.layers.2.weight" in msg
    assert "1 unexpected keys: mask_decoder.hf_extra.weight" in msg
    assert "mask_decoder.compress_vit_feat.0.weight: file (320, 256, 2, 2) vs model (160, 256, 2, 2)" in msg


def test_v1_file_with_one_hq_key_is_an_incomplete_hq_file(tmp_path):
    """Any HQ decoder key makes the file HQ-SAM: the other HQ keys are then listed as missing
    (not silently loaded as SAM v1 with an unexpected key)."""
    path = tmp_path / "mixed.pth"
    save_skeleton(path, "mobile_sam", extra=("mask_decoder.hf_token.weight",))
    with pytest.raises(CheckpointMismatch, match=r"missing keys: mask_decoder\.compress_vit_feat"):
        load_model(path)


def hq_tiny_state_dict() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return SamHQ(SAM_HQ_CONFIGS["sam_hq_vit_tiny"]).state_dict()


def test_records_have_no_invented_sha256():
    for name in HQ_NAMES:
        rec = KNOWN_CHECKPOINTS[name]
        assert rec.filename == f"{name}.pth"
        assert rec.sha256 is None and rec.size is None
        assert rec.license == "Apache-2.0"
        assert rec.sources[0].url == f"https://huggingface.co/lkeab/hq-sam/resolve/main/{name}.pth"


def test_no_automatic_download_without_sha256(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGMENT_EVERYTHING_CACHE", str(tmp_path))

    def no_network(src, rec, folder, timeout):
        raise AssertionError("must not download a file without a published sha256")

    monkeypatch.setattr("sam_model.checkpoints._fetch_url", no_network)
    with pytest.raises(CheckpointError, match=r"sam_hq_vit_h\.pth has no published sha256.*"
                                              r"huggingface\.co/lkeab/hq-sam.*put it at"):
        fetch_checkpoint("sam_hq_vit_h")
    with pytest.raises(CheckpointError, match="no published sha256"):
        load_model("sam_hq_vit_h")


def test_user_supplied_file_in_the_cache_is_used(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGMENT_EVERYTHING_CACHE", str(tmp_path))
    sd = hq_tiny_state_dict()
    torch.save(sd, tmp_path / "sam_hq_vit_tiny.pth")
    assert fetch_checkpoint("sam_hq_vit_tiny") == tmp_path / "sam_hq_vit_tiny.pth"
    model = load_model("sam_hq_vit_tiny")
    assert isinstance(model, SamHQ)
    assert torch.equal(model.state_dict()["mask_decoder.hf_token.weight"],
                       sd["mask_decoder.hf_token.weight"])


def test_folder_or_truncated_file_in_the_cache_is_refused_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGMENT_EVERYTHING_CACHE", str(tmp_path))
    (tmp_path / "sam_hq_vit_b.pth").mkdir()
    with pytest.raises(CheckpointError, match="sam_hq_vit_b.pth: is a folder, not the "
                                              "sam_hq_vit_b checkpoint file") as ei:
        load_model("sam_hq_vit_b")
    assert "\n" not in str(ei.value)
    whole = tmp_path / "whole.pth"
    save_skeleton(whole, "sam_hq_vit_tiny")
    data = whole.read_bytes()
    (tmp_path / "sam_hq_vit_tiny.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="sam_hq_vit_tiny.pth: not a loadable torch "
                                              "checkpoint, truncated") as ei:
        load_model("sam_hq_vit_tiny")
    assert "\n" not in str(ei.value)


def test_build_model_knows_the_hq_sizes():
    model = build_model("sam_hq_vit_tiny")
    assert isinstance(model, SamHQ) and not model.training
    with pytest.raises(KeyError, match="sam_hq_vit_b"):
        build_model("sam_hq_vit_x")
