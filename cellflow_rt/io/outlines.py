"""Mask outlines: the outline image and per-mask contours (Cellpose's ``utils.masks_to_outlines`` and
``utils.outlines_list``), without OpenCV and for all masks in one pass.

Cellpose calls ``cv2.findContours`` once per mask (on the whole image in ``outlines_list``), which
takes minutes to tens of minutes for tens of thousands of cells; here one numba pass over each
mask's bounding box gives the same points in the same order (see :mod:`._outline_kernels`).
"""
from __future__ import annotations

from typing import List, Tuple

import numpy as np

from . import _outline_kernels as _k
from .._labels import as_label_image, compact_labels

__all__ = ["masks_to_outlines", "outlines_list", "outlines_with_labels", "planar_outlines"]

#: Cellpose's ``outlines_list`` replaces contours of this many points or fewer by an empty array.
MIN_OUTLINE_POINTS = 5


def _plane_outlines(masks: np.ndarray) -> np.ndarray:
    outlines = np.zeros(masks.shape, bool)
    values, table, labels = compact_labels(masks)
    if labels.size:
        box = _k.bounding_boxes(values, table, labels.size)
        _k.outline_image(values, table, labels.size, box, outlines)
    return outlines


def masks_to_outlines(masks) -> np.ndarray:
    """Outline pixels of every mask.

    A pixel is on the outline of its mask when it lies on the mask's outer border (OpenCV's
    ``RETR_EXTERNAL`` contours of each 8-connected piece; borders of holes are not outlines). 3D
    masks are outlined plane by plane.

    Parameters
    ----------
    masks : ndarray
        (Ly, Lx) or (Lz, Ly, Lx) labels, 0 = background.

    Returns
    -------
    ndarray
        bool, same shape as ``masks``.

    Examples
    --------
    >>> m = np.zeros((5, 5), int); m[1:4, 1:4] = 7
    >>> masks_to_outlines(m).astype(int)
    array([[0, 0, 0, 0, 0],
           [0, 1, 1, 1, 0],
           [0, 1, 0, 1, 0],
           [0, 1, 1, 1, 0],
           [0, 0, 0, 0, 0]])
    """
    masks = as_label_image(masks, "masks")
    if masks.ndim == 3:
        return np.stack([_plane_outlines(plane) for plane in masks]) if len(masks) else np.zeros(masks.shape, bool)
    return _plane_outlines(masks)


def outlines_with_labels(masks) -> Tuple[np.ndarray, List[np.ndarray]]:
    """Labels present (sorted) and the outline of each, as :func:`outlines_list` returns them."""
    masks = as_label_image(masks, "masks", ndim=(2,))
    values, table, labels = compact_labels(masks)
    if labels.size == 0:
        return labels, []
    n = labels.size
    box = _k.bounding_boxes(values, table, n)
    start, length = _k.longest_borders(values, table, n, box)
    length[length < MIN_OUTLINE_POINTS] = 0
    offsets = np.zeros(n + 2, np.int64)
    np.cumsum(length, out=offsets[1:])
    coords = np.empty((int(offsets[-1]), 2), np.int64)
    _k.write_borders(values, table, n, box, start, length, offsets, coords)
    return labels, np.split(coords, offsets[2:-1])


def outlines_list(masks) -> List[np.ndarray]:
    """Outline of each mask as an ordered list of pixel coordinates.

    Parameters
    ----------
    masks : ndarray
        (Ly, Lx) labels, 0 = background.

    Returns
    -------
    list of ndarray
        One int64 (N, 2) array of (x, y) pixel coordinates per label present, in increasing label
        order: the longest outer border of the mask (OpenCV's point order, starting at its first pixel
        in raster order and going down its left side), or an empty (0, 2) array when that border has
        4 points or fewer, as Cellpose does.

    Notes
    -----
    Cellpose iterates over ``np.unique(masks)[1:]``, which drops the first mask when no pixel is
    background; here every label > 0 gets an outline.

    Examples
    --------
    >>> m = np.zeros((5, 5), int); m[1:4, 1:4] = 1
    >>> outlines_list(m)[0].tolist()
    [[1, 1], [1, 2], [1, 3], [2, 3], [3, 3], [3, 2], [3, 1], [2, 1]]
    """
    return outlines_with_labels(masks)[1]


def planar_outlines(masks, what: str) -> Tuple[np.ndarray, List[np.ndarray]]:
    """:func:`outlines_with_labels` of 2D masks; ValueError naming ``what`` (the output) for 3D masks."""
    masks = as_label_image(masks, "masks")
    if masks.ndim != 2:
        raise ValueError(f"{what} are written for 2D masks only, got shape {masks.shape}")
    return outlines_with_labels(masks)
