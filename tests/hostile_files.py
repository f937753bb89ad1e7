"""Small files that declare huge images: a PNG or a TIFF header claiming far more pixels than its bytes hold.

Shared by the limit tests and the fuzz targets; each file is built here from its format's
specification (no image library writes a header without the pixels).
"""
from __future__ import annotations

import struct
import zlib


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_claiming(height: int, width: int, colour: int = 0, depth: int = 8) -> bytes:
    """A valid PNG header for ``height`` x ``width`` pixels followed by one row of data: under 100 bytes."""
    header = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    idat = zlib.compress(b"\x00" * min(height * (width + 1), 64), 9)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def tiff_claiming(height: int, width: int, samples: int = 1) -> bytes:
    """A little-endian TIFF whose one IFD declares ``height`` x ``width`` 8-bit pixels in one strip
    of 16 bytes: about 130 bytes."""
    tags = [  # (tag, type, count, value): SHORT = 3, LONG = 4
        (256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1),
        (273, 4, 1, 0), (277, 3, 1, samples), (278, 4, 1, height), (279, 4, 1, 16),
    ]
    ifd_size = 2 + 12 * len(tags) + 4
    data_offset = 8 + ifd_size
    entries = b"".join(
        struct.pack("<HHI", tag, kind, count) + (struct.pack("<I", data_offset if tag == 273 else value)
                                                 if kind == 4 else struct.pack("<HH", value, 0))
        for tag, kind, count, value in tags)
    return b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", len(tags)) + entries + b"\x00" * 4 + b"\x00" * 16
