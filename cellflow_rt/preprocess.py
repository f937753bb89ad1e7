"""Axes and channels: the image as the network expects it (normalisation is :mod:`.normalize`).

Two rules, and a model's family says which (:meth:`cellflow_rt.family.ModelFamily.prepare_image`):

- **selected channels** (Cellpose 3.1.1.1's ``transforms.convert_image`` and ``reshape``):
  :func:`convert_image`, :func:`select_channels`, :func:`prepare_selected_channels`;
- **channels as given** (Cellpose 4.2.1.1: up to three channels in any order, no ``channels``
  argument): :func:`convert_image_as_given`, :func:`prepare_channels_as_given` (module
  :mod:`._channels_as_given`).

The output is float32 with Z (or the image index) first and the network's channels last.
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


def check_finite(img: np.ndarray) -> None:
    """Reject images containing NaN or infinite values (they would poison normalisation)."""
    if np.issubdtype(img.dtype, np.floating) and not np.isfinite(img).all():
        n_bad = int(np.size(img) - np.isfinite(img).sum())
        raise ValueError(f"image contains {n_bad} NaN or infinite pixel values")


def prepare_selected_channels(image: np.ndarray, settings, nchan: int) -> np.ndarray:
    """Input array -> normalised float32 (N, Y, X, nchan) planes (N = 1 for a 2D image), Cellpose 3's way."""
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


def stack_normalization(settings, nplanes: int) -> NormalizeOptions:
    """The normalisation options as Cellpose's ``eval`` applies them to ``nplanes`` planes: do_3D
    normalises the whole volume, stitching follows ``norm3D``, separate planes are done one by one."""
    options = settings.normalization
    if nplanes > 1 and (settings.do_3D or settings.stitch_threshold > 0):
        return options.with_(norm3D=True) if settings.do_3D else options
    if nplanes > 1:
        return options.with_(norm3D=False)
    return options


# -- channels as given: Cellpose 4.2.1.1's ``transforms.convert_image`` and ``normalize_img`` --
#
# Cellpose 4 takes up to three channels in any order: no ``channels`` argument, no grayscale
# averaging, no channel selection. Its axis rules differ from Cellpose 3's:
#
# - 2D (``do_3D`` False and no stitching): a (Y, X) image gets one channel; a 3-D array has its
#   channels on the first or the last axis, whichever is shorter (last on ties) unless
#   ``channel_axis`` says; a 4-D array is a batch (N, ...) of 2D images, channels on axis 1 or 3 by
#   the same rule. ``z_axis`` is an error here.
# - 3D (``do_3D`` or stitching): ``z_axis`` is required; a 3-D array is grayscale; a 4-D array also
#   needs ``channel_axis``.
# - More than three channels: the first three are kept (a warning).
#
# Normalisation takes the same ``normalize`` dict as Cellpose 3 (:func:`cellflow_rt.normalize.normalize_img`,
# shared), with the percentile arithmetic of numpy 2.1 and later (Cellpose 4.2.1.1's reference
# environment has numpy 2.4.6; Cellpose 3's references were made with 2.0.2). Two differences of
# Cellpose 4: ``invert`` also inverts tile-normalised channels, and every channel that was not
# normalised (constant everywhere, without ``lowhigh`` or tiles) is set to 0.

#: Channels a Cellpose 4 network takes (the default of ``max_channels``).
MAX_GIVEN_CHANNELS = 3


def _axis(value: int, ndim: int, name: str) -> int:
    if not -ndim <= value < ndim:
        raise ImageShapeError(f"{name}={value} is out of range for an image with {ndim} axes")
    return value % ndim


def convert_image_as_given(x: np.ndarray, channel_axis: Optional[int] = None, z_axis: Optional[int] = None,
                           do_3D: bool = False, max_channels: int = MAX_GIVEN_CHANNELS) -> np.ndarray:
    """Cellpose 4.2.1.1's axes: Z (or the image index) first and the channels last, at most 3 of them.

    Parameters
    ----------
    x : ndarray
        2-D to 4-D image, any numeric dtype (kept: the caller casts).
    channel_axis, z_axis : int or None
        Axes holding channels and Z (see the comment above for the rules when None).
    do_3D : bool
        The image is a volume or a stack to stitch (Cellpose 4's ``do_3D or stitch_threshold > 0``).

    Returns
    -------
    ndarray
        (Y, X, C), (N, Y, X, C) or (Z, Y, X, C) with 1 <= C <= 3.
    """
    x = np.asarray(x)
    if not 2 <= x.ndim <= 4:
        raise ImageShapeError(f"Cellpose 4 takes 2-D, 3-D or 4-D images, got shape {x.shape}")
    if do_3D:
        return _first_channels(_convert_volume(x, channel_axis, z_axis), max_channels)
    if z_axis is not None:
        raise ImageShapeError("z_axis is for 3D runs (do_3D or stitch_threshold > 0); set z_axis=None for 2D images")
    ndim = x.ndim
    batch_axis = None
    if channel_axis is not None:
        if ndim == 2:
            raise ImageShapeError("channel_axis given for a 2-D image: a (Y, X) image has no channel axis")
        channel_axis = _axis(channel_axis, ndim, "channel_axis")
        if ndim == 4:
            if channel_axis == 0:
                raise ImageShapeError("channel_axis cannot be 0 for a 4-D image: axis 0 is the batch of images")
            batch_axis = 0
    elif ndim == 2:
        x = x[..., np.newaxis]
        channel_axis = 2
    elif ndim == 3:
        channel_axis = 0 if x.shape[0] < x.shape[-1] else 2
    else:
        channel_axis = 1 if x.shape[1] < x.shape[-1] else 3
        batch_axis = 0
    order = [a for a in (batch_axis,) if a is not None]
    order += [a for a in range(x.ndim) if a not in (batch_axis, channel_axis)] + [channel_axis]
    return _first_channels(x.transpose(order), max_channels)


