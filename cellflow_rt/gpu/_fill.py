"""Hole filling and ``min_size`` on the device (the optional path; the host path is the default).

The CPU rule (``dynamics._fill``, Cellpose 3.1.1.1's) visits labels in increasing order on the
array as it is being rewritten: a mask swallowed by an enclosing mask loses its id, and later masks
see the earlier ones' fills. Here every label is processed at once, by one block, on the *input*
array, writing a separate output:

- a label with fewer than ``min_size`` voxels (or none) is dropped; the kept labels are numbered
  1, 2, ... in increasing order (an ordered compaction over the labels);
- in each Z plane of its box, the block marks the pixels 4-connected to the box border through
  not-this-label pixels (a flag plane in global scratch; each thread sweeps its columns down and up,
  and the block repeats until a pass changes nothing); every other pixel of the box is the label's
  own or a hole, and takes its new id.

That equals the sequential rule unless one label's hole holds another label's pixels (nested
masks, where the order matters). A hole pixel can only be in two labels' holes if one of those
holes holds the other label's pixels, so checking for a foreign label inside a hole detects every
case where the two rules can differ; the kernel raises a flag and the caller redoes the image with
the sequential CPU kernel. On the reference cases nested masks are rare.

Why the device is the default (``fill_holes="device"``; ``"host"`` runs the CPU kernel on the
downloaded masks): the CPU kernel is one sequential pass over every box, measured at 20 ms of CPU
time (median of 5: 18.8-25.4 ms) for ``bench/gpu/dynamics_check.py``'s synthetic 2048^2 case with
5994 masks, on one Zen 4 core of a shared machine: two thirds of the 30 ms budget for the whole
dynamics. On the device the same work is a few element-wise kernels and one block per mask doing a
handful of block-wide passes over a box of a few hundred pixels: estimated well under a millisecond
on an H100-class GPU, not measured (no GPU here). The host can still win where the CPU is idle
while the GPU works (a streaming batch could fill one image on the host while the next runs on the
device), and when masks are nested (the sequential redo). ``bench/gpu/dynamics_check.py`` times
both (``gpu_dev`` and ``gpu_dev_hostfill``).
"""
import numpy as np
from numba import cuda

from ._device import blocks_per_item, grid, kernel
from ._labels import fill
from ._scan import compact, exclusive_scan


