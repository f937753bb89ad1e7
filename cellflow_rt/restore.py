"""Image restoration (Cellpose 3's ``denoise.py``): a restoration CPnet run before segmentation.

:func:`restore_image` is ``DenoiseModel.eval`` for one image: channels selected as for segmentation
(all kept when ``channels`` is None), upsampled first for an ``upsample`` net, then each channel
normalised and run through the net at ``diam_mean / diameter`` and resized back. :class:`RestoreStep`
is what ``CellposeDenoiseModel.eval`` adds around it: which normalisation each half gets and the
settings the restored image is segmented with. Cellpose 3.1.1.1's quirks are reproduced (each is
commented where it is handled), so that the restored images and masks are its own.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

from .family import CPNET  # restoration nets are CPnets
from .flows import run_network
from .loaded_model import LoadedModel
from .normalize import NormalizeOptions, normalize_img
from .preprocess import check_finite, convert_image
from .resize import resize_bilinear
from .settings import EvalSettings

#: Smallest diameter an ``upsample`` net upsamples from (Cellpose's rule).
UPSAMPLE_MIN_DIAMETER = 3


@dataclass
class Restoration:
    """What :func:`restore_image` returns.

    Attributes
    ----------
    image : ndarray
        float32 restored image, (Y, X, C) or (Z, Y, X, C), at ``ratio`` times the input's size; C is
        the number of restored channels (1 when the second channel is empty or not asked for).
    ratio : float
        The upsampling factor (> 1 only for ``upsample`` nets with a diameter below their diam_mean).
    seconds : float
        Wall time.
    """

    image: np.ndarray
    ratio: float
    seconds: float = 0.0


def restore_image(image: np.ndarray, model: LoadedModel, settings: EvalSettings,
                  diam_mean: Optional[float] = None) -> Restoration:
    """Restore one image with a restoration net, as Cellpose 3.1.1.1's ``DenoiseModel.eval``.

    Parameters
    ----------
    image : ndarray
        2D image, or a stack/volume with ``settings.do_3D`` (axes as for segmentation).
    model : LoadedModel
        A restoration model (``cellflow-rt export CHECKPOINT --restore-type ...``).
    settings : EvalSettings
        ``channels``, ``channel_axis``, ``z_axis``, ``do_3D``, ``diameter``, ``rescale``,
        ``batch_size``, ``tile_overlap``, ``bsize`` and the normalisation options are used.
    diam_mean : float, optional
        The diameter the net was trained at; default the model's manifest value.

    Returns
    -------
    Restoration
    """
    tic = time.perf_counter()
    model.require_kind("restoration", "restore_type")
    diam_mean = float(model.info.diam_mean if diam_mean is None else diam_mean)
    image = np.asarray(image)
    if image.size == 0:
        raise ValueError(f"image is empty (shape {image.shape})")
    check_finite(image)
    x = convert_image(image, settings.channels, channel_axis=settings.channel_axis, z_axis=settings.z_axis,
                      do_3D=settings.do_3D, nchan=None)
    squeeze = x.ndim < 4
    if squeeze:
        x = x[np.newaxis]

    diameter = settings.diameter
    ratio = 1.0
    if model.restore_type == "upsample":
        # Cellpose upsamples to diam_mean first, and still runs the net at diam_mean / diameter below
        if diameter is not None and UPSAMPLE_MIN_DIAMETER <= diameter < diam_mean:
            ratio = diam_mean / diameter
            Ly, Lx = x.shape[1:3]
            x = np.stack([resize_bilinear(plane, int(Ly * ratio), int(Lx * ratio)) for plane in x])
        else:
            warnings.warn(f"diameter {diameter}: the image is upsampled only for diameters in "
                          f"[{UPSAMPLE_MIN_DIAMETER}, {diam_mean:g}) (as in Cellpose)", stacklevel=2)
    if diameter is not None and diameter > 0:
        rescale = diam_mean / diameter
    else:
        rescale = 1.0 if settings.rescale is None else settings.rescale

    # Cellpose restores one channel when the last is flat or no second channel was asked for
    if np.ptp(x[..., -1]) < 1e-3 or (settings.channels is not None and settings.channels[-1] == 0):
        x = x[..., :1]
    for c in range(x.shape[-1]):
        # The second channel runs at rescale * 30 / 17 (meant for a nuclei net on it); and every channel
        # goes through the one net: 3.1.1.1's _eval ignores the net it is handed (chan2_restore's
        # net_chan2 is never used).
        rescale_c = rescale * 30. / 17. if c == 1 else rescale
        x[..., c] = _restore_channel(model.net, x[..., c:c + 1], settings, rescale_c)
    return Restoration(image=x[0] if squeeze else x, ratio=ratio, seconds=time.perf_counter() - tic)


def _restore_channel(net, channel: np.ndarray, settings: EvalSettings, rescale) -> np.ndarray:
    """One channel (N, Y, X, 1): normalise (the options as given: no per-stack rules here, unlike
    segmentation), run the net at ``rescale``, resize back; returns (N, Y, X)."""
    planes = normalize_img(np.array(channel, np.float32), settings.normalization)
    Ly, Lx = channel.shape[1:3]
    restored, _ = run_network(net, planes, rescale=rescale, augment=False, batch_size=settings.batch_size,
                              tile_overlap=settings.tile_overlap, bsize=CPNET.tile_side(settings))
    return np.stack([resize_bilinear(plane, Ly, Lx) for plane in restored])[..., 0]


def split_normalization(normalize=True, invert: bool = False) -> Tuple[NormalizeOptions, NormalizeOptions]:
    """``CellposeDenoiseModel.eval``'s normalisation: (options for the restoration net's input, options
    for the segmentation of the restored image).

    The restoration gets the user's options with ``eval``'s ``invert`` (even with a dict). The
    segmentation gets Cellpose's defaults: with a bool ``normalize``, 3.1.1.1 writes it and ``invert``
    into its module-level default dict, so both reach the segmentation; a dict's other options never
    do. (Those writes also leak into later calls in the same 3.1.1.1 process; this reproduces a fresh
    process, as the reference outputs were made.)
    """
    if isinstance(normalize, dict):
        return NormalizeOptions.from_cellpose({**normalize, "invert": invert}), NormalizeOptions()
    restore = NormalizeOptions.from_cellpose(normalize, invert)
    return restore, NormalizeOptions(normalize=restore.normalize, invert=restore.invert)


@dataclass(frozen=True)
class RestoreStep:
    """A restoration net run before segmentation, as ``CellposeDenoiseModel`` runs it.

    Attributes
    ----------
    model : LoadedModel
        The restoration model.
    name : str
        The restore type as the user named it (stored as ``restore`` in ``_seg.npy``).
    normalization, seg_normalization : NormalizeOptions
        For the restoration net's input and for the restored image's segmentation
        (:func:`split_normalization`).
    diam_mean : float
        The diameter the restoration net was trained at.
    """

    model: LoadedModel
    name: str
    normalization: NormalizeOptions
    seg_normalization: NormalizeOptions
    diam_mean: float

    @classmethod
    def create(cls, model: LoadedModel, normalize=True, invert: bool = False, diam_mean: Optional[float] = None,
               name: Optional[str] = None) -> "RestoreStep":
        """From a restoration model and ``eval``'s ``normalize`` (bool or dict) and ``invert``."""
        model.require_kind("restoration", "restore_type")
        restore, seg = split_normalization(normalize, invert)
        return cls(model=model, name=name or model.name, normalization=restore, seg_normalization=seg,
                   diam_mean=float(model.info.diam_mean if diam_mean is None else diam_mean))

    def restore(self, image: np.ndarray, settings: EvalSettings) -> Restoration:
        """Restore ``image``; ``settings`` are the segmentation's (its normalisation is replaced)."""
        return restore_image(image, self.model, settings.with_(**self.normalization.as_dict()), self.diam_mean)

    def segmentation_settings(self, settings: EvalSettings, restoration: Restoration,
                              ratio: Optional[float] = None) -> EvalSettings:
        """The settings the restored image is segmented with (``CellposeDenoiseModel.eval``).

        ``ratio`` overrides the restoration's own: for a list of images Cellpose decides every
        image's diameter by the last image's ratio.
        """
        channels = settings.channels
        if channels is not None:  # the restored image holds the selected channels, in order
            channels = (0, 0) if channels[0] == 0 else (1, 2)
        ratio = restoration.ratio if ratio is None else ratio
        # an upsampled image is segmented at the restoration net's diam_mean
        diameter = self.diam_mean if ratio > 1 else settings.diameter
        return settings.with_(channels=channels, channel_axis=-1, z_axis=0 if restoration.image.ndim > 3 else None,
                              diameter=diameter, **self.seg_normalization.as_dict())
