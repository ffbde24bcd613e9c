"""Shared inputs of the pure-op tests (test_grid, test_crops, test_masks, test_rle,
test_regions): seeds, devices, the official ``segment_anything.utils.amg`` oracle, and random
masks built to hit the edge cases (an empty mask, a full mask, rectangles on noise)."""

from __future__ import annotations

import pytest
import torch

SEEDS = [0, 1, 2, 3]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def reference_amg():
    """The official ``segment_anything.utils.amg`` module (skips the test when not installed)."""
    return pytest.importorskip("segment_anything.utils.amg")


def random_masks(seed: int, n: int = 6, h: int = 13, w: int = 17) -> torch.Tensor:
    """(n, h, w) bool: noise of varying density plus rectangles; mask 0 empty, mask 1 full."""
    g = torch.Generator().manual_seed(seed)
    density = torch.rand(n, 1, 1, generator=g)
    masks = torch.rand(n, h, w, generator=g) < density * 0.3
    for i in range(n):
        y0 = int(torch.randint(0, h, (1,), generator=g))
        x0 = int(torch.randint(0, w, (1,), generator=g))
        y1 = y0 + int(torch.randint(1, max(2, h // 2), (1,), generator=g))
        x1 = x0 + int(torch.randint(1, max(2, w // 2), (1,), generator=g))
        masks[i, y0:y1, x0:x1] = True
    masks[0] = False
    if n > 1:
        masks[1] = True
    return masks
