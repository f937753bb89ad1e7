"""segment(image, model, settings): image -> preprocess -> network -> flows -> dynamics -> masks.

The orchestrator of one image (2D, a stack of 2D planes, or a 3D volume), for every model family.
Each stage lives in its own module; this file only decides what runs, in which precision, and in
which order, the way Cellpose's ``CellposeModel.eval`` does. What differs between families (the
channels, tiles, resize rule, Euler steps, dynamics...) is asked of ``model.family``
(:mod:`cellflow_rt.family`), never decided here.
"""
from __future__ import annotations

import time
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from .dynamics import stitch3D
from .family import DEFAULT_FAMILY, family_of
from .flows import run_network
from .gpu import choose_dynamics
from .loaded_model import LoadedModel
from .preprocess import stack_normalization
from .resize import resize_bilinear
from .results import Prediction, Segmentation
from .settings import EvalSettings

__all__ = ["segment", "predict", "predict_prepared", "finish", "prepare_image", "rescale_for", "euler_iterations",
           "device_resident", "dynamics_for", "masks_from_flows", "stack_normalization", "Prediction",
           "Segmentation"]


def rescale_for(model: LoadedModel, settings: EvalSettings):
    """Resize factor of the network input, in the reference's precision (the family's rule)."""
    return family_of(model).rescale_for(model, settings)


def euler_iterations(settings: EvalSettings, rescale, family=None):
    """Number of Euler steps by ``family``'s rule (None: the default family's, Cellpose 3's)."""
    return (family or DEFAULT_FAMILY).euler_iterations(settings, rescale)


def prepare_image(image: np.ndarray, settings: EvalSettings, nchan: int, family=None) -> np.ndarray:
    """Input array -> normalised float32 (N, Y, X, C) planes (N = 1 for a 2D image), by ``family``'s
    rule (None: the default family's)."""
    return (family or DEFAULT_FAMILY).prepare_image(image, settings, nchan)


def predict(image: np.ndarray, model: LoadedModel, settings: EvalSettings = EvalSettings()) -> Prediction:
    """First half of :func:`segment`: preprocessing and the network (flows, cell probability, style)."""
    tic = time.perf_counter()
    x = family_of(model).prepare_image(image, settings, model.nchan)
    return predict_prepared(x, model, settings, {"preprocess": time.perf_counter() - tic})


def device_resident(model: LoadedModel, settings: EvalSettings) -> bool:
    """Whether :func:`predict_prepared` leaves the flows on the GPU for the GPU dynamics.

    Yes when the model's family has a GPU path, the dynamics run on the GPU
    (:func:`cellflow_rt.gpu.choose_dynamics`: the network runs on CUDA or TensorRT and numba sees a
    CUDA device, unless ``settings.dynamics`` is ``cpu``) and the image is 2D or a stack of planes
    (do_3D runs on the host path).
    """
    if settings.do_3D or not family_of(model).gpu_path or not getattr(model.net, "on_gpu", False):
        return False
    return choose_dynamics(settings.dynamics, tuple(getattr(model.net, "providers", ()))) == "gpu"


def predict_prepared(x: np.ndarray, model: LoadedModel, settings: EvalSettings = EvalSettings(),
                     timings: Optional[Dict[str, float]] = None) -> Prediction:
    """The network half of :func:`predict` on a prepared image (:func:`prepare_image`).

    On the GPU path (:func:`device_resident`) the returned ``dP`` and ``cellprob`` are device arrays
    (:func:`cellflow_rt.gpu.predict.predict_on_device`).
    """
    model.require_kind("segmentation", "model")
    family = family_of(model)
    timings = dict(timings or {})
    rescale = family.rescale_for(model, settings)
    diameter = family.diameter_at(model, rescale)
    if device_resident(model, settings):
        from .gpu.predict import predict_on_device
        return predict_on_device(x, model, settings, rescale, diameter, timings)

    tile, pad_to = family.tile_side(settings), family.pad_to(settings)
    tic = time.perf_counter()
    if settings.do_3D:
        from .volume import volume_flows
        dP, cellprob, styles = volume_flows(x, model, settings, rescale, bsize=tile, pad_to=pad_to,
                                            styles=family.has_styles)
        shape = x.shape[:3]
    else:
        nimg, Ly, Lx = x.shape[:3]
        yf, styles = run_network(model.net, x, rescale=rescale, augment=settings.augment,
                                 batch_size=settings.batch_size, tile_overlap=settings.tile_overlap,
                                 bsize=tile, pad_to=pad_to, styles=family.has_styles)
        if settings.resample and rescale != 1.0:
            yf = np.stack([resize_bilinear(plane, Ly, Lx) for plane in yf])
        cellprob = yf[..., 2]
        dP = yf[..., :2].transpose(3, 0, 1, 2)
        shape = (Ly, Lx)
    timings["network"] = time.perf_counter() - tic
    return Prediction(dP=dP, cellprob=cellprob, styles=styles, shape=shape, rescale=rescale, diameter=diameter,
                      settings=settings, timings=timings, providers=tuple(getattr(model.net, "providers", ())),
                      family=family)


