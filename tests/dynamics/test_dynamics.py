"""cellflow_rt.dynamics in 2D against Cellpose 3.1.1.1.

Every recorded reference call (``shared/reference/2d/*/dynamics_<i>``) is replayed and must give
the recorded masks exactly, ids and dtype included (the dynamics are exact); fixtures made
with the reference (``tests/data/dynamics_make_fixtures.py``) cover the flow check off,
``interp=False``, seeds whose tie order matters, ``masks_to_flows`` / flow errors and hole filling.
"""
import json
from pathlib import Path

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from cellflow_rt import dynamics
from cellflow_rt.dynamics import _euler, _sort
from conftest import REFERENCE
from label_helpers import assert_same_labels, relabelling_problems

FIXTURES = Path(__file__).resolve().parents[1] / "data" / "dynamics_fixtures.npz"


def require_shared():
    if not REFERENCE.is_dir():
        pytest.skip(f"reference data not found at {REFERENCE}")


def reference_calls(kind):
    """(case, i) of every recorded dynamics call under reference/<kind>/."""
    if not REFERENCE.is_dir():
        return [pytest.param(None, None, marks=pytest.mark.skip(reason=f"no reference data at {REFERENCE}"))]
    calls = []
    for case in sorted(p.name for p in (REFERENCE / kind).iterdir()):
        for f in sorted((REFERENCE / kind / case).glob("dynamics_*.npz")):
            calls.append((f"{kind}/{case}", int(f.stem.split("_")[1])))
    return calls


def load_call(case, i):
    data = np.load(REFERENCE / case / f"dynamics_{i}.npz")
    kwargs = json.loads((REFERENCE / case / f"dynamics_{i}.json").read_text())
    return data["dP"], data["cellprob"], kwargs, data["masks"]


def fixtures():
    return np.load(FIXTURES)


def label_agreement(ours, ref):
    """Fraction of pixels that agree under the best one-to-one mapping of labels (by overlap).

    Background maps to background; foreground labels are matched by maximum total overlap
    (Hungarian assignment on the overlap counts). Returns (fraction, n_labels_ours, n_labels_ref).
    """
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    a = ours.ravel().astype(np.int64)
    b = ref.ravel().astype(np.int64)
    ua, ia = np.unique(a, return_inverse=True)
    ub, ib = np.unique(b, return_inverse=True)
    overlap = np.zeros((ua.size, ub.size), np.int64)
    np.add.at(overlap, (ia, ib), 1)
    fa, fb = ua > 0, ub > 0
    agree = overlap[~fa][:, ~fb].sum()  # background in both
    fg = overlap[fa][:, fb]
    if fg.size:
        rows, cols = linear_sum_assignment(fg, maximize=True)
        agree += fg[rows, cols].sum()
    return agree / a.size, int(fa.sum()), int(fb.sum())


def assert_parity(ours, ref):
    """The recorded masks exactly: same ids (the reference's label order is reproduced), same dtype."""
    assert_same_labels(ours, ref, same_ids=True)
    assert ours.dtype == ref.dtype


# ---------------------------------------------------------------------------------------------
# the recorded reference calls
@pytest.mark.parametrize("case,i", reference_calls("2d"))
def test_reference_calls_2d(case, i):
    dP, cellprob, kwargs, ref = load_call(case, i)
    assert_parity(dynamics.resize_and_compute_masks(dP, cellprob, **kwargs), ref)


def test_stitch_planes_are_2d_calls():
    # the per-plane calls of the stitching case (min_size -1) are 2D calls too
    require_shared()
    for i in (0, 11, 23):
        dP, cellprob, kwargs, ref = load_call("3d/nuclei_vol_stitch0.5", i)
        assert_parity(dynamics.resize_and_compute_masks(dP, cellprob, **kwargs), ref)


