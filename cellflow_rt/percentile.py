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

__all__ = ["percentile", "percentiles"]


def _index_and_weight(n: int, q: float, dtype):
    quantile = np.true_divide(q, dtype.type(100))
    index = (n - 1) * quantile
    below = int(np.floor(index))
    return below, min(below + 1, n - 1), index - np.floor(index)


def _lerp(a, b, weight):
    diff = b - a
    # numpy's _lerp: interpolate from the nearer end
    return b - diff * (1 - weight) if weight >= 0.5 else a + diff * weight


def percentiles(x: np.ndarray, qs) -> tuple:
    """Several :func:`percentile` values from one partition of ``x`` (one copy, one pass).

    Parameters
    ----------
    x : ndarray
        float32 or float64 values (not NaN).
    qs : sequence of float
        Percentiles in [0, 100].

    Returns
    -------
    tuple of numpy scalars of ``x``'s dtype, in the order of ``qs``
    """
    x = np.ravel(x)
    spots = [_index_and_weight(x.size, q, x.dtype) for q in qs]
    part = np.partition(x, sorted({i for below, above, _ in spots for i in (below, above)}))
    return tuple(_lerp(part[below], part[above], weight) for below, above, weight in spots)


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
    return percentiles(x, (q,))[0]
