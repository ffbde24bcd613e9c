"""Exact tests of :mod:`amg.grid`: hand-computed point grids, the formula, bad sizes, and the
official ``segment_anything.utils.amg`` functions as an oracle (marked ``parity``)."""

from __future__ import annotations

import numpy as np
import pytest

from amg.grid import build_all_layer_point_grids, build_point_grid

from .op_cases import reference_amg


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
    ref = reference_amg()
    for n in range(1, 65):
        np.testing.assert_array_equal(build_point_grid(n), ref.build_point_grid(n))
    for args in [(32, 0, 1), (32, 1, 2), (64, 3, 2), (16, 2, 1)]:
        ours, theirs = build_all_layer_point_grids(*args), ref.build_all_layer_point_grids(*args)
        assert len(ours) == len(theirs)
        for a, b in zip(ours, theirs):
            np.testing.assert_array_equal(a, b)
