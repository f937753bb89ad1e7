"""A request body -> an image array, in memory, with the size checked before anything is decoded.

What is about HTTP lives here: the format comes from the ``Content-Type`` header or, for
``application/octet-stream`` or no header, from the body's first bytes; the server's pixel limit;
the errors, each answered with its status code by the app. Reading is :mod:`cellflow_rt.io`'s: the
header's shape (:func:`~cellflow_rt.io.peek_shape`), checked against the limit so that a small
compressed body that would expand past it is refused without allocating it, then the bytes read
exactly as ``cellflow-rt run`` reads a file of that format (:func:`~cellflow_rt.io.imread_bytes`);
nothing touches the disk.
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from ..io import ImageReadError, imread_bytes, peek_shape
from ..io.limits import ImageTooLargeError as DeclaredTooLargeError

#: Content-Type -> format (:data:`cellflow_rt.io.FORMATS`); ``application/octet-stream`` (or no header)
#: is sniffed.
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
    try:
        _check_size(peek_shape(data, kind), max_values)
        image = imread_bytes(data, kind)
    except DeclaredTooLargeError as exc:  # over the process-wide ceiling ($CELLFLOW_RT_MAX_PIXELS)
        raise ImageTooLargeError(exc.problem) from None
    except ImageReadError as exc:
        if isinstance(exc.__cause__, MemoryError):
            raise ImageTooLargeError(f"decoding the {kind.upper()} ran out of memory") from None
        raise BadImageError(exc.problem) from None
    _check_size(image.shape, max_values)
    return image


def check_header(data: bytes, kind: str, max_values: int) -> None:
    """Refuse a body whose header declares an image over ``max_values`` (before it waits for a worker).

    Raises
    ------
    BadImageError, ImageTooLargeError
    """
    try:
        _check_size(peek_shape(data, kind), max_values)
    except ImageReadError as exc:
        raise BadImageError(exc.problem) from None


def _check_size(shape: Tuple[int, ...], max_values: int) -> None:
    values = int(np.prod(shape, dtype=np.float64))
    if values > max_values:
        raise ImageTooLargeError(f"the image has {values / 1e6:.1f} million pixel values (shape "
                                 f"{tuple(shape)}), over this server's limit of {max_values / 1e6:g} million")
