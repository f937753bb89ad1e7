"""Request bodies -> arrays (``cellflow_rt.serve.decode``): the same arrays as ``io.imread`` reads
from files, the size known before decoding, each problem named."""
from __future__ import annotations

import io

import numpy as np
import pytest
import tifffile

pytest.importorskip("starlette")

from cellflow_rt.io import imread  # noqa: E402
from cellflow_rt.serve.decode import (BadImageError, ImageTooLargeError, UnsupportedMediaTypeError,  # noqa: E402
                                      _header_shape, body_format, decode_image, sniff)


def _encoded(kind, array):
    import imagecodecs

    if kind == "png":
        return imagecodecs.png_encode(array)
    if kind == "jpeg":
        return imagecodecs.jpeg8_encode(array, level=90)
    buffer = io.BytesIO()
    if kind == "npy":
        np.save(buffer, array)
    else:
        tifffile.imwrite(buffer, array, photometric="minisblack" if array.ndim != 3 or array.shape[-1] > 4
                         else None)
    return buffer.getvalue()


_RNG = np.random.default_rng(3)
CASES = [
    ("tiff", ".tif", _RNG.integers(0, 4000, (40, 50), dtype=np.uint16)),
    ("tiff", ".tif", _RNG.integers(0, 255, (3, 40, 50), dtype=np.uint8)),
    ("png", ".png", _RNG.integers(0, 255, (40, 50), dtype=np.uint8)),
    ("png", ".png", _RNG.integers(0, 65535, (40, 50), dtype=np.uint16)),
    ("png", ".png", _RNG.integers(0, 255, (40, 50, 3), dtype=np.uint8)),
    ("png", ".png", _RNG.integers(0, 255, (40, 50, 4), dtype=np.uint8)),  # RGBA: alpha dropped
    ("png", ".png", _RNG.integers(0, 255, (40, 50, 2), dtype=np.uint8)),  # gray + alpha
    ("jpeg", ".jpg", _RNG.integers(0, 255, (40, 50), dtype=np.uint8)),
    ("jpeg", ".jpg", _RNG.integers(0, 255, (40, 50, 3), dtype=np.uint8)),
    ("npy", ".npy", _RNG.random((4, 40, 50)).astype(np.float32)),
]


@pytest.mark.parametrize("kind,ext,array", CASES, ids=[f"{c[0]}-{c[2].shape}-{c[2].dtype}" for c in CASES])
def test_bytes_decode_like_imread_reads_the_file(tmp_path, kind, ext, array):
    data = _encoded(kind, array)
    path = tmp_path / f"image{ext}"
    path.write_bytes(data)
    assert sniff(data) == kind and body_format("application/octet-stream", data) == kind
    decoded = decode_image(data, kind, 10**6)
    expected = imread(path)
    assert decoded.dtype == expected.dtype
    np.testing.assert_array_equal(decoded, expected)
    # the header's shape bounds the decoded one (a palette or alpha may shrink it, never grow it)
    assert np.prod(_header_shape(data, kind)) >= decoded.size


@pytest.mark.parametrize("kind", ["tiff", "png", "jpeg", "npy"])
def test_size_is_checked_before_decoding(kind):
    data = _encoded(kind, np.zeros((300, 400), np.uint8))
    assert _header_shape(data, kind)[:2] == (300, 400)
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


def test_npy_with_objects_is_refused_without_unpickling():
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    with pytest.raises(BadImageError, match="pickled"):
        decode_image(buffer.getvalue(), "npy", 10**6)
