"""Axes and channels: the image as the network expects it (normalisation is :mod:`.normalize`).

Mirrors Cellpose 3.1.1.1's ``transforms.convert_image`` and ``reshape``: the output is float32 with
Z (or the image index) first and the network's channels last.
"""
from __future__ import annotations

import warnings
from typing import Optional, Sequence, Tuple

import numpy as np

from .normalize import NormalizeOptions, normalize_img


class ImageShapeError(ValueError):
    """The array's shape or channels cannot be interpreted as an image."""


def _move_axis_last(x: np.ndarray, axis: int) -> np.ndarray:
    return np.moveaxis(x, axis, -1)


def _squeeze_with_axes(x: np.ndarray, channel_axis, z_axis):
    """Drop singleton axes of a >3-D array, keeping track of the named axes."""
    singletons = [i for i, s in enumerate(x.shape) if s == 1]
    if x.ndim <= 3 or not singletons:
        return x, channel_axis, z_axis

    def remap(axis):
        if axis is None:
            return None
        axis = axis % x.ndim
        if axis in singletons:
            return None
        return axis - sum(1 for s in singletons if s < axis)

    return x.squeeze(), remap(channel_axis), remap(z_axis)


def convert_image(x: np.ndarray, channels: Optional[Sequence[int]], channel_axis: Optional[int] = None,
                  z_axis: Optional[int] = None, do_3D: bool = False, nchan: Optional[int] = 2) -> np.ndarray:
    """Put Z first and channels last, select channels, and cast to float32.

    Parameters
    ----------
    x : ndarray
        2-D (Y, X), 3-D (Y, X, C), (C, Y, X) or (Z, Y, X), or 4-D (Z, Y, X, C) image, any dtype.
    channels : sequence of two ints or None
        ``[chan, chan2]`` in Cellpose's convention (0 = grayscale/none, 1-3 = R/G/B). None keeps the
        first ``nchan`` channels.
    channel_axis, z_axis : int or None
        Axes holding channels and Z; guessed as Cellpose does when None.
    do_3D : bool
        The image is a volume (a Z axis is required).
    nchan : int or None
        Channels the network takes; None keeps every channel (with ``channels=None``), as Cellpose's
        restoration does.

    Returns
    -------
    ndarray
        float32 array ``(Y, X, nchan)`` or ``(Z, Y, X, nchan)``.
    """
    x = np.asarray(x)
    ndim_in, shape_in = x.ndim, x.shape
    if x.ndim < 2 or x.ndim > 5:
        raise ImageShapeError(f"expected a 2-D to 4-D image (Y, X [, C] or Z, Y, X [, C]), got shape {x.shape}")
    if x.dtype == bool or not (np.issubdtype(x.dtype, np.number)):
        raise ImageShapeError(f"image dtype {x.dtype} is not numeric")
    if np.iscomplexobj(x):
        raise ImageShapeError("complex images are not supported")
    for name, axis in (("channel_axis", channel_axis), ("z_axis", z_axis)):
        if axis is not None and not -x.ndim <= axis < x.ndim:
            raise ImageShapeError(f"{name}={axis} is out of range for an image of shape {x.shape}")

    x, channel_axis, z_axis = _squeeze_with_axes(x, channel_axis, z_axis)
    if channel_axis is not None:
        channel_axis %= x.ndim
    if z_axis is not None:
        z_axis %= x.ndim

    if z_axis is not None and x.ndim > 2 and z_axis != 0:
        x = np.moveaxis(x, z_axis, 0)
        if channel_axis is not None and channel_axis < z_axis:
            channel_axis += 1
        z_axis = 0
    elif z_axis is None and x.ndim > 2 and channels is not None and min(x.shape) > 5:
        # Cellpose's guess: with many "channels", the smallest axis is Z.
        smallest = x.shape.index(min(x.shape))
        if smallest != channel_axis:
            if smallest != 0:
                x = np.moveaxis(x, smallest, 0)
                if channel_axis is not None and channel_axis < smallest:
                    channel_axis += 1
            warnings.warn(f"z_axis not specified, assuming it is axis {smallest}; "
                          f"if it holds channels, pass channel_axis={smallest}")
            z_axis = 0
    if z_axis is not None and x.ndim == 3:
        x = x[..., np.newaxis]

    if channel_axis is not None and x.ndim > 2:
        x = _move_axis_last(x, channel_axis)
    elif x.ndim == 2:
        x = x[:, :, np.newaxis]
    if do_3D:
        if ndim_in < 3:
            raise ImageShapeError("cannot run do_3D on a 2-D image")
        if x.ndim < 4:
            x = x[..., np.newaxis]
    if channel_axis is None and x.ndim > 2:
        smallest = min(x.shape)
        if smallest < 10:
            axis = x.ndim - 1 if x.shape[-1] == smallest else x.shape.index(smallest)
            x = _move_axis_last(x, axis)
    if x.ndim > 4:
        raise ImageShapeError(f"cannot interpret a {ndim_in}-D image of shape {shape_in} as (Z, Y, X, C): "
                              f"{x.ndim} axes are longer than 1")

    x = x.astype(np.float32)
    if channels is not None:
        return select_channels(x, channels)
    if nchan is None:
        return x
    if x.shape[-1] > nchan:
        warnings.warn(f"more than {nchan} channels given and channels=None: using the first {nchan}")
        x = x[..., :nchan]
    if x.shape[-1] < nchan:
        x = np.concatenate([x] + [np.zeros_like(x)] * (nchan - x.shape[-1]), axis=-1)
    return x


