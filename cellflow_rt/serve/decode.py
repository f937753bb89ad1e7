"""A request body -> an image array, in memory, with the size checked before anything is decoded.

The format comes from the ``Content-Type`` header or, for ``application/octet-stream`` or no header,
from the body's first bytes. The image is read the way :func:`cellflow_rt.io.imread` reads a file of
that format (TIFF: the first series; PNG/JPEG: RGB with any alpha channel dropped; ``.npy``: plain
numeric arrays only, never pickles), from the bytes instead of a path: nothing touches the disk.
Before decoding, each format's header gives the array's shape, so that a small compressed body that
would expand past the server's pixel limit is refused without allocating it.
"""
from __future__ import annotations

import io
import logging
import struct
import threading
from typing import List, Optional, Tuple

import numpy as np

#: Content-Type -> format; ``application/octet-stream`` (or no header) is sniffed.
CONTENT_TYPES = {
    "image/tiff": "tiff", "image/tif": "tiff", "image/x-tiff": "tiff",
    "image/png": "png",
    "image/jpeg": "jpeg", "image/jpg": "jpeg",
    "application/x-npy": "npy", "application/npy": "npy",
}
SNIFFED_TYPES = ("application/octet-stream", "")

_SIGNATURES = (
    (b"II*\x00", "tiff"), (b"MM\x00*", "tiff"), (b"II+\x00", "tiff"), (b"MM\x00+", "tiff"),
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpeg"),
    (b"\x93NUMPY", "npy"),
)


class BadImageError(ValueError):
    """The body is empty, corrupt, truncated, or not an image array the pipeline can take (400)."""


class UnsupportedMediaTypeError(ValueError):
    """The Content-Type is not one the service reads, or it contradicts the body (415)."""


class ImageTooLargeError(ValueError):
    """The image holds more pixel values than the server accepts (413)."""


def sniff(data: bytes) -> Optional[str]:
    """The format of ``data`` from its signature ("tiff", "png", "jpeg", "npy"), or None."""
    for signature, kind in _SIGNATURES:
        if data.startswith(signature):
            return kind
    return None


def check_media_type(content_type: str) -> str:
    """The media type of a ``Content-Type`` header, if the service reads it.

    Raises
    ------
    UnsupportedMediaTypeError
    """
    media = content_type.split(";")[0].strip().lower()
    if media not in CONTENT_TYPES and media not in SNIFFED_TYPES:
        raise UnsupportedMediaTypeError(
            f"Content-Type {media!r} is not read here; send image/tiff, image/png, image/jpeg, "
            f"application/x-npy, or application/octet-stream to have the format recognised")
    return media


def body_format(content_type: str, data: bytes) -> str:
    """The format to decode ``data`` as, from the ``Content-Type`` header and the body's signature.

    Raises
    ------
    BadImageError
        An empty body, or one whose declared format's signature is missing.
    UnsupportedMediaTypeError
        An unknown Content-Type, a body of another image format than declared, or an unsniffable
        body sent as ``application/octet-stream``.
    """
    media = check_media_type(content_type)
    if not data:
        raise BadImageError("the request body is empty (0 bytes): send the image file's bytes")
    found = sniff(data)
    declared = CONTENT_TYPES.get(media)
    if declared is None:
        if found is None:
            raise UnsupportedMediaTypeError("the body is not a TIFF, PNG, JPEG or .npy file "
                                            "(no known signature in its first bytes)")
        return found
    if found is not None and found != declared:
        raise UnsupportedMediaTypeError(f"Content-Type {media} but the body is a {found.upper()} file")
    if found is None:
        raise BadImageError(f"the body is not a {declared.upper()} file (no {declared.upper()} signature)")
    return declared


def decode_image(data: bytes, kind: str, max_values: int) -> np.ndarray:
    """Decode a body of format ``kind`` into an array with its own dtype and axes.

    Parameters
    ----------
    data : bytes
        The image file's bytes.
    kind : {"tiff", "png", "jpeg", "npy"}
        From :func:`body_format`.
    max_values : int
        Largest number of array elements (pixels x planes x channels) accepted.

    Raises
    ------
    BadImageError, ImageTooLargeError
    """
    shape = _header_shape(data, kind)
    _check_size(shape, max_values)
    try:
        image = _DECODERS[kind](data)
    except (BadImageError, ImageTooLargeError):
        raise
    except MemoryError:
        raise ImageTooLargeError(f"decoding the {kind.upper()} ran out of memory") from None
    except Exception as exc:  # decoders raise many types; one line for the client
        raise BadImageError(f"corrupt or truncated {kind.upper()} ({type(exc).__name__}: {exc})") from None
    _check_size(image.shape, max_values)
    if image.size == 0:
        raise BadImageError(f"the {kind.upper()} holds no pixels (shape {image.shape})")
    return image


