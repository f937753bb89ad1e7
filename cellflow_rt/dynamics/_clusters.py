"""Endpoints -> labels: Cellpose 3.1's ``get_masks_torch`` on the original grid, without torch.

The reference histograms endpoints on a grid padded by 20 pixels per side, but every endpoint lies
inside the image and every seed needs a count above 10, so the padding only ever contributes zeros:
working on the unpadded grid with clipped windows gives the same seeds and regions.

1. Histogram H of endpoints (foreground pixels only).
2. Seeds: H > 10 and H equal to the maximum of H over the 5x5 (5x5x5) window, in row-major order.
3. Seeds sorted by count ascending in torch's CPU tie order (``_sort``).
4. Each seed grows 5 times by a 3x3 (3x3x3) dilation restricted to H > 2 inside its 11x11
   (11x11x11) window: the pixels with H > 2 reachable in at most 5 king moves through pixels
   with H > 2. Regions are written in sorted order, so a later seed overwrites an earlier one.
5. Each foreground pixel takes the label at its endpoint; labels larger than
   ``max_size_fraction`` of the image are removed; labels are renumbered 1..N in order of first
   appearance in a row-major scan.

2D runs as 3D with a single plane (a 5x5x5 window clipped to one plane is the 5x5 window).
"""
import numba
import numpy as np

from .._numba import NUMBA_OPTS

_SEED_MIN_COUNT = 10
_GROW_MIN_COUNT = 2
_SEED_RADIUS = 2  # 5-wide max filter
_GROW_STEPS = 5  # 11-wide window


@numba.njit(**NUMBA_OPTS)
def endpoint_histogram(ends, size):
    hist = np.zeros(size, np.int32)
    for i in range(ends.shape[0]):
        hist[ends[i]] += 1
    return hist


@numba.njit(**NUMBA_OPTS)
def find_seeds(hist, Lz, Ly, Lx):
    """Flat indices (row-major) of the histogram's local maxima with a count above 10."""
    r = _SEED_RADIUS
    seeds = []
    for idx in range(hist.shape[0]):
        h = hist[idx]
        if h <= _SEED_MIN_COUNT:
            continue
        z = idx // (Ly * Lx)
        y = (idx // Lx) % Ly
        x = idx % Lx
        is_max = True
        for zz in range(max(z - r, 0), min(z + r + 1, Lz)):
            for yy in range(max(y - r, 0), min(y + r + 1, Ly)):
                base = (zz * Ly + yy) * Lx
                for xx in range(max(x - r, 0), min(x + r + 1, Lx)):
                    if hist[base + xx] > h:
                        is_max = False
                        break
                if not is_max:
                    break
            if not is_max:
                break
        if is_max:
            seeds.append(idx)
    return np.array(seeds, dtype=np.int64)


@numba.njit(parallel=True, **NUMBA_OPTS)
def grow_seeds(hist, Lz, Ly, Lx, seeds):
    """Region of each seed as a boolean (wz, 11, 11) window around it (wz = 1 in 2D, else 11)."""
    w = 2 * _GROW_STEPS + 1
    wz = w if Lz > 1 else 1
    rz = _GROW_STEPS if Lz > 1 else 0
    n = seeds.shape[0]
    regions = np.zeros((n, wz, w, w), np.bool_)
    for s in numba.prange(n):
        sz = seeds[s] // (Ly * Lx)
        sy = (seeds[s] // Lx) % Ly
        sx = seeds[s] % Lx
        region = regions[s]
        queue = np.empty((wz * w * w, 3), np.int64)
        region[rz, _GROW_STEPS, _GROW_STEPS] = True
        queue[0, 0] = rz
        queue[0, 1] = _GROW_STEPS
        queue[0, 2] = _GROW_STEPS
        head = 0
        tail = 1
        for _ in range(_GROW_STEPS):
            layer_end = tail
            while head < layer_end:
                qz = queue[head, 0]
                qy = queue[head, 1]
                qx = queue[head, 2]
                head += 1
                for dz in range(-1, 2):
                    wz_ = qz + dz
                    if wz_ < 0 or wz_ >= wz:
                        continue
                    z = sz + wz_ - rz
                    if z < 0 or z >= Lz:
                        continue
                    for dy in range(-1, 2):
                        wy_ = qy + dy
                        y = sy + wy_ - _GROW_STEPS
                        if y < 0 or y >= Ly:
                            continue
                        for dx in range(-1, 2):
                            wx_ = qx + dx
                            x = sx + wx_ - _GROW_STEPS
                            if x < 0 or x >= Lx or region[wz_, wy_, wx_]:
                                continue
                            if hist[(z * Ly + y) * Lx + x] > _GROW_MIN_COUNT:
                                region[wz_, wy_, wx_] = True
                                queue[tail, 0] = wz_
                                queue[tail, 1] = wy_
                                queue[tail, 2] = wx_
                                tail += 1
    return regions


@numba.njit(**NUMBA_OPTS)
def paint_regions(grid, Lz, Ly, Lx, seeds, regions, order):
    """Label grid (overwritten, e.g. the spent histogram): region of the seed ranked r (ascending
    count) painted with r + 1, in rank order."""
    wz = regions.shape[1]
    w = regions.shape[2]
    rz = wz // 2
    rxy = w // 2
    grid[:] = 0
    for rank in range(order.shape[0]):
        s = order[rank]
        sz = seeds[s] // (Ly * Lx)
        sy = (seeds[s] // Lx) % Ly
        sx = seeds[s] % Lx
        for a in range(wz):
            for b in range(w):
                for c in range(w):
                    if regions[s, a, b, c]:
                        grid[((sz + a - rz) * Ly + sy + b - rxy) * Lx + sx + c - rxy] = rank + 1
    return grid


@numba.njit(**NUMBA_OPTS)
def label_pixels(grid, pts, ends, n_seeds, max_count, masks):
    """Final labels into zeroed ``masks``: endpoint label, big labels removed, renumbered by first
    appearance. Returns the number of labels."""
    n = pts.shape[0]
    lab = np.empty(n, np.int64)
    counts = np.zeros(n_seeds + 1, np.int64)
    for i in range(n):
        lab[i] = grid[ends[i]]
        counts[lab[i]] += 1
    new_id = np.zeros(n_seeds + 1, np.int64)
    next_id = 0
    for i in range(n):
        k = lab[i]
        if k == 0 or counts[k] > max_count:
            continue
        if new_id[k] == 0:
            next_id += 1
            new_id[k] = next_id
        masks[pts[i]] = new_id[k]
    return next_id
