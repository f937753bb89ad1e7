"""cellflow_rt.io: reading images, finding them in folders, atomic writes."""
import os
import shutil
import subprocess
import sys
import tempfile
from io import BytesIO as _BytesIO
from pathlib import Path

import numpy as np
import pytest
import tifffile
from pillow_codecs import jpeg_bytes, png_bytes

from cellflow_rt.io import (FORMATS, ImageReadError, OutputWriteError, atomic_write, find_images, image_stem,
                            imread, imread_bytes, peek_shape)

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
DSB = SHARED / "data" / "dsb2018_sample"


def _rng():
    return np.random.default_rng(7)


# --------------------------------------------------------------------------------------------------
# imread: formats


def test_tiff_2d_and_stack_round_trip(tmp_path):
    img2 = _rng().integers(0, 60000, (37, 53)).astype(np.uint16)
    stack = _rng().random((12, 20, 30)).astype(np.float32)  # >= 10 pages: Cellpose's page-by-page path
    tifffile.imwrite(tmp_path / "a.tif", img2)
    tifffile.imwrite(tmp_path / "b.TIFF", stack, compression="zlib")
    np.testing.assert_array_equal(imread(tmp_path / "a.tif"), img2)
    out = imread(str(tmp_path / "b.TIFF"))
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, stack)


def test_ome_tiff_gives_first_series_with_its_axes(tmp_path):
    vol = _rng().integers(0, 255, (4, 2, 16, 18)).astype(np.uint8)
    tifffile.imwrite(tmp_path / "v.ome.tif", vol, ome=True, metadata={"axes": "ZCYX"})
    np.testing.assert_array_equal(imread(tmp_path / "v.ome.tif"), vol)


# --------------------------------------------------------------------------------------------------
# imread: compressed TIFFs without imagecodecs (LZW and JPEG through Pillow's libtiff)


def _pillow_tiff(path, planes, compression, **kwargs):
    from PIL import Image

    images = [Image.fromarray(np.ascontiguousarray(p)) for p in planes]
    images[0].save(path, compression=compression, save_all=True, append_images=images[1:], **kwargs)


def _has_imagecodecs() -> bool:
    try:
        import imagecodecs  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.parametrize("compression", ["tiff_lzw", "tiff_adobe_deflate", "packbits"])
def test_lossless_compressed_tiffs(tmp_path, compression):
    # read through Pillow in a plain install (no imagecodecs, as in the test extra), else by tifffile
    rng = _rng()
    stack16 = rng.integers(0, 65535, (12, 40, 56)).astype(np.uint16)  # >= 10 pages, 16-bit
    rgb = rng.integers(0, 255, (40, 56, 3)).astype(np.uint8)
    plane32 = rng.random((40, 56)).astype(np.float32)
    for name, planes, expected in [("s.tif", list(stack16), stack16), ("rgb.tif", [rgb], rgb),
                                   ("f.tif", [plane32], plane32)]:
        _pillow_tiff(tmp_path / name, planes, compression)
        out = imread(tmp_path / name)
        assert out.dtype == expected.dtype and out.shape == expected.shape, name
        np.testing.assert_array_equal(out, expected)


def test_jpeg_compressed_tiff(tmp_path):
    yy, xx = np.mgrid[:64, :80]
    gray = (yy * 2 + xx).astype(np.uint8)
    rgb = np.stack([gray, 255 - gray, np.full_like(gray, 90)], axis=-1)
    _pillow_tiff(tmp_path / "g.tif", [gray, gray[::-1]], "jpeg", quality=95)
    _pillow_tiff(tmp_path / "c.tif", [rgb], "jpeg", quality=95)
    g, c = imread(tmp_path / "g.tif"), imread(tmp_path / "c.tif")
    assert g.shape == (2, 64, 80) and g.dtype == np.uint8 and c.shape == (64, 80, 3)
    assert np.abs(g[1].astype(int) - gray[::-1]).mean() < 3  # lossy, but the planes in order
    assert np.abs(c.astype(int) - rgb).mean() < 3  # channels in RGB order