def _check_size(shape: Tuple[int, ...], max_values: int) -> None:
    values = int(np.prod(shape, dtype=np.float64))
    if values > max_values:
        raise ImageTooLargeError(f"the image has {values / 1e6:.1f} million pixel values (shape "
                                 f"{tuple(shape)}), over this server's limit of {max_values / 1e6:g} million")


# --------------------------------------------------------------------------------------------------
# headers: the shape before decoding


def _header_shape(data: bytes, kind: str) -> Tuple[int, ...]:
    try:
        return _HEADERS[kind](data)
    except BadImageError:
        raise
    except Exception as exc:
        raise BadImageError(f"corrupt or truncated {kind.upper()} header ({type(exc).__name__}: {exc})") from None


def _png_shape(data: bytes) -> Tuple[int, ...]:
    if len(data) < 33 or data[12:16] != b"IHDR":
        raise BadImageError("corrupt or truncated PNG (no IHDR header)")
    width, height, _, colour = struct.unpack(">IIBB", data[16:26])
    samples = {0: 1, 2: 3, 3: 4, 4: 2, 6: 4}.get(colour)  # palette images decode to RGB(A)
    if samples is None:
        raise BadImageError(f"corrupt PNG (colour type {colour})")
    return (height, width, samples)


def _jpeg_shape(data: bytes) -> Tuple[int, ...]:
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise BadImageError("corrupt JPEG (marker expected)")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01,) or 0xD0 <= marker <= 0xD8:
            pos += 2
            continue
        length = struct.unpack(">H", data[pos + 2:pos + 4])[0]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if pos + 10 > len(data):
                break
            height, width, components = struct.unpack(">HHB", data[pos + 5:pos + 10])
            return (height, width, components)
        if marker == 0xDA:
            break
        pos += 2 + length
    raise BadImageError("corrupt or truncated JPEG (no frame header before the image data)")


def _npy_shape(data: bytes) -> Tuple[int, ...]:
    fh = io.BytesIO(data)
    version = np.lib.format.read_magic(fh)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
    elif version == (2, 0):
        shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
    else:
        raise BadImageError(f".npy format version {version} is not read here (1.0 and 2.0 are)")
    if dtype.hasobject:
        raise BadImageError("the .npy holds pickled Python objects (a Cellpose _seg.npy?); "
                            "only plain numeric arrays are read")
    if dtype.kind not in "biuf":
        raise BadImageError(f"the .npy holds dtype {dtype}; expected a numeric array")
    return tuple(shape)


def _tiff_shape(data: bytes) -> Tuple[int, ...]:
    import tifffile

    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        if not tif.series:
            raise BadImageError("the TIFF holds no image series")
        return tuple(tif.series[0].shape)


_HEADERS = {"png": _png_shape, "jpeg": _jpeg_shape, "npy": _npy_shape, "tiff": _tiff_shape}


# --------------------------------------------------------------------------------------------------
# decoders


class _TiffErrors(logging.Handler):
    """Error records tifffile logs from this thread: a truncated TIFF gives missing pages and a log
    record rather than an exception."""

    def __init__(self):
        super().__init__(level=logging.ERROR)
        self.thread = threading.get_ident()
        self.messages: List[str] = []

    def emit(self, record):
        if record.thread == self.thread:
            self.messages.append(record.getMessage())


def _decode_tiff(data: bytes) -> np.ndarray:
    import tifffile

    errors = _TiffErrors()
    logger = logging.getLogger("tifffile")
    logger.addHandler(errors)
    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            image = tif.asarray()
    finally:
        logger.removeHandler(errors)
    if errors.messages:
        raise BadImageError(f"corrupt or truncated TIFF ({errors.messages[0]})")
    return image


def _drop_alpha(image: np.ndarray) -> np.ndarray:
    if image.ndim == 3 and image.shape[-1] in (2, 4):  # gray + alpha or RGB + alpha, as io.imread
        image = image[..., :-1]
        if image.shape[-1] == 1:
            image = image[..., 0]
    return np.ascontiguousarray(image)


def _decode_png(data: bytes) -> np.ndarray:
    import imagecodecs

    return _drop_alpha(imagecodecs.png_decode(data))


def _decode_jpeg(data: bytes) -> np.ndarray:
    import imagecodecs

    # libjpeg fills a truncated scan with gray and only warns: require the end-of-image marker
    # after the last start-of-scan marker
    last_scan = data.rfind(b"\xff\xda")
    if last_scan < 0 or data.rfind(b"\xff\xd9") < last_scan:
        raise BadImageError("truncated JPEG (no end-of-image marker after the image data)")
    return _drop_alpha(imagecodecs.jpeg8_decode(data))


def _decode_npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


_DECODERS = {"png": _decode_png, "jpeg": _decode_jpeg, "npy": _decode_npy, "tiff": _decode_tiff}
