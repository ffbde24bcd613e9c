"""SAM 2's fast point decoder (``Sam2FactoredPointDecoder``) against its plain one
(``Sam2PlainPointDecoder``, tested against the official package in tests/test_sam2_parity.py),
on seeded random Hiera-T weights (tests/sam2_oracle.py: logits beyond the +-32 clamp, as
trained models' are) and a real photo; the dynamic-multimask stability threshold is moved so
that single-mask output takes both of its branches (fixture ``model_and_emb``).

Tolerances (float32): the same outputs in the same order (prompt index), predicted IoU within
1e-6, low-res logits within 1e-5 relative to their largest magnitude, and a logit's sign (the
mask) differs only where the logit is within 1e-4 of 0. Through the generator: the same
records. (The generator with the fast decoder, crop layer included, against the official
generator: tests/test_sam2_generator_parity.py.)
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from amg import MaskGenerator
from amg.dataset.threads import TorchThreads
from sam_model import SAM2_CONFIGS, Sam2
from sam_model.point_decoder import RejectWindow, window_logits
from sam_model.sam2_factored_decoder import Sam2FactoredPointDecoder
from sam_model.sam2_mask_decoder import mask_stability_scores

from .conftest import read_photo
from .sam2_oracle import randomise_

NAME = "sam2.1_hiera_tiny"


def with_decoder_config(model: Sam2, **changes) -> Sam2:
    """A model with the same weights and some mask-decoder settings changed."""
    cfg = dataclasses.replace(model.cfg, decoder=dataclasses.replace(model.cfg.decoder, **changes))
    out = Sam2(cfg).eval()
    out.load_state_dict(model.state_dict())
    return out


@pytest.fixture(scope="module")
def model_and_emb() -> tuple[Sam2, object]:
    """Seeded random weights, dog.jpg encoded. The dynamic-multimask stability threshold is
    set between the grid's token-0 stabilities (median), so that single-mask output takes
    token 0 for half of them and falls back to the best multimask output for the others (with
    these weights every token-0 mask is above the official 0.98)."""
    base = Sam2(SAM2_CONFIGS[NAME]).eval()
    randomise_(base, seed=3)
    emb = base.encode_image(read_photo("dog.jpg"))
    token0 = with_decoder_config(base, dynamic_multimask_via_stability=False)
    low = token0.point_decoder(emb, plain=True, multimask_output=False).decode(
        grid_points(3), 0.0).low_res_logits
    stab = mask_stability_scores(low, base.cfg.decoder.dynamic_multimask_stability_delta)
    stab = stab.sort().values
    k = len(stab) // 2
    assert stab[k - 1] < stab[k]
    thresh = float(stab[k - 1] + stab[k]) / 2
    return with_decoder_config(base, dynamic_multimask_stability_thresh=thresh), emb


@pytest.fixture(scope="module")
def model(model_and_emb) -> Sam2:
    return model_and_emb[0]


@pytest.fixture(scope="module")
def emb(model_and_emb):
    return model_and_emb[1]


def grid_points(n: int, hw=(534, 800)) -> torch.Tensor:
    """(n*n, 2) float64 xy at (i + 0.5) / n of the image."""
    xs = (np.arange(n) + 0.5) / n
    return torch.from_numpy(np.stack(np.meshgrid(xs, xs), -1).reshape(-1, 2) * [hw[1], hw[0]])


def middle_cut(values: torch.Tensor) -> float:
    """Halfway between the two middle distinct values of ``values``."""
    u = values.unique().sort().values
    k = len(u) // 2
    assert k >= 1
    return float(u[k - 1] + u[k]) / 2


def assert_same(plain, fast):
    assert torch.equal(plain.prompt_index, fast.prompt_index)
    assert plain.low_res_logits.shape == fast.low_res_logits.shape
    if len(plain) == 0:
        return
    assert (plain.predicted_iou - fast.predicted_iou).abs().max() < 1e-6
    a, b = plain.low_res_logits, fast.low_res_logits
    assert (a - b).abs().max() / a.abs().max() < 1e-5
    flips = (a > 0) != (b > 0)
    assert (a[flips].abs() < 1e-4).all()


@pytest.mark.parametrize("multimask", [True, False])
@pytest.mark.parametrize("quantile", [0.0, 0.5])
def test_fast_equals_plain(model, emb, multimask, quantile):
    pts = grid_points(3)
    plain = model.point_decoder(emb, plain=True, multimask_output=multimask)
    fast = model.point_decoder(emb, multimask_output=multimask)
    assert isinstance(fast, Sam2FactoredPointDecoder)
    everything = plain.decode(pts, 0.0)
    iou = everything.predicted_iou.sort().values
    k = int(quantile * len(iou))
    thresh = 0.0 if k == 0 else float(iou[k - 1] + iou[k]) / 2  # no output at the boundary
    out = fast.decode(pts, thresh)
    assert_same(plain.decode(pts, thresh), out)
    assert len(out) == len(iou) - k
    assert len(everything) == len(pts) * (3 if multimask else 1)


def test_single_mask_takes_both_branches_of_the_stability_fallback(model, emb):
    """The grid's prompts give stable (token 0) and unstable (best multimask) outputs."""
    pts = grid_points(3)
    plain = model.point_decoder(emb, plain=True, multimask_output=False)
    low, iou, _ = model.decode_unclamped(emb, pts[:, None].float(),
                                         torch.ones(len(pts), 1, dtype=torch.int64))
    single = plain.decode(pts, 0.0)
    # single-mask IoUs that are not one of the multimask IoUs came from token 0
    from_multimask = (single.predicted_iou[:, None] == iou).any(1)
    assert 0 < int(from_multimask.sum()) < len(pts)


