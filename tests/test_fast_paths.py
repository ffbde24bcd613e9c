"""Exact rewrites used by the generator, against the plain computation they replace:
``FactoredGridDecoder`` vs ``MaskDecoder`` (real MobileSAM weights, a real photo) and
``RegionUpscaler`` vs full-size ``upscale_mask_logits`` + stability score + RLE."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from amg.masks import masks_to_boxes_xyxy, stability_score
from amg.rle import masks_to_rle, rle_with_list_counts
from amg.upscale import RegionUpscaler, region_box_xyxy, region_to_rle
from sam_model.factored_decoder import FactoredGridDecoder
from sam_model.mask_decoder import upscale_mask_logits
from sam_model.resampling import bicubic_matrix, bilinear_matrix, composed_matrix

from .conftest import read_photo


# --------------------------------------------------------------------------------------------
# FactoredGridDecoder == MaskDecoder
# --------------------------------------------------------------------------------------------


def point_prompts(m, n: int, seed: int):
    """bus.jpg (portrait) encoded by ``m`` and ``n`` random single foreground points:
    (embedding, sparse (n, 2, C) and dense prompt embeddings, dense positional encoding)."""
    image = read_photo("bus.jpg")
    g = torch.Generator().manual_seed(seed)
    with torch.inference_mode():
        emb = m.encode_image(image)
        h, w = image.shape[:2]
        pts = torch.rand(n, 1, 2, generator=g, dtype=torch.float64) * torch.tensor([w, h])
        labels = torch.ones(n, 1, dtype=torch.int64)
        sparse, dense = m.prompt_encoder(m.to_input_frame(pts, emb), labels, None, None, emb.grid_hw)
        return emb, sparse, dense, m.dense_pe(emb)


@pytest.fixture(scope="module")
def decoded(mobile_sam):
    """Plain and factored decoding of 12 random single-point prompts on bus.jpg (portrait)."""
    m = mobile_sam
    emb, sparse, dense, pe = point_prompts(m, 12, seed=0)
    with torch.inference_mode():
        dec = m.mask_decoder
        tokens, img_tokens = dec.run_transformer(emb.embedding, pe, sparse, dense)
        low = dec.predict_mask_logits(tokens, img_tokens, emb.grid_hw, [1, 2, 3])
        iou = dec.predict_iou(tokens)
        fd = FactoredGridDecoder(dec)
        fctx = fd.prepare(emb.embedding, pe, dense.expand_as(emb.embedding))
        fout = [fd.run_transformer(fctx, sparse[s:s + 5]) for s in range(0, 12, 5)]
        f_tokens = torch.cat([t for t, _ in fout])
        f_low = torch.cat([fd.predict_mask_logits(t, i, fctx.grid_hw, [1, 2, 3], ctx=fctx)
                           for t, i in fout])
        f_part = torch.cat([fd.predict_mask_logits(t, i[[0, 2]], fctx.grid_hw, [3, 1], (64, 48),
                                                   fctx) for t, i in [(fout[0][0][[0, 2]],
                                                                       fout[0][1])]])
        f_window = fd.predict_mask_logits(fout[0][0], fout[0][1], fctx.grid_hw, [1, 2, 3],
                                          ctx=fctx, token_box=(10, 64, 61, 64))
        w, rw = fd.mask_inputs(fout[0][0], fout[0][1], [1, 2, 3])
        f_window_given = fd.predict_mask_logits(fout[0][0], fout[0][1], fctx.grid_hw, [1, 2, 3],
                                                ctx=fctx, token_box=(10, 64, 61, 64), weights=w,
                                                rows_w1=rw)
        f_low_given = fd.predict_mask_logits(fout[0][0], fout[0][1], fctx.grid_hw, [1, 2, 3],
                                             ctx=fctx, weights=w, rows_w1=rw)
        f_subset, f_img = fd.run_transformer(fctx, sparse, final_tokens=[0, 2, 3, 4])
        factored = dict(tokens=f_tokens, img=torch.cat([i.materialize() for _, i in fout]),
                        low=f_low, part=f_part, window=f_window, window_given=f_window_given,
                        low_given=f_low_given, subset=f_subset, subset_img=f_img.materialize(),
                        iou=dec.predict_iou(f_tokens), decoder=fd)
    return dict(tokens=(tokens,), img=(img_tokens,), low=(low,), iou=(iou,), factored=factored)


def test_factored_decoder_matches_mask_decoder(decoded):
    """Image tokens kept as scale * base + coef @ rows: the same tokens, image tokens, predicted
    IoU and logits as the plain decoder (logits span about +-50; 1e-3 absolute is ~2e-5 of
    the range)."""
    f = decoded["factored"]
    tokens, img = decoded["tokens"][0], decoded["img"][0]
    assert f["tokens"].shape == (12, 7, 256)
    torch.testing.assert_close(f["tokens"], tokens, rtol=0, atol=1e-4)
    torch.testing.assert_close(f["img"], img, rtol=0, atol=1e-4)
    torch.testing.assert_close(f["subset_img"], img, rtol=0, atol=1e-4)
    torch.testing.assert_close(f["iou"], decoded["iou"][0], rtol=0, atol=1e-5)
    assert f["low"].shape == (12, 3, 256, 256)
    torch.testing.assert_close(f["low"], decoded["low"][0], rtol=0, atol=1e-3)


@pytest.mark.parametrize("tile", ["whole map", 100])
def test_factored_decoder_upscale_tiling_matches_mask_decoder(mobile_sam, monkeypatch, tile):
    """Whole-map logits with other tilings of the output upscaling than the CPU's 1024 tokens:
    the whole map as one tile (what a GPU runs) and 100-token tiles (bus.jpg's 64 x 48
    tokens: 30 whole tiles and a partial one), against the plain decoder."""
    m = mobile_sam
    emb, sparse, dense, pe = point_prompts(m, 3, seed=1)
    monkeypatch.setattr(FactoredGridDecoder, "upscale_tile_tokens", staticmethod(
        lambda n, device: n if tile == "whole map" else tile))
    with torch.inference_mode():
        dec = m.mask_decoder
        tokens, img_tokens = dec.run_transformer(emb.embedding, pe, sparse, dense)
        low = dec.predict_mask_logits(tokens, img_tokens, emb.grid_hw, [1, 2, 3])
        fd = FactoredGridDecoder(dec)
        fctx = fd.prepare(emb.embedding, pe, dense.expand_as(emb.embedding))
        f_tokens, f_img = fd.run_transformer(fctx, sparse)
        f_low = fd.predict_mask_logits(f_tokens, f_img, fctx.grid_hw, [1, 2, 3], ctx=fctx)
    assert f_low.shape == (3, 3, 256, 256)
    torch.testing.assert_close(f_low, low, rtol=0, atol=1e-3)


def test_factored_decoder_final_token_subset_and_token_region(decoded):
    f = decoded["factored"]
    full = decoded["tokens"][0]
    torch.testing.assert_close(f["subset"][:, [0, 2, 3, 4]], full[:, [0, 2, 3, 4]], rtol=0, atol=1e-4)
    assert torch.isnan(f["subset"][:, [1, 5, 6]]).all()
    # prompts 0 and 2, masks 3 then 1, tokens under a 64 x 48 region: the same part of the map
    part = f["part"]
    assert part.shape == (2, 2, 256, 192)
    torch.testing.assert_close(part, f["low"][[0, 2]][:, [2, 0], :, :192], rtol=0, atol=1e-4)


def test_factored_decoder_token_box_is_that_window_of_the_full_map(decoded):
    """Logits of a token window (rows 10-63, the last 3 columns: a crop-edge strip, decoded
    for all prompts at once) are the same low-res pixels of the whole map: each pixel depends
    on its token only."""
    f = decoded["factored"]
    window = f["window"]
    assert window.shape == (5, 3, 4 * 54, 12)
    torch.testing.assert_close(window, f["low"][:5, :, 40:256, 244:256], rtol=0, atol=1e-4)
    # the window-independent inputs computed once by the caller: the same numbers
    assert torch.equal(f["window_given"], window)
    assert torch.equal(f["low_given"], f["low"][:5])
    with pytest.raises(ValueError, match="token_box"):
        f["decoder"].predict_mask_logits(f["tokens"][:1], None, (64, 64), [1], ctx=object(),
                                         token_box=(0, 65, 0, 3))


def test_factored_decoder_token_counts_equal_the_repeated_tokens(mobile_sam):
    """A prompt token standing for ``count`` identical tokens (``token_counts``; EfficientSAM's
    five padding points) decodes like the prompt with the copies: MobileSAM's real decoder on
    bus.jpg, each point prompt's padding token repeated 4 times in the plain decoder, against
    the factored decoder given it once with count 4."""
    m = mobile_sam
    emb, sparse, dense, pe = point_prompts(m, 6, seed=1)
    assert sparse.shape[1] == 2  # the point and SAM's padding point
    with torch.inference_mode():
        repeated = sparse[:, [0, 1, 1, 1, 1]]
        dec = m.mask_decoder
        tokens, img_tokens = dec.run_transformer(emb.embedding, pe, repeated, dense)
        low = dec.predict_mask_logits(tokens, img_tokens, emb.grid_hw, [1, 2, 3])
        fd = FactoredGridDecoder(dec)
        fctx = fd.prepare(emb.embedding, pe, dense.expand_as(emb.embedding))
        f_tokens, f_img = fd.run_transformer(fctx, sparse, token_counts=[1, 4])
        f_low = fd.predict_mask_logits(f_tokens, f_img, fctx.grid_hw, [1, 2, 3], ctx=fctx)
        # without the counts the decoder sees one padding token: other numbers
        f_once, _ = fd.run_transformer(fctx, sparse)
    assert f_tokens.shape == (6, 7, 256)
    torch.testing.assert_close(f_tokens, tokens[:, :7], rtol=0, atol=1e-4)
    torch.testing.assert_close(f_img.materialize(), img_tokens, rtol=0, atol=1e-4)
    torch.testing.assert_close(f_low, low, rtol=0, atol=1e-3)
    assert (f_once - tokens[:, :7]).abs().max() > 1e-2
    with pytest.raises(ValueError, match="token_counts"):
        fd.run_transformer(fctx, sparse, token_counts=[1, 0])
    with pytest.raises(ValueError, match="token_counts"):
        fd.run_transformer(fctx, sparse, token_counts=[1])


def test_factored_decoder_needs_the_context(decoded):
    fd = decoded["factored"]["decoder"]
    tokens = decoded["factored"]["tokens"][:1]
    with pytest.raises(ValueError, match="ctx"):
        fd.predict_mask_logits(tokens, None, (64, 64), [1])


# --------------------------------------------------------------------------------------------
# RegionUpscaler == full upscale
# --------------------------------------------------------------------------------------------


def test_bilinear_matrix_reproduces_interpolate():
    x = torch.randn(1, 1, 7, 1, dtype=torch.float32)
    for n_out in (3, 7, 16, 29):
        full = torch.nn.functional.interpolate(x, (n_out, 1), mode="bilinear", align_corners=False)
        m = torch.from_numpy(bilinear_matrix(7, n_out)).float()
        torch.testing.assert_close(m @ x[0, 0, :, 0], full[0, 0, :, 0], rtol=0, atol=1e-6)
        np.testing.assert_allclose(bilinear_matrix(7, n_out).sum(1), 1.0, atol=1e-6)


GEOMETRIES = [((684, 1024), (534, 800)),    # dog.jpg
              ((1024, 768), (1080, 810)),   # bus.jpg, upscaled
              ((1024, 1024), (770, 769)),   # square-ish, odd
              ((13, 1024), (5, 400))]       # extreme aspect


def v1_matrices(input_hw: tuple[int, int], out_hw: tuple[int, int]):
    """SAM v1's post-processing matrices (256 -> 1024, crop to ``input_hw``, -> ``out_hw``)."""
    return (composed_matrix(256, 1024, input_hw[0], out_hw[0]),
            composed_matrix(256, 1024, input_hw[1], out_hw[1]))


