"""Normalisation: every option of Cellpose 3.1.1.1's ``normalize`` dict, as one stage.

``normalize_img(x, options)`` takes the network channels of one image, float32 (N, Y, X, C) with N
planes (1 for a 2D image), and returns them normalised the way ``transforms.normalize_img`` does
for the same options (:class:`NormalizeOptions`, Cellpose's names and defaults):

1. ``lowhigh`` given: ``(x - low) / (high - low)`` on every channel, nothing else (no smoothing,
   sharpening or tiles).
2. Otherwise ``smooth_radius`` / ``sharpen_radius`` filter each plane and channel (Gaussian kernels
   applied through the FFT, so the image wraps around at its edges), then either tile
   normalisation (``tile_norm_blocksize``: percentiles per block, smoothed, bilinearly upsampled)
   or the 1st/99th ``percentile`` normalisation, per channel over the whole stack (``norm3D``) or
   per plane.
3. ``invert``: ``1 - x`` on the channels the percentile or lowhigh step normalised.

Which ``norm3D`` applies to a stack is the caller's decision (Cellpose's ``eval`` forces it for
do_3D and for stacks of separate planes: :func:`cellflow_rt.pipeline.prepare_image`); so is calling
this at all when ``normalize`` is False (Cellpose then skips ``normalize_img`` entirely).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, replace
from typing import Optional, Tuple

import numpy as np

from .percentile import percentiles

#: Above this many elements per channel, percentiles are computed on a strided subsample.
PERCENTILE_SUBSAMPLE_SIZE = 224 ** 3
#: Overlap of the tile-normalisation blocks (fixed in Cellpose).
_TILE_OVERLAP = 0.1

#: Keys of Cellpose's ``normalize`` dict.
NORMALIZE_KEYS = ("lowhigh", "percentile", "normalize", "norm3D", "sharpen_radius", "smooth_radius",
                  "tile_norm_blocksize", "tile_norm_smooth3D", "invert")


def _lowhigh_tuple(lowhigh):
    """``[low, high]`` or one pair per channel -> a tuple (of tuples) of floats; checks high > low."""
    if lowhigh is None:
        return None
    try:
        values = np.asarray(lowhigh, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"lowhigh must be [low, high] or one [low, high] per channel, got {lowhigh!r}") from None
    if values.ndim not in (1, 2) or values.shape[-1] != 2 or values.size == 0:
        raise ValueError(f"lowhigh must be [low, high] or one [low, high] per channel, got {lowhigh!r}")
    pairs = values.reshape(-1, 2)
    if not np.isfinite(pairs).all() or not (pairs[:, 1] > pairs[:, 0]).all():
        raise ValueError(f"lowhigh: every high must be greater than its low, got {lowhigh!r}")
    if values.ndim == 1:
        return (float(values[0]), float(values[1]))
    return tuple((float(lo), float(hi)) for lo, hi in pairs)


@dataclass(frozen=True)
class NormalizeOptions:
    """Cellpose 3.1.1.1's ``normalize`` dict, validated (same names and defaults).

    Attributes
    ----------
    normalize : bool
        Normalise at all (False: the image goes to the network as it is).
    lowhigh : tuple or None
        ``(low, high)`` for every channel, or one pair per channel; replaces the percentiles,
        smoothing, sharpening and tiles.
    percentile : (float, float)
        Lower and upper percentiles mapped to 0 and 1.
    norm3D : bool
        One normalisation over a whole stack rather than one per plane.
    sharpen_radius, smooth_radius : float
        Sigma (pixels) of the Gaussian surround subtracted / the Gaussian smoothing (0 = off).
    tile_norm_blocksize : int
        Percentiles per block of this side, smoothly interpolated (0 = off).
    tile_norm_smooth3D : float
        Extra smoothing sigma (in blocks) of the block percentiles when ``norm3D``.
    invert : bool
        ``1 - x`` after normalising.
    """

    normalize: bool = True
    lowhigh: Optional[tuple] = None
    percentile: Tuple[float, float] = (1.0, 99.0)
    norm3D: bool = True
    sharpen_radius: float = 0.0
    smooth_radius: float = 0.0
    tile_norm_blocksize: int = 0
    tile_norm_smooth3D: float = 1.0
    invert: bool = False

    def __post_init__(self):
        percentile = (1.0, 99.0) if self.percentile is None else self.percentile
        try:
            lower, upper = (float(p) for p in percentile)
        except (TypeError, ValueError):
            raise ValueError(f"percentile must be two numbers [low, high], got {self.percentile!r}") from None
        if not 0 <= lower < upper <= 100:
            raise ValueError(f"percentile must satisfy 0 <= low < high <= 100, got {list(percentile)}")
        object.__setattr__(self, "percentile", (lower, upper))
        object.__setattr__(self, "lowhigh", _lowhigh_tuple(self.lowhigh))
        for name in ("sharpen_radius", "smooth_radius", "tile_norm_smooth3D"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float, np.number)) and value >= 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be >= 0, got {value!r}")
        blocksize = self.tile_norm_blocksize
        if not (isinstance(blocksize, (int, float, np.number)) and blocksize >= 0 and float(blocksize).is_integer()):
            raise ValueError(f"tile_norm_blocksize must be a whole number of pixels >= 0, got {blocksize!r}")
        object.__setattr__(self, "tile_norm_blocksize", int(blocksize))
        object.__setattr__(self, "normalize", bool(self.normalize))
        object.__setattr__(self, "norm3D", bool(self.norm3D))
        object.__setattr__(self, "invert", bool(self.invert))
        if self.invert and not self.normalize:
            raise ValueError("invert=True needs normalize=True")

    @classmethod
    def from_cellpose(cls, normalize=True, invert: bool = False) -> "NormalizeOptions":
        """Options from ``CellposeModel.eval``'s ``normalize`` (bool or dict) and ``invert``.

        As in Cellpose 3.1.1.1, a dict carries its own ``invert`` and ``eval``'s is not used
        (CELLPOSE_NOTES errata A8); missing keys take the defaults; unknown keys are an error.
        """
        if isinstance(normalize, dict):
            unknown = sorted(set(normalize) - set(NORMALIZE_KEYS))
            if unknown:
                raise ValueError(f"normalize: unknown key(s) {unknown}; Cellpose's keys are {list(NORMALIZE_KEYS)}")
            return cls(**normalize)
        if not isinstance(normalize, (bool, np.bool_)):
            raise ValueError(f"normalize must be a bool or a dict of Cellpose's options, got {type(normalize).__name__}")
        return cls(normalize=bool(normalize), invert=bool(invert))

    def with_(self, **changes) -> "NormalizeOptions":
        """Copy with some options changed."""
        return replace(self, **changes)

    def as_dict(self) -> dict:
        """Cellpose's ``normalize`` dict (also :class:`~cellflow_rt.settings.EvalSettings`' field names)."""
        return {name: getattr(self, name) for name in NORMALIZE_KEYS}


def normalize_img(x: np.ndarray, options: NormalizeOptions, percentile_rule: str = "numpy2.0") -> np.ndarray:
    """Normalise an image's network channels with Cellpose's options.

    Parameters
    ----------
    x : ndarray
        float32 (N, Y, X, C): N planes (1 for a 2D image), C channels; changed in place when float32.
    options : NormalizeOptions
        What to do; with ``normalize`` False ``x`` is returned as float32, untouched.
    percentile_rule : {"numpy2.0", "numpy2.1"}
        The percentile arithmetic of the reference's numpy (:mod:`.percentile`): 2.0 for Cellpose
        3.1.1.1, 2.1 for Cellpose 4.2.1.1.

    Returns
    -------
    ndarray
        float32 (N, Y, X, C).

    Raises
    ------
    ValueError
        ``lowhigh`` with a pair per channel for another number of channels; ``tile_norm_blocksize``
        larger than the image; tile normalisation per plane of a multi-channel stack (see
        :func:`_tile_normalize`).
    """
    if x.ndim != 4:
        raise ValueError(f"expected (N, Y, X, C) planes, got shape {x.shape}")
    x = x if x.dtype == np.float32 else x.astype(np.float32)
    if not options.normalize:
        return x
    nchan = x.shape[-1]
    good = np.zeros(nchan, bool)
    if options.lowhigh is not None:
        _apply_lowhigh(x, options.lowhigh)
        good[:] = True
    else:
        if options.sharpen_radius > 0 or options.smooth_radius > 0:
            x = smooth_sharpen(x, smooth_radius=options.smooth_radius, sharpen_radius=options.sharpen_radius)
        if options.tile_norm_blocksize > 0:
            if options.invert:
                warnings.warn("invert has no effect with tile_norm_blocksize (as in Cellpose 3.1.1.1)", stacklevel=2)
            # Cellpose's tile branch never marks channels as normalised, so invert skips them.
            x = _tile_normalize(x, options.tile_norm_blocksize, options.percentile, options.norm3D,
                                options.tile_norm_smooth3D, percentile_rule)
        else:
            planes = [x] if x.shape[0] == 1 or options.norm3D else list(x)
            for plane in planes:
                for c in range(nchan):
                    channel = plane[..., c]
                    if np.ptp(channel) > 0:
                        _normalize_channel(channel, *options.percentile, percentile_rule)
                        good[c] = True
    if options.invert:
        for c in np.flatnonzero(good):
            x[..., c] = 1 - x[..., c]
    return x


def _apply_lowhigh(x: np.ndarray, lowhigh) -> None:
    """``(x - low) / (high - low)`` per channel, in float64 rounded to float32 as numpy 2 does for
    a float32 array and float64 bounds. A grayscale image's zero second channel becomes the
    negative constant ``-low / (high - low)``, as in Cellpose (its ``lowhigh`` skips no channel)."""
    nchan = x.shape[-1]
    pairs = np.asarray(lowhigh, np.float64).reshape(-1, 2)
    if pairs.shape[0] == 1:
        pairs = np.repeat(pairs, nchan, axis=0)
    elif pairs.shape[0] != nchan:
        raise ValueError(f"lowhigh has {pairs.shape[0]} [low, high] pairs for an image with {nchan} channels; "
                         "give one pair for all channels or one per channel")
    for c, (lo, hi) in enumerate(pairs):
        x[..., c] -= lo
        x[..., c] /= (hi - lo)


def percentile_sample(channel: np.ndarray) -> np.ndarray:
    """The values Cellpose takes percentiles of: a strided subsample above 224**3 elements."""
    if channel.size <= PERCENTILE_SUBSAMPLE_SIZE:
        return channel
    step = [max(1, n // 224) for n in channel.shape]
    if channel.ndim == 3:
        step[0] = max(1, channel.shape[0] // 50)
    return channel[tuple(slice(None, None, s) for s in step)]


def _normalize_channel(channel: np.ndarray, lower: float, upper: float, rule: str = "numpy2.0") -> None:
    """Map percentiles (lower, upper) to (0, 1) in place, in float32 like the reference."""
    lo, hi = percentiles(percentile_sample(channel), (lower, upper), rule=rule)
    if hi - lo > 1e-3:
        channel -= lo
        channel /= (hi - lo)
    else:
        channel[:] = 0


# --- smoothing and sharpening ------------------------------------------------------------------------

def _torch_linspace(start: float, end: float, n: int) -> np.ndarray:
    """``torch.linspace`` in float32, bit for bit: a float32 step, each value one fused multiply-add
    from the nearer end (checked against torch 2.13 for sizes 5-3000)."""
    start32, end32 = np.float32(start), np.float32(end)
    step = np.float32((end32 - start32) / np.float32(max(n - 1, 1)))
    i = np.arange(n)
    from_start = np.float64(start32) + np.float64(step) * i
    from_end = np.float64(end32) - np.float64(step) * (n - 1 - i)
    return np.where(i < n // 2, from_start, from_end).astype(np.float32)


def _gaussian_kernel(sigma: float, Ly: int, Lx: int) -> np.ndarray:
    """Cellpose's ``transforms.gaussian_kernel``: a normalised (Ly, Lx) Gaussian near (Ly/2, Lx/2).

    Quirks kept: both coordinate ramps span Ly's range, and they run from -L/2 to L/2 + 1, so the
    peak sits a sample before the centre and the filtered image moves by about a pixel.
    """
    y = _torch_linspace(-Ly / 2, Ly / 2 + 1, Ly)
    x = _torch_linspace(-Ly / 2, Ly / 2 + 1, Lx)
    kernel = np.exp(-(y[:, None] ** 2 + x[None, :] ** 2) / (2 * sigma ** 2))
    return kernel / kernel.sum(dtype=np.float32)


def smooth_sharpen(x: np.ndarray, smooth_radius: float = 0.0, sharpen_radius: float = 0.0) -> np.ndarray:
    """Cellpose's ``smooth_sharpen_img`` on (N, Y, X, C) planes: each plane and channel is correlated
    (circularly, through the FFT) with a Gaussian of ``smooth_radius`` minus a Gaussian of
    ``sharpen_radius``. Sharpening alone: minus the surround Gaussian with its centre sample *set*
    to 1, not incremented (the reference's kernel; a flat image keeps a fraction of its level).

    The reference does this with torch's float32 FFT; here it is float64 (scipy): the normalised
    images agree to 3e-7 of their range (``tests/test_normalize.py``, sharpen and smooth cases).
    """
    from scipy import fft

    Ly, Lx = x.shape[1:3]
    if smooth_radius > 0:
        kernel = _gaussian_kernel(smooth_radius, Ly, Lx)
        if sharpen_radius > 0:
            kernel = kernel - _gaussian_kernel(sharpen_radius, Ly, Lx)
    elif sharpen_radius > 0:
        kernel = -_gaussian_kernel(sharpen_radius, Ly, Lx)
        kernel[Ly // 2, Lx // 2] = 1
    else:
        return x
    transfer = np.conj(fft.rfft2(kernel.astype(np.float64)))
    # the correlation puts the kernel's centre (Ly//2, Lx//2) at the origin; fftshift moves it back
    shift = (Ly // 2, Lx // 2)
    for z in range(x.shape[0]):
        for c in range(x.shape[-1]):
            filtered = fft.irfft2(fft.rfft2(x[z, :, :, c].astype(np.float64)) * transfer, s=(Ly, Lx))
            x[z, :, :, c] = np.roll(filtered, shift, axis=(0, 1))
    return x


# --- tile normalisation ------------------------------------------------------------------------------

def _block_starts(L: int, blocksize: int) -> Tuple[np.ndarray, int]:
    """Block starts along one axis and the block length, as ``normalize99_tile`` lays them out."""
    length = min(blocksize, L)
    n = 1 if L <= blocksize else int(np.ceil((1.0 + 2 * _TILE_OVERLAP) * L / blocksize))
    return np.linspace(0, L - length, n).astype(int), length


def _fill_flat_blocks(lo: np.ndarray, hi: np.ndarray) -> None:
    """Blocks whose percentiles differ by < 1e-3 take the nearest good block's (first in row-major
    order among equally near ones); with no good block, the channel maps 0..1 unchanged."""
    for c in range(lo.shape[-1]):
        flat = hi[..., c] - lo[..., c] < 1e-3
        if not flat.any():
            continue
        if flat.all():
            lo[..., c], hi[..., c] = 0, 1
            continue
        fy, fx = np.nonzero(flat)
        gy, gx = np.nonzero(~flat)
        nearest = ((fy - gy[:, None]) ** 2 + (fx - gx[:, None]) ** 2).argmin(axis=0)
        lo[fy, fx, c] = lo[gy[nearest], gx[nearest], c]
        hi[fy, fx, c] = hi[gy[nearest], gx[nearest], c]


def _tile_normalize(x: np.ndarray, blocksize: int, percentile: Tuple[float, float], norm3D: bool,
                    smooth3D: float, rule: str = "numpy2.0") -> np.ndarray:
    """Cellpose's ``normalize99_tile`` on (Z, Y, X, C): per-block percentiles, flat blocks filled,
    block grids smoothed (scipy's ``gaussian_filter1d``) and bilinearly upsampled (OpenCV's
    arithmetic), then ``(x - low) / (high - low)`` per pixel.

    This is what ``eval`` does (it always hands ``normalize_img`` a (Z, Y, X, C) stack). Called
    directly on a 2D (Y, X, C) image, 3.1.1.1 and 4.2.1.1 instead divide every row by the bounds of
    the first row (their ``x01[0]`` meant to drop a plane axis that the upsampled bounds do not
    have), so with more than one row of blocks a direct ``transforms.normalize_img(yxc, ...)`` is not
    the reference for this function; ``transforms.normalize_img(yxc[None], ...)`` is."""
    from scipy.ndimage import gaussian_filter1d

    from .resize import resize_bilinear

    Lz, Ly, Lx, nchan = x.shape
    if blocksize > Ly and blocksize > Lx:
        raise ValueError(f"tile_norm_blocksize {blocksize} is larger than the image ({Ly} x {Lx} pixels); "
                         "use a smaller block or tile_norm_blocksize=0")
    if not norm3D and Lz > 1 and nchan > 1:
        # 3.1.1.1's per-plane branch fills the high bounds of a multi-channel image with the low
        # ones and then raises ZeroDivisionError: this combination never runs there.
        raise ValueError("tile_norm_blocksize with norm3D=False on a stack of planes fails in Cellpose 3.1.1.1 "
                         "(multi-channel images); set norm3D=True (do_3D or stitch_threshold) or "
                         "tile_norm_blocksize=0")
    ystarts, by = _block_starts(Ly, blocksize)
    xstarts, bx = _block_starts(Lx, blocksize)
    lo = np.empty((Lz, len(ystarts), len(xstarts), nchan), np.float32)
    hi = np.empty_like(lo)
    lower, upper = percentile
    for z in range(Lz):
        for j, y0 in enumerate(ystarts):
            for i, x0 in enumerate(xstarts):
                for c in range(nchan):
                    block = x[z, y0:y0 + by, x0:x0 + bx, c]
                    lo[z, j, i, c], hi[z, j, i, c] = percentiles(block, (lower, upper), rule=rule)
        _fill_flat_blocks(lo[z], hi[z])
    for axis in (0, 1):  # over Z and over rows of blocks (not columns), as the reference
        lo = gaussian_filter1d(lo, 1, axis=axis)
        hi = gaussian_filter1d(hi, 1, axis=axis)
    if norm3D:
        # tile_norm_smooth3D smooths the rows of blocks once more, not Z (the reference's loop
        # variable is left at axis 1)
        sigma = 1 if smooth3D == 0 else smooth3D
        lo = gaussian_filter1d(lo, sigma, axis=1)
        hi = gaussian_filter1d(hi, sigma, axis=1)
    if not norm3D and Lz > 1:  # one channel (see above): bounds per plane
        lo_full = np.stack([resize_bilinear(plane, Ly, Lx) for plane in lo])
        hi_full = np.stack([resize_bilinear(plane, Ly, Lx) for plane in hi])
        if (hi_full - lo_full).min() < 1e-3:
            raise ValueError("tile_norm_blocksize with norm3D=False: a plane is too sparse for per-plane tile "
                             "normalisation; set norm3D=True or tile_norm_blocksize=0")
    else:
        lo_full = resize_bilinear(lo.mean(axis=0), Ly, Lx)
        hi_full = resize_bilinear(hi.mean(axis=0), Ly, Lx)
    x -= lo_full
    x /= (hi_full - lo_full)
    return x