def _convert_volume(x: np.ndarray, channel_axis: Optional[int], z_axis: Optional[int]) -> np.ndarray:
    if x.ndim < 3:
        raise ImageShapeError(f"do_3D and stitching need a 3-D or 4-D image, got shape {x.shape}")
    if z_axis is None:
        raise ImageShapeError("z_axis is required for 3D runs (do_3D or stitch_threshold > 0) with Cellpose 4 models")
    if channel_axis is None and x.ndim == 4:
        raise ImageShapeError("channel_axis is required for 4-D images in 3D runs with Cellpose 4 models")
    z_axis = _axis(z_axis, x.ndim, "z_axis")
    if x.ndim == 3:
        x = x[..., np.newaxis]
        channel_axis = 3
    else:
        channel_axis = _axis(channel_axis, x.ndim, "channel_axis")
    if z_axis == channel_axis:
        raise ImageShapeError(f"z_axis and channel_axis cannot be the same axis ({z_axis})")
    yx = [a for a in range(4) if a not in (z_axis, channel_axis)]
    return x.transpose(z_axis, yx[0], yx[1], channel_axis)


def _first_channels(x: np.ndarray, max_channels: int) -> np.ndarray:
    if x.shape[-1] > max_channels:
        warnings.warn(f"{x.shape[-1]} channels given: the model segments on the first {max_channels}")
        x = x[..., :max_channels]
    return x


def _channels_with_range(x: np.ndarray, norm3D: bool) -> np.ndarray:
    """Per channel of (N, Y, X, C): does normalisation touch it (not constant, per plane unless norm3D)."""
    if norm3D or x.shape[0] == 1:
        return np.array([np.ptp(x[..., c]) > 0 for c in range(x.shape[-1])])
    return np.array([any(np.ptp(plane[..., c]) > 0 for plane in x) for c in range(x.shape[-1])])


def prepare_channels_as_given(image: np.ndarray, settings, max_channels: int = MAX_GIVEN_CHANNELS
                              ) -> Tuple[np.ndarray, bool]:
    """Input array -> normalised float32 (N, Y, X, C) planes, C <= 3 (N = 1 for a 2D image).

    Returns
    -------
    x : ndarray
        The planes.
    volume : bool
        Whether they are one volume (do_3D or stitching), normalised together.
    """
    image = np.asarray(image)
    if image.size == 0:
        raise ValueError(f"image is empty (shape {image.shape})")
    check_finite(image)
    stacked = settings.do_3D or settings.stitch_threshold > 0
    x = convert_image_as_given(image, settings.channel_axis, settings.z_axis, do_3D=stacked, max_channels=max_channels)
    if x.ndim < 4:
        x = x[np.newaxis]
    x = x.astype(np.float32)  # a copy: normalisation works in place
    if not settings.normalize:
        return x, stacked
    # Cellpose 4 normalises a do_3D stack jointly, a stitched one as its norm3D says, and the
    # planes of a batch separately
    options = settings.normalization
    options = options.with_(norm3D=settings.do_3D or (options.norm3D and stacked) or x.shape[0] == 1)
    all_channels = options.lowhigh is not None or options.tile_norm_blocksize > 0
    normalised = np.ones(x.shape[-1], bool) if all_channels else _channels_with_range(x, options.norm3D)
    tile_invert = options.invert and options.lowhigh is None and options.tile_norm_blocksize > 0
    x = normalize_img(x, options.with_(invert=options.invert and not tile_invert), percentile_rule="numpy2.1")
    if tile_invert:  # Cellpose 3 leaves tile-normalised channels as they are; Cellpose 4 inverts them
        np.subtract(1, x, out=x)
    # "the transformer can get confused if a channel is all 1's instead of all 0's" (Cellpose 4)
    x[..., ~normalised] = 0
    return x, stacked
