"""The decoder seam's pure parts: bilinear resampling matrices and the plain decoders' filters."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from sam_model.point_decoder import DecodedMasks, RejectWindow, apply_filters
from sam_model.resampling import bilinear_matrix


def torch_weights(n_in: int, n_out: int, axis: str) -> np.ndarray:
    """(n_out, n_in) weights of ``F.interpolate`` bilinear along one axis, read off by
    resampling the identity."""
    eye = torch.eye(n_in)
    if axis == "h":
        out = F.interpolate(eye[:, None, :, None], (n_out, 1), mode="bilinear", align_corners=False)
        return out[:, 0, :, 0].T.double().numpy()
    out = F.interpolate(eye[:, None, None, :], (1, n_out), mode="bilinear", align_corners=False)
    return out[:, 0, 0, :].T.double().numpy()


@pytest.mark.parametrize("n_in,n_out", [(256, 534), (256, 800), (256, 1024), (256, 1365),
                                        (256, 2250), (256, 137), (1024, 534), (64, 63), (7, 3)])
@pytest.mark.parametrize("axis", ["h", "w"])
def test_bilinear_matrix_equals_interpolate_weights(n_in, n_out, axis):
    m = bilinear_matrix(n_in, n_out, fused_coordinate=True)
    assert m.shape == (n_out, n_in)
    np.testing.assert_array_equal(m, torch_weights(n_in, n_out, axis))
    np.testing.assert_allclose(m.sum(1), 1.0, atol=1e-7)


def test_filters_iou_then_windows_then_crop():
    logits = torch.full((4, 16, 16), -5.0)
    logits[1, 0, 0] = 3.0  # positive inside the window rows 0..3 of tokens (0, 1)
    logits[2, 10, 10] = 3.0  # positive outside it
    iou = torch.tensor([0.9, 0.8, 0.7, 0.1])
    index = torch.tensor([0, 0, 1, 1])
    calls = []

    def positive(window: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(window.shape))
        return window.amax((1, 2)) > 0

    out = apply_filters(logits, iou, index, 0.5, [RejectWindow((0, 1, 0, 4), positive)], (8, 12))
    assert isinstance(out, DecodedMasks)
    assert calls == [(3, 4, 16)]  # the IoU filter ran first: 3 survivors
    assert out.predicted_iou.tolist() == pytest.approx([0.9, 0.7])
    assert out.prompt_index.tolist() == [0, 1]
    assert out.low_res_logits.shape == (2, 8, 12)
    assert torch.equal(out.low_res_logits, logits[[0, 2], :8, :12])


def test_filters_keep_all_at_zero_threshold():
    logits, iou = torch.zeros(3, 4, 4), torch.tensor([0.0, -1.0, 0.5])
    out = apply_filters(logits, iou, torch.arange(3), 0.0, (), None)
    assert out.prompt_index.tolist() == [0, 1, 2] and out.low_res_logits.shape == (3, 4, 4)
    threshold_exact = apply_filters(logits, iou, torch.arange(3), 0.5, (), None)
    assert len(threshold_exact.predicted_iou) == 0  # strictly greater than the threshold