def test_same_labels_helper_accepts_relabelling_and_names_what_differs():
    ref = np.array([[0, 1, 1], [2, 2, 0], [3, 0, 0]], np.uint16)
    perm = np.array([0, 3, 1, 2], np.uint16)[ref]
    assert_same_labels(perm, ref)  # a one-to-one relabelling is the same segmentation
    assert "ids must match" in relabelling_problems(perm, ref, same_ids=True)
    shrunk = ref.copy()
    shrunk[1, 1] = 0  # mask 2 loses a pixel
    message = relabelling_problems(shrunk, ref)
    assert message.startswith("masks ours 3, reference 3; 1 of 9 pixels differ") and "ref 2 -> ours [0, 2]" in message
    merged = np.where(ref == 3, 1, ref)
    assert "masks ours 2, reference 3" in relabelling_problems(merged, ref)
    with pytest.raises(AssertionError, match="shapes differ"):
        assert_same_labels(ref[:2], ref)


def test_label_agreement_is_permutation_invariant():
    ref = np.array([[0, 1, 1], [2, 2, 0], [3, 0, 0]], np.uint16)
    perm = np.array([0, 3, 1, 2], np.uint16)[ref]
    assert label_agreement(perm, ref) == (1.0, 3, 3)
    merged = np.where(ref == 3, 1, ref)
    assert label_agreement(merged, ref)[0] == pytest.approx(8 / 9)


# ---------------------------------------------------------------------------------------------
# reference fixtures
def _stored_256():
    require_shared()
    dP, cellprob, kwargs, _ = load_call("2d/nuclei_256", 0)
    return dP, cellprob, kwargs


def test_flow_check_off():
    dP, cellprob, kwargs = _stored_256()
    ours = dynamics.resize_and_compute_masks(dP, cellprob, **dict(kwargs, flow_threshold=0.0))
    np.testing.assert_array_equal(ours, fixtures()["qc_off"])
    # None disables the check too
    ours_none = dynamics.resize_and_compute_masks(dP, cellprob, **dict(kwargs, flow_threshold=None))
    np.testing.assert_array_equal(ours_none, ours)


def test_no_interp_2d():
    dP, cellprob, kwargs = _stored_256()
    ours = dynamics.resize_and_compute_masks(dP, cellprob, **dict(kwargs, interp=False))
    np.testing.assert_array_equal(ours, fixtures()["nointerp_2d"])


def test_tied_seeds_follow_torch_order(monkeypatch):
    fx = fixtures()
    dP = fx["ties_dP_int8"].astype(np.float32) / 16
    cellprob = fx["ties_cellprob_int8"].astype(np.float32) / 16
    kwargs = dict(niter=200, cellprob_threshold=0.0, flow_threshold=0.0, interp=True)
    np.testing.assert_array_equal(dynamics.resize_and_compute_masks(dP, cellprob, **kwargs), fx["ties"])
    # a stable order would not reproduce the reference here
    monkeypatch.setattr(_sort, "torch_cpu_argsort", lambda keys: np.argsort(keys, kind="stable"))
    assert not np.array_equal(dynamics.resize_and_compute_masks(dP, cellprob, **kwargs), fx["ties"])


def test_torch_order_matches_recorded_torch_argsort():
    # torch 2.13's argsort on: keys that drive the introsort into its heapsort fallback (with ties),
    # and random keys with many ties; a stable sort differs on all three
    fx = fixtures()
    for i in range(3):
        keys, expected = fx[f"sort_keys_{i}"], fx[f"sort_torch_{i}"]
        np.testing.assert_array_equal(_sort.torch_cpu_argsort(keys), expected)
        assert not np.array_equal(np.argsort(keys, kind="stable"), expected)


def test_torch_order_is_an_argsort():
    rng = np.random.default_rng(0)
    for n in (1, 2, 16, 17, 100, 5000, 40000):
        keys = rng.integers(11, 15, n).astype(np.int32)
        order = _sort.torch_cpu_argsort(keys)
        assert np.array_equal(np.sort(order), np.arange(n))
        assert np.all(np.diff(keys[order]) >= 0)
    small = rng.integers(11, 13, 16).astype(np.int32)  # insertion sort only: stable
    np.testing.assert_array_equal(_sort.torch_cpu_argsort(small), np.argsort(small, kind="stable"))
    big = rng.integers(11, 13, 40000).astype(np.int32)  # torch's radix sort: stable
    np.testing.assert_array_equal(_sort.torch_cpu_argsort(big), np.argsort(big, kind="stable"))


def test_masks_to_flows_matches_reference():
    fx = fixtures()
    mu = dynamics.masks_to_flows(fx["flows_masks"])
    np.testing.assert_array_equal(mu, fx["flows_mu"])


