"""The Cellpose-SAM family: Cellpose 4.2.1.1's ``cpsam`` networks (a SAM ViT encoder).

What differs from CPnet (:mod:`.cpnet`), stage by stage:

- preprocess: up to 3 channels in any order, no ``channels`` selection, Cellpose 4's axis rules,
  numpy 2.1's percentiles, channels that were not normalised zeroed
  (:func:`cellflow_rt.preprocess.prepare_channels_as_given`);
- resize: by ``30 / diameter`` when a diameter is given, else not at all (no ``diam_mean``, no
  ``rescale`` option, no size model);
- network: tiles of 256 fixed by the position embedding, planes padded up to a tile, 1-2 channel
  images zero-padded to 3, no style head (Cellpose 4 returns zeros);
- dynamics: ``int(200 / rescale)`` Euler steps with ``resample`` (else 200), and Cellpose 4's
  dynamics (:mod:`cellflow_rt.dynamics.v4`; no ``interp`` option; host only);
- flow picture: numpy 2.1's percentiles on a subsample;
- no Cellpose 3 restoration nets; ``precision="auto"`` runs bf16 where the CPU does natively.

A Cellpose 4 family with other tiles (CPDINO: 384, changeable with ``bsize``) subclasses
:class:`CellposeSAM` and changes :attr:`default_tile`, :attr:`tile_fixed` and the manifest key.
"""
from __future__ import annotations

import warnings

import numpy as np

from .base import ModelFamily, per_image_value

#: The cell diameter Cellpose-SAM works at: an image with cells of ``diameter`` pixels is resized by 30 / diameter.
DIAMETER = 30.0


def eval_signature(x, batch_size: int = 8, resample: bool = True, channels=None, channel_axis=None, z_axis=None,
                   normalize=True, rescale=None, diameter=None, flow_threshold: float = 0.4,
                   cellprob_threshold: float = 0.0, do_3D: bool = False, anisotropy=None, flow3D_smooth=0,
                   stitch_threshold: float = 0.0, min_size: int = 15, max_size_fraction: float = 0.4, niter=None,
                   augment: bool = False, tile_overlap: float = 0.1, bsize=None, compute_masks: bool = True,
                   progress=None):
    """Cellpose 4.2.1.1's ``CellposeModel.eval`` arguments (no ``invert``, ``interp`` or ``dynamics``)."""


class CellposeSAM(ModelFamily):
    """Cellpose 4.2.1.1's Cellpose-SAM (see the module docstring)."""

    name = "cpsam"
    title = "Cellpose 4 (Cellpose-SAM)"
    cellpose_version = "4.2.1.1"
    cellpose_generation = 4
    manifest_keys = {"cpsam": (dict,)}
    selects_channels = False
    max_channels = 3
    default_tile = 256
    tile_fixed = True
    pads_to_tile = True
    has_styles = False
    may_have_size_model = False
    reference_diameter = DIAMETER
    has_interp = False
    restoration_fits = False
    gpu_path = False
    bf16_by_default = True
    int8_linear_layers = True
    percentile_rule = "numpy2.1"
    flow_picture_rule = "numpy2.1"
    eval_signature = staticmethod(eval_signature)
    unused_flags = ("chan", "chan2", "all_channels", "invert", "no_interp")
    unused_flags_note = "not used by Cellpose 4 models (all channels, up to 3, are used)"

    def prepare_image(self, image: np.ndarray, settings, nchan: int) -> np.ndarray:
        from ..preprocess import prepare_channels_as_given
        return prepare_channels_as_given(image, settings, max_channels=self.max_channels,
                                         percentile_rule=self.percentile_rule)[0]

    def rescale_for(self, model, settings) -> float:
        """``30 / diameter`` when a diameter is given, else 1 (a Python float, as the reference)."""
        if settings.diameter is not None and settings.diameter > 0:
            return self.reference_diameter / float(settings.diameter)
        return 1.0

    def diameter_at(self, model, rescale) -> float:
        return self.reference_diameter / rescale

    def euler_iterations(self, settings, rescale) -> int:
        """The user's ``niter``, else ``int(200 / rescale)`` with ``resample``, else 200."""
        if settings.niter:
            return settings.niter
        return int(200 / (rescale if settings.resample else 1))

    def mask_dynamics(self, settings, providers=()):
        from ..dynamics import v4

        def resize_and_compute_masks(dP, cellprob, interp=None, **options):
            return v4.resize_and_compute_masks(dP, cellprob, **options)  # (no interp in Cellpose 4)
        return resize_and_compute_masks

    def fill_holes_and_remove_small_masks(self, masks: np.ndarray, min_size: int) -> np.ndarray:
        from ..dynamics import v4
        return v4.fill_holes_and_remove_small_masks(masks, min_size=min_size)

    def eval_arguments(self, args: tuple, kwargs: dict) -> dict:
        """Cellpose 4's arguments: ``channels`` and ``rescale`` are warned about and dropped (as
        Cellpose 4 ignores them), ``bsize`` must be the tile side."""
        arguments = super().eval_arguments(args, kwargs)
        if arguments.pop("channels") is not None:
            warnings.warn("channels is not used by Cellpose 4 models, which take the first 3 channels in any "
                          "order; use channel_axis to say which axis holds them", stacklevel=3)
        if arguments.pop("rescale") is not None:
            warnings.warn("rescale is not used by Cellpose 4 models; give diameter instead", stacklevel=3)
        bsize = arguments.pop("bsize")
        if bsize is not None and self.tile_fixed and bsize != self.default_tile:
            raise ValueError(f"bsize={bsize}: {self.title} models run tiles of {self.default_tile} only")
        if not self.tile_fixed:  # a family whose tiles may change: bsize, else its own default
            arguments["bsize"] = self.default_tile if bsize is None else int(bsize)
        if isinstance(arguments["flow3D_smooth"], (list, tuple, np.ndarray)):
            raise ValueError("flow3D_smooth: one sigma for all axes is supported (per-axis sigmas are not)")
        return arguments

    def per_image(self, arguments: dict):
        """A list of images or a 5-D array of them; ``diameter`` per image (a list gives one each)."""
        x = arguments["x"]
        if not (isinstance(x, list) or (isinstance(x, np.ndarray) and x.squeeze().ndim == 5)):
            return None
        return [dict(arguments, x=xi, diameter=per_image_value(arguments["diameter"], i)) for i, xi in enumerate(x)]

    def command_line_settings(self, settings, diameter_given: bool):
        """Cellpose 4.2.1.1's command line: no diameter unless one is given (0 included: no
        resize), no channel selection, ``invert`` or ``interp``; 3D runs default to Z on axis 0."""
        stacked = settings.do_3D or settings.stitch_threshold > 0
        return settings.with_(channels=None, invert=False, interp=True,
                              diameter=settings.diameter if diameter_given else None,
                              z_axis=0 if stacked and settings.z_axis is None else settings.z_axis)


CPSAM = CellposeSAM()