@pytest.mark.parametrize("input_hw, out_hw", GEOMETRIES)
@pytest.mark.parametrize("seed", [0, 1])
def test_region_upscaler_matches_full_upscale(input_hw, out_hw, seed):
    g = torch.Generator().manual_seed(seed)
    nlow = RegionUpscaler.needed_low_res(*v1_matrices(input_hw, out_hw))
    # the generator decodes whole tokens: up to 3 rows/columns of padding logits come along
    lh, lw = 4 * -(-nlow[0] // 4), 4 * -(-nlow[1] // 4)
    up = RegionUpscaler((lh, lw), *v1_matrices(input_hw, out_hw), torch.device("cpu"))
    yy, xx = torch.meshgrid(torch.arange(256.0), torch.arange(256.0), indexing="ij")
    h, w = out_hw
    for trial in range(6):
        low = torch.randn(256, 256, generator=g) * 3 - 6
        cy, cx, sd = (torch.rand(3, generator=g) * torch.tensor([nlow[0], nlow[1], 40.0])).tolist()
        low += 14 * torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (sd + 2) ** 2))
        if trial == 5:
            low -= 30  # nothing above -offset: nan stability and an empty mask
        if trial >= 3:  # confident logits in the padding, which no output pixel reads
            low[nlow[0]:, :] = 20.0
            low[:, nlow[1]:] = 20.0
        if trial == 4:  # a mask confined to the first rows (a downscale may skip some)
            low[:] = -20.0
            low[:2, :] = 20.0
        full = upscale_mask_logits(low[None, None], 1024, input_hw, out_hw)[0, 0]
        s_ref = stability_score(full[None], 0.0, 1.0)[0].item()
        r = up.upscale(low[:lh, :lw].contiguous(), 0.0, 1.0)
        if np.isnan(s_ref):
            assert np.isnan(r.stability)
        else:
            assert abs(r.stability - s_ref) <= 1e-3
        rle = region_to_rle(r.mask, r.y0, r.x0, h, w)
        mask = np.asarray(rle_decode(rle))
        ref_mask = (full > 0).numpy()
        # float rounding may flip pixels whose logit is within ~1e-5 of 0
        flips = mask != ref_mask
        assert (np.abs(full.numpy()[flips]) < 1e-4).all()
        assert sum(rle["counts"]) == h * w
        box, box_ref = region_box_xyxy(r.mask, r.y0, r.x0), masks_to_boxes_xyxy(full[None] > 0)[0]
        if not flips.any():
            assert rle_with_list_counts(rle) == masks_to_rle((full > 0)[None])[0]
            assert box.tolist() == box_ref.tolist()


