"""Small building blocks shared by the image encoders and the mask decoder."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F


#: Largest ``qkv`` projection or MLP hidden layer that the image encoders (Hiera, SAM's ViT)
#: write into their :class:`ScratchBuffer`. Hiera's stage-1 MLP hidden layers (100-151 MB
#: for a 1024 x 1024 input) are its memory peak, and ViT-H's windowed ones are 100 MB: they
#: stay fresh tensors, with the buffer released before them, so that the buffer does not
#: raise the peak (Hiera-L on a 2250 x 1500 photo: 1972 MB against 1983 MB with fresh
#: tensors everywhere, 2039 MB with no limit).
SCRATCH_MAX_BYTES = 96 * 2**20


class ScratchBuffer:
    """One flat buffer, reused for large intermediates of which at most one is alive at a time
    (inference only: autograd would keep them).

    A fresh multi-megabyte tensor costs a page fault per 4 KiB page on its first write: glibc
    serves allocations above its mmap threshold (at most 32 MiB) with new pages from the
    kernel every time. For the 4096 x 2304 output of a Hiera-L stage-3 MLP layer
    (``nn.Linear(576, 2304)``), on a 2-core AMD EPYC with 2 threads, float32, ``F.linear``
    into a fresh tensor took 157-164 ms and ``torch.addmm(..., out=)`` into warm memory
    113-117 ms, bit-identical.

    Args:
        max_bytes: largest buffer kept. A larger request releases the buffer and gets a
            fresh tensor of its own, so that the buffer never adds to the peak of a model
            whose largest intermediate is above it (None: no limit).
    """

    def __init__(self, max_bytes: int | None = None) -> None:
        self._buf: torch.Tensor | None = None
        self.max_bytes = max_bytes

    def take(self, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        """A contiguous ``shape`` view of the buffer in ``like``'s dtype and device (the
        buffer grows when needed); its values are undefined, and the previous view's memory
        is reused. Above ``max_bytes``: a fresh tensor, and the buffer is released."""
        n = math.prod(shape)
        if self.max_bytes is not None and n * like.element_size() > self.max_bytes:
            self._buf = None
            return like.new_empty(shape)
        buf = self._buf
        if buf is None or buf.numel() < n or buf.dtype != like.dtype or buf.device != like.device:
            self._buf = buf = None  # release the smaller buffer before the larger one
            self._buf = buf = like.new_empty(n)
        return buf[:n].view(shape)

    def linear(self, layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        """``layer(x)`` for ``x`` (..., in_features), written into the buffer:
        (..., out_features), ``torch.addmm(bias, x, weight^T)`` (``F.linear``'s product)."""
        out = self.take((*x.shape[:-1], layer.out_features), x)
        torch.addmm(layer.bias, x.reshape(-1, x.shape[-1]), layer.weight.t(),
                    out=out.view(-1, layer.out_features))
        return out


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel axis of a channels-first map (SAM's neck and upscaler).

    Input and output: ``(B, C, H, W)`` float. Statistics are the mean and biased variance over C
    at each pixel; ``eps`` is 1e-6 as in the official SAM modules.
    """

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: (B, C, H, W) -> (B, C, H, W), normalised over C."""
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class MLP(nn.Module):
    """Plain MLP with ``num_layers`` linear layers (mask decoder hypernetworks, IoU head; with
    ``activation=F.gelu`` the Hiera block MLP).

    Keys ``layers.{i}.weight/bias`` follow the official state-dict layout.
    Input ``(..., input_dim)`` -> output ``(..., output_dim)``; ``activation`` (ReLU by default)
    after every layer but the last.
    """

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int,
                 activation: Callable[[torch.Tensor], torch.Tensor] = F.relu) -> None:
        super().__init__()
        dims_in = [input_dim] + [hidden_dim] * (num_layers - 1)
        dims_out = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims_in, dims_out))
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: (..., input_dim) float -> (..., output_dim) float."""
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = self.activation(x)
        return x


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None = None,
              *, fused: bool = True) -> torch.Tensor:
    """Scaled dot-product attention, fused (SDPA) or written out (for exact parity debugging).

    Args:
        q: (..., Nq, D) float. k: (..., Nk, D) float. v: (..., Nk, Dv) float.
        bias: optional additive logit bias broadcastable to (..., Nq, Nk).
        fused: use ``torch.nn.functional.scaled_dot_product_attention``; ``False`` computes
            ``softmax(q k^T / sqrt(D) + bias) v`` step by step.

    Returns:
        (..., Nq, Dv) float.
    """
    if fused:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    logits = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
    if bias is not None:
        logits = logits + bias
    return logits.softmax(dim=-1) @ v


class EfficientSamMLP(nn.Module):
    """EfficientSAM's GELU MLP (its official ``MLPBlock``): ``num_hidden_layers`` linear layers
    each followed by GELU, then an output linear layer without activation.

    Keys ``layers.{i}.0.weight/bias`` (a Linear inside a Sequential with the activation) and
    ``fc.weight/bias`` follow the official state-dict layout. Input ``(..., input_dim)`` ->
    output ``(..., output_dim)``; hidden width ``hidden_dim``.
    """

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int,
                 num_hidden_layers: int) -> None:
        super().__init__()
        dims_in = [input_dim] + [hidden_dim] * (num_hidden_layers - 1)
        self.layers = nn.ModuleList(nn.Sequential(nn.Linear(i, hidden_dim), nn.GELU())
                                    for i in dims_in)
        self.fc = nn.Linear(hidden_dim, output_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: (..., input_dim) float -> (..., output_dim) float."""
        for layer in self.layers:
            x = layer(x)
        return self.fc(x)
