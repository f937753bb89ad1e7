"""Padding, tiling, test-time augmentation and tapered blending of tile outputs.

Cellpose 3.1.1.1's ``get_pad_yx``, ``make_tiles``, ``unaugment_tiles``, ``_taper_mask`` and
``average_tiles``, restated. Tile geometry is computed once per image size (:class:`TileGrid`).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Optional, Tuple

import numpy as np

from .settings import BSIZE


def pad_amounts(L: int, div: int = 16, extra: int = 1, min_size: Optional[int] = None) -> Tuple[int, int]:
    """Zeros added before and after an axis of length ``L``: to a multiple of ``div``, plus ``div``.

    With ``min_size`` (Cellpose 4, whose network only takes whole tiles), an axis shorter than
    ``min_size`` is instead padded to ``max(min_size, L + div)``.
    """
    if min_size is None or L >= min_size:
        Lpad = int(div * np.ceil(L / div) - L)
    else:
        Lpad = max(0, min_size - L - extra * div)
    return extra * div // 2 + Lpad // 2, extra * div // 2 + Lpad - Lpad // 2


def _tile_starts(L: int, tile: int, n: int) -> np.ndarray:
    return np.linspace(0, L - tile, n).astype(int)


@dataclass(frozen=True)
class TileGrid:
    """Where the tiles of one padded plane lie.

    Attributes
    ----------
    Ly, Lx : int
        Size of the (padded, for augment possibly zero-extended) plane the tiles cover.
    ly, lx : int
        Tile size.
    ystarts, xstarts : tuple of int
        Tile origins; tiles are ordered row-major (y outer, x inner).
    augment : bool
        Tiles are flipped by their (row, column) parity.
    """

    Ly: int
    Lx: int
    ly: int
    lx: int
    ystarts: Tuple[int, ...]
    xstarts: Tuple[int, ...]
    augment: bool

    @property
    def ntiles(self) -> int:
        return len(self.ystarts) * len(self.xstarts)


def tile_grid(Ly: int, Lx: int, bsize: int = BSIZE, augment: bool = False, tile_overlap: float = 0.1) -> TileGrid:
    """Tile layout of a padded ``Ly x Lx`` plane, as Cellpose's ``make_tiles``.

    With ``augment`` the plane is zero-extended to at least ``bsize`` and covered by ``bsize`` tiles
    overlapping by half; otherwise tiles of ``min(bsize, L)`` overlap by ``tile_overlap``.
    """
    if augment:
        Ly, Lx = max(Ly, bsize), max(Lx, bsize)
        ny = max(2, int(np.ceil(2.0 * Ly / bsize)))
        nx = max(2, int(np.ceil(2.0 * Lx / bsize)))
        ly = lx = bsize
    else:
        overlap = min(0.5, max(0.05, tile_overlap))
        ly, lx = min(bsize, Ly), min(bsize, Lx)
        ny = 1 if Ly <= bsize else int(np.ceil((1.0 + 2 * overlap) * Ly / bsize))
        nx = 1 if Lx <= bsize else int(np.ceil((1.0 + 2 * overlap) * Lx / bsize))
    return TileGrid(Ly, Lx, ly, lx, tuple(_tile_starts(Ly, ly, ny).tolist()),
                    tuple(_tile_starts(Lx, lx, nx).tolist()), augment)


def _flip_axes(j: int, i: int) -> Tuple[int, ...]:
    """Spatial axes (of a C, y, x tile) flipped for tile (j, i) under augment."""
    if j % 2 == 0 and i % 2 == 1:
        return (1,)
    if j % 2 == 1 and i % 2 == 0:
        return (2,)
    if j % 2 == 1 and i % 2 == 1:
        return (1, 2)
    return ()


def extract_tiles(plane: np.ndarray, grid: TileGrid, out: np.ndarray) -> None:
    """Cut the tiles of a padded (C, Ly, Lx) plane into ``out`` (ntiles, C, ly, lx)."""
    C, Ly, Lx = plane.shape
    if (Ly, Lx) != (grid.Ly, grid.Lx):
        extended = np.zeros((C, grid.Ly, grid.Lx), np.float32)
        extended[:, :Ly, :Lx] = plane
        plane = extended
    k = 0
    for j, y0 in enumerate(grid.ystarts):
        for i, x0 in enumerate(grid.xstarts):
            tile = plane[:, y0:y0 + grid.ly, x0:x0 + grid.lx]
            if grid.augment:
                flips = _flip_axes(j, i)
                if flips:
                    tile = np.flip(tile, axis=flips)
            out[k] = tile
            k += 1


def unaugment_tiles(y: np.ndarray, grid: TileGrid) -> None:
    """Undo the augment flips in place on network outputs (ntiles, 3, ly, lx); negate flipped flows."""
    k = 0
    for j in range(len(grid.ystarts)):
        for i in range(len(grid.xstarts)):
            flips = _flip_axes(j, i)
            if flips:
                y[k] = np.flip(y[k], axis=flips)
                if 1 in flips:
                    y[k, 0] *= -1
                if 2 in flips:
                    y[k, 1] *= -1
            k += 1


@lru_cache(maxsize=16)
def taper_mask(ly: int, lx: int, sig: float = 7.5) -> np.ndarray:
    """Logistic taper that down-weights tile borders (float64, centre-cropped to ly x lx)."""
    bsize = max(BSIZE, ly, lx)
    xm = np.arange(bsize)
    xm = np.abs(xm - xm.mean())
    m = 1 / (1 + np.exp((xm - (bsize / 2 - 20)) / sig))
    m = m * m[:, np.newaxis]
    m = m[bsize // 2 - ly // 2:bsize // 2 + ly // 2 + ly % 2, bsize // 2 - lx // 2:bsize // 2 + lx // 2 + lx % 2]
    m.setflags(write=False)
    return m


def blend_tiles(y: np.ndarray, grid: TileGrid) -> np.ndarray:
    """Taper-weighted average of tile outputs (ntiles, nout, ly, lx) -> (nout, Ly, Lx) float32.

    Accumulates float64 products into a float32 sum and divides by a float64 weight sum, the
    reference's precision (results agree with it bit for bit).
    """
    mask = taper_mask(grid.ly, grid.lx)
    out = np.zeros((y.shape[1], grid.Ly, grid.Lx), np.float32)
    weight = np.zeros((grid.Ly, grid.Lx))
    k = 0
    for y0 in grid.ystarts:
        for x0 in grid.xstarts:
            out[:, y0:y0 + grid.ly, x0:x0 + grid.lx] += y[k] * mask
            weight[y0:y0 + grid.ly, x0:x0 + grid.lx] += mask
            k += 1
    out /= weight
    return out
