"""segment(image, model, settings): image -> preprocess -> network -> flows -> dynamics -> masks.

The orchestrator of one image (2D, a stack of 2D planes, or a 3D volume). Each stage lives in its
own module; this file only decides what runs, in which precision, and in which order, the way
Cellpose 3.1.1.1's ``CellposeModel.eval`` does. Cellpose 4 (Cellpose-SAM) models follow Cellpose
4.2.1.1's ``eval`` instead (:mod:`.pipeline_cp4`): :func:`predict`, :func:`finish` and
:func:`rescale_for` hand them over on the model's generation (``LoadedModel.generation``).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from . import dynamics
from .flows import run_network
from .gpu import choose_dynamics
from .loaded_model import LoadedModel
from .normalize import NormalizeOptions, normalize_img
from .preprocess import check_finite, convert_image
from .resize import resize_bilinear
from .settings import EvalSettings


@dataclass
class Segmentation:
    """What :func:`segment` returns for one image.

    Attributes
    ----------
    masks : ndarray
        Labels (uint16, or uint32 above 65535 masks) at the input's size; 0 = background.
    dP : ndarray
        Flows, (2, Y, X) in 2D (or (2, Z, Y, X) for stacks), (3, Z, Y, X) for do_3D.
    cellprob : ndarray
        Cell probability logits, same spatial shape as ``dP[0]``.
    styles : ndarray
        (256,) style vector (per plane for stacks).
    diameter : float
        Diameter the image was run at (pixels).
    timings : dict
        Seconds per stage: preprocess, network, dynamics.
    """

    masks: np.ndarray
    dP: np.ndarray
    cellprob: np.ndarray
    styles: np.ndarray
    diameter: float
    timings: Dict[str, float] = field(default_factory=dict)


def rescale_for(model: LoadedModel, settings: EvalSettings):
    """Resize factor of the network input, in the reference's precision (errata A4)."""
    if getattr(model, "generation", 3) == 4:  # (objects with diameters only are Cellpose 3 metadata)
        from .pipeline_cp4 import rescale_for as rescale_cp4
        return rescale_cp4(settings)
    if settings.diameter is not None and settings.diameter > 0:
        return model.diam_mean / float(settings.diameter)
    if settings.rescale is not None:
        return settings.rescale
    return model.diam_mean / model.diam_labels


def euler_iterations(settings: EvalSettings, rescale):
    """Number of Euler steps: the user's, else 200 / rescale with resample, else 200 (errata A3)."""
    if settings.niter:
        return settings.niter
    if not settings.resample:
        return 200
    return (1 / rescale) * 200


def prepare_image(image: np.ndarray, settings: EvalSettings, nchan: int) -> np.ndarray:
    """Input array -> normalised float32 (N, Y, X, nchan) planes (N = 1 for a 2D image)."""
    image = np.asarray(image)
    if image.size == 0:
        raise ValueError(f"image is empty (shape {image.shape})")
    check_finite(image)
    stack = settings.do_3D or settings.stitch_threshold > 0
    x = convert_image(image, settings.channels, channel_axis=settings.channel_axis, z_axis=settings.z_axis,
                      do_3D=stack, nchan=nchan)
    if x.ndim < 4:
        x = x[np.newaxis]
    return normalize_img(x, stack_normalization(settings, x.shape[0]))


def stack_normalization(settings: EvalSettings, nplanes: int) -> NormalizeOptions:
    """The normalisation options as Cellpose's ``eval`` applies them to ``nplanes`` planes: do_3D
    normalises the whole volume, stitching follows ``norm3D``, separate planes are done one by one."""
    options = settings.normalization
    if nplanes > 1 and (settings.do_3D or settings.stitch_threshold > 0):
        return options.with_(norm3D=True) if settings.do_3D else options
    if nplanes > 1:
        return options.with_(norm3D=False)
    return options


@dataclass
class Prediction:
    """The network stage's result for one image, before dynamics (see :func:`predict`).

    ``dP`` is (2, N, Y, X) for N planes, or (3, Z, Y, X) with ``do_3D``; ``shape`` is the spatial
    shape the masks must have; ``providers`` are the network's execution providers (they decide
    where ``dynamics="auto"`` runs the dynamics); ``generation`` the Cellpose generation whose rules
    :func:`finish` follows.
    """

    dP: np.ndarray
    cellprob: np.ndarray
    styles: np.ndarray
    shape: tuple
    rescale: object
    diameter: float
    settings: EvalSettings
    timings: Dict[str, float] = field(default_factory=dict)
    providers: Sequence[str] = ()
    generation: int = 3


def predict(image: np.ndarray, model: LoadedModel, settings: EvalSettings = EvalSettings()) -> Prediction:
    """First half of :func:`segment`: preprocessing and the network (flows, cell probability, style)."""
    if getattr(model, "generation", 3) == 4:
        from .pipeline_cp4 import predict as predict_cp4
        return predict_cp4(image, model, settings)
    tic = time.perf_counter()
    x = prepare_image(image, settings, model.nchan)
    return predict_prepared(x, model, settings, {"preprocess": time.perf_counter() - tic})


