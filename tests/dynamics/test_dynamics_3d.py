"""cellflow_rt.dynamics in 3D (do_3D dynamics) and 2.5D stitching, against Cellpose 3.1.1.1."""
import numpy as np
import pytest

from cellflow_rt import dynamics
from cellflow_rt.dynamics import _euler
from test_dynamics import REFERENCE, assert_parity, fixtures, label_agreement, load_call, require_shared

DO_3D_CASES = ["3d/nuclei_vol_do3D", "3d/nuclei_vol_do3D_aniso2"]
STITCH_CASE = "3d/nuclei_vol_stitch0.5"


@pytest.mark.parametrize("case", DO_3D_CASES)
def test_reference_do_3D(case):
    require_shared()
    dP, cellprob, kwargs, ref = load_call(case, 0)
    assert kwargs["do_3D"] is True
    assert_parity(dynamics.resize_and_compute_masks(dP, cellprob, **kwargs), ref)


def _stored_3d():
    require_shared()
    dP, cellprob, kwargs, _ = load_call(DO_3D_CASES[0], 0)
    return dP, cellprob, kwargs


def test_no_interp_3d():
    dP, cellprob, kwargs = _stored_3d()
    ours = dynamics.resize_and_compute_masks(dP, cellprob, **dict(kwargs, interp=False))
    np.testing.assert_array_equal(ours, fixtures()["nointerp_3d"])


@pytest.mark.parametrize("name,size", [("resize_3d_all", (30, 100, 160)), ("resize_3d_z", (20, 128, 150)),
                                       ("resize_3d_x_only", (24, 128, 150))])
def test_resize_rules_3d(name, size):
    # the reference resizes planes only if Y differs and Z only if Z differs: an X-only change is ignored
    dP, cellprob, kwargs = _stored_3d()
    ours = dynamics.resize_and_compute_masks(dP, cellprob, **dict(kwargs, resize=size))
    np.testing.assert_array_equal(ours, fixtures()[name])


@pytest.mark.parametrize("interp", [True, False])
def test_cycle_shortcut_is_exact_3d(interp):
    dP, cellprob, _ = _stored_3d()
    fg = cellprob > 0
    pts = np.flatnonzero(fg)
    F = _euler.masked_flow(np.ascontiguousarray(dP), pts)
    if interp:
        F = _euler.grid_sample_flow(F, *fg.shape)
    for niter in (200, 201):
        fast = _euler.euler_3d(interp, F, *fg.shape, pts, niter, True)
        slow = _euler.euler_3d(interp, F, *fg.shape, pts, niter, False)
        np.testing.assert_array_equal(fast, slow)


def test_empty_volume():
    dP = np.zeros((3, 4, 10, 12), np.float32)
    out = dynamics.compute_masks(dP, np.zeros((4, 10, 12), np.float32), do_3D=True)
    assert out.dtype == np.uint16 and out.shape == (4, 10, 12) and out.max() == 0


def test_3d_needs_two_voxels_per_axis_with_interp():
    dP = np.zeros((3, 1, 10, 12), np.float32)
    with pytest.raises(ValueError, match="2 voxels"):
        dynamics.compute_masks(dP, np.ones((1, 10, 12), np.float32), do_3D=True)


# ---------------------------------------------------------------------------------------------
# stitching
def test_stitch_reference_case():
    require_shared()
    n = len(list((REFERENCE / STITCH_CASE).glob("dynamics_*.npz")))
    planes = np.stack([load_call(STITCH_CASE, i)[3] for i in range(n)])
    ref = np.load(REFERENCE / STITCH_CASE / "outputs.npz")["masks"]
    stitched = dynamics.fill_holes_and_remove_small_masks(dynamics.stitch3D(planes, stitch_threshold=0.5), min_size=15)
    frac, n_ours, n_ref = label_agreement(stitched, ref)
    assert frac == 1.0 and n_ours == n_ref
    np.testing.assert_array_equal(stitched, ref)  # same ids too


@pytest.mark.parametrize("threshold", [0.25, 0.5])
def test_stitch_empty_planes_and_gaps(threshold):
    fx = fixtures()
    out = dynamics.stitch3D(fx["stitch_in"], stitch_threshold=threshold)
    np.testing.assert_array_equal(out, fx[f"stitch_{threshold}"])
    assert out.dtype == fx["stitch_in"].dtype


def test_stitch_edge_cases():
    empty = np.zeros((3, 5, 5), np.uint16)
    np.testing.assert_array_equal(dynamics.stitch3D(empty, 0.5), empty)
    one = np.zeros((1, 5, 5), np.uint16)
    one[0, 1:3, 1:3] = 4
    np.testing.assert_array_equal(dynamics.stitch3D(one, 0.5), one)
    # a list of planes works; a mask moving by one pixel keeps its id; a new one gets max + 1
    a = np.zeros((6, 6), np.uint16)
    a[1:4, 1:4] = 1
    b = np.zeros((6, 6), np.uint16)
    b[1:4, 2:5] = 1
    b[5, :] = 2
    out = dynamics.stitch3D([a, b], 0.25)
    assert set(np.unique(out[1])) == {0, 1, 2}
    # ids beyond the dtype widen instead of wrapping
    big = np.zeros((2, 2, 200), np.uint8)
    big[0, 0, :] = np.arange(1, 201)
    big[1, 1, :] = np.arange(1, 201)  # no overlaps: ids 201..400
    out = dynamics.stitch3D(big, 0.5)
    assert out.dtype == np.uint32 and out.max() == 400


def test_fill_holes_per_plane_in_3d():
    m = np.zeros((3, 7, 7), np.uint16)
    m[:, 1:6, 1:6] = 2
    m[:, 2:5, 2:5] = 0  # a tube: holes in every plane, open in Z
    out = dynamics.fill_holes_and_remove_small_masks(m, min_size=15)
    assert np.all(out[:, 1:6, 1:6] == 1)
