"""Small element-wise kernels on label arrays: fill, nearest resize, cast for the download."""
from numba import cuda

from ._device import kernel


@kernel
def fill(a, value):
    """a[:] = value (1D)."""
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, a.shape[0], stride):
        a[i] = value


@kernel
def gather_2d(src, rows, cols, dst):
    """dst[y, x] = src[rows[y], cols[x]]: OpenCV's INTER_NEAREST with precomputed indices."""
    Ly, Lx = dst.shape
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, Ly * Lx, stride):
        y = i // Lx
        x = i - y * Lx
        dst[y, x] = src[rows[y], cols[x]]


@kernel
def gather_3d(src, planes, rows, cols, dst):
    """dst[z, y, x] = src[planes[z], rows[y], cols[x]]."""
    Lz, Ly, Lx = dst.shape
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, Lz * Ly * Lx, stride):
        z = i // (Ly * Lx)
        y = (i // Lx) % Ly
        x = i % Lx
        dst[z, y, x] = src[planes[z], rows[y], cols[x]]


@kernel
def cast(src, dst):
    """dst[i] = src[i] in dst's dtype (1D views)."""
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, src.shape[0], stride):
        dst[i] = src[i]
