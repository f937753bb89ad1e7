"""Cellpose-style arguments -> :class:`~cellflow_rt.settings.EvalSettings`, for every front end.

The command line (``cellflow-rt run``), the Python API (``models.CellposeModel.eval``), ``serve``'s
query parameters and the napari panel all read their options here, so that an option exists
everywhere under the same name, with the same default, the same checks and the same error text.

- :data:`FLAGS`: the command line's segmentation options by group (name, flags, default, type,
  help); ``cli.py`` builds its click options from them.
- :func:`settings_from_flags`: command-line style names (``chan``, ``chan2``, ``all_channels``,
  ``no_norm``, ``norm_percentile``, ``no_interp``, ``diameter`` with 0 = estimate...) or
  ``EvalSettings`` field names -> :class:`FlagSettings` (CLI, serve, napari).
- :func:`settings_from_kwargs`: ``eval`` keyword arguments (``normalize`` as a bool or Cellpose's
  dict) -> ``EvalSettings`` (the Python API).
- What differs between model families in how the command line's options become settings (the
  flags that mean nothing for a family, Cellpose 4's "no diameter, no resize") is the family's
  (:meth:`~cellflow_rt.family.ModelFamily.command_line_settings`), passed as ``family``.

Every refusal is an :class:`OptionError` (a ``ValueError``) whose message names the option.
"""
from __future__ import annotations

import difflib
import warnings
from dataclasses import dataclass
from typing import Any, Collection, Dict, Mapping, Optional, Tuple

import numpy as np

from .normalize import NormalizeOptions
from .family import DEFAULT_FAMILY, ModelFamily
from .settings import DYNAMICS, EvalSettings


class OptionError(ValueError):
    """An option is unknown or has a value of the wrong type or range; the message names it.

    ``option``: the option's name when the refusal is one of this module's front-end checks
    (:func:`check`), else None (refused by the settings themselves).
    """

    def __init__(self, message: str, option: Optional[str] = None):
        super().__init__(message)
        self.option = option


# --------------------------------------------------------------------------------------------------
# the command line's segmentation options


@dataclass(frozen=True)
class Flag:
    """One command-line option that feeds :class:`EvalSettings`.

    ``kind``: "int", "float", "str", "flag" (on when given), "switch" (``--x/--no_x``), "pair"
    (two floats), "pairs" (two floats, repeatable) or a tuple of choices.
    """

    name: str
    decls: Tuple[str, ...]
    kind: Any
    default: Any
    help: str
    show_default: bool = False


