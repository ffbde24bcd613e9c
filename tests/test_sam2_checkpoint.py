"""SAM 2.1 checkpoint records and strict loading of official-format files.

The official files cannot be downloaded here; a file in the official format is made from the
official package's model (``{"model": state_dict}`` of ``build_sam2`` with seeded random
weights), which has every key of a real file, video modules included.
"""

from __future__ import annotations

import pytest
import torch

from sam_model import (KNOWN_CHECKPOINTS, SAM2_CONFIGS, CheckpointError, CheckpointMismatch,
                       Sam2, build_model, fetch_checkpoint, load_model, load_sam2)
from sam_model.checkpoints import HuggingFaceSource, UrlSource
from sam_model.sam2_checkpoints import (VIDEO_ONLY_KEY_PREFIXES, detect_sam2_architecture,
                                        image_state_dict, is_video_only_key, read_sam2_state_dict)

from .conftest import read_photo

NAMES = list(SAM2_CONFIGS)


def meta_state_dict(name: str) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        return Sam2(SAM2_CONFIGS[name]).state_dict()


def save_skeleton(path, name: str, drop: str | None = None, add: str | None = None) -> None:
    """An official-format file with the image-mode keys of ``name`` (real shapes only where
    detection reads them), optionally one key dropped or one added."""
    sd = {k: torch.zeros(v.shape) if k == "image_encoder.trunk.pos_embed" else torch.zeros(1)
          for k, v in meta_state_dict(name).items()}
    if drop:
        del sd[drop]
    if add:
        sd[add] = torch.zeros(1)
    torch.save({"model": sd}, path)


# ---------------------------------------------------------------- records
def test_records_of_the_four_official_files():
    sha = {"sam2.1_hiera_tiny": "7402e0d864fa82708a20fbd15bc84245c2f26dff0eb43a4b5b93452deb34be69",
           "sam2.1_hiera_large": "2647878d5dfa5098f2f8649825738a9345572bae2d4350a2468587ece47dd318"}
    hf = {"sam2.1_hiera_tiny": "facebook/sam2.1-hiera-tiny",
          "sam2.1_hiera_small": "facebook/sam2.1-hiera-small",
          "sam2.1_hiera_base_plus": "facebook/sam2.1-hiera-base-plus",
          "sam2.1_hiera_large": "facebook/sam2.1-hiera-large"}
    for name in NAMES:
        rec = KNOWN_CHECKPOINTS[name]
        assert rec.filename == f"{name}.pt" and rec.license == "Apache-2.0"
        assert rec.sha256 == sha.get(name)  # pinned only where published
        url, hub = rec.sources
        assert isinstance(url, UrlSource) and url.url == \
            f"https://dl.fbaipublicfiles.com/segment_anything_2/092824/{name}.pt"
        assert isinstance(hub, HuggingFaceSource) and hub.repo_id == hf[name]
        assert hub.url == f"https://huggingface.co/{hf[name]}/resolve/main/{name}.pt"
    assert KNOWN_CHECKPOINTS["sam2.1_hiera_tiny"].size == 156_008_466


