"""SamHQ without the oracle: shapes at a reduced input size, the seam's point decoder against
the model's own decode, low_res_to_image against upscale_masks, bfloat16 and bad arguments.
Light HQ-SAM (TinyViT) with seeded random weights on a real photo."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sam_model import SAM_HQ_CONFIGS, SamHQ
from sam_model.point_decoder import RejectWindow

from .conftest import read_photo
from .hq_oracle import randomise_, rel_err


@pytest.fixture(scope="module")
def model():
    m = SamHQ(SAM_HQ_CONFIGS["sam_hq_vit_tiny"])
    randomise_(m, seed=11)
    return m.eval()


@pytest.fixture(scope="module")
def small(model):
    """The same weights at a 512 input (32 x 32 grid) and bus.jpg (portrait) encoded."""
    view = model.with_input_size(512)
    return view, view.encode_image(read_photo("bus.jpg"))


def test_shapes_at_a_reduced_input_size(model, small):
    view, emb = small
    assert view.input_size == 512 and model.input_size == 1024
    assert emb.embedding.shape == (1, 256, 32, 32)
    assert emb.interm_embedding.shape == (1, 160, 32, 32)
    assert emb.original_hw == (1080, 810) and emb.input_hw == (512, 384)
    assert view.hq_features(emb).shape == (1, 32, 128, 128)
    pts = torch.tensor([[[100.0, 200.0]], [[700.0, 900.0]]])
    low, iou = view.decode(emb, pts, torch.ones(2, 1, dtype=torch.int64))
    assert low.shape == (2, 1, 128, 128) and iou.shape == (2, 1)
    assert view.upscale_masks(low, emb).shape == (2, 1, 1080, 810)


def test_point_decoder_equals_decode_and_filters(small):
    view, emb = small
    pts = np.array([[50.0, 60.0], [400.0, 500.0], [800.0, 1000.0], [10.0, 1070.0]])
    for multimask in (True, False):
        for hq_only in (False, True):
            low, iou = view.decode(emb, torch.as_tensor(pts)[:, None],
                                   torch.ones(4, 1, dtype=torch.int64),
                                   multimask_output=multimask, hq_token_only=hq_only)
            dec = view.point_decoder(emb, multimask_output=multimask, hq_token_only=hq_only, plain=True)
            out = dec.decode(pts, 0.0)
            assert torch.equal(out.prompt_index, torch.arange(4))
            assert torch.equal(out.low_res_logits, low[:, 0])
            assert torch.equal(out.predicted_iou, iou[:, 0])
    low, iou = view.decode(emb, torch.as_tensor(pts)[:, None], torch.ones(4, 1, dtype=torch.int64))
    thresh = float(iou.flatten().sort().values[1])  # two of four strictly above
    out = view.point_decoder(emb, low_res_hw=(96, 100), plain=True).decode(
        pts, thresh, reject=[RejectWindow((0, 32, 0, 32), lambda w: torch.zeros(len(w), dtype=torch.bool))])
    keep = iou[:, 0] > thresh
    assert torch.equal(out.prompt_index, torch.nonzero(keep).flatten())
    assert torch.equal(out.low_res_logits, low[keep, 0, :96, :100])
    everything_rejected = view.point_decoder(emb, plain=True).decode(
        pts, 0.0, reject=[RejectWindow((3, 5, 7, 9), lambda w: torch.ones(len(w), dtype=torch.bool))])
    assert everything_rejected.low_res_logits.shape == (0, 128, 128)


def test_reject_window_sees_the_token_window(small):
    view, emb = small
    pts = np.array([[50.0, 60.0], [400.0, 500.0]])
    low, _ = view.decode(emb, torch.as_tensor(pts)[:, None], torch.ones(2, 1, dtype=torch.int64))
    seen = []

    def record(window: torch.Tensor) -> torch.Tensor:
        seen.append(window.clone())
        return torch.tensor([False, True])

    out = view.point_decoder(emb, plain=True).decode(
        pts, 0.0, reject=[RejectWindow((2, 5, 10, 16), record)])
    assert torch.equal(seen[0], low[:, 0, 8:20, 40:64])
    assert out.prompt_index.tolist() == [0]


def test_low_res_to_image_equals_upscale_masks(small):
    view, emb = small
    low, _ = view.decode(emb, torch.tensor([[[300.0, 400.0]]]), torch.ones(1, 1, dtype=torch.int64))
    ay, ax = view.low_res_to_image(emb)
    assert ay.shape == (1080, 128) and ax.shape == (810, 128)
    composed = torch.from_numpy(ay) @ low[0, 0].double() @ torch.from_numpy(ax).T
    assert rel_err(composed, view.upscale_masks(low, emb)[0, 0].double()) < 1e-5


def test_bfloat16_is_close_to_float32(small):
    view, _ = small
    image = read_photo("dog.jpg")
    e32 = view.encode_image(image)
    e16 = view.encode_image(image, compute_dtype=torch.bfloat16)
    assert e16.embedding.dtype == e16.interm_embedding.dtype == torch.float32
    assert rel_err(e16.embedding, e32.embedding) < 0.1
    pts = np.array([[100.0, 200.0], [500.0, 300.0]])
    a = view.point_decoder(e32).decode(pts, 0.0)
    b = view.point_decoder(e32, compute_dtype=torch.bfloat16).decode(pts, 0.0)
    assert b.low_res_logits.dtype == torch.float32
    assert rel_err(b.low_res_logits, a.low_res_logits) < 0.1


def test_bad_arguments(model, small):
    view, emb = small
    with pytest.raises(ValueError, match="low_res_hw"):
        view.point_decoder(emb, low_res_hw=(129, 10))
    with pytest.raises(ValueError, match=r"points_xy must be \(B, 2\)"):
        view.point_decoder(emb).decode(np.zeros((3, 1, 2)), 0.0)
    with pytest.raises(ValueError, match="compute dtype"):
        view.point_decoder(emb, compute_dtype=torch.float16)
    with pytest.raises(ValueError, match="input size"):
        model.with_input_size(500)
    with pytest.raises(ValueError, match="image must"):
        model.encode_image(np.zeros((4, 4), np.uint8))


def test_config_checks_the_interm_width():
    from sam_model.configs import SamHQConfig
    with pytest.raises(ValueError, match="interm_dim 768 != 160"):
        SamHQConfig("bad", SAM_HQ_CONFIGS["sam_hq_vit_tiny"].encoder, 768)
