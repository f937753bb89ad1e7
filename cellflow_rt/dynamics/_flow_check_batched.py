"""Flow-error quality control as Cellpose 4.2.1.1 computes it (``dynamics.flow_error``).

Cellpose 4 makes the ideal flows of all masks at once, with the arithmetic of Cellpose 3's GPU
variant (``masks_to_flows_gpu``, which it runs on the CPU too), and a new centre rule:

- centre of a mask: its mean pixel position rounded half to even, when that pixel belongs to the
  mask; otherwise the mask pixel nearest to it (squared distance, first in row-major order);
- one diffusion for the whole image, padded by one pixel: ``2 * max over masks (h + w + 2)``
  iterations of {T[centres] += 1; every mask pixel <- (sum over its 3 x 3 neighbourhood of the T of
  pixels with its own label, in the order centre, up, down, left, right, up-left, up-right,
  down-left, down-right) / 9}, all pixels updated from the same T; float64 (float32 above 4e7
  padded pixels, as the reference);
- flow = central differences of T, which here read the neighbouring masks' T too (unlike
  Cellpose 3's CPU variant), divided by 1e-60 + its norm (float64);
- error of a mask = mean over its pixels of ``sum_c (flow_c - dP_c / 5)^2``.

The per-pixel errors are computed here; the per-mask means are left to numpy (``mean`` of each
mask's pixels in row-major order, the reference's pairwise summation).

One deliberate difference: the reference sums the nine neighbours with ``torch.sum(dim=0)``, whose
order depends on the column's position in torch's vector blocks and on its thread count (within
the last 8 columns of a block of 32, or of a thread's share, it adds them as ((((n0 + n4) + n8) +
(n1 + n5)) + (n2 + n6)) + (n3 + n7)); we add them in order. T then differs in the last bit on a
few pixels (measured: 6.9e-18 at most on a 173 x 173 image); the flow errors of the test fixtures
come out identical, and a mask could only change if its error were within ~1e-16 of the threshold.
"""
# Not shared with ._flow_check.heat_flows: Cellpose 4 diffuses every mask at once with Cellpose 3's
# GPU arithmetic and a new centre rule; the grouping of pixels by label is ._flow_check's.

import numba
import numpy as np

from .._numba import NUMBA_OPTS
from ._flow_check import pixel_box

#: Above this many padded pixels the reference diffuses in float32.
FLOAT32_ABOVE = 4e7


@numba.njit(inline="always")
def _round_half_even(v):
    r = np.floor(v)
    d = v - r
    if d > 0.5 or (d == 0.5 and r % 2 != 0):
        r += 1.0
    return np.int64(r)


@numba.njit(parallel=True, **NUMBA_OPTS)
def centres_and_extents(order, starts, Lx):
    """Centre (flat index) and ``h + w + 2`` of each label's box; label k's pixels are
    ``order[starts[k - 1]:starts[k]]`` in row-major order (labels without pixels get -1, 0)."""
    nlab = starts.shape[0] - 1
    centre = np.full(nlab, -1, np.int64)
    extent = np.zeros(nlab, np.int64)
    for k in numba.prange(nlab):
        a = starts[k]
        b = starts[k + 1]
        if b == a:
            continue
        ymin, ymax, xmin, xmax = pixel_box(order, a, b, Lx)
        sum_y = 0
        sum_x = 0
        for j in range(a, b):
            sum_y += order[j] // Lx - ymin
            sum_x += order[j] % Lx - xmin
        ymean = _round_half_even(sum_y / (b - a))
        xmean = _round_half_even(sum_x / (b - a))
        best = -1
        best_d = 2**62
        for j in range(a, b):
            dy = order[j] // Lx - ymin - ymean
            dx = order[j] % Lx - xmin - xmean
            if dy == 0 and dx == 0:
                best = j
                break
            d = dx * dx + dy * dy
            if d < best_d:
                best_d = d
                best = j
        centre[k] = order[best]
        extent[k] = (ymax - ymin + 1) + (xmax - xmin + 1) + 2
    return centre, extent


