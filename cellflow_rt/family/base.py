"""What a model family states: everything that differs between the Cellpose networks we run.

A family is one object (an instance of a :class:`ModelFamily` subclass, one module per family) that
the stages and front ends ask instead of testing which Cellpose version a model comes from: the
channels the network takes and how the image becomes them, the tile side, the normalisation, how a
diameter becomes a resize factor, the number of Euler steps, the dynamics, the network's heads, the
flow picture, which restoration nets fit, and the ``eval`` arguments of that Cellpose version.
The registry picks a model's family from its manifest (:func:`cellflow_rt.family.family_for_manifest`).
"""
from __future__ import annotations

import inspect
from typing import Callable, Dict, List, Optional

import numpy as np


class ModelFamily:
    """Base class of the model families; subclasses set the attributes and override the rules.

    Attributes
    ----------
    name : str
        Short name (``cpnet``, ``cpsam``); also the manifest's ``architecture``.
    title : str
        For people: ``"Cellpose 3 (CPnet)"``.
    cellpose_version : str
        The Cellpose release whose ``eval`` the family reproduces.
    cellpose_generation : int
        The manifest's ``cellpose_generation`` for this family (data, not a switch: nothing tests it).
    manifest_keys : dict
        Manifest keys this family requires beyond the common ones: key -> accepted JSON types.
    selects_channels : bool
        Cellpose 3's ``channels=[chan, chan2]`` selection applies (False: the first
        :attr:`max_channels` channels are taken in their order).
    max_channels : int or None
        Channels the network takes at most when they are not selected (None: the model's ``nchan``).
    default_tile : int
        The tile side Cellpose uses by default (``bsize``).
    tile_fixed : bool
        The tile side cannot be changed (the network's position embedding fixes it).
    tile_multiple : int
        A tile side must be a multiple of this (CPnet: its three 2x poolings; CPDINO: its patch stride).
    pads_to_tile : bool
        Planes smaller than a tile are padded up to one (Cellpose 4) rather than to a multiple of 16.
    has_styles : bool
        The network has a style head (Cellpose 3's 256-vector); False: styles are zeros.
    may_have_size_model : bool
        A size model (diameter estimate from the style) can come with the network.
    reference_diameter : float or None
        The cell diameter the network works at when the model does not say (Cellpose 4: 30);
        None: the model's ``diam_mean`` / ``diam_labels`` decide.
    has_interp : bool
        The ``interp`` option (bilinear 2D Euler steps) exists.
    restoration_fits : bool
        Cellpose 3's image restoration nets (``--restore_type``) can precede this family's networks.
    gpu_path : bool
        The numba CUDA pipeline (flows left on the GPU, GPU dynamics) reproduces this family.
    bf16_by_default : bool
        ``precision="auto"`` picks bfloat16 on CPUs that run it natively (Cellpose 4 itself runs bf16).
    int8_linear_layers : bool
        The network's work is in linear layers that ``cellflow-rt quantize`` can put in int8 (the
        ViTs); CPnet's is in convolutions (its few linear layers act on the style vector only).
    percentile_rule : str
        The percentile arithmetic of the image normalisation (:func:`cellflow_rt.normalize.normalize_img`):
        ``"numpy2.0"`` (Cellpose 3's reference environment) or ``"numpy2.1"`` (Cellpose 4's).
    flow_picture_rule : str
        The percentile rule of the flow picture (:func:`cellflow_rt.io.flows.flow_to_rgb`).
    """

    name: str = ""
    title: str = ""
    cellpose_version: str = ""
    cellpose_generation: int = 0
    manifest_keys: Dict[str, tuple] = {}
    selects_channels: bool = True
    max_channels: Optional[int] = None
    default_tile: int = 224
    tile_fixed: bool = False
    tile_multiple: int = 8
    pads_to_tile: bool = False
    has_styles: bool = True
    may_have_size_model: bool = True
    reference_diameter: Optional[float] = None
    has_interp: bool = True
    restoration_fits: bool = True
    gpu_path: bool = True
    bf16_by_default: bool = False
    int8_linear_layers: bool = False
    percentile_rule: str = "numpy2.0"
    flow_picture_rule: str = "numpy2.0"

    def __repr__(self) -> str:
        return f"<model family {self.name}: {self.title}, Cellpose {self.cellpose_version}>"

    # -- manifest -------------------------------------------------------------------------------

    def check_manifest(self, manifest: dict) -> Optional[str]:
        """What is wrong with a manifest of this family beyond the common keys (None: nothing)."""
        return None

    # -- tiles ----------------------------------------------------------------------------------

    @property
    def fixed_tile(self) -> Optional[int]:
        """The tile side of a graph with fixed spatial axes (TensorRT profiles, warm-up); None: any."""
        return self.default_tile if self.tile_fixed else None

    def tile_side(self, settings) -> int:
        """The side of the tiles the network runs on for ``settings``: ``bsize`` where it may change
        (None: :attr:`default_tile`), else :attr:`default_tile`."""
        if self.tile_fixed or settings.bsize is None:
            return self.default_tile
        return int(settings.bsize)

    @property
    def tile_profile(self) -> Optional[tuple]:
        """(smallest, usual, largest) tile side the network runs, for TensorRT's optimisation profile
        and the warm-up; None: CPnet's (32 to 224, :mod:`cellflow_rt.provider_options`)."""
        return (self.default_tile,) * 3 if self.tile_fixed else None

    def check_tile_side(self, bsize) -> Optional[str]:
        """What is wrong with ``bsize`` as this family's tile side, in words (None: nothing, or not
        given): a fixed side must be :attr:`default_tile`; others a positive multiple of
        :attr:`tile_multiple`."""
        if bsize is None:
            return None
        if self.tile_fixed and bsize != self.default_tile:
            return f"bsize must be {self.default_tile} for {self.title} models (their tiles are fixed), got {bsize}"
        if isinstance(bsize, bool) or not isinstance(bsize, (int, np.integer)) or bsize <= 0 or bsize % self.tile_multiple:
            return f"bsize must be a positive multiple of {self.tile_multiple} for {self.title} models, got {bsize!r}"
        return None

    def pad_to(self, settings) -> Optional[int]:
        """Pad planes shorter than this up to it (:func:`cellflow_rt.tiles.pad_amounts`); None: no."""
        return self.tile_side(settings) if self.pads_to_tile else None

    # -- preprocessing --------------------------------------------------------------------------

    def prepare_image(self, image: np.ndarray, settings, nchan: int) -> np.ndarray:
        """Input array -> normalised float32 (N, Y, X, C) planes (N = 1 for a 2D image)."""
        raise NotImplementedError

    # -- scale ----------------------------------------------------------------------------------

    def rescale_for(self, model, settings):
        """Resize factor of the network input (in the reference's precision)."""
        raise NotImplementedError

    def diameter_at(self, model, rescale) -> float:
        """The diameter (input pixels) an image resized by ``rescale`` is segmented at."""
        raise NotImplementedError

    def euler_iterations(self, settings, rescale):
        """Number of Euler steps (the reference's type and rounding)."""
        raise NotImplementedError

    # -- dynamics -------------------------------------------------------------------------------

    def mask_dynamics(self, settings, providers=()) -> Callable[..., np.ndarray]:
        """``resize_and_compute_masks(dP, cellprob, *, niter, cellprob_threshold, flow_threshold,
        interp, resize, min_size, max_size_fraction, do_3D)`` of this family (where it runs:
        ``settings.dynamics`` and the network's ``providers``)."""
        raise NotImplementedError

    def fill_holes_and_remove_small_masks(self, masks: np.ndarray, min_size: int) -> np.ndarray:
        """The hole filling and ``min_size`` after 2.5D stitching."""
        raise NotImplementedError

    # -- pictures -------------------------------------------------------------------------------

    def flow_to_rgb(self, dP) -> np.ndarray:
        """The flow picture of this Cellpose version (``flows[0]`` of ``eval``, ``_seg.npy``, figures)."""
        from ..io.flows import flow_to_rgb
        return flow_to_rgb(dP, rule=self.flow_picture_rule)

    # -- precision ------------------------------------------------------------------------------

    def automatic_precision(self, providers=None) -> str:
        """``precision="auto"``: bf16 where :attr:`bf16_by_default` and the CPU runs bfloat16
        natively (OpenVINO: AMX or AVX512_BF16) and only CPU providers are asked for; else fp32."""
        wanted = [] if providers is None else [providers] if isinstance(providers, str) else list(providers)
        if not self.bf16_by_default or any(str(p).lower() not in ("cpu", "cpuexecutionprovider") for p in wanted):
            return "fp32"
        from ..network_openvino import cpu_supports_bf16
        return "bf16" if cpu_supports_bf16() else "fp32"

    # -- the Python API's eval -------------------------------------------------------------------

    #: A function whose signature is this Cellpose version's ``CellposeModel.eval`` (names, order,
    #: defaults); set by subclasses.
    eval_signature: Callable = None

    def eval_arguments(self, args: tuple, kwargs: dict) -> dict:
        """``eval(x, *args, **kwargs)``'s arguments bound to :attr:`eval_signature`, defaults applied,
        checked and warned about as that Cellpose version does (TypeError for unknown names)."""
        bound = inspect.signature(self.eval_signature).bind(*args, **kwargs)
        bound.apply_defaults()
        return dict(bound.arguments)

    def per_image(self, arguments: dict) -> Optional[List[dict]]:
        """The arguments of each image when ``arguments["x"]`` holds several images; None for one."""
        raise NotImplementedError

    def settings_arguments(self, arguments: dict) -> dict:
        """The arguments of one image, as keyword arguments of the settings adapter (``x`` removed)."""
        out = {k: v for k, v in arguments.items() if k not in ("x", "progress")}
        if out.get("diameter") is not None:
            out["diameter"] = float(out["diameter"])
        return out

    # -- the command line -------------------------------------------------------------------------

    #: ``run`` flags that mean nothing for this family (a warning names them when given), and why.
    unused_flags: tuple = ()
    unused_flags_note: str = ""

    def command_line_settings(self, settings, diameter_given: bool):
        """``run``'s settings as this Cellpose version's command line sets them."""
        return settings


def per_image_value(value, i: int):
    """Cellpose's rule for a per-image argument with a list of images: a list/array gives item i."""
    return value[i] if isinstance(value, (list, np.ndarray)) else value


def channels_for(channels, i: int, n: int):
    """Cellpose 3 accepts one [chan, chan2] for all images or one pair per image."""
    if channels is not None and len(channels) == n and isinstance(channels[i], (list, tuple, np.ndarray)) \
            and len(channels[i]) == 2:
        return channels[i]
    return channels
