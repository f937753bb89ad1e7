"""Flows -> masks on a CUDA GPU: the CPU path's masks, computed on the device.

:func:`resize_and_compute_masks` and :func:`compute_masks` take the arguments of their CPU siblings
in :mod:`cellflow_rt.dynamics` and return the same host arrays (shape, dtype, ids). The stages run
as numba CUDA kernels (private modules beside this one): foreground and masked flow, Euler
integration with the endpoint histogram (``_euler``), seeds, growth and labels (``_clusters``),
the flow-error check (``_flow_check``), the nearest resize and the casts (``_labels``), hole
filling and ``min_size`` (``_fill``, or the CPU kernel with ``fill_holes="host"``). The
arithmetic is the CPU path's, operation by operation (``_exact`` keeps FMA contraction out), so the
masks are the CPU path's; the one host step inside is the seed sort (torch's CPU tie order,
``_clusters``).

Inputs: host numpy arrays, or device arrays, i.e. anything with ``__cuda_array_interface__``
(numba, CuPy, torch, an ONNX Runtime ``OrtValue`` wrapped by the caller, ...), read in place
through ``cuda.as_cuda_array`` with no copy:

- ``dP``: float32, (2, Ly, Lx) or (3, Lz, Ly, Lx), any strides (e.g. a channel slice of the
  network's (N, 3, Ly, Lx) output);
- ``cellprob``: float32 or float64, (Ly, Lx) or (Lz, Ly, Lx), any strides; compared with
  ``cellprob_threshold`` in its own dtype, as numpy does on the CPU.

The arrays must be complete when the call is made: ``as_cuda_array`` synchronises on the stream
that the producer names in its interface; a producer that writes on another stream without naming
it (ONNX Runtime's IO binding returns after its stream is synchronised) must synchronise first.
Kernels run on ``stream`` (default: the default stream); the call returns host masks, so it
synchronises before returning. Masks come down once, in their final dtype.

Host synchronisations per 2D image: the seed count and counts (for the sort), the number of
masks, the flow check's scratch size and its largest kept id; each is a few bytes.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
from numba import cuda

from .. import dynamics as cpu_dynamics
from ..dynamics import _sort
from ..resize import nearest_indices
from ..settings import EvalSettings
from . import _clusters, _euler, _fill, _flow_check, _labels
from ._device import blocks_per_item, device_view, grid, is_device_array, simulator_pace
from ._scan import compact, exclusive_scan

__all__ = ["compute_masks", "flow_errors", "resize_and_compute_masks", "FILL_HOLES"]

_DEFAULTS = EvalSettings()

#: Where hole filling and ``min_size`` run: "device" (``_fill``, the default) or "host" (the CPU
#: kernel on the downloaded masks). Same result; see ``_fill`` for the trade.
FILL_HOLES = ("device", "host")

_INT64_MAX = np.iinfo(np.int64).max


# ---------------------------------------------------------------------------------------------
# inputs
def _device_inputs(dP, cellprob, do_3D: bool, cellprob_threshold: float, stream):
    """(dP, cellprob, threshold) on the device, checked like the CPU path checks them."""
    if is_device_array(cellprob):
        if cellprob.dtype not in (np.float32, np.float64):
            raise ValueError(f"cellprob on the device must be float32 or float64, got {cellprob.dtype}")
        threshold = cellprob.dtype.type(cellprob_threshold)
    else:
        cellprob = np.asarray(cellprob)
        if cellprob.dtype in (np.float32, np.float64):
            threshold = cellprob.dtype.type(cellprob_threshold)
        else:  # numpy's own comparison for other dtypes, passed on as a 0/1 map
            cellprob = (cellprob > cellprob_threshold).astype(np.float32)
            threshold = np.float32(0.5)
    shape = tuple(cellprob.shape)
    if len(shape) not in (2, 3):
        raise ValueError(f"cellprob must be 2D (Ly, Lx) or 3D (Lz, Ly, Lx), got shape {shape}")
    if is_device_array(dP):
        if dP.dtype != np.float32:
            raise ValueError(f"dP on the device must be float32, got {dP.dtype}")
    else:
        dP = np.asarray(dP, dtype=np.float32)
    if tuple(dP.shape) != (len(shape), *shape):
        raise ValueError(f"dP must have shape {(len(shape), *shape)} to match cellprob, got {tuple(dP.shape)}")
    if bool(do_3D) != (len(shape) == 3):
        raise ValueError(f"do_3D={do_3D} does not match {len(shape)}D flows (do_3D is for 3D flows only)")
    return device_view(dP, stream), device_view(cellprob, stream), threshold


def _zeros(n: int, dtype, stream, value=0):
    a = cuda.device_array(max(n, 1), dtype, stream=stream)
    _labels.fill[grid(n)[0], grid(n)[1], stream](a, value)
    return a


def _host(device_array, stream) -> np.ndarray:
    """A small device array on the host (a synchronisation point)."""
    out = device_array.copy_to_host(stream=stream)
    stream.synchronize()
    return out


def _scalar(device_array, stream) -> int:
    return int(_host(device_array, stream)[0])


# ---------------------------------------------------------------------------------------------
# stages
def _follow_flows(dP, cellprob, threshold, niter: int, interp: bool, stream):
    """Foreground points (row-major), their endpoints, the endpoint histogram, the point count."""
    shape = tuple(cellprob.shape)
    n = math.prod(shape)
    F = cuda.device_array((n, len(shape)), np.float32, stream=stream)
    flags = cuda.device_array(n, np.uint8, stream=stream)
    blocks, threads = grid(n)
    if len(shape) == 2:
        _euler.masked_flow_2d[blocks, threads, stream](dP, cellprob, threshold, F, flags)
    else:
        _euler.masked_flow_3d[blocks, threads, stream](dP, cellprob, threshold, bool(interp), F, flags)
    pts, n_points = compact(flags, n, stream)
    ends = cuda.device_array(n, np.int64, stream=stream)
    hist = _zeros(n, np.int32, stream)
    blocks, threads = grid(n)
    if len(shape) == 2:
        _euler.euler_2d[blocks, threads, stream](F, shape[0], shape[1], pts, n_points, niter, bool(interp), ends, hist)
    else:
        _euler.euler_3d[blocks, threads, stream](bool(interp), F, *shape, pts, n_points, niter, ends, hist)
    return pts, n_points, ends, hist


def _get_masks(pts, n_points_dev, ends, hist, shape, max_size_fraction: float, stream):
    """int32 device labels of ``shape`` (ids 1..N by first appearance) and N."""
    Lz, Ly, Lx = (1, *shape) if len(shape) == 2 else shape
    n = Lz * Ly * Lx
    flags = cuda.device_array(n, np.uint8, stream=stream)
    _clusters.seed_flags[grid(n)[0], grid(n)[1], stream](hist, Lz, Ly, Lx, flags)
    seeds, n_seeds_dev = compact(flags, n, stream)
    n_seeds = _scalar(n_seeds_dev, stream)
    masks = _zeros(n, np.int32, stream)
    if n_seeds == 0:
        return masks.reshape(shape), 0
    n_points = _scalar(n_points_dev, stream)
    keys = cuda.device_array(n_seeds, np.int32, stream=stream)
    _clusters.gather_counts[grid(n_seeds)[0], grid(n_seeds)[1], stream](hist, seeds, n_seeds, keys)
    order = _sort.torch_cpu_argsort(_host(keys, stream))
    rank = np.empty(n_seeds, np.int32)
    rank[order] = np.arange(n_seeds, dtype=np.int32)
    label_grid = _zeros(n, np.int32, stream)
    grow = _clusters.grow_and_paint_2d if Lz == 1 else _clusters.grow_and_paint_3d
    blocks, threads = grid(n_seeds)
    grow[blocks, threads, stream](hist, Lz, Ly, Lx, seeds, n_seeds, cuda.to_device(rank, stream=stream), label_grid)
    point_label = cuda.device_array(max(n_points, 1), np.int32, stream=stream)
    counts = _zeros(n_seeds + 1, np.int64, stream)
    first = _zeros(n_seeds + 1, np.int64, stream, _INT64_MAX)
    blocks, threads = grid(n_points)
    _clusters.label_points[blocks, threads, stream](label_grid, ends, n_points, point_label, counts, first)
    kept = cuda.device_array(max(n_points, 1), np.uint8, stream=stream)
    _clusters.first_of_kept[blocks, threads, stream](point_label, n_points, counts, first,
                                                     np.float64(float(n) * max_size_fraction), kept)
    firsts, n_kept_dev = compact(kept, n_points, stream)
    new_id = _zeros(n_seeds + 1, np.int32, stream)
    _clusters.number_labels[grid(n_seeds)[0], grid(n_seeds)[1], stream](firsts, n_kept_dev, point_label, new_id)
    _clusters.write_labels[blocks, threads, stream](pts, n_points, point_label, new_id, masks)
    return masks.reshape(shape), _scalar(n_kept_dev, stream)


def _flow_errors(masks, dP, n_labels: int, stream):
    """Device float64 flow errors of labels 1..n_labels of 2D int32 device ``masks``."""
    big = np.iinfo(np.int64).max
    lo_y, lo_x = _zeros(n_labels + 1, np.int64, stream, big), _zeros(n_labels + 1, np.int64, stream, big)
    hi_y, hi_x = _zeros(n_labels + 1, np.int64, stream, -1), _zeros(n_labels + 1, np.int64, stream, -1)
    npix, sum_y, sum_x = (_zeros(n_labels + 1, np.int64, stream) for _ in range(3))
    n = math.prod(masks.shape)
    _flow_check.mask_stats[grid(n)[0], grid(n)[1], stream](masks, lo_y, hi_y, lo_x, hi_x, npix, sum_y, sum_x)
    offsets = cuda.device_array(n_labels, np.int64, stream=stream)
    _flow_check.box_areas[grid(n_labels)[0], grid(n_labels)[1], stream](lo_y, hi_y, lo_x, hi_x, n_labels, offsets)
    scratch = max(_scalar(exclusive_scan(offsets, n_labels, stream), stream), 1)
    T0 = cuda.device_array(scratch, np.float64, stream=stream)
    T1 = cuda.device_array(scratch, np.float64, stream=stream)
    inside = cuda.device_array(scratch, np.uint8, stream=stream)
    err = cuda.device_array(n_labels, np.float64, stream=stream)
    blocks, threads = blocks_per_item(n_labels)
    _flow_check.mask_errors[blocks, threads, stream](masks, dP, n_labels, lo_y, hi_y, lo_x, hi_x, npix, sum_y, sum_x,
                                                     offsets, T0, T1, inside, err)
    return err


def _remove_bad_flow_masks(masks, dP, n_labels: int, flow_threshold: float, stream) -> int:
    """Masks (2D int32, device, in place) with flow error above the threshold set to 0; returns
    the largest id kept."""
    err = _flow_errors(masks, dP, n_labels, stream)
    max_kept = _zeros(1, np.int64, stream)
    n = math.prod(masks.shape)
    _flow_check.drop_bad_masks[grid(n)[0], grid(n)[1], stream](masks, err, np.float64(flow_threshold), max_kept)
    return _scalar(max_kept, stream)


def _masks_on_device(dP, cellprob, niter, cellprob_threshold, flow_threshold, interp, do_3D, max_size_fraction,
                     stream):
    """compute_masks on the device: (int32 device labels, largest id)."""
    dP, cellprob, threshold = _device_inputs(dP, cellprob, do_3D, cellprob_threshold, stream)
    niter = cpu_dynamics._check_niter(niter)
    shape = tuple(cellprob.shape)
    if do_3D and interp and min(shape) < 2:
        raise ValueError(f"3D dynamics with interp=True need at least 2 voxels per axis, got {shape}")
    pts, n_points, ends, hist = _follow_flows(dP, cellprob, threshold, niter, interp, stream)
    masks, n_labels = _get_masks(pts, n_points, ends, hist, shape, float(max_size_fraction), stream)
    if not do_3D and flow_threshold is not None and flow_threshold > 0 and n_labels > 0:
        n_labels = _remove_bad_flow_masks(masks, dP, n_labels, float(flow_threshold), stream)
    return masks, n_labels


def _label_dtype(max_label: int):
    return np.uint16 if max_label < 2**16 else np.uint32


def _download(masks, max_label: int, stream) -> np.ndarray:
    """Host copy of device labels in the CPU path's dtype (cast on the device: half the bytes)."""
    out = cuda.device_array(masks.shape, _label_dtype(max_label), stream=stream)
    n = math.prod(masks.shape)
    _labels.cast[grid(n)[0], grid(n)[1], stream](masks.reshape(n), out.reshape(n))
    host = out.copy_to_host(stream=stream)
    stream.synchronize()
    return host


