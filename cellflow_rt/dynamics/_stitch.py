"""2.5D stitching: Cellpose 3.1.1.1's ``utils.stitch3D`` with sparse overlap counting.

Planes are linked in order. For planes z (already in stitched ids) and z+1, the reference builds
the dense IoU matrix between every label 1..max of z+1 (rows) and 1..max of z (columns), then:
IoU below the threshold -> 0; in each column only entries equal to the column maximum survive; a
row takes the first column of its maximum as its id, and rows whose maximum is 0 get fresh ids
max+1, max+2, ... in row order. Rows include labels absent from the plane (they take fresh ids
too). Here only overlapping pairs are counted (one pass over the plane's pixels, grouped by
label), which gives the same decisions without the (n+1) x (m+1) matrices.

Empty-matrix quirk kept as is: while no pair of planes has yet been stitched, a plane whose matrix
is empty (it or the plane before has no labels) keeps its own labels and resets the running maximum
to its own maximum; afterwards such a plane is shifted by the running maximum.
"""
import numba
import numpy as np

from .._numba import NUMBA_OPTS


@numba.njit(**NUMBA_OPTS)
def _link_plane(prev, cur, max_prev, max_cur, threshold, mmax):
    """New ids (index = label of ``cur``) linking ``cur`` to ``prev``, and the new running max."""
    n = cur.shape[0]
    area_prev = np.zeros(max_prev + 1, np.int64)
    area_cur = np.zeros(max_cur + 1, np.int64)
    for i in range(n):
        area_prev[prev[i]] += 1
        area_cur[cur[i]] += 1
    # pixels of cur grouped by label (only those overlapping a label of prev)
    starts = np.zeros(max_cur + 2, np.int64)
    for i in range(n):
        if cur[i] > 0 and prev[i] > 0:
            starts[cur[i] + 1] += 1
    for a in range(max_cur + 1):
        starts[a + 1] += starts[a]
    fill = starts.copy()
    grouped = np.empty(starts[-1], np.int64)
    for i in range(n):
        if cur[i] > 0 and prev[i] > 0:
            grouped[fill[cur[i]]] = prev[i]
            fill[cur[i]] += 1
    # sparse IoU pairs (a in cur, b in prev), kept only if >= threshold
    pair_a = np.empty(starts[-1], np.int64)
    pair_b = np.empty(starts[-1], np.int64)
    pair_iou = np.empty(starts[-1], np.float64)
    npairs = 0
    count = np.zeros(max_prev + 1, np.int64)
    touched = np.empty(max_prev + 1, np.int64)
    for a in range(1, max_cur + 1):
        ntouched = 0
        for j in range(starts[a], starts[a + 1]):
            b = grouped[j]
            if count[b] == 0:
                touched[ntouched] = b
                ntouched += 1
            count[b] += 1
        for t in range(ntouched):
            b = touched[t]
            ov = count[b]
            iou = ov / (area_cur[a] + area_prev[b] - ov)
            if iou >= threshold:
                pair_a[npairs] = a
                pair_b[npairs] = b
                pair_iou[npairs] = iou
                npairs += 1
            count[b] = 0
    col_max = np.zeros(max_prev + 1, np.float64)
    for p in range(npairs):
        col_max[pair_b[p]] = max(col_max[pair_b[p]], pair_iou[p])
    # row maximum over surviving entries; ties go to the lowest column (argmax)
    row_best = np.zeros(max_cur + 1, np.float64)
    row_col = np.zeros(max_cur + 1, np.int64)
    for p in range(npairs):
        a = pair_a[p]
        b = pair_b[p]
        iou = pair_iou[p]
        if iou < col_max[b]:
            continue
        if iou > row_best[a] or (iou == row_best[a] and b < row_col[a]):
            row_best[a] = iou
            row_col[a] = b
    new_ids = np.zeros(max_cur + 1, np.int64)
    for a in range(1, max_cur + 1):
        if row_best[a] > 0:
            new_ids[a] = row_col[a]
        else:
            mmax += 1
            new_ids[a] = mmax
    return new_ids, mmax


@numba.njit(**NUMBA_OPTS)
def stitch_maps(masks, threshold):
    """Per-plane maps from input labels to stitched ids, for (Lz, Ly*Lx) ``masks``.

    Plane z's map is ``maps[offsets[z]:offsets[z + 1]]`` (index = input label). Only the previous
    plane is kept relabelled, so memory stays at one plane whatever the stack's depth.
    """
    Lz = masks.shape[0]
    offsets = np.zeros(Lz + 1, np.int64)
    for z in range(Lz):
        offsets[z + 1] = offsets[z] + np.int64(masks[z].max()) + 1
    maps = np.empty(offsets[-1], np.int64)
    maps[: offsets[1]] = np.arange(offsets[1])
    prev = masks[0].astype(np.int64)
    mmax = prev.max()
    stitched_once = False
    for z in range(Lz - 1):
        cur = masks[z + 1]
        max_cur = offsets[z + 2] - offsets[z + 1] - 1
        max_prev = prev.max()
        new_ids = maps[offsets[z + 1]: offsets[z + 2]]
        if max_cur == 0 or max_prev == 0:
            if not stitched_once:  # keeps its own labels; the running max restarts from them
                new_ids[:] = np.arange(max_cur + 1)
                mmax = max_cur
            else:
                new_ids[:] = np.arange(max_cur + 1) + mmax
                new_ids[0] = 0
                mmax += max_cur
        else:
            linked, mmax = _link_plane(prev, cur, max_prev, max_cur, threshold, mmax)
            new_ids[:] = linked
            stitched_once = True
        for i in range(cur.shape[0]):
            prev[i] = new_ids[cur[i]]
    return maps, offsets


@numba.njit(parallel=True, **NUMBA_OPTS)
def apply_maps(masks, maps, offsets, out):
    for z in numba.prange(masks.shape[0]):
        for i in range(masks.shape[1]):
            out[z, i] = maps[offsets[z] + masks[z, i]]
