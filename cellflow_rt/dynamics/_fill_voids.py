"""Hole filling, min_size and relabelling as Cellpose 4.2.1.1 does them (``fill_voids`` + ``fastremap``).

Cellpose 4's ``fill_holes_and_remove_small_masks``: remove masks under ``min_size`` pixels and
renumber; fill each mask inside its bounding box with ``fill_voids.fill`` and give it the next id;
remove small masks again (filling changes the counts) and renumber. Renumbering is fastremap's:
ids 1, 2, ... in order of first appearance in a row-major scan.

``fill_voids.fill`` floods the background from the box border and fills what it does not reach.
In 2D that is exactly ``binary_fill_holes`` (4-connected). In 3D the flood is 6-connected but its
seeds are not every border voxel: it scans each pair of opposite faces as one sequence (fill_voids
treats the box in Fortran order: faces across the last axis row by row over axes (1, 0), faces
across axis 1 over (2, 0), faces across axis 0 over (2, 1)) and seeds only the first voxel of each
run of background in that sequence, runs continuing across row ends. A border pocket whose voxels
all continue a run from the previous row, and which touches no other seeded voxel, is therefore
filled although it is open to the outside. We reproduce these seeds exactly, then flood.
"""
# Not shared with ._fill: Cellpose 4 fills holes with fill_voids (true 3D filling, its own seeding)
# and renumbers with fastremap; Cellpose 3 fills each plane with scipy and keeps the ids.

import numba
import numpy as np

from .._numba import NUMBA_OPTS
from ._fill import _bounding_boxes


@numba.njit(**NUMBA_OPTS)
def renumber(masks):
    """In place: labels 1, 2, ... in order of first appearance (row-major scan), 0 kept."""
    flat = masks.reshape(-1)
    top = 0
    for i in range(flat.size):
        top = max(top, flat[i])
    table = np.zeros(np.int64(top) + 1, np.int64)
    nxt = 0
    for i in range(flat.size):
        v = flat[i]
        if v:
            if table[v] == 0:
                nxt += 1
                table[v] = nxt
            flat[i] = table[v]
    return nxt


@numba.njit(**NUMBA_OPTS)
def remove_small(masks, min_size):
    """In place: erase labels with fewer than ``min_size`` pixels, Cellpose 4's way.

    The reference takes ``fastremap.unique(masks)`` and assumes its first entry is the background:
    when no pixel is 0, the smallest label is never removed.
    """
    flat = masks.reshape(-1)
    top = 0
    for i in range(flat.size):
        top = max(top, flat[i])
    counts = np.zeros(np.int64(top) + 1, np.int64)
    for i in range(flat.size):
        counts[flat[i]] += 1
    exempt = -1
    if counts[0] == 0:
        for k in range(1, top + 1):
            if counts[k] > 0:
                exempt = k
                break
    for i in range(flat.size):
        v = flat[i]
        if v and v != exempt and counts[v] < min_size:
            flat[i] = 0


@numba.njit(inline="always")
def _seed(box, k, z, y, x, placed, reached, stack, top):
    """fill_voids' seeding rule at one border voxel; returns (placed, top)."""
    if box[z, y, x] != k:
        if not placed and not reached[z, y, x]:
            reached[z, y, x] = True
            stack[top, 0] = z
            stack[top, 1] = y
            stack[top, 2] = x
            top += 1
        return True, top
    return False, top


@numba.njit(**NUMBA_OPTS)
def _outside(box, k, volume):
    """Background of ``box`` reached by fill_voids' flood (``volume``: the 3D rules, else 2D per plane)."""
    s0, s1, s2 = box.shape
    reached = np.zeros(box.shape, np.bool_)
    stack = np.empty((box.size, 3), np.int64)
    top = 0
    if volume:
        front = False
        back = False
        for a1 in range(s1):  # faces across the last axis
            for a0 in range(s0):
                front, top = _seed(box, k, a0, a1, 0, front, reached, stack, top)
                back, top = _seed(box, k, a0, a1, s2 - 1, back, reached, stack, top)
        front = False
        back = False
        for a2 in range(s2):  # faces across axis 1
            for a0 in range(s0):
                front, top = _seed(box, k, a0, 0, a2, front, reached, stack, top)
                back, top = _seed(box, k, a0, s1 - 1, a2, back, reached, stack, top)
        front = False
        back = False
        for a2 in range(s2):  # faces across axis 0
            for a1 in range(s1):
                front, top = _seed(box, k, 0, a1, a2, front, reached, stack, top)
                back, top = _seed(box, k, s0 - 1, a1, a2, back, reached, stack, top)
    else:  # every background pixel on the border of each plane
        for z in range(s0):
            for y in range(s1):
                for x in range(s2):
                    if (y == 0 or y == s1 - 1 or x == 0 or x == s2 - 1) and box[z, y, x] != k:
                        reached[z, y, x] = True
                        stack[top, 0] = z
                        stack[top, 1] = y
                        stack[top, 2] = x
                        top += 1
    while top > 0:
        top -= 1
        z = stack[top, 0]
        y = stack[top, 1]
        x = stack[top, 2]
        for d in range(6 if volume else 4):
            zz, yy, xx = z, y, x
            if d == 0:
                yy -= 1
            elif d == 1:
                yy += 1
            elif d == 2:
                xx -= 1
            elif d == 3:
                xx += 1
            elif d == 4:
                zz -= 1
            else:
                zz += 1
            if 0 <= zz < s0 and 0 <= yy < s1 and 0 <= xx < s2 and not reached[zz, yy, xx] and box[zz, yy, xx] != k:
                reached[zz, yy, xx] = True
                stack[top, 0] = zz
                stack[top, 1] = yy
                stack[top, 2] = xx
                top += 1
    return reached


@numba.njit(**NUMBA_OPTS)
def fill_holes(masks, volume):
    """In place on (Lz, Ly, Lx) ``masks``: each label in increasing order, its box filled and
    relabelled with the next id (``volume``: 3D boxes and fill_voids' 3D rules; else planes)."""
    nlab = 0
    for v in masks.reshape(-1):
        nlab = max(nlab, np.int64(v))
    lo, hi = _bounding_boxes(masks, nlab)
    new_id = 0
    for k in range(1, nlab + 1):
        if hi[k, 0] < 0:
            continue
        new_id += 1
        box = masks[lo[k, 0]:hi[k, 0] + 1, lo[k, 1]:hi[k, 1] + 1, lo[k, 2]:hi[k, 2] + 1]
        reached = _outside(box, k, volume)
        for z in range(box.shape[0]):
            for y in range(box.shape[1]):
                for x in range(box.shape[2]):
                    if not reached[z, y, x]:
                        box[z, y, x] = new_id
