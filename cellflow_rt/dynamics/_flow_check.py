"""Flow-error quality control: ideal flows of each mask (heat diffusion) vs the network's flows.

Cellpose 3.1.1.1 on CPU (``dynamics.masks_to_flows_cpu`` + ``metrics.flow_error``), per mask, in
float64:

- work in the mask's bounding box padded by one pixel, local coordinates starting at 1;
- centre: the mask pixel nearest (squared distance) to the mean pixel coordinate, first in
  row-major order on ties;
- ``2 * (h + 2 + w + 2)`` iterations of {T[centre] += 1; every mask pixel <- 1/9 * sum of T over its
  3x3 neighbourhood (updated simultaneously; pixels outside the mask hold 0)};
- flow = central differences of T, divided by 1e-60 + its norm;
- error = sum over the two axes of the mean over the mask's pixels of (flow - dP / 5)^2.

Sums over a mask's pixels run in row-major order like ``np.bincount`` (``scipy.ndimage.mean``), so
the errors are the reference's to the last bit. Masks are independent: ``prange`` over masks.
"""
import numba
import numpy as np

from .._numba import NUMBA_OPTS


@numba.njit(**NUMBA_OPTS)
def group_by_label(labels, nlab):
    """Flat pixel indices sorted by label (row-major within a label) and each label's start."""
    starts = np.zeros(nlab + 1, np.int64)  # label k occupies order[starts[k - 1]:starts[k]]
    for i in range(labels.shape[0]):
        if labels[i] > 0:
            starts[labels[i]] += 1
    for k in range(nlab):
        starts[k + 1] += starts[k]
    fill = starts[:-1].copy()
    order = np.empty(starts[-1], np.int64)
    for i in range(labels.shape[0]):
        k = labels[i]
        if k > 0:
            order[fill[k - 1]] = i
            fill[k - 1] += 1
    return order, starts


@numba.njit(inline="always")
def _mean_3x3(T, T_next, inside, ly, lx):
    """One diffusion step T -> T_next on the box's interior (row views let LLVM vectorise)."""
    ninth = 1 / 9.0
    for y in range(1, ly - 1):
        up = T[y - 1]
        mid = T[y]
        down = T[y + 1]
        out = T_next[y]
        ins = inside[y]
        for x in range(1, lx - 1):
            total = (mid[x] + up[x] + down[x] + mid[x - 1] + mid[x + 1]
                     + up[x - 1] + up[x + 1] + down[x - 1] + down[x + 1])
            out[x] = ninth * total * ins[x]


@numba.njit(inline="always")
def pixel_box(order, a, b, Lx):
    """(ymin, ymax, xmin, xmax) of the flat pixel indices ``order[a:b]`` (``b > a``) in rows of ``Lx``."""
    ymin = 2**62
    ymax = -1
    xmin = 2**62
    xmax = -1
    for j in range(a, b):
        y = order[j] // Lx
        x = order[j] % Lx
        ymin = min(ymin, y)
        ymax = max(ymax, y)
        xmin = min(xmin, x)
        xmax = max(xmax, x)
    return ymin, ymax, xmin, xmax


@numba.njit(**NUMBA_OPTS)
def _mask_flow(order, a, b, Lx):
    """Heat-diffusion unit flow (n, 2) [dY, dX] of one mask, pixels ``order[a:b]`` in that order."""
    n = b - a
    ymin, ymax, xmin, xmax = pixel_box(order, a, b, Lx)
    ly = ymax - ymin + 3
    lx = xmax - xmin + 3
    # local coordinates (int32 like the reference) and their mean
    yl = np.empty(n, np.int32)
    xl = np.empty(n, np.int32)
    sum_y = 0.0
    sum_x = 0.0
    for j in range(n):
        yl[j] = order[a + j] // Lx - ymin + 1
        xl[j] = order[a + j] % Lx - xmin + 1
        sum_y += yl[j]
        sum_x += xl[j]
    ymean = sum_y / n
    xmean = sum_x / n
    best = 0
    best_d = np.inf
    for j in range(n):
        d = (xl[j] - xmean) ** 2 + (yl[j] - ymean) ** 2
        if d < best_d:
            best_d = d
            best = j
    # Dense stencil over the padded box: pixels outside the mask stay 0 as in the reference (which
    # only ever writes mask pixels); same sum order per pixel; the product with ``inside`` (1 or 0)
    # is exact since T >= 0. The iteration count 2 * (ly + lx) is even: ping-pong half steps.
    inside = np.zeros((ly, lx), np.float64)
    for j in range(n):
        inside[yl[j], xl[j]] = 1.0
    T = np.zeros((ly, lx), np.float64)
    T_next = np.zeros((ly, lx), np.float64)
    cy = yl[best]
    cx = xl[best]
    for _ in range(ly + lx):
        T[cy, cx] += 1
        _mean_3x3(T, T_next, inside, ly, lx)
        T_next[cy, cx] += 1
        _mean_3x3(T_next, T, inside, ly, lx)
    flow = np.empty((n, 2), np.float64)
    for j in range(n):
        y = yl[j]
        x = xl[j]
        dy = T[y + 1, x] - T[y - 1, x]
        dx = T[y, x + 1] - T[y, x - 1]
        norm = 1e-60 + np.sqrt(dy * dy + dx * dx)
        flow[j, 0] = dy / norm
        flow[j, 1] = dx / norm
    return flow


@numba.njit(parallel=True, **NUMBA_OPTS)
def heat_flows(order, starts, Ly, Lx):
    """Unit flows (2, Ly*Lx) float64 of every mask; zero on background."""
    mu = np.zeros((2, Ly * Lx), np.float64)
    for k in numba.prange(starts.shape[0] - 1):
        a = starts[k]
        b = starts[k + 1]
        if b > a:
            flow = _mask_flow(order, a, b, Lx)
            for j in range(b - a):
                mu[0, order[a + j]] = flow[j, 0]
                mu[1, order[a + j]] = flow[j, 1]
    return mu


@numba.njit(parallel=True, **NUMBA_OPTS)
def flow_errors(order, starts, Lx, dP):
    """Per-label error sum_c mean_k (flow_c - dP_c / 5)^2 (NaN for an absent label)."""
    nlab = starts.shape[0] - 1
    err = np.empty(nlab, np.float64)
    five = np.float32(5.0)
    for k in numba.prange(nlab):
        a = starts[k]
        b = starts[k + 1]
        if b == a:
            err[k] = np.nan
            continue
        flow = _mask_flow(order, a, b, Lx)
        s0 = 0.0
        s1 = 0.0
        for j in range(b - a):
            i = order[a + j]
            e0 = flow[j, 0] - np.float64(dP[0, i] / five)
            e1 = flow[j, 1] - np.float64(dP[1, i] / five)
            s0 += e0 * e0
            s1 += e1 * e1
        n = np.float64(b - a)
        err[k] = s0 / n + s1 / n
    return err
