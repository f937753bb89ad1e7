"""Flow-error QC on the device: every mask's heat-diffusion flow and its error, one block per mask.

The CPU path's arithmetic (``dynamics._flow_check``, Cellpose 3.1.1.1's ``masks_to_flows_cpu`` +
``flow_error``), not Cellpose's GPU variant (which diffuses all masks together for the largest
mask's iteration count and averages in another order, so its errors differ in the last bits):

1. :func:`mask_stats` (one thread per pixel, integer atomics, exact): each label's bounding box,
   pixel count and coordinate sums.
2. :func:`mask_errors` (one block per mask, boxes padded by one pixel in a scratch area of the
   global memory): the centre is the mask pixel nearest its mean coordinate (ties: first in
   row-major order, a lexicographic minimum, so the reduction order does not matter); then
   ``2 * (h + w + 4)`` diffusion half-steps, one ``syncthreads`` each, a thread per box column
   sliding a 3x3 window down it with the CPU's summation order; the source +1 at the centre is
   added as the centre is read. Then the normalised gradient and the squared errors per pixel in
   parallel, summed in row-major order by one thread (the CPU's order: no tree reduction, so the
   error is the CPU's to the last bit).

Scratch per mask: two float64 planes and a byte plane of its padded box (offsets from a prefix sum
of the box areas), so memory is about 17 bytes per box pixel (box areas sum to about twice the
foreground). Boxes live in global memory and stay in L1/L2 while their block runs; shared memory
would bound the box size, and one block per mask already keeps every multiprocessor busy.
"""
import math

import numpy as np
from numba import cuda

from ._device import MASK_THREADS, device_function, kernel
from ._exact import mul64


@kernel
def mask_stats(masks, lo_y, hi_y, lo_x, hi_x, npix, sum_y, sum_x):
    """Per label k (arrays indexed by k): box, pixel count, sums of Y and X (image coordinates).
    ``lo_*`` start at a large value, ``hi_*`` at -1, the rest at 0."""
    Ly, Lx = masks.shape
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, Ly * Lx, stride):
        y = i // Lx
        x = i - y * Lx
        k = masks[y, x]
        if k > 0:
            cuda.atomic.min(lo_y, k, y)
            cuda.atomic.max(hi_y, k, y)
            cuda.atomic.min(lo_x, k, x)
            cuda.atomic.max(hi_x, k, x)
            cuda.atomic.add(npix, k, 1)
            cuda.atomic.add(sum_y, k, y)
            cuda.atomic.add(sum_x, k, x)


@kernel
def box_areas(lo_y, hi_y, lo_x, hi_x, n_labels, areas):
    """Padded box area of labels 1..n_labels into ``areas[k - 1]`` (0 for an absent label)."""
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for k in range(start + 1, n_labels + 1, stride):
        if hi_y[k] < 0:
            areas[k - 1] = 0
        else:
            areas[k - 1] = (hi_y[k] - lo_y[k] + 3) * (hi_x[k] - lo_x[k] + 3)


@device_function
def _read(src, off, lx, r, c, cy, cx):
    """T[r, c] of the box, with the centre's +1 of this half-step."""
    v = src[off + r * lx + c]
    if r == cy and c == cx:
        v += np.float64(1.0)
    return v


@device_function
def _half_step(src, dst, inside, off, ly, lx, cy, cx):
    """dst = 1/9 * 3x3 sum of (src + centre) on mask pixels, 0 elsewhere; box interior only."""
    ninth = np.float64(1.0 / 9.0)
    for c in range(1 + cuda.threadIdx.x, lx - 1, cuda.blockDim.x):
        ul = _read(src, off, lx, 0, c - 1, cy, cx)
        uc = _read(src, off, lx, 0, c, cy, cx)
        ur = _read(src, off, lx, 0, c + 1, cy, cx)
        ml = _read(src, off, lx, 1, c - 1, cy, cx)
        mc = _read(src, off, lx, 1, c, cy, cx)
        mr = _read(src, off, lx, 1, c + 1, cy, cx)
        for r in range(1, ly - 1):
            dl = _read(src, off, lx, r + 1, c - 1, cy, cx)
            dc = _read(src, off, lx, r + 1, c, cy, cx)
            dr = _read(src, off, lx, r + 1, c + 1, cy, cx)
            if inside[off + r * lx + c] != 0:
                total = mc + uc + dc + ml + mr + ul + ur + dl + dr
                dst[off + r * lx + c] = mul64(ninth, total)
            else:
                dst[off + r * lx + c] = np.float64(0.0)
            ul, uc, ur = ml, mc, mr
            ml, mc, mr = dl, dc, dr


