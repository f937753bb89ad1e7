"""Flows -> masks: Cellpose 3.1.1.1's dynamics (CPU reference), without torch.

Stages, each in its own private module of numba kernels:

- ``_euler``: Euler integration of the foreground flow (2D bilinear, 3D torch-grid_sample or
  nearest arithmetic), endpoints of every foreground pixel;
- ``_clusters``: histogram of endpoints, seeds, region growing, labels (``get_masks_torch``), with
  the seed order of torch's CPU argsort (``_sort``);
- ``_flow_check``: heat-diffusion flows of the masks and the flow-error QC (2D only);
- ``_fill``: hole filling and ``min_size``;
- ``_stitch``: 2.5D stitching of per-plane masks across Z.

The public functions below validate their inputs, chain the kernels and keep the reference's names,
defaults and dtypes. :mod:`cellflow_rt.gpu.dynamics` is the GPU sibling: the same stages as numba
CUDA kernels with the same arithmetic and results (``resize_and_compute_masks``, ``compute_masks``,
``flow_errors``), chosen by ``--dynamics`` / ``EvalSettings.dynamics``. The results are bit-identical to Cellpose 3.1.1.1 on CPU on every recorded
reference call (2D, 3D, stitching) and on the fixtures of ``tests/data``: the kernels reproduce
the reference's float32/float64 arithmetic operation by operation (see the modules).

Seed ties (errata A5): the reference orders seeds with torch's unstable CPU argsort; we reproduce
that order exactly (libstdc++'s introsort below 32768 seeds, a stable sort from there, as torch
does; ``_sort``). How much it matters: on the 14 recorded reference calls a stable order gives the
same masks, but on smoothed-noise flows (fixture ``ties``) a stable order moves 4214 pixels and
changes the mask count (64 vs 63).

Deliberate differences: :func:`stitch3D` widens the dtype instead of wrapping ids above its
maximum; :func:`masks_to_flows` and :func:`flow_errors` take 2D masks only (the reference's 3D
variant serves training); invalid inputs raise ``ValueError`` at the boundary.

Examples
--------
One disk whose flows point at its centre gives one mask covering it.

>>> import numpy as np
>>> from cellflow_rt import dynamics
>>> yy, xx = np.mgrid[:64, :64] - 32.0
>>> r = np.hypot(yy, xx)
>>> dP = (-5 * np.stack([yy, xx]) / np.maximum(r, 1)).astype(np.float32)
>>> cellprob = np.where(r < 15, 5.0, -5.0).astype(np.float32)
>>> masks = dynamics.resize_and_compute_masks(dP, cellprob, niter=200, cellprob_threshold=0.0,
...                                           flow_threshold=0.4, interp=True)
>>> int(masks.max()), bool(np.array_equal(masks > 0, r < 15))
(1, True)
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Optional, Sequence, Tuple

import numba
import numpy as np

from ..resize import nearest_indices, resize_nearest
from ..settings import EvalSettings
from . import _clusters, _euler, _fill, _flow_check, _sort, _stitch

__all__ = [
    "compute_masks",
    "resize_and_compute_masks",
    "fill_holes_and_remove_small_masks",
    "diameters",
    "masks_to_flows",
    "flow_errors",
    "stitch3D",
]

_DEFAULTS = EvalSettings()

#: Below this many foreground pixels the kernels run on one thread: the work is a few milliseconds
#: and waking the pool costs more (much more on a loaded machine: 3-10x slower measured).
_PARALLEL_MIN_PIXELS = 2**16


@contextmanager
def _threads_for(n_pixels: int):
    """One numba thread for small problems (numba's thread count is per calling thread)."""
    if n_pixels >= _PARALLEL_MIN_PIXELS or numba.get_num_threads() == 1:
        yield
        return
    previous = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(previous)


# ---------------------------------------------------------------------------------------------
# validation
def _check_flows(dP, cellprob, do_3D: bool) -> Tuple[np.ndarray, np.ndarray]:
    cellprob = np.asarray(cellprob)
    dP = np.asarray(dP)
    if cellprob.ndim not in (2, 3):
        raise ValueError(f"cellprob must be 2D (Ly, Lx) or 3D (Lz, Ly, Lx), got shape {cellprob.shape}")
    if dP.shape != (cellprob.ndim, *cellprob.shape):
        raise ValueError(f"dP must have shape {(cellprob.ndim, *cellprob.shape)} to match cellprob, got {dP.shape}")
    if bool(do_3D) != (cellprob.ndim == 3):
        raise ValueError(f"do_3D={do_3D} does not match {cellprob.ndim}D flows (do_3D is for 3D flows only)")
    return np.ascontiguousarray(dP, dtype=np.float32), cellprob


def _check_niter(niter) -> int:
    try:
        niter = float(niter)
    except (TypeError, ValueError):
        raise ValueError(f"niter must be a number, got {niter!r}") from None
    if not 0 <= niter < 2**32:
        raise ValueError(f"niter must be a number in [0, 2**32), got {niter}")
    # np.uint32(niter) in the reference: truncation
    return int(math.trunc(niter))


def _check_labels(masks, name: str = "masks") -> np.ndarray:
    masks = np.asarray(masks)
    if masks.ndim not in (2, 3):
        raise ValueError(f"{name} must be a 2D or 3D label array, got shape {masks.shape}")
    if not np.issubdtype(masks.dtype, np.integer):
        raise ValueError(f"{name} must have an integer dtype, got {masks.dtype}")
    if masks.size and masks.min() < 0:
        raise ValueError(f"{name} must be >= 0 (0 = background)")
    return masks


def _label_dtype(max_label: int):
    return np.uint16 if max_label < 2**16 else np.uint32


# ---------------------------------------------------------------------------------------------
# stages of compute_masks (also timed one by one in bench/bench_dynamics.py)
def _follow_flows(dP: np.ndarray, fg: np.ndarray, pts: np.ndarray, niter: int, interp: bool) -> np.ndarray:
    """Flat indices of the endpoints of the foreground pixels ``pts`` after ``niter`` steps."""
    F = _euler.masked_flow(dP, pts)
    if fg.ndim == 2:
        return _euler.euler_2d(F, *fg.shape, pts, niter, bool(interp), True)
    if interp:
        F = _euler.grid_sample_flow(F, *fg.shape)
    return _euler.euler_3d(bool(interp), F, *fg.shape, pts, niter, True)


def _get_masks(ends: np.ndarray, pts: np.ndarray, shape: Tuple[int, ...], max_size_fraction: float) -> np.ndarray:
    """Labels (``shape``) from endpoints: seeds, growth, big-mask removal, renumbering.

    uint16 if there are fewer than 2**16 seeds, else uint32 (the reference's rule before its final
    cast).
    """
    Lz, Ly, Lx = (1, *shape) if len(shape) == 2 else shape
    hist = _clusters.endpoint_histogram(ends, Lz * Ly * Lx)
    seeds = _clusters.find_seeds(hist, Lz, Ly, Lx)
    if seeds.size == 0:
        return np.zeros(shape, np.uint16)
    order = _sort.torch_cpu_argsort(hist[seeds])
    regions = _clusters.grow_seeds(hist, Lz, Ly, Lx, seeds)
    grid = _clusters.paint_regions(hist, Lz, Ly, Lx, seeds, regions, order)
    masks = np.zeros(hist.size, _label_dtype(seeds.size))
    _clusters.label_pixels(grid, pts, ends, seeds.size, float(hist.size) * max_size_fraction, masks)
    return masks.reshape(shape)


def _flow_errors(masks: np.ndarray, dP: np.ndarray) -> np.ndarray:
    """Flow error of labels 1..max of 2D ``masks`` against float32 ``dP`` (2, Ly, Lx)."""
    order, starts = _flow_check.group_by_label(masks.ravel(), int(masks.max()))
    return _flow_check.flow_errors(order, starts, masks.shape[1], dP.reshape(2, -1))


def _remove_bad_flow_masks(masks: np.ndarray, dP: np.ndarray, flow_threshold: float) -> np.ndarray:
    """Masks whose flow error exceeds ``flow_threshold`` set to 0 (ids not renumbered)."""
    bad = _flow_errors(masks, dP) > flow_threshold
    if not bad.any():
        return masks
    keep = np.ones(bad.size + 1, bool)
    keep[1:] = ~bad
    return np.where(keep[masks], masks, 0).astype(masks.dtype)


# ---------------------------------------------------------------------------------------------
# public API
def compute_masks(dP, cellprob, *, niter=200, cellprob_threshold: float = _DEFAULTS.cellprob_threshold,
                  flow_threshold: Optional[float] = _DEFAULTS.flow_threshold, interp: bool = _DEFAULTS.interp,
                  do_3D: bool = False, max_size_fraction: float = _DEFAULTS.max_size_fraction) -> np.ndarray:
    """Masks from flows and cell probability on the flows' grid (Cellpose's ``compute_masks``).

    Foreground = ``cellprob > cellprob_threshold``; Euler integration of ``dP * foreground / 5`` for
    ``niter`` steps; seeds at the peaks of the endpoint histogram grown into masks; masks larger
    than ``max_size_fraction`` of the image removed; ids renumbered by first appearance; in 2D,
    masks whose flow error exceeds ``flow_threshold`` removed (ids then keep gaps). No hole filling
    and no ``min_size`` here (see :func:`resize_and_compute_masks`).

    Parameters
    ----------
    dP : ndarray
        Flows, (2, Ly, Lx) as [dY, dX] or (3, Lz, Ly, Lx) as [dZ, dY, dX]; computed in float32.
    cellprob : ndarray
        Cell probability logits, (Ly, Lx) or (Lz, Ly, Lx).
    niter : float
        Euler steps, truncated like ``np.uint32`` (200 / rescale arrives as a float).
    cellprob_threshold : float
        Foreground threshold on ``cellprob`` (strict >).
    flow_threshold : float or None
        Maximum flow error of a kept 2D mask; 0 or None disables the check.
    interp : bool
        Interpolate the flow at each position (bilinear in 2D, torch-trilinear in 3D); False takes
        the flow at the truncated position.
    do_3D : bool
        True for 3D flows (required for them): 3D dynamics, no flow check.
    max_size_fraction : float
        Masks with more pixels than this fraction of the image are removed.

    Returns
    -------
    ndarray
        Labels of ``cellprob``'s shape, uint16 (uint32 from 65536 masks on).
    """
    dP, cellprob = _check_flows(dP, cellprob, do_3D)
    niter = _check_niter(niter)
    fg = cellprob > cellprob_threshold
    pts = np.flatnonzero(fg)
    if pts.size == 0:
        return np.zeros(cellprob.shape, np.uint16)
    if do_3D and interp and min(cellprob.shape) < 2:
        raise ValueError(f"3D dynamics with interp=True need at least 2 voxels per axis, got {cellprob.shape}")
    with _threads_for(pts.size):
        ends = _follow_flows(dP, fg, pts, niter, interp)
        masks = _get_masks(ends, pts, cellprob.shape, float(max_size_fraction))
        if not do_3D and flow_threshold is not None and flow_threshold > 0 and masks.max() > 0:
            masks = _remove_bad_flow_masks(masks, dP, flow_threshold)
    return masks.astype(_label_dtype(int(masks.max())), copy=False)


def resize_and_compute_masks(dP, cellprob, *, niter, cellprob_threshold: float, flow_threshold: Optional[float],
                             interp: bool, resize: Optional[Sequence[int]] = None,
                             min_size: int = _DEFAULTS.min_size,
                             max_size_fraction: float = _DEFAULTS.max_size_fraction,
                             do_3D: bool = False) -> np.ndarray:
    """Masks from flows, resized to ``resize``, holes filled, small masks removed.

    Cellpose 3.1.1.1's ``dynamics.resize_and_compute_masks``: :func:`compute_masks`, then a
    nearest-neighbour resize (OpenCV's rule) when ``resize`` is given, then
    :func:`fill_holes_and_remove_small_masks`.

    Parameters
    ----------
    dP, cellprob, niter, cellprob_threshold, flow_threshold, interp, max_size_fraction, do_3D
        As in :func:`compute_masks`.
    resize : sequence of int, optional
        Output size: (Ly, Lx) in 2D (always resized); (Lz, Ly, Lx) in 3D, where, like the reference,
        the planes are resized only if Y differs and Z only if Z differs.
    min_size : int
        Masks with fewer pixels (voxels) are removed after the resize; -1 disables.

    Returns
    -------
    ndarray
        Labels, uint16 (uint32 from 65536 masks on). Ids increase with first appearance but can have
        gaps (masks removed by the flow check are not renumbered).
    """
    if resize is not None:
        resize = [int(n) for n in resize]
        if len(resize) != np.ndim(cellprob) or min(resize) < 1:
            raise ValueError(f"resize must be {np.ndim(cellprob)} positive sizes, got {resize}")
    masks = compute_masks(dP, cellprob, niter=niter, cellprob_threshold=cellprob_threshold,
                          flow_threshold=flow_threshold, interp=interp, do_3D=do_3D,
                          max_size_fraction=max_size_fraction)
    if resize is not None:
        masks = _resize_labels(masks, resize)
    return fill_holes_and_remove_small_masks(masks, min_size=min_size)


def _resize_labels(masks: np.ndarray, resize: Sequence[int]) -> np.ndarray:
    """Nearest resize back to ``resize`` with the reference's 2D and 3D rules (OpenCV's index rule)."""
    if masks.ndim == 2:
        return resize_nearest(masks, *resize)
    Lz, Ly, Lx = resize
    if masks.shape[1] != Ly:  # planes, only when Y differs (an X-only difference is left as is)
        masks = masks[:, nearest_indices(masks.shape[1], Ly)][:, :, nearest_indices(masks.shape[2], Lx)]
    if masks.shape[0] != Lz:  # Y-slices (Z, X) resized to (Lz, Lx)
        masks = masks[nearest_indices(masks.shape[0], Lz)][:, :, nearest_indices(masks.shape[2], Lx)]
    return np.ascontiguousarray(masks)


def fill_holes_and_remove_small_masks(masks, min_size: int = _DEFAULTS.min_size) -> np.ndarray:
    """Fill holes in each mask and remove masks smaller than ``min_size`` (Cellpose 3.1.1.1 rules).

    Labels are visited in increasing order. A label with fewer than ``min_size`` pixels (counted
    before filling) is erased; otherwise its holes (in 3D: per Z plane) are filled inside its
    bounding box, absorbing whatever they contain (background or other masks), and it takes the
    next id 1, 2, ... A mask swallowed by an enclosing mask with a higher label loses its id, so ids
    can have gaps.

    Parameters
    ----------
    masks : ndarray
        Labels (2D or 3D, integer, 0 = background).
    min_size : int
        Minimum pixels (voxels) per mask; <= 0 disables the removal.

    Returns
    -------
    ndarray
        New labels, same shape and dtype (the input is not modified).

    Examples
    --------
    A ring labelled 2 around a mask labelled 1: the ring's fill absorbs mask 1, whose id 1 is lost.

    >>> import numpy as np
    >>> m = np.zeros((7, 12), np.uint16)
    >>> m[1:6, 1:6] = 2; m[2:5, 2:5] = 0; m[3, 3] = 1; m[1:6, 8:11] = 3
    >>> np.unique(fill_holes_and_remove_small_masks(m, min_size=0))
    array([0, 2, 3], dtype=uint16)
    """
    masks = _check_labels(masks)
    out = np.array(masks, copy=True, order="C")
    nlab = int(out.max()) if out.size else 0
    if nlab > 0:
        _fill.fill_holes_and_filter(out.reshape((1, *out.shape)) if out.ndim == 2 else out, nlab, int(min_size))
    return out


def diameters(masks) -> Tuple[float, np.ndarray]:
    """Median equivalent-circle diameter of the masks, and sqrt of each mask's area.

    Cellpose's ``utils.diameters``, quirk included: the first entry of the sorted unique-label counts
    is dropped as if it were the background, so when masks cover the whole image the lowest label is
    ignored. No masks gives 0.

    Parameters
    ----------
    masks : ndarray
        Labels (integer, 0 = background).

    Returns
    -------
    median_diameter : float
        ``median(sqrt(area)) / (sqrt(pi) / 2)``.
    counts : ndarray
        ``sqrt(area)`` of every label but the first present one (float64), in increasing label order.
    """
    masks = _check_labels(masks)
    flat = masks.ravel()
    if flat.size and int(flat.max()) <= flat.size:
        counts = np.bincount(flat)
        counts = counts[counts > 0]
    else:
        counts = np.unique(flat, return_counts=True)[1]
    roots = counts[1:] ** 0.5
    md = float(np.median(roots)) if roots.size else 0.0
    return md / (np.pi**0.5 / 2), roots


def masks_to_flows(masks) -> np.ndarray:
    """Unit flows of 2D masks by heat diffusion from each mask's centre (Cellpose's CPU variant).

    Per mask, in its bounding box: the centre is the mask pixel closest to the mean pixel
    coordinate; ``2 * (h + 2 + w + 2)`` diffusion steps from it (3x3 mean restricted to the mask);
    the flow is the normalised central-difference gradient.

    Parameters
    ----------
    masks : ndarray
        2D labels (integer, 0 = background, gaps allowed).

    Returns
    -------
    ndarray
        (2, Ly, Lx) float64 [dY, dX], zero on background.

    Examples
    --------
    >>> import numpy as np
    >>> m = np.zeros((5, 5), np.uint16); m[1:4, 1:4] = 1
    >>> masks_to_flows(m)[:, 1, 2]  # the pixel above the centre flows down (+Y)
    array([1., 0.])
    """
    masks = _check_labels(masks)
    if masks.ndim != 2:
        raise ValueError(f"masks_to_flows takes 2D masks, got shape {masks.shape}")
    Ly, Lx = masks.shape
    nlab = int(masks.max()) if masks.size else 0
    order, starts = _flow_check.group_by_label(np.ascontiguousarray(masks).ravel(), nlab)
    with _threads_for(order.size):
        return _flow_check.heat_flows(order, starts, Ly, Lx).reshape(2, Ly, Lx)


def flow_errors(masks, dP) -> np.ndarray:
    """Flow error of each 2D mask: the quality measure behind ``flow_threshold``.

    ``sum over Y, X of mean over the mask of (masks_to_flows(masks) - dP / 5)^2``, in float64.

    Parameters
    ----------
    masks : ndarray
        2D labels (Ly, Lx).
    dP : ndarray
        Network flows (2, Ly, Lx).

    Returns
    -------
    ndarray
        float64 errors of labels 1..masks.max() (NaN for ids absent from ``masks``).
    """
    masks = np.ascontiguousarray(_check_labels(masks))
    if masks.ndim != 2:
        raise ValueError(f"flow_errors takes 2D masks, got shape {masks.shape}")
    dP = np.asarray(dP)
    if dP.shape != (2, *masks.shape):
        raise ValueError(f"dP must have shape {(2, *masks.shape)}, got {dP.shape}")
    if masks.max() == 0:
        return np.zeros(0, np.float64)
    with _threads_for(int(np.count_nonzero(masks))):
        return _flow_errors(masks, np.ascontiguousarray(dP, dtype=np.float32))


def stitch3D(masks, stitch_threshold: float = 0.25) -> np.ndarray:
    """Link per-plane 2D masks across Z into 3D masks by IoU (Cellpose 3.1.1.1's ``utils.stitch3D``).

    Plane by plane, a mask of plane z+1 takes the id of the mask of plane z with which its IoU is
    largest, provided that IoU is >= ``stitch_threshold`` and is the largest IoU of that plane-z mask;
    otherwise it gets a new id. Empty planes follow the reference's quirks (see ``_stitch``).

    Parameters
    ----------
    masks : ndarray or sequence of ndarray
        (Lz, Ly, Lx) labels, one 2D segmentation per plane.
    stitch_threshold : float
        Minimum IoU to link two masks.

    Returns
    -------
    ndarray
        (Lz, Ly, Lx) labels, the input's dtype (the reference's), widened to uint32 (or int64) only
        if the ids no longer fit, where the reference would wrap around.
    """
    masks = _check_labels(np.asarray(masks))
    if masks.ndim != 3:
        raise ValueError(f"stitch3D takes a stack of 2D masks (Lz, Ly, Lx), got shape {masks.shape}")
    Lz, Ly, Lx = masks.shape
    if masks.size == 0:
        return masks.copy()
    flat = np.ascontiguousarray(masks).reshape(Lz, Ly * Lx)
    maps, offsets = _stitch.stitch_maps(flat, float(stitch_threshold))
    top = int(maps.max())
    dtype = masks.dtype if top <= np.iinfo(masks.dtype).max else (np.uint32 if top < 2**32 else np.int64)
    out = np.empty(flat.shape, dtype)
    _stitch.apply_maps(flat, maps, offsets, out)
    return out.reshape(Lz, Ly, Lx)