@pytest.mark.parametrize("input_hw, out_hw", GEOMETRIES[:3])
def test_region_upscaler_strip_test_matches_the_full_mask(input_hw, out_hw):
    """``strip_any_above`` on a strip's token window says whether the full-size mask has a
    pixel in that strip (21 columns or rows at each end, and one in the middle)."""
    g = torch.Generator().manual_seed(3)
    nlow = RegionUpscaler.needed_low_res(*v1_matrices(input_hw, out_hw))
    lh, lw = 4 * -(-nlow[0] // 4), 4 * -(-nlow[1] // 4)
    up = RegionUpscaler((lh, lw), *v1_matrices(input_hw, out_hw), torch.device("cpu"))
    yy, xx = torch.meshgrid(torch.arange(256.0), torch.arange(256.0), indexing="ij")
    lows = []
    for _ in range(24):  # blobs of every size, anywhere: some reach a strip, some do not
        cy, cx, sd = (torch.rand(3, generator=g) * torch.tensor([nlow[0], nlow[1], 30.0])).tolist()
        lows.append(-8 + 14 * torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (sd + 1) ** 2)))
    low = torch.stack(lows)  # (K, 256, 256)
    full = upscale_mask_logits(low[:, None], 1024, input_hw, out_hw)[:, 0] > 0  # (K, H, W)
    h, w = out_hw
    hits = 0
    for axis, size in ((1, w), (0, h)):
        for start, stop in ((0, 21), (size - 21, size), (size // 2, size // 2 + 5)):
            lo, hi = up.strip_low_res(axis, start, stop)
            t0, t1 = lo // 4, -(-hi // 4)
            if axis == 1:
                window, want = low[:, :lh, 4 * t0:4 * t1], full[:, :, start:stop].flatten(1).any(1)
            else:
                window, want = low[:, 4 * t0:4 * t1, :lw], full[:, start:stop, :].flatten(1).any(1)
            got = up.strip_any_above(window.contiguous(), 4 * t0, axis, start, stop, 0.0)
            assert got.tolist() == want.tolist()
            hits += int(want.sum())
    assert 0 < hits < 24 * 6  # both answers occur


def rle_decode(rle: dict) -> np.ndarray:
    """(h, w) bool from an uncompressed column-major RLE (counts start with zeros)."""
    h, w = rle["size"]
    flat = np.zeros(h * w, dtype=bool)
    pos, val = 0, False
    for c in rle["counts"]:
        flat[pos:pos + c] = val
        pos, val = pos + c, not val
    return flat.reshape(w, h).T


def test_region_to_rle_places_region_exactly():
    mask = torch.tensor([[1, 0], [1, 1]], dtype=torch.bool)
    rle = region_to_rle(mask, 1, 2, 4, 5)  # region rows 1-2, cols 2-3 of a 4x5 image
    expect = np.zeros((4, 5), bool)
    expect[1:3, 2:4] = mask.numpy()
    assert (rle_decode(rle) == expect).all()
    assert isinstance(rle["counts"], np.ndarray) and rle["counts"].dtype == np.int64
    assert rle_with_list_counts(rle) == masks_to_rle(torch.from_numpy(expect)[None])[0]
    assert region_to_rle(torch.zeros(0, 0, dtype=torch.bool), 0, 0, 3, 2) == {"size": [3, 2], "counts": [6]}
    assert region_box_xyxy(mask, 1, 2).tolist() == [2, 1, 3, 2]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_region_rle_and_box_equal_the_placed_full_mask(seed):
    """Random regions (empty, touching every image edge, full height/width, all ones) against
    ``masks_to_rle`` / ``masks_to_boxes_xyxy`` of the full placed mask."""
    g = np.random.default_rng(seed)
    for _ in range(500):
        h, w = (int(v) for v in g.integers(1, 9, 2))
        hr, wr = int(g.integers(0, h + 1)), int(g.integers(0, w + 1))
        y0, x0 = int(g.integers(0, h - hr + 1)), int(g.integers(0, w - wr + 1))
        mask = torch.from_numpy(g.random((hr, wr)) < g.random())
        full = np.zeros((h, w), bool)
        full[y0:y0 + hr, x0:x0 + wr] = mask.numpy()
        full_t = torch.from_numpy(full)[None]
        assert rle_with_list_counts(region_to_rle(mask, y0, x0, h, w)) == masks_to_rle(full_t)[0]
        assert region_box_xyxy(mask, y0, x0).tolist() == masks_to_boxes_xyxy(full_t)[0].tolist()
    with pytest.raises(ValueError, match="does not fit"):
        region_to_rle(torch.ones(3, 2, dtype=torch.bool), 2, 0, 4, 4)


def bicubic_cases(g: torch.Generator) -> list[torch.Tensor]:
    """Low-res maps for bicubic post-processing: a plateau just below -offset on a very
    negative background (bicubic overshoot lifts outputs near its edges above 0 although no
    tap is above -offset), and random blobs."""
    plateau = torch.full((256, 256), -30.0)
    plateau[100:140, 60:90] = -1.05
    yy, xx = torch.meshgrid(torch.arange(256.0), torch.arange(256.0), indexing="ij")
    blobs = []
    for _ in range(3):
        low = torch.randn(256, 256, generator=g) * 3 - 12
        cy, cx, sd = (torch.rand(3, generator=g) * torch.tensor([256.0, 256.0, 30.0])).tolist()
        low += 14 * torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (sd + 2) ** 2))
        blobs.append(low)
    return [plateau, *blobs]


