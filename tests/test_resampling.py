"""sam_model.resampling: the bicubic matrices against PyTorch's own bicubic kernel."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from sam_model.resampling import bicubic_matrix


def torch_bicubic_weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in): F.interpolate(bicubic) of the identity, one input row per channel (the
    width axis, 1 -> 1, is the identity: weights 0, 1, 0, 0 exactly)."""
    eye = torch.eye(n_in).reshape(1, n_in, n_in, 1)
    out = F.interpolate(eye, size=(n_out, 1), mode="bicubic", align_corners=False)
    return out[0, :, :, 0].T.double().numpy()


@pytest.mark.parametrize("n_in, n_out", [(256, 534), (256, 800), (256, 1080), (256, 1024),
                                         (256, 2250), (256, 100), (256, 3), (14, 64), (5, 7),
                                         (1, 4), (3, 1)])
def test_bicubic_matrix_matches_torch(n_in, n_out):
    m = bicubic_matrix(n_in, n_out)
    assert m.shape == (n_out, n_in)
    np.testing.assert_allclose(m, torch_bicubic_weights(n_in, n_out), rtol=0, atol=3e-7)
    np.testing.assert_allclose(m.sum(1), 1.0, atol=1e-6)


def test_bicubic_matrix_composes_like_two_dimensional_interpolate():
    x = torch.randn(1, 1, 256, 256, generator=torch.Generator().manual_seed(0))
    ref = F.interpolate(x, size=(534, 800), mode="bicubic", align_corners=False)[0, 0].double()
    ours = torch.as_tensor(bicubic_matrix(256, 534)) @ x[0, 0].double() @ \
        torch.as_tensor(bicubic_matrix(256, 800)).T
    assert ((ours - ref).abs().max() / ref.abs().max()).item() < 1e-6


def test_bicubic_weights_go_negative_and_taps_clamp_at_the_border():
    m = bicubic_matrix(256, 800)
    assert m.min() < -0.05  # outputs can leave the range of their taps
    # Output 0 sits at source -0.34: taps -2..1 clamp to rows 0, 0, 0, 1.
    assert np.count_nonzero(m[0]) == 2 and m[0, 0] > 1.0


def test_bicubic_matrix_rejects_empty_sizes():
    with pytest.raises(ValueError, match=">= 1"):
        bicubic_matrix(0, 5)
