"""Regenerate tests/data/dynamics_fixtures.npz with Cellpose 3.1.1.1 (the reference environment).

Run from the repository root with the reference's python (cellpose==3.1.1.1, torch 2.13 CPU,
numpy 2.0.2), e.g. ``/tmp/cpref/bin/python tests/data/dynamics_make_fixtures.py``. It needs
``../shared/reference``. The fixtures cover what the recorded reference calls do not: the flow
check off, ``interp=False`` (2D and 3D), 3D resize rules, seeds whose tie order matters,
``masks_to_flows`` / ``flow_error``, hole filling with gaps and nesting, and stitching with empty
planes. Inputs that are not in ``shared/`` are stored as small integers (exact in float32).
"""
from pathlib import Path

import numpy as np
import torch
from cellpose import dynamics, metrics, utils
from scipy.ndimage import gaussian_filter

HERE = Path(__file__).resolve().parent
REF = HERE.parents[1].parent / "shared" / "reference"
CPU = torch.device("cpu")


def stored(case, i=0):
    z = np.load(REF / case / f"dynamics_{i}.npz")
    return z["dP"], z["cellprob"]


def ref_masks(dP, cellprob, **kw):
    args = dict(niter=200, cellprob_threshold=0.0, flow_threshold=0.4, interp=True, min_size=15,
                max_size_fraction=0.4, resize=None, do_3D=False)
    args.update(kw)
    return dynamics.resize_and_compute_masks(dP, cellprob, device=CPU, **args)


def tie_inputs(seed=4, L=128):
    """Smoothed-noise flows whose seeds tie with overlapping regions (found by search)."""
    rng = np.random.default_rng(seed)
    dP = gaussian_filter(rng.standard_normal((2, L, L)), (0, 3, 3)) * 60
    cellprob = gaussian_filter(rng.standard_normal((L, L)), 4) * 200
    # both read back as int8 / 16
    return (np.clip(np.round(dP * 16), -127, 127).astype(np.int8),
            np.clip(np.round(cellprob), -127, 127).astype(np.int8))


