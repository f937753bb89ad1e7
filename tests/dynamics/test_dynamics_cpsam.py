"""Cellpose 4.2.1.1's dynamics (dynamics.cp4) against fixtures recorded with Cellpose 4 itself.

The fixtures (``tests/data/dynamics_cp4_make_fixtures.py``) hold Cellpose 4's own outputs stage by
stage; ``test_parity_cpsam.py`` replays the reference cases end to end.
"""
from pathlib import Path

import numpy as np
import pytest

from cellflow_rt.dynamics import _euler, _flow_check
from cellflow_rt.dynamics import _euler_grid2d as _euler_cp4
from cellflow_rt.dynamics import v4 as cp4

FIXTURES = np.load(Path(__file__).resolve().parents[1] / "data" / "dynamics_cp4_fixtures.npz")


def test_euler_steps_are_torch_grid_sample_bit_for_bit():
    dP = FIXTURES["euler_dP"].astype(np.float32) / 16
    fg = FIXTURES["euler_cellprob"] > 0
    Ly, Lx = fg.shape
    pts = np.flatnonzero(fg)
    grid = _euler_cp4.grid_sample_flow_2d(_euler.masked_flow(dP, pts), Ly, Lx)
    y, x = FIXTURES["euler_ends"]
    expected = y.astype(np.int64) * Lx + x
    for stop_on_cycles in (False, True):  # every step, and stopped at fixed points / cycles
        np.testing.assert_array_equal(_euler_cp4.euler_2d_grid_sample(grid, Ly, Lx, pts, 137, stop_on_cycles),
                                      expected)


def test_fma_is_one_rounding():
    # 1 + 2**-24 is not a float32: a * b + c rounded twice gives 1, once gives the next float32 up
    a = np.float32(1 + 2**-12)
    c = np.float32(-1 - 2**-11)

    import numba

    @numba.njit
    def fused(a, b, c):
        return _euler_cp4.fma32(a, b, c)

    assert fused(a, a, c) == np.float32(2**-24)
    assert np.float32(a * a) + c == 0


def test_flow_check_flows_and_errors_match_cellpose4():
    labels = FIXTURES["heat_labels"]
    mu = cp4.masks_to_flows(labels)
    # the nine-neighbour sums may differ in their last bit from torch's (see _flow_check_cp4)
    np.testing.assert_allclose(mu, FIXTURES["heat_mu"], rtol=0, atol=1e-15)
    errors = cp4.flow_errors(labels, FIXTURES["heat_dP"].astype(np.float32) / 16)
    np.testing.assert_array_equal(errors, FIXTURES["heat_errors"])


def test_flow_centre_is_the_rounded_mean_when_inside():
    # an L shape: mean (2, 0.5) rounds half to even to (2, 0), a mask pixel; a ring: its mean (1, 5)
    # is the hole, so the nearest mask pixel first in row-major order, (0, 5)
    order, starts = _flow_check.group_by_label(_l_and_ring().ravel(), 2)
    centres, extents = cp4._flow_check_batched.centres_and_extents(order, starts, 9)
    assert [divmod(int(c), 9) for c in centres] == [(2, 0), (0, 5)]
    assert list(extents) == [4 + 3 + 2, 3 + 3 + 2]


def _l_and_ring():
    m = np.zeros((5, 9), np.uint16)
    m[0:4, 0] = 1
    m[3, 0:3] = 1
    m[0:3, 4:7] = 2
    m[1, 5] = 0
    return m


@pytest.mark.parametrize("name", ["fill2d", "fill3d"])
@pytest.mark.parametrize("min_size", [-1, 5])
def test_fill_holes_matches_cellpose4(name, min_size):
    out = cp4.fill_holes_and_remove_small_masks(FIXTURES[name], min_size=min_size)
    expected = FIXTURES[f"{name}_min{min_size}"]
    assert out.dtype == expected.dtype
    np.testing.assert_array_equal(out, expected)


def test_fill_voids_3d_seeding_fills_a_pocket_open_to_the_border():
    # fill_voids scans the faces across axis 0 column by column with one "run" flag: the background
    # voxel (0, 0, 1) continues the run that ended the previous column, so it is not seeded, and its
    # other neighbours are the mask: it is filled although it touches the border
    box = np.array([[[1, 0, 1, 1], [1, 1, 0, 1], [0, 0, 0, 0], [0, 1, 1, 1]],
                    [[0, 1, 1, 1], [1, 1, 1, 1], [1, 1, 0, 1], [0, 1, 1, 0]],
                    [[0, 1, 0, 1], [1, 0, 0, 1], [0, 1, 0, 1], [0, 1, 1, 1]]], np.uint16)
    out = cp4.fill_holes_and_remove_small_masks(box, min_size=-1)
    expected = box.copy()
    expected[0, 0, 1] = 1
    np.testing.assert_array_equal(out, expected)
    # in 2D every hole and nothing else is filled, as scipy's binary_fill_holes
    from scipy.ndimage import binary_fill_holes
    plane = box[1]
    np.testing.assert_array_equal(cp4.fill_holes_and_remove_small_masks(plane, min_size=-1) > 0,
                                  binary_fill_holes(plane > 0))


@pytest.mark.parametrize("flow_threshold", [0.0, 0.4])
def test_compute_masks_with_flow_check_and_resize(flow_threshold):
    dP = FIXTURES["compute_dP"].astype(np.float32) / 16
    cellprob = FIXTURES["compute_cellprob"].astype(np.float32)
    masks = cp4.resize_and_compute_masks(dP, cellprob, niter=150, cellprob_threshold=0.0,
                                         flow_threshold=flow_threshold, min_size=15, resize=[101, 93])
    expected = FIXTURES[f"compute_flow{flow_threshold}"]
    np.testing.assert_array_equal(masks, expected)
    # the flow check renumbers what it keeps: no gaps in the ids
    assert set(np.unique(masks)) == set(range(int(masks.max()) + 1))


def test_no_foreground_gives_empty_uint16_masks():
    masks = cp4.resize_and_compute_masks(np.zeros((2, 20, 30), np.float32), np.full((20, 30), -1, np.float32),
                                         niter=200)
    assert masks.dtype == np.uint16 and masks.shape == (20, 30) and masks.max() == 0


def test_inputs_are_validated():
    with pytest.raises(ValueError, match="dP must have shape"):
        cp4.compute_masks(np.zeros((2, 5, 5), np.float32), np.zeros((6, 5), np.float32))
    with pytest.raises(ValueError, match="gaps"):
        cp4.masks_to_flows(np.array([[0, 2], [2, 2]], np.uint16))
