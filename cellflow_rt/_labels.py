"""Label images: validation and the map from label values to compact indices.

Shared by the outline tracer and the matching metrics. Label values need not be consecutive (ground
truth often has gaps), so both work on compact indices 1..n of the labels actually present.
"""
from __future__ import annotations

import numba
import numpy as np

from ._numba import NUMBA_OPTS

#: Above this many lookup entries per pixel the value -> index table is built with np.unique instead
#: of a dense table indexed by label value (labels like 4e9 in a small image).
_DENSE_TABLE_PER_PIXEL = 4


def as_label_image(masks, name: str = "masks", ndim=(2, 3)) -> np.ndarray:
    """Validate a label image: 0 = background, 1, 2, ... = objects.

    Parameters
    ----------
    masks : array_like
        Integer or boolean labels; floating-point arrays are accepted when every value is a
        non-negative integer (label TIFFs are sometimes saved as float32).
    name : str
        Argument name used in error messages.
    ndim : tuple of int or None
        Accepted numbers of dimensions (None = any).

    Returns
    -------
    ndarray
        The labels with an unsigned or signed integer dtype (no copy when already integer).
    """
    masks = np.asarray(masks)
    if ndim is not None and masks.ndim not in ndim:
        raise ValueError(f"{name} must be a {' or '.join(f'{n}D' for n in ndim)} label image, "
                         f"got shape {masks.shape}")
    if masks.dtype == bool:
        return masks.view(np.uint8)
    if masks.dtype.kind == "f":
        if masks.size and not (np.all(np.isfinite(masks)) and np.all(masks == np.floor(masks))):
            raise ValueError(f"{name} must hold integer labels, got non-integer {masks.dtype} values")
        top = masks.max() if masks.size else 0
        masks = masks.astype(np.uint32 if top < 2**32 else np.uint64)
    elif masks.dtype.kind not in "iu":
        raise TypeError(f"{name} must be an integer label image, got dtype {masks.dtype}")
    if masks.dtype.kind == "i" and masks.size and masks.min() < 0:
        raise ValueError(f"{name} must not contain negative labels (min {masks.min()})")
    return masks


@numba.njit(**NUMBA_OPTS)
def _mark_present(flat, present):
    for i in range(flat.size):
        present[flat[i]] = True


def compact_labels(masks: np.ndarray):
    """The labels present and a lookup from label values to compact indices 1..n.

    Parameters
    ----------
    masks : ndarray
        A validated label image (see :func:`as_label_image`).

    Returns
    -------
    values : ndarray
        uint16 or uint32 image to look up: ``masks`` itself (or a cast copy), or, when label values
        are too large for a dense table, an image of compact indices. Two dtypes only, so that each
        numba kernel compiles twice at most.
    table : ndarray
        int64 lookup with ``table[values] == k`` on pixels of ``labels[k - 1]`` and 0 on background.
    labels : ndarray
        int64 sorted distinct labels > 0.
    """
    top = int(masks.max()) if masks.size else 0
    if top < 2**16 or (top < 2**32 and top <= _DENSE_TABLE_PER_PIXEL * masks.size + 65536):
        values = masks.astype(np.uint16 if top < 2**16 else np.uint32, copy=False)
        present = np.zeros(top + 1, np.bool_)
        _mark_present(values.ravel(), present)
        labels = np.flatnonzero(present[1:]).astype(np.int64) + 1
        table = np.zeros(top + 1, np.int64)
        table[labels] = np.arange(1, labels.size + 1)
        return values, table, labels
    # np.unique's inverse indexes its sorted values; shift so that background stays 0
    uniques, inverse = np.unique(masks, return_inverse=True)
    labels = uniques[uniques > 0].astype(np.int64)
    values = (inverse.reshape(masks.shape) + (uniques[0] != 0)).astype(np.uint32)
    return values, np.arange(labels.size + 1, dtype=np.int64), labels
