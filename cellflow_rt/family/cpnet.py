"""The CPnet family: Cellpose 3.1.1.1's networks (cyto, cyto2, cyto3, nuclei and models trained on them).

Two channels selected with ``channels=[chan, chan2]``, tiles of 224 (``bsize``), a 256-number
style head (and an optional size model on it), resize by ``diam_mean / diameter`` (else
``diam_mean / diam_labels``), ``200 / rescale`` Euler steps with ``resample``, Cellpose 3's dynamics
on the CPU or the GPU, and Cellpose 3's restoration nets in front.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from .base import ModelFamily, channels_for, per_image_value


def eval_signature(x, batch_size: int = 8, resample: bool = True, channels=None, channel_axis=None, z_axis=None,
                   normalize=True, invert: bool = False, rescale=None, diameter=None, flow_threshold: float = 0.4,
                   cellprob_threshold: float = 0.0, do_3D: bool = False, anisotropy=None, flow3D_smooth=0,
                   stitch_threshold: float = 0.0, min_size: int = 15, max_size_fraction: float = 0.4, niter=None,
                   augment: bool = False, tile_overlap: float = 0.1, bsize: int = 224, interp: bool = True,
                   compute_masks: bool = True, progress=None, dynamics: str = "auto"):
    """Cellpose 3.1.1.1's ``CellposeModel.eval`` arguments (and cellflow-rt's ``dynamics``)."""


class CPnet(ModelFamily):
    """Cellpose 3.1.1.1's CPnet (see the module docstring)."""

    name = "cpnet"
    title = "Cellpose 3 (CPnet)"
    cellpose_version = "3.1.1.1"
    cellpose_generation = 3
    manifest_keys = {"nbase": (list,), "default_channels": (list,)}
    selects_channels = True
    max_channels = None
    default_tile = 224
    tile_fixed = False
    pads_to_tile = False
    has_styles = True
    may_have_size_model = True
    reference_diameter = None
    has_interp = True
    restoration_fits = True
    gpu_path = True
    bf16_by_default = False
    flow_picture_rule = "numpy2.0"
    eval_signature = staticmethod(eval_signature)

    def check_manifest(self, manifest: dict) -> Optional[str]:
        channels = manifest.get("default_channels")
        if len(channels) != 2 or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in channels):
            return f"default_channels must be two non-negative ints, got {channels!r}"
        return None

    def prepare_image(self, image: np.ndarray, settings, nchan: int) -> np.ndarray:
        from ..preprocess import prepare_selected_channels
        return prepare_selected_channels(image, settings, nchan)

    def rescale_for(self, model, settings):
        """``diam_mean / diameter``, else ``rescale``, else ``diam_mean / diam_labels`` (errata A4:
        float32 for custom models, as the reference computes it)."""
        if settings.diameter is not None and settings.diameter > 0:
            return model.diam_mean / float(settings.diameter)
        if settings.rescale is not None:
            return settings.rescale
        return model.diam_mean / model.diam_labels

    def diameter_at(self, model, rescale) -> float:
        return float(model.diam_mean / rescale)

    def euler_iterations(self, settings, rescale):
        """The user's ``niter``, else ``200 / rescale`` with resample (unrounded: errata A3), else 200."""
        if settings.niter:
            return settings.niter
        if not settings.resample:
            return 200
        return (1 / rescale) * 200

    def mask_dynamics(self, settings, providers=()):
        """The CPU dynamics, or the GPU's (same masks) where :func:`cellflow_rt.gpu.choose_dynamics` says."""
        from ..gpu import choose_dynamics
        if choose_dynamics(settings.dynamics, tuple(providers)) == "gpu":
            from ..gpu.dynamics import resize_and_compute_masks
            return resize_and_compute_masks
        from ..dynamics import resize_and_compute_masks
        return resize_and_compute_masks

    def fill_holes_and_remove_small_masks(self, masks: np.ndarray, min_size: int) -> np.ndarray:
        from ..dynamics import fill_holes_and_remove_small_masks
        return fill_holes_and_remove_small_masks(masks, min_size=min_size)

    def per_image(self, arguments: dict):
        """A list of images: ``channels`` (one pair per image or one for all), ``rescale`` and
        ``diameter`` (a list gives one per image) per image."""
        x = arguments["x"]
        if not isinstance(x, list):
            return None
        return [dict(arguments, x=xi, channels=channels_for(arguments["channels"], i, len(x)),
                     rescale=per_image_value(arguments["rescale"], i),
                     diameter=per_image_value(arguments["diameter"], i)) for i, xi in enumerate(x)]


CPNET = CPnet()
