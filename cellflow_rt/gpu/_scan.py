"""Ordered compaction and exclusive prefix sums on the device, deterministic by construction.

Several stages need "the k-th flagged item in row-major order" exactly as the CPU path numbers
it: the foreground pixels (``np.flatnonzero``), the seeds (the order torch's sort starts from),
the first pixel of every mask (renumbering by first appearance), the kept masks of hole filling.
A two-level chunked scan does it without atomics: each thread counts one chunk, the chunk counts
are scanned (recursively, a single thread at the last level), and each thread writes its chunk's
items at its offset. Integer sums only, so the result is exact and independent of scheduling.

A chunk per thread is simple and fast enough here (a few tens of microseconds for 4 Mpx); a
block-cooperative decoupled look-back scan would be the next step if a profile asks for it.
"""
import math

import numpy as np
from numba import cuda

from ._device import SIMULATOR, grid, kernel

#: Items per thread in a chunk (small on a GPU for parallelism; larger in the simulator, where
#: every simulated thread costs a Python thread).
CHUNK = 1024 if SIMULATOR else 256


@kernel
def _count_chunks(flags, n, chunk, counts):
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for c in range(start, counts.shape[0], stride):
        s = 0
        for i in range(c * chunk, min(c * chunk + chunk, n)):
            if flags[i] != 0:
                s += 1
        counts[c] = s


@kernel
def _sum_chunks(values, n, chunk, sums):
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for c in range(start, sums.shape[0], stride):
        s = 0
        for i in range(c * chunk, min(c * chunk + chunk, n)):
            s += values[i]
        sums[c] = s


@kernel
def _scan_chunks(values, n, chunk, offsets):
    """values[i] <- offsets[chunk of i] + sum of the chunk's values before i."""
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for c in range(start, offsets.shape[0], stride):
        run = offsets[c]
        for i in range(c * chunk, min(c * chunk + chunk, n)):
            v = values[i]
            values[i] = run
            run += v


@kernel
def _scan_one_thread(values, n, total):
    if cuda.grid(1) == 0:
        run = 0
        for i in range(n):
            v = values[i]
            values[i] = run
            run += v
        total[0] = run


@kernel
def _scatter_flagged(flags, n, chunk, offsets, out):
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for c in range(start, offsets.shape[0], stride):
        k = offsets[c]
        for i in range(c * chunk, min(c * chunk + chunk, n)):
            if flags[i] != 0:
                out[k] = i
                k += 1


def exclusive_scan(values, n: int, stream):
    """In-place exclusive prefix sum of the int64 device array ``values[:n]``; returns the total as
    a one-element device array (no host synchronisation)."""
    total = cuda.device_array(1, np.int64, stream=stream)
    if n <= CHUNK:
        _scan_one_thread[1, 1, stream](values, n, total)
        return total
    nchunks = math.ceil(n / CHUNK)
    sums = cuda.device_array(nchunks, np.int64, stream=stream)
    blocks, threads = grid(nchunks)
    _sum_chunks[blocks, threads, stream](values, n, CHUNK, sums)
    total = exclusive_scan(sums, nchunks, stream)
    _scan_chunks[blocks, threads, stream](values, n, CHUNK, sums)
    return total


def compact(flags, n: int, stream):
    """Indices ``i < n`` with ``flags[i] != 0``, in increasing order.

    Returns
    -------
    indices : device array (n,) int64
        The first ``count`` entries are the indices; the rest is unspecified.
    count : device array (1,) int64
    """
    nchunks = math.ceil(max(n, 1) / CHUNK)
    counts = cuda.device_array(nchunks, np.int64, stream=stream)
    blocks, threads = grid(nchunks)
    _count_chunks[blocks, threads, stream](flags, n, CHUNK, counts)
    count = exclusive_scan(counts, nchunks, stream)
    indices = cuda.device_array(max(n, 1), np.int64, stream=stream)
    _scatter_flagged[blocks, threads, stream](flags, n, CHUNK, counts, indices)
    return indices, count
