"""Binary masks as COCO polygons (:mod:`amg.dataset.polygons`): pycocotools decodes them back
exactly, holes are bridged into their rings, the tolerance drops tiny fragments and fills tiny
holes, and straight runs are compressed to corners."""

from __future__ import annotations

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from amg.dataset.polygons import mask_to_polygons

from .mask_cases import box_mask, random_blob

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def decode_polygons(polygons, h, w) -> np.ndarray:
    if not polygons:
        return np.zeros((h, w), bool)
    return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polygons, h, w))).astype(bool)


@pytest.mark.parametrize("seed", range(6))
def test_polygons_decode_back_exactly(seed):
    # Random blobs with islands and holes (of every size: min_area=0 keeps all of them).
    rng = np.random.default_rng(seed)
    for _ in range(20):
        h, w = (int(v) for v in rng.integers(3, 70, 2))
        m = random_blob(rng, (h, w))
        polygons = mask_to_polygons(m, min_area=0)
        assert all(len(p) >= 6 and len(p) % 2 == 0 for p in polygons)
        np.testing.assert_array_equal(decode_polygons(polygons, h, w), m)


def test_polygon_holes_are_cut_not_filled():
    m = box_mask((30, 40), 2, 2, 38, 28)
    m[6:12, 5:15] = False          # a hole
    m[15:25, 20:35] = False        # a second hole ...
    m[18:22, 24:30] = True         # ... with an island inside it
    polygons = mask_to_polygons(m)
    assert len(polygons) == 2      # outer ring with both holes bridged in, and the island
    np.testing.assert_array_equal(decode_polygons(polygons, 30, 40), m)
    # One polygon per fragment: the holes do not appear as polygons of their own (COCO would
    # union them and fill the holes).
    decoded_each = [decode_polygons([p], 30, 40) for p in polygons]
    assert not decoded_each[0][8, 8] and not decoded_each[0][16, 21]


def test_polygon_tolerance_drops_tiny_fragments_and_fills_tiny_holes():
    m = box_mask((20, 30), 3, 3, 15, 15)
    m[8, 8] = False                 # one-pixel hole: filled (0.25 px² < 2)
    m[18, 25] = True                # one-pixel fragment: dropped
    m[2:4, 20:22] = True            # 2 x 2 fragment: kept (2.25 px²)
    polygons = mask_to_polygons(m)
    expected = m.copy()
    expected[8, 8] = True
    expected[18, 25] = False
    np.testing.assert_array_equal(decode_polygons(polygons, 20, 30), expected)
    assert mask_to_polygons(m, min_area=0) != polygons
    assert mask_to_polygons(np.zeros((5, 5), bool)) == []
    assert mask_to_polygons(box_mask((5, 5), 2, 2, 3, 3)) == []  # a lone pixel: nothing left
    with pytest.raises(ValueError, match="min_area"):
        mask_to_polygons(m, min_area=-1)
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        mask_to_polygons(np.zeros((2, 2, 2)))


def test_polygon_vertices_are_corners_only():
    # A rectangle is 4 vertices (the pixel chain's straight runs are compressed), a quarter
    # pixel inside the pixel edges.
    (poly,) = mask_to_polygons(box_mask((10, 10), 2, 3, 7, 9))
    xs, ys = poly[0::2], poly[1::2]
    assert len(poly) == 8
    assert (min(xs), max(xs), min(ys), max(ys)) == (2.25, 6.75, 3.25, 8.75)
