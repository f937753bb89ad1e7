"""cellflow_rt.io.png: PNG files written whole or band by band, read back by Pillow."""
import numpy as np
import pytest
from pillow_codecs import decode

from cellflow_rt.io.png import PngWriter, encode_png, write_png, write_png_bands


@pytest.mark.parametrize("shape, dtype", [((37, 53), np.uint8), ((37, 53), np.uint16), ((37, 53, 3), np.uint8),
                                          ((5, 7, 4), np.uint8), ((1, 1), np.uint16)])
def test_whole_images_round_trip(tmp_path, shape, dtype):
    image = np.random.default_rng(3).integers(0, np.iinfo(dtype).max, shape, endpoint=True).astype(dtype)
    path = write_png(tmp_path / "a.png", image)
    out = decode(path)
    assert out.dtype == dtype and out.shape == shape
    np.testing.assert_array_equal(out, image)
    np.testing.assert_array_equal(decode(encode_png(image)), image)


def test_bands_give_the_whole_image(tmp_path):
    # random bytes do not compress: > 1 MiB of IDAT, so the file has several IDAT chunks
    image = np.random.default_rng(4).integers(0, 65535, (700, 900)).astype(np.uint16)
    bands = (image[y:y + 64] for y in range(0, 700, 64))
    streamed = write_png_bands(tmp_path / "bands.png", image.shape, image.dtype, bands)
    assert streamed.read_bytes().count(b"IDAT") > 1
    np.testing.assert_array_equal(decode(streamed), image)


def test_wrong_rows_and_types_are_refused(tmp_path):
    with pytest.raises(ValueError, match="uint8 or uint16"):
        encode_png(np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError, match="1 \\(gray\\), 3 \\(RGB\\) or 4"):
        encode_png(np.zeros((4, 4, 2), np.uint8))
    with pytest.raises(ValueError, match="rows written"):
        write_png_bands(tmp_path / "short.png", (10, 4), np.uint8, [np.zeros((6, 4), np.uint8)])
    assert not (tmp_path / "short.png").exists()  # atomic: no partial file
    with open(tmp_path / "x.png", "wb") as fh:
        png = PngWriter(fh, 2, 4, np.uint8)
        with pytest.raises(ValueError, match="shape"):
            png.write_rows(np.zeros((1, 5), np.uint8))
        with pytest.raises(ValueError, match="more than 2 rows"):
            png.write_rows(np.zeros((3, 4), np.uint8))
