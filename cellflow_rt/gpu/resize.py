"""Bilinear resize of device arrays with OpenCV's INTER_LINEAR arithmetic (the CPU's :mod:`~cellflow_rt.resize`).

The taps (first source row/column and float32 weight of each output row/column) come from the
CPU module's :func:`~cellflow_rt.resize.bilinear_taps`, so both sample at the same positions; the
kernels then do the CPU kernel's float32 products and sums one rounding at a time
(:mod:`._exact`), so their outputs equal the CPU's bit for bit. Two layouts: channel-last images
(Y, X, C), as the normalised image arrives, and planar outputs (C, Y, X), as the network's come.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
from numba import cuda

from ..resize import bilinear_taps
from ._exact import add32, mul32

#: Threads per block (x = output column, so that neighbouring threads write neighbouring pixels).
BLOCK = (32, 8)


@cuda.jit(device=True)
def _bilinear(a, b, c, d, w0, w1, wa, wb):
    top = add32(mul32(a, w0), mul32(b, w1))
    bottom = add32(mul32(c, w0), mul32(d, w1))
    return add32(mul32(top, wa), mul32(bottom, wb))


@cuda.jit(device=True)
def _rows_and_weights(dy, dx, y0, fy, x0, fx, n_src_y, n_src_x):
    ya = min(max(y0[dy], 0), n_src_y - 1)
    yb = min(max(y0[dy] + 1, 0), n_src_y - 1)
    wb = fy[dy]
    xa = x0[dx]
    xb = min(xa + 1, n_src_x - 1)
    w1 = fx[dx]
    return ya, yb, xa, xb, np.float32(1.0) - w1, w1, np.float32(1.0) - wb, wb


@cuda.jit(cache=True)
def _bilinear_hwc_kernel(src, y0, fy, x0, fx, out):
    dx, dy = cuda.grid(2)
    if dy >= out.shape[0] or dx >= out.shape[1]:
        return
    ya, yb, xa, xb, w0, w1, wa, wb = _rows_and_weights(dy, dx, y0, fy, x0, fx, src.shape[0], src.shape[1])
    for c in range(src.shape[2]):
        out[dy, dx, c] = _bilinear(src[ya, xa, c], src[ya, xb, c], src[yb, xa, c], src[yb, xb, c], w0, w1, wa, wb)


@cuda.jit(cache=True)
def _bilinear_chw_kernel(src, y0, fy, x0, fx, out):
    dx, dy = cuda.grid(2)
    if dy >= out.shape[1] or dx >= out.shape[2]:
        return
    ya, yb, xa, xb, w0, w1, wa, wb = _rows_and_weights(dy, dx, y0, fy, x0, fx, src.shape[1], src.shape[2])
    for c in range(src.shape[0]):
        out[c, dy, dx] = _bilinear(src[c, ya, xa], src[c, ya, xb], src[c, yb, xa], src[c, yb, xb], w0, w1, wa, wb)


@lru_cache(maxsize=64)
def _device_taps(Ly0: int, Lx0: int, Ly: int, Lx: int, nchan: int):
    return tuple(cuda.to_device(a) for a in bilinear_taps(Ly0, Lx0, Ly, Lx, nchan))


def _blocks(Ly: int, Lx: int):
    return (-(-Lx // BLOCK[0]), -(-Ly // BLOCK[1]))


def resize_hwc(src, out) -> None:
    """Resize a channel-last device image ``src`` (Y0, X0, C) into ``out`` (Y, X, C), float32.

    Equals :func:`cellflow_rt.resize.resize_bilinear` on the same image (the number of channels
    picks OpenCV's position arithmetic, as there).
    """
    Ly0, Lx0, nchan = src.shape
    Ly, Lx = out.shape[:2]
    y0, fy, x0, fx = _device_taps(Ly0, Lx0, Ly, Lx, nchan)
    _bilinear_hwc_kernel[_blocks(Ly, Lx), BLOCK](src, y0, fy, x0, fx, out)


def resize_chw(src, out) -> None:
    """Resize a planar device image ``src`` (C, Y0, X0) into ``out`` (C, Y, X), float32.

    Equals :func:`cellflow_rt.resize.resize_bilinear` on ``src.transpose(1, 2, 0)`` (transposed back).
    """
    nchan, Ly0, Lx0 = src.shape
    Ly, Lx = out.shape[1:]
    y0, fy, x0, fx = _device_taps(Ly0, Lx0, Ly, Lx, nchan)
    _bilinear_chw_kernel[_blocks(Ly, Lx), BLOCK](src, y0, fy, x0, fx, out)
