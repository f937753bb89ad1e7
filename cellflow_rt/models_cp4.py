"""``CellposeModel`` for Cellpose 4 (Cellpose-SAM) models: Cellpose 4.2.1.1's ``eval``.

``models.CellposeModel(pretrained_model=...)`` returns a :class:`CellposeSAMModel` when the model's
manifest says Cellpose 4; its ``eval`` takes Cellpose 4.2.1.1's arguments and defaults (no
``invert``, ``interp`` or size model; ``channels`` and ``rescale`` accepted and ignored, as Cellpose
4 does; ``bsize`` must be 256; up to 3 channels in any order) and returns what it returns:
``masks, [rgb_flow, dP, cellprob], styles`` with all-zero styles. The work is done by
:func:`cellflow_rt.pipeline.segment` (:mod:`.pipeline_cp4`).
"""
from __future__ import annotations

import warnings

import numpy as np

from .models import CellposeModel, _settings_from_eval_kwargs
from .pipeline import segment
from .pipeline_cp4 import TILE


class CellposeSAMModel(CellposeModel):
    """A Cellpose 4 (Cellpose-SAM) model; made by :class:`~cellflow_rt.models.CellposeModel`.

    Constructor arguments as :class:`~cellflow_rt.models.CellposeModel`. ``use_bfloat16`` (Cellpose
    4's, default True there) is accepted and ignored: cellflow-rt runs float32 unless
    ``precision="bf16"`` is given.
    """

    def eval(self, x, batch_size: int = 8, resample: bool = True, channels=None, channel_axis=None, z_axis=None,
             normalize=True, rescale=None, diameter=None, flow_threshold: float = 0.4,
             cellprob_threshold: float = 0.0, do_3D: bool = False, anisotropy=None, flow3D_smooth=0,
             stitch_threshold: float = 0.0, min_size: int = 15, max_size_fraction: float = 0.4, niter=None,
             augment: bool = False, tile_overlap: float = 0.1, bsize=None, compute_masks: bool = True,
             progress=None):
        """Segment an image, a list of images or a 5-D array of them; returns ``masks, flows, styles``.

        Arguments and defaults are Cellpose 4.2.1.1's ``CellposeModel.eval``; ``diameter`` resizes
        the image by ``30 / diameter`` (None: not resized). Lists give lists.
        """
        if channels is not None:
            warnings.warn("channels is not used by Cellpose 4 models, which take the first 3 channels in any "
                          "order; use channel_axis to say which axis holds them", stacklevel=2)
        if rescale is not None:
            warnings.warn("rescale is not used by Cellpose 4 models; give diameter instead", stacklevel=2)
        if bsize is not None and bsize != TILE:
            raise ValueError(f"bsize={bsize}: Cellpose 4 (Cellpose-SAM) models run tiles of {TILE} only")
        if isinstance(flow3D_smooth, (list, tuple, np.ndarray)):
            raise ValueError("flow3D_smooth: one sigma for all axes is supported (per-axis sigmas are not)")
        args = dict(batch_size=batch_size, resample=resample, channel_axis=channel_axis, z_axis=z_axis,
                    normalize=normalize, flow_threshold=flow_threshold, cellprob_threshold=cellprob_threshold,
                    do_3D=do_3D, anisotropy=anisotropy, flow3D_smooth=flow3D_smooth,
                    stitch_threshold=stitch_threshold, min_size=min_size, max_size_fraction=max_size_fraction,
                    niter=niter, augment=augment, tile_overlap=tile_overlap, compute_masks=compute_masks)
        if isinstance(x, list) or (isinstance(x, np.ndarray) and x.squeeze().ndim == 5):
            diameters = diameter if isinstance(diameter, (list, np.ndarray)) else [diameter] * len(x)
            out = [self._eval_one(xi, diameter=diameters[i], **args) for i, xi in enumerate(x)]
            return tuple(list(items) for items in zip(*out))
        return self._eval_one(x, diameter=diameter, **args)

    def _eval_one(self, x, diameter=None, **args):
        from .io.flows import flow_to_rgb

        settings = _settings_from_eval_kwargs(dict(args, diameter=None if diameter is None else float(diameter)))
        seg = segment(x, self.model, settings)
        return seg.masks, [flow_to_rgb(seg.dP, cellpose4=True), seg.dP, seg.cellprob], seg.styles
