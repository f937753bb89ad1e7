"""Hole filling and min_size: Cellpose 3.1.1.1's scipy variant of ``fill_holes_and_remove_small_masks``.

Labels are visited in increasing order on the array as it is being rewritten, with the bounding
boxes of the input labels. A label with fewer than ``min_size`` pixels at that moment is erased;
otherwise, in each Z plane of its box, every pixel not 4-connected to the box border through
not-this-label pixels (a hole, background or another mask) becomes part of it, and the filled
region gets the next id. A lower label swallowed by an enclosing higher one thus leaves a gap in
the ids, as in the reference. This is ``binary_fill_holes`` per plane on the box, as a flood fill
from the box border.
"""
import numba
import numpy as np

from .._numba import NUMBA_OPTS


@numba.njit(**NUMBA_OPTS)
def _bounding_boxes(masks, nlab):
    Lz, Ly, Lx = masks.shape
    lo = np.full((nlab + 1, 3), 2**62, np.int64)
    hi = np.full((nlab + 1, 3), -1, np.int64)
    for z in range(Lz):
        for y in range(Ly):
            for x in range(Lx):
                k = masks[z, y, x]
                if k > 0:
                    lo[k, 0] = min(lo[k, 0], z)
                    lo[k, 1] = min(lo[k, 1], y)
                    lo[k, 2] = min(lo[k, 2], x)
                    hi[k, 0] = max(hi[k, 0], z)
                    hi[k, 1] = max(hi[k, 1], y)
                    hi[k, 2] = max(hi[k, 2], x)
    return lo, hi


@numba.njit(**NUMBA_OPTS)
def fill_holes_and_filter(masks, nlab, min_size):
    """In place on (Lz, Ly, Lx) ``masks`` (labels 1..nlab, gaps allowed)."""
    lo, hi = _bounding_boxes(masks, nlab)
    area = 0
    for k in range(1, nlab + 1):
        if hi[k, 0] >= 0:
            area = max(area, (hi[k, 1] - lo[k, 1] + 1) * (hi[k, 2] - lo[k, 2] + 1))
    outside = np.zeros(area, np.bool_)
    stack = np.empty(area, np.int64)
    new_id = 0
    for k in range(1, nlab + 1):
        if hi[k, 0] < 0:
            continue
        z0, y0, x0 = lo[k, 0], lo[k, 1], lo[k, 2]
        z1, y1, x1 = hi[k, 0] + 1, hi[k, 1] + 1, hi[k, 2] + 1
        npix = 0
        for z in range(z0, z1):
            for y in range(y0, y1):
                for x in range(x0, x1):
                    if masks[z, y, x] == k:
                        npix += 1
        if min_size > 0 and npix < min_size:
            for z in range(z0, z1):
                for y in range(y0, y1):
                    for x in range(x0, x1):
                        if masks[z, y, x] == k:
                            masks[z, y, x] = 0
            continue
        if npix == 0:
            continue
        new_id += 1
        h = y1 - y0
        w = x1 - x0
        for z in range(z0, z1):
            plane = masks[z, y0:y1, x0:x1]
            outside[: h * w] = False
            top = 0
            # seeds: not-this-label pixels on the box border
            for y in range(h):
                for x in range(w):
                    if (y == 0 or y == h - 1 or x == 0 or x == w - 1) and plane[y, x] != k:
                        outside[y * w + x] = True
                        stack[top] = y * w + x
                        top += 1
            while top > 0:
                top -= 1
                p = stack[top]
                y = p // w
                x = p % w
                if y > 0 and not outside[p - w] and plane[y - 1, x] != k:
                    outside[p - w] = True
                    stack[top] = p - w
                    top += 1
                if y < h - 1 and not outside[p + w] and plane[y + 1, x] != k:
                    outside[p + w] = True
                    stack[top] = p + w
                    top += 1
                if x > 0 and not outside[p - 1] and plane[y, x - 1] != k:
                    outside[p - 1] = True
                    stack[top] = p - 1
                    top += 1
                if x < w - 1 and not outside[p + 1] and plane[y, x + 1] != k:
                    outside[p + 1] = True
                    stack[top] = p + 1
                    top += 1
            for y in range(h):
                for x in range(w):
                    if not outside[y * w + x]:
                        plane[y, x] = new_id
    return masks
