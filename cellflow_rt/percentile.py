"""Percentiles with the reference's arithmetic (numpy 2.0.2), whatever numpy is installed.

numpy 2.0 computes the quantile, the virtual index and the interpolation weight of
``np.percentile`` in the array's float type. numpy 2.1 and later compute the index in float64 when
the percentile is a Python number, which moves the 99th percentile of a float32 array by up to
several ulps: enough to change normalised images (and uint8 pictures) compared with Cellpose's
outputs made under numpy 2.0.2. This module restates numpy 2.0's rule (checked bit for bit against
numpy 2.0.2 on 400 random arrays).
"""
from __future__ import annotations

import numpy as np

__all__ = ["percentile"]


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