def _resize_on_device(masks, resize: Sequence[int], stream):
    """``dynamics._resize_labels`` on the device (same index rules, composed into one gather)."""
    if masks.ndim == 2:
        Ly, Lx = resize
        if tuple(masks.shape) == (Ly, Lx):
            return masks
        out = cuda.device_array((Ly, Lx), np.int32, stream=stream)
        rows = cuda.to_device(nearest_indices(masks.shape[0], Ly), stream=stream)
        cols = cuda.to_device(nearest_indices(masks.shape[1], Lx), stream=stream)
        _labels.gather_2d[grid(Ly * Lx)[0], grid(Ly * Lx)[1], stream](masks, rows, cols, out)
        return out
    Lz, Ly, Lx = resize
    planes, rows, cols = (np.arange(n) for n in masks.shape)
    if masks.shape[1] != Ly:  # planes, only when Y differs
        rows, cols = nearest_indices(masks.shape[1], Ly), nearest_indices(masks.shape[2], Lx)
    if masks.shape[0] != Lz:  # Y-slices (Z, X) resized to (Lz, Lx)
        planes, cols = nearest_indices(masks.shape[0], Lz), cols[nearest_indices(cols.size, Lx)]
    shape = (planes.size, rows.size, cols.size)
    if shape == tuple(masks.shape):
        return masks
    out = cuda.device_array(shape, np.int32, stream=stream)
    n = math.prod(shape)
    _labels.gather_3d[grid(n)[0], grid(n)[1], stream](masks, *(cuda.to_device(a, stream=stream)
                                                              for a in (planes, rows, cols)), out)
    return out