@pytest.mark.parametrize("multimask", [True, False])
def test_fast_equals_plain_with_m2m(model, emb, multimask):
    pts = grid_points(2)
    plain = model.point_decoder(emb, plain=True, multimask_output=multimask, use_m2m=True)
    fast = model.point_decoder(emb, multimask_output=multimask, use_m2m=True)
    everything = plain.decode(pts, 0.0)
    iou = everything.predicted_iou.sort().values
    k = len(iou) // 2
    thresh = float(iou[k - 1] + iou[k]) / 2
    assert_same(everything, fast.decode(pts, 0.0))
    keep = everything.predicted_iou > thresh  # the filter applies to the refined IoU
    filtered = type(everything)(everything.low_res_logits[keep], everything.predicted_iou[keep],
                                everything.prompt_index[keep])
    assert_same(filtered, fast.decode(pts, thresh))


@pytest.mark.parametrize("multimask", [True, False])
def test_reject_windows_and_low_res_part(model, emb, multimask):
    """A window's rule sees the window's logits only; the fast decoder decodes them from the
    window's tokens (multimask) and returns the top-left part rounded up to whole tokens."""
    pts = grid_points(3)
    plain = model.point_decoder(emb, low_res_hw=(200, 122), plain=True,
                                multimask_output=multimask)
    everything = plain.decode(pts, 0.0)
    boxes = [(0, 3, 0, 30), (10, 50, 28, 31)]  # a strip along the top, one down the right
    # each rule drops the outputs above the middle of its statistic, cut halfway between two
    # neighbouring values (no output within rounding of a cut, whatever the thread count)
    mean1 = middle_cut(window_logits(everything.low_res_logits, boxes[0]).mean((1, 2)))
    frac2 = middle_cut((window_logits(everything.low_res_logits, boxes[1]) > 0).float().mean((1, 2)))
    windows = [RejectWindow(boxes[0], lambda w: w.mean((1, 2)) > mean1),
               RejectWindow(boxes[1], lambda w: (w > 0).float().mean((1, 2)) > frac2)]
    fast = model.point_decoder(emb, low_res_hw=(200, 122), multimask_output=multimask)
    assert fast.low_res_hw == (200, 124)
    ref = plain.decode(pts, 0.0, windows)
    out = fast.decode(pts, 0.0, windows)
    assert 0 < len(ref) < len(everything)  # the windows drop some outputs, not all
    assert out.low_res_logits.shape[1:] == (200, 124)
    out = type(out)(out.low_res_logits[:, :, :122], out.predicted_iou, out.prompt_index)
    assert_same(ref, out)


