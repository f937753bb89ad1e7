"""One frozen dataclass of evaluation options, with Cellpose 3.1.1.1's names and defaults.

Every stage reads its options from :class:`EvalSettings`; defaults are defined here and nowhere else.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Optional, Sequence, Tuple

from .normalize import NORMALIZE_KEYS, NormalizeOptions

#: Tile side used by Cellpose (the network was trained on 224 x 224 crops).
BSIZE = 224

#: Where the dynamics may run (``EvalSettings.dynamics``; chosen by ``cellflow_rt.gpu.choose_dynamics``).
DYNAMICS = ("auto", "cpu", "gpu")


@dataclass(frozen=True)
class EvalSettings:
    """Options of ``CellposeModel.eval`` (Cellpose 3.1.1.1), defaults identical to the reference.

    Cellpose 4 (Cellpose-SAM) models read the same object the way Cellpose 4.2.1.1's ``eval`` does
    (their family, :mod:`cellflow_rt.family.cpsam`): ``channels``, ``rescale``, ``bsize`` and ``interp`` do not
    apply to them (tiles are always 256; up to 3 channels are taken as they are), and ``diameter``
    None means no resize.

    Attributes
    ----------
    channels : tuple of int or None
        ``(chan, chan2)``: 0 = grayscale / none, 1/2/3 = R/G/B. None keeps the first ``nchan`` channels.
    channel_axis, z_axis : int or None
        Axes of the input array holding channels and Z planes (None = guessed as Cellpose does).
    normalize : bool
        1st/99th percentile normalisation per channel, before any resize.
    percentile : tuple of float
        Low and high percentiles used when normalising.
    invert : bool
        Invert intensities after normalisation.
    lowhigh : tuple or None
        Fixed ``(low, high)`` mapped to (0, 1) on every channel, or one pair per channel; replaces the
        percentiles, smoothing, sharpening and tiles (Cellpose's ``normalize["lowhigh"]``).
    norm3D : bool
        With ``stitch_threshold``, one normalisation over the whole stack (False: per plane); do_3D
        always normalises the whole volume and a stack of separate planes always per plane.
    sharpen_radius, smooth_radius : float
        Sigma (pixels) of the Gaussian surround subtracted / the Gaussian smoothing before
        normalising (0 = off).
    tile_norm_blocksize : int
        Normalise with percentiles of blocks of this side, smoothly interpolated (0 = off).
    tile_norm_smooth3D : float
        Extra smoothing of the block percentiles (Cellpose's quirk: over rows of blocks).
    diameter : float or None
        Cell diameter in pixels; None or 0 uses the model's ``diam_labels`` (``CellposeModel``) or the
        size model's estimate (``Cellpose``).
    rescale : float or None
        Explicit resize factor, used only when ``diameter`` is None/0.
    batch_size : int
        Tiles per network call.
    resample : bool
        Run dynamics at the original size (flows resized back) rather than at the network's size.
    flow_threshold : float
        Maximum flow error of a kept mask (0 disables the check).
    cellprob_threshold : float
        Pixels with cell probability logit above this are foreground.
    min_size : int
        Masks smaller than this (pixels or voxels) are removed; -1 disables.
    max_size_fraction : float
        Masks larger than this fraction of the image are removed.
    niter : int or None
        Euler steps; None/0 = 200 / rescale when ``resample`` else 200.
    augment : bool
        Test-time augmentation: overlapping flipped tiles averaged.
    tile_overlap : float
        Fraction of overlap between tiles.
    bsize : int or None
        Tile side; None: the model family's (224 for CPnet, 256 for Cellpose-SAM, 384 for CPDINO:
        :meth:`cellflow_rt.family.ModelFamily.tile_side`).
    interp : bool
        Bilinear interpolation of the flows during 2D Euler integration.
    do_3D : bool
        Run the network on YX, ZY and ZX slices and 3D dynamics.
    anisotropy : float or None
        Z sampling relative to XY (2.0 = Z sampled half as densely), do_3D only.
    flow3D_smooth : float
        Gaussian sigma applied to 3D flows before dynamics (0 = off).
    stitch_threshold : float
        With ``do_3D=False`` on a stack: IoU threshold linking 2D masks across Z (0 = off).
    compute_masks : bool
        False returns flows and styles only.
    dynamics : {"auto", "cpu", "gpu"}
        Where flows become masks: ``auto`` = the GPU when the network runs on a GPU provider and
        numba sees a CUDA device, else the CPU; ``gpu`` fails without a CUDA device. Not a
        Cellpose option; the masks are the same either way.
    """

    channels: Optional[Tuple[int, int]] = None
    channel_axis: Optional[int] = None
    z_axis: Optional[int] = None
    normalize: bool = True
    percentile: Tuple[float, float] = (1.0, 99.0)
    invert: bool = False
    lowhigh: Optional[tuple] = None
    norm3D: bool = True
    sharpen_radius: float = 0.0
    smooth_radius: float = 0.0
    tile_norm_blocksize: int = 0
    tile_norm_smooth3D: float = 1.0
    diameter: Optional[float] = None
    rescale: Optional[float] = None
    batch_size: int = 8
    resample: bool = True
    flow_threshold: float = 0.4
    cellprob_threshold: float = 0.0
    min_size: int = 15
    max_size_fraction: float = 0.4
    niter: Optional[int] = None
    augment: bool = False
    tile_overlap: float = 0.1
    bsize: Optional[int] = None
    interp: bool = True
    do_3D: bool = False
    anisotropy: Optional[float] = None
    flow3D_smooth: float = 0.0
    stitch_threshold: float = 0.0
    compute_masks: bool = True
    dynamics: str = "auto"

    def __post_init__(self):
        if self.channels is not None:
            chans = tuple(int(c) for c in self.channels)
            if len(chans) != 2:
                raise ValueError(f"channels must have two entries [chan, chan2], got {list(self.channels)}")
            if any(c < 0 for c in chans):
                raise ValueError(f"channels must be >= 0 (0 = grayscale/none, 1-3 = R/G/B), got {list(chans)}")
            object.__setattr__(self, "channels", chans)
        if self.diameter is not None and not (self.diameter >= 0):
            raise ValueError(f"diameter must be >= 0 (0 or None = estimate/default), got {self.diameter}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not 0.0 <= self.tile_overlap < 1.0:
            raise ValueError(f"tile_overlap must be in [0, 1), got {self.tile_overlap}")
        if self.anisotropy is not None and not (self.anisotropy > 0):
            raise ValueError(f"anisotropy must be > 0, got {self.anisotropy}")
        if self.dynamics not in DYNAMICS:
            raise ValueError(f"dynamics must be one of {', '.join(DYNAMICS)}, got {self.dynamics!r}")
        for name, value in self.normalization.as_dict().items():  # validated, canonical (tuples, floats)
            object.__setattr__(self, name, value)

    @property
    def normalization(self) -> NormalizeOptions:
        """The normalisation options (Cellpose's ``normalize`` dict) as one object."""
        return NormalizeOptions(**{name: getattr(self, name) for name in NORMALIZE_KEYS})

    def with_(self, **changes) -> "EvalSettings":
        """Copy with some options changed."""
        return replace(self, **changes)

    @classmethod
    def names(cls) -> Sequence[str]:
        """Names of all options."""
        return [f.name for f in fields(cls)]