@kernel
def label_boxes(masks, lo, hi, npix):
    """Per label k: box (z, y, x) into lo[k], hi[k] (start large / -1) and voxel count."""
    Lz, Ly, Lx = masks.shape
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, Lz * Ly * Lx, stride):
        z = i // (Ly * Lx)
        y = (i // Lx) % Ly
        x = i % Lx
        k = masks[z, y, x]
        if k > 0:
            cuda.atomic.min(lo, (k, 0), z)
            cuda.atomic.min(lo, (k, 1), y)
            cuda.atomic.min(lo, (k, 2), x)
            cuda.atomic.max(hi, (k, 0), z)
            cuda.atomic.max(hi, (k, 1), y)
            cuda.atomic.max(hi, (k, 2), x)
            cuda.atomic.add(npix, k, 1)


@kernel
def kept_labels(npix, n_labels, min_size, flags):
    """flags[k] = 1 for a label present and kept by ``min_size``."""
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for k in range(start, n_labels + 1, stride):
        n = npix[k]
        flags[k] = 1 if k > 0 and n > 0 and (min_size <= 0 or n >= min_size) else 0


@kernel
def plane_areas(lo, hi, flags, n_labels, areas):
    """areas[k] = Y x X area of a kept label's box (the flag plane it needs), else 0."""
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for k in range(start, n_labels + 1, stride):
        areas[k] = (hi[k, 1] - lo[k, 1] + 1) * (hi[k, 2] - lo[k, 2] + 1) if flags[k] != 0 else 0


@kernel
def number_kept(kept, n_kept, new_id):
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for r in range(start, n_kept[0], stride):
        new_id[kept[r]] = r + 1


@kernel
def fill_boxes(masks, n_labels, lo, hi, new_id, offsets, outside, out, nested):
    """One block per kept label: holes of each Z plane of its box filled with its new id in ``out``
    (zeroed beforehand); ``nested[0] = 1`` if a hole holds another label."""
    Lz, Ly, Lx = masks.shape
    for k in range(cuda.blockIdx.x + 1, n_labels + 1, cuda.gridDim.x):
        nk = new_id[k]
        if nk == 0:
            continue
        z0, y0, x0 = lo[k, 0], lo[k, 1], lo[k, 2]
        h = hi[k, 1] - y0 + 1
        w = hi[k, 2] - x0 + 1
        off = offsets[k]
        for z in range(z0, hi[k, 0] + 1):
            for p in range(cuda.threadIdx.x, h * w, cuda.blockDim.x):
                r = p // w
                c = p - r * w
                edge = r == 0 or r == h - 1 or c == 0 or c == w - 1
                outside[off + p] = 1 if edge and masks[z, y0 + r, x0 + c] != k else 0
            cuda.syncthreads()
            changed = 1
            while changed:
                mine = 0
                for c in range(cuda.threadIdx.x, w, cuda.blockDim.x):
                    for step in range(2 * h):  # down the column, then up
                        r = step if step < h else 2 * h - 1 - step
                        p = off + r * w + c
                        if outside[p] == 0 and masks[z, y0 + r, x0 + c] != k:
                            if ((r > 0 and outside[p - w] != 0) or (r < h - 1 and outside[p + w] != 0)
                                    or (c > 0 and outside[p - 1] != 0) or (c < w - 1 and outside[p + 1] != 0)):
                                outside[p] = 1
                                mine = 1
                changed = cuda.syncthreads_or(mine)
            for p in range(cuda.threadIdx.x, h * w, cuda.blockDim.x):
                if outside[off + p] == 0:
                    r = p // w
                    c = p - r * w
                    v = masks[z, y0 + r, x0 + c]
                    if v == k or v == 0:
                        out[z, y0 + r, x0 + c] = nk
                    else:
                        nested[0] = 1
            cuda.syncthreads()


def fill_holes(masks, n_labels: int, min_size: int, stream):
    """Device hole filling of int32 (Lz, Ly, Lx) ``masks`` (labels <= n_labels).

    Returns
    -------
    out : device array
        New labels, same shape, int32.
    nested : device array (1,) int64
        1 when some hole holds another label: ``out`` is then not the sequential rule's result.
    """
    n = masks.size
    lo = cuda.device_array((n_labels + 1, 3), np.int64, stream=stream)
    hi = cuda.device_array((n_labels + 1, 3), np.int64, stream=stream)
    blocks, threads = grid(3 * (n_labels + 1))
    fill[blocks, threads, stream](lo.reshape(lo.size), np.iinfo(np.int64).max)
    fill[blocks, threads, stream](hi.reshape(hi.size), -1)
    npix = cuda.device_array(n_labels + 1, np.int64, stream=stream)
    nested = cuda.device_array(1, np.int64, stream=stream)
    lb, lt = grid(n_labels + 1)
    fill[lb, lt, stream](npix, 0)
    fill[1, 1, stream](nested, 0)
    label_boxes[grid(n)[0], grid(n)[1], stream](masks, lo, hi, npix)
    flags = cuda.device_array(n_labels + 1, np.uint8, stream=stream)
    kept_labels[lb, lt, stream](npix, n_labels, int(min_size), flags)
    areas = cuda.device_array(n_labels + 1, np.int64, stream=stream)
    plane_areas[lb, lt, stream](lo, hi, flags, n_labels, areas)
    kept, n_kept = compact(flags, n_labels + 1, stream)
    new_id = cuda.device_array(n_labels + 1, np.int32, stream=stream)
    fill[lb, lt, stream](new_id, 0)
    number_kept[lb, lt, stream](kept, n_kept, new_id)
    total = exclusive_scan(areas, n_labels + 1, stream).copy_to_host(stream=stream)
    stream.synchronize()
    scratch = int(total[0])
    outside = cuda.device_array(max(scratch, 1), np.uint8, stream=stream)
    out = cuda.device_array(masks.shape, np.int32, stream=stream)
    fill[grid(n)[0], grid(n)[1], stream](out.reshape(n), 0)
    mb, mt = blocks_per_item(n_labels)
    fill_boxes[mb, mt, stream](masks, n_labels, lo, hi, new_id, areas, outside, out, nested)
    return out, nested

