"""Writing PNG files, whole or a band of rows at a time: the standard library's zlib, no image library.

Pillow (which reads our PNG and JPEG inputs) writes a PNG only from a whole image in memory; masks
of a blockwise run can be larger than memory, so the writer here takes rows in bands and streams
them through one zlib stream. Every row uses PNG filter 0 ("None"), which keeps label images
small (long runs of equal values) and makes the writer a few lines of numpy. The output is a plain
non-interlaced PNG that any decoder opens: 8- or 16-bit gray, RGB or RGBA.
"""
from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import BinaryIO, Iterable

import numpy as np

from .atomic import atomic_write

__all__ = ["PngWriter", "write_png", "write_png_bands", "encode_png"]

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: channels -> PNG colour type (gray, RGB, RGBA)
_COLOUR_TYPE = {1: 0, 3: 2, 4: 6}
#: Compressed bytes gathered before an IDAT chunk is written.
_IDAT_BYTES = 1 << 20
#: The PNG format's largest width or height (2**31 - 1).
MAX_SIDE = 2**31 - 1


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


class PngWriter:
    """Write a PNG to an open binary file band by band.

    Parameters
    ----------
    fh : binary file
        Where the PNG goes (positioned at its start).
    height, width : int
        Image size in pixels (1 .. 2**31 - 1).
    dtype : uint8 or uint16
        Sample type (8- or 16-bit PNG).
    channels : {1, 3, 4}
        Gray, RGB or RGBA.
    level : int
        zlib compression level.

    Examples
    --------
    >>> with open("big.png", "wb") as fh:  # doctest: +SKIP
    ...     png = PngWriter(fh, 40000, 30000, np.uint16)
    ...     for y in range(0, 40000, 1024):
    ...         png.write_rows(labels[y:y + 1024])
    ...     png.close()
    """

    def __init__(self, fh: BinaryIO, height: int, width: int, dtype, channels: int = 1, level: int = 6):
        dtype = np.dtype(dtype)
        if dtype not in (np.uint8, np.uint16):
            raise ValueError(f"PNG holds uint8 or uint16 samples, got {dtype}")
        if channels not in _COLOUR_TYPE:
            raise ValueError(f"PNG holds 1 (gray), 3 (RGB) or 4 (RGBA) channels, got {channels}")
        if not (0 < height <= MAX_SIDE and 0 < width <= MAX_SIDE):
            raise ValueError(f"a PNG is 1 to {MAX_SIDE} pixels on each side, got {height} x {width}")
        self.fh, self.height, self.width, self.channels = fh, int(height), int(width), channels
        self.dtype = dtype.newbyteorder(">")  # PNG samples are big-endian
        self.rows_written = 0
        self._zlib = zlib.compressobj(level)
        self._pending = []
        self._pending_bytes = 0
        header = struct.pack(">IIBBBBB", self.width, self.height, 8 * dtype.itemsize, _COLOUR_TYPE[channels], 0, 0, 0)
        fh.write(_SIGNATURE + _chunk(b"IHDR", header))

    def write_rows(self, rows) -> None:
        """Append rows: (n, width) for gray, (n, width, channels) otherwise."""
        rows = np.asarray(rows)
        expected = (self.width,) if self.channels == 1 else (self.width, self.channels)
        if rows.shape[1:] != expected:
            raise ValueError(f"rows must have shape (n, {', '.join(map(str, expected))}), got {rows.shape}")
        if self.rows_written + len(rows) > self.height:
            raise ValueError(f"more than {self.height} rows given")
        n = len(rows)
        band = np.zeros((n, 1 + self.width * self.channels * self.dtype.itemsize), np.uint8)  # column 0: filter 0
        band[:, 1:] = rows.astype(self.dtype, copy=False).reshape(n, -1).view(np.uint8)
        self._emit(self._zlib.compress(band))
        self.rows_written += n

    def _emit(self, data: bytes, final: bool = False) -> None:
        if data:
            self._pending.append(data)
            self._pending_bytes += len(data)
        if self._pending_bytes >= _IDAT_BYTES or (final and self._pending):
            self.fh.write(_chunk(b"IDAT", b"".join(self._pending)))
            self._pending, self._pending_bytes = [], 0

    def close(self) -> None:
        """Finish the file; every row must have been written."""
        if self.rows_written != self.height:
            raise ValueError(f"{self.rows_written} of {self.height} rows written")
        self._emit(self._zlib.flush(), final=True)
        self.fh.write(_chunk(b"IEND", b""))


def _layout(shape) -> tuple:
    if len(shape) == 2:
        return shape[0], shape[1], 1
    if len(shape) == 3:
        return shape
    raise ValueError(f"a PNG image is (height, width) or (height, width, channels), got shape {tuple(shape)}")


def write_png_bands(path, shape, dtype, bands: Iterable[np.ndarray], level: int = 6) -> Path:
    """Write ``path`` (atomically) from bands of rows, top to bottom, never holding the whole image.

    Parameters
    ----------
    path : str or path-like
        The PNG to write.
    shape : tuple
        (height, width) or (height, width, channels) of the whole image.
    dtype : uint8 or uint16
        Sample type.
    bands : iterable of ndarray
        Consecutive row bands, (n, width[, channels]) each, covering ``height`` rows in total.
    level : int
        zlib compression level.

    Returns
    -------
    Path
    """
    height, width, channels = _layout(shape)
    path = Path(path)
    with atomic_write(path) as tmp, open(tmp, "wb") as fh:
        png = PngWriter(fh, height, width, dtype, channels, level)
        for band in bands:
            png.write_rows(band)
        png.close()
    return path


def write_png(path, image, level: int = 6) -> Path:
    """Write a whole uint8/uint16 (height, width[, channels]) image to ``path`` (atomically)."""
    image = np.asarray(image)
    return write_png_bands(path, image.shape, image.dtype, [image], level)


def encode_png(image, level: int = 6) -> bytes:
    """PNG file bytes of a uint8/uint16 (height, width[, channels]) image."""
    import io

    image = np.asarray(image)
    height, width, channels = _layout(image.shape)
    buffer = io.BytesIO()
    png = PngWriter(buffer, height, width, image.dtype, channels, level)
    png.write_rows(image)
    png.close()
    return buffer.getvalue()
