"""Exact tests for the pure mask-generation ops: grid, crops, masks, rle, regions.

Each op is checked three ways: hand-computed values on tiny hand-made inputs, a slow obvious
python-loop reference on random inputs (several seeds), and — where installed — the official
``segment_anything.utils.amg`` functions as an oracle (marked ``parity``).
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from amg.crops import (
    crop_edge_strips,
    generate_crop_boxes,
    is_box_near_crop_edge,
    uncrop_boxes_xyxy,
    uncrop_masks,
    uncrop_points,
)
from amg.grid import build_all_layer_point_grids, build_point_grid
from amg.masks import masks_to_boxes_xyxy, stability_score
from amg.regions import clean_small_regions, remove_small_regions
from amg.rle import area_from_rle, coco_encode_rle, mask_to_coco_rle, masks_to_rle, rle_to_mask

# pycocotools' decode trips a numpy-2 copy-keyword DeprecationWarning inside its C extension.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

SEEDS = [0, 1, 2, 3]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _oracle():
    return pytest.importorskip("segment_anything.utils.amg")


# --------------------------------------------------------------------------------------------
# Random inputs and slow, obvious references
# --------------------------------------------------------------------------------------------


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


def slow_rle(mask: np.ndarray) -> dict:
    h, w = mask.shape
    counts, current, run = [], False, 0
    for x in range(w):  # column-major
        for y in range(h):
            v = bool(mask[y, x])
            if v != current:
                counts.append(run)
                current, run = v, 0
            run += 1
    counts.append(run)
    return {"size": [h, w], "counts": counts}


def slow_rle_to_mask(rle: dict) -> np.ndarray:
    h, w = rle["size"]
    out = np.zeros((h, w), dtype=bool)
    k, value = 0, False
    for c in rle["counts"]:
        for _ in range(c):
            out[k % h, k // h] = value
            k += 1
        value = not value
    return out


def slow_components(img: np.ndarray) -> list[list[tuple[int, int]]]:
    """8-connected components of the True pixels, by breadth-first search."""
    h, w = img.shape
    seen = np.zeros_like(img, dtype=bool)
    comps = []
    for y in range(h):
        for x in range(w):
            if not img[y, x] or seen[y, x]:
                continue
            comp, queue = [], deque([(y, x)])
            seen[y, x] = True
            while queue:
                cy, cx = queue.popleft()
                comp.append((cy, cx))
                for dy in (-1, 0, 1):
                    for dx in (-1, 0, 1):
                        ny, nx = cy + dy, cx + dx
                        if 0 <= ny < h and 0 <= nx < w and img[ny, nx] and not seen[ny, nx]:
                            seen[ny, nx] = True
                            queue.append((ny, nx))
            comps.append(comp)
    return comps


def slow_remove_small_regions(mask: np.ndarray, thresh: float, mode: str):
    out = mask.copy()
    if mode == "holes":
        small = [c for c in slow_components(~mask) if len(c) < thresh]
        for c in small:
            for y, x in c:
                out[y, x] = True
        return out, bool(small)
    comps = slow_components(mask)
    small = [c for c in comps if len(c) < thresh]
    if not small:
        return out, False
    if len(small) == len(comps):  # all small: keep the largest (first on ties)
        largest = max(range(len(comps)), key=lambda i: (len(comps[i]), -i))
        small = [c for i, c in enumerate(comps) if i != largest]
    for c in small:
        for y, x in c:
            out[y, x] = False
    return out, True


# --------------------------------------------------------------------------------------------
# grid
# --------------------------------------------------------------------------------------------


def test_point_grid_n2_by_hand():
    expected = np.array([[0.25, 0.25], [0.75, 0.25], [0.25, 0.75], [0.75, 0.75]])
    got = build_point_grid(2)
    assert got.dtype == np.float64 and got.shape == (4, 2)
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(build_point_grid(1), np.array([[0.5, 0.5]]))


@pytest.mark.parametrize("n", [1, 3, 7, 32])
def test_point_grid_formula_and_order(n):
    got = build_point_grid(n)
    expected = np.array([[((k % n) + 0.5) / n, ((k // n) + 0.5) / n] for k in range(n * n)])
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-15)


@pytest.mark.parametrize("n", [0, -3])
def test_point_grid_bad_n(n):
    with pytest.raises(ValueError, match="n_per_side"):
        build_point_grid(n)


def test_all_layer_grids_sizes():
    grids = build_all_layer_point_grids(32, 2, 2)
    assert [g.shape for g in grids] == [(1024, 2), (256, 2), (64, 2)]
    grids = build_all_layer_point_grids(5, 1, 2)  # int(5 / 2) = 2
    assert [g.shape for g in grids] == [(25, 2), (4, 2)]
    with pytest.raises(ValueError, match="n_per_side"):
        build_all_layer_point_grids(2, 2, 2)  # layer 2: int(2 / 4) = 0
    with pytest.raises(ValueError, match="n_layers"):
        build_all_layer_point_grids(2, -1, 2)


@pytest.mark.parity
def test_grids_match_reference():
    ref = _oracle()
    for n in range(1, 65):
        np.testing.assert_array_equal(build_point_grid(n), ref.build_point_grid(n))
    for args in [(32, 0, 1), (32, 1, 2), (64, 3, 2), (16, 2, 1)]:
        ours, theirs = build_all_layer_point_grids(*args), ref.build_all_layer_point_grids(*args)
        assert len(ours) == len(theirs)
        for a, b in zip(ours, theirs):
            np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------------------------
# crops
# --------------------------------------------------------------------------------------------


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
    ref = _oracle()
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
    ref = _oracle()
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


# --------------------------------------------------------------------------------------------
# masks: stability score, mask -> box
# --------------------------------------------------------------------------------------------


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
    ref = _oracle()
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
    ref = _oracle()
    masks = random_masks(seed, n=8, h=20, w=31)
    assert torch.equal(masks_to_boxes_xyxy(masks), ref.batched_mask_to_box(masks))
    assert torch.equal(masks_to_boxes_xyxy(masks.view(2, 4, 20, 31)), ref.batched_mask_to_box(masks.view(2, 4, 20, 31)))
    assert torch.equal(masks_to_boxes_xyxy(masks[:0]), ref.batched_mask_to_box(masks[:0]))


# --------------------------------------------------------------------------------------------
# RLE
# --------------------------------------------------------------------------------------------

MASK_3X4 = np.array(
    [
        [0, 1, 1, 0],
        [0, 1, 0, 0],
        [1, 1, 0, 1],
    ],
    dtype=bool,
)
# column-major: col0 0 0 1 | col1 1 1 1 | col2 1 0 0 | col3 0 0 1
#            -> 0 0 | 1 1 1 1 1 | 0 0 0 0 | 1  -> counts [2, 5, 4, 1]
RLE_3X4 = {"size": [3, 4], "counts": [2, 5, 4, 1]}


def test_rle_by_hand():
    masks = torch.from_numpy(np.stack([MASK_3X4, ~MASK_3X4, np.zeros((3, 4), bool), np.ones((3, 4), bool)]))
    got = masks_to_rle(masks)
    assert got == [
        RLE_3X4,
        {"size": [3, 4], "counts": [0, 2, 5, 4, 1]},  # first pixel is 1 -> leading 0
        {"size": [3, 4], "counts": [12]},
        {"size": [3, 4], "counts": [0, 12]},
    ]
    assert all(type(c) is int for r in got for c in r["counts"])
    np.testing.assert_array_equal(rle_to_mask(RLE_3X4), MASK_3X4)
    assert rle_to_mask(RLE_3X4).dtype == bool
    assert area_from_rle(RLE_3X4) == 6
    assert [area_from_rle(r) for r in got] == [6, 6, 0, 12]


def test_rle_through_pycocotools():
    coco = coco_encode_rle(RLE_3X4)
    assert isinstance(coco["counts"], str) and list(coco["size"]) == [3, 4]
    np.testing.assert_array_equal(mask_utils.decode(coco).astype(bool), MASK_3X4)
    assert area_from_rle(RLE_3X4) == int(mask_utils.area(coco))
    direct = mask_to_coco_rle(MASK_3X4)
    assert direct["counts"] == coco["counts"] and isinstance(direct["counts"], str)
    np.testing.assert_array_equal(mask_utils.decode(direct).astype(bool), MASK_3X4)


def test_rle_empty_and_errors():
    assert masks_to_rle(torch.zeros(0, 3, 4, dtype=torch.bool)) == []
    with pytest.raises(ValueError):
        masks_to_rle(torch.zeros(3, 4, dtype=torch.bool))
    with pytest.raises(TypeError):
        masks_to_rle(torch.zeros(1, 3, 4, dtype=torch.uint8))
    with pytest.raises(ValueError, match="sum"):
        rle_to_mask({"size": [3, 4], "counts": [2, 5]})
    with pytest.raises(ValueError):
        rle_to_mask({"counts": [12]})
    with pytest.raises(ValueError):
        mask_to_coco_rle(np.zeros((1, 3, 4), bool))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("device", DEVICES)
def test_rle_vs_slow_and_round_trip(seed, device):
    masks = random_masks(seed, n=7, h=9, w=14)
    got = masks_to_rle(masks.to(device))
    for m, r in zip(masks.numpy(), got):
        assert r == slow_rle(m)
        np.testing.assert_array_equal(rle_to_mask(r), m)
        np.testing.assert_array_equal(slow_rle_to_mask(r), m)
        coco = coco_encode_rle(r)
        np.testing.assert_array_equal(mask_utils.decode(coco).astype(bool), m)
        assert area_from_rle(r) == int(mask_utils.area(coco)) == int(m.sum())
        assert mask_to_coco_rle(m) == coco


@pytest.mark.parity
@pytest.mark.parametrize("seed", SEEDS)
def test_rle_matches_reference(seed):
    ref = _oracle()
    masks = random_masks(seed, n=10, h=40, w=33)
    ours, theirs = masks_to_rle(masks), ref.mask_to_rle_pytorch(masks)
    assert ours == theirs
    for r in ours:
        np.testing.assert_array_equal(rle_to_mask(r), ref.rle_to_mask(r))
        assert area_from_rle(r) == ref.area_from_rle(r)
        assert coco_encode_rle(r) == ref.coco_encode_rle(r)


# --------------------------------------------------------------------------------------------
# small regions
# --------------------------------------------------------------------------------------------

DRAWN = np.array(
    [
        list(row)
        for row in [
            "........",
            ".#####..",
            ".#####..",
            ".##.##..",  # 1-pixel hole at (3, 3)
            ".#####..",
            ".#####..",
            "........",
            ".....##.",  # 2-pixel island at (7, 5), (7, 6)
        ]
    ]
) == "#"


def test_remove_small_regions_by_hand():
    filled, changed = remove_small_regions(DRAWN, 2, "holes")
    expected = DRAWN.copy()
    expected[3, 3] = True
    assert changed and filled.dtype == bool
    np.testing.assert_array_equal(filled, expected)

    cleaned, changed = remove_small_regions(DRAWN, 3, "islands")
    expected = DRAWN.copy()
    expected[7, 5:7] = False
    assert changed
    np.testing.assert_array_equal(cleaned, expected)

    # threshold is strict '<': a 2-pixel island survives area_thresh=2, a 1-pixel hole area_thresh=1
    same, changed = remove_small_regions(DRAWN, 2, "islands")
    assert not changed and same is DRAWN
    same, changed = remove_small_regions(DRAWN, 1, "holes")
    assert not changed and same is DRAWN

    # everything small: the largest island (the 24-pixel square) is kept
    cleaned, changed = remove_small_regions(DRAWN, 100, "islands")
    assert changed
    np.testing.assert_array_equal(cleaned, expected)
    # the outer background (one 8-connected component of ~mask) has 64 - 24 - 1 - 2 = 37 pixels
    filled, _ = remove_small_regions(DRAWN, 37, "holes")
    np.testing.assert_array_equal(filled, DRAWN | (np.arange(64).reshape(8, 8) == 3 * 8 + 3))
    filled, _ = remove_small_regions(DRAWN, 38, "holes")
    assert filled.all()


def test_remove_small_regions_empty_and_errors():
    empty = np.zeros((4, 5), bool)
    assert remove_small_regions(empty, 10, "islands") == (empty, False)
    out, changed = remove_small_regions(empty, 100, "holes")  # the whole background is one hole
    assert changed and out.all()
    with pytest.raises(ValueError, match="mode"):
        remove_small_regions(DRAWN, 2, "blobs")
    with pytest.raises(ValueError):
        remove_small_regions(np.zeros((1, 4, 5), bool), 2, "holes")


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("mode", ["holes", "islands"])
@pytest.mark.parametrize("thresh", [1, 3, 8, 1000])
def test_remove_small_regions_vs_slow(seed, mode, thresh):
    for m in random_masks(seed, n=5, h=12, w=15).numpy():
        got, changed = remove_small_regions(m, thresh, mode)
        exp, exp_changed = slow_remove_small_regions(m, thresh, mode)
        assert changed == exp_changed
        np.testing.assert_array_equal(got, exp)


@pytest.mark.parity
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("mode", ["holes", "islands"])
def test_remove_small_regions_matches_reference(seed, mode):
    ref = _oracle()
    for m in random_masks(seed, n=6, h=30, w=25).numpy():
        for thresh in (1, 4, 20, 10_000):
            got, changed = remove_small_regions(m, thresh, mode)
            exp, exp_changed = ref.remove_small_regions(m, thresh, mode)
            assert changed == exp_changed
            np.testing.assert_array_equal(got, exp)


def _placed(window, y0, x0, shape):
    full = np.zeros(shape, dtype=bool)
    full[y0:y0 + window.shape[0], x0:x0 + window.shape[1]] = window
    return full


@pytest.mark.parametrize("seed", range(6))
def test_clean_small_regions_on_the_box_equals_the_whole_image(seed):
    """Holes then islands on the mask's box plus a one-pixel ring equals the slow whole-image
    clean-up, for masks anywhere: inside, touching one, two (adjacent or opposite) or all
    borders, with holes open to the outside and outsides smaller than the threshold."""
    rng = np.random.default_rng(seed)
    for it in range(150):
        h, w = (int(v) for v in rng.integers(3, 16, 2))
        y0, x0 = int(rng.integers(0, h)), int(rng.integers(0, w))
        y1, x1 = int(rng.integers(y0, h)) + 1, int(rng.integers(x0, w)) + 1
        if it % 5 == 0:
            y0, y1 = 0, h  # touches top and bottom
        m = np.zeros((h, w), dtype=bool)
        m[y0:y1, x0:x1] = rng.random((y1 - y0, x1 - x0)) < rng.uniform(0.3, 0.95)
        thresh = int(rng.integers(1, 25))
        expected, ch1 = slow_remove_small_regions(m, thresh, "holes")
        expected, ch2 = slow_remove_small_regions(expected, thresh, "islands")
        window, wy, wx, changed = clean_small_regions(m, thresh)
        np.testing.assert_array_equal(_placed(window, wy, wx, m.shape), expected)
        assert changed == (ch1 or ch2)


def test_clean_small_regions_by_hand():
    # a ring-shaped mask in a 6 x 7 image: its 1-pixel hole is filled, the outside (large)
    # is not; the window is the box plus one pixel on each side
    m = np.zeros((6, 7), dtype=bool)
    m[1:4, 2:5] = True
    m[2, 3] = False
    window, y0, x0, changed = clean_small_regions(m, 2)
    assert changed and (y0, x0) == (0, 1) and window.shape == (5, 5)
    expected = np.zeros((6, 7), dtype=bool)
    expected[1:4, 2:5] = True
    np.testing.assert_array_equal(_placed(window, y0, x0, m.shape), expected)
    # a mask covering all but the last column of a 4 x 4 image: the outside (4 pixels) is a
    # small hole of the whole image and is filled (the whole-image fallback)
    m = np.zeros((4, 4), dtype=bool)
    m[:, :3] = True
    window, y0, x0, changed = clean_small_regions(m, 5)
    assert changed
    np.testing.assert_array_equal(_placed(window, y0, x0, m.shape), np.ones((4, 4), dtype=bool))
    window, y0, x0, changed = clean_small_regions(m, 4)  # 4 pixels is not < 4: unchanged
    assert not changed
    np.testing.assert_array_equal(_placed(window, y0, x0, m.shape), m)
    # nothing small: unchanged
    window, y0, x0, changed = clean_small_regions(expected, 1)
    assert not changed
    np.testing.assert_array_equal(_placed(window, y0, x0, expected.shape), expected)
    with pytest.raises(ValueError, match=r"mask must have shape \(H, W\)"):
        clean_small_regions(np.zeros((2, 2, 2), dtype=bool), 1)