def device_resident(model: LoadedModel, settings: EvalSettings) -> bool:
    """Whether :func:`predict_prepared` leaves the flows on the GPU for the GPU dynamics.

    Yes when the dynamics run on the GPU (:func:`cellflow_rt.gpu.choose_dynamics`: the network runs
    on CUDA or TensorRT and numba sees a CUDA device, unless ``settings.dynamics`` is ``cpu``) and
    the image is 2D or a stack of planes (do_3D runs on the host path). Cellpose 4 models run on the
    host path (:mod:`.pipeline_cp4`).
    """
    if settings.do_3D or getattr(model, "generation", 3) == 4 or not getattr(model.net, "on_gpu", False):
        return False
    return choose_dynamics(settings.dynamics, tuple(getattr(model.net, "providers", ()))) == "gpu"


def predict_prepared(x: np.ndarray, model: LoadedModel, settings: EvalSettings = EvalSettings(),
                     timings: Optional[Dict[str, float]] = None) -> Prediction:
    """The network half of :func:`predict` on a prepared image (:func:`prepare_image`).

    On the GPU path (:func:`device_resident`) the returned ``dP`` and ``cellprob`` are device arrays
    (:func:`cellflow_rt.gpu.predict.predict_on_device`).
    """
    model.require_kind("segmentation", "model")
    timings = dict(timings or {})
    rescale = rescale_for(model, settings)
    diameter = float(model.diam_mean / rescale)
    if device_resident(model, settings):
        from .gpu.predict import predict_on_device
        return predict_on_device(x, model, settings, rescale, diameter, timings)

    tic = time.perf_counter()
    if settings.do_3D:
        from .volume import volume_flows
        dP, cellprob, styles = volume_flows(x, model, settings, rescale)
        shape = x.shape[:3]
    else:
        nimg, Ly, Lx = x.shape[:3]
        yf, styles = run_network(model.net, x, rescale=rescale, augment=settings.augment,
                                 batch_size=settings.batch_size, tile_overlap=settings.tile_overlap,
                                 bsize=settings.bsize)
        if settings.resample and rescale != 1.0:
            yf = np.stack([resize_bilinear(plane, Ly, Lx) for plane in yf])
        cellprob = yf[..., 2]
        dP = yf[..., :2].transpose(3, 0, 1, 2)
        shape = (Ly, Lx)
    timings["network"] = time.perf_counter() - tic
    return Prediction(dP=dP, cellprob=cellprob, styles=styles, shape=shape, rescale=rescale, diameter=diameter,
                      settings=settings, timings=timings, providers=tuple(getattr(model.net, "providers", ())))


def dynamics_for(settings: EvalSettings, providers: Sequence[str] = ()) -> Callable[..., np.ndarray]:
    """``resize_and_compute_masks`` of the CPU path or of the GPU path, as ``settings.dynamics``
    and the network's ``providers`` decide (:func:`cellflow_rt.gpu.choose_dynamics`); same masks."""
    if choose_dynamics(settings.dynamics, providers) == "gpu":
        from .gpu.dynamics import resize_and_compute_masks
        return resize_and_compute_masks
    return dynamics.resize_and_compute_masks


def finish(prediction: Prediction) -> Segmentation:
    """Second half of :func:`segment`: dynamics, flow check, resize back, hole filling, stitching."""
    if prediction.generation == 4:
        from .pipeline_cp4 import finish as finish_cp4
        return finish_cp4(prediction)
    p, settings = prediction, prediction.settings
    timings = dict(p.timings)
    if not settings.compute_masks:
        masks = np.zeros(0, np.uint16)
    else:
        tic = time.perf_counter()
        niter = euler_iterations(settings, p.rescale)
        compute = dynamics_for(settings, p.providers)
        if settings.do_3D:
            masks = compute(
                p.dP, p.cellprob, niter=niter, cellprob_threshold=settings.cellprob_threshold,
                flow_threshold=settings.flow_threshold, interp=settings.interp, do_3D=True,
                resize=None if p.dP.shape[1:] == tuple(p.shape) else list(p.shape),
                min_size=settings.min_size, max_size_fraction=settings.max_size_fraction)
        else:
            masks = masks_from_flows(p.dP, p.cellprob, p.shape, settings, niter, compute=compute)
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
    return Segmentation(masks=masks, dP=dP, cellprob=cellprob, styles=styles, diameter=p.diameter, timings=timings)


def segment(image: np.ndarray, model: LoadedModel, settings: EvalSettings = EvalSettings()) -> Segmentation:
    """Segment one image (2D, stack of planes, or volume with ``do_3D``).

    Parameters
    ----------
    image : ndarray
        The image, axes as described by ``settings.channel_axis`` / ``z_axis`` (guessed otherwise).
    model : LoadedModel
        Network and metadata.
    settings : EvalSettings
        Cellpose's evaluation options.

    Returns
    -------
    Segmentation
    """
    return finish(predict(image, model, settings))


def masks_from_flows(dP: np.ndarray, cellprob: np.ndarray, shape, settings: EvalSettings, niter,
                     compute: Optional[Callable[..., np.ndarray]] = None) -> np.ndarray:
    """Dynamics on each plane's flows, masks at ``shape``; stitched across planes (on the host) if
    asked. ``compute`` is :func:`dynamics_for`'s choice (default: for a network on the CPU)."""
    compute = compute or dynamics_for(settings)
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
        masks = dynamics.stitch3D(masks, stitch_threshold=settings.stitch_threshold)
        masks = dynamics.fill_holes_and_remove_small_masks(masks, min_size=settings.min_size)
    return masks
