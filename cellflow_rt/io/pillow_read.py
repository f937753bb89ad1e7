"""Decoding through Pillow: PNG and JPEG files (or their bytes), and the LZW/JPEG-compressed TIFFs
that tifffile cannot decode without imagecodecs (Pillow's wheels ship libtiff, libjpeg-turbo and zlib).

Pillow returns what OpenCV (Cellpose's reader) returns for 8-bit and 16-bit gray, RGB and RGBA
PNGs and for JPEGs (the same libjpeg-turbo arithmetic), but reduces 16-bit colour to 8 bits and has
no mode for some TIFF layouts (16-bit RGB, unsigned 32-bit, more than four interleaved samples).
Those are refused with a message that names imagecodecs, which reads them (``pip install
imagecodecs``, or ``cellflow-rt[codecs]``): nothing is ever silently truncated.
"""
from __future__ import annotations

import contextlib
import struct
import threading
from typing import Optional

import numpy as np

from .errors import ImageReadError, PathLike
from .limits import check_declared_shape
from .source import Source, open_source, source_bytes, source_head

__all__ = ["read_png_jpeg", "read_tiff_series"]

#: What to install for the formats Pillow cannot give at full precision.
CODECS_HINT = "install imagecodecs to read it (pip install imagecodecs, or the cellflow-rt[codecs] extra)"

_PIXEL_LIMIT_LOCK = threading.Lock()


@contextlib.contextmanager
def _no_pixel_limit():
    # Pillow refuses images above ~179 megapixels (a guard against decompression bombs from the web);
    # microscope images are that large and were chosen by the user, so lift the module-wide limit
    # while opening one.
    from PIL import Image

    with _PIXEL_LIMIT_LOCK:
        limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = limit


def _png_is_16bit_colour(source: Source) -> bool:
    head = source_head(source, 26)
    # signature (8), IHDR length + type (8), width, height (8), bit depth, colour type
    return len(head) == 26 and head[12:16] == b"IHDR" and head[24] == 16 and head[25] in (2, 6)


def _declared_shape(im) -> tuple:
    """The shape :func:`_as_array` would give an opened (not yet decoded) Pillow image, or more."""
    bands = 4 if im.mode in ("P", "PA") else len(im.getbands())
    return (im.height, im.width, bands)


def _as_array(im) -> np.ndarray:
    """Pixels of an opened Pillow image: the sample type of the file, colour as RGB(A)."""
    if im.mode == "1":  # bilevel: 0 / 255 as OpenCV gives
        im = im.convert("L")
    elif im.mode in ("P", "PA"):  # palette: the colours, with alpha when the palette has transparency
        im = im.convert("RGBA" if im.mode == "PA" or "transparency" in im.info else "RGB")
    elif im.mode == "CMYK":
        im = im.convert("RGB")
    arr = np.asarray(im)
    return arr.astype(arr.dtype.newbyteorder("="), copy=False) if arr.dtype.byteorder == ">" else arr


def read_png_jpeg(source: Source, kind: str, where: Optional[PathLike]) -> np.ndarray:
    """A PNG or JPEG (``kind`` "png" or "jpeg") as an array (alpha still present; the caller drops it).

    Parameters
    ----------
    source : Path or io.BytesIO
        The file, or its bytes.
    kind : {"png", "jpeg"}
    where : path-like or None
        What errors name.
    """
    from PIL import Image

    if kind == "png" and _png_is_16bit_colour(source):
        try:
            import imagecodecs
        except ImportError:
            raise ImageReadError(where, f"16-bit colour PNG: Pillow would keep only 8 bits per sample; "
                                        f"{CODECS_HINT}") from None
        width, height = struct.unpack(">II", source_head(source, 24)[16:24])
        check_declared_shape((height, width, 4), where, "PNG")
        return imagecodecs.png_decode(source_bytes(source))
    with open_source(source) as fh, _no_pixel_limit():  # errors opening the file stay OSErrors
        try:
            with Image.open(fh) as im:
                # Pillow has parsed the header only: refuse a declared size before decoding it
                check_declared_shape(_declared_shape(im), where, kind.upper())
                im.load()
                arr = _as_array(im)
        except ImageReadError:
            raise
        except (OSError, SyntaxError, ValueError, EOFError) as exc:  # Pillow's errors for bad data
            raise ImageReadError(where, f"corrupt or truncated {kind.upper()} "
                                        f"({type(exc).__name__}: {exc})") from exc
    if arr.dtype == np.int32 and kind == "png":  # older Pillow: 16-bit gray as mode "I"
        arr = arr.astype(np.uint16)
    return arr


def read_tiff_series(source: Source, series, problem: str, where: Optional[PathLike]) -> np.ndarray:
    """tifffile's ``series`` (shape, dtype and pages from its metadata), its pages decoded by Pillow.

    Parameters
    ----------
    source : Path or io.BytesIO
        The TIFF, or its bytes.
    series : tifffile.TiffPageSeries
        The series to read (Cellpose reads the first).
    problem : str
        tifffile's message, quoted when Pillow cannot give the exact pixels either.
    where : path-like or None
        What errors name.
    """
    from PIL import Image

    pages = list(series.pages)
    refusal = f"{problem}; Pillow cannot read this layout exactly either: {CODECS_HINT}"
    if not pages or any(page is None or not isinstance(page.index, int) for page in pages):
        raise ImageReadError(where, refusal)
    planes = []
    with open_source(source) as fh, _no_pixel_limit(), Image.open(fh) as im:
        for page in pages:
            try:
                im.seek(page.index)
                plane = _as_array(im)
            except (OSError, ValueError, EOFError) as exc:
                raise ImageReadError(where, f"{refusal} ({type(exc).__name__}: {exc})") from exc
            if plane.shape != tuple(page.shape) or plane.dtype != series.dtype:
                raise ImageReadError(where, f"{refusal} (Pillow gives {plane.dtype} {plane.shape} for a "
                                           f"{series.dtype} {tuple(page.shape)} page)")
            planes.append(plane)
    return np.stack(planes).reshape(series.shape)
