"""Flows -> masks as Cellpose 4.2.1.1 computes them (for Cellpose-SAM models), without torch.

What differs from Cellpose 3.1.1.1's dynamics (the package's default functions), each reproduced
from the reference's source:

- Euler integration: always torch's ``grid_sample`` arithmetic, in 2D too (:mod:`._euler_grid2d`; 3D
  is Cellpose 3's interp path); there is no ``interp`` option;
- the flow check builds the masks' flows all at once, Cellpose 3's GPU arithmetic with a new centre
  rule (:mod:`._flow_check_batched`), and renumbers the masks it keeps (no gaps);
- hole filling uses ``fill_voids`` (true 3D filling in 3D, with its seeding rule) and ``min_size``
  is applied before and after filling, with renumbering (:mod:`._fill_voids`).

Unchanged, and shared with the Cellpose 3 functions: the seeds, growth and big-mask removal of
``get_masks_torch``, the nearest resize back, 2.5D stitching.

Examples
--------
>>> import numpy as np
>>> from cellflow_rt.dynamics import v4
>>> yy, xx = np.mgrid[:64, :64] - 32.0
>>> r = np.hypot(yy, xx)
>>> dP = (-5 * np.stack([yy, xx]) / np.maximum(r, 1)).astype(np.float32)
>>> cellprob = np.where(r < 15, 5.0, -5.0).astype(np.float32)
>>> masks = v4.resize_and_compute_masks(dP, cellprob, niter=200)
>>> int(masks.max()), bool(np.array_equal(masks > 0, r < 15))
(1, True)
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from ..settings import EvalSettings
from . import (_check_flows, _check_labels, _check_niter, _euler, _flow_check, _get_masks, _label_dtype,
               _resize_labels, _threads_for, stitch3D)
from . import _euler_grid2d, _fill_voids, _flow_check_batched

__all__ = ["compute_masks", "resize_and_compute_masks", "fill_holes_and_remove_small_masks", "masks_to_flows",
           "flow_errors", "stitch3D"]

_DEFAULTS = EvalSettings()


def _follow_flows(dP: np.ndarray, fg: np.ndarray, pts: np.ndarray, niter: int) -> np.ndarray:
    F = _euler.masked_flow(dP, pts)
    if fg.ndim == 2:
        return _euler_grid2d.euler_2d_grid_sample(_euler_grid2d.grid_sample_flow_2d(F, *fg.shape), *fg.shape, pts,
                                               niter, True)
    return _euler.euler_3d(True, _euler.grid_sample_flow(F, *fg.shape), *fg.shape, pts, niter, True)


def _grouped(masks: np.ndarray):
    return _flow_check.group_by_label(np.ascontiguousarray(masks).ravel(), int(masks.max()))


def _flow_errors(masks: np.ndarray, dP: np.ndarray) -> np.ndarray:
    """Errors of labels 1..max (all present) of 2D ``masks`` against float32 ``dP``."""
    order, starts = _grouped(masks)
    mu = _flow_check_batched.heat_flows(masks, order, starts)
    err = _flow_check_batched.pixel_errors(mu.reshape(2, -1), dP.reshape(2, -1))
    # numpy's mean per mask: the reference's (pairwise) summation, bit for bit
    return np.array([err[order[starts[k]:starts[k + 1]]].mean() for k in range(starts.size - 1)])


def compute_masks(dP, cellprob, *, niter=200, cellprob_threshold: float = _DEFAULTS.cellprob_threshold,
                  flow_threshold: Optional[float] = _DEFAULTS.flow_threshold, do_3D: bool = False,
                  max_size_fraction: float = _DEFAULTS.max_size_fraction) -> np.ndarray:
    """Masks on the flows' grid, Cellpose 4's ``compute_masks``.

    As :func:`cellflow_rt.dynamics.compute_masks`, except: torch ``grid_sample`` steps in 2D too (no
    ``interp``), Cellpose 4's flow check, and the masks the flow check keeps renumbered 1..n.

    Parameters
    ----------
    dP, cellprob, niter, cellprob_threshold, flow_threshold, do_3D, max_size_fraction
        As in :func:`cellflow_rt.dynamics.compute_masks`.

    Returns
    -------
    ndarray
        Labels 1..n of ``cellprob``'s shape, uint16 (uint32 from 65536 masks on).
    """
    dP, cellprob = _check_flows(dP, cellprob, do_3D)
    niter = _check_niter(niter)
    fg = cellprob > cellprob_threshold
    pts = np.flatnonzero(fg)
    if pts.size == 0:
        return np.zeros(cellprob.shape, np.uint16)
    if min(cellprob.shape) < 2:
        raise ValueError(f"Cellpose 4 dynamics need at least 2 pixels per axis, got {cellprob.shape}")
    with _threads_for(pts.size):
        ends = _follow_flows(dP, fg, pts, niter)
        masks = _get_masks(ends, pts, cellprob.shape, float(max_size_fraction))
        if not do_3D and flow_threshold is not None and flow_threshold > 0 and masks.max() > 0:
            bad = np.flatnonzero(_flow_errors(masks, dP) > flow_threshold) + 1
            if bad.size:
                masks[np.isin(masks, bad)] = 0
                _fill_voids.renumber(masks)
    return masks.astype(_label_dtype(int(masks.max())), copy=False)


def resize_and_compute_masks(dP, cellprob, *, niter, cellprob_threshold: float = _DEFAULTS.cellprob_threshold,
                             flow_threshold: Optional[float] = _DEFAULTS.flow_threshold,
                             resize: Optional[Sequence[int]] = None, min_size: int = _DEFAULTS.min_size,
                             max_size_fraction: float = _DEFAULTS.max_size_fraction,
                             do_3D: bool = False) -> np.ndarray:
    """Masks from flows, resized to ``resize``, holes filled, small masks removed (Cellpose 4).

    :func:`compute_masks`, the nearest resize of :func:`cellflow_rt.dynamics.resize_and_compute_masks`,
    then :func:`fill_holes_and_remove_small_masks`.

    Returns
    -------
    ndarray
        Labels, uint16 (uint32 from 65536 masks on); 1..n without gaps when ``min_size`` > 0.
    """
    if resize is not None:
        resize = [int(n) for n in resize]
        if len(resize) != np.ndim(cellprob) or min(resize) < 1:
            raise ValueError(f"resize must be {np.ndim(cellprob)} positive sizes, got {resize}")
    masks = compute_masks(dP, cellprob, niter=niter, cellprob_threshold=cellprob_threshold,
                          flow_threshold=flow_threshold, do_3D=do_3D, max_size_fraction=max_size_fraction)
    if resize is not None:
        masks = _resize_labels(masks, resize)
    return fill_holes_and_remove_small_masks(masks, min_size=min_size)


def fill_holes_and_remove_small_masks(masks, min_size: int = _DEFAULTS.min_size) -> np.ndarray:
    """Fill holes and remove masks smaller than ``min_size``, Cellpose 4's way.

    With ``min_size`` > 0: masks under ``min_size`` pixels (voxels) are removed and the rest
    renumbered by first appearance. Then each mask, in increasing order, is filled inside its
    bounding box (2D: every hole; 3D: ``fill_voids``' rule, see :mod:`._fill_voids`), absorbing what
    it encloses, and takes the next id. With ``min_size`` > 0, small masks are removed once more
    and the ids renumbered.

    Parameters
    ----------
    masks : ndarray
        2D or 3D labels (integer, 0 = background).
    min_size : int
        Minimum pixels (voxels) per mask; <= 0 disables removal and renumbering.

    Returns
    -------
    ndarray
        New labels, same shape and dtype (the input is not modified).

    Examples
    --------
    A ring labelled 2 around a mask labelled 1 absorbs it; ids are then renumbered.

    >>> import numpy as np
    >>> m = np.zeros((7, 12), np.uint16)
    >>> m[1:6, 1:6] = 2; m[2:5, 2:5] = 0; m[3, 3] = 1; m[1:6, 8:11] = 3
    >>> np.unique(fill_holes_and_remove_small_masks(m, min_size=1))
    array([0, 1, 2], dtype=uint16)
    """
    masks = _check_labels(masks)
    out = np.array(masks, copy=True, order="C")
    if out.size == 0 or out.max() == 0:
        return out
    volume = out.ndim == 3
    work = out if volume else out.reshape((1, *out.shape))
    if min_size > 0:
        _fill_voids.remove_small(work, int(min_size))
        _fill_voids.renumber(work)
    _fill_voids.fill_holes(work, volume)
    if min_size > 0:
        _fill_voids.remove_small(work, int(min_size))
        _fill_voids.renumber(work)
    return out


def masks_to_flows(masks) -> np.ndarray:
    """Unit flows of 2D masks by heat diffusion, Cellpose 4's way (all masks at once).

    Parameters
    ----------
    masks : ndarray
        2D labels 1..n, each present (Cellpose 4 renumbers before its flow check).

    Returns
    -------
    ndarray
        (2, Ly, Lx) float64 [dY, dX], zero on background.
    """
    masks = np.ascontiguousarray(_check_labels(masks))
    if masks.ndim != 2:
        raise ValueError(f"masks_to_flows takes 2D masks, got shape {masks.shape}")
    if masks.max() == 0:
        return np.zeros((2, *masks.shape))
    order, starts = _grouped(masks)
    if np.any(starts[1:] == starts[:-1]):
        raise ValueError("masks_to_flows needs labels 1..n without gaps (renumber them first)")
    with _threads_for(order.size):
        return _flow_check_batched.heat_flows(masks, order, starts)


def flow_errors(masks, dP) -> np.ndarray:
    """Flow error of each 2D mask (labels 1..n, each present), Cellpose 4's ``flow_error``.

    Returns
    -------
    ndarray
        float64 errors of labels 1..masks.max().
    """
    masks = np.ascontiguousarray(_check_labels(masks))
    dP = np.asarray(dP)
    if masks.ndim != 2 or dP.shape != (2, *masks.shape):
        raise ValueError(f"flow_errors takes 2D masks and dP of shape (2, *masks.shape), got {masks.shape}, {dP.shape}")
    if masks.max() == 0:
        return np.zeros(0, np.float64)
    with _threads_for(int(np.count_nonzero(masks))):
        return _flow_errors(masks, np.ascontiguousarray(dP, dtype=np.float32))
