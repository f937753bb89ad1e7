"""Output files, outlines and flow pictures (the writers of cellflow_rt.io): written files read back
with tifffile / Pillow / roifile / json."""
import json
import warnings
import zipfile
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
import tifffile
from pillow_codecs import decode
from scipy.ndimage import find_objects

from cellflow_rt import io as outputs
from cellflow_rt.io import OutputWriteError
from cellflow_rt.io.flows import cellprob_to_uint8, flow_to_rgb, normalize99
from cellflow_rt.io.outlines import masks_to_outlines, outlines_list
from cellflow_rt.percentile import percentile, percentiles

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
DSB = SHARED / "data" / "dsb2018_sample"


def _dsb_labels(n=0):
    path = DSB / f"dsb_{n:02d}_labels.tif"
    if not path.is_file():
        pytest.skip(f"shared data not found at {DSB}")
    return tifffile.imread(path)


def _toy_masks():
    m = np.zeros((30, 40), np.uint16)
    m[2:10, 3:12] = 1
    m[12:25, 5:9] = 2
    m[15:28, 20:38] = 7  # label gap on purpose
    m[18:22, 25:30] = 0  # a hole in 7
    m[0, 39] = 9  # one pixel: outline of 1 point
    return m


def _synthetic_cells(n_side, spacing=12, seed=0):
    """n_side**2 disjoint discs of radius 3-4.5 on a jittered grid: convex, one piece, no holes."""
    rng = np.random.default_rng(seed)
    size = n_side * spacing + 2
    masks = np.zeros((size, size), np.int32)
    yy, xx = np.mgrid[-5:6, -5:6]
    label = 0
    for i in range(n_side):
        for j in range(n_side):
            r = rng.uniform(3, 4.5)
            cy, cx = i * spacing + 7 + rng.integers(-1, 2), j * spacing + 7 + rng.integers(-1, 2)
            disc = yy**2 + xx**2 <= r * r
            label += 1
            masks[cy - 5:cy + 6, cx - 5:cx + 6][disc] = label
    return masks


# --------------------------------------------------------------------------------------------------
# outlines


def test_outline_of_a_square_matches_opencv_order():
    m = np.zeros((5, 5), int)
    m[1:4, 1:4] = 1
    assert outlines_list(m)[0].tolist() == [[1, 1], [1, 2], [1, 3], [2, 3], [3, 3], [3, 2], [3, 1], [2, 1]]
    expected = np.zeros((5, 5), bool)
    expected[1:4, 1:4] = True
    expected[2, 2] = False
    np.testing.assert_array_equal(masks_to_outlines(m), expected)


def test_outlines_at_the_image_border_and_without_background():
    m = np.ones((3, 3), int)
    assert outlines_list(m)[0].tolist() == [[0, 0], [0, 1], [0, 2], [1, 2], [2, 2], [2, 1], [2, 0], [1, 0]]
    m = np.array([[1, 1, 2, 2]] * 4)
    assert len(outlines_list(m)) == 2  # Cellpose's np.unique(masks)[1:] would drop label 1 here


def test_hole_borders_are_not_outlines_and_longest_piece_wins():
    m = _toy_masks()
    out = masks_to_outlines(m)
    assert not out[18:22, 25:30].any()
    ring = np.zeros(m.shape, bool)
    ring[17:23, 24:31] = True
    ring[18:22, 25:30] = False
    assert (m[ring] == 7).all() and not out[ring].any()  # pixels around the hole: not on an outer border
    assert out[15, 20:38].all() and out[27, 20:38].all()
    two = np.zeros((10, 20), int)
    two[1:3, 1:3] = 5  # small piece (4 points)
    two[4:9, 8:18] = 5  # large piece
    (contour,) = outlines_list(two)
    assert contour.shape == (26, 2) and contour[0].tolist() == [8, 4]


def test_small_masks_get_empty_outlines_like_cellpose():
    m = _toy_masks()
    labels_out = outlines_list(m)
    assert len(labels_out) == 4
    assert labels_out[-1].shape == (0, 2)  # label 9: a single pixel
    line = np.zeros((3, 6), int)
    line[1, 1:4] = 3  # 3 pixels -> border of 4 points -> empty, as in Cellpose
    assert outlines_list(line)[0].shape == (0, 2)


def test_outlines_3d_are_per_plane():
    m = np.zeros((2, 6, 6), int)
    m[0, 1:5, 1:5] = 1
    m[1, 2:4, 2:5] = 2
    out = masks_to_outlines(m)
    np.testing.assert_array_equal(out[0], masks_to_outlines(m[0]))
    np.testing.assert_array_equal(out[1], masks_to_outlines(m[1]))
    with pytest.raises(ValueError):
        outlines_list(m)