@pytest.mark.parametrize("out_hw", [(534, 800), (1200, 1800), (100, 61)])
def test_region_upscaler_with_negative_bicubic_weights_matches_full_upscale(out_hw):
    """EfficientSAM's bicubic 256 -> (H, W): outputs can exceed every tap, so the active
    low-res set needs the overshoot margin; stability and mask equal the full computation."""
    ay, ax = bicubic_matrix(256, out_hw[0]), bicubic_matrix(256, out_hw[1])
    up = RegionUpscaler((256, 256), ay, ax, torch.device("cpu"))
    assert 0.25 < up.overshoot < 0.35
    for i, low in enumerate(bicubic_cases(torch.Generator().manual_seed(0))):
        full = torch.from_numpy(ay).float() @ low @ torch.from_numpy(ax).float().T
        if i == 0:  # no tap above -offset, yet pixels above 0
            assert low.max() < -1.0 - 1e-4 and (full > 0).sum() > 10
        r = up.upscale(low, 0.0, 1.0)
        s_ref = stability_score(full[None], 0.0, 1.0)[0].item()
        assert (np.isnan(r.stability) and np.isnan(s_ref)) or abs(r.stability - s_ref) <= 1e-6
        mask = np.asarray(rle_decode(region_to_rle(r.mask, r.y0, r.x0, *out_hw)))
        flips = mask != (full > 0).numpy()
        assert (np.abs(full.numpy()[flips]) < 1e-4).all()


