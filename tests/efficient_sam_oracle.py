"""The official EfficientSAM code (``../shared/oracles/efficient_sam``, test-only oracle) and
seeded random weights shared by it and our :class:`sam_model.EfficientSam` (test helpers)."""

from __future__ import annotations

import sys

import torch

from sam_model import EfficientSam, build_efficient_sam

from .conftest import SHARED

# (encoder_patch_embed_dim, encoder_num_heads) of the official builder per size.
ORACLE_SIZES = {"efficient_sam_vitt": (192, 3), "efficient_sam_vits": (384, 6)}


def build_oracle(name: str) -> torch.nn.Module:
    """The official model of a size with its own random init, eval mode."""
    oracles = str(SHARED / "oracles")
    if oracles not in sys.path:
        sys.path.insert(0, oracles)
    from efficient_sam.efficient_sam import build_efficient_sam as official_build
    return official_build(*ORACLE_SIZES[name]).eval()


def randomise_(module: torch.nn.Module, seed: int) -> None:
    """Fill every floating tensor of the state dict with seeded noise: 1-d ``weight``s (norm
    scales) 1 + 0.1 n, the Fourier-feature matrix n (its official N(0, 1) init, so that point
    positions matter), everything else 0.05 n (the official init leaves the position embedding
    at zero, which would make its parity trivial)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if not t.dtype.is_floating_point:
                continue
            noise = torch.randn(t.shape, generator=g)
            if name.endswith("positional_encoding_gaussian_matrix"):
                t.copy_(noise)
            elif t.ndim == 1 and name.endswith(".weight"):
                t.copy_(1.0 + 0.1 * noise)
            else:
                t.copy_(0.05 * noise)


def shape_decoder_for_grids_(module: torch.nn.Module, attention_gain: float = 3.0,
                             mask_logit_gain: float = 25.0) -> None:
    """Make random-weight masks usable by a grid generator (official or ours alike): the
    decoder's attention query/key projections times ``attention_gain`` (sharper attention, so
    masks depend on the prompt point: with plain noise, the same output token gives nearly
    the same mask for every point), and the hypernetworks' output layers times
    ``mask_logit_gain`` (logits well beyond the stability score's +-1 offset)."""
    with torch.no_grad():
        for name, p in module.mask_decoder.named_parameters():
            if (".q_proj." in name or ".k_proj." in name) and name.endswith("weight"):
                p.mul_(attention_gain)
            if name.startswith("output_hypernetworks_mlps.") and ".fc." in name:
                p.mul_(mask_logit_gain)


def random_pair(name: str, seed: int = 0) -> tuple[EfficientSam, torch.nn.Module]:
    """(ours, official) with the same seeded random weights, both in eval mode; the state dicts
    must be key-for-key compatible (strict load)."""
    oracle = build_oracle(name)
    randomise_(oracle, seed)
    ours = build_efficient_sam(name)
    ours.load_state_dict(oracle.state_dict(), strict=True)
    return ours, oracle


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|."""
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()
