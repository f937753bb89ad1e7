"""Euler integration on the device: the CPU path's three arithmetics, one point per thread.

The same operations as ``cellflow_rt.dynamics._euler`` in the same order and precision (see that
module for what each reproduces), with every product that feeds a sum written through
:mod:`._exact` so no FMA changes a rounding. A thread follows one foreground pixel until its
endpoint; a fixed point or a 2-cycle ends it early (exact: the rest of the trajectory is known),
and in 3D longer cycles are caught with Brent's method, as on the CPU. Each endpoint is added to the
endpoint histogram with an integer atomic (order-independent, so exact).

Points are the foreground pixels in row-major order (``_scan.compact``); endpoints are flat indices
into the (Lz,) Ly, Lx grid.
"""
import math

import numpy as np
from numba import cuda

from ._device import device_function, kernel
from ._exact import mul32, mul64


@kernel
def masked_flow_2d(dP, cellprob, threshold, F, flags):
    """Foreground flags and flow ``dP * fg / 5`` (n_pixels, 2) from (2, Ly, Lx) / (Ly, Lx) arrays
    of any strides; ``threshold`` has ``cellprob``'s dtype (numpy compares in that dtype)."""
    Ly, Lx = cellprob.shape
    five = np.float32(5.0)
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, Ly * Lx, stride):
        y = i // Lx
        x = i - y * Lx
        if cellprob[y, x] > threshold:
            flags[i] = 1
            F[i, 0] = dP[0, y, x] / five
            F[i, 1] = dP[1, y, x] / five
        else:
            flags[i] = 0
            F[i, 0] = np.float32(0.0)
            F[i, 1] = np.float32(0.0)


