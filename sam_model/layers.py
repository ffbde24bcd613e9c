"""Small building blocks shared by the image encoders and the mask decoder."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F


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
