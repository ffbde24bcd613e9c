"""``sam_model.layers.ScratchBuffer``: the encoders' reused buffer for their qkv projections
and MLP hidden layers (inference only)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from sam_model.layers import ScratchBuffer


def test_linear_equals_nn_linear_bit_for_bit():
    """``F.linear`` and the buffer's ``addmm`` are the same product: equal values for a
    channels-last (B, H, W, C) input, the form the encoders pass."""
    g = torch.Generator().manual_seed(0)
    layer = nn.Linear(96, 384)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(384, 96, generator=g))
        layer.bias.copy_(torch.randn(384, generator=g))
    x = torch.randn(2, 14, 14, 96, generator=g)
    scratch = ScratchBuffer()
    with torch.inference_mode():
        out = scratch.linear(layer, x)
        assert out.shape == (2, 14, 14, 384) and out.is_contiguous()
        assert torch.equal(out, F.linear(x, layer.weight, layer.bias))


def test_views_share_one_buffer_that_grows_when_needed():
    scratch = ScratchBuffer()
    like = torch.zeros(1)
    a = scratch.take((4, 8), like)
    b = scratch.take((2, 8), like)  # smaller: the same memory
    assert b.data_ptr() == a.data_ptr() and b.shape == (2, 8)
    c = scratch.take((10, 8), like)  # larger: a new buffer
    assert c.shape == (10, 8) and c.untyped_storage().nbytes() == 80 * 4
    d = scratch.take((3, 3), like.double())  # another dtype: a new buffer of that dtype
    assert d.dtype == torch.float64 and d.shape == (3, 3)


def test_requests_above_max_bytes_get_fresh_tensors_and_release_the_buffer():
    """A request above ``max_bytes`` (Hiera's stage-1 MLP, its memory peak) is a tensor of its
    own, and the buffer is released so that it adds nothing beside it."""
    scratch = ScratchBuffer(max_bytes=64 * 4)
    like = torch.zeros(1)
    small = scratch.take((8, 8), like)  # 256 bytes: in the buffer
    assert scratch.take((4, 4), like).data_ptr() == small.data_ptr()
    big = scratch.take((8, 9), like)  # 288 bytes: fresh
    assert big.data_ptr() != small.data_ptr() and scratch._buf is None
    again = scratch.take((8, 8), like)  # the next small request makes a new buffer
    assert scratch._buf is not None and again.data_ptr() == scratch._buf.data_ptr()
