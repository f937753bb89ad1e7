"""Reading images: TIFF through tifffile, PNG and JPEG through Pillow, plain ``.npy`` arrays.

Follows Cellpose 3.1.1.1's ``io.imread`` (TIFF through tifffile, other images with the colour order RGB
and any alpha channel dropped) without OpenCV. tifffile decodes uncompressed, Deflate/zlib, PackBits
and LZMA TIFFs by itself; LZW- and JPEG-compressed TIFFs need imagecodecs, and when it is not
installed they are read through Pillow's libtiff instead (:mod:`.pillow_read`).

:func:`imread` reads a file, :func:`imread_bytes` a file's bytes already in memory (an upload), through
the same code (:mod:`.source`); :func:`~.peek.peek_shape` gives the shape from the header alone. Problems
are reported at this boundary as :class:`~cellflow_rt.io.errors.ImageReadError`, naming the file.
"""
from __future__ import annotations

import io
import logging
import threading
from pathlib import Path
from typing import List, Optional

import numpy as np

from .discovery import IMAGE_EXTENSIONS
from .errors import ImageReadError, PathLike
from .limits import check_declared_shape
from .npy_header import npy_header_shape
from .source import Source, source_bytes, source_head

__all__ = ["imread", "imread_bytes", "FORMATS"]

TIFF_EXTENSIONS = (".tif", ".tiff", ".flex")
PNG_EXTENSIONS = (".png",)
JPEG_EXTENSIONS = (".jpg", ".jpeg")
#: The formats read (the ``format`` of :func:`imread_bytes`) and their file extensions.
FORMATS = {"tiff": TIFF_EXTENSIONS, "png": PNG_EXTENSIONS, "jpeg": JPEG_EXTENSIONS, "npy": (".npy",)}
#: Each format's name in messages.
FORMAT_NAMES = {"tiff": "TIFF", "png": "PNG", "jpeg": "JPEG", "npy": ".npy array"}


def imread(path: PathLike) -> np.ndarray:
    """Read an image file into an array with its own dtype and axes.

    Parameters
    ----------
    path : str or path-like
        A TIFF (``.tif``, ``.tiff``, ``.flex``; multi-page stacks and OME-TIFF give their first series,
        as Cellpose reads them), a PNG or JPEG (colour as RGB; an alpha channel is dropped), or a
        ``.npy`` array (loaded without pickle support, so Cellpose ``_seg.npy`` files are refused).

    Returns
    -------
    ndarray
        (Ly, Lx), (Ly, Lx, 3) for colour PNG/JPEG, or the TIFF series' shape, e.g. (Lz, Ly, Lx).

    Raises
    ------
    ImageReadError
        The path does not exist or is not a file, the file is empty, corrupt or truncated, or its
        extension is not supported.
    ImageTooLargeError
        (an ImageReadError) The header declares more array values than
        :func:`~.limits.max_values` allows; refused before anything is decoded.

    See Also
    --------
    imread_bytes : the same from a file's bytes in memory.

    Examples
    --------
    >>> img = imread("cells.tif")  # doctest: +SKIP
    """
    path = Path(path)
    if not path.exists():
        raise ImageReadError(path, "no such file")
    if not path.is_file():
        raise ImageReadError(path, "not a file")
    ext = path.suffix.lower()
    kind = next((kind for kind, extensions in FORMATS.items() if ext in extensions), None)
    if kind is None:
        raise ImageReadError(path, f"unsupported extension {path.suffix!r} (supported: "
                                   f"{', '.join(IMAGE_EXTENSIONS)})")
    try:
        empty = path.stat().st_size == 0
    except OSError as exc:
        raise ImageReadError(path, exc.strerror or str(exc)) from exc
    if empty:
        raise ImageReadError(path, "the file is empty (0 bytes)")
    return _read(path, kind, path)


