"""Exact tests of :mod:`amg.rle`: uncompressed RLE by hand, through pycocotools, against slow
python references on random inputs, and against the official ``segment_anything.utils.amg``
functions (marked ``parity``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from amg.rle import area_from_rle, coco_encode_rle, mask_to_coco_rle, masks_to_rle, rle_to_mask

from .op_cases import DEVICES, SEEDS, random_masks, reference_amg

# pycocotools' decode trips a numpy-2 copy-keyword DeprecationWarning inside its C extension.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


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
    with pytest.raises(ValueError, match="uncompressed RLE"):
        rle_to_mask({"size": [3, 4], "counts": [[6], [6]]})  # not flat
    with pytest.raises(ValueError, match=">= 0"):
        rle_to_mask({"size": [3, 4], "counts": [14, -2]})
    # counts as a numpy array or a tuple decode like the list
    for counts in (np.array(RLE_3X4["counts"]), tuple(RLE_3X4["counts"])):
        np.testing.assert_array_equal(rle_to_mask({"size": [3, 4], "counts": counts}), MASK_3X4)
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
    ref = reference_amg()
    masks = random_masks(seed, n=10, h=40, w=33)
    ours, theirs = masks_to_rle(masks), ref.mask_to_rle_pytorch(masks)
    assert ours == theirs
    for r in ours:
        np.testing.assert_array_equal(rle_to_mask(r), ref.rle_to_mask(r))
        assert area_from_rle(r) == ref.area_from_rle(r)
        assert coco_encode_rle(r) == ref.coco_encode_rle(r)
