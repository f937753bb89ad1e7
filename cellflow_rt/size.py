"""Cellpose's size model as plain numbers, and step 1 of its diameter estimate.

The exporter turns Cellpose's pickled ``*_size.npy`` into JSON numbers in the model manifest;
:class:`SizeModelParams` holds them and :func:`style_diameter` regresses a diameter from a style
vector exactly as ``SizeModel._size_estimation`` in Cellpose 3.1.1.1 does.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, eq=False)
class SizeModelParams:
    """Ridge regression from style to log diameter (Cellpose's ``SizeModel`` parameters).

    Attributes
    ----------
    A : ndarray of float64, shape (nstyle,)
        Regression weights.
    smean : ndarray of float64, shape (nstyle,)
        Mean training style (stored by Cellpose as float32; widened exactly).
    diam_mean : float
        The size model's own mean diameter (used in place of the network's).
    ymean : float
        Mean log-size target, added back at inference.
    """

    A: np.ndarray
    smean: np.ndarray
    diam_mean: float
    ymean: float

    @classmethod
    def from_json(cls, params: dict) -> "SizeModelParams":
        """Build from the manifest's ``size_model`` entry; raise ValueError when it is malformed."""
        try:
            A = np.array(params["A"], dtype=np.float64)
            smean = np.array(params["smean"], dtype=np.float64)
            diam_mean, ymean = float(params["diam_mean"]), float(params["ymean"])
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"size_model: needs numeric A, smean, diam_mean, ymean ({err})") from None
        if A.ndim != 1 or A.shape != smean.shape or A.size == 0:
            raise ValueError(f"size_model: A and smean must be equal-length vectors, got {A.shape} and {smean.shape}")
        if not (np.isfinite(A).all() and np.isfinite(smean).all() and np.isfinite(ymean) and diam_mean > 0):
            raise ValueError("size_model: values must be finite and diam_mean positive")
        A.setflags(write=False)
        smean.setflags(write=False)
        return cls(A=A, smean=smean, diam_mean=diam_mean, ymean=ymean)


def style_diameter(style, params: SizeModelParams) -> float:
    """Regress a cell diameter from a style vector (step 1 of Cellpose's size estimate).

    ``max(5, exp(A . (style - smean) + ln(diam_mean) + ymean))``; 0 or NaN gives ``diam_mean``.

    Parameters
    ----------
    style : array_like, shape (nstyle,) or (1, nstyle)
        The network's style for the image run at the model's own scale.
    params : SizeModelParams

    Returns
    -------
    float
        The diameter in pixels.

    Notes
    -----
    The arithmetic follows the reference's dtypes: Cellpose subtracts its float32 ``smean`` from
    the float32 style in float32, then the dot product with the float64 ``A``, the log and the
    float32 ``ymean`` promote to float64. ``smean`` is float32 in every Cellpose size model, so
    narrowing it back is exact; if it were not, the subtraction is done in float64.

    Examples
    --------
    >>> p = SizeModelParams(A=np.zeros(2), smean=np.zeros(2), diam_mean=30.0, ymean=0.0)
    >>> style_diameter(np.array([0.6, 0.8], np.float32), p)
    30.0
    """
    style = np.asarray(style)
    if style.ndim == 2 and style.shape[0] == 1:
        style = style[0]
    if style.shape != params.smean.shape:
        raise ValueError(f"style: expected shape {params.smean.shape}, got {style.shape}")
    smean32 = params.smean.astype(np.float32)
    if style.dtype == np.float32 and np.array_equal(smean32, params.smean):
        centred = style - smean32
    else:
        centred = style.astype(np.float64) - params.smean
    estimate = np.exp(params.A @ centred + np.log(np.float64(params.diam_mean)) + params.ymean)
    estimate = float(np.maximum(5.0, estimate))
    if estimate == 0 or np.isnan(estimate):
        return float(params.diam_mean)
    return estimate
