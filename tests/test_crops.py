"""Exact tests of :mod:`amg.crops`: crop boxes, uncropping, the crop-edge filter and edge strips,
on hand-made inputs, against slow python references on random inputs, and against the official
``segment_anything.utils.amg`` functions (marked ``parity``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from amg.crops import (
    crop_edge_strips,
    generate_crop_boxes,
    is_box_near_crop_edge,
    uncrop_boxes_xyxy,
    uncrop_masks,
    uncrop_points,
)
from amg.masks import masks_to_boxes_xyxy

from .op_cases import DEVICES, SEEDS, random_masks, reference_amg

# pycocotools' decode trips a numpy-2 copy-keyword DeprecationWarning inside its C extension.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def test_crop_boxes_100x200_one_layer_by_hand():
    # h=100, w=200, n=2: overlap = int(0.25*100*(2/2)) = 25
    # crop_w = ceil((25 + 200) / 2) = 113, crop_h = ceil((25 + 100) / 2) = 63
    # x0s = [0, 88], y0s = [0, 38]; x-outer, y-inner, clipped to the image
    boxes, layers = generate_crop_boxes((100, 200), 1, 0.25)
    assert boxes == [
        [0, 0, 200, 100],
        [0, 0, 113, 63],
        [0, 38, 113, 100],
        [88, 0, 200, 63],
        [88, 38, 200, 100],
    ]
    assert layers == [0, 1, 1, 1, 1]


def test_crop_boxes_zero_layers_and_counts():
    assert generate_crop_boxes((7, 9), 0, 0.5) == ([[0, 0, 9, 7]], [0])
    boxes, layers = generate_crop_boxes((480, 640), 2, 512 / 1500)
    assert layers == [0] + [1] * 4 + [2] * 16
    for x0, y0, x1, y1 in boxes:
        assert 0 <= x0 < x1 <= 640 and 0 <= y0 < y1 <= 480


@pytest.mark.parametrize(
    "args", [((0, 10), 1, 0.3), ((10, 10), -1, 0.3), ((10, 10), 1, 1.0), ((10, 10), 1, -0.1)]
)
def test_crop_boxes_bad_args(args):
    with pytest.raises(ValueError):
        generate_crop_boxes(*args)


@pytest.mark.parity
@pytest.mark.parametrize("im_size", [(100, 200), (480, 640), (1500, 1125), (33, 17), (1, 1)])
@pytest.mark.parametrize("n_layers", [0, 1, 2, 3])
@pytest.mark.parametrize("ratio", [0.0, 512 / 1500, 0.25, 0.7])
def test_crop_boxes_match_reference(im_size, n_layers, ratio):
    ref = reference_amg()
    assert generate_crop_boxes(im_size, n_layers, ratio) == ref.generate_crop_boxes(im_size, n_layers, ratio)


@pytest.mark.parametrize("device", DEVICES)
def test_uncrop_boxes_and_points(device):
    boxes = torch.tensor([[0, 0, 5, 6], [1, 2, 3, 4]], device=device)
    got = uncrop_boxes_xyxy(boxes, [10, 20, 30, 40])
    assert got.tolist() == [[10, 20, 15, 26], [11, 22, 13, 24]] and got.device == boxes.device
    batched = uncrop_boxes_xyxy(boxes[None].float(), [10, 20, 30, 40])
    assert batched.shape == (1, 2, 4) and batched.dtype == torch.float32
    assert batched[0].tolist() == [[10, 20, 15, 26], [11, 22, 13, 24]]
    pts = torch.tensor([[0.5, 1.5]], device=device)
    assert uncrop_points(pts, [3, 4, 9, 9]).tolist() == [[3.5, 5.5]]
    with pytest.raises(ValueError):
        uncrop_boxes_xyxy(torch.zeros(2, 3), [0, 0, 1, 1])
    with pytest.raises(ValueError):
        uncrop_points(torch.zeros(2, 3), [0, 0, 1, 1])


@pytest.mark.parametrize("device", DEVICES)
def test_uncrop_masks_by_hand(device):
    m = torch.tensor([[[True, False], [False, True]]], device=device)
    got = uncrop_masks(m, [1, 2, 3, 4], 4, 5)
    expected = torch.zeros(1, 4, 5, dtype=torch.bool)
    expected[0, 2, 1] = True
    expected[0, 3, 2] = True
    assert got.dtype == torch.bool and got.device == m.device
    assert torch.equal(got.cpu(), expected)
    assert uncrop_masks(m, [0, 0, 2, 2], 2, 2) is m
    with pytest.raises(ValueError, match="does not fit"):
        uncrop_masks(m, [4, 3, 6, 5], 4, 5)
    with pytest.raises(ValueError, match="crop_box"):
        uncrop_masks(m, [1, 1, 4, 3], 4, 5)  # crop is 2x3, masks are 2x2


def test_is_box_near_crop_edge_at_atol():
    crop, orig = [0, 0, 100, 100], [0, 0, 200, 200]
    boxes = torch.tensor(
        [
            [50, 50, 80, 60],  # x2: |80 - 100| = 20 <= atol -> near crop edge
            [50, 50, 79, 79],  # 21 from the crop edge -> not near
            [0, 0, 79, 79],  # x0/y0 near crop edge 0, but that is also the image edge
            [30, 21, 40, 50],  # y0 = 21 -> not near
            [30, 20, 40, 50],  # y0 = 20 -> near (crop edge 0 is image edge 0!) -> not flagged
        ]
    )
    assert is_box_near_crop_edge(boxes, crop, orig, atol=20.0).tolist() == [True, False, False, False, False]
    # crop in the middle of the image: its left/top edges are not image edges
    crop = [100, 100, 200, 200]
    boxes = torch.tensor([[20, 50, 60, 60], [21, 50, 60, 60], [30, 30, 99, 99], [30, 30, 80, 79]])
    assert is_box_near_crop_edge(boxes, crop, [0, 0, 200, 200]).tolist() == [True, False, False, False]
    # ... the right/bottom edges of this crop ARE image edges; with a bigger image they are not
    assert is_box_near_crop_edge(boxes, crop, [0, 0, 300, 300]).tolist() == [True, False, True, True]
    empty = is_box_near_crop_edge(torch.zeros(0, 4), crop, [0, 0, 300, 300])
    assert empty.shape == (0,) and empty.dtype == torch.bool
    with pytest.raises(ValueError):
        is_box_near_crop_edge(torch.zeros(3, 2), crop, [0, 0, 300, 300])


def slow_near_edge(boxes, crop, orig, atol):
    out = []
    for b in boxes.tolist():
        u = [b[0] + crop[0], b[1] + crop[1], b[2] + crop[0], b[3] + crop[1]]
        out.append(any(abs(u[k] - crop[k]) <= atol and not abs(u[k] - orig[k]) <= atol for k in range(4)))
    return out


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("device", DEVICES)
def test_is_box_near_crop_edge_vs_slow(seed, device):
    g = torch.Generator().manual_seed(seed)
    boxes = torch.randint(0, 120, (50, 4), generator=g)
    boxes[:, 2:] = boxes[:, :2] + torch.randint(0, 60, (50, 2), generator=g)
    for crop in ([0, 0, 200, 150], [50, 40, 170, 150], [100, 0, 200, 120]):
        got = is_box_near_crop_edge(boxes.to(device), crop, [0, 0, 200, 150], atol=10.0)
        assert got.tolist() == slow_near_edge(boxes, crop, [0, 0, 200, 150], 10.0)


def test_crop_edge_strips_by_hand():
    # a crop inside the image: 21 columns/rows at each edge (atol 20)
    assert crop_edge_strips([100, 100, 200, 200], [0, 0, 300, 300]) == [
        (1, 0, 21), (1, 80, 100), (0, 0, 21), (0, 80, 100)]
    # edges shared with the image give none
    assert crop_edge_strips([0, 0, 200, 150], [0, 0, 200, 150]) == []
    assert crop_edge_strips([100, 0, 200, 120], [0, 0, 200, 150]) == [(1, 0, 21), (0, 100, 120)]
    # right edge at 181 of a 200-wide image: a box right edge of 180 is within 20 of the
    # image edge too, so not every pixel of a strip would flag the box: no strip. At 180: strip.
    assert crop_edge_strips([0, 0, 181, 150], [0, 0, 200, 150]) == []
    assert crop_edge_strips([0, 0, 180, 150], [0, 0, 200, 150]) == [(1, 160, 180)]
    # left edge at 20 is within atol of the image edge; at 21 it is not
    assert crop_edge_strips([20, 0, 200, 150], [0, 0, 200, 150]) == []
    assert crop_edge_strips([21, 0, 200, 150], [0, 0, 200, 150]) == [(1, 0, 21)]
    assert crop_edge_strips([50, 0, 60, 150], [0, 0, 200, 150], atol=4.5) == [(1, 0, 5), (1, 6, 10)]
    with pytest.raises(ValueError, match="atol"):
        crop_edge_strips([50, 0, 60, 150], [0, 0, 200, 150], atol=-1)


@pytest.mark.parametrize("seed", SEEDS)
def test_crop_edge_strips_flag_every_mask_with_a_pixel_there(seed):
    """Any mask with a pixel in a strip has its box flagged by is_box_near_crop_edge (random
    crops of small images, so edges near the image border occur; the strips' exact widths are
    checked by hand above)."""
    rng = np.random.default_rng(seed)
    checked = 0
    for _ in range(60):
        w, h = (int(v) for v in rng.integers(20, 160, 2))
        x0, y0 = int(rng.integers(0, w - 8)), int(rng.integers(0, h - 8))
        x1, y1 = int(rng.integers(x0 + 8, w + 1)), int(rng.integers(y0 + 8, h + 1))
        crop, orig = [x0, y0, x1, y1], [0, 0, w, h]
        atol = float(rng.choice([0.0, 3.0, 7.5, 20.0]))
        strips = crop_edge_strips(crop, orig, atol)
        masks = torch.from_numpy(rng.random((40, y1 - y0, x1 - x0)) < rng.random((40, 1, 1)) * 0.02)
        boxes = masks_to_boxes_xyxy(masks)
        flagged = is_box_near_crop_edge(boxes, crop, orig, atol)
        for m, f in zip(masks, flagged.tolist()):
            in_strip = any((m[:, a:b] if axis == 1 else m[a:b, :]).any() for axis, a, b in strips)
            if in_strip:
                assert f
                checked += 1
    assert checked > 100


@pytest.mark.parity
@pytest.mark.parametrize("seed", SEEDS)
def test_crop_helpers_match_reference(seed):
    ref = reference_amg()
    g = torch.Generator().manual_seed(seed)
    boxes = torch.randint(0, 120, (40, 4), generator=g)
    boxes[:, 2:] += boxes[:, :2]
    for crop in ([0, 0, 200, 150], [50, 40, 170, 150], [13, 29, 20, 40]):
        orig = [0, 0, 200, 150]
        masks = random_masks(seed, n=3, h=crop[3] - crop[1], w=crop[2] - crop[0])
        assert torch.equal(is_box_near_crop_edge(boxes, crop, orig), ref.is_box_near_crop_edge(boxes, crop, orig))
        assert torch.equal(uncrop_boxes_xyxy(boxes, crop), ref.uncrop_boxes_xyxy(boxes, crop))
        assert torch.equal(uncrop_points(boxes[:, :2].float(), crop), ref.uncrop_points(boxes[:, :2].float(), crop))
        assert torch.equal(uncrop_masks(masks, crop, 150, 200), ref.uncrop_masks(masks, crop, 150, 200))
