"""Exact tests of :mod:`amg.masks`: the stability score and mask -> box, on hand-made inputs,
against slow python references on random inputs, and against the official
``segment_anything.utils.amg`` functions (marked ``parity``)."""

from __future__ import annotations

import math

import pytest
import torch

from amg.masks import masks_to_boxes_xyxy, stability_score

from .op_cases import DEVICES, SEEDS, random_masks, reference_amg


def random_logits(seed: int, shape=(2, 3, 9, 11)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(*shape, generator=g) * 3.0
    # put some values exactly on the thresholds used in the tests
    flat = logits.view(-1)
    flat[:: 7] = 1.0
    flat[3:: 11] = -1.0
    return logits


def slow_stability(logits: torch.Tensor, thr: float, off: float) -> torch.Tensor:
    lead = logits.shape[:-2]
    flat = logits.reshape(-1, *logits.shape[-2:]).tolist()
    hi_t = float(torch.tensor(thr + off, dtype=logits.dtype))
    lo_t = float(torch.tensor(thr - off, dtype=logits.dtype))
    out = []
    for m in flat:
        hi = sum(1 for row in m for v in row if v > hi_t)
        lo = sum(1 for row in m for v in row if v > lo_t)
        out.append(float("nan") if lo == 0 else hi / lo)
    return torch.tensor(out, dtype=torch.float32).reshape(lead)


def slow_box(mask: torch.Tensor) -> list[int]:
    h, w = mask.shape
    xs = [x for y in range(h) for x in range(w) if mask[y, x]]
    ys = [y for y in range(h) for x in range(w) if mask[y, x]]
    if not xs:
        return [0, 0, 0, 0]
    return [min(xs), min(ys), max(xs), max(ys)]


def test_stability_score_by_hand():
    logits = torch.tensor(
        [
            [2.0, 1.5, 0.5, -2.0],
            [1.0, 0.0, -0.5, -1.0],  # exactly +-1: strict '>' excludes both from the high set
            [3.0, -3.0, 0.9, -0.9],
            [1.01, -1.01, 5.0, -5.0],
        ]
    )
    # > 1: {2, 1.5, 3, 1.01, 5} = 5 ; > -1: 16 - {-2, -1, -3, -1.01, -5} = 11
    got = stability_score(logits, 0.0, 1.0)
    assert got.shape == () and got.dtype == torch.float32
    assert got.item() == (torch.tensor(5.0) / torch.tensor(11.0)).item()
    # batch of two: second map with threshold 0.5, offset 0.5 -> > 1: 5 ; > 0: {2,1.5,.5,1,3,.9,1.01,5} = 8
    batch = torch.stack([logits, logits])
    got = stability_score(batch, 0.5, 0.5)
    assert got.tolist() == [(torch.tensor(5.0) / 8).item()] * 2
    # offset 0 -> identical sets -> 1 ; nothing above the low threshold -> 0/0 = nan
    assert stability_score(logits, 0.0, 0.0).item() == 1.0
    assert math.isnan(stability_score(torch.full((2, 2), -9.0), 0.0, 1.0).item())


def test_stability_score_shapes_and_errors():
    assert stability_score(torch.zeros(0, 3, 4, 4), 0.0, 1.0).shape == (0, 3)
    with pytest.raises(ValueError):
        stability_score(torch.zeros(5), 0.0, 1.0)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("device", DEVICES)
def test_stability_score_vs_slow(seed, device):
    logits = random_logits(seed)
    got = stability_score(logits.to(device), 0.0, 1.0)
    assert got.device.type == device
    torch.testing.assert_close(got.cpu(), slow_stability(logits, 0.0, 1.0), rtol=0, atol=0, equal_nan=True)


@pytest.mark.parity
@pytest.mark.parametrize("seed", SEEDS)
def test_stability_score_matches_reference(seed):
    ref = reference_amg()
    logits = random_logits(seed, shape=(4, 3, 32, 40))
    for thr, off in [(0.0, 1.0), (0.0, 0.5), (0.3, 2.0)]:
        torch.testing.assert_close(
            stability_score(logits, thr, off), ref.calculate_stability_score(logits, thr, off), rtol=0, atol=0
        )


def test_masks_to_boxes_by_hand():
    m = torch.zeros(5, 4, 6, dtype=torch.bool)
    m[0, 2, 3] = True  # single pixel at row 2, col 3
    m[1, 1:3, 2:5] = True  # rows 1..2, cols 2..4
    m[2] = True  # full
    m[3, 0, 5] = m[3, 3, 0] = True  # two corners
    # m[4] empty
    got = masks_to_boxes_xyxy(m)
    assert got.dtype == torch.int64
    assert got.tolist() == [[3, 2, 3, 2], [2, 1, 4, 2], [0, 0, 5, 3], [0, 0, 5, 3], [0, 0, 0, 0]]
    # leading dims are kept
    assert masks_to_boxes_xyxy(m.view(5, 1, 4, 6)).shape == (5, 1, 4)
    assert masks_to_boxes_xyxy(m[1]).tolist() == [2, 1, 4, 2]


def test_masks_to_boxes_empty_batch_and_errors():
    for shape in [(0, 4, 6), (2, 0, 4, 6), (3, 0, 6)]:
        got = masks_to_boxes_xyxy(torch.zeros(shape, dtype=torch.bool))
        assert got.shape == (*shape[:-2], 4) and got.dtype == torch.int64
        assert not got.any()
    with pytest.raises(ValueError):
        masks_to_boxes_xyxy(torch.zeros(4, dtype=torch.bool))
    with pytest.raises(TypeError):
        masks_to_boxes_xyxy(torch.zeros(2, 4, 4))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("device", DEVICES)
def test_masks_to_boxes_vs_slow(seed, device):
    masks = random_masks(seed)
    got = masks_to_boxes_xyxy(masks.to(device))
    assert got.device.type == device
    assert got.tolist() == [slow_box(m) for m in masks]


@pytest.mark.parity
@pytest.mark.parametrize("seed", SEEDS)
def test_masks_to_boxes_matches_reference(seed):
    ref = reference_amg()
    masks = random_masks(seed, n=8, h=20, w=31)
    assert torch.equal(masks_to_boxes_xyxy(masks), ref.batched_mask_to_box(masks))
    assert torch.equal(masks_to_boxes_xyxy(masks.view(2, 4, 20, 31)), ref.batched_mask_to_box(masks.view(2, 4, 20, 31)))
    assert torch.equal(masks_to_boxes_xyxy(masks[:0]), ref.batched_mask_to_box(masks[:0]))
