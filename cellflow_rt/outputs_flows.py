"""Flow and cell-probability pictures: Cellpose's ``plot.dx_to_circ`` and the uint8 images of the
``_seg.npy`` file.

Arithmetic follows the reference step by step in the input's float type (float32 flows stay
float32, as numpy 2 computes them in Cellpose), so the uint8 results are the reference's.

Percentiles use :func:`cellflow_rt.percentile.percentiles` (numpy 2.0's arithmetic, Cellpose 3's
reference; Cellpose 4's flow picture takes numpy 2.1's and subsamples big arrays: ``cellpose4=True``).
"""
from __future__ import annotations

import numpy as np

from .percentile import percentiles

__all__ = ["flow_to_rgb", "cellprob_to_uint8", "normalize99"]


def normalize99(x: np.ndarray, lower: float = 1.0, upper: float = 99.0, cellpose4: bool = False) -> np.ndarray:
    """Scale so that the 1st percentile maps to 0 and the 99th to 1 (Cellpose's ``normalize99``).

    Float32 unless ``x`` is float64; all zeros when the percentiles differ by 1e-3 or less.
    ``cellpose4``: Cellpose 4.2.1.1's call (numpy 2.1's percentiles, on a strided subsample of
    arrays above 224**3 elements).
    """
    x = np.array(x, dtype=np.float64 if np.asarray(x).dtype == np.float64 else np.float32)
    sample = x
    if cellpose4 and x.size > 224**3:
        step = [max(1, n // 224) for n in x.shape]
        if x.ndim == 3:
            step[0] = max(1, x.shape[0] // 50)
        sample = x[tuple(slice(None, None, s) for s in step)]
    lo, hi = percentiles(sample, (lower, upper), rule="numpy2.1" if cellpose4 else "numpy2.0")
    if hi - lo > 1e-3:
        x -= lo
        x /= hi - lo
    else:
        x[:] = 0
    return x


def flow_to_rgb(dP, cellpose4: bool = False) -> np.ndarray:
    """RGB picture of flows: hue from the direction, brightness from the magnitude (``dx_to_circ``).

    Parameters
    ----------
    dP : ndarray
        (2, Ly, Lx) flows [dY, dX], or (3, Lz, Ly, Lx) flows [dZ, dY, dX]; any leading spatial axes
        after the first are kept.
    cellpose4 : bool
        Cellpose 4.2.1.1's picture (its magnitude normalisation; see :func:`normalize99`).

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
    mag = 255 * np.clip(normalize99(np.sqrt(np.sum(dP**2, axis=0)), cellpose4=cellpose4), 0, 1.0)
    angles = np.arctan2(dP[1], dP[0]) + np.pi
    mag /= 2
    rgb = np.empty((*dP.shape[1:], 3), np.uint8)
    for c in range(3):
        rgb[..., c] = np.clip(mag * (np.cos(angles + c * 2 * np.pi / 3) + 1), 0, 255).astype(np.uint8)
    return rgb


def cellprob_to_uint8(cellprob) -> np.ndarray:
    """Cell probability logits as uint8 ``255 * clip(normalize99(cellprob), 0, 1)`` (``_seg.npy`` flows[1])."""
    return (np.clip(normalize99(cellprob), 0, 1) * 255).astype(np.uint8)
