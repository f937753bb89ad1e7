"""Request bodies -> arrays (``cellflow_rt.serve.decode``): the format from Content-Type and
signature, the pixel limit before decoding, io's errors as the service's. (Reading the bytes is
``cellflow_rt.io.imread_bytes``, tested in test_io.py.)"""
from __future__ import annotations

import io

import numpy as np
import pytest
import tifffile
from pillow_codecs import jpeg_bytes, png_bytes

pytest.importorskip("starlette")

from cellflow_rt.io import imread  # noqa: E402
from cellflow_rt.serve.decode import (BadImageError, ImageTooLargeError, UnsupportedMediaTypeError,  # noqa: E402
                                      body_format, decode_image, sniff)


def _encoded(kind, array):
    if kind == "png":
        return png_bytes(array)
    if kind == "jpeg":
        return jpeg_bytes(array, 90)
    buffer = io.BytesIO()
    if kind == "npy":
        np.save(buffer, array)
    else:
        tifffile.imwrite(buffer, array, photometric="minisblack")
    return buffer.getvalue()


@pytest.mark.parametrize("kind,ext", [("tiff", ".tif"), ("png", ".png"), ("jpeg", ".jpg"), ("npy", ".npy")])
def test_body_is_sniffed_and_decoded_as_run_reads_the_file(tmp_path, kind, ext):
    rgba = np.random.default_rng(3).integers(0, 255, (40, 50, 4), dtype=np.uint8)
    array = rgba[..., :3] if kind == "jpeg" else rgba  # PNG: alpha dropped, as from a file
    data = _encoded(kind, array)
    (tmp_path / f"image{ext}").write_bytes(data)
    assert sniff(data) == kind and body_format("application/octet-stream", data) == kind
    decoded = decode_image(data, kind, 10**6)
    expected = imread(tmp_path / f"image{ext}")
    assert decoded.dtype == expected.dtype
    np.testing.assert_array_equal(decoded, expected)


@pytest.mark.parametrize("kind", ["tiff", "png", "jpeg", "npy"])
def test_size_is_checked_before_decoding(kind, monkeypatch):
    import cellflow_rt.serve.decode as decode

    data = _encoded(kind, np.zeros((300, 400), np.uint8))
    decode_image(data, kind, 300 * 400)

    def no_decoding(*args):
        raise AssertionError("decoded an image over the limit")

    monkeypatch.setattr(decode, "imread_bytes", no_decoding)
    with pytest.raises(ImageTooLargeError, match="limit"):
        decode_image(data, kind, 300 * 400 - 1)


def test_content_type_against_the_body():
    tif = _encoded("tiff", np.zeros((8, 8), np.uint8))
    assert body_format("image/tiff; charset=binary", tif) == "tiff"
    with pytest.raises(UnsupportedMediaTypeError, match="TIFF"):
        body_format("image/png", tif)
    with pytest.raises(UnsupportedMediaTypeError, match="text/plain"):
        body_format("text/plain", tif)
    with pytest.raises(BadImageError, match="empty"):
        body_format("image/tiff", b"")
    with pytest.raises(BadImageError, match="PNG signature"):
        body_format("image/png", b"garbage" * 10)
    with pytest.raises(UnsupportedMediaTypeError, match="signature"):
        body_format("", b"garbage" * 10)


def test_io_errors_become_bad_image_without_a_file_name(monkeypatch):
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    with pytest.raises(BadImageError, match="pickled"):
        decode_image(buffer.getvalue(), "npy", 10**6)
    png = _encoded("png", np.random.default_rng(0).integers(0, 255, (30, 30), dtype=np.uint8))
    with pytest.raises(BadImageError) as info:
        decode_image(png[: len(png) // 2], "png", 10**6)
    assert str(info.value).startswith("corrupt or truncated PNG")
    # running out of memory while decoding is the image's size, not its content
    def out_of_memory(*args, **kwargs):
        raise MemoryError("Unable to allocate 64 GiB")

    monkeypatch.setattr(np, "load", out_of_memory)
    with pytest.raises(ImageTooLargeError, match="memory"):
        decode_image(_encoded("npy", np.zeros((4, 4))), "npy", 10**6)
