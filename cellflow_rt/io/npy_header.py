"""The shape an ``.npy`` file's header declares (read by :mod:`.read` before loading, by :mod:`.peek` to peek)."""
from __future__ import annotations

import io
from typing import Optional, Tuple

import numpy as np

from .errors import ImageReadError


def npy_header_shape(data: bytes, name: Optional[str]) -> Tuple[int, ...]:
    """The shape an ``.npy`` header (the first bytes of ``data``) announces, for a plain numeric dtype.

    Raises
    ------
    ImageReadError
        Not an ``.npy`` header, an unsupported version, pickled objects or a non-numeric dtype.
    """
    try:
        return _npy_shape(data, name)
    except ImageReadError:
        raise
    except Exception as exc:  # numpy's header parser raises ValueError, SyntaxError, TypeError...
        raise ImageReadError(name, f"corrupt or truncated .npy array header ({type(exc).__name__}: {exc})") from exc


def _npy_shape(data: bytes, name: Optional[str]) -> Tuple[int, ...]:
    fh = io.BytesIO(data)
    version = np.lib.format.read_magic(fh)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
    elif version == (2, 0):
        shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
    else:
        raise ImageReadError(name, f".npy format version {version} is not read here (1.0 and 2.0 are)")
    if dtype.hasobject:
        raise ImageReadError(name, "the .npy file holds pickled Python objects (a Cellpose _seg.npy?); "
                                   "only plain numeric arrays are read")
    if dtype.kind not in "biuf":
        raise ImageReadError(name, f"expected a numeric array, got dtype {dtype}")
    return tuple(shape)
