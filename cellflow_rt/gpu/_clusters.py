"""Endpoints -> labels on the device: ``dynamics._clusters`` (Cellpose's ``get_masks_torch``) in
parallel, with the same result.

- Seeds: histogram counts above 10 that are the maximum of their clipped 5x5 (5x5x5) window, one
  thread per pixel; compacted in row-major order (``_scan``), the order torch's sort starts from.
- Seed ranks: the host sorts the seeds' counts with torch's CPU tie order
  (``dynamics._sort.torch_cpu_argsort``): a few thousand integers, and an introsort is sequential.
- Growth and painting: one thread per seed grows its 11x11 (11x11x11) window by breadth-first
  search through counts above 2 (5 king moves), then writes ``rank + 1`` into the label grid with
  an atomic max. The CPU paints in rank order so the later (higher-ranked) seed wins an overlap:
  the maximum is that, whatever order the threads run in.
- Labels: each point takes the grid's label at its endpoint; per-label counts and first points
  (atomic add / min: exact); labels above ``max_size_fraction`` dropped; the survivors numbered by
  first appearance through an ordered compaction of their first points.
"""
import numpy as np
from numba import cuda

from ._device import device_function, kernel

_SEED_MIN_COUNT = 10
_GROW_MIN_COUNT = 2
_SEED_RADIUS = 2
_GROW_STEPS = 5
_W = 2 * _GROW_STEPS + 1
_WINDOW_2D = _W * _W  # local array sizes must be module constants
_WINDOW_3D = _W * _W * _W


@kernel
def seed_flags(hist, Lz, Ly, Lx, flags):
    r = _SEED_RADIUS
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for idx in range(start, Lz * Ly * Lx, stride):
        h = hist[idx]
        is_max = h > _SEED_MIN_COUNT
        if is_max:
            z = idx // (Ly * Lx)
            y = (idx // Lx) % Ly
            x = idx % Lx
            for zz in range(max(z - r, 0), min(z + r + 1, Lz)):
                for yy in range(max(y - r, 0), min(y + r + 1, Ly)):
                    base = (zz * Ly + yy) * Lx
                    for xx in range(max(x - r, 0), min(x + r + 1, Lx)):
                        if hist[base + xx] > h:
                            is_max = False
        flags[idx] = 1 if is_max else 0


@kernel
def gather_counts(hist, seeds, n_seeds, keys):
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for s in range(start, n_seeds, stride):
        keys[s] = hist[seeds[s]]


@device_function
def _grow_and_paint(hist, Lz, Ly, Lx, seed, label, grid, region, queue, depth):
    """Grow one seed in its (depth, 11, 11) window (``region`` / ``queue``: the thread's local
    arrays of that size) and atomic-max ``label`` into ``grid`` over the region."""
    size = depth * _W * _W
    rz = _GROW_STEPS if depth > 1 else 0
    centre = (rz * _W + _GROW_STEPS) * _W + _GROW_STEPS
    for q in range(size):
        region[q] = 0
    sz = seed // (Ly * Lx)
    sy = (seed // Lx) % Ly
    sx = seed % Lx
    region[centre] = 1
    queue[0] = centre
    head = 0
    tail = 1
    for _ in range(_GROW_STEPS):
        layer_end = tail
        while head < layer_end:
            q = np.int64(queue[head])
            head += 1
            qz = q // (_W * _W)
            qy = (q // _W) % _W
            qx = q % _W
            for dz in range(-1, 2):
                wz = qz + dz
                z = sz + wz - rz
                if wz < 0 or wz >= depth or z < 0 or z >= Lz:
                    continue
                for dy in range(-1, 2):
                    wy = qy + dy
                    y = sy + wy - _GROW_STEPS
                    if y < 0 or y >= Ly:
                        continue
                    for dx in range(-1, 2):
                        wx = qx + dx
                        x = sx + wx - _GROW_STEPS
                        w = (wz * _W + wy) * _W + wx
                        if x < 0 or x >= Lx or region[w] != 0:
                            continue
                        if hist[(z * Ly + y) * Lx + x] > _GROW_MIN_COUNT:
                            region[w] = 1
                            queue[tail] = w
                            tail += 1
    for a in range(tail):
        q = np.int64(queue[a])
        z = sz + q // (_W * _W) - rz
        y = sy + (q // _W) % _W - _GROW_STEPS
        x = sx + q % _W - _GROW_STEPS
        cuda.atomic.max(grid, (z * Ly + y) * Lx + x, label)


@kernel
def grow_and_paint_2d(hist, Lz, Ly, Lx, seeds, n_seeds, rank, grid):
    """Regions of seeds ``s < n_seeds`` painted with ``rank[s] + 1`` (11 x 11 windows)."""
    region = cuda.local.array(_WINDOW_2D, np.uint8)
    queue = cuda.local.array(_WINDOW_2D, np.int16)
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for s in range(start, n_seeds, stride):
        _grow_and_paint(hist, Lz, Ly, Lx, seeds[s], rank[s] + 1, grid, region, queue, 1)


@kernel
def grow_and_paint_3d(hist, Lz, Ly, Lx, seeds, n_seeds, rank, grid):
    """3D variant (11 x 11 x 11 windows; local arrays sized at compile time, hence two kernels)."""
    region = cuda.local.array(_WINDOW_3D, np.uint8)
    queue = cuda.local.array(_WINDOW_3D, np.int16)
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for s in range(start, n_seeds, stride):
        _grow_and_paint(hist, Lz, Ly, Lx, seeds[s], rank[s] + 1, grid, region, queue, _W)


@kernel
def label_points(grid, ends, n_points, point_label, counts, first):
    """Label of each point (at its endpoint), per-label point counts and first point index."""
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for j in range(start, n_points, stride):
        k = grid[ends[j]]
        point_label[j] = k
        if k > 0:
            cuda.atomic.add(counts, k, 1)
            cuda.atomic.min(first, k, j)


@kernel
def first_of_kept(point_label, n_points, counts, first, max_count, flags):
    """flags[j] = 1 where point j is the first point of a label small enough to keep."""
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for j in range(start, n_points, stride):
        k = point_label[j]
        flags[j] = 1 if k > 0 and first[k] == j and np.float64(counts[k]) <= max_count else 0


@kernel
def number_labels(firsts, n_kept, point_label, new_id):
    """new_id[label] = r + 1 for the label whose first point is the r-th kept first point
    (r < n_kept[0], a device count)."""
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for r in range(start, n_kept[0], stride):
        new_id[point_label[firsts[r]]] = r + 1


@kernel
def write_labels(pts, n_points, point_label, new_id, masks):
    """masks[pts[j]] = new id of point j's label (masks zeroed beforehand)."""
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for j in range(start, n_points, stride):
        masks[pts[j]] = new_id[point_label[j]]
