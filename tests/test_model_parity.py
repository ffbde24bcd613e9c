"""Network parity against the official implementations (test-only oracles).

- ViT-B: the same random weights loaded into ours and the official ``segment-anything`` model
  (the state dicts must be key-for-key compatible); image embedding and mask logits compared.
- ViT-L / ViT-H: state-dict layout (keys and shapes, built on the meta device) and one windowed
  and one global-attention block with the real widths/heads compared numerically.
- MobileSAM: the real weights in ours and in MobileSAM's reference code, on a real photo.
Tolerances: relative to the output's max magnitude, 1e-4 for embeddings and logits.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from sam_model import MODEL_CONFIGS, Sam
from sam_model.vit import ViTBlock

from .conftest import read_photo

sa = pytest.importorskip("segment_anything", reason="the parity oracle needs the test extra")
pytestmark = pytest.mark.parity


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def randomise_(module: torch.nn.Module, seed: int) -> None:
    """Fill every parameter and buffer with seeded noise (official init leaves rel-pos and
    position embeddings at zero, which would make their parity trivial)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if t.dtype.is_floating_point:
                noise = torch.randn(t.shape, generator=g)
                if name.endswith("norm1.weight") or name.endswith("norm2.weight") or ".weight" in name and t.ndim == 1:
                    t.copy_(1.0 + 0.1 * noise)
                elif "running_var" in name:
                    t.copy_(1.0 + 0.1 * noise.abs())
                else:
                    t.copy_(0.05 * noise)


def ref_predict(predictor, image: np.ndarray, points_xy: np.ndarray, labels: np.ndarray,
                boxes=None, multimask=True):
    """Reference SamPredictor path (image already set): predict_torch on transformed prompts."""
    pts = torch.as_tensor(predictor.transform.apply_coords(points_xy, image.shape[:2]))
    bx = None if boxes is None else torch.as_tensor(
        predictor.transform.apply_boxes(boxes, image.shape[:2]))
    with torch.no_grad():
        masks, iou, low = predictor.predict_torch(pts, torch.as_tensor(labels), boxes=bx,
                                                  multimask_output=multimask, return_logits=True)
    return masks, iou, low


def reference_predictor(ref_model, image: np.ndarray):
    predictor = sa.SamPredictor(ref_model)
    predictor.set_image(image)
    return predictor