# ---------------------------------------------------------------------------------------------
# public API
def compute_masks(dP, cellprob, *, niter=200, cellprob_threshold: float = _DEFAULTS.cellprob_threshold,
                  flow_threshold: Optional[float] = _DEFAULTS.flow_threshold, interp: bool = _DEFAULTS.interp,
                  do_3D: bool = False, max_size_fraction: float = _DEFAULTS.max_size_fraction,
                  stream=None) -> np.ndarray:
    """:func:`cellflow_rt.dynamics.compute_masks` on the GPU (same arguments, same host result).

    ``dP`` and ``cellprob`` may be host or device arrays (see the module docstring); ``stream`` is
    a numba CUDA stream (default: the default stream).
    """
    stream = cuda.default_stream() if stream is None else stream
    with simulator_pace():
        masks, max_label = _masks_on_device(dP, cellprob, niter, cellprob_threshold, flow_threshold, interp, do_3D,
                                            max_size_fraction, stream)
        return _download(masks, max_label, stream)


def flow_errors(masks, dP, stream=None) -> np.ndarray:
    """:func:`cellflow_rt.dynamics.flow_errors` on the GPU: float64 error of labels 1..max of 2D
    ``masks`` against flows ``dP`` (2, Ly, Lx) (NaN for absent ids); ``dP`` may be on the device."""
    labels = np.asarray(masks.copy_to_host() if is_device_array(masks) else masks)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"masks must be 2D integer labels, got shape {labels.shape}, dtype {labels.dtype}")
    if tuple(dP.shape) != (2, *labels.shape):
        raise ValueError(f"dP must have shape {(2, *labels.shape)}, got {tuple(dP.shape)}")
    n_labels = int(labels.max()) if labels.size else 0
    if n_labels == 0:
        return np.zeros(0, np.float64)
    stream = cuda.default_stream() if stream is None else stream
    with simulator_pace():
        labels = cuda.to_device(np.ascontiguousarray(labels, np.int32), stream=stream)
        dP = device_view(dP if is_device_array(dP) else np.asarray(dP, np.float32), stream)
        return _host(_flow_errors(labels, dP, n_labels, stream), stream)