def _border_pixels(masks):
    """Pixels with a 4-neighbour of another value or on the image edge (outer borders when no holes)."""
    padded = np.pad(masks, 1, constant_values=-1)
    centre = padded[1:-1, 1:-1]
    diff = np.zeros(masks.shape, bool)
    for dy, dx in [(-1, 0), (1, 0), (0, -1), (0, 1)]:
        diff |= padded[1 + dy:padded.shape[0] - 1 + dy, 1 + dx:padded.shape[1] - 1 + dx] != centre
    return diff & (masks > 0)


def test_outlines_of_25000_cells():
    masks = _synthetic_cells(159)  # 25,281 cells, 1910 x 1910 pixels
    labels = np.unique(masks)[1:]
    assert labels.size > 25000
    out = masks_to_outlines(masks)
    np.testing.assert_array_equal(out, _border_pixels(masks))
    contours = outlines_list(masks)
    assert len(contours) == labels.size
    boxes = find_objects(masks)
    rng = np.random.default_rng(1)
    for k in rng.choice(labels.size, 300, replace=False):
        c, label, (sy, sx) = contours[k], labels[k], boxes[labels[k] - 1]
        x, y = c[:, 0], c[:, 1]
        assert np.all(masks[y, x] == label)
        steps = np.abs(np.diff(np.vstack([c, c[:1]]), axis=0))
        assert steps.max() == 1 and np.all(steps.sum(axis=1) > 0)  # closed 8-connected chain
        ys, xs = np.nonzero(out[sy, sx] & (masks[sy, sx] == label))
        assert set(zip((xs + sx.start).tolist(), (ys + sy.start).tolist())) == set(zip(x.tolist(), y.tolist()))
        first = np.argwhere(masks[sy, sx] == label)[0]  # raster-first pixel starts the contour
        assert c[0].tolist() == [first[1] + sx.start, first[0] + sy.start]


# --------------------------------------------------------------------------------------------------
# flow pictures


def test_flow_to_rgb_matches_cellpose_dx_to_circ():
    dP = np.array([[[0, 1, 0, -1], [2, 0, -2, 0.5]], [[1, 0, -1, 0], [0, 2, 0, -0.5]]], np.float32)
    # cellpose 3.1.1.1 plot.dx_to_circ(dP) on numpy 2.0.2
    expected = [[[27, 50, 3], [0, 40, 40], [27, 3, 50], [54, 13, 13]],
                [[0, 191, 191], [127, 237, 17], [255, 63, 63], [0, 0, 0]]]
    assert flow_to_rgb(dP).tolist() == expected
    assert flow_to_rgb(np.zeros((2, 3, 3), np.float32)).max() == 0
    assert flow_to_rgb(np.ones((3, 2, 4, 5), np.float32)).shape == (2, 4, 5, 3)
    with pytest.raises(ValueError):
        flow_to_rgb(np.zeros((4, 3, 3)))


def test_percentiles_and_cellprob_as_the_reference_numpy_computes_them():
    rng = np.random.default_rng(2024)
    x = (rng.standard_normal(4400) * 7).astype(np.float32)
    # numpy 2.0.2 (the reference) computes these in float32; numpy >= 2.1 gives 16.231655 for the 99th
    assert percentile(x, 1.0).tobytes().hex() == "f14f81c1"
    assert percentile(x, 99.0).tobytes().hex() == "70da8141"
    lo, hi = percentiles(x, (1.0, 99.0))  # one partition for both
    assert (lo.tobytes().hex(), hi.tobytes().hex()) == ("f14f81c1", "70da8141")
    cp = (rng.standard_normal((3, 5)) * 4).astype(np.float32)
    assert cellprob_to_uint8(cp).tolist() == [[158, 255, 0, 153, 139], [151, 196, 108, 66, 125],
                                              [225, 111, 119, 239, 106]]
    assert normalize99(np.ones((4, 4), np.float32)).max() == 0  # flat input -> zeros


# --------------------------------------------------------------------------------------------------
# mask files


def test_save_masks_png_and_tif_round_trip(tmp_path):
    masks = _dsb_labels(0)
    written = outputs.save_masks(masks, tmp_path / "dsb_00_image.tif", png=True, tif=True)
    assert [p.name for p in written] == ["dsb_00_image_cp_masks.png", "dsb_00_image_cp_masks.tif"]
    png = decode(written[0])
    assert png.dtype == np.uint16
    np.testing.assert_array_equal(png, masks)
    with tifffile.TiffFile(written[1]) as tif:
        assert tif.pages[0].compression == tifffile.COMPRESSION.ADOBE_DEFLATE
        np.testing.assert_array_equal(tif.asarray(), masks)