def test_bilinear_post_processing_has_no_overshoot_margin():
    up = RegionUpscaler((172, 256), *v1_matrices((684, 1024), (534, 800)), torch.device("cpu"))
    assert up.overshoot == 0.0 and up.active_margin(torch.full((4, 4), -50.0), -1.0) == 1e-4


def test_region_upscaler_refuses_a_region_that_misses_taps():
    with pytest.raises(ValueError, match="does not cover"):
        RegionUpscaler((100, 100), *v1_matrices((684, 1024), (534, 800)), torch.device("cpu"))


# --------------------------------------------------------------------------------------------
# bfloat16 (the fast preset's approximation) against float32
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def decoded_bf16(mobile_sam):
    """The float32 plain decoder and the bfloat16 factored decoder on the 12 prompts of
    ``decoded`` (bus.jpg), plus the image encoder in both dtypes."""
    m = mobile_sam
    image = read_photo("bus.jpg")
    g = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        emb = m.encode_image(image)
        emb_bf16 = m.encode_image(image, torch.bfloat16)
        h, w = image.shape[:2]
        pts = torch.rand(12, 1, 2, generator=g, dtype=torch.float64) * torch.tensor([w, h])
        labels = torch.ones(12, 1, dtype=torch.int64)
        sparse, dense = m.prompt_encoder(m.to_input_frame(pts, emb), labels, None, None, emb.grid_hw)
        pe = m.dense_pe(emb)
        dec = m.mask_decoder
        tokens, img_tokens = dec.run_transformer(emb.embedding, pe, sparse, dense)
        low = dec.predict_mask_logits(tokens, img_tokens, emb.grid_hw, [1, 2, 3])
        fd = FactoredGridDecoder(dec, dtype=torch.bfloat16)
        ctx = fd.prepare(emb.embedding, pe, dense.expand_as(emb.embedding))
        out = [fd.run_transformer(ctx, sparse[s:s + 5]) for s in range(0, 12, 5)]
        tokens2 = torch.cat([t for t, _ in out])
        low2 = torch.cat([fd.predict_mask_logits(t, i, ctx.grid_hw, [1, 2, 3], ctx=ctx)
                          for t, i in out])
        return dict(emb=(emb.embedding, emb_bf16.embedding), low=(low, low2),
                    iou=(dec.predict_iou(tokens), fd.predict_iou(tokens2)), tokens2=tokens2,
                    ctx=ctx)


