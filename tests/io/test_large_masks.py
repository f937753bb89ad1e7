"""cellflow_rt.io.large_masks: labels streamed from a zarr array into a tiled BigTIFF and a PNG."""
import tracemalloc
import warnings

import numpy as np
import pytest
import tifffile
from pillow_codecs import decode

from cellflow_rt.io.large_masks import save_large_masks

zarr = pytest.importorskip("zarr")


def _zarr_labels(path, shape, chunks, seed=0):
    """Labels written chunk by chunk (never whole in memory): blobs with ids unique per chunk."""
    labels = zarr.create_array(str(path), shape=shape, chunks=chunks, dtype="uint32", fill_value=0)
    rng = np.random.default_rng(seed)
    cy, cx = chunks[-2:]
    for n, (y, x) in enumerate((y, x) for y in range(0, shape[-2], cy) for x in range(0, shape[-1], cx)):
        block = rng.integers(0, 6, (min(cy, shape[-2] - y) // 16 + 1, min(cx, shape[-1] - x) // 16 + 1))
        block = np.kron(block, np.ones((16, 16), np.uint32))[:min(cy, shape[-2] - y), :min(cx, shape[-1] - x)]
        block = np.where(block > 0, block + 7 * n, 0).astype(np.uint32)
        if len(shape) == 3:
            for z in range(shape[0]):
                labels[z, y:y + cy, x:x + cx] = np.roll(block, z, axis=0)
        else:
            labels[y:y + cy, x:x + cx] = block
    return labels


def test_tif_and_png_equal_the_zarr(tmp_path):
    labels = _zarr_labels(tmp_path / "m.zarr", (700, 900), (300, 300))  # edges not on tile or chunk bounds
    written = save_large_masks(labels, tmp_path / "slide.ome.zarr", tif=True, png=True)
    assert [p.name for p in written] == ["slide_cp_masks.tif", "slide_cp_masks.png"]
    with tifffile.TiffFile(written[0]) as tif:
        page = tif.pages[0]
        assert tif.is_bigtiff and page.is_tiled and page.compression == tifffile.COMPRESSION.ADOBE_DEFLATE
        out = tif.asarray()
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, labels[:])
    png = decode(written[1])
    assert png.dtype == np.uint16
    np.testing.assert_array_equal(png, labels[:])


def test_3d_labels_and_many_labels_go_to_tiff(tmp_path):
    labels = _zarr_labels(tmp_path / "v.zarr", (3, 200, 260), (1, 128, 128))
    with pytest.warns(UserWarning, match="3D labels"):
        written = save_large_masks(labels, tmp_path / "vol.tif", savedir=tmp_path / "out", png=True, tif=False,
                                   suffix="_x")
    assert [p.name for p in written] == ["vol_x.tif"]
    np.testing.assert_array_equal(tifffile.imread(written[0]), labels[:])
    big = np.zeros((40, 50), np.uint32)
    big[5:9, 5:9] = 70000
    with pytest.warns(UserWarning, match="do not fit a 16-bit PNG"):
        written = save_large_masks(big, tmp_path / "big.tif", savedir=tmp_path / "out2", png=True, tif=False)
    out = tifffile.imread(written[0])
    assert out.dtype == np.uint32 and out.max() == 70000


def test_peak_memory_is_bounded_by_the_chunks_not_the_canvas(tmp_path):
    # a 4096^2 uint32 canvas (64 MiB) in 512^2 chunks (1 MiB each): writing both files holds a few
    # chunks for the TIFF and 256-row bands (6 bytes per pixel of a band: 6 MiB here) for the PNG
    shape = (4096, 4096)
    labels = _zarr_labels(tmp_path / "c.zarr", shape, (512, 512))
    canvas_bytes = 4 * shape[0] * shape[1]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tracemalloc.start()
        try:
            save_large_masks(labels, tmp_path / "canvas.zarr", tif=True, png=False, n_labels=7 * 64 + 5)
            _, peak_tif = tracemalloc.get_traced_memory()
            tracemalloc.reset_peak()
            save_large_masks(labels, tmp_path / "canvas.zarr", tif=False, png=True, n_labels=7 * 64 + 5)
            _, peak_png = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert peak_tif < canvas_bytes / 8, f"TIFF peak {peak_tif / 2**20:.1f} MiB"
    assert peak_png < canvas_bytes / 4, f"PNG peak {peak_png / 2**20:.1f} MiB"
    print(f"canvas {canvas_bytes / 2**20:.0f} MiB: peak {peak_tif / 2**20:.1f} MiB (TIFF), "
          f"{peak_png / 2**20:.1f} MiB (PNG)")