def test_save_masks_savedir_suffix_and_empty_masks(tmp_path):
    masks = np.zeros((8, 3), np.int64)  # no object, and a width of 3 that must not become RGB
    written = outputs.save_masks(masks, "/elsewhere/img.ome.tif", png=True, tif=True,
                                 savedir=tmp_path / "new" / "dir", suffix="_labels")
    assert [p.name for p in written] == ["img_labels.png", "img_labels.tif"]
    assert written[0].parent == tmp_path / "new" / "dir"
    assert tifffile.imread(written[1]).shape == (8, 3)
    assert decode(written[0]).shape == (8, 3)


def test_save_masks_many_labels_fall_back_to_uint32_tif(tmp_path):
    masks = np.arange(70000, dtype=np.uint32).reshape(280, 250)
    with pytest.warns(UserWarning, match="16-bit PNG"):
        written = outputs.save_masks(masks, tmp_path / "big.png", png=True)
    assert [p.name for p in written] == ["big_cp_masks.tif"]
    back = tifffile.imread(written[0])
    assert back.dtype == np.uint32
    np.testing.assert_array_equal(back, masks)


def test_save_masks_3d(tmp_path):
    vol = np.zeros((5, 20, 30), np.uint16)
    vol[1:4, 5:10, 5:25] = 3
    (path,) = outputs.save_masks(vol, tmp_path / "vol.tif", png=True, tif=True)  # 3D: TIF only
    with tifffile.TiffFile(path) as tif:
        assert len(tif.pages) == 5
        np.testing.assert_array_equal(tif.asarray(), vol)
    with pytest.raises(ValueError, match="3D"):
        outputs.save_masks(vol, tmp_path / "vol.tif", png=True, tif=False)


def test_save_masks_rejects_bad_labels(tmp_path):
    with pytest.raises(ValueError, match="negative"):
        outputs.save_masks(np.array([[-1, 0]]), tmp_path / "a.tif")
    with pytest.raises(ValueError, match="2D or 3D"):
        outputs.save_masks(np.zeros(5, int), tmp_path / "a.tif")
    assert list(tmp_path.iterdir()) == []


def test_ome_tiff_labels(tmp_path):
    masks = _toy_masks()
    path = outputs.save_masks_ome_tif(masks, tmp_path / "cells.tif")
    assert path.name == "cells_cp_masks.ome.tif"
    with tifffile.TiffFile(path) as tif:
        assert tif.is_ome
        assert tif.series[0].axes == "YX"
        np.testing.assert_array_equal(tif.asarray(), masks)
        assert "cells_cp_masks" in tif.ome_metadata
    vol = np.stack([masks, masks])
    with tifffile.TiffFile(outputs.save_masks_ome_tif(vol, tmp_path / "vol.tif")) as tif:
        assert tif.series[0].axes == "ZYX"
        np.testing.assert_array_equal(tif.asarray(), vol)


def test_writer_into_read_only_location_raises_a_clear_error(tmp_path):
    target = tmp_path / "file_not_folder"
    target.write_bytes(b"")
    with pytest.raises(OutputWriteError, match="file_not_folder"):
        outputs.save_masks(_toy_masks(), tmp_path / "img.tif", savedir=target / "sub")


# --------------------------------------------------------------------------------------------------
# _seg.npy


def _flows_2d(shape, seed=0):
    rng = np.random.default_rng(seed)
    dP = (rng.standard_normal((2, *shape)) * 2).astype(np.float32)
    cellprob = (rng.standard_normal(shape) * 3).astype(np.float32)
    return [flow_to_rgb(dP), dP, cellprob]