def test_bfloat16_is_close_to_float32(model, emb):
    pts = grid_points(3)
    ref = model.point_decoder(emb).decode(pts, 0.0)
    out = model.point_decoder(emb, torch.bfloat16).decode(pts, 0.0)
    assert out.low_res_logits.dtype == out.predicted_iou.dtype == torch.float32
    assert torch.equal(out.prompt_index, ref.prompt_index)
    assert (out.predicted_iou - ref.predicted_iou).abs().max() < 0.02
    assert ((out.low_res_logits > 0) == (ref.low_res_logits > 0)).float().mean() > 0.95


def test_empty_batch_and_bad_points(model, emb):
    dec = model.point_decoder(emb, multimask_output=False)
    assert dec.decode(torch.zeros(0, 2, dtype=torch.float64), 0.5).low_res_logits.shape == \
        (0, 256, 256)
    assert len(dec.decode(grid_points(2), 0.9999)) == 0
    with pytest.raises(ValueError, match="points_xy must be"):
        dec.decode(torch.zeros(3, 3), 0.0)


@pytest.mark.parametrize("params", [dict(multimask_output=True), dict(multimask_output=False)])
def test_generator_records_equal_with_fast_and_plain_decoder(model, params, monkeypatch):
    image = np.ascontiguousarray(read_photo("groceries.jpg")[::2, ::2])  # (267, 400, 3)
    common = dict(points_per_side=4, pred_iou_thresh=0.45, stability_score_thresh=0.5,
                  box_nms_thresh=1.0, crop_nms_thresh=1.0, output_mode="coco_rle", **params)
    embeddings = {}  # each crop encoded once for both runs
    encode = model.encode_image

    def cached_encode(crop, compute_dtype=torch.float32):
        key = (crop.shape, crop.tobytes())
        if key not in embeddings:
            embeddings[key] = encode(crop, compute_dtype)
        return embeddings[key]
    monkeypatch.setattr(model, "encode_image", cached_encode, raising=False)
    fast = MaskGenerator(model, **common).generate(image)
    monkeypatch.setattr(model, "point_decoder",
                        functools.partial(Sam2.point_decoder, model, plain=True), raising=False)
    plain = MaskGenerator(model, **common).generate(image)
    assert len(fast) == len(plain) > 0
    for a, b in zip(plain, fast):
        assert a["point_coords"] == b["point_coords"] and a["crop_box"] == b["crop_box"]
        assert abs(a["predicted_iou"] - b["predicted_iou"]) < 1e-6
        assert abs(a["stability_score"] - b["stability_score"]) < 1e-4
        assert mask_utils.iou([a["segmentation"]], [b["segmentation"]], [0])[0, 0] > 0.999


def test_generator_batches_on_threads_give_the_same_records(model, monkeypatch):
    """``batch_threads=2`` decodes two batches at once on one shared fast decoder (per-thread
    workspaces), each on one intra-op thread: the records are those of a run on one thread,
    byte for byte. (Against a run on two intra-op threads they may differ in float rounding:
    on some CPUs the math library splits a product's inner dimension across threads, e.g.
    the token MLP's 2048-wide second layer on an AVX-512 host.)"""
    image = np.ascontiguousarray(read_photo("groceries.jpg")[::2, ::2])
    emb = model.encode_image(image)
    monkeypatch.setattr(model, "encode_image", lambda crop, compute_dtype=torch.float32: emb,
                        raising=False)
    common = dict(points_per_side=4, points_per_batch=4, pred_iou_thresh=0.45,
                  stability_score_thresh=0.5, box_nms_thresh=1.0, output_mode="coco_rle",
                  multimask_output=False)
    with TorchThreads(1):
        one = MaskGenerator(model, batch_threads=1, **common).generate(image)
    two = MaskGenerator(model, batch_threads=2, **common).generate(image)
    assert len(one) > 0 and one == two
