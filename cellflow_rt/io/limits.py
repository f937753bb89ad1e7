"""The largest image read into memory, checked against the shape a file *declares* before decoding.

A 100-byte PNG or TIFF header can announce 100,000 x 100,000 pixels; a decoder would allocate
10 GB for it before finding the data missing. :func:`check_declared_shape` compares the declared
number of array values with one ceiling, :func:`max_values` (default :data:`DEFAULT_MAX_VALUES`,
overridden by the environment variable :data:`ENV_VAR`), and refuses with
:class:`ImageTooLargeError` naming the blockwise path, which reads images larger than memory.
"""
from __future__ import annotations

import numbers
import os
from typing import Optional, Sequence

from .errors import ImageReadError, PathLike

__all__ = ["DEFAULT_MAX_VALUES", "ENV_VAR", "ImageTooLargeError", "max_values", "check_declared_shape"]

#: Array values (pixels x planes x channels) an image may hold in memory: 2**31, e.g. 46,000 x 46,000
#: pixels in one channel (4 GB at uint16). Generous for microscopy; larger images go blockwise.
DEFAULT_MAX_VALUES = 2**31
#: The environment variable that sets another ceiling (a whole number of values, > 0).
ENV_VAR = "CELLFLOW_RT_MAX_PIXELS"
#: What the message of an image over the ceiling suggests.
BLOCKWISE_ADVICE = "segment images this large blockwise: cellflow-rt run --blocksize 2048 ..."


class ImageTooLargeError(ImageReadError):
    """An image declares more array values than :func:`max_values` allows; nothing was decoded.

    ``shape`` is the declared shape, ``limit`` the ceiling it exceeds.
    """

    def __init__(self, path: Optional[PathLike], shape: Sequence[int], limit: int, what: str = "image",
                 advice: str = BLOCKWISE_ADVICE):
        self.shape = tuple(int(s) for s in shape)
        self.limit = int(limit)
        values = _values(self.shape)
        super().__init__(path, f"the {what} declares shape {self.shape} ({values:,} values), over the "
                               f"limit of {self.limit:,} values held in memory (${ENV_VAR} sets it); {advice}")


def max_values() -> int:
    """The ceiling in array values: ``$CELLFLOW_RT_MAX_PIXELS`` if set, else :data:`DEFAULT_MAX_VALUES`.

    Raises
    ------
    ValueError
        The environment variable is set but is not a whole number > 0.
    """
    text = os.environ.get(ENV_VAR, "").strip()
    if not text:
        return DEFAULT_MAX_VALUES
    try:
        value = int(float(text)) if "e" in text.lower() else int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise ValueError(f"${ENV_VAR} must be a whole number of array values > 0, got {text!r}")
    return value


def _values(shape: Sequence[int]) -> int:
    total = 1
    for side in shape:
        total *= int(side)
    return total


def check_declared_shape(shape: Sequence[int], where: Optional[PathLike], what: str = "image",
                         limit: Optional[int] = None, advice: str = BLOCKWISE_ADVICE) -> None:
    """Refuse a declared ``shape`` whose number of values exceeds ``limit`` (default :func:`max_values`).

    Parameters
    ----------
    shape : sequence of int
        The shape a header announces.
    where : path-like or None
        The file, named in the message.
    what : str
        What the shape is of, in the message ("PNG", "TIFF", "masks array"...).
    limit : int, optional
        Another ceiling than :func:`max_values`.
    advice : str
        What the message suggests instead.

    Raises
    ------
    ImageTooLargeError
    """
    limit = max_values() if limit is None else limit
    if not all(isinstance(side, numbers.Integral) for side in shape):  # e.g. a TIFF width tag of type FLOAT
        raise ImageReadError(where, f"the {what} declares a size that is not a whole number {tuple(shape)}")
    if any(int(side) < 0 for side in shape):
        raise ImageReadError(where, f"the {what} declares a negative size {tuple(shape)}")
    if _values(shape) > limit:
        raise ImageTooLargeError(where, shape, limit, what, advice)
