"""Seed files of the image fuzz targets (tests/io/test_fuzz_images.py, tests/serve/test_fuzz_serve.py):
small valid TIFF, PNG, JPEG and ``.npy`` files, and the generic mutations (byte edits, truncation,
appended bytes) that start from them."""
from __future__ import annotations

import io

import numpy as np
from hypothesis import strategies as st

from fuzz_helpers import overwrite
from hostile_files import png_claiming


def _tiffs():
    import tifffile

    rng = np.random.default_rng(0)
    arrays = [
        (rng.integers(0, 255, (24, 20), dtype=np.uint8), {}),
        (rng.integers(0, 4000, (3, 16, 16), dtype=np.uint16), {"compression": "zlib"}),
        (rng.integers(0, 255, (32, 32, 3), dtype=np.uint8), {"tile": (16, 16), "photometric": "rgb"}),
        (rng.random((16, 16), dtype=np.float32), {"compression": "packbits" if False else None}),
    ]
    files = []
    for array, options in arrays:
        fh = io.BytesIO()
        tifffile.imwrite(fh, array, **{k: v for k, v in options.items() if v is not None})
        data = fh.getvalue()
        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            entries = [tag.offset for tag in tif.pages[0].tags.values()]
        files.append((data, entries))
    return files


def _pillow(mode_arrays, fmt, **options):
    from PIL import Image

    out = []
    for mode, array in mode_arrays:
        fh = io.BytesIO()
        Image.fromarray(array).convert(mode).save(fh, fmt, **options)
        out.append(fh.getvalue())
    return out


_GRAY = (np.arange(20 * 24) % 251).astype(np.uint8).reshape(20, 24)
_RGB = np.stack([_GRAY, _GRAY[::-1], _GRAY.T[:20, :24] if False else 255 - _GRAY], -1)
TIFFS = _tiffs()
PNGS = _pillow([("L", _GRAY), ("RGB", _RGB), ("RGBA", _RGB), ("P", _RGB), ("1", _GRAY)], "PNG") + \
    [png_claiming(4, 4)]
JPEGS = _pillow([("L", _GRAY), ("RGB", _RGB)], "JPEG", quality=90)


def _npys():
    out = []
    for array in (_GRAY, _GRAY.astype(np.float32), np.zeros((2, 5, 6), np.int16)):
        fh = io.BytesIO()
        np.save(fh, array)
        out.append(fh.getvalue())
    return out


NPYS = _npys()


EDITS = st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), max_size=8)


def mutated(bases):
    base = st.sampled_from(bases)
    return st.one_of(
        st.builds(overwrite, base, EDITS),
        st.builds(lambda data, n: data[:n % (len(data) + 1)], base, st.integers(0, 1 << 20)),
        st.builds(lambda data, extra: data + extra, base, st.binary(max_size=64)),
    )
