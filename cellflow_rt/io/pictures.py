"""Pictures to check a segmentation by eye, as 8-bit RGB PNGs any viewer opens (no matplotlib).

- ``<stem>_outlines<suffix>.png`` (``--save_outlines``): the segmented channels in gray (each
  normalised to its 1st-99th percentiles), with every outline pixel in pure red (Cellpose's
  ``io.save_masks``).
  Red on gray stays visible from black to white: its contrast ratio is 5.3:1 against black and
  4.0:1 against white (WCAG relative luminance), and it differs in hue from every gray.
- ``<stem>_cp_output<suffix>.png`` (``--save_mpl``): five panels side by side (Cellpose's
  ``plot.show_segmentation`` figure, plus the cell probability): the image (channels in their own
  colours, Cellpose's ``image_to_rgb``), the outlines picture, the masks in colour over the gray
  image, the flows (``flow_to_rgb``) and the cell probability. Panels wider or taller than
  :data:`PANEL_MAX_SIDE` are subsampled by a whole factor; outlines are traced at that scale.

Both are 2D pictures; 3D masks get none (Cellpose writes none either).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .._labels import as_label_image
from .errors import PathLike
from .flows import normalize99
from .outlines import masks_to_outlines
from .paths import MASKS_SUFFIX, output_path
from .png import write_png

__all__ = ["image_to_rgb", "outline_picture", "mask_overlay", "summary_figure", "save_outlines_png",
           "save_summary_png", "OUTLINE_COLOUR", "PANEL_MAX_SIDE"]

#: Colour of outline pixels (Cellpose's pure red).
OUTLINE_COLOUR = (255, 0, 0)
#: Longest side of a panel of the summary figure (Cellpose's figure is 3600 x 900 pixels).
PANEL_MAX_SIDE = 1024
#: White space between panels, in pixels.
PANEL_GAP = 8
_GOLDEN = 0.6180339887498949


def _to_uint8(x: np.ndarray) -> np.ndarray:
    """float -> uint8: 1st-99th percentiles to 0-255 (constant images give 0)."""
    x = np.asarray(x, np.float32)
    if x.size == 0 or np.ptp(x) == 0:
        return np.zeros(x.shape, np.uint8)
    return (np.clip(normalize99(x), 0, 1) * 255).astype(np.uint8)


def image_to_rgb(planes, channels: Optional[Sequence[int]] = None) -> np.ndarray:
    """The segmented channels as an RGB picture (Cellpose's ``plot.image_to_rgb``).

    Parameters
    ----------
    planes : ndarray
        (Ly, Lx) or (Ly, Lx, C): the channels given to the network, in order ``chan, chan2``.
    channels : (chan, chan2) or None
        Cellpose's channels. ``chan`` 0 (gray), None, or a single plane: the mean of the channels in
        gray; otherwise channel 1 is drawn in colour ``chan`` (1 = red, 2 = green, 3 = blue) and,
        when ``chan2`` > 0, channel 2 in colour ``chan2``. Each is normalised to its 1st-99th
        percentiles.

    Returns
    -------
    ndarray
        uint8 (Ly, Lx, 3).
    """
    planes = np.asarray(planes)
    if planes.ndim == 2:
        planes = planes[..., np.newaxis]
    if planes.ndim != 3:
        raise ValueError(f"planes must be (Ly, Lx) or (Ly, Lx, C), got shape {planes.shape}")
    rgb = np.zeros(planes.shape[:2] + (3,), np.uint8)
    if channels is None or channels[0] == 0 or planes.shape[-1] == 1:
        rgb[:] = _to_uint8(planes.astype(np.float32).mean(axis=-1))[..., np.newaxis]
        return rgb
    rgb[..., channels[0] - 1] = _to_uint8(planes[..., 0])
    if len(channels) > 1 and channels[1] > 0 and planes.shape[-1] > 1:
        rgb[..., channels[1] - 1] = _to_uint8(planes[..., 1])
    return rgb


def outline_picture(gray, masks, outlines: Optional[np.ndarray] = None) -> np.ndarray:
    """``gray`` (uint8 (Ly, Lx)) as RGB with the outline pixels of ``masks`` in :data:`OUTLINE_COLOUR`."""
    rgb = np.repeat(np.asarray(gray, np.uint8)[..., np.newaxis], 3, axis=-1)
    rgb[masks_to_outlines(masks) if outlines is None else outlines] = OUTLINE_COLOUR
    return rgb


def _hsv_to_rgb(h, s, v) -> np.ndarray:
    i = np.floor(h * 6).astype(np.int64) % 6
    f = h * 6 - np.floor(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    table = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    rgb = np.empty(h.shape + (3,), np.float32)
    for k, (r, g, b) in enumerate(table):
        sel = i == k
        rgb[sel] = np.stack([r[sel], g[sel], b[sel]], axis=-1)
    return (np.clip(rgb, 0, 1) * 255).astype(np.uint8)


def mask_overlay(gray, masks) -> np.ndarray:
    """Masks in colour over the gray image (Cellpose's ``plot.mask_overlay``).

    Brightness is the image's (x 1.5, clipped); each mask gets a fixed hue (label x golden ratio,
    so neighbouring labels differ and the picture is the same on every run), background stays gray.
    """
    masks = as_label_image(masks, "masks", ndim=(2,))
    v = np.clip(np.asarray(gray, np.float32) / 255 * 1.5, 0, 1)
    h = np.mod(masks.astype(np.float64) * _GOLDEN, 1.0).astype(np.float32)
    s = (masks > 0).astype(np.float32)
    return _hsv_to_rgb(h, s, v)


def _subsample_factor(shape) -> int:
    return max(1, -(-max(shape) // PANEL_MAX_SIDE))


def summary_figure(rgb, masks, flow_rgb, cellprob) -> np.ndarray:
    """Five panels side by side: image, outlines, masks, flows, cell probability (uint8 RGB).

    Parameters
    ----------
    rgb : ndarray
        uint8 (Ly, Lx, 3) picture of the image (:func:`image_to_rgb`).
    masks : ndarray
        (Ly, Lx) labels.
    flow_rgb : ndarray
        uint8 (Ly, Lx, 3) flow picture (:func:`~cellflow_rt.io.flows.flow_to_rgb`).
    cellprob : ndarray
        (Ly, Lx) cell probability logits.

    Returns
    -------
    ndarray
        uint8 (ceil(Ly / f), 5 ceil(Lx / f) + 4 gaps, 3), f the subsampling factor.
    """
    masks = as_label_image(masks, "masks", ndim=(2,))
    f = _subsample_factor(masks.shape)
    step = (slice(None, None, f), slice(None, None, f))
    rgb, masks, flow_rgb = np.asarray(rgb)[step], masks[step], np.asarray(flow_rgb)[step]
    gray = rgb.max(axis=-1)
    cp = np.repeat(_to_uint8(np.asarray(cellprob)[step])[..., np.newaxis], 3, axis=-1)
    panels = [rgb, outline_picture(gray, masks), mask_overlay(gray, masks), flow_rgb, cp]
    for panel in panels:
        if panel.shape != rgb.shape:
            raise ValueError(f"panels must all have the image's shape {rgb.shape[:2]}, got {panel.shape[:2]}")
    gap = np.full((rgb.shape[0], PANEL_GAP, 3), 255, np.uint8)
    row = [panels[0]]
    for panel in panels[1:]:
        row += [gap, panel]
    return np.concatenate(row, axis=1)


def save_outlines_png(rgb, masks, file_name: PathLike, savedir: Optional[PathLike] = None,
                      suffix: str = MASKS_SUFFIX) -> Path:
    """Save ``<stem>_outlines<suffix>.png``: the outlines of ``masks`` in red over ``rgb`` made gray.

    Parameters
    ----------
    rgb : ndarray
        uint8 (Ly, Lx, 3) picture of the image (:func:`image_to_rgb`); its brightest channel is the
        gray background.
    masks : ndarray
        (Ly, Lx) labels.
    file_name : str or path-like
        The input image's path.
    savedir : str or path-like, optional
        Output folder.
    suffix : str
        ``_cp_masks`` or Cellpose's ``--output_name``.

    Returns
    -------
    Path
    """
    masks = as_label_image(masks, "masks", ndim=(2,))
    picture = outline_picture(np.asarray(rgb).max(axis=-1), masks)
    return write_png(output_path(file_name, f"_outlines{suffix}.png", savedir), picture)


def save_summary_png(rgb, masks, flow_rgb, cellprob, file_name: PathLike, savedir: Optional[PathLike] = None,
                     suffix: str = MASKS_SUFFIX) -> Path:
    """Save ``<stem>_cp_output<suffix>.png``: the :func:`summary_figure` (Cellpose's ``--save_mpl``)."""
    figure = summary_figure(rgb, masks, flow_rgb, cellprob)
    return write_png(output_path(file_name, f"_cp_output{suffix}.png", savedir), figure)