@device_function
def _squared_errors(T, E, inside, off, ly, lx, dP, channel, y0, x0):
    """E = (unit flow - dP / 5)^2 of one channel (0 = Y, 1 = X) on the mask's pixels."""
    five = np.float32(5.0)
    for p in range(cuda.threadIdx.x, ly * lx, cuda.blockDim.x):
        if inside[off + p] != 0:
            dy = T[off + p + lx] - T[off + p - lx]
            dx = T[off + p + 1] - T[off + p - 1]
            norm = np.float64(1e-60) + math.sqrt(mul64(dy, dy) + mul64(dx, dx))
            flow = (dy if channel == 0 else dx) / norm
            r = p // lx
            e = flow - np.float64(dP[channel, y0 + r, x0 + p - r * lx] / five)
            E[off + p] = mul64(e, e)


@device_function
def _ordered_sum(E, inside, off, area):
    s = np.float64(0.0)
    for p in range(area):
        if inside[off + p] != 0:
            s += E[off + p]
    return s


@kernel
def mask_errors(masks, dP, n_labels, lo_y, hi_y, lo_x, hi_x, npix, sum_y, sum_x, offsets, T0, T1, inside, err):
    """Flow error of labels 1..n_labels into ``err[k - 1]`` (NaN for an absent label); one block
    per label (grid-stride over labels)."""
    Ly, Lx = masks.shape
    tid = cuda.threadIdx.x
    best_d = cuda.shared.array(MASK_THREADS, np.float64)
    best_p = cuda.shared.array(MASK_THREADS, np.int64)
    centre = cuda.shared.array(1, np.int64)
    for k in range(cuda.blockIdx.x + 1, n_labels + 1, cuda.gridDim.x):
        n = npix[k]
        if n == 0:
            if tid == 0:
                err[k - 1] = np.nan
            continue
        y0 = lo_y[k] - 1  # image coordinates of the padded box's corner
        x0 = lo_x[k] - 1
        ly = hi_y[k] - lo_y[k] + 3
        lx = hi_x[k] - lo_x[k] + 3
        off = offsets[k - 1]
        # local coordinates start at 1 on the mask's box: sums of (y - y0), exact in float64
        ymean = np.float64(sum_y[k] - n * y0) / np.float64(n)
        xmean = np.float64(sum_x[k] - n * x0) / np.float64(n)
        bd = np.inf
        bp = np.int64(-1)
        for p in range(tid, ly * lx, cuda.blockDim.x):
            r = p // lx
            c = p - r * lx
            y = y0 + r
            x = x0 + c
            mine = 0 <= y < Ly and 0 <= x < Lx and masks[y, x] == k
            inside[off + p] = 1 if mine else 0
            T0[off + p] = np.float64(0.0)
            T1[off + p] = np.float64(0.0)
            if mine:
                a = np.float64(c) - xmean
                b = np.float64(r) - ymean
                d = mul64(a, a) + mul64(b, b)
                if d < bd:
                    bd = d
                    bp = p
        best_d[tid] = bd
        best_p[tid] = bp
        cuda.syncthreads()
        if tid == 0:
            cd = best_d[0]
            cp = best_p[0]
            for t in range(1, cuda.blockDim.x):
                if best_p[t] >= 0 and (best_d[t] < cd or (best_d[t] == cd and (cp < 0 or best_p[t] < cp))):
                    cd = best_d[t]
                    cp = best_p[t]
            centre[0] = cp
        cuda.syncthreads()
        cy = centre[0] // lx
        cx = centre[0] - cy * lx
        for _ in range(ly + lx):
            _half_step(T0, T1, inside, off, ly, lx, cy, cx)
            cuda.syncthreads()
            _half_step(T1, T0, inside, off, ly, lx, cy, cx)
            cuda.syncthreads()
        _squared_errors(T0, T1, inside, off, ly, lx, dP, 0, y0, x0)
        cuda.syncthreads()
        if tid == 0:
            best_d[0] = _ordered_sum(T1, inside, off, ly * lx)
        cuda.syncthreads()
        _squared_errors(T0, T1, inside, off, ly, lx, dP, 1, y0, x0)
        cuda.syncthreads()
        if tid == 0:
            nf = np.float64(n)
            err[k - 1] = best_d[0] / nf + _ordered_sum(T1, inside, off, ly * lx) / nf
        cuda.syncthreads()


@kernel
def drop_bad_masks(masks, err, threshold, max_kept):
    """Labels whose error exceeds ``threshold`` set to 0; ``max_kept[0]`` = largest kept label."""
    Ly, Lx = masks.shape
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, Ly * Lx, stride):
        y = i // Lx
        x = i - y * Lx
        k = masks[y, x]
        if k > 0:
            if err[k - 1] > threshold:
                masks[y, x] = 0
            else:
                cuda.atomic.max(max_kept, 0, k)
