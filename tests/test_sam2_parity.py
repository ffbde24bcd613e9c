"""SAM 2.1 parity with the official ``sam2`` package (test-only oracle), Hiera-T and Hiera-S,
plus the size-independent parts (pre-processing, sine encoding, stability selection, mask
post-processing matrices, the plain point decoder against ``SAM2AutomaticMaskGenerator``).

The same seeded random weights are in both models (ours loads the oracle's image-mode state dict
strictly, so the layouts are key-for-key compatible); the photo is dog.jpg (800 x 534, resized
to 1024 x 1024 without keeping the aspect ratio). float32 on CPU. Tolerance: 1e-4 relative to
the reference output's max magnitude. Hiera-B+ and Hiera-L: tests/test_sam2_parity_large.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from sam_model import SAM2_CONFIGS
from sam_model.fpn_neck import sine_position_encoding
from sam_model.sam2_mask_decoder import mask_stability_scores, select_single_mask_by_stability

from .conftest import read_photo
from .sam2_oracle import PROMPTS, EncodedPair, check_decoder, check_encoder, rel_err

pytest.importorskip("sam2", reason="the SAM 2 parity oracle needs the official sam2 package")
pytestmark = pytest.mark.parity

SIZES = ["sam2.1_hiera_tiny", "sam2.1_hiera_small"]


@pytest.fixture(scope="module")
def pairs() -> dict[str, EncodedPair]:
    """Lazily built oracle/ours pairs by size (each encodes dog.jpg once per model)."""
    cache: dict[str, EncodedPair] = {}

    class Pairs:
        def __getitem__(self, name: str) -> EncodedPair:
            if name not in cache:
                cache[name] = EncodedPair(name, read_photo("dog.jpg"), seed=SIZES.index(name))
            return cache[name]
    return Pairs()


@pytest.fixture(scope="module", params=SIZES)
def pair(request, pairs) -> EncodedPair:
    """Oracle and ours of one size, dog.jpg encoded by both."""
    return pairs[request.param]


@pytest.fixture(scope="module")
def tiny(pairs) -> EncodedPair:
    """The Hiera-T pair, for the size-independent checks."""
    return pairs["sam2.1_hiera_tiny"]


# ---------------------------------------------------------------- per size
def test_block_structure_matches_official(pair):
    specs = SAM2_CONFIGS[pair.name].trunk.block_specs()
    blocks = pair.ref.image_encoder.trunk.blocks
    assert [(s.dim, s.dim_out, s.num_heads, s.window_size, s.q_stride) for s in specs] == \
        [(b.dim, b.dim_out, b.attn.num_heads, b.window_size,
          tuple(b.q_stride) if b.q_stride else None) for b in blocks]


def test_encoder_features_match(pair):
    check_encoder(pair)


def test_hiera_inference_path_equals_the_autograd_path(tiny, monkeypatch):
    """Without autograd the trunk attends over groups of windows, writes the qkv projections
    and MLP hidden layers into one scratch buffer and runs its MLP GELU and residual sum in
    place; with autograd it runs each block whole, as the official Hiera. A small group limit
    forces several (uneven) groups in every windowed block."""
    import sam_model.hiera as hiera
    monkeypatch.setattr(hiera, "QKV_CHUNK_BYTES", 3 * 2**20)
    groups, scratches = [], set()
    attend = hiera.HieraAttention._attend

    def counted(self, x, scratch):
        groups.append(len(x))
        scratches.add(id(scratch) if scratch is not None else None)
        return attend(self, x, scratch)
    monkeypatch.setattr(hiera.HieraAttention, "_attend", counted)
    trunk = tiny.ours.image_encoder.trunk
    x = tiny.ours.preprocess(tiny.image)
    with torch.inference_mode():
        fast = trunk(x)
    blocks = len(trunk.blocks)
    assert len(groups) > 2 * blocks and len(set(groups)) > 2
    assert len(scratches) == 1 and None not in scratches  # one buffer for the whole forward
    groups.clear()
    scratches.clear()
    with torch.enable_grad():
        plain = [t.detach() for t in trunk(x)]
    assert len(groups) == blocks and scratches == {None}
    for a, b in zip(fast, plain):
        assert a.shape == b.shape
        assert rel_err(a, b) < 1e-6


@pytest.mark.parametrize("prompt", sorted(PROMPTS))
@pytest.mark.parametrize("multimask", [True, False])
def test_decoder_outputs_match(tiny, prompt, multimask):
    check_decoder(tiny, prompt, multimask, with_mask_input=prompt == "points_pos_neg")


@pytest.mark.parametrize("prompt", ["one_point_each", "box_and_point"])
@pytest.mark.parametrize("multimask", [True, False])
def test_decoder_outputs_match_small(pairs, prompt, multimask):
    check_decoder(pairs["sam2.1_hiera_small"], prompt, multimask,
                  with_mask_input=prompt == "box_and_point")


# ---------------------------------------------------------------- size-independent
@pytest.mark.parametrize("photo", ["dog.jpg", "bus.jpg"])
def test_preprocessing_equals_sam2_transforms(tiny, photo):
    from sam2.utils.transforms import SAM2Transforms
    image = read_photo(photo)
    ref = SAM2Transforms(1024, 0.0)(image)[None]
    ours = tiny.ours.preprocess(image)
    assert ours.shape == (1, 3, 1024, 1024)
    assert torch.equal(ours, ref)


def test_preprocessing_skips_resize_at_model_size(tiny):
    from sam2.utils.transforms import SAM2Transforms
    image = np.ascontiguousarray(np.tile(read_photo("dog.jpg"), (2, 2, 1))[:1024, :1024])
    assert torch.equal(tiny.ours.preprocess(image), SAM2Transforms(1024, 0.0)(image)[None])


def test_sine_position_encodings_match(tiny):
    for level, ref in zip(tiny.ref_levels, tiny.ref_pos):
        ours = sine_position_encoding(*level.shape[-2:])
        assert ours.shape == ref.shape == (1, 256, *level.shape[-2:])
        assert (ours - ref).abs().max().item() < 1e-6
    ours = tiny.ours.image_encoder.neck.position_encodings(tiny.our_levels)
    assert all(torch.allclose(o, r, atol=1e-6) for o, r in zip(ours, tiny.ref_pos))


def test_dynamic_multimask_selection_matches_both_branches(tiny):
    """All four mask tokens vs the oracle's ``predict_masks``, then the stability selection on
    them with token 0 made stable (scaled logits) in half of the prompts."""
    pts, labels, _ = PROMPTS["one_point_each"]
    dec, ref_dec = tiny.ours.sam_mask_decoder, tiny.ref.sam_mask_decoder
    emb = tiny.emb
    pts_in = tiny.ours.to_input_frame(torch.as_tensor(pts), emb)
    sparse, dense = tiny.ours.sam_prompt_encoder(pts_in, torch.as_tensor(labels), None, None,
                                                 emb.grid_hw)
    with torch.no_grad():
        tokens, image_tokens = dec.run_transformer(emb.image_embedding, tiny.ours.dense_pe(emb),
                                                   sparse, dense)
        masks = dec.predict_mask_logits(tokens, image_tokens, emb.grid_hw, emb.high_res_features)
        iou = dec.predict_iou(tokens)
        feats = tiny.pred._features
        ref_masks, ref_iou, _, ref_obj = ref_dec.predict_masks(
            feats["image_embed"], tiny.ref.sam_prompt_encoder.get_dense_pe(), sparse, dense,
            repeat_image=True, high_res_features=feats["high_res_feats"])
    assert masks.shape == ref_masks.shape == (4, 4, 256, 256)
    assert rel_err(masks, ref_masks) < 1e-4 and rel_err(iou, ref_iou) < 1e-4
    scaled = masks.clone()
    scaled[::2, 0] *= 1000.0  # logits far from +-0.05: stable for prompts 0 and 2
    scaled[1::2, 0] *= 0.001  # logits within a few 0.05 of 0: unstable for prompts 1 and 3
    stable = mask_stability_scores(scaled[:, 0], 0.05) >= 0.98
    assert stable.tolist() == [True, False, True, False]
    ours_l, ours_i = select_single_mask_by_stability(scaled, iou, 0.05, 0.98)
    ref_l, ref_i = ref_dec._dynamic_multimask_via_stability(scaled, iou)
    assert torch.equal(ours_l, ref_l) and torch.equal(ours_i, ref_i)


def test_stability_score_at_threshold():
    """98 of 100 pixels above +delta, 100 above -delta: score exactly 0.98, kept (>=)."""
    logits = torch.full((1, 4, 10, 10), -1.0)
    logits[0, 0] = 1.0
    logits[0, 0, 0, :2] = 0.0  # in (-delta, delta]: above -delta only
    logits[0, 0, 1:, :] = 1.0
    logits[0, 0, 0, 2:] = 1.0
    assert mask_stability_scores(logits[:, 0], 0.05).item() == pytest.approx(0.98)
    iou = torch.tensor([[0.1, 0.9, 0.2, 0.3]])
    out, out_iou = select_single_mask_by_stability(logits, iou, 0.05, 0.98)
    assert torch.equal(out, logits[:, :1]) and out_iou.item() == pytest.approx(0.1)
    logits[0, 0, 0, 2] = 0.0  # 97 / 100: falls back to token 1, the highest IoU of 1-3
    out, out_iou = select_single_mask_by_stability(logits, iou, 0.05, 0.98)
    assert torch.equal(out, logits[:, 1:2]) and out_iou.item() == pytest.approx(0.9)
    empty = torch.full((1, 4, 4, 4), -1.0)  # nothing above -delta: score 1.0, stable
    assert mask_stability_scores(empty[:, 0], 0.05).item() == 1.0


def test_low_res_to_image_reproduces_interpolate(tiny):
    ay, ax = tiny.ours.low_res_to_image(tiny.emb)
    assert ay.shape == (534, 256) and ax.shape == (800, 256)
    low = torch.randn(2, 256, 256, generator=torch.Generator().manual_seed(1)) * 10
    ref = F.interpolate(low[:, None], (534, 800), mode="bilinear", align_corners=False)[:, 0]
    ours = torch.from_numpy(ay) @ low.double() @ torch.from_numpy(ax).T
    assert (ours - ref.double()).abs().max().item() < 1e-4


@pytest.mark.parametrize("multimask,use_m2m", [(True, False), (False, False), (True, True),
                                               (False, True)])
def test_plain_point_decoder_matches_generator_batch(tiny, multimask, use_m2m):
    """Our plain point decoder + image-size resampling vs the oracle's
    ``SAM2AutomaticMaskGenerator._process_batch`` on a 3 x 2 point grid (whole image as the
    crop, stability filter off): same surviving outputs in the same order, IoU, points,
    stability scores and masks."""
    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator
    from sam2.utils.amg import rle_to_mask
    h, w = tiny.image.shape[:2]
    xs, ys = (np.arange(3) + 0.5) / 3, (np.arange(2) + 0.5) / 2
    points = np.stack(np.meshgrid(xs, ys), -1).reshape(-1, 2) * np.array([w, h])
    decoder = tiny.ours.point_decoder(tiny.emb, plain=True, multimask_output=multimask,
                                      use_m2m=use_m2m)
    ious = decoder.decode(points, 0.0).predicted_iou.sort().values
    k = len(ious) // 2
    thresh = float(ious[k - 1] + ious[k]) / 2  # half the outputs pass, none at the boundary
    gen = SAM2AutomaticMaskGenerator(tiny.ref, points_per_side=3, points_per_batch=6,
                                     pred_iou_thresh=thresh, stability_score_thresh=0.0,
                                     use_m2m=use_m2m, multimask_output=multimask)
    gen.predictor = tiny.pred
    data = gen._process_batch(points, (h, w), [0, 0, w, h], (h, w), normalize=True)

    out = decoder.decode(points, thresh)
    n = len(out.predicted_iou)
    assert n == len(ious) - k == len(data["iou_preds"])
    assert out.low_res_logits.shape == (n, 256, 256)
    assert rel_err(out.predicted_iou, data["iou_preds"]) < 1e-4
    assert torch.equal(torch.as_tensor(points[out.prompt_index.numpy()], dtype=torch.float32),
                       data["points"])
    ay, ax = (torch.from_numpy(m) for m in tiny.ours.low_res_to_image(tiny.emb))
    logits = ay @ out.low_res_logits.double() @ ax.T
    stability = (logits > 1.0).sum((1, 2)) / (logits > -1.0).sum((1, 2))
    assert (stability - data["stability_score"].double()).abs().max().item() < 1e-3
    ref_masks = torch.stack([torch.from_numpy(rle_to_mask(r)) for r in data["rles"]])
    ours_masks = logits > 0
    assert ours_masks.any((1, 2)).all()
    assert (ours_masks != ref_masks).sum().item() <= 1e-4 * ref_masks.sum().item()


def test_decode_clamps_low_res_logits(tiny):
    pts = torch.tensor([[[400.0, 300.0]], [[120.0, 90.0]]])
    labels = torch.ones(2, 1, dtype=torch.int64)
    raw, iou_raw, _ = tiny.ours.decode_unclamped(tiny.emb, pts, labels)
    low, iou, _ = tiny.ours.decode(tiny.emb, pts, labels)
    assert raw.abs().max() > 32  # the clamp matters for these weights
    assert torch.equal(low, raw.clamp(-32, 32)) and torch.equal(iou, iou_raw)


def test_point_decoder_filters_and_crops(tiny):
    points = np.array([[400.0, 300.0], [100.0, 400.0], [700.0, 60.0]])
    dec = tiny.ours.point_decoder(tiny.emb)
    everything = dec.decode(points, 0.0)
    assert everything.low_res_logits.shape == (9, 256, 256)
    assert everything.prompt_index.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert everything.prompt_index.dtype == torch.int64
    thresh = float(everything.predicted_iou.median())
    kept = dec.decode(points, thresh)
    assert torch.equal(kept.predicted_iou, everything.predicted_iou[everything.predicted_iou > thresh])
    from sam_model.point_decoder import RejectWindow
    seen = []

    def reject(window):
        seen.append(window.shape)
        return window.amax((1, 2)) > 0

    rejected = dec.decode(points, 0.0, reject=[RejectWindow((0, 2, 0, 64), reject)])
    assert seen == [(9, 8, 256)]
    expected = everything.low_res_logits[:, :8].amax((1, 2)) <= 0
    assert torch.equal(rejected.predicted_iou, everything.predicted_iou[expected])
    cropped = tiny.ours.point_decoder(tiny.emb, low_res_hw=(200, 120)).decode(points, 0.0)
    assert torch.equal(cropped.low_res_logits, everything.low_res_logits[:, :200, :120])
    with pytest.raises(ValueError, match="points_xy must be"):
        dec.decode(points[:, :1], 0.0)


def test_point_decoder_bfloat16_is_close_to_float32(tiny):
    points = np.array([[400.0, 300.0], [100.0, 400.0]])
    ref = tiny.ours.point_decoder(tiny.emb).decode(points, 0.0)
    out = tiny.ours.point_decoder(tiny.emb, torch.bfloat16).decode(points, 0.0)
    assert out.low_res_logits.dtype == out.predicted_iou.dtype == torch.float32
    assert out.low_res_logits.shape == ref.low_res_logits.shape
    assert (out.predicted_iou - ref.predicted_iou).abs().max() < 0.02
    assert ((out.low_res_logits > 0) == (ref.low_res_logits > 0)).float().mean() > 0.95
    with pytest.raises(ValueError, match="compute dtype"):
        tiny.ours.point_decoder(tiny.emb, torch.float16)
