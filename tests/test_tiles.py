"""Padding, tile geometry, augment flips and blending (Cellpose's make_tiles / average_tiles)."""
import numpy as np
import pytest

from cellflow_rt.tiles import blend_tiles, extract_tiles, pad_amounts, taper_mask, tile_grid, unaugment_tiles


@pytest.mark.parametrize("L, expected", [(224, (8, 8)), (200, (12, 12)), (1000, (12, 12)), (1024, (8, 8)), (17, (15, 16))])
def test_pad_to_multiple_of_16_plus_16(L, expected):
    assert pad_amounts(L) == expected
    assert (L + sum(expected)) % 16 == 0


@pytest.mark.parametrize("L, starts", [(240, (0, 16)), (272, (0, 48)), (528, (0, 152, 304)),
                                       (1040, (0, 163, 326, 489, 652, 816)), (224, (0,)), (144, (0,))])
def test_tile_starts_as_reference(L, starts):
    grid = tile_grid(L, L)
    assert grid.ystarts == starts and grid.xstarts == starts
    assert grid.ly == min(224, L)


def test_augment_grid_extends_small_images_and_overlaps_by_half():
    grid = tile_grid(144, 272, augment=True)
    assert (grid.Ly, grid.Lx, grid.ly, grid.lx) == (224, 272, 224, 224)
    assert grid.ystarts == (0, 0) and grid.xstarts == (0, 24, 48)


def test_taper_values():
    m = taper_mask(224, 224)
    assert m.shape == (224, 224)
    assert m[0, 112] == pytest.approx(0.069, abs=1e-3)
    assert m[112, 112] == pytest.approx(1.0, abs=1e-3)
    assert taper_mask(100, 60).shape == (100, 60)


def test_augment_flips_round_trip():
    rng = np.random.default_rng(0)
    plane = rng.random((3, 272, 300)).astype(np.float32)
    grid = tile_grid(272, 300, augment=True)
    tiles = np.empty((grid.ntiles, 3, 224, 224), np.float32)
    extract_tiles(plane, grid, tiles)
    restored = tiles.copy()
    unaugment_tiles(restored, grid)
    k = 0
    for y0 in grid.ystarts:
        for x0 in grid.xstarts:
            expected = plane[:, y0:y0 + 224, x0:x0 + 224].copy()
            j, i = grid.ystarts.index(y0), grid.xstarts.index(x0)
            if (j % 2, i % 2) in ((0, 1), (1, 1)):
                expected[0] *= -1  # dY negated when the tile was flipped in Y
            if (j % 2, i % 2) in ((1, 0), (1, 1)):
                expected[1] *= -1
            np.testing.assert_array_equal(restored[k], expected)
            k += 1


def test_blending_tiles_of_a_smooth_field_reproduces_it():
    rng = np.random.default_rng(1)
    plane = rng.random((3, 400, 500)).astype(np.float32)
    grid = tile_grid(400, 500)
    tiles = np.empty((grid.ntiles, 3, grid.ly, grid.lx), np.float32)
    extract_tiles(plane, grid, tiles)
    np.testing.assert_allclose(blend_tiles(tiles, grid), plane, rtol=1e-5, atol=1e-6)
