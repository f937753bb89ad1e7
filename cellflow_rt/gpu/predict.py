"""The network half of the pipeline with its outputs left on the device (the GPU path of ``pipeline.predict``).

The normalised image goes up once; the flows and cell probability it returns are device arrays
(numba, with ``__cuda_array_interface__``), ready for the GPU dynamics; the styles are on the host.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Dict, Optional

import numpy as np
from numba import cuda

from ..family import family_of
from ..results import Prediction
from ..settings import EvalSettings
from .flows import device_flows
from .resize import resize_chw


def predict_on_device(x: np.ndarray, model, settings: EvalSettings, rescale, diameter: float,
                      timings: Optional[Dict[str, float]] = None):
    """Flows of a prepared image, computed and kept on the device.

    Parameters
    ----------
    x : ndarray
        Normalised float32 (N, Y, X, C) planes (:func:`~cellflow_rt.pipeline.prepare_image`); 2D
        images and stacks of planes (do_3D runs on the host path).
    model : LoadedModel
        Its network should run on CUDA or TensorRT; any other runs through the host.
    settings : EvalSettings
    rescale, diameter
        As :func:`~cellflow_rt.pipeline.predict_prepared` computes them.
    timings : dict, optional
        Stage seconds so far; ``network`` is added (the device work is complete when it is taken).

    Returns
    -------
    Prediction
        ``dP`` (2, N, Y, X) and ``cellprob`` (N, Y, X) are device arrays, equal to the host path's
        arrays when the network gives the same outputs.
    """
    if settings.do_3D:
        raise ValueError("predict_on_device runs 2D images and stacks of planes; do_3D runs on the host path")
    timings = dict(timings or {})
    tic = time.perf_counter()
    nimg, Ly, Lx = x.shape[:3]
    planes = cuda.to_device(np.ascontiguousarray(x, dtype=np.float32))
    flows, styles = device_flows(model.net).run(planes, rescale=rescale, augment=settings.augment,
                                                batch_size=settings.batch_size, tile_overlap=settings.tile_overlap,
                                                bsize=family_of(model).tile_side(settings))
    if settings.resample and rescale != 1.0:
        full = cuda.device_array((3, nimg, Ly, Lx), np.float32)
        for n in range(nimg):
            resize_chw(flows[:, n], full[:, n])
        flows = full
    cuda.synchronize()
    timings["network"] = time.perf_counter() - tic
    return Prediction(dP=flows[:2], cellprob=flows[2], styles=styles, shape=(Ly, Lx), rescale=rescale,
                      diameter=diameter, settings=settings, timings=timings,
                      providers=tuple(model.net.providers), family=family_of(model))


def prediction_to_host(prediction):
    """The same prediction with ``dP`` and ``cellprob`` in host memory (numpy), for the CPU dynamics and the outputs."""
    return dataclasses.replace(prediction, dP=_to_host(prediction.dP), cellprob=_to_host(prediction.cellprob))


def _to_host(array):
    return array.copy_to_host() if hasattr(array, "copy_to_host") else array