def test_flow_errors_match_reference():
    dP, _, _ = _stored_256()
    fx = fixtures()
    err = dynamics.flow_errors(fx["flows_masks"], dP[:, :72, :72])
    np.testing.assert_array_equal(err, fx["flows_err"])  # NaN where an id is absent, as the reference


def test_masks_to_flows_hand_case():
    m = np.zeros((5, 5), np.uint16)
    m[1:4, 1:4] = 1
    mu = dynamics.masks_to_flows(m)
    s = 2**-0.5
    expected_y = np.array([[1, 1, 1], [0, 0, 0], [-1, -1, -1]], float) * np.array([s, 1, s])
    expected_x = expected_y.T
    np.testing.assert_allclose(mu[0, 1:4, 1:4], expected_y, atol=1e-15)
    np.testing.assert_allclose(mu[1, 1:4, 1:4], expected_x, atol=1e-15)
    assert np.all(mu[:, m == 0] == 0)
    # a single pixel has no gradient
    one = np.zeros((3, 3), np.uint16)
    one[1, 1] = 7
    assert np.all(dynamics.masks_to_flows(one) == 0)


# ---------------------------------------------------------------------------------------------
# hole filling, diameters
def test_fill_holes_ring_example():
    # errata A6: a ring labelled 2 around a mask labelled 1, plus a mask 3 -> labels {2, 3}
    m = np.zeros((9, 16), np.uint16)
    m[1:8, 1:8] = 2
    m[2:7, 2:7] = 0
    m[4, 4] = 1
    m[2:6, 10:14] = 3
    out = dynamics.fill_holes_and_remove_small_masks(m, min_size=0)
    assert set(np.unique(out)) == {0, 2, 3}
    assert np.all(out[1:8, 1:8] == 2)  # hole and the enclosed mask absorbed
    assert np.all(out[2:6, 10:14] == 3)
    assert m[4, 4] == 1  # input untouched


def test_fill_holes_min_size_counts_before_filling():
    m = np.zeros((8, 8), np.uint8)
    m[1:6, 1:6] = 4
    m[2:5, 2:5] = 0  # 16 pixels, 25 once filled
    assert dynamics.fill_holes_and_remove_small_masks(m, min_size=17).max() == 0
    out = dynamics.fill_holes_and_remove_small_masks(m, min_size=16)
    assert (out == 1).sum() == 25 and out.dtype == np.uint8


@pytest.mark.parametrize("min_size", [-1, 15])
def test_fill_holes_matches_reference(min_size):
    fx = fixtures()
    for dim in ("2d", "3d"):
        out = dynamics.fill_holes_and_remove_small_masks(fx[f"fill_{dim}_in"], min_size=min_size)
        np.testing.assert_array_equal(out, fx[f"fill_{dim}_min{min_size}"])


def test_diameters():
    m = np.zeros((10, 10), np.uint16)
    m[:2, :2] = 1  # 4 px
    m[5:, 5:] = 3  # 25 px
    md, counts = dynamics.diameters(m)
    np.testing.assert_allclose(counts, [2.0, 5.0])
    assert md == pytest.approx(3.5 / (np.pi**0.5 / 2))
    # quirk: the first unique count is dropped even when it is a mask (no background)
    full = np.ones((4, 4), np.uint16)
    full[:, 2:] = 2
    md, counts = dynamics.diameters(full)
    np.testing.assert_allclose(counts, [8**0.5])
    assert dynamics.diameters(np.zeros((5, 5), np.uint16)) == (0.0, pytest.approx(np.zeros(0)))
    big_ids = np.array([[0, 70000], [70000, 3]], np.uint32)
    np.testing.assert_allclose(dynamics.diameters(big_ids)[1], [1.0, 2**0.5])


# ---------------------------------------------------------------------------------------------
# edge cases and arithmetic details
def test_no_foreground_gives_uint16_zeros():
    dP = np.zeros((2, 20, 30), np.float32)
    cellprob = np.full((20, 30), -1.0, np.float32)
    out = dynamics.compute_masks(dP, cellprob)
    assert out.dtype == np.uint16 and out.shape == (20, 30) and out.max() == 0
    out = dynamics.resize_and_compute_masks(dP, cellprob, niter=200, cellprob_threshold=0.0, flow_threshold=0.4,
                                            interp=True, resize=[40, 50])
    assert out.dtype == np.uint16 and out.shape == (40, 50) and out.max() == 0
    # foreground without any seed (no endpoint count above 10)
    cellprob[0, :5] = 1.0
    assert dynamics.compute_masks(dP, cellprob).max() == 0