def test_seg_npy_has_the_gui_keys_and_shapes(tmp_path):
    masks = _toy_masks()
    flows = _flows_2d(masks.shape)
    path = outputs.save_seg_npy(masks, flows, tmp_path / "toy.png", diameter=17.5, channels=[2, 1])
    assert path.name == "toy_seg.npy"
    seg = np.load(path, allow_pickle=True).item()
    assert set(seg) == {"outlines", "masks", "chan_choose", "ismanual", "filename", "flows", "diameter"}
    assert seg["masks"].dtype == np.uint16 and seg["outlines"].dtype == np.uint16
    np.testing.assert_array_equal(seg["masks"], masks)
    np.testing.assert_array_equal(seg["outlines"], np.where(masks_to_outlines(masks), masks, 0))
    assert seg["chan_choose"] == [2, 1]
    assert seg["ismanual"].dtype == bool and seg["ismanual"].shape == (9,)  # up to the largest label
    assert seg["filename"] == str(tmp_path / "toy.png")
    assert seg["diameter"] == 17.5
    f = seg["flows"]
    assert len(f) == 5
    Ly, Lx = masks.shape
    assert f[0].shape == (1, Ly, Lx, 3) and f[0].dtype == np.uint8
    np.testing.assert_array_equal(f[0][0], flows[0])
    assert f[1].shape == (1, Ly, Lx) and f[1].dtype == np.uint8
    np.testing.assert_array_equal(f[1][0], cellprob_to_uint8(flows[2]))
    assert f[2].shape == (1, Ly, Lx, 3) and not f[2].any()
    assert f[3] == []
    assert f[4].shape == (3, Ly, Lx) and f[4].dtype == np.float32
    np.testing.assert_array_equal(f[4][:2], flows[1])
    np.testing.assert_array_equal(f[4][2], flows[2])


def test_seg_npy_3d_and_many_labels(tmp_path):
    rng = np.random.default_rng(3)
    vol = np.zeros((3, 12, 14), np.uint32)
    vol[:, 2:8, 3:9] = 70000  # >= 65535 labels: uint32
    dP = rng.standard_normal((3, 3, 12, 14)).astype(np.float32)
    cellprob = rng.standard_normal((3, 12, 14)).astype(np.float32)
    path = outputs.save_seg_npy(vol, [None, dP, cellprob], tmp_path / "v.tif")
    seg = np.load(path, allow_pickle=True).item()
    assert seg["masks"].dtype == np.uint32 and seg["chan_choose"] == [0, 0]
    f = seg["flows"]
    assert f[0].shape == (3, 12, 14, 3) and f[1].shape == (3, 12, 14) and f[2].shape == (3, 12, 14)
    np.testing.assert_array_equal(f[0], flow_to_rgb(dP))
    np.testing.assert_array_equal(f[2], np.clip(dP[0] / 10 * 127 + 127, 0, 255).astype(np.uint8))
    assert f[4].shape == (4, 3, 12, 14)


# --------------------------------------------------------------------------------------------------
# ImageJ and QuPath outlines


def test_outlines_txt_round_trip(tmp_path):
    masks = _dsb_labels(2)
    path = outputs.save_outlines_txt(masks, tmp_path / "dsb_02_image.tif")
    assert path.name == "dsb_02_image_cp_outlines.txt"
    lines = path.read_text().split("\n")[:-1]
    expected = outlines_list(masks)
    assert len(lines) == len(expected) == len(np.unique(masks)) - 1
    for line, contour in zip(lines, expected):
        values = [int(v) for v in line.split(",")] if line else []
        np.testing.assert_array_equal(np.reshape(values, (-1, 2)), contour)


def test_rois_zip_round_trip_and_replace(tmp_path):
    from roifile import roiread

    masks = _toy_masks()
    path = outputs.save_rois_zip(masks, tmp_path / "toy.tif")
    assert path.name == "toy_rois.zip"
    rois = roiread(path)
    expected = [c for c in outlines_list(masks) if len(c)]
    assert len(rois) == len(expected) == 3  # the 1-pixel mask has no ROI, as in Cellpose
    assert [r.name for r in rois] == ["1", "2", "7"]
    for roi, contour in zip(rois, expected):
        np.testing.assert_array_equal(roi.coordinates(), contour)
    masks[masks == 2] = 0
    outputs.save_rois_zip(masks, tmp_path / "toy.tif")  # roifile alone would append
    assert len(roiread(path)) == 2


def test_geojson_round_trip(tmp_path):
    masks = _toy_masks()
    path = outputs.save_geojson(masks, tmp_path / "toy.tif", object_type="annotation")
    assert path.name == "toy.geojson"
    data = json.loads(path.read_text())
    assert data["type"] == "FeatureCollection"
    contours = dict(zip([1, 2, 7, 9], outlines_list(masks)))
    assert [f["properties"]["label"] for f in data["features"]] == [1, 2, 7]
    for feature in data["features"]:
        props = feature["properties"]
        assert props["objectType"] == "annotation" and props["measurements"] == {"label": props["label"]}
        assert feature["geometry"]["type"] == "Polygon"
        (ring,) = feature["geometry"]["coordinates"]
        assert ring[0] == ring[-1] and len(ring) >= 4
        np.testing.assert_array_equal(ring[:-1], contours[props["label"]])
    with pytest.raises(ValueError, match="object_type"):
        outputs.save_geojson(masks, tmp_path / "toy.tif", object_type="cell")
    with pytest.raises(ValueError, match="2D"):
        outputs.save_geojson(np.stack([masks, masks]), tmp_path / "toy.tif")