@pytest.mark.skipif(_has_imagecodecs(), reason="imagecodecs is installed: tifffile reads these itself")
def test_layouts_without_an_exact_decoder_are_refused_naming_imagecodecs(tmp_path):
    from cellflow_rt.io.png import encode_png

    # a 16-bit RGB TIFF marked LZW: Pillow has no 16-bit RGB mode, so it must not be read at 8 bits
    rgb16 = _rng().integers(0, 65535, (16, 24, 3)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "rgb16.tif", rgb16, photometric="rgb")
    with tifffile.TiffFile(tmp_path / "rgb16.tif") as tif:
        tag = tif.pages[0].tags["Compression"]
        at = tag.valueoffset
    data = bytearray((tmp_path / "rgb16.tif").read_bytes())
    data[at:at + 2] = (5).to_bytes(2, "little")
    (tmp_path / "rgb16.tif").write_bytes(bytes(data))
    _assert_read_error(tmp_path / "rgb16.tif", "imagecodecs")
    (tmp_path / "rgb16.png").write_bytes(encode_png(rgb16))
    _assert_read_error(tmp_path / "rgb16.png", "16-bit colour", "imagecodecs")


def test_png_gray_16bit_rgb_and_alpha(tmp_path):
    rng = _rng()
    gray16 = rng.integers(0, 65535, (20, 30)).astype(np.uint16)
    rgb = rng.integers(0, 255, (20, 30, 3)).astype(np.uint8)
    rgba = np.concatenate([rgb, np.full((20, 30, 1), 128, np.uint8)], axis=-1)
    gray_alpha = np.stack([rgb[..., 0], rgb[..., 1]], axis=-1)
    for name, arr in [("g.png", gray16), ("rgb.png", rgb), ("rgba.PNG", rgba), ("la.png", gray_alpha)]:
        (tmp_path / name).write_bytes(png_bytes(arr))
    np.testing.assert_array_equal(imread(tmp_path / "g.png"), gray16)
    np.testing.assert_array_equal(imread(tmp_path / "rgb.png"), rgb)  # RGB order, not OpenCV's BGR
    np.testing.assert_array_equal(imread(tmp_path / "rgba.PNG"), rgb)  # alpha dropped
    np.testing.assert_array_equal(imread(tmp_path / "la.png"), rgb[..., 0])  # gray + alpha -> gray


def test_jpeg_gray_and_rgb(tmp_path):
    yy, xx = np.mgrid[:40, :48]
    gray = (yy * 4 + xx).astype(np.uint8)
    rgb = np.stack([gray, 255 - gray, np.full_like(gray, 90)], axis=-1)
    (tmp_path / "g.jpg").write_bytes(jpeg_bytes(gray, 95))
    (tmp_path / "c.jpeg").write_bytes(jpeg_bytes(rgb, 95))
    g, c = imread(tmp_path / "g.jpg"), imread(tmp_path / "c.jpeg")
    assert g.shape == (40, 48) and g.dtype == np.uint8
    assert c.shape == (40, 48, 3)
    assert np.abs(c.astype(int) - rgb).mean() < 3  # lossy, but channels in RGB order
    assert np.abs(g.astype(int) - gray).mean() < 3


def test_npy_plain_array(tmp_path):
    arr = _rng().random((5, 6)).astype(np.float64)
    np.save(tmp_path / "a.npy", arr)
    np.testing.assert_array_equal(imread(tmp_path / "a.npy"), arr)


def test_real_dsb_image():
    if not DSB.is_dir():
        pytest.skip(f"shared data not found at {DSB}")
    path = DSB / "dsb_00_image.tif"
    img = imread(path)
    np.testing.assert_array_equal(img, tifffile.imread(path))
    assert img.dtype == np.uint8 and img.shape == (520, 696)


# --------------------------------------------------------------------------------------------------
# imread: errors


def _format_of(path):
    return next((kind for kind, extensions in FORMATS.items() if Path(path).suffix.lower() in extensions), None)


def _assert_read_error(path, *words):
    """imread refuses the file, naming it and the problem; imread_bytes refuses its bytes the same way."""
    with pytest.raises(ImageReadError) as info:
        imread(path)
    message = str(info.value)
    assert Path(path).name in message
    for word in words:
        assert word in message, message
    assert isinstance(info.value, ValueError)
    kind = _format_of(path)
    if kind and Path(path).is_file():
        data = Path(path).read_bytes()
        with pytest.raises(ImageReadError) as from_bytes:
            imread_bytes(data, kind)
        assert from_bytes.value.path is None and str(from_bytes.value).startswith("cannot read image: ")
        assert all(word in from_bytes.value.problem for word in words), from_bytes.value.problem
        if data:  # the same words up to the decoder's own message (which may name the file object)
            assert from_bytes.value.problem.split(" (")[0] == info.value.problem.split(" (")[0]
    return message


def test_missing_path_and_directory(tmp_path):
    _assert_read_error(tmp_path / "nope.tif", "no such file")
    (tmp_path / "folder.tif").mkdir()
    _assert_read_error(tmp_path / "folder.tif", "not a file")