_F = Flag
#: The command line's segmentation options, by group (in the order ``run --help`` lists them).
FLAGS: Dict[str, Tuple[Flag, ...]] = {
    "channels": (
        _F("chan", ("--chan",), "int", 0, "Channel to segment (0=gray, 1=R, 2=G, 3=B).", True),
        _F("chan2", ("--chan2",), "int", 0, "Nuclear channel (0=none, 1=R, 2=G, 3=B).", True),
        _F("all_channels", ("--all_channels",), "flag", False,
           "Use the first two channels as they are (channels=None)."),
        _F("channel_axis", ("--channel_axis",), "int", None, "Axis of the channels in the image array."),
        _F("z_axis", ("--z_axis",), "int", None, "Axis of Z in the image array."),
    ),
    "normalization": (
        _F("invert", ("--invert",), "flag", False, "Invert intensities after normalisation."),
        _F("no_norm", ("--no_norm",), "flag", False, "Do not normalise images."),
        _F("norm_percentile", ("--norm_percentile",), "pair", None,
           "Percentiles mapped to 0 and 1 (disables --invert, as in Cellpose 3.1.1.1)."),
        _F("lowhigh", ("--lowhigh",), "pairs", (),
           "Fixed LOW HIGH mapped to 0 and 1 instead of percentiles; once for all channels, or once per channel."),
        _F("sharpen_radius", ("--sharpen_radius",), "float", 0.0, "Subtract a Gaussian surround of this sigma (px)."),
        _F("smooth_radius", ("--smooth_radius",), "float", 0.0, "Smooth with a Gaussian of this sigma (px)."),
        _F("tile_norm_blocksize", ("--tile_norm_blocksize",), "int", 0,
           "Normalise by percentiles of blocks of this side (uneven illumination; 0 = off)."),
        _F("tile_norm_smooth3D", ("--tile_norm_smooth3D",), "float", 1.0,
           "Extra smoothing of the tile-normalisation blocks."),
        _F("norm3D", ("--norm3D/--no_norm3D",), "switch", True,
           "Stitched stacks: normalise the whole stack (or each plane).", True),
    ),
    "segmentation": (
        _F("diameter", ("--diameter",), "float", 30.0,
           "Cell diameter in pixels; 0 estimates it with the model's size model. Cellpose 4 models: the image is "
           "resized by 30 / diameter only when a diameter is given.", True),
        _F("flow_threshold", ("--flow_threshold",), "float", 0.4, "Flow error threshold (0 = off).", True),
        _F("cellprob_threshold", ("--cellprob_threshold",), "float", 0.0, "Cell probability threshold.", True),
        _F("min_size", ("--min_size",), "int", 15, "Smallest mask kept (pixels; -1 = off).", True),
        _F("niter", ("--niter",), "int", 0, "Euler steps (0 = 200 x diameter / diam_mean)."),
        _F("resample", ("--resample/--no_resample",), "switch", True, "Dynamics at the image's own size.", True),
        _F("no_interp", ("--no_interp",), "flag", False, "Nearest-pixel flows in the Euler steps."),
        _F("augment", ("--augment",), "flag", False, "Test-time augmentation (flipped overlapping tiles)."),
        _F("tile_overlap", ("--tile_overlap",), "float", 0.1, "Overlap between tiles.", True),
        _F("batch_size", ("--batch_size",), "int", 8, "Tiles per network call.", True),
        _F("bsize", ("--bsize",), "int", None,
           "Tile side in pixels (default: the model's: 224 for Cellpose 3 models; 256 for Cellpose-SAM, which takes "
           "no other; 256 for CPDINO, as Cellpose 4.2.1.1's command line, whose Python API uses 384)."),
    ),
    "volume": (
        _F("do_3D", ("--do_3D",), "flag", False, "3D segmentation of Z-stacks."),
        # None, as eval's and serve's default (the same as 1: no resize in Z)
        _F("anisotropy", ("--anisotropy",), "float", None, "Z step / XY pixel size (do_3D; default 1.0)."),
        _F("flow3D_smooth", ("--flow3D_smooth",), "float", 0.0, "Gaussian sigma on 3D flows."),
        _F("stitch_threshold", ("--stitch_threshold",), "float", 0.0, "Stitch 2D masks across Z by IoU (0 = off).",
           True),
    ),
    "dynamics": (
        _F("dynamics", ("--dynamics",), DYNAMICS, "auto",
           "Where flows become masks: auto = the GPU when the network runs on one (TensorRT/CUDA) and numba-cuda "
           "sees it; gpu fails without a CUDA device. Same masks either way.", True),
    ),
}
del _F

#: Every flag by name.
FLAG_BY_NAME: Dict[str, Flag] = {f.name: f for group in FLAGS.values() for f in group}

#: Normalisation options that make the command line's ``normalize`` a dict when given.
_NORMALIZE_FLAGS = ("sharpen_radius", "smooth_radius", "tile_norm_blocksize", "tile_norm_smooth3D", "norm3D")


def flag_default(name: str):
    """The command line's default for a flag or setting name (``EvalSettings``'s when it has none)."""
    if name in FLAG_BY_NAME:
        return FLAG_BY_NAME[name].default
    return getattr(EvalSettings(), name)


# --------------------------------------------------------------------------------------------------
# checks the settings dataclass cannot make (front-end meanings)

