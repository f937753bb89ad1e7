"""Percentiles with the reference's arithmetic (numpy 2.0.2), whatever numpy is installed.

numpy 2.0 computes the quantile, the virtual index and the interpolation weight of
``np.percentile`` in the array's float type. numpy 2.1 and later compute the index in float64 when
the percentile is a Python number, which moves the 99th percentile of a float32 array by up to
several ulps: enough to change normalised images (and uint8 pictures) compared with Cellpose's
outputs made under numpy 2.0.2. This module restates numpy 2.0's rule (checked bit for bit against
numpy 2.0.2 on 400 random arrays).

Cellpose 4.2.1.1's reference environment has numpy 2.4.6, whose rule (from numpy 2.1 on) is also
written here (``rule="numpy2.1"``): the virtual index and the weight in float64, the weight (or one
minus it) rounded to the array's float type in the interpolation; checked bit for bit against
numpy 2.4.6 on 9000 random float32 arrays and percentiles.
"""
from __future__ import annotations

import numpy as np

__all__ = ["percentile", "percentiles", "RULES"]

#: The numpy arithmetics reproduced: numpy 2.0 (Cellpose 3.1.1.1's references), numpy >= 2.1
#: (Cellpose 4.2.1.1's).
RULES = ("numpy2.0", "numpy2.1")


def _index_and_weight(n: int, q: float, dtype, rule: str):
    # numpy 2.0: the percentile divided in the array's type; numpy >= 2.1: a Python float stays float64
    quantile = np.true_divide(q, dtype.type(100)) if rule == "numpy2.0" else float(q) / 100
    index = (n - 1) * quantile
    below = int(np.floor(index))
    return below, min(below + 1, n - 1), index - np.floor(index)


def _lerp(a, b, weight, rule: str):
    diff = b - a
    # numpy's _lerp: interpolate from the nearer end. numpy >= 2.1 rounds the float64 weight (or 1 -
    # weight) to the array's type; numpy 2.0's weight already has it.
    if rule == "numpy2.0":
        return b - diff * (1 - weight) if weight >= 0.5 else a + diff * weight
    cast = a.dtype.type
    return b - diff * cast(1 - weight) if weight >= 0.5 else a + diff * cast(weight)


def percentiles(x: np.ndarray, qs, rule: str = "numpy2.0") -> tuple:
    """Several :func:`percentile` values from one partition of ``x`` (one copy, one pass).

    Parameters
    ----------
    x : ndarray
        float32 or float64 values (not NaN).
    qs : sequence of float
        Percentiles in [0, 100].
    rule : {"numpy2.0", "numpy2.1"}
        Whose arithmetic: numpy 2.0's (default) or numpy 2.1 and later's.

    Returns
    -------
    tuple of numpy scalars of ``x``'s dtype, in the order of ``qs``
    """
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    x = np.ravel(x)
    spots = [_index_and_weight(x.size, q, x.dtype, rule) for q in qs]
    part = np.partition(x, sorted({i for below, above, _ in spots for i in (below, above)}))
    return tuple(_lerp(part[below], part[above], weight, rule) for below, above, weight in spots)


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