def select_channels(data: np.ndarray, channels: Sequence[int]) -> np.ndarray:
    """Cellpose's channel selection: ``[chan, chan2]`` -> a two-channel image (channels last).

    Grayscale (``chan == 0``) averages all channels; a single-channel image always becomes
    ``[image, zeros]``; ``chan2 == 0`` appends a zero channel.
    """
    chan, chan2 = int(channels[0]), int(channels[1])
    if data.ndim < 3:
        data = data[:, :, np.newaxis]
    elif data.ndim == 3 and data.shape[0] < 8 and data.shape[-1] > 1:
        # Cellpose treats a 3-D array with fewer than 8 rows as channel-first
        data = np.transpose(data, (1, 2, 0))
    nchan = data.shape[-1]
    if nchan == 1:
        return np.concatenate((data, np.zeros(data.shape, np.float32)), axis=-1)
    if chan == 0:
        gray = data.mean(axis=-1, keepdims=True)
        return np.concatenate((gray, np.zeros(gray.shape, np.float32)), axis=-1)
    wanted = [chan] + ([chan2] if chan2 > 0 else [])
    for c in wanted:
        if c > nchan:
            raise ImageShapeError(f"channels={[chan, chan2]} asks for channel {c} but the image has {nchan} channels")
    data = data[..., [c - 1 for c in wanted]]
    for i in range(data.shape[-1]):
        if np.ptp(data[..., i]) == 0:
            warnings.warn("'chan to segment' has a value range of zero" if i == 0 else
                          "'chan2' has a value range of zero; set chan2 to 0 instead")
    if data.shape[-1] == 1:
        data = np.concatenate((data, np.zeros(data.shape, np.float32)), axis=-1)
    return data


def normalize_image(img: np.ndarray, normalize: bool = True, invert: bool = False,
                    percentile: Tuple[float, float] = (1.0, 99.0), norm3D: bool = True) -> np.ndarray:
    """Percentile-normalise each channel (skipping constant ones), then optionally invert.

    The default normalisation; :func:`cellflow_rt.normalize.normalize_img` takes every option of
    Cellpose's ``normalize`` dict.

    Parameters
    ----------
    img : ndarray
        float32 ``(..., Y, X, C)``; normalised in place when float32.
    normalize : bool
        Apply the percentile normalisation.
    invert : bool
        ``1 - x`` on normalised channels (needs ``normalize``).
    percentile : (float, float)
        Lower and upper percentiles.
    norm3D : bool
        For a 4-D stack, one normalisation over the whole volume; otherwise per plane.

    Returns
    -------
    ndarray
        float32 array of the same shape.
    """
    options = NormalizeOptions(normalize=normalize, invert=invert, percentile=percentile, norm3D=norm3D)
    x = img if img.dtype == np.float32 else img.astype(np.float32)
    return normalize_img(x if x.ndim == 4 else x[np.newaxis], options).reshape(x.shape)


def check_finite(img: np.ndarray) -> None:
    """Reject images containing NaN or infinite values (they would poison normalisation)."""
    if np.issubdtype(img.dtype, np.floating) and not np.isfinite(img).all():
        n_bad = int(np.size(img) - np.isfinite(img).sum())
        raise ValueError(f"image contains {n_bad} NaN or infinite pixel values")
