"""Euler integration of the flow field: where each foreground pixel ends up after ``niter`` steps.

Three arithmetics, each bit-identical to Cellpose 3.1.1.1 on CPU:

- 2D, ``interp=True``: the numba ``map_coordinates`` of ``dynamics.steps_interp``: edge-replicating
  bilinear interpolation at the exact position, positions in pixels (float32). Its weights mix
  float32 and float64 the way numba types the reference expression (see ``_bilinear_2d``).
- 3D, ``interp=True``: torch ``grid_sample`` (trilinear, ``align_corners=False``, zero padding), which
  the reference uses for 3D even on CPU. Positions live in normalised [-1, 1] coordinates, the flow
  is pre-scaled by 2/(L-1), every operation is float32 in the order of torch's CPU kernel
  (``grid_sampler_3d_cpu_impl``), corners accumulated tnw, tne, tsw, tse, bnw, bne, bsw, bse.
- ``interp=False`` (2D and 3D): the flow at the truncated position, no interpolation.

Every step clamps positions to the image; the endpoint is the truncated position. Each point is
independent, so the kernels run ``prange`` over points with the time loop inside. A point whose
position repeats exactly (a fixed point, or a 2-cycle around a sink, common once a pixel has
converged) has a known future, so the loop stops there and takes the position that ``niter``'s parity
selects: the same endpoint as running every step, in a fraction of the time.

Endpoints are returned as flat indices into the (Lz,) Ly, Lx grid.
"""
import numba
import numpy as np

from .._numba import NUMBA_OPTS


@numba.njit(parallel=True, **NUMBA_OPTS)
def masked_flow(dP, fg):
    """Foreground flow ``dP * fg / 5`` in float32, channels last (..., ndim) for local gathers."""
    ndim = dP.shape[0]
    n = fg.size
    src = dP.reshape(ndim, n)
    fgf = fg.reshape(n)
    out = np.zeros((n, ndim), np.float32)
    five = np.float32(5.0)
    for i in numba.prange(n):
        if fgf[i]:
            for c in range(ndim):
                out[i, c] = src[c, i] / five
    return out


@numba.njit(inline="always")
def _bilinear_2d(F, Ly, Lx, py, px):
    # Reference expression: I00*(1-y)*(1-x) + I01*(1-y)*x + I10*y*(1-x) + I11*y*x with y, x float32;
    # numba types (1 - y) as float64 and I10*y, I11*y*x as float32, summed in float64.
    y0 = np.int32(py)
    x0 = np.int32(px)
    fy = py - np.float32(y0)
    fx = px - np.float32(x0)
    ya = min(Ly - 1, max(0, y0))
    xa = min(Lx - 1, max(0, x0))
    yb = min(Ly - 1, ya + 1)
    xb = min(Lx - 1, xa + 1)
    wy = 1.0 - np.float64(fy)
    wx = 1.0 - np.float64(fx)
    a = ya * Lx + xa
    b = ya * Lx + xb
    c = yb * Lx + xa
    d = yb * Lx + xb
    out0 = np.float32(np.float64(F[a, 0]) * wy * wx + np.float64(F[b, 0]) * wy * np.float64(fx)
                      + np.float64(F[c, 0] * fy) * wx + np.float64(F[d, 0] * fy * fx))
    out1 = np.float32(np.float64(F[a, 1]) * wy * wx + np.float64(F[b, 1]) * wy * np.float64(fx)
                      + np.float64(F[c, 1] * fy) * wx + np.float64(F[d, 1] * fy * fx))
    return out0, out1