@pytest.fixture(scope="module")
def vit_b_encoded():
    """ViT-B with the same random weights in both; truck.jpg encoded once by each."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = sa.sam_model_registry["vit_b"]().eval()
    randomise_(ref, seed=0)
    ours = Sam(MODEL_CONFIGS["vit_b"]).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)  # key-for-key compatible
    image = read_photo("truck.jpg")
    return ours, ours.encode_image(image), reference_predictor(ref, image), image


def test_vit_b_random_weights_match_reference(vit_b_encoded):
    ours, emb, predictor, image = vit_b_encoded
    assert emb.embedding.shape == (1, 256, 64, 64)
    assert rel_err(emb.embedding, predictor.features) < 1e-4
    rng = np.random.default_rng(0)
    pts = rng.uniform([0, 0], [image.shape[1], image.shape[0]], size=(6, 2, 2))
    labels = np.array([[1, 0]] * 6)
    masks, iou, low = ref_predict(predictor, image, pts, labels)
    low2, iou2 = ours.decode(emb, torch.as_tensor(pts), torch.as_tensor(labels))
    assert low2.shape == (6, 3, 256, 256)
    assert rel_err(low2, low) < 1e-4
    assert (iou2 - iou).abs().max().item() < 1e-4
    assert rel_err(ours.upscale_masks(low2, emb), masks) < 1e-4


def test_vit_b_box_and_single_mask_prompts(vit_b_encoded):
    ours, emb, predictor, image = vit_b_encoded
    pts = np.array([[[500.0, 375.0]], [[1300.0, 700.0]]])
    labels = np.array([[1], [1]])
    boxes = np.array([[75.0, 275.0, 1725.0, 850.0], [425.0, 600.0, 700.0, 875.0]])
    _, iou, low = ref_predict(predictor, image, pts, labels, boxes=boxes, multimask=False)
    low2, iou2 = ours.decode(emb, torch.as_tensor(pts), torch.as_tensor(labels),
                             boxes_xyxy=torch.as_tensor(boxes), multimask_output=False)
    assert low2.shape == (2, 1, 256, 256)
    assert rel_err(low2, low) < 1e-4
    assert (iou2 - iou).abs().max().item() < 1e-4


@pytest.mark.parametrize("name", ["vit_b", "vit_l", "vit_h", "mobile_sam"])
def test_state_dict_layout_matches_reference(name):
    """Same keys and shapes as the official model (MobileSAM: mobilesam-lite's vit_t)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if name == "mobile_sam":  # small; its TinyViT cannot be built on the meta device
            msl = pytest.importorskip("mobilesam_lite.mobile_sam")
            ref = msl.sam_model_registry["vit_t"]()
        else:
            with torch.device("meta"):
                ref = sa.sam_model_registry[name]()
    with torch.device("meta"):
        ours = Sam(MODEL_CONFIGS[name])
    ref_shapes = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    our_shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert sorted(our_shapes) == sorted(ref_shapes)
    assert our_shapes == ref_shapes


@pytest.mark.parametrize("name", ["vit_l", "vit_h"])
@pytest.mark.parametrize("global_attn", [False, True])
def test_large_vit_blocks_match_reference(name, global_attn):
    """A windowed and a global block at the real width/heads of ViT-L/H, random weights."""
    from segment_anything.modeling.image_encoder import Block
    cfg = MODEL_CONFIGS[name].encoder
    window = 0 if global_attn else cfg.window_size
    grid = 32  # a reduced token grid keeps the global block cheap; rel-pos tables interpolate
    ref = Block(cfg.embed_dim, cfg.num_heads, use_rel_pos=True, window_size=window,
                input_size=(64, 64)).eval()
    randomise_(ref, seed=1)
    ours = ViTBlock(cfg.embed_dim, cfg.num_heads, cfg.mlp_ratio, window, 64).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(1, grid, grid, cfg.embed_dim, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert rel_err(ours(x), ref(x)) < 1e-4


@pytest.mark.parametrize("fused", [True, False])
def test_mobile_sam_real_weights_match_reference(mobile_sam, ref_mobile_sam, fused):
    image = read_photo("dog.jpg")
    rng = np.random.default_rng(1)
    pts = rng.uniform([0, 0], [image.shape[1], image.shape[0]], size=(16, 1, 2))
    labels = np.ones((16, 1), dtype=np.int64)
    predictor = reference_predictor(ref_mobile_sam, image)
    masks, iou, low = ref_predict(predictor, image, pts, labels)
    feats = predictor.features
    mobile_sam.set_fused_attention(fused)
    try:
        emb = mobile_sam.encode_image(image)
        low2, iou2 = mobile_sam.decode(emb, torch.as_tensor(pts), torch.as_tensor(labels))
    finally:
        mobile_sam.set_fused_attention(True)
    assert rel_err(emb.embedding, feats) < 1e-4
    assert rel_err(low2, low) < 1e-4
    assert (iou2 - iou).abs().max().item() < 1e-4
    # The same mask at the 0 threshold, up to a few boundary pixels.
    agree = ((mobile_sam.upscale_masks(low2, emb) > 0) == (masks > 0)).float().mean().item()
    assert agree > 0.9999


def test_embedding_shape_for_portrait_and_odd_sizes(mobile_sam):
    """Any aspect: the input is resized/padded to 1024, the embedding stays 64x64, and the
    stored geometry maps back to the original size."""
    image = read_photo("bus.jpg")  # 810 x 1080 portrait
    emb = mobile_sam.encode_image(image)
    assert emb.embedding.shape == (1, 256, 64, 64)
    assert emb.original_hw == (1080, 810) and emb.input_hw == (1024, 768)
    tiny = np.full((5, 3, 3), 128, np.uint8)
    emb2 = mobile_sam.encode_image(tiny)
    assert emb2.input_hw == (1024, 614)
    low, _ = mobile_sam.decode(emb2, torch.tensor([[[1.0, 2.0]]]), torch.tensor([[1]]))
    assert mobile_sam.upscale_masks(low, emb2).shape == (1, 3, 5, 3)


@pytest.mark.parametrize("bad", [np.zeros((10, 10), np.uint8), np.zeros((10, 10, 4), np.uint8),
                                 np.zeros((10, 10, 3), np.float32), np.zeros((0, 10, 3), np.uint8)])
def test_encode_image_rejects_bad_arrays(mobile_sam, bad):
    with pytest.raises(ValueError, match="image must"):
        mobile_sam.encode_image(bad)


def test_load_model_gives_eval_model_with_real_weights(mobile_sam):
    assert not mobile_sam.training
    # Every tensor equals the official checkpoint's, key for key.
    from sam_model.checkpoints import fetch_checkpoint
    official = torch.load(fetch_checkpoint("mobile_sam"), map_location="cpu", weights_only=True)
    ours = mobile_sam.state_dict()
    assert ours.keys() == official.keys()
    assert all(torch.equal(ours[k], official[k]) for k in official)


@pytest.mark.parametrize("groups, stride", [(1, 1), (8, 2)])
def test_conv_bn_folds_batch_norm_in_eval_mode(groups, stride):
    """TinyViT's ConvBN folds BatchNorm into the convolution at inference: same output as
    conv then BN (running statistics), channels-first or channels-last input; training mode
    still normalises with the batch's own statistics."""
    from sam_model.tiny_vit import ConvBN
    torch.manual_seed(0)
    m = ConvBN(8, 16, 3, stride, 1, groups=groups)
    with torch.no_grad():
        m.bn.weight.uniform_(0.5, 2.0)
        m.bn.bias.normal_()
        m.bn.running_mean.normal_()
        m.bn.running_var.uniform_(0.5, 3.0)
    x = torch.randn(2, 8, 20, 18)
    m.eval()
    with torch.no_grad():
        plain = m.bn(m.c(x))
        torch.testing.assert_close(m(x), plain, rtol=1e-5, atol=1e-5)
        cl = m(x.contiguous(memory_format=torch.channels_last))
        torch.testing.assert_close(cl, plain, rtol=1e-5, atol=1e-5)
    m.train()
    with torch.no_grad():
        out = m(x)
    torch.testing.assert_close(out.mean((0, 2, 3)), m.bn.bias, rtol=0, atol=1e-4)


def test_with_input_size_shares_weights_and_encodes_at_the_new_size(mobile_sam):
    """``Sam.with_input_size``: a view on the same parameters; the original is unchanged; the
    embedding grid, prompt frame and low-res masks follow the new size; bad sizes are refused."""
    assert mobile_sam.with_input_size(1024) is mobile_sam
    big = mobile_sam.with_input_size(1280)
    assert big.input_size == 1280 and mobile_sam.input_size == 1024
    assert big.prompt_encoder.input_hw == (1280, 1280) and mobile_sam.prompt_encoder.input_hw == (1024, 1024)
    ours = dict(mobile_sam.named_parameters())
    assert all(p.data_ptr() == ours[n].data_ptr() for n, p in big.named_parameters())
    image = np.zeros((300, 400, 3), np.uint8)
    image[100:200, 150:300] = 200
    emb = big.encode_image(image)
    assert emb.embedding.shape == (1, 256, 80, 80) and emb.input_hw == (960, 1280)
    low, iou = big.decode(emb, torch.tensor([[[200.0, 150.0]]]), torch.ones(1, 1, dtype=torch.int64))
    assert low.shape == (1, 3, 320, 320) and iou.shape == (1, 3)
    assert big.upscale_masks(low, emb).shape == (1, 3, 300, 400)
    for bad in (1000, 128, 8192, 1024.0, True):
        with pytest.raises(ValueError, match="input size"):
            mobile_sam.with_input_size(bad)
