"""Image resizing with OpenCV's INTER_LINEAR and INTER_NEAREST arithmetic, without OpenCV.

Cellpose resizes images, flows and masks with ``cv2.resize``. We write the two rules ourselves in
numba rather than depending on OpenCV (about 60 MB installed) because parity needs OpenCV's exact
arithmetic: half-pixel centres, float32 weights, horizontal pass then vertical pass, edge clamping
(x weights reset at the border, y rows clamped with the weights kept), no antialiasing on
downscale; and nearest's ``floor(dst * src/dst)`` rule, which is not pixel-centre aligned.
"""
from __future__ import annotations

import numba
import numpy as np

from ._numba import NUMBA_OPTS


def _linear_taps(n_src: int, n_dst: int, reset_weights_at_border: bool, float64_positions: bool):
    """Source index and float32 weight of the first tap for each destination index (OpenCV rule)."""
    scale = 1.0 / (n_dst / n_src)
    pos = (np.arange(n_dst) + 0.5) * scale - 0.5
    if not float64_positions:
        pos = pos.astype(np.float32)
    start = np.floor(pos).astype(np.int64)
    frac = (pos - start).astype(np.float32)
    if reset_weights_at_border:
        low = start < 0
        high = start >= n_src - 1
        frac[low | high] = 0.0
        start[low] = 0
        start[high] = n_src - 1
    return start, frac


@numba.njit(parallel=True, **NUMBA_OPTS)
def _bilinear_kernel(src, y0, fy, x0, fx, out):
    n_src_y = src.shape[0]
    n_src_x = src.shape[1]
    nchan = src.shape[2]
    one = np.float32(1.0)
    for dy in numba.prange(out.shape[0]):
        ya = min(max(y0[dy], 0), n_src_y - 1)
        yb = min(max(y0[dy] + 1, 0), n_src_y - 1)
        wb = fy[dy]
        wa = one - wb
        for dx in range(out.shape[1]):
            xa = x0[dx]
            xb = min(xa + 1, n_src_x - 1)
            w1 = fx[dx]
            w0 = one - w1
            for c in range(nchan):
                top = src[ya, xa, c] * w0 + src[ya, xb, c] * w1
                bottom = src[yb, xa, c] * w0 + src[yb, xb, c] * w1
                out[dy, dx, c] = top * wa + bottom * wb


def resize_bilinear(img: np.ndarray, Ly: int, Lx: int) -> np.ndarray:
    """Resize the first two axes of ``img`` to (Ly, Lx) like ``cv2.resize(..., INTER_LINEAR)``.

    Parameters
    ----------
    img : ndarray
        (Ly0, Lx0) or (Ly0, Lx0, C) array; computed in float32.
    Ly, Lx : int
        Output size (>= 1).

    Returns
    -------
    ndarray
        float32 array of shape (Ly, Lx) or (Ly, Lx, C).
    """
    Ly, Lx = int(Ly), int(Lx)
    if Ly < 1 or Lx < 1:
        raise ValueError(f"cannot resize to {Ly} x {Lx}: the rescaled image has no pixels")
    squeeze = img.ndim == 2
    src = np.ascontiguousarray(img[..., None] if squeeze else img, dtype=np.float32)
    if src.shape[:2] == (Ly, Lx):
        out = src.copy()
    else:
        y0, fy, x0, fx = bilinear_taps(src.shape[0], src.shape[1], Ly, Lx, src.shape[2])
        out = np.empty((Ly, Lx, src.shape[2]), np.float32)
        _bilinear_kernel(src, y0, fy, x0, fx, out)
    return out[..., 0] if squeeze else out


def bilinear_taps(Ly0: int, Lx0: int, Ly: int, Lx: int, nchan: int):
    """First source row/column and float32 weight of every output row/column of a bilinear resize.

    Returns ``(y0, fy, x0, fx)`` for resizing ``Ly0 x Lx0`` to ``Ly x Lx`` with ``nchan`` channels
    (the channel count picks OpenCV's position arithmetic, see below). Shared by the CPU kernel and
    the device kernels (:mod:`cellflow_rt.gpu.resize`), so both sample at the same positions.
    """
    # Measured on opencv 5.0 (the reference's): float32 images with 1, 3 or 4 channels take a
    # path that computes sample positions in float64; other channel counts (Cellpose's 2-channel
    # images) round positions to float32 first. The weights differ by up to 2e-4 between the two.
    float64_positions = nchan in (1, 3, 4)
    y0, fy = _linear_taps(Ly0, Ly, False, float64_positions)
    x0, fx = _linear_taps(Lx0, Lx, True, float64_positions)
    return y0, fy, x0, fx


def nearest_indices(n_src: int, n_dst: int) -> np.ndarray:
    """Source index of each destination index under OpenCV's INTER_NEAREST rule."""
    scale = 1.0 / (n_dst / n_src)
    return np.minimum(np.floor(np.arange(n_dst) * scale).astype(np.int64), n_src - 1)


def resize_nearest(labels: np.ndarray, Ly: int, Lx: int) -> np.ndarray:
    """Resize the first two axes of a label image like ``cv2.resize(..., INTER_NEAREST)``.

    Parameters
    ----------
    labels : ndarray
        (Ly0, Lx0, ...) array of any dtype; values are copied, never interpolated.
    Ly, Lx : int
        Output size.

    Returns
    -------
    ndarray
        Array of shape (Ly, Lx, ...) and the input's dtype.
    """
    iy = nearest_indices(labels.shape[0], int(Ly))
    ix = nearest_indices(labels.shape[1], int(Lx))
    return labels[iy[:, None], ix[None, :]]