@numba.njit(parallel=True, **NUMBA_OPTS)
def euler_2d(F, Ly, Lx, pts, niter, interp, stop_on_cycles):
    """Endpoints (flat indices) of the 2D dynamics started at flat pixel indices ``pts``."""
    n = pts.shape[0]
    ends = np.empty(n, np.int64)
    zero = np.float32(0.0)
    ymax = np.float32(Ly - 1)
    xmax = np.float32(Lx - 1)
    for i in numba.prange(n):
        y = np.float32(pts[i] // Lx)
        x = np.float32(pts[i] % Lx)
        prev_y = np.float32(-1.0)
        prev_x = np.float32(-1.0)
        t = 0
        while t < niter:
            if interp:
                dy, dx = _bilinear_2d(F, Ly, Lx, y, x)
            else:
                k = np.int64(y) * Lx + np.int64(x)
                dy = F[k, 0]
                dx = F[k, 1]
            ny = min(max(y + dy, zero), ymax)
            nx = min(max(x + dx, zero), xmax)
            t += 1
            if stop_on_cycles:
                if ny == y and nx == x:
                    break
                if ny == prev_y and nx == prev_x:
                    # 2-cycle: positions alternate (ny, nx), (y, x), ...
                    if (niter - t) % 2 == 1:
                        ny = y
                        nx = x
                    y = ny
                    x = nx
                    break
            prev_y = y
            prev_x = x
            y = ny
            x = nx
        ends[i] = np.int64(y) * Lx + np.int64(x)
    return ends


@numba.njit(parallel=True, **NUMBA_OPTS)
def grid_sample_flow(F, Lz, Ly, Lx):
    """3D flow in torch's layout and units: channels (x, y, z), each scaled by 2 / (L - 1)."""
    n = F.shape[0]
    G = np.empty((n, 3), np.float32)
    sx = np.float32(2.0 / (Lx - 1))
    sy = np.float32(2.0 / (Ly - 1))
    sz = np.float32(2.0 / (Lz - 1))
    for i in numba.prange(n):
        G[i, 0] = F[i, 2] * sx
        G[i, 1] = F[i, 1] * sy
        G[i, 2] = F[i, 0] * sz
    return G


@numba.njit(inline="always")
def _trilinear_zero_pad(G, Lz, Ly, Lx, gx, gy, gz):
    one = np.float32(1.0)
    two = np.float32(2.0)
    ix = ((gx + one) * np.float32(Lx) - one) / two
    iy = ((gy + one) * np.float32(Ly) - one) / two
    iz = ((gz + one) * np.float32(Lz) - one) / two
    x0 = np.int64(np.floor(ix))
    y0 = np.int64(np.floor(iy))
    z0 = np.int64(np.floor(iz))
    fx0 = np.float32(x0)
    fy0 = np.float32(y0)
    fz0 = np.float32(z0)
    fx1 = np.float32(x0 + 1)
    fy1 = np.float32(y0 + 1)
    fz1 = np.float32(z0 + 1)
    ax = fx1 - ix
    bx = ix - fx0
    ay = fy1 - iy
    by = iy - fy0
    az = fz1 - iz
    bz = iz - fz0
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
            w = (bx if cx else ax) * (by if cy else ay) * (bz if cz else az)
            k = (zz * Ly + yy) * Lx + xx
            out_x += G[k, 0] * w
            out_y += G[k, 1] * w
            out_z += G[k, 2] * w
    return out_x, out_y, out_z


@numba.njit(parallel=True, **NUMBA_OPTS)
def euler_3d_grid_sample(G, Lz, Ly, Lx, pts, niter, stop_on_cycles):
    """Endpoints of the 3D dynamics with torch grid_sample arithmetic (``interp=True``)."""
    n = pts.shape[0]
    ends = np.empty(n, np.int64)
    one = np.float32(1.0)
    two = np.float32(2.0)
    half = np.float32(0.5)
    dx = np.float32(Lx - 1)
    dy = np.float32(Ly - 1)
    dz = np.float32(Lz - 1)
    plane = Ly * Lx
    for i in numba.prange(n):
        gz = np.float32(pts[i] // plane) / dz * two - one
        gy = np.float32((pts[i] // Lx) % Ly) / dy * two - one
        gx = np.float32(pts[i] % Lx) / dx * two - one
        prev_x = np.float32(2.0)
        prev_y = np.float32(2.0)
        prev_z = np.float32(2.0)
        t = 0
        while t < niter:
            sx, sy, sz = _trilinear_zero_pad(G, Lz, Ly, Lx, gx, gy, gz)
            nx = min(max(gx + sx, -one), one)
            ny = min(max(gy + sy, -one), one)
            nz = min(max(gz + sz, -one), one)
            t += 1
            if stop_on_cycles:
                if nx == gx and ny == gy and nz == gz:
                    break
                if nx == prev_x and ny == prev_y and nz == prev_z:
                    if (niter - t) % 2 == 1:
                        nx = gx
                        ny = gy
                        nz = gz
                    gx = nx
                    gy = ny
                    gz = nz
                    break
            prev_x = gx
            prev_y = gy
            prev_z = gz
            gx = nx
            gy = ny
            gz = nz
        z = np.int64((gz + one) * half * dz)
        y = np.int64((gy + one) * half * dy)
        x = np.int64((gx + one) * half * dx)
        ends[i] = (min(max(z, 0), Lz - 1) * Ly + min(max(y, 0), Ly - 1)) * Lx + min(max(x, 0), Lx - 1)
    return ends


@numba.njit(parallel=True, **NUMBA_OPTS)
def euler_3d_nearest(F, Lz, Ly, Lx, pts, niter, stop_on_cycles):
    """Endpoints of the 3D dynamics without interpolation (``interp=False``)."""
    n = pts.shape[0]
    ends = np.empty(n, np.int64)
    zero = np.float32(0.0)
    zmax = np.float32(Lz - 1)
    ymax = np.float32(Ly - 1)
    xmax = np.float32(Lx - 1)
    plane = Ly * Lx
    for i in numba.prange(n):
        z = np.float32(pts[i] // plane)
        y = np.float32((pts[i] // Lx) % Ly)
        x = np.float32(pts[i] % Lx)
        prev_z = np.float32(-1.0)
        prev_y = np.float32(-1.0)
        prev_x = np.float32(-1.0)
        t = 0
        while t < niter:
            k = (np.int64(z) * Ly + np.int64(y)) * Lx + np.int64(x)
            nz = min(max(z + F[k, 0], zero), zmax)
            ny = min(max(y + F[k, 1], zero), ymax)
            nx = min(max(x + F[k, 2], zero), xmax)
            t += 1
            if stop_on_cycles:
                if nz == z and ny == y and nx == x:
                    break
                if nz == prev_z and ny == prev_y and nx == prev_x:
                    if (niter - t) % 2 == 1:
                        nz = z
                        ny = y
                        nx = x
                    z = nz
                    y = ny
                    x = nx
                    break
            prev_z = z
            prev_y = y
            prev_x = x
            z = nz
            y = ny
            x = nx
        ends[i] = (np.int64(z) * Ly + np.int64(y)) * Lx + np.int64(x)
    return ends
