"""Device tiles (numba CUDA, simulator in CI): extraction with padding and augment flips, blending, against tiles.py."""
import numpy as np
import pytest
from numba import cuda

from cellflow_rt.gpu import tiles as device_tiles
from cellflow_rt.tiles import blend_tiles, extract_tiles, pad_amounts, tile_grid, unaugment_tiles

BSIZE = 24  # small tiles keep the simulator quick; the geometry rules are the same as at 224


def _padded_grid(shape, augment):
    (y1, y2), (x1, x2) = pad_amounts(shape[0]), pad_amounts(shape[1])
    return (y1, x1), (y1 + y2, x1 + x2), tile_grid(shape[0] + y1 + y2, shape[1] + x1 + x2, bsize=BSIZE, augment=augment)


@pytest.mark.parametrize("augment", [False, True])
def test_extraction_pads_zero_extends_and_flips_like_the_cpu(augment):
    plane = np.random.default_rng(1).standard_normal((9, 21, 2)).astype(np.float32)
    (y1, x1), (py, px), grid = _padded_grid(plane.shape[:2], augment)
    padded = np.pad(plane.transpose(2, 0, 1), ((0, 0), (y1, py - y1), (x1, px - x1)))
    expected = np.empty((grid.ntiles, 2, grid.ly, grid.lx), np.float32)
    extract_tiles(padded, grid, expected)
    out = cuda.device_array(expected.shape, np.float32)
    # in two calls, as a network batch at a time does
    half = grid.ntiles // 2
    device_plane = cuda.to_device(plane)
    device_tiles.extract_tiles(device_plane, grid, y1, x1, 0, out[:half])
    device_tiles.extract_tiles(device_plane, grid, y1, x1, half, out[half:])
    np.testing.assert_array_equal(out.copy_to_host(), expected)


@pytest.mark.parametrize("augment", [False, True])
def test_blending_in_batches_equals_the_cpu_bit_for_bit(augment):
    (y1, x1), _, grid = _padded_grid((12, 20), augment)
    y = np.random.default_rng(2).standard_normal((grid.ntiles, 3, grid.ly, grid.lx)).astype(np.float32)
    unflipped = y.copy()
    if augment:
        unaugment_tiles(unflipped, grid)
    expected = blend_tiles(unflipped, grid)[:, y1:y1 + 12, x1:x1 + 20]

    acc = cuda.device_array((3, grid.Ly, grid.Lx), np.float32)
    weight = cuda.device_array((grid.Ly, grid.Lx), np.float64)
    device_tiles.zero(acc)
    device_tiles.zero(weight)
    device_y = cuda.to_device(y)
    for k0 in range(0, grid.ntiles, 4):
        device_tiles.accumulate_tiles(device_y[k0:k0 + 4], grid, k0, acc, weight)
    out = cuda.device_array((3, 12, 20), np.float32)
    device_tiles.normalise_and_crop(acc, weight, y1, x1, out)
    np.testing.assert_array_equal(out.copy_to_host(), expected)


def test_chunk_box_holds_exactly_the_chunks_tiles():
    grid = tile_grid(64, 80, bsize=BSIZE)
    nx = len(grid.xstarts)
    y, x, h, w = device_tiles.chunk_box(grid, nx - 1, 2)  # last tile of row 0, first of row 1
    assert (y, x) == (0, 0) and h == grid.ystarts[1] + BSIZE and w == grid.Lx