def test_bf16_encoder_is_close_to_float32(decoded_bf16):
    a, b = decoded_bf16["emb"]
    assert b.dtype == torch.float32 and b.shape == a.shape
    rel = float((b - a).norm() / a.norm())
    assert 0 < rel < 0.05  # measured 0.018 on bus.jpg; 0 would mean bfloat16 never ran


def test_bf16_decoder_keeps_the_stable_masks(decoded_bf16):
    """Outputs are float32; the multimask predicted IoUs move by < 0.03 (measured <= 0.016),
    and every mask with stability >= 0.9 (the ones a generator can keep) has mask IoU >= 0.97
    with its float32 twin (measured >= 0.98); unstable masks may differ more."""
    (low, low2), (iou, iou2) = decoded_bf16["low"], decoded_bf16["iou"]
    assert decoded_bf16["tokens2"].dtype == torch.bfloat16
    assert decoded_bf16["ctx"].base.dtype == torch.bfloat16
    assert low2.dtype == torch.float32 and iou2.dtype == torch.float32
    assert low2.shape == low.shape == (12, 3, 256, 256)
    assert float((iou2[:, 1:] - iou[:, 1:]).abs().max()) < 0.03
    assert not torch.equal(low2, low)
    a, b = low > 0, low2 > 0
    inter = (a & b).flatten(2).sum(-1).float()
    union = (a | b).flatten(2).sum(-1).float().clamp(min=1)
    stable = stability_score(low, 0.0, 1.0) >= 0.9
    assert stable.sum() >= 20  # the check below covers most masks
    assert float((inter / union)[stable].min()) >= 0.97