def resize_and_compute_masks(dP, cellprob, *, niter, cellprob_threshold: float, flow_threshold: Optional[float],
                             interp: bool, resize: Optional[Sequence[int]] = None,
                             min_size: int = _DEFAULTS.min_size,
                             max_size_fraction: float = _DEFAULTS.max_size_fraction,
                             do_3D: bool = False, fill_holes: str = "device", stream=None) -> np.ndarray:
    """:func:`cellflow_rt.dynamics.resize_and_compute_masks` on the GPU: same arguments and the
    same host masks (shape, dtype, ids).

    Parameters
    ----------
    dP, cellprob, niter, cellprob_threshold, flow_threshold, interp, resize, min_size, max_size_fraction, do_3D
        As in :func:`cellflow_rt.dynamics.resize_and_compute_masks`; ``dP`` and ``cellprob`` may be
        device arrays (module docstring).
    fill_holes : {"device", "host"}
        Where hole filling and ``min_size`` run (same result; see ``_fill`` for the trade).
    stream : numba CUDA stream, optional
        Stream of the kernels and copies (default: the default stream).

    Returns
    -------
    ndarray
        Labels, uint16 (uint32 from 65536 masks on), on the host.
    """
    if fill_holes not in FILL_HOLES:
        raise ValueError(f"fill_holes must be one of {FILL_HOLES}, got {fill_holes!r}")
    if resize is not None:
        resize = [int(n) for n in resize]
        if len(resize) != len(cellprob.shape) or min(resize) < 1:
            raise ValueError(f"resize must be {len(cellprob.shape)} positive sizes, got {resize}")
    stream = cuda.default_stream() if stream is None else stream
    with simulator_pace():
        masks, max_label = _masks_on_device(dP, cellprob, niter, cellprob_threshold, flow_threshold, interp, do_3D,
                                            max_size_fraction, stream)
        if resize is not None:
            masks = _resize_on_device(masks, resize, stream)
        if fill_holes == "device" and max_label > 0:
            filled, nested = _fill.fill_holes(masks.reshape((1, *masks.shape)) if masks.ndim == 2 else masks,
                                              max_label, int(min_size), stream)
            if _scalar(nested, stream) == 0:
                return _download(filled.reshape(masks.shape), max_label, stream)
            # nested masks: only the sequential rule gives the reference's ids (see _fill)
        host = _download(masks, max_label, stream)
    return cpu_dynamics.fill_holes_and_remove_small_masks(host, min_size=min_size)