def test_unpinned_file_is_never_downloaded(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGMENT_EVERYTHING_CACHE", str(tmp_path))  # an empty cache
    with pytest.raises(CheckpointError, match="no published sha256, so it is not downloaded "
                                              "automatically.*pass the file's path"):
        fetch_checkpoint("sam2.1_hiera_small")
    with pytest.raises(CheckpointError, match="no published sha256"):
        load_model("sam2.1_hiera_base_plus")
    assert list(tmp_path.iterdir()) == []  # nothing was fetched


def test_cached_pinned_file_with_wrong_size_or_digest_is_refused(tmp_path, monkeypatch):
    """tiny publishes its size: a short file is refused by size; large publishes only its
    sha256: the digest refuses it. One line each, the file left in place."""
    monkeypatch.setenv("SEGMENT_EVERYTHING_CACHE", str(tmp_path))
    (tmp_path / "sam2.1_hiera_tiny.pt").write_bytes(b"not the weights")
    with pytest.raises(CheckpointError, match="sam2.1_hiera_tiny.pt: 15 bytes, but the "
                                              "sam2.1_hiera_tiny checkpoint has 156,008,466") as ei:
        load_sam2("sam2.1_hiera_tiny")
    assert "\n" not in str(ei.value)
    (tmp_path / "sam2.1_hiera_large.pt").write_bytes(b"not the weights")
    with pytest.raises(CheckpointError, match="does not match the known sam2.1_hiera_large") as ei:
        load_sam2("sam2.1_hiera_large")
    assert "\n" not in str(ei.value)
    assert (tmp_path / "sam2.1_hiera_large.pt").read_bytes() == b"not the weights"


@pytest.mark.parametrize("name", ["sam2.1_hiera_tiny", "sam2.1_hiera_small"])
def test_cache_entry_that_is_a_folder_is_refused_in_one_line(tmp_path, monkeypatch, name):
    """Pinned (tiny) and unpinned (small) alike: a folder in the file's place is named."""
    monkeypatch.setenv("SEGMENT_EVERYTHING_CACHE", str(tmp_path))
    (tmp_path / f"{name}.pt").mkdir()
    with pytest.raises(CheckpointError, match=f"{name}.pt: is a folder, not the {name} "
                                              "checkpoint file") as ei:
        load_model(name)
    assert "\n" not in str(ei.value)


def test_truncated_unpinned_file_in_the_cache_is_refused_in_one_line(tmp_path, monkeypatch):
    """No size or sha256 is published for small: a cut-off copy fails when it is read."""
    monkeypatch.setenv("SEGMENT_EVERYTHING_CACHE", str(tmp_path))
    whole = tmp_path / "whole.pt"
    save_skeleton(whole, "sam2.1_hiera_small")
    data = whole.read_bytes()
    (tmp_path / "sam2.1_hiera_small.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="sam2.1_hiera_small.pt: not a loadable torch "
                                              "checkpoint, truncated or another kind of file") as ei:
        load_model("sam2.1_hiera_small")
    assert "\n" not in str(ei.value)


# ---------------------------------------------------------------- detection and errors
@pytest.mark.parametrize("name", NAMES)
def test_size_detected_from_keys_and_shapes(name):
    assert detect_sam2_architecture(meta_state_dict(name)) == name


def test_file_of_another_size_names_both(tmp_path):
    path = tmp_path / "sam2.1_hiera_large.pt"
    save_skeleton(path, "sam2.1_hiera_large")
    with pytest.raises(CheckpointMismatch, match=r"sam2.1_hiera_large \(Hiera, width 144, 48 "
                       r"blocks\).*sam2.1_hiera_tiny \(Hiera, width 96, 12 blocks\)"):
        load_sam2(path, arch="sam2.1_hiera_tiny")


def test_missing_and_unexpected_keys_are_listed(tmp_path):
    path = tmp_path / "edited.pt"
    save_skeleton(path, "sam2.1_hiera_tiny", drop="sam_mask_decoder.obj_score_token.weight",
                  add="sam_mask_decoder.hq_token.weight")
    with pytest.raises(CheckpointMismatch) as err:
        load_sam2(path)
    msg = str(err.value)
    assert "1 missing keys: sam_mask_decoder.obj_score_token.weight" in msg
    assert "1 unexpected keys: sam_mask_decoder.hq_token.weight" in msg
    assert "shape mismatches" in msg  # the skeleton's tiny tensors


def test_flat_sam_v1_state_dict_is_not_a_sam2_checkpoint(tmp_path):
    path = tmp_path / "sam_vit_b.pth"
    torch.save({"image_encoder.pos_embed": torch.zeros(1), "mask_decoder.iou_token.weight":
                torch.zeros(1)}, path)
    with pytest.raises(CheckpointMismatch, match="not a SAM 2 checkpoint.*flat state dict"):
        load_sam2(path)
    torch.save({"model": {"image_encoder.pos_embed": torch.zeros(1)}}, path)
    with pytest.raises(CheckpointMismatch, match="not a SAM 2 checkpoint.*image_encoder.pos_embed"):
        load_sam2(path)
    with pytest.raises(CheckpointError, match="not found"):
        load_sam2(tmp_path / "missing.pt")
    with pytest.raises(KeyError, match="unknown SAM 2 model"):
        load_sam2(path, arch="vit_b")


def test_build_model_knows_the_sam2_sizes():
    model = build_model("sam2.1_hiera_tiny")
    assert isinstance(model, Sam2) and not model.training


# ---------------------------------------------------------------- official-format file
@pytest.fixture(scope="module")
def official_tiny(tmp_path_factory):
    """The oracle Hiera-T with random weights and its state dict saved as an official file."""
    pytest.importorskip("sam2", reason="the official-format file is made by the sam2 package")
    from .sam2_oracle import oracle_model
    ref = oracle_model("sam2.1_hiera_tiny", seed=3)
    path = tmp_path_factory.mktemp("ckpt") / "sam2.1_hiera_tiny.pt"
    torch.save({"model": ref.state_dict()}, path)
    return ref, path


def test_video_only_keys_are_exactly_the_official_extras(official_tiny):
    ref, path = official_tiny
    official = read_sam2_state_dict(path)
    ours = set(meta_state_dict("sam2.1_hiera_tiny"))
    extras = set(official) - ours
    assert extras and all(is_video_only_key(k) for k in extras)
    assert not any(is_video_only_key(k) for k in ours)
    assert {p for p in VIDEO_ONLY_KEY_PREFIXES
            if any(k == p or k.startswith(p + ".") for k in extras)} == set(VIDEO_ONLY_KEY_PREFIXES)
    assert set(image_state_dict(official)) == ours


def test_official_file_loads_strictly_and_gives_the_oracle_outputs(official_tiny):
    from .sam2_oracle import oracle_decode, oracle_predictor, rel_err
    ref, path = official_tiny
    model = load_sam2(path, device="cpu")
    assert model.cfg.name == "sam2.1_hiera_tiny" and not model.training
    ref_sd = ref.state_dict()
    assert all(torch.equal(v, ref_sd[k]) for k, v in model.state_dict().items())
    also = load_model(path, arch="sam2.1_hiera_tiny")
    assert isinstance(also, Sam2)
    image = read_photo("groceries.jpg")
    pred = oracle_predictor(ref, image)
    emb = model.encode_image(image)
    assert rel_err(emb.image_embedding, pred._features["image_embed"]) < 1e-4
    points = torch.tensor([[[200.0, 150.0]], [[600.0, 400.0]]])
    labels = torch.ones(2, 1, dtype=torch.int64)
    low_ref, iou_ref, obj_ref = oracle_decode(pred, points.numpy(), labels.numpy())
    low, iou, obj = model.decode(emb, points, labels)
    assert rel_err(low, low_ref) < 1e-4 and rel_err(iou, iou_ref) < 1e-4
    assert rel_err(obj, obj_ref) < 1e-4


def test_file_without_video_keys_also_loads(official_tiny, tmp_path):
    _, path = official_tiny
    trimmed = tmp_path / "image_only.pt"
    torch.save({"model": image_state_dict(read_sam2_state_dict(path))}, trimmed)
    assert load_sam2(trimmed).cfg.name == "sam2.1_hiera_tiny"
