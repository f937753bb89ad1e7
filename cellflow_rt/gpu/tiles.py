"""Tiles on the device: cut them out of a plane, blend the network's outputs back (the CPU's :mod:`~cellflow_rt.tiles`).

- :func:`extract_tiles` pads (zeros), zero-extends (augment) and flips (augment) in one pass: a tile
  pixel reads the unpadded plane at its shifted, possibly mirrored position, or 0 outside it.
- :func:`accumulate_tiles` adds a chunk of output tiles into the blend sums, undoing the augment
  flips (and negating the flipped flow component) as it reads. Each output pixel belongs to one
  thread, which adds its tiles in tile order, the CPU's order; the product is float64 and the sum
  float32, as numpy's ``out += y * mask`` computes it, with one rounding per operation
  (:mod:`._exact`), so the sums equal the CPU's bit for bit. Chunks can come one network batch at
  a time: the order per pixel stays the tile order.
- :func:`normalise_and_crop` divides by the weights (float64) and crops the padding.

The tile geometry itself (:class:`~cellflow_rt.tiles.TileGrid`, the taper mask) is the CPU module's.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Tuple

import numpy as np
from numba import cuda

from ..tiles import TileGrid, taper_mask
from ._exact import add64, mul64

BLOCK2 = (32, 8)
BLOCK3 = (32, 8, 1)


@cuda.jit(cache=True)
def _extract_kernel(plane, ypad, xpad, ystarts, xstarts, k0, augment, out):
    tx, ty, t = cuda.grid(3)
    ly = out.shape[2]
    lx = out.shape[3]
    if tx >= lx or ty >= ly or t >= out.shape[0]:
        return
    k = k0 + t
    nx = xstarts.shape[0]
    j = k // nx
    i = k - j * nx
    py = ty
    px = tx
    if augment:
        if i % 2 == 1:
            py = ly - 1 - ty
        if j % 2 == 1:
            px = lx - 1 - tx
    sy = ystarts[j] + py - ypad
    sx = xstarts[i] + px - xpad
    inside = sy >= 0 and sy < plane.shape[0] and sx >= 0 and sx < plane.shape[1]
    for c in range(out.shape[1]):
        out[t, c, ty, tx] = plane[sy, sx, c] if inside else np.float32(0.0)


@cuda.jit(cache=True)
def _accumulate_kernel(y, k0, ystarts, xstarts, mask, augment, box_y, box_x, acc, weight):
    bx, by = cuda.grid(2)
    py = box_y + by
    px = box_x + bx
    if py >= acc.shape[1] or px >= acc.shape[2]:
        return
    ly = y.shape[2]
    lx = y.shape[3]
    nx = xstarts.shape[0]
    for t in range(y.shape[0]):
        k = k0 + t
        j = k // nx
        i = k - j * nx
        ty = py - ystarts[j]
        tx = px - xstarts[i]
        if ty < 0 or ty >= ly or tx < 0 or tx >= lx:
            continue
        m = mask[ty, tx]
        flip_y = augment and i % 2 == 1
        flip_x = augment and j % 2 == 1
        sy = ly - 1 - ty if flip_y else ty
        sx = lx - 1 - tx if flip_x else tx
        for c in range(acc.shape[0]):
            value = y[t, c, sy, sx]
            if (c == 0 and flip_y) or (c == 1 and flip_x):
                value = -value
            acc[c, py, px] = np.float32(add64(np.float64(acc[c, py, px]), mul64(np.float64(value), m)))
        weight[py, px] = add64(weight[py, px], m)


@cuda.jit(cache=True)
def _normalise_crop_kernel(acc, weight, y_off, x_off, out):
    ox, oy = cuda.grid(2)
    if oy >= out.shape[1] or ox >= out.shape[2]:
        return
    w = weight[oy + y_off, ox + x_off]
    for c in range(out.shape[0]):
        out[c, oy, ox] = np.float32(np.float64(acc[c, oy + y_off, ox + x_off]) / w)


@cuda.jit(cache=True)
def _fill_kernel(flat, value):
    i = cuda.grid(1)
    if i < flat.shape[0]:
        flat[i] = value


@lru_cache(maxsize=16)
def device_grid(grid: TileGrid):
    """Tile origins of a grid as device arrays (ystarts, xstarts), int64."""
    return (cuda.to_device(np.asarray(grid.ystarts, np.int64)), cuda.to_device(np.asarray(grid.xstarts, np.int64)))


@lru_cache(maxsize=16)
def device_taper(ly: int, lx: int):
    """The float64 taper mask of a tile size on the device."""
    return cuda.to_device(np.ascontiguousarray(taper_mask(ly, lx)))


def _blocks2(ny: int, nx: int):
    return (-(-nx // BLOCK2[0]), -(-ny // BLOCK2[1]))


def zero(array) -> None:
    """Set a C-contiguous device array to 0."""
    flat = array.reshape(array.size)
    _fill_kernel[-(-array.size // 256), 256](flat, array.dtype.type(0))


def extract_tiles(plane, grid: TileGrid, ypad: int, xpad: int, k0: int, out) -> None:
    """Tiles ``k0 .. k0 + len(out)`` of a plane into ``out`` (n, C, ly, lx), float32.

    ``plane`` is the unpadded (Y, X, C) device plane; ``ypad``/``xpad`` the zeros before it
    (:func:`~cellflow_rt.tiles.pad_amounts`). Equals :func:`cellflow_rt.tiles.extract_tiles` on the
    padded plane.
    """
    ystarts, xstarts = device_grid(grid)
    n, nchan, ly, lx = out.shape
    blocks = (-(-lx // BLOCK3[0]), -(-ly // BLOCK3[1]), n)
    _extract_kernel[blocks, BLOCK3](plane, ypad, xpad, ystarts, xstarts, k0, grid.augment, out)


def chunk_box(grid: TileGrid, k0: int, n: int) -> Tuple[int, int, int, int]:
    """(y, x, height, width) of the smallest box holding tiles ``k0 .. k0 + n`` of a grid."""
    nx = len(grid.xstarts)
    rows = [grid.ystarts[k // nx] for k in range(k0, k0 + n)]
    cols = [grid.xstarts[k % nx] for k in range(k0, k0 + n)]
    y, x = min(rows), min(cols)
    return y, x, min(max(rows) + grid.ly, grid.Ly) - y, min(max(cols) + grid.lx, grid.Lx) - x


def accumulate_tiles(y, grid: TileGrid, k0: int, acc, weight) -> None:
    """Add output tiles ``k0 .. k0 + len(y)`` (n, nout, ly, lx) to the blend sums, in tile order.

    ``acc`` (nout, grid.Ly, grid.Lx) float32 and ``weight`` (grid.Ly, grid.Lx) float64 start at 0
    for a plane; after its last tile, :func:`normalise_and_crop` gives
    :func:`cellflow_rt.tiles.blend_tiles` of the (unaugmented) tiles.
    """
    ystarts, xstarts = device_grid(grid)
    box_y, box_x, height, width = chunk_box(grid, k0, y.shape[0])
    _accumulate_kernel[_blocks2(height, width), BLOCK2](y, k0, ystarts, xstarts, device_taper(grid.ly, grid.lx),
                                                        grid.augment, box_y, box_x, acc, weight)


def normalise_and_crop(acc, weight, y_off: int, x_off: int, out) -> None:
    """``out[c, i, j] = acc[c, i + y_off, j + x_off] / weight[i + y_off, j + x_off]`` (float64 division)."""
    _normalise_crop_kernel[_blocks2(out.shape[1], out.shape[2]), BLOCK2](acc, weight, y_off, x_off, out)