def imread_bytes(data: bytes, format: str, name: Optional[str] = None) -> np.ndarray:
    """Read an image file's bytes (already in memory) exactly as :func:`imread` reads the file.

    Parameters
    ----------
    data : bytes-like
        The whole file (``bytes``, ``bytearray`` or ``memoryview``); for a binary stream pass
        ``stream.read()``.
    format : {"tiff", "png", "jpeg", "npy"}
        The file's format (:data:`FORMATS`).
    name : str, optional
        What to call the image in error messages (e.g. its file name), if anything.

    Returns
    -------
    ndarray
        As :func:`imread`.

    Raises
    ------
    ImageReadError
        The bytes are empty, corrupt or truncated, or need a decoder that is not installed.
    ImageTooLargeError
        (an ImageReadError) The header declares more array values than
        :func:`~.limits.max_values` allows; refused before anything is decoded.
    ValueError
        ``format`` is not one of :data:`FORMATS`.

    Examples
    --------
    >>> img = imread_bytes(request_body, "png")  # doctest: +SKIP
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(map(repr, FORMATS))}, got {format!r}")
    if not len(data):
        raise ImageReadError(name, f"the {FORMAT_NAMES[format]} is empty (0 bytes)")
    return _read(io.BytesIO(data), format, name)


def _read(source: Source, kind: str, where: Optional[PathLike]) -> np.ndarray:
    """The image in ``source`` (a path or bytes), its problems reported as ImageReadError naming ``where``."""
    try:
        img = _READERS[kind](source, where)
    except ImageReadError:
        raise
    except MemoryError as exc:
        raise ImageReadError(where, f"not enough memory to decode the {FORMAT_NAMES[kind]}") from exc
    except Exception as exc:  # decoders raise many types; name the file and chain the cause
        if isinstance(exc, OSError) and exc.errno is not None:  # the file system's (permission, I/O error)
            raise ImageReadError(where, exc.strerror or str(exc)) from exc
        raise ImageReadError(where, f"corrupt or truncated {FORMAT_NAMES[kind]} "
                                    f"({type(exc).__name__}: {exc})") from exc
    if img.size == 0:
        raise ImageReadError(where, f"the {FORMAT_NAMES[kind]} holds no pixels (shape {img.shape})")
    return img


class _TiffErrors(logging.Handler):
    """Collects error records tifffile logs from this thread (it logs, and carries on, when a file is
    truncated: pages go missing instead of an exception)."""

    def __init__(self):
        super().__init__(level=logging.ERROR)
        self.thread = threading.get_ident()
        self.messages: List[str] = []

    def emit(self, record):
        if record.thread == self.thread:
            self.messages.append(record.getMessage())


def _read_tiff(source: Source, where: Optional[PathLike]) -> np.ndarray:
    import tifffile

    errors = _TiffErrors()
    logger = logging.getLogger("tifffile")
    logger.addHandler(errors)
    try:
        with tifffile.TiffFile(source) as tif:
            if not tif.series:
                raise ImageReadError(where, "the TIFF holds no image series")
            # tifffile parses the header only; asarray() allocates the series' declared shape
            check_declared_shape(tif.series[0].shape, where, "TIFF")
            try:
                img = tif.asarray()
            except ValueError as exc:
                if "imagecodecs" not in str(exc):  # tifffile: "<COMPRESSION.LZW: 5> requires the 'imagecodecs' package"
                    raise
                from .pillow_read import read_tiff_series
                img = read_tiff_series(source, tif.series[0], str(exc), where)
    finally:
        logger.removeHandler(errors)
    if errors.messages:
        raise ImageReadError(where, f"corrupt or truncated TIFF ({errors.messages[0]})")
    return img


def _read_npy(source: Source, where: Optional[PathLike]) -> np.ndarray:
    # numpy allocates the declared shape before reading the data; a v1 header is at most 64 KiB
    check_declared_shape(npy_header_shape(source_head(source, 1 << 17), where), where, ".npy array")
    try:
        img = np.load(source, allow_pickle=False)
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise ImageReadError(where, "the .npy file holds pickled Python objects (a Cellpose _seg.npy?); "
                                       "only plain numeric arrays are read") from exc
        raise
    if not isinstance(img, np.ndarray) or img.dtype.kind not in "biuf":
        raise ImageReadError(where, f"expected a numeric array, got dtype {getattr(img, 'dtype', type(img))}")
    return img


def _read_png(source: Source, where: Optional[PathLike]) -> np.ndarray:
    from .pillow_read import read_png_jpeg

    return _drop_alpha(read_png_jpeg(source, "png", where))


def _read_jpeg(source: Source, where: Optional[PathLike]) -> np.ndarray:
    from .pillow_read import read_png_jpeg

    _check_jpeg_complete(source_bytes(source), where)
    return _drop_alpha(read_png_jpeg(source, "jpeg", where))


def _drop_alpha(img: np.ndarray) -> np.ndarray:
    if img.ndim == 3 and img.shape[-1] in (2, 4):
        # gray + alpha or RGB + alpha: drop alpha (Cellpose keeps the colour channels of BGRA)
        img = img[..., :-1]
        if img.shape[-1] == 1:
            img = img[..., 0]
    return np.ascontiguousarray(img)


def _check_jpeg_complete(data: bytes, where: Optional[PathLike]) -> None:
    # libjpeg fills a truncated scan with gray and only warns, so check for the end-of-image marker
    # after the last start-of-scan marker (an EXIF thumbnail has its own markers earlier on).
    last_scan = data.rfind(b"\xff\xda")
    if data[:2] == b"\xff\xd8" and last_scan >= 0 and data.rfind(b"\xff\xd9") < last_scan:
        raise ImageReadError(where, "truncated JPEG (no end-of-image marker after the image data)")


_READERS = {"tiff": _read_tiff, "png": _read_png, "jpeg": _read_jpeg, "npy": _read_npy}
