"""Reading images: TIFF through tifffile, PNG and JPEG through Pillow, plain ``.npy`` arrays.

Follows Cellpose 3.1.1.1's ``io.imread`` (TIFF through tifffile, other images with the colour order RGB
and any alpha channel dropped) without OpenCV. tifffile decodes uncompressed, Deflate/zlib, PackBits
and LZMA TIFFs by itself; LZW- and JPEG-compressed TIFFs need imagecodecs, and when it is not
installed they are read through Pillow's libtiff instead (:mod:`.pillow_read`). Problems are reported at
this boundary as :class:`~cellflow_rt.io.errors.ImageReadError`, naming the file.
"""
from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import List

import numpy as np

from .discovery import IMAGE_EXTENSIONS
from .errors import ImageReadError, PathLike

__all__ = ["imread"]

TIFF_EXTENSIONS = (".tif", ".tiff", ".flex")
PNG_EXTENSIONS = (".png",)
JPEG_EXTENSIONS = (".jpg", ".jpeg")


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
    if ext not in TIFF_EXTENSIONS + PNG_EXTENSIONS + JPEG_EXTENSIONS + (".npy",):
        raise ImageReadError(path, f"unsupported extension {path.suffix!r} (supported: "
                                   f"{', '.join(IMAGE_EXTENSIONS)})")
    try:
        if path.stat().st_size == 0:
            raise ImageReadError(path, "the file is empty (0 bytes)")
        if ext in TIFF_EXTENSIONS:
            img = _read_tiff(path)
        elif ext == ".npy":
            img = _read_npy(path)
        else:
            img = _read_png_jpeg(path, ext)
    except ImageReadError:
        raise
    except OSError as exc:
        raise ImageReadError(path, exc.strerror or str(exc)) from exc
    except Exception as exc:  # decoders raise many types; name the file and chain the cause
        raise ImageReadError(path, f"corrupt or truncated file ({type(exc).__name__}: {exc})") from exc
    if img.size == 0:
        raise ImageReadError(path, f"the file holds no pixels (shape {img.shape})")
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


def _read_tiff(path: Path) -> np.ndarray:
    import tifffile

    errors = _TiffErrors()
    logger = logging.getLogger("tifffile")
    logger.addHandler(errors)
    try:
        with tifffile.TiffFile(path) as tif:
            if not tif.series:
                raise ImageReadError(path, "the TIFF holds no image series")
            try:
                img = tif.asarray()
            except ValueError as exc:
                if "imagecodecs" not in str(exc):  # tifffile: "<COMPRESSION.LZW: 5> requires the 'imagecodecs' package"
                    raise
                from .pillow_read import read_tiff_series
                img = read_tiff_series(path, tif.series[0], str(exc))
    finally:
        logger.removeHandler(errors)
    if errors.messages:
        raise ImageReadError(path, f"corrupt or truncated TIFF ({errors.messages[0]})")
    return img


def _read_npy(path: Path) -> np.ndarray:
    try:
        img = np.load(path, allow_pickle=False)
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise ImageReadError(path, "the .npy file holds pickled Python objects (a Cellpose _seg.npy?); "
                                       "only plain numeric arrays are read") from exc
        raise
    if not isinstance(img, np.ndarray) or img.dtype.kind not in "biuf":
        raise ImageReadError(path, f"expected a numeric array, got dtype {getattr(img, 'dtype', type(img))}")
    return img


def _read_png_jpeg(path: Path, ext: str) -> np.ndarray:
    from .pillow_read import read_png_jpeg

    if ext in JPEG_EXTENSIONS:
        _check_jpeg_complete(path, path.read_bytes())
    img = read_png_jpeg(path)
    if img.ndim == 3 and img.shape[-1] in (2, 4):
        # gray + alpha or RGB + alpha: drop alpha (Cellpose keeps the colour channels of BGRA)
        img = img[..., :-1]
        if img.shape[-1] == 1:
            img = img[..., 0]
    return np.ascontiguousarray(img)


def _check_jpeg_complete(path: Path, data: bytes) -> None:
    # libjpeg fills a truncated scan with gray and only warns, so check for the end-of-image marker
    # after the last start-of-scan marker (an EXIF thumbnail has its own markers earlier on).
    last_scan = data.rfind(b"\xff\xda")
    if data[:2] == b"\xff\xd8" and last_scan >= 0 and data.rfind(b"\xff\xd9") < last_scan:
        raise ImageReadError(path, "truncated JPEG (no end-of-image marker after the image data)")