#: name -> (test, what the value must be); the message is "NAME must be WHAT, got VALUE".
_FRONT_END_CHECKS = {
    "chan": (lambda v: v >= 0, ">= 0 (0 = grayscale, 1-3 = R/G/B)"),
    "chan2": (lambda v: v >= 0, ">= 0 (0 = none, 1-3 = R/G/B)"),
    "diameter": (lambda v: v is None or v >= 0, ">= 0 (0 = estimate with the size model, or the model's default)"),
}


def check(name: str, value) -> None:
    """Refuse a value of a front-end option (``chan``, ``chan2``, ``diameter``) with its message."""
    test, what = _FRONT_END_CHECKS.get(name, (None, None))
    try:
        ok = test is None or bool(test(value))
    except TypeError:
        ok = False
    if not ok:
        raise OptionError(f"{name} must be {what}, got {value!r}", option=name)


def _settings(**values) -> EvalSettings:
    try:
        return EvalSettings(**values)
    except OptionError:
        raise
    except (ValueError, TypeError) as exc:
        raise OptionError(str(exc)) from None


def unknown_option(name: str, known: Collection[str]) -> OptionError:
    """The error for an unknown option, with the closest known name."""
    close = difflib.get_close_matches(name, list(known), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return OptionError(f"unknown option {name!r}{hint}")


# --------------------------------------------------------------------------------------------------
# command-line style names -> settings (CLI, serve, napari)


@dataclass(frozen=True)
class FlagSettings:
    """What :func:`settings_from_flags` makes of a set of options.

    Attributes
    ----------
    settings : EvalSettings
        The settings.
    estimate_diameter : bool
        The diameter is 0 (or left to the model): estimate it with the model's size model when the
        model has one and the image is 2D.
    normalize : bool or dict
        Cellpose's ``normalize`` argument for the same options (a dict when a normalisation option
        was given), e.g. for a restoration step.
    unused : tuple of str
        Options given that mean nothing for this model family (the front end warns).
    """

    settings: EvalSettings
    estimate_diameter: bool
    normalize: Any
    unused: Tuple[str, ...] = ()


def cellpose_normalize(values: Mapping[str, Any], given: Collection[str]):
    """Cellpose's ``normalize`` argument for the command line's normalisation options: a bool, or a
    dict when one is given. ``norm_percentile`` leaves ``invert`` out of the dict, as Cellpose
    3.1.1.1's command line does (CELLPOSE_NOTES errata A8)."""
    chosen = {name: values[name] for name in _NORMALIZE_FLAGS if name in given and name in values}
    lowhigh = _one_or_per_channel(values.get("lowhigh"))
    if lowhigh is not None:
        chosen["lowhigh"] = lowhigh
    percentile = values.get("norm_percentile")
    if percentile:
        chosen["percentile"] = tuple(percentile)
    normalize = not values.get("no_norm", False) and values.get("normalize", True)
    if not chosen:
        return normalize
    return dict(chosen, normalize=normalize, invert=bool(values.get("invert", False) and not percentile))


def settings_from_flags(values: Mapping[str, Any], given: Optional[Collection[str]] = None,
                        family: Optional[ModelFamily] = None) -> FlagSettings:
    """Command-line style options -> :class:`FlagSettings`.

    Parameters
    ----------
    values : mapping
        Option name -> value: the command line's names (:data:`FLAGS`) or ``EvalSettings`` field
        names; absent ones take the command line's defaults (``diameter`` 30; 0 = estimate).
    given : collection of str, optional
        The names the user chose (default: every key of ``values``); decides Cellpose's
        ``normalize`` dict and, for Cellpose 4 models, whether a diameter was given.
    family : ModelFamily, optional
        The model's family (``model.family``); None: Cellpose 3's (CPnet).

    Raises
    ------
    OptionError
        An unknown option or a refused value; the message names the option.
    """
    given = set(values if given is None else given)
    known = set(FLAG_BY_NAME) | set(EvalSettings.names())
    for name in values:
        if name not in known:
            raise unknown_option(name, known)
    for name in ("chan", "chan2", "diameter"):
        if name in values:
            check(name, values[name])
    fields = {name: value for name, value in values.items()
              if name in EvalSettings.names() and name not in ("diameter", "niter", "lowhigh")}
    if "channels" not in values:
        fields["channels"] = None if values.get("all_channels") else (values.get("chan", 0), values.get("chan2", 0))
    fields["normalize"] = bool(values.get("normalize", True)) and not values.get("no_norm", False)
    if values.get("norm_percentile"):
        fields.update(percentile=tuple(values["norm_percentile"]), invert=False)  # Cellpose's CLI (errata A8)
    fields["lowhigh"] = _one_or_per_channel(values.get("lowhigh"))
    if "no_interp" in values:
        fields["interp"] = not values["no_interp"]
    fields["niter"] = values.get("niter") or None
    diameter = values.get("diameter", flag_default("diameter"))
    refused = family.check_tile_side(values.get("bsize")) if family is not None else None
    if refused:  # (checked against the model's family only: before a model is loaded the family is unknown)
        raise OptionError(refused, option="bsize")
    family = family or DEFAULT_FAMILY
    settings = family.command_line_settings(_settings(diameter=diameter or None, **fields), "diameter" in given)
    unused = tuple(name for name in family.unused_flags if name in given)
    return FlagSettings(settings, estimate_diameter=settings.diameter is None,
                        normalize=cellpose_normalize(values, given), unused=unused)


def _one_or_per_channel(lowhigh):
    """The command line's repeated LOW HIGH pairs: one pair is for every channel; none is None."""
    if lowhigh is None or len(lowhigh) == 0:
        return None
    pairs = [list(p) if isinstance(p, (list, tuple)) else p for p in lowhigh]
    if all(isinstance(p, list) for p in pairs):
        return pairs[0] if len(pairs) == 1 else pairs
    return pairs


# --------------------------------------------------------------------------------------------------
# eval keyword arguments -> settings (the Python API)

#: eval arguments Cellpose accepts that are accepted and ignored here.
IGNORED_EVAL_ARGS = ("progress",)


def settings_from_kwargs(kwargs: Mapping[str, Any]) -> EvalSettings:
    """Cellpose ``eval`` keyword arguments -> :class:`EvalSettings` (with validation).

    ``normalize`` is a bool or Cellpose's dict; ``invert`` as Cellpose's argument. A family's own
    ``eval`` rules (Cellpose 4's ignored ``channels``, its fixed ``bsize``) are applied before.

    Raises
    ------
    TypeError
        An argument that no Cellpose ``eval`` has.
    OptionError
        A refused value; the message names the argument.
    """
    kwargs = dict(kwargs)
    ignored = [k for k in kwargs if k in IGNORED_EVAL_ARGS]
    for k in ignored:
        kwargs.pop(k)
    if ignored:
        warnings.warn(f"eval argument(s) {sorted(ignored)} are accepted for compatibility with Cellpose and "
                      "ignored by cellflow-rt", stacklevel=3)
    if isinstance(kwargs.get("flow3D_smooth"), (list, tuple, np.ndarray)):
        raise OptionError("flow3D_smooth: one sigma for all axes is supported (per-axis sigmas are not)")
    try:
        options = NormalizeOptions.from_cellpose(kwargs.pop("normalize", True), kwargs.pop("invert", False))
    except ValueError as exc:
        raise OptionError(str(exc)) from None
    kwargs.update(options.as_dict())
    if kwargs.get("channels") is not None:
        kwargs["channels"] = tuple(int(c) for c in kwargs["channels"])
    if kwargs.get("diameter") is not None:
        check("diameter", kwargs["diameter"])
        kwargs["diameter"] = float(kwargs["diameter"])
    unknown = set(kwargs) - set(EvalSettings.names())
    if unknown:
        raise TypeError(f"unexpected eval argument(s): {sorted(unknown)}")
    return _settings(**kwargs)
