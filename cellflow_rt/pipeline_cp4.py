"""The pipeline for Cellpose 4 (Cellpose-SAM) models: Cellpose 4.2.1.1's ``CellposeModel.eval``.

Same stages and data flow as :mod:`cellflow_rt.pipeline` (which calls :func:`predict` and
:func:`finish` for generation-4 models); what differs, stage by stage:

- preprocess: Cellpose 4's axes and up to 3 channels, channels that were not normalised zeroed
  (:mod:`.preprocess_cp4`);
- resize: by ``30 / diameter`` when a diameter is given, else not at all (no ``diam_mean``, no
  ``rescale`` option, no size model);
- network: tiles of 256, planes padded up to a tile, 1-2 channel images zero-padded to 3, no style
  (Cellpose 4 returns zeros);
- dynamics: ``niter = int(200 / rescale)`` with ``resample`` (else 200), and Cellpose 4's dynamics
  (:mod:`.dynamics.cp4`);
- ``bsize`` and ``interp`` do not apply (Cellpose 4 has neither option); ``channels`` and
  ``rescale`` are ignored.
"""
from __future__ import annotations

import time

import numpy as np

from . import dynamics
from .dynamics import cp4 as dynamics_cp4
from .flows import run_network
from .preprocess_cp4 import prepare_image
from .registry import CPSAM_TILE
from .resize import resize_bilinear

#: Cellpose 4's tile side (fixed by the network's position embedding).
TILE = CPSAM_TILE
#: The cell diameter Cellpose-SAM works at: an image with cells of ``diameter`` pixels is resized by 30 / diameter.
DIAMETER = 30.0


def rescale_for(settings) -> float:
    """``30 / diameter`` when a diameter is given, else 1 (Python float, as the reference)."""
    if settings.diameter is not None and settings.diameter > 0:
        return DIAMETER / float(settings.diameter)
    return 1.0


def euler_iterations(settings, rescale) -> int:
    """The user's ``niter``, else ``int(200 / rescale)`` with ``resample``, else 200."""
    if settings.niter:
        return settings.niter
    return int(200 / (rescale if settings.resample else 1))


def predict(image: np.ndarray, model, settings):
    """Preprocessing and the network, as :func:`cellflow_rt.pipeline.predict` for a Cellpose 4 model."""
    from .pipeline import Prediction

    timings = {}
    tic = time.perf_counter()
    x, _ = prepare_image(image, settings)
    rescale = rescale_for(settings)
    timings["preprocess"] = time.perf_counter() - tic

    tic = time.perf_counter()
    if settings.do_3D:
        from .volume import volume_flows
        dP, cellprob, styles = volume_flows(x, model, settings, rescale, bsize=TILE, pad_to=TILE, styles=False)
        shape = x.shape[:3]
    else:
        nimg, Ly, Lx = x.shape[:3]
        yf, styles = run_network(model.net, x, rescale=rescale, augment=settings.augment,
                                 batch_size=settings.batch_size, tile_overlap=settings.tile_overlap, bsize=TILE,
                                 pad_to=TILE, styles=False)
        if settings.resample and rescale != 1.0:
            yf = np.stack([resize_bilinear(plane, Ly, Lx) for plane in yf])
        cellprob = yf[..., 2]
        dP = yf[..., :2].transpose(3, 0, 1, 2)
        shape = (Ly, Lx)
    timings["network"] = time.perf_counter() - tic
    return Prediction(dP=dP, cellprob=cellprob, styles=styles, shape=shape, rescale=rescale,
                      diameter=DIAMETER / rescale, settings=settings, timings=timings, generation=4)


def finish(prediction):
    """Dynamics, resize back, hole filling and stitching, as :func:`cellflow_rt.pipeline.finish`."""
    from .pipeline import Segmentation

    p, settings = prediction, prediction.settings
    timings = dict(p.timings)
    if not settings.compute_masks:
        masks = np.zeros(0, np.uint16)
    else:
        tic = time.perf_counter()
        niter = euler_iterations(settings, p.rescale)
        if settings.do_3D:
            masks = dynamics_cp4.resize_and_compute_masks(
                p.dP, p.cellprob, niter=niter, cellprob_threshold=settings.cellprob_threshold,
                flow_threshold=settings.flow_threshold, do_3D=True,
                resize=None if p.dP.shape[1:] == tuple(p.shape) else list(p.shape),
                min_size=settings.min_size, max_size_fraction=settings.max_size_fraction)
        else:
            masks = _masks_from_flows(p.dP, p.cellprob, p.shape, settings, niter)
        timings["dynamics"] = time.perf_counter() - tic
    dP, cellprob, styles = p.dP, p.cellprob, np.asarray(p.styles)
    if settings.do_3D:
        styles = styles.squeeze()
    elif cellprob.shape[0] == 1:
        dP, cellprob, styles = dP[:, 0], cellprob[0], styles[0]
    return Segmentation(masks=masks, dP=dP, cellprob=cellprob, styles=styles, diameter=p.diameter, timings=timings)


def _masks_from_flows(dP, cellprob, shape, settings, niter) -> np.ndarray:
    """Each plane's masks at ``shape``; stitched across planes if asked (min_size after stitching)."""
    nimg = cellprob.shape[0]
    resize = None if cellprob.shape[1:] == tuple(shape) else list(shape)
    stitching = settings.stitch_threshold > 0 and nimg > 1
    planes = [dynamics_cp4.resize_and_compute_masks(
        dP[:, i], cellprob[i], niter=niter, cellprob_threshold=settings.cellprob_threshold,
        flow_threshold=settings.flow_threshold, resize=resize, min_size=-1 if stitching else settings.min_size,
        max_size_fraction=settings.max_size_fraction) for i in range(nimg)]
    masks = np.stack(planes).astype(planes[0].dtype) if nimg > 1 else planes[0]
    if stitching:
        masks = dynamics.stitch3D(masks, stitch_threshold=settings.stitch_threshold)
        masks = dynamics_cp4.fill_holes_and_remove_small_masks(masks, min_size=settings.min_size)
    return masks