def test_niter_is_truncated():
    dP, cellprob, _ = _stored_256()
    fg = cellprob > 0
    pts = np.flatnonzero(fg)
    ends = {n: dynamics._follow_flows(np.ascontiguousarray(dP), fg, pts, n, True) for n in (3, 4)}
    assert not np.array_equal(ends[3], ends[4])
    kw = dict(cellprob_threshold=0.0, flow_threshold=0.0)
    np.testing.assert_array_equal(dynamics.compute_masks(dP, cellprob, niter=3.99, **kw),
                                  dynamics.compute_masks(dP, cellprob, niter=3, **kw))
    assert dynamics._check_niter(np.float32(294.1176452636719)) == 294


@pytest.mark.parametrize("interp", [True, False])
def test_cycle_shortcut_is_exact_2d(interp):
    dP, cellprob, _ = _stored_256()
    fg = cellprob > 0
    pts = np.flatnonzero(fg)
    F = _euler.masked_flow(np.ascontiguousarray(dP), pts)
    for niter in (200, 201):
        fast = _euler.euler_2d(F, *fg.shape, pts, niter, interp, True)
        slow = _euler.euler_2d(F, *fg.shape, pts, niter, interp, False)
        np.testing.assert_array_equal(fast, slow)


def test_many_masks_give_uint32():
    # 4x4 blocks whose pixels all step onto the block's corner: 65536 masks of 16 pixels
    L, b = 1024, 4
    yy, xx = np.mgrid[:L, :L]
    dP = np.stack([-(yy % b), -(xx % b)]).astype(np.float32) * 5
    cellprob = np.ones((L, L), np.float32)
    out = dynamics.compute_masks(dP, cellprob, niter=1, flow_threshold=0.0, interp=False, max_size_fraction=1.0)
    assert out.dtype == np.uint32 and out.max() == (L // b) ** 2
    assert dynamics.compute_masks(dP[:, :512], cellprob[:512], niter=1, flow_threshold=0.0,
                                  interp=False).dtype == np.uint16


def test_max_size_fraction_removes_big_masks():
    L = 40
    yy, xx = np.mgrid[:L, :L]
    dP = np.stack([20 - yy, 20 - xx]).astype(np.float32)  # everything flows to the centre
    cellprob = np.ones((L, L), np.float32)
    kw = dict(niter=200, flow_threshold=0.0)
    assert dynamics.compute_masks(dP, cellprob, max_size_fraction=0.4, **kw).max() == 0
    assert dynamics.compute_masks(dP, cellprob, max_size_fraction=1.0, **kw).max() == 1


def test_validation_errors():
    dP = np.zeros((2, 8, 8), np.float32)
    cellprob = np.zeros((8, 8), np.float32)
    with pytest.raises(ValueError, match="dP must have shape"):
        dynamics.compute_masks(dP[:, :4], cellprob)
    with pytest.raises(ValueError, match="do_3D"):
        dynamics.compute_masks(dP, cellprob, do_3D=True)
    with pytest.raises(ValueError, match="niter"):
        dynamics.compute_masks(dP, cellprob, niter=-1)
    with pytest.raises(ValueError, match="resize"):
        dynamics.resize_and_compute_masks(dP, cellprob, niter=200, cellprob_threshold=0, flow_threshold=0.4,
                                          interp=True, resize=[8, 8, 8])
    with pytest.raises(ValueError, match="integer"):
        dynamics.fill_holes_and_remove_small_masks(np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError, match="2D or 3D"):
        dynamics.fill_holes_and_remove_small_masks(np.zeros(4, np.uint16))
    with pytest.raises(ValueError, match="2D masks"):
        dynamics.masks_to_flows(np.zeros((2, 4, 4), np.uint16))


def test_docstring_examples():
    import doctest

    assert doctest.testmod(dynamics, optionflags=doctest.NORMALIZE_WHITESPACE).failed == 0
