"""Axes, channels and normalisation of Cellpose 4.2.1.1 (``transforms.convert_image``, ``normalize_img``).

Cellpose 4 takes up to three channels in any order: no ``channels`` argument, no grayscale
averaging, no channel selection. Its axis rules differ from Cellpose 3's:

- 2D (``do_3D`` False and no stitching): a (Y, X) image gets one channel; a 3-D array has its
  channels on the first or the last axis, whichever is shorter (last on ties) unless
  ``channel_axis`` says; a 4-D array is a batch (N, ...) of 2D images, channels on axis 1 or 3 by
  the same rule. ``z_axis`` is an error here.
- 3D (``do_3D`` or stitching): ``z_axis`` is required; a 3-D array is grayscale; a 4-D array also
  needs ``channel_axis``.
- More than three channels: the first three are kept (a warning).

Normalisation takes the same ``normalize`` dict as Cellpose 3 (:func:`cellflow_rt.normalize.normalize_img`,
shared), with the percentile arithmetic of numpy 2.1 and later (Cellpose 4.2.1.1's reference
environment has numpy 2.4.6; Cellpose 3's references were made with 2.0.2). Two differences of
Cellpose 4: ``invert`` also inverts tile-normalised channels, and every channel that was not
normalised (constant everywhere, without ``lowhigh`` or tiles) is set to 0.
"""
from __future__ import annotations

import warnings
from typing import Optional, Tuple

import numpy as np

from .normalize import normalize_img
from .preprocess import ImageShapeError, check_finite

#: Channels a Cellpose 4 network takes.
MAX_CHANNELS = 3


def _axis(value: int, ndim: int, name: str) -> int:
    if not -ndim <= value < ndim:
        raise ImageShapeError(f"{name}={value} is out of range for an image with {ndim} axes")
    return value % ndim


def convert_image(x: np.ndarray, channel_axis: Optional[int] = None, z_axis: Optional[int] = None,
                  do_3D: bool = False) -> np.ndarray:
    """Put Z (or the image index) first and the channels last, at most 3 of them.

    Parameters
    ----------
    x : ndarray
        2-D to 4-D image, any numeric dtype (kept: the caller casts).
    channel_axis, z_axis : int or None
        Axes holding channels and Z (see the module docstring for the rules when None).
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
        return _convert_volume(x, channel_axis, z_axis)
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
    return _first_channels(x.transpose(order))


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
    return _first_channels(x.transpose(z_axis, yx[0], yx[1], channel_axis))


def _first_channels(x: np.ndarray) -> np.ndarray:
    if x.shape[-1] > MAX_CHANNELS:
        warnings.warn(f"{x.shape[-1]} channels given: Cellpose 4 segments on the first {MAX_CHANNELS}")
        x = x[..., :MAX_CHANNELS]
    return x


def _channels_with_range(x: np.ndarray, norm3D: bool) -> np.ndarray:
    """Per channel of (N, Y, X, C): does normalisation touch it (not constant, per plane unless norm3D)."""
    if norm3D or x.shape[0] == 1:
        return np.array([np.ptp(x[..., c]) > 0 for c in range(x.shape[-1])])
    return np.array([any(np.ptp(plane[..., c]) > 0 for plane in x) for c in range(x.shape[-1])])


def prepare_image(image: np.ndarray, settings) -> Tuple[np.ndarray, bool]:
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
    x = convert_image(image, settings.channel_axis, settings.z_axis, do_3D=stacked)
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
