"""The shape of an image from its header alone, before anything is decoded.

A small compressed file can hold a huge image (a PNG of zeros compresses about 1000 to 1); whoever
takes images from others (``cellflow-rt serve``) checks this shape against a limit before
:func:`~.read.imread_bytes` allocates the array.
"""
from __future__ import annotations

import io
import struct
from typing import Optional, Tuple

from .errors import ImageReadError
from .limits import check_declared_shape
from .npy_header import _npy_shape, npy_header_shape
from .read import FORMAT_NAMES, FORMATS

__all__ = ["peek_shape", "npy_header_shape", "check_file_size"]


def peek_shape(data: bytes, format: str, name: Optional[str] = None) -> Tuple[int, ...]:
    """The array shape an image file's header announces, read without decoding the pixels.

    Parameters
    ----------
    data : bytes-like
        The file's bytes (only the header is looked at).
    format : {"tiff", "png", "jpeg", "npy"}
        As for :func:`~.read.imread_bytes`.
    name : str, optional
        What to call the image in error messages.

    Returns
    -------
    tuple of int
        TIFF: the first series' shape; PNG: (height, width, samples) with a palette counted as RGBA;
        JPEG: (height, width, components); ``.npy``: the array's shape. :func:`~.read.imread_bytes`
        gives an array with at most as many values (it drops alpha channels and converts palettes
        and CMYK).

    Raises
    ------
    ImageReadError
        A missing or corrupt header; an ``.npy`` header announcing pickled objects or a non-numeric
        dtype (refused before anything is unpickled).
    ValueError
        ``format`` is not one of :data:`~.read.FORMATS`.
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(map(repr, FORMATS))}, got {format!r}")
    try:
        return _HEADERS[format](data, name)
    except ImageReadError:
        raise
    except Exception as exc:  # struct, numpy and tifffile raise many types; one message
        raise ImageReadError(name, f"corrupt or truncated {FORMAT_NAMES[format]} header "
                                   f"({type(exc).__name__}: {exc})") from exc


def _png_shape(data: bytes, name: Optional[str]) -> Tuple[int, ...]:
    # signature (8), IHDR length and type (8), width, height, bit depth, colour type, ..., CRC (4)
    if len(data) < 33 or data[12:16] != b"IHDR":
        raise ImageReadError(name, "corrupt or truncated PNG (no IHDR header)")
    width, height, _, colour = struct.unpack(">IIBB", data[16:26])
    samples = {0: 1, 2: 3, 3: 4, 4: 2, 6: 4}.get(colour)  # palette images decode to RGB(A)
    if samples is None:
        raise ImageReadError(name, f"corrupt PNG (colour type {colour})")
    return (height, width, samples)


def _jpeg_shape(data: bytes, name: Optional[str]) -> Tuple[int, ...]:
    pos = 2  # after the start-of-image marker
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise ImageReadError(name, "corrupt JPEG (marker expected)")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            pos += 2
            continue
        length = struct.unpack(">H", data[pos + 2:pos + 4])[0]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # start of frame (not DHT, JPG, DAC)
            if pos + 10 > len(data):
                break
            height, width, components = struct.unpack(">HHB", data[pos + 5:pos + 10])
            return (height, width, components)
        if marker == 0xDA:  # start of scan before any frame header
            break
        pos += 2 + length
    raise ImageReadError(name, "corrupt or truncated JPEG (no frame header before the image data)")


def _tiff_shape(data: bytes, name: Optional[str]) -> Tuple[int, ...]:
    import tifffile

    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        if not tif.series:
            raise ImageReadError(name, "the TIFF holds no image series")
        shape = tuple(tif.series[0].shape)
    check_declared_shape(shape, name, "TIFF", limit=float("inf"))  # whole, non-negative numbers
    return shape


_HEADERS = {"png": _png_shape, "jpeg": _jpeg_shape, "npy": _npy_shape, "tiff": _tiff_shape}


def check_file_size(path) -> None:
    """Refuse an image file whose header declares more values than the in-memory ceiling.

    Reads the header only (a TIFF's IFDs, a PNG's IHDR, a JPEG's frame header, an ``.npy`` header),
    so that a caller can refuse such files before doing anything costly (``cellflow-rt run`` checks
    its inputs before it loads the model). Other problems are left to :func:`~.read.imread`.

    Parameters
    ----------
    path : path-like

    Raises
    ------
    cellflow_rt.io.limits.ImageTooLargeError
    """
    from pathlib import Path

    from .limits import ImageTooLargeError, check_declared_shape
    from .source import source_head

    path = Path(path)
    kind = next((k for k, extensions in FORMATS.items() if path.suffix.lower() in extensions), None)
    try:
        if kind == "tiff":
            import tifffile

            with tifffile.TiffFile(path) as tif:
                shape = tuple(tif.series[0].shape) if tif.series else ()
        elif kind in ("png", "npy", "jpeg"):
            head = source_head(path, 1 << 17 if kind != "jpeg" else 1 << 20)
            shape = _HEADERS[kind](head, str(path))
        else:
            return
    except ImageTooLargeError:
        raise
    except Exception:  # unreadable headers are the reader's to report, with its message
        return
    check_declared_shape(shape, path, FORMAT_NAMES[kind])
