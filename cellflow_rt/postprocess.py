"""Changes to finished masks that Cellpose's command line makes before saving them."""
from __future__ import annotations

import numpy as np

from ._labels import as_label_image

__all__ = ["remove_edge_masks"]


def remove_edge_masks(masks) -> np.ndarray:
    """Drop the masks that touch the image's border and number the rest 1..N (``--exclude_on_edges``).

    Cellpose 3.1.1.1's ``utils.remove_edge_masks``: a mask is dropped when its bounding box reaches
    the first or last index of any axis (Z too, for 3D masks), i.e. when one of its pixels lies on
    the border; the remaining labels keep their order.

    Parameters
    ----------
    masks : ndarray
        (Ly, Lx) or (Lz, Ly, Lx) labels, 0 = background.

    Returns
    -------
    ndarray
        int32 labels, consecutive from 1 (as Cellpose returns them).

    Examples
    --------
    >>> m = np.array([[1, 0, 0], [0, 2, 0], [0, 0, 0]])
    >>> remove_edge_masks(m).tolist()
    [[0, 0, 0], [0, 1, 0], [0, 0, 0]]
    """
    masks = as_label_image(masks, "masks")
    faces = [np.take(masks, index, axis=axis) for axis in range(masks.ndim) for index in (0, -1)]
    on_edge = np.unique(np.concatenate([face.ravel() for face in faces]))
    kept = np.where(np.isin(masks, on_edge[on_edge > 0]), 0, masks)
    _, relabelled = np.unique(kept, return_inverse=True)
    return relabelled.reshape(masks.shape).astype(np.int32)
