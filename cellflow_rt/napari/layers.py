"""napari layers in and out: an image layer's axes, and a run's results as layers.

In: :func:`image_axes` says which axis of an image layer's data holds channels and which holds Z,
so the pipeline never has to guess. Out: :func:`show_outcome` puts the masks in a Labels layer
named after the image and the model (the same layer again on a re-run), and optionally the flow
picture and the cell probability as image layers, on the image's own scale and position.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np

from ..family import family_of
from .session import Outcome


class InputProblem(ValueError):
    """The user's input cannot be run (the message says what to change)."""


@dataclass(frozen=True)
class ImageAxes:
    """Axes of an image layer's data: channels (None = grayscale) and Z (None = 2D)."""

    channel_axis: Optional[int]
    z_axis: Optional[int]
    n_channels: int


def image_axes(layer, channel_axis: Optional[int] = None) -> ImageAxes:
    """Channel and Z axes of an image layer's data.

    Parameters
    ----------
    layer : napari.layers.Image
        An RGB(A) layer has its channels last, whatever ``channel_axis`` says.
    channel_axis : int, optional
        The data axis holding channels (None: grayscale).

    Raises
    ------
    InputProblem
        Multiscale data, or more than three spatial axes (e.g. a time series of volumes).
    """
    if getattr(layer, "multiscale", False):
        raise InputProblem(f"image layer {layer.name!r} is multiscale: open one resolution level as its own layer")
    shape = layer.data.shape
    if getattr(layer, "rgb", False):
        channel_axis = len(shape) - 1
    if channel_axis is not None and not 0 <= channel_axis < len(shape):
        raise InputProblem(f"channel axis {channel_axis} does not exist in image layer {layer.name!r} "
                           f"of shape {tuple(shape)}")
    spatial = [a for a in range(len(shape)) if a != channel_axis]
    if len(spatial) not in (2, 3):
        raise InputProblem(f"image layer {layer.name!r} has {len(spatial)} spatial axes (shape {tuple(shape)}): "
                           "cellflow-rt segments 2D images and 3D stacks; set the channel axis, or extract "
                           "one time point as its own layer")
    return ImageAxes(channel_axis=channel_axis, z_axis=spatial[0] if len(spatial) == 3 else None,
                     n_channels=1 if channel_axis is None else int(shape[channel_axis]))


def check_channels(axes: ImageAxes, chan: int, chan2: int, layer_name: str) -> None:
    """Refuse ``chan`` / ``chan2`` that name a channel the image does not have."""
    if axes.channel_axis is None:
        return  # a single channel is always segmented as [image, zeros], as in Cellpose
    for name, value in (("chan", chan), ("chan2", chan2)):
        if value > axes.n_channels:
            raise InputProblem(f"{name}={value} asks for channel {value} but image layer {layer_name!r} has "
                               f"{axes.n_channels} channels (1 = first; 0 = gray for chan, none for chan2)")


def output_names(image_name: str, model_name: str) -> dict:
    """Names of a run's layers: masks, flows and cell probability of this image with this model."""
    return {kind: f"{image_name} {kind} [{model_name}]" for kind in ("masks", "flows", "cellprob")}


def _spatial(values, channel_axis: Optional[int], rgb: bool):
    values = list(values)
    if channel_axis is None or rgb:  # napari leaves an RGB layer's colour axis out of its scale
        return values
    return [v for i, v in enumerate(values) if i != channel_axis]


def _put_layer(viewer, kind: str, name: str, data, update: dict, create: Optional[dict] = None):
    """The layer called ``name`` of this kind, given new data and ``update``; a new one if none exists."""
    for layer in viewer.layers:
        if layer.name == name and type(layer).__name__.lower() == kind:
            layer.data = data
            for key, value in update.items():
                setattr(layer, key, value)
            return layer
    return getattr(viewer, f"add_{kind}")(data, name=name, **update, **(create or {}))


def show_outcome(viewer, image_layer, axes: ImageAxes, outcome: Outcome, show_flows: bool = False,
                 show_cellprob: bool = False):
    """Show a run's masks (and optionally its flows and cell probability) next to the image.

    The flow and cell probability layers go below the masks and change only when the network ran.

    Returns
    -------
    napari.layers.Labels
        The masks layer. Its ``metadata["cellflow_rt"]`` holds the model, the diameter, the settings,
        the timings, the image's file (if any) and the flows (``dP``, ``cellprob``) for the writer.
    """
    seg = outcome.segmentation
    names = output_names(image_layer.name, outcome.model_name)
    rgb = bool(getattr(image_layer, "rgb", False))
    place = {"scale": _spatial(image_layer.scale, axes.channel_axis, rgb),
             "translate": _spatial(image_layer.translate, axes.channel_axis, rgb)}
    if outcome.network_ran and show_flows:
        _put_layer(viewer, "image", names["flows"], family_of(seg).flow_to_rgb(seg.dP), place, {"rgb": True})
    if outcome.network_ran and show_cellprob:
        _put_layer(viewer, "image", names["cellprob"], seg.cellprob, place, {"colormap": "magma"})
    source = getattr(getattr(image_layer, "source", None), "path", None)
    metadata = {"cellflow_rt": {
        "model": outcome.model_name, "image": image_layer.name, "image_path": source,
        "diameter": float(outcome.settings.diameter or seg.diameter),
        "channels": list(outcome.settings.channels or (0, 0)), "settings": asdict(outcome.settings),
        "timings": dict(outcome.timings), "network_ran": outcome.network_ran,
        "dP": seg.dP, "cellprob": seg.cellprob}}
    return _put_layer(viewer, "labels", names["masks"], seg.masks, dict(place, metadata=metadata))
