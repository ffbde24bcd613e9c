"""Exact tests of :mod:`amg.regions` (small-region clean-up): hand-drawn masks, a slow
breadth-first-search reference on random masks, and the official ``segment_anything.utils.amg``
functions (marked ``parity``)."""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest

from amg.regions import clean_small_regions, remove_small_regions

from .op_cases import SEEDS, random_masks, reference_amg

# pycocotools' decode trips a numpy-2 copy-keyword DeprecationWarning inside its C extension.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


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
    ref = reference_amg()
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