def test_bytes_writers_give_the_files_content(tmp_path):
    """``geojson_bytes``, ``rois_zip_bytes``, ``masks_tiff_bytes``: what the save_* functions write
    (and what ``cellflow-rt serve`` answers), built in memory."""
    masks = _toy_masks()
    image = tmp_path / "toy.tif"
    assert outputs.geojson_bytes(masks) == outputs.save_geojson(masks, image).read_bytes()
    with zipfile.ZipFile(BytesIO(outputs.rois_zip_bytes(masks))) as got, \
            zipfile.ZipFile(outputs.save_rois_zip(masks, image)) as want:
        entries = [(i.filename, i.compress_type, i.file_size, i.CRC) for i in want.infolist()]
        assert [(i.filename, i.compress_type, i.file_size, i.CRC) for i in got.infolist()] == entries
        assert [e[0] for e in entries] == ["1.roi", "2.roi", "7.roi"]
    for labels in (masks, np.stack([masks, masks[::-1]]), np.arange(70000, dtype=np.uint32).reshape(280, 250)):
        (path,) = outputs.save_masks(labels, image, png=False, tif=True)
        assert outputs.masks_tiff_bytes(labels) == path.read_bytes()
        with tifffile.TiffFile(BytesIO(outputs.masks_tiff_bytes(labels, compression=None))) as tif:
            assert tif.pages[0].compression == tifffile.COMPRESSION.NONE
            assert tif.series[0].dtype == (np.uint16 if labels.max() < 2**16 else np.uint32)
            np.testing.assert_array_equal(tif.asarray(), labels)
    for encode in (outputs.geojson_bytes, outputs.rois_zip_bytes):
        with pytest.raises(ValueError, match="2D"):
            encode(np.stack([masks, masks]))


# --------------------------------------------------------------------------------------------------
# flows files


def test_save_flows(tmp_path):
    flows = _flows_2d((20, 24))
    rgb_path, dp_path = outputs.save_flows([None, flows[1], flows[2]], tmp_path / "a.tif")
    assert (rgb_path.name, dp_path.name) == ("a_flows_cp_masks.tif", "a_dP_cp_masks.tif")
    with tifffile.TiffFile(rgb_path) as tif:
        assert tif.pages[0].photometric == tifffile.PHOTOMETRIC.RGB
        np.testing.assert_array_equal(tif.asarray(), flows[0])
    stack = tifffile.imread(dp_path)
    assert stack.dtype == np.float32 and stack.shape == (3, 20, 24)
    np.testing.assert_array_equal(stack, np.concatenate([flows[1], flows[2][None]]))
    with pytest.raises(ValueError, match="do not match"):
        outputs.save_flows([None, flows[1], flows[2][:5]], tmp_path / "b.tif")


def test_no_partial_file_when_a_writer_fails(tmp_path, monkeypatch):
    masks = _toy_masks()
    outputs.save_masks(masks, tmp_path / "img.tif", png=False, tif=True)
    before = (tmp_path / "img_cp_masks.tif").read_bytes()

    def disk_full(path, data=None, **kwargs):  # part of the file, then the error of a full disk
        with open(path, "wb") as fh:
            fh.write(b"II*\x00 half a file")
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch:  # the writers that build their bytes in memory first
        patch.setattr(Path, "write_bytes", disk_full)
        with pytest.raises(OutputWriteError, match="No space left"):
            outputs.save_masks(masks + 1, tmp_path / "img.tif", png=False, tif=True)
        with pytest.raises(OutputWriteError, match="No space left"):
            outputs.save_geojson(masks, tmp_path / "img.tif")
        with pytest.raises(OutputWriteError, match="No space left"):
            outputs.save_rois_zip(masks, tmp_path / "img.tif")
    with monkeypatch.context() as patch:  # those that stream through tifffile
        patch.setattr(tifffile, "imwrite", disk_full)
        with pytest.raises(OutputWriteError):
            outputs.save_masks_ome_tif(masks, tmp_path / "img.tif")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img_cp_masks.tif"]
    assert (tmp_path / "img_cp_masks.tif").read_bytes() == before
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        outputs.save_outlines_txt(masks, tmp_path / "img.tif")  # other writers unaffected