def test_compute_dtype_is_checked(mobile_sam):
    with pytest.raises(ValueError, match="dtype"):
        FactoredGridDecoder(mobile_sam.mask_decoder, dtype=torch.float16)
    with pytest.raises(ValueError, match="compute dtype"):
        mobile_sam.encode_image(read_photo("dog.jpg"), torch.float16)


def test_generator_in_bf16_keeps_the_float32_masks(mobile_sam):
    """compute_dtype="bfloat16" end to end: at least 0.9 of the float32 run's masks found at
    mask IoU 0.9, and vice versa (measured 0.98 both ways on groceries.jpg, 12 x 12 grid)."""
    from pycocotools import mask as mask_utils

    from amg import MaskGenerator
    image = read_photo("groceries.jpg")
    a, b = (MaskGenerator(mobile_sam, points_per_side=12, output_mode="coco_rle",
                          compute_dtype=dt).generate(image) for dt in ("float32", "bfloat16"))
    assert len(a) >= 30
    ious = mask_utils.iou([r["segmentation"] for r in a], [r["segmentation"] for r in b],
                          [0] * len(b))
    assert (ious.max(1) >= 0.9).mean() >= 0.9
    assert (ious.max(0) >= 0.9).mean() >= 0.9
    assert a != b  # the bfloat16 run is not the float32 one


def test_auto_compute_dtype_follows_the_hardware(mobile_sam):
    """"auto" is bfloat16 exactly where the CPU has AVX512-BF16 or AMX-BF16 (Linux flags)."""
    from pathlib import Path

    from amg import MaskGenerator
    from sam_model import has_native_bfloat16, resolve_compute_dtype
    cpu = torch.device("cpu")
    assert resolve_compute_dtype("float32", cpu) == torch.float32
    assert resolve_compute_dtype("bfloat16", cpu) == torch.bfloat16
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        flags = next(line for line in cpuinfo.read_text().splitlines() if line.startswith("flags"))
        native = "avx512_bf16" in flags.split() or "amx_bf16" in flags.split()
        assert has_native_bfloat16("cpu") == native
    expected = torch.bfloat16 if has_native_bfloat16("cpu") else torch.float32
    assert resolve_compute_dtype("auto", cpu) == expected
    assert MaskGenerator(mobile_sam, compute_dtype="auto").compute_dtype == expected
    assert has_native_bfloat16("meta") is False
    with pytest.raises(ValueError, match="compute_dtype"):
        resolve_compute_dtype("float16", cpu)


def test_generator_crop_edge_strips_change_nothing(mobile_sam, monkeypatch):
    """Crop-layer masks that reach a crop-edge strip are dropped before their whole-map
    logits (reject windows of amg.generator.EdgeStrip); the output equals the run without
    that shortcut (picture1.jpg, one crop layer, 8 x 8 grid), and the shortcut does drop
    masks there."""
    import amg.generator as gen_mod
    from amg import MaskGenerator
    from sam_model.factored_decoder import FactoredPointDecoder
    image = read_photo("picture1.jpg")
    gen = MaskGenerator(mobile_sam, points_per_side=8, crop_n_layers=1, output_mode="coco_rle")
    calls = []
    rejected = FactoredPointDecoder._rejected
    monkeypatch.setattr(FactoredPointDecoder, "_rejected",
                        lambda *a: calls.append(rejected(*a)) or calls[-1])
    with_strips = gen.generate(image)
    assert sum(int(c.sum()) for c in calls) > 10  # masks were dropped from the strips
    monkeypatch.setattr(gen_mod, "EDGE_STRIP_MAX_TOKEN_FRAC", -1.0)  # no strips
    n_calls = len(calls)
    without = gen.generate(image)
    assert len(calls) == n_calls
    assert len(with_strips) >= 20
    assert with_strips == without