@kernel
def masked_flow_3d(dP, cellprob, threshold, grid_sample, F, flags):
    """3D variant: (dZ, dY, dX) / 5, or with ``grid_sample`` torch's layout (x, y, z) scaled by
    2 / (L - 1) (``dynamics._euler.grid_sample_flow``)."""
    Lz, Ly, Lx = cellprob.shape
    five = np.float32(5.0)
    if grid_sample:
        sx = np.float32(2.0 / (Lx - 1))
        sy = np.float32(2.0 / (Ly - 1))
        sz = np.float32(2.0 / (Lz - 1))
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, Lz * Ly * Lx, stride):
        z = i // (Ly * Lx)
        y = (i // Lx) % Ly
        x = i % Lx
        if cellprob[z, y, x] > threshold:
            flags[i] = 1
            fz = dP[0, z, y, x] / five
            fy = dP[1, z, y, x] / five
            fx = dP[2, z, y, x] / five
            if grid_sample:
                F[i, 0] = mul32(fx, sx)
                F[i, 1] = mul32(fy, sy)
                F[i, 2] = mul32(fz, sz)
            else:
                F[i, 0] = fz
                F[i, 1] = fy
                F[i, 2] = fx
        else:
            flags[i] = 0
            F[i, 0] = np.float32(0.0)
            F[i, 1] = np.float32(0.0)
            F[i, 2] = np.float32(0.0)


@device_function
def _bilinear_2d(F, Ly, Lx, py, px):
    """``dynamics._euler._bilinear_2d``: float64 weights, float32 corner products, float64 sum."""
    y0 = np.int32(py)
    x0 = np.int32(px)
    fy = py - np.float32(y0)
    fx = px - np.float32(x0)
    ya = min(Ly - 1, max(0, y0))
    xa = min(Lx - 1, max(0, x0))
    yb = min(Ly - 1, ya + 1)
    xb = min(Lx - 1, xa + 1)
    wy = np.float64(1.0) - np.float64(fy)
    wx = np.float64(1.0) - np.float64(fx)
    fx64 = np.float64(fx)
    a = ya * Lx + xa
    b = ya * Lx + xb
    c = yb * Lx + xa
    d = yb * Lx + xb
    out0 = (mul64(mul64(F[a, 0], wy), wx) + mul64(mul64(F[b, 0], wy), fx64)
            + mul64(np.float64(mul32(F[c, 0], fy)), wx) + np.float64(mul32(mul32(F[d, 0], fy), fx)))
    out1 = (mul64(mul64(F[a, 1], wy), wx) + mul64(mul64(F[b, 1], wy), fx64)
            + mul64(np.float64(mul32(F[c, 1], fy)), wx) + np.float64(mul32(mul32(F[d, 1], fy), fx)))
    return np.float32(out0), np.float32(out1)


@kernel
def euler_2d(F, Ly, Lx, pts, count, niter, interp, ends, hist):
    """Endpoint of each point ``pts[j]`` (j < count[0]) into ``ends[j]``; ``hist[end] += 1``."""
    n = count[0]
    zero = np.float32(0.0)
    ymax = np.float32(Ly - 1)
    xmax = np.float32(Lx - 1)
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for j in range(start, n, stride):
        p = pts[j]
        y = np.float32(p // Lx)
        x = np.float32(p % Lx)
        prev_y = np.float32(np.nan)
        prev_x = np.float32(np.nan)
        t = 0
        while t < niter:
            t += 1
            if interp:
                dy, dx = _bilinear_2d(F, Ly, Lx, y, x)
            else:
                k = np.int64(y) * Lx + np.int64(x)
                dy = F[k, 0]
                dx = F[k, 1]
            ny = min(max(y + dy, zero), ymax)
            nx = min(max(x + dx, zero), xmax)
            if ny == y and nx == x:  # fixed point
                break
            if ny == prev_y and nx == prev_x:  # 2-cycle: step t lands on (ny, nx), t + 1 on (y, x)
                if (niter - t) % 2 == 0:
                    y = ny
                    x = nx
                break
            prev_y = y
            prev_x = x
            y = ny
            x = nx
        end = np.int64(y) * Lx + np.int64(x)
        ends[j] = end
        cuda.atomic.add(hist, end, 1)


@device_function
def _trilinear_zero_pad(G, Lz, Ly, Lx, gx, gy, gz):
    """``dynamics._euler._trilinear_zero_pad`` (torch's CPU grid_sample, float32, corner order)."""
    one = np.float32(1.0)
    two = np.float32(2.0)
    ix = (mul32(gx + one, np.float32(Lx)) - one) / two
    iy = (mul32(gy + one, np.float32(Ly)) - one) / two
    iz = (mul32(gz + one, np.float32(Lz)) - one) / two
    x0 = np.int64(math.floor(ix))
    y0 = np.int64(math.floor(iy))
    z0 = np.int64(math.floor(iz))
    ax = np.float32(x0 + 1) - ix
    bx = ix - np.float32(x0)
    ay = np.float32(y0 + 1) - iy
    by = iy - np.float32(y0)
    az = np.float32(z0 + 1) - iz
    bz = iz - np.float32(z0)
    out_x = np.float32(0.0)
    out_y = np.float32(0.0)
    out_z = np.float32(0.0)
    for corner in range(8):
        cx = corner & 1
        cy = (corner >> 1) & 1
        cz = corner >> 2
        xx = x0 + cx
        yy = y0 + cy
        zz = z0 + cz
        if 0 <= xx < Lx and 0 <= yy < Ly and 0 <= zz < Lz:
            w = mul32(mul32(bx if cx else ax, by if cy else ay), bz if cz else az)
            k = (zz * Ly + yy) * Lx + xx
            out_x += mul32(G[k, 0], w)
            out_y += mul32(G[k, 1], w)
            out_z += mul32(G[k, 2], w)
    return out_x, out_y, out_z


@device_function
def _step_3d(grid_sample, F, Lz, Ly, Lx, z, y, x):
    """One 3D Euler step from (z, y, x): normalised coordinates with ``grid_sample``, else pixels."""
    if grid_sample:
        one = np.float32(1.0)
        sx, sy, sz = _trilinear_zero_pad(F, Lz, Ly, Lx, x, y, z)
        return (min(max(z + sz, -one), one), min(max(y + sy, -one), one), min(max(x + sx, -one), one))
    zero = np.float32(0.0)
    k = (np.int64(z) * Ly + np.int64(y)) * Lx + np.int64(x)
    return (min(max(z + F[k, 0], zero), np.float32(Lz - 1)), min(max(y + F[k, 1], zero), np.float32(Ly - 1)),
            min(max(x + F[k, 2], zero), np.float32(Lx - 1)))


@kernel
def euler_3d(grid_sample, F, Lz, Ly, Lx, pts, count, niter, ends, hist):
    """3D endpoints: ``dynamics._euler.euler_3d`` per thread (fixed points, 2-cycles, Brent)."""
    n = count[0]
    plane = Ly * Lx
    one = np.float32(1.0)
    two = np.float32(2.0)
    half = np.float32(0.5)
    dz = np.float32(Lz - 1)
    dy = np.float32(Ly - 1)
    dx = np.float32(Lx - 1)
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for j in range(start, n, stride):
        p = pts[j]
        iz = p // plane
        iy = (p // Lx) % Ly
        ix = p % Lx
        if grid_sample:
            z = mul32(np.float32(iz) / dz, two) - one
            y = mul32(np.float32(iy) / dy, two) - one
            x = mul32(np.float32(ix) / dx, two) - one
        else:
            z = np.float32(iz)
            y = np.float32(iy)
            x = np.float32(ix)
        pz = py = px = np.float32(np.nan)  # previous position
        sz, sy, sx = z, y, x  # Brent's saved position, its step and the current power of two
        saved_t = 0
        power = 1
        t = 0
        left = 0
        while t < niter:
            t += 1
            nz, ny, nx = _step_3d(grid_sample, F, Lz, Ly, Lx, z, y, x)
            if nz == z and ny == y and nx == x:  # fixed point
                break
            if nz == pz and ny == py and nx == px:  # 2-cycle
                if (niter - t) % 2 == 0:
                    z, y, x = nz, ny, nx
                break
            pz, py, px = z, y, x
            z, y, x = nz, ny, nx
            if z == sz and y == sy and x == sx:  # periodic from saved_t with period t - saved_t
                left = (niter - t) % (t - saved_t)
                break
            if t - saved_t == power:
                sz, sy, sx = z, y, x
                saved_t = t
                power *= 2
        for _ in range(left):
            z, y, x = _step_3d(grid_sample, F, Lz, Ly, Lx, z, y, x)
        if grid_sample:
            ez = min(max(np.int64(mul32(mul32(z + one, half), dz)), 0), Lz - 1)
            ey = min(max(np.int64(mul32(mul32(y + one, half), dy)), 0), Ly - 1)
            ex = min(max(np.int64(mul32(mul32(x + one, half), dx)), 0), Lx - 1)
        else:
            ez = np.int64(z)
            ey = np.int64(y)
            ex = np.int64(x)
        end = (ez * Ly + ey) * Lx + ex
        ends[j] = end
        cuda.atomic.add(hist, end, 1)
