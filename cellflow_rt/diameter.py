"""Cellpose's two-step diameter estimate: size model on the style vector, then median mask size.

Step 1 runs the network at the model's own scale (``diam_mean / diam_labels``) and regresses the
diameter from the style vector. Step 2 segments at that diameter (no resampling, nearest-pixel
dynamics, default thresholds: ``SizeModel.eval`` in Cellpose 3.1.1.1) and returns the median
equivalent-circle diameter of the masks found.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np

from . import dynamics
from .loaded_model import LoadedModel
from .settings import EvalSettings
from .size import style_diameter


def estimate_diameter(image: np.ndarray, model: LoadedModel, settings: EvalSettings) -> Tuple[float, float]:
    """Estimate the cell diameter of a 2D image with the model's size model.

    Parameters
    ----------
    image : ndarray
        The image (as passed to :func:`~cellflow_rt.pipeline.segment`).
    model : LoadedModel
        Must carry a size model.
    settings : EvalSettings
        Only channels, channel_axis, z_axis, the normalisation options and batch_size are used, as
        in the reference.

    Returns
    -------
    diameter : float
        Step 2's estimate (median mask diameter in input pixels; the size model's diam_mean when no
        mask is found).
    diameter_from_style : float
        Step 1's estimate.
    """
    from .pipeline import segment

    size_model = model.size_model
    if size_model is None:
        raise ValueError(f"model {model.name!r} has no size model: give a diameter")
    base = EvalSettings(channels=settings.channels, channel_axis=settings.channel_axis, z_axis=settings.z_axis,
                        batch_size=settings.batch_size, **settings.normalization.as_dict())
    styles = segment(image, model, base.with_(resample=False, compute_masks=False)).styles
    diam_style = style_diameter(styles, size_model)
    rescale = size_model.diam_mean / diam_style if size_model.diam_mean > 0 else 1.0
    masks = segment(image, model, base.with_(resample=False, rescale=rescale, interp=False)).masks
    diam = dynamics.diameters(masks)[0]
    if diam == 0 or np.isnan(diam):
        diam = size_model.diam_mean
    return float(diam), float(diam_style)