@pytest.mark.parametrize("name", ["empty.tif", "empty.png", "empty.jpg", "empty.npy"])
def test_zero_byte_files(tmp_path, name):
    (tmp_path / name).write_bytes(b"")
    _assert_read_error(tmp_path / name, "empty")


def test_unsupported_extension(tmp_path):
    for name in ["a.bmp", "b.nd2", "c"]:
        (tmp_path / name).write_bytes(b"data")
        _assert_read_error(tmp_path / name, "unsupported extension")


def test_truncated_and_corrupt_tiff(tmp_path):
    stack = _rng().integers(0, 1000, (3, 64, 64)).astype(np.uint16)
    for kwargs in [{}, {"compression": "zlib"}]:
        tifffile.imwrite(tmp_path / "full.tif", stack, photometric="minisblack", **kwargs)
        data = (tmp_path / "full.tif").read_bytes()
        with tifffile.TiffFile(tmp_path / "full.tif") as tif:
            end_of_pixels = tif.pages[-1].dataoffsets[-1] + tif.pages[-1].databytecounts[-1]
        for cut in [4, 100, len(data) // 2, end_of_pixels - 10]:
            (tmp_path / "cut.tif").write_bytes(data[:cut])
            _assert_read_error(tmp_path / "cut.tif")
    (tmp_path / "garbage.tif").write_bytes(b"II*\x00" + bytes(range(256)) * 4)
    _assert_read_error(tmp_path / "garbage.tif")
    (tmp_path / "text.tif").write_bytes(b"this is not a tiff file at all")
    _assert_read_error(tmp_path / "text.tif")


def test_truncated_ome_tiff_is_not_silently_short(tmp_path):
    # tifffile only logs when an OME-TIFF's later pages are cut off and returns fewer planes
    stack = _rng().integers(0, 1000, (3, 64, 64)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "full.ome.tif", stack, ome=True, photometric="minisblack")
    data = (tmp_path / "full.ome.tif").read_bytes()
    for cut in [len(data) // 3, len(data) - 1000]:
        (tmp_path / "cut.ome.tif").write_bytes(data[:cut])
        _assert_read_error(tmp_path / "cut.ome.tif", "truncated")


def test_truncated_and_corrupt_png_jpeg(tmp_path):
    rgb = _rng().integers(0, 255, (64, 64, 3)).astype(np.uint8)
    png = png_bytes(rgb)
    jpg = jpeg_bytes(rgb)
    for name, data in [("a.png", png[: len(png) // 2]), ("b.png", png[:40]), ("c.png", b"\x89PNG garbage"),
                       ("d.jpg", jpg[: len(jpg) // 2]), ("e.jpg", jpg[: len(jpg) - 5]), ("f.jpg", b"\xff\xd8junk")]:
        (tmp_path / name).write_bytes(data)
        _assert_read_error(tmp_path / name)


def test_pickled_npy_is_refused(tmp_path):
    np.save(tmp_path / "img_seg.npy", {"masks": np.zeros((3, 3))}, allow_pickle=True)
    _assert_read_error(tmp_path / "img_seg.npy", "pickled")
    (tmp_path / "cut.npy").write_bytes((tmp_path / "img_seg.npy").read_bytes()[:60])
    _assert_read_error(tmp_path / "cut.npy")


# --------------------------------------------------------------------------------------------------
# imread_bytes and peek_shape: an image file's bytes in memory (errors: _assert_read_error above)


def _bytes_cases():
    rng = _rng()
    yy, xx = np.mgrid[:40, :50]
    smooth = (yy * 3 + xx).astype(np.uint8)
    rgb = rng.integers(0, 255, (40, 50, 3)).astype(np.uint8)
    buffer = _BytesIO()
    np.save(buffer, rng.random((4, 40, 50)).astype(np.float32))
    return [
        ("tiff", "u16", _tiff_bytes(rng.integers(0, 4000, (40, 50)).astype(np.uint16))),
        ("tiff", "stack", _tiff_bytes(rng.integers(0, 255, (12, 40, 50)).astype(np.uint8), compression="zlib")),
        ("tiff", "lzw_rgb", _pillow_tiff_bytes([rgb], "tiff_lzw")),  # Pillow's libtiff without imagecodecs
        ("tiff", "jpeg_gray", _pillow_tiff_bytes([smooth, smooth[::-1]], "jpeg", quality=95)),
        ("png", "u16", png_bytes(rng.integers(0, 65535, (40, 50)).astype(np.uint16))),
        ("png", "rgba", png_bytes(np.concatenate([rgb, rgb[..., :1]], -1))),  # alpha dropped
        ("png", "gray_alpha", png_bytes(rgb[..., :2])),
        ("png", "palette", _palette_png(rgb[..., 0] // 64)),  # decoded to RGB
        ("jpeg", "gray", jpeg_bytes(smooth, 90)),
        ("jpeg", "rgb", jpeg_bytes(rgb, 90)),
        ("npy", "f32", buffer.getvalue()),
    ]


def _tiff_bytes(array, **kwargs):
    buffer = _BytesIO()
    tifffile.imwrite(buffer, array, photometric="minisblack", **kwargs)
    return buffer.getvalue()


def _pillow_tiff_bytes(planes, compression, **kwargs):
    with tempfile.TemporaryDirectory() as folder:
        _pillow_tiff(Path(folder) / "x.tif", planes, compression, **kwargs)
        return (Path(folder) / "x.tif").read_bytes()


def _palette_png(indices):
    from PIL import Image

    image = Image.fromarray(indices.astype(np.uint8), mode="P")
    image.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255])
    buffer = _BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("kind,label,data", _bytes_cases(), ids=lambda v: v if isinstance(v, str) else "")
def test_bytes_are_read_as_the_file_is(tmp_path, kind, label, data):
    path = tmp_path / f"image{FORMATS[kind][0]}"
    path.write_bytes(data)
    expected = imread(path)
    for given in (data, bytearray(data), memoryview(data)):
        got = imread_bytes(given, kind)
        assert got.dtype == expected.dtype and got.shape == expected.shape
        np.testing.assert_array_equal(got, expected)
    # the header announces at least as many values as the decoded array holds (alpha, palette)
    shape = peek_shape(data, kind)
    assert shape[:2] == expected.shape[:2] or shape == expected.shape
    assert np.prod(shape) >= expected.size


@pytest.mark.parametrize("kind", list(FORMATS))
def test_peek_shape_before_decoding(kind):
    image = np.zeros((300, 400), np.uint8)
    data = {"tiff": lambda: _tiff_bytes(image), "png": lambda: png_bytes(image),
            "jpeg": lambda: jpeg_bytes(image), "npy": lambda: _npy_bytes(image)}[kind]()
    assert peek_shape(data, kind)[:2] == (300, 400)
    with pytest.raises(ImageReadError):
        peek_shape(data[:8], kind)


def _npy_bytes(array, **kwargs):
    buffer = _BytesIO()
    np.save(buffer, array, **kwargs)
    return buffer.getvalue()


def test_peek_shape_refuses_pickles_from_the_header():
    data = _npy_bytes(np.array([{"masks": 1}, None], dtype=object), allow_pickle=True)
    with pytest.raises(ImageReadError, match="pickled"):
        peek_shape(data, "npy")
    with pytest.raises(ImageReadError, match="numeric"):
        peek_shape(_npy_bytes(np.array(["a", "b"])), "npy")


def test_imread_bytes_arguments():
    with pytest.raises(ValueError, match="format"):
        imread_bytes(b"II*\x00", "bmp")
    with pytest.raises(ValueError, match="format"):
        peek_shape(b"II*\x00", "tif")
    with pytest.raises(ImageReadError, match=r"cannot read image 'upload\.png': .*PNG") as info:
        imread_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10, "png", name="upload.png")
    assert info.value.path == Path("upload.png")


# --------------------------------------------------------------------------------------------------
# find_images


def _touch(folder, *names):
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"x")


def test_find_images_cellpose_rules(tmp_path):
    _touch(tmp_path, "img10.tif", "img2.png", "img1.TIF", "photo.jpeg", "raw.npy", "stack.ome.tif",
           # outputs and labels of earlier runs, and non-images
           "img1_cp_masks.png", "img1_cp_masks.tif", "img1_cp_masks.ome.tif", "img1_seg.npy", "img1_masks.tif",
           "img1_flows.tif", "img1_flows_0.tif", "img1_cellprob.tif", "img1_cp_output.png",
           "img1_flows_cp_masks.tif", "img1_dP_cp_masks.tif", "img1_outlines_cp_masks.png",
           "img1_cp_outlines.txt", "img1_rois.zip", "img1.geojson", ".hidden.tif", "notes.txt",
           "sub/deep.tif")
    found = find_images(tmp_path)
    assert [p.name for p in found] == ["img1.TIF", "img2.png", "img10.tif", "photo.jpeg", "raw.npy",
                                       "stack.ome.tif"]
    assert all(p.parent == tmp_path for p in found)


def test_find_images_filters_and_subfolders(tmp_path):
    _touch(tmp_path, "a_img.tif", "a_labels.tif", "b_img.png", "c.tif", "s2/d_img.tif", "s10/e_img.tif",
           ".git/f_img.tif")
    assert [p.name for p in find_images(tmp_path, img_filter="_img")] == ["a_img.tif", "b_img.png"]
    assert [p.name for p in find_images(tmp_path, mask_filter="_labels")] == ["a_img.tif", "b_img.png", "c.tif"]
    deep = find_images(tmp_path, img_filter="_img", look_one_level_down=True)
    assert [p.relative_to(tmp_path).as_posix() for p in deep] == ["a_img.tif", "b_img.png", "s2/d_img.tif",
                                                                  "s10/e_img.tif"]


def test_find_images_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        find_images(tmp_path / "missing")
    with pytest.raises(ValueError, match="no images"):
        find_images(tmp_path)
    _touch(tmp_path, "a_cp_masks.png", "b.txt")
    with pytest.raises(ValueError, match="2 file"):
        find_images(tmp_path)


def test_find_images_on_shared_data():
    if not DSB.is_dir():
        pytest.skip(f"shared data not found at {DSB}")
    images = find_images(DSB, img_filter="_image")
    assert len(images) == 12 and images[0].name == "dsb_00_image.tif"


def test_image_stem():
    assert image_stem("a/b/cells_01.tif") == "cells_01"
    assert image_stem("x.y.OME.TIFF") == "x.y"
    assert image_stem("plain") == "plain"


# --------------------------------------------------------------------------------------------------
# atomic_write


def _entries(folder):
    return sorted(p.name for p in folder.iterdir())


def test_atomic_write_success(tmp_path):
    target = tmp_path / "out.tif"
    with atomic_write(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.endswith("out.tif") and tmp.name.startswith(".")
        tifffile.imwrite(tmp, np.arange(6, dtype=np.uint16).reshape(2, 3))
    np.testing.assert_array_equal(tifffile.imread(target), np.arange(6).reshape(2, 3))
    assert _entries(tmp_path) == ["out.tif"]
    assert target.stat().st_mode & 0o777 == 0o666 & ~_umask()


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_atomic_write_leaves_nothing_when_the_writer_raises(tmp_path):
    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError, match="disk on fire"):
        with atomic_write(target) as tmp:
            tmp.write_bytes(b"half of a file")
            raise RuntimeError("disk on fire")
    assert _entries(tmp_path) == []
    # an existing file is left untouched
    target.write_bytes(b"old")
    with pytest.raises(KeyError):
        with atomic_write(target) as tmp:
            tmp.write_bytes(b"new partial")
            raise KeyError("boom")
    assert target.read_bytes() == b"old"
    assert _entries(tmp_path) == ["out.bin"]


def test_atomic_write_missing_folder_and_no_file(tmp_path):
    with pytest.raises(OutputWriteError, match="does not exist"):
        with atomic_write(tmp_path / "nope" / "x.txt"):
            pass
    with pytest.raises(OutputWriteError, match="produced no file"):
        with atomic_write(tmp_path / "y.txt") as tmp:
            tmp.unlink()
    assert _entries(tmp_path) == []


READ_ONLY_CHECK = r"""
import os, sys
from cellflow_rt.io import atomic_write, OutputWriteError
if os.geteuid() == 0:
    os.setgid(65534); os.setuid(65534)   # root ignores permissions: drop to 'nobody'
try:
    with atomic_write(os.path.join(sys.argv[1], "masks.tif")) as tmp:
        tmp.write_bytes(b"x")
except OutputWriteError as exc:
    print("ERROR:", exc)
"""


def test_read_only_folder_gives_a_clear_error():
    # a folder of its own under the system temp dir, so that 'nobody' can reach it when run as root
    folder = Path(tempfile.mkdtemp(prefix="cellflow-ro-"))
    folder.chmod(0o555)
    try:
        run = subprocess.run([sys.executable, "-c", READ_ONLY_CHECK, str(folder)], capture_output=True, text=True,
                             timeout=120)
        assert run.returncode == 0, run.stderr
        assert "ERROR: cannot write" in run.stdout and "masks.tif" in run.stdout
        assert "Permission denied" in run.stdout
        assert _entries(folder) == []
    finally:
        folder.chmod(0o755)
        shutil.rmtree(folder)