def dynamics_for(settings: EvalSettings, providers: Sequence[str] = (), family=None) -> Callable[..., np.ndarray]:
    """``family``'s ``resize_and_compute_masks`` (None: the default family's), on the CPU or the GPU
    as ``settings.dynamics`` and the network's ``providers`` decide (same masks)."""
    return (family or DEFAULT_FAMILY).mask_dynamics(settings, providers)


def finish(prediction: Prediction) -> Segmentation:
    """Second half of :func:`segment`: dynamics, flow check, resize back, hole filling, stitching."""
    p, settings = prediction, prediction.settings
    family = p.family or DEFAULT_FAMILY
    timings = dict(p.timings)
    if not settings.compute_masks:
        masks = np.zeros(0, np.uint16)
    else:
        tic = time.perf_counter()
        niter = family.euler_iterations(settings, p.rescale)
        compute = family.mask_dynamics(settings, p.providers)
        if settings.do_3D:
            masks = compute(
                p.dP, p.cellprob, niter=niter, cellprob_threshold=settings.cellprob_threshold,
                flow_threshold=settings.flow_threshold, interp=settings.interp, do_3D=True,
                resize=None if p.dP.shape[1:] == tuple(p.shape) else list(p.shape),
                min_size=settings.min_size, max_size_fraction=settings.max_size_fraction)
        else:
            masks = masks_from_flows(p.dP, p.cellprob, p.shape, settings, niter, compute=compute, family=family)
        timings["dynamics"] = time.perf_counter() - tic
    if hasattr(p.dP, "copy_to_host"):  # the GPU path's flows come down once, for the outputs
        from .gpu.predict import prediction_to_host
        p = prediction_to_host(p)
    # Cellpose squeezes every singleton axis (a 1-row image loses its row); drop only the plane axis
    dP, cellprob, styles = p.dP, p.cellprob, np.asarray(p.styles)
    if settings.do_3D:
        styles = styles.squeeze()
    elif cellprob.shape[0] == 1:
        dP, cellprob, styles = dP[:, 0], cellprob[0], styles[0]
    return Segmentation(masks=masks, dP=dP, cellprob=cellprob, styles=styles, diameter=p.diameter, timings=timings,
                        family=family)


def segment(image: np.ndarray, model: LoadedModel, settings: EvalSettings = EvalSettings()) -> Segmentation:
    """Segment one image (2D, stack of planes, or volume with ``do_3D``).

    Parameters
    ----------
    image : ndarray
        The image, axes as described by ``settings.channel_axis`` / ``z_axis`` (guessed otherwise).
    model : LoadedModel
        Network and metadata (its ``family`` says how Cellpose runs it).
    settings : EvalSettings
        Cellpose's evaluation options.

    Returns
    -------
    Segmentation
    """
    return finish(predict(image, model, settings))


def masks_from_flows(dP: np.ndarray, cellprob: np.ndarray, shape, settings: EvalSettings, niter,
                     compute: Optional[Callable[..., np.ndarray]] = None, family=None) -> np.ndarray:
    """Dynamics on each plane's flows, masks at ``shape``; stitched across planes (on the host) if
    asked. ``compute`` is :func:`dynamics_for`'s choice (default: ``family``'s for a network on the
    CPU; ``family`` None: the default family)."""
    family = family or DEFAULT_FAMILY
    compute = compute or family.mask_dynamics(settings)
    nimg = cellprob.shape[0]
    resize = None if cellprob.shape[1:] == tuple(shape) else list(shape)
    stitching = settings.stitch_threshold > 0 and nimg > 1
    planes: List[np.ndarray] = []
    for i in range(nimg):
        planes.append(compute(
            dP[:, i], cellprob[i], niter=niter, cellprob_threshold=settings.cellprob_threshold,
            flow_threshold=settings.flow_threshold, interp=settings.interp, resize=resize,
            # the reference turns min_size off per plane when stitching, and applies it in 3D after
            min_size=-1 if stitching else settings.min_size, max_size_fraction=settings.max_size_fraction))
    masks = np.stack(planes).astype(planes[0].dtype) if nimg > 1 else planes[0]
    if stitching:
        masks = stitch3D(masks, stitch_threshold=settings.stitch_threshold)
        masks = family.fill_holes_and_remove_small_masks(masks, min_size=settings.min_size)
    return masks