@numba.njit(parallel=True, **NUMBA_OPTS)
def _neighbour_masks(masks, Ly, Lx, pixels):
    """For each mask pixel (padded flat index), a 9-bit set of its neighbours with the same label."""
    Lxp = Lx + 2
    offsets = np.array([0, -Lxp, Lxp, -1, 1, -Lxp - 1, -Lxp + 1, Lxp - 1, Lxp + 1], np.int64)
    same = np.zeros(pixels.shape[0], np.uint16)
    for j in numba.prange(pixels.shape[0]):
        p = pixels[j]
        label = masks[p]
        bits = 0
        for i in range(9):
            if masks[p + offsets[i]] == label:
                bits |= 1 << i
        same[j] = bits
    return same


@numba.njit(parallel=True, **NUMBA_OPTS)
def _diffuse(T, pixels, same, centres, niter, Lx, zero, nine):
    """``niter`` diffusion steps of T (T's dtype; ``zero`` and ``nine`` are that dtype's 0 and 9)."""
    Lxp = Lx + 2
    offsets = np.array([0, -Lxp, Lxp, -1, 1, -Lxp - 1, -Lxp + 1, Lxp - 1, Lxp + 1], np.int64)
    T_next = np.zeros_like(T)
    for _ in range(niter):
        for c in range(centres.shape[0]):
            T[centres[c]] += 1
        for j in numba.prange(pixels.shape[0]):
            p = pixels[j]
            bits = same[j]
            total = zero
            for i in range(9):
                if bits & (1 << i):
                    total += T[p + offsets[i]]
            T_next[p] = total / nine
        T, T_next = T_next, T
    return T


@numba.njit(parallel=True, **NUMBA_OPTS)
def _unit_flows(T, pixels, Lx):
    Lxp = Lx + 2
    n = pixels.shape[0]
    mu = np.empty((2, n), np.float64)
    for j in numba.prange(n):
        p = pixels[j]
        dy = np.float64(T[p + Lxp] - T[p - Lxp])
        dx = np.float64(T[p + 1] - T[p - 1])
        norm = 1e-60 + np.sqrt(dy * dy + dx * dx)
        mu[0, j] = dy / norm
        mu[1, j] = dx / norm
    return mu


def heat_flows(masks: np.ndarray, order: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Unit flows (2, Ly, Lx) float64 of 2D ``masks`` (labels 1..n, each present), zero on background."""
    Ly, Lx = masks.shape
    padded = np.zeros((Ly + 2, Lx + 2), np.int64)
    padded[1:-1, 1:-1] = masks
    padded = padded.ravel()
    pixels = np.flatnonzero(padded)
    centres, extents = centres_and_extents(order, starts, Lx)
    centres = (centres // Lx + 1) * (Lx + 2) + centres % Lx + 1
    niter = 2 * int(extents.max())
    dtype = np.float32 if padded.size > FLOAT32_ABOVE else np.float64
    T = _diffuse(np.zeros(padded.size, dtype), pixels, _neighbour_masks(padded, Ly, Lx, pixels), centres,
                 niter, Lx, dtype(0), dtype(9))
    mu = np.zeros((2, Ly + 2, Lx + 2), np.float64)
    mu.reshape(2, -1)[:, pixels] = _unit_flows(T, pixels, Lx)
    return mu[:, 1:-1, 1:-1]


@numba.njit(parallel=True, **NUMBA_OPTS)
def pixel_errors(mu, dP):
    """``sum_c (mu_c - dP_c / 5)^2`` per pixel (float64; ``dP / 5`` in float32 as the reference)."""
    n = mu.shape[1]
    err = np.empty(n, np.float64)
    five = np.float32(5.0)
    for i in numba.prange(n):
        e0 = mu[0, i] - np.float64(dP[0, i] / five)
        e1 = mu[1, i] - np.float64(dP[1, i] / five)
        err[i] = e0 * e0 + e1 * e1
    return err
