"""The decoder seam (sam_model.point_decoder): SAM v1's fast point decoder equals its plain one
(prompt encoder + MaskDecoder forward per prompt) on real MobileSAM weights and a real photo,
with the IoU filter and reject windows; the generator reaches the decoder only through it."""

from __future__ import annotations

import ast

import pytest
import torch

from amg.upscale import RegionUpscaler
from sam_model import DecodedMasks, RejectWindow

from .conftest import REPO, read_photo


@pytest.fixture(scope="module")
def crop_setup(mobile_sam):
    """groceries.jpg (landscape, so the low-res map has padding rows), 40 grid-like points."""
    image = read_photo("groceries.jpg")
    with torch.inference_mode():
        emb = mobile_sam.encode_image(image)
    ay, ax = mobile_sam.low_res_to_image(emb)
    need = RegionUpscaler.needed_low_res(ay, ax)
    h, w = image.shape[:2]
    g = torch.Generator().manual_seed(1)
    points = torch.rand(40, 2, generator=g, dtype=torch.float64) * torch.tensor([w, h])
    return dict(emb=emb, need=need, points=points, ay=ay, ax=ax)


def decode(model, setup, plain, iou_thresh, reject=()):
    with torch.inference_mode():
        dec = model.point_decoder(setup["emb"], low_res_hw=setup["need"], plain=plain)
        return dec, dec.decode(setup["points"], iou_thresh, reject)


def assert_same(fast: DecodedMasks, plain: DecodedMasks) -> None:
    assert fast.prompt_index.tolist() == plain.prompt_index.tolist()
    assert fast.low_res_logits.shape == plain.low_res_logits.shape
    torch.testing.assert_close(fast.predicted_iou, plain.predicted_iou, rtol=0, atol=1e-5)
    # logits span about +-50; 1e-3 absolute is ~2e-5 of the range
    torch.testing.assert_close(fast.low_res_logits, plain.low_res_logits, rtol=0, atol=1e-3)


def test_low_res_region_is_whole_tokens_covering_the_image(mobile_sam, crop_setup):
    dec, _ = decode(mobile_sam, crop_setup, plain=False, iou_thresh=0.0)
    nh, nw = crop_setup["need"]
    lh, lw = dec.low_res_hw
    assert lh % 4 == 0 and lw % 4 == 0 and nh <= lh < nh + 4 and nw <= lw < nw + 4
    assert lw == 256 and lh < 256  # groceries.jpg is landscape: padding rows are not decoded
    RegionUpscaler(dec.low_res_hw, crop_setup["ay"], crop_setup["ax"], torch.device("cpu"))


@pytest.mark.parametrize("iou_thresh", [0.0, 0.88])
def test_fast_point_decoder_equals_plain(mobile_sam, crop_setup, iou_thresh):
    _, fast = decode(mobile_sam, crop_setup, plain=False, iou_thresh=iou_thresh)
    _, plain = decode(mobile_sam, crop_setup, plain=True, iou_thresh=iou_thresh)
    assert_same(fast, plain)
    n = len(crop_setup["points"])
    if iou_thresh == 0:
        assert len(fast) == 3 * n  # every multimask output, prompt-major
        assert fast.prompt_index.tolist() == [i for i in range(n) for _ in range(3)]
    else:
        assert 0 < len(fast) < 3 * n
        assert bool((fast.predicted_iou > iou_thresh).all())


def test_reject_windows_drop_the_same_outputs(mobile_sam, crop_setup):
    """A window of the last 3 token columns rejecting any positive logit: the fast decoder
    (window decoded from its tokens alone, later windows skipped for dropped prompts) and the
    plain one (window sliced from the full map) keep the same outputs."""
    def any_positive(low):
        return (low > 0).flatten(1).any(1)
    windows = [RejectWindow((0, 40, 61, 64), any_positive), RejectWindow((0, 3, 0, 64), any_positive)]
    _, fast = decode(mobile_sam, crop_setup, plain=False, iou_thresh=0.5, reject=windows)
    _, plain = decode(mobile_sam, crop_setup, plain=True, iou_thresh=0.5, reject=windows)
    _, unfiltered = decode(mobile_sam, crop_setup, plain=True, iou_thresh=0.5)
    assert_same(fast, plain)
    assert 0 < len(fast) < len(unfiltered)  # the windows dropped some outputs, not all
    for low in fast.low_res_logits:
        assert not bool((low[0:160, 244:256] > 0).any()) and not bool((low[0:12] > 0).any())


def test_chunk_size_does_not_change_the_result(mobile_sam, crop_setup):
    with torch.inference_mode():
        a = mobile_sam.point_decoder(crop_setup["emb"], low_res_hw=crop_setup["need"],
                                     chunk_size=3).decode(crop_setup["points"], 0.8)
        b = mobile_sam.point_decoder(crop_setup["emb"], low_res_hw=crop_setup["need"],
                                     chunk_size=16).decode(crop_setup["points"], 0.8)
    assert a.prompt_index.tolist() == b.prompt_index.tolist()
    torch.testing.assert_close(a.low_res_logits, b.low_res_logits, rtol=0, atol=1e-4)


def test_empty_result_shapes(mobile_sam, crop_setup):
    for plain in (False, True):
        dec, out = decode(mobile_sam, crop_setup, plain=plain, iou_thresh=1.5)
        assert len(out) == 0
        assert out.low_res_logits.shape == (0, *dec.low_res_hw)
        assert out.prompt_index.dtype == torch.int64


def test_point_decoder_checks_the_compute_dtype(mobile_sam, crop_setup):
    with pytest.raises(ValueError, match="compute dtype"):
        mobile_sam.point_decoder(crop_setup["emb"], torch.float16)


def test_generator_imports_no_decoder_and_reads_no_model_internals():
    """amg/generator.py imports from sam_model only its public package names, and touches no
    sub-module of the model (prompt_encoder, mask_decoder, image_encoder)."""
    tree = ast.parse((REPO / "amg" / "generator.py").read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("sam_model"):
            assert node.module == "sam_model", f"generator imports {node.module}"
            names |= {alias.name for alias in node.names}
        if isinstance(node, ast.Attribute):
            assert node.attr not in {"prompt_encoder", "mask_decoder", "image_encoder",
                                     "no_mask_embed", "dense_pe"}, f"generator reads .{node.attr}"
    assert names <= {"PointDecoder", "RejectWindow", "check_rgb_image", "resolve_compute_dtype"}