def _introsort(a, less):
    """libstdc++'s std::sort (introsort) on the list ``a`` with a comparator (for the adversary)."""
    def swap(i, j):
        a[i], a[j] = a[j], a[i]

    def adjust(first, hole, length, val):
        top = child = hole
        while child < (length - 1) // 2:
            child = 2 * (child + 1)
            if less(a[first + child], a[first + child - 1]):
                child -= 1
            a[first + hole] = a[first + child]
            hole = child
        if (length & 1) == 0 and child == (length - 2) // 2:
            child = 2 * (child + 1)
            a[first + hole] = a[first + child - 1]
            hole = child - 1
        parent = (hole - 1) // 2
        while hole > top and less(a[first + parent], val):
            a[first + hole] = a[first + parent]
            hole = parent
            parent = (hole - 1) // 2
        a[first + hole] = val

    def heap_sort(first, last):
        n = last - first
        for parent in range((n - 2) // 2, -1, -1):
            adjust(first, parent, n, a[first + parent])
        while last - first > 1:
            last -= 1
            val = a[last]
            a[last] = a[first]
            adjust(first, 0, last - first, val)

    def loop(first, last, depth):
        while last - first > 16:
            if depth == 0:
                heap_sort(first, last)
                return
            depth -= 1
            x, b, c = first + 1, first + (last - first) // 2, last - 1
            if less(a[x], a[b]):
                swap(first, b if less(a[b], a[c]) else (c if less(a[x], a[c]) else x))
            else:
                swap(first, x if less(a[x], a[c]) else (c if less(a[b], a[c]) else b))
            lo, hi = first + 1, last
            while True:
                while less(a[lo], a[first]):
                    lo += 1
                hi -= 1
                while less(a[first], a[hi]):
                    hi -= 1
                if not lo < hi:
                    break
                swap(lo, hi)
                lo += 1
            loop(lo, last, depth)
            last = lo

    loop(0, len(a), 2 * (len(a).bit_length() - 1))
    for i in range(1, len(a)):  # (unguarded) insertion sort: same result as libstdc++'s final pass
        val, j = a[i], i - 1
        while j >= 0 and less(val, a[j]):
            a[j + 1] = a[j]
            j -= 1
        a[j + 1] = val


def heapsort_keys(n=1000):
    """McIlroy's quicksort adversary against the introsort: keys that exhaust its depth limit
    (heapsort runs), then the upper half made equal so that ties go through the heapsort."""
    gas, val, state = n, [n] * n, {"solid": 0, "candidate": 0}

    def less(x, y):
        if val[x] == gas and val[y] == gas:
            frozen = x if x == state["candidate"] else y
            val[frozen] = state["solid"]
            state["solid"] += 1
        if val[x] == gas:
            state["candidate"] = x
        elif val[y] == gas:
            state["candidate"] = y
        return val[x] < val[y]

    _introsort(list(range(n)), less)
    keys = np.array(val, np.int32)
    keys[keys > n // 2] = n // 2
    return keys


def fill_input():
    m = np.zeros((40, 48), np.uint16)
    m[2:12, 2:12] = 5          # ring 5 around 2 (2 swallowed, its id lost)
    m[4:10, 4:10] = 0
    m[6:8, 6:8] = 2
    m[20:23, 3:6] = 7          # small (9 px): removed at min_size 15
    m[15:30, 15:35] = 9        # mask with a background hole and a hole holding mask 11
    m[18:21, 18:21] = 0
    m[22:27, 25:31] = 11
    m[33:39, 2:46] = 12        # U shape: the notch touches the bbox border, not a hole
    m[33:37, 10:20] = 0
    m[1:4, 40:47] = 3          # diagonal-only gap (4-connectivity matters)
    m[2, 43] = 0
    vol = np.zeros((6, 30, 30), np.uint16)
    vol[1:5, 5:20, 5:20] = 4
    vol[2:4, 9:15, 9:15] = 0   # hole closed in Y/X in planes 2-3
    vol[3, 11:13, 11:13] = 1
    vol[1:3, 22:28, 22:28] = 8
    vol[4, 2:4, 25:27] = 6     # 4 voxels
    return m, vol


def stitch_input():
    rng = np.random.default_rng(7)
    planes = np.zeros((10, 40, 40), np.uint16)
    centres = rng.integers(6, 34, (6, 2))
    for z in range(10):
        if z in (0, 1, 5):     # empty planes before and after the first stitch
            continue
        lab = 0
        for (cy, cx) in centres:
            lab += 1
            if rng.random() < 0.2:
                continue       # an absent id leaves a gap
            r = rng.integers(3, 6)
            yy, xx = np.ogrid[:40, :40]
            planes[z][(yy - cy - z % 3) ** 2 + (xx - cx) ** 2 < r * r] = lab
    return planes


def main():
    out = {}
    dP, cp = stored("2d/nuclei_256")
    out["qc_off"] = ref_masks(dP, cp, flow_threshold=0.0)
    out["nointerp_2d"] = ref_masks(dP, cp, interp=False)
    # masks before QC -> flows and errors (cropped to keep the fixture small)
    raw = dynamics.compute_masks(dP, cp, niter=200, flow_threshold=0.0, device=CPU)
    crop = np.ascontiguousarray(raw[:72, :72])  # cut masks and absent ids included
    crop_dP = np.ascontiguousarray(dP[:, :72, :72])
    out["flows_masks"] = crop
    out["flows_mu"] = dynamics.masks_to_flows(crop.astype(np.int64), device=CPU)
    out["flows_err"] = metrics.flow_error(crop, crop_dP, device=CPU)[0]

    dP3, cp3 = stored("3d/nuclei_vol_do3D")
    out["nointerp_3d"] = ref_masks(dP3, cp3, interp=False, do_3D=True)
    for name, size in [("resize_3d_all", (30, 100, 160)), ("resize_3d_z", (20, 128, 150)),
                       ("resize_3d_x_only", (24, 128, 150))]:
        out[name] = ref_masks(dP3, cp3, do_3D=True, resize=size)

    dPq, cpq = tie_inputs()
    out["ties_dP_int8"], out["ties_cellprob_int8"] = dPq, cpq
    out["ties"] = ref_masks(dPq.astype(np.float32) / 16, cpq.astype(np.float32) / 16, flow_threshold=0.0)

    rng = np.random.default_rng(3)
    sort_keys = [heapsort_keys(), rng.integers(11, 14, 500).astype(np.int32),
                 rng.integers(11, 40, 5000).astype(np.int32)]
    for i, keys in enumerate(sort_keys):
        out[f"sort_keys_{i}"] = keys
        out[f"sort_torch_{i}"] = torch.from_numpy(keys).argsort().numpy()

    m2, m3 = fill_input()
    out["fill_2d_in"], out["fill_3d_in"] = m2, m3
    for ms in (-1, 15):
        out[f"fill_2d_min{ms}"] = utils.fill_holes_and_remove_small_masks(m2.copy(), min_size=ms)
        out[f"fill_3d_min{ms}"] = utils.fill_holes_and_remove_small_masks(m3.copy(), min_size=ms)

    st = stitch_input()
    out["stitch_in"] = st
    for th in (0.25, 0.5):
        out[f"stitch_{th}"] = utils.stitch3D(st.copy(), stitch_threshold=th)
    np.savez_compressed(HERE / "dynamics_fixtures.npz", **out)


if __name__ == "__main__":
    main()
