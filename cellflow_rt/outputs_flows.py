"""Flow and cell-probability pictures: Cellpose's ``plot.dx_to_circ`` and the uint8 images of the
``_seg.npy`` file.

Arithmetic follows the reference step by step in the input's float type (float32 flows stay
float32, as numpy 2 computes them in Cellpose), so the uint8 results are the reference's.

Percentiles are computed as numpy 2.0 computes them for float arrays (the reference's numpy 2.0.2):
the quantile, the virtual index and the interpolation weight in the array's float type. numpy 2.1
and later compute the index in float64 when the percentile is a Python number, which moves the 99th
percentile of a float32 array by up to several ulps and changes some uint8 values.
"""
from __future__ import annotations

import numpy as np

__all__ = ["flow_to_rgb", "cellprob_to_uint8", "normalize99", "percentile"]


def percentile(x: np.ndarray, q: float):
    """``np.percentile(x, q)`` (linear method, whole array) with numpy 2.0's float-type arithmetic.

    Parameters
    ----------
    x : ndarray
        float32 or float64 values (not NaN).
    q : float
        Percentile in [0, 100].

    Returns
    -------
    numpy scalar of ``x``'s dtype
    """
    x = np.ravel(x)
    quantile = np.true_divide(q, x.dtype.type(100))
    index = (x.size - 1) * quantile
    below = int(np.floor(index))
    above = min(below + 1, x.size - 1)
    part = np.partition(x, sorted({below, above}))
    a, b = part[below], part[above]
    weight = index - np.floor(index)
    diff = b - a
    # numpy's _lerp: interpolate from the nearer end
    return b - diff * (1 - weight) if weight >= 0.5 else a + diff * weight


def normalize99(x: np.ndarray, lower: float = 1.0, upper: float = 99.0) -> np.ndarray:
    """Scale so that the 1st percentile maps to 0 and the 99th to 1 (Cellpose's ``normalize99``).

    Float32 unless ``x`` is float64; all zeros when the percentiles differ by 1e-3 or less.
    """
    x = np.array(x, dtype=np.float64 if np.asarray(x).dtype == np.float64 else np.float32)
    lo = percentile(x, lower)
    hi = percentile(x, upper)
    if hi - lo > 1e-3:
        x -= lo
        x /= hi - lo
    else:
        x[:] = 0
    return x


def flow_to_rgb(dP) -> np.ndarray:
    """RGB picture of flows: hue from the direction, brightness from the magnitude (``dx_to_circ``).

    Parameters
    ----------
    dP : ndarray
        (2, Ly, Lx) flows [dY, dX], or (3, Lz, Ly, Lx) flows [dZ, dY, dX]; any leading spatial axes
        after the first are kept.

    Returns
    -------
    ndarray
        uint8 (..., 3). The magnitude uses all components, normalised to its 1st-99th percentiles;
        the angle is ``atan2(dP[1], dP[0])`` (dX and dY in 2D; dY and dZ in 3D, as in Cellpose).
    """
    dP = np.asarray(dP)
    if dP.ndim < 2 or dP.shape[0] not in (2, 3):
        raise ValueError(f"dP must have shape (2, Ly, Lx) or (3, Lz, Ly, Lx), got {dP.shape}")
    if dP.dtype != np.float64:
        dP = dP.astype(np.float32, copy=False)
    mag = 255 * np.clip(normalize99(np.sqrt(np.sum(dP**2, axis=0))), 0, 1.0)
    angles = np.arctan2(dP[1], dP[0]) + np.pi
    mag /= 2
    rgb = np.empty((*dP.shape[1:], 3), np.uint8)
    for c in range(3):
        rgb[..., c] = np.clip(mag * (np.cos(angles + c * 2 * np.pi / 3) + 1), 0, 255).astype(np.uint8)
    return rgb


def cellprob_to_uint8(cellprob) -> np.ndarray:
    """Cell probability logits as uint8 ``255 * clip(normalize99(cellprob), 0, 1)`` (``_seg.npy`` flows[1])."""
    return (np.clip(normalize99(cellprob), 0, 1) * 255).astype(np.uint8)
