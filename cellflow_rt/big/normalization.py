"""One normalisation for the whole image, computed from per-block statistics, and the empty-block test.

Cellpose normalises a whole image (or a whole volume) with its 1st/99th percentiles, taken on a
strided subsample once the image has more than 224**3 pixels (``normalize.percentile_sample``). Per-block
percentiles would give every block a different contrast, hence different cells at block faces. So a
first pass over the blocks collects, per network channel: the minimum and maximum (Cellpose leaves a
constant channel alone), exactly the pixels of Cellpose's strided subsample that fall in the block,
and the extremes of a box-mean downsampled copy (the low-resolution foreground test). The driver
concatenates the samples and takes the percentiles: the same numbers, in float32, as a single pass.
Each block is then normalised with those fixed bounds before ``segment(..., normalize=False)``.

Of Cellpose's other normalisation options, ``lowhigh`` (fixed bounds, no statistics) runs blockwise
as it does in one pass. ``sharpen_radius``, ``smooth_radius`` and ``tile_norm_blocksize`` do not: the
first two filter the whole image through its FFT (it wraps around at the image's edges) and tile
normalisation smooths a grid of percentiles laid out over the whole image, so a block cannot
reproduce them; nor does per-plane normalisation (``norm3D=False``) of a stitched stack. Those are
refused (:func:`check_blockwise_normalization`).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

from ..normalize import PERCENTILE_SUBSAMPLE_SIZE
from ..preprocess import select_channels


def network_channels(data: np.ndarray, channels: Optional[Sequence[int]], nchan: int) -> np.ndarray:
    """Canonical (..., Y, X, C) pixels -> float32 (..., Y, X, nchan), Cellpose's channel selection.

    The same per-pixel arithmetic as :func:`cellflow_rt.preprocess.convert_image` (grayscale mean,
    channel picks, zero padding), made independent of the block's shape: a 2D block goes through
    ``select_channels`` as a one-plane stack, so that its fewer-than-8-rows quirk never fires.
    """
    x = np.asarray(data, dtype=np.float32)
    if channels is None:
        if x.shape[-1] > nchan:
            return np.ascontiguousarray(x[..., :nchan])
        if x.shape[-1] < nchan:
            return np.concatenate([x] + [np.zeros_like(x)] * (nchan - x.shape[-1]), axis=-1)
        return x
    stack = x if x.ndim == 4 else x[np.newaxis]
    with warnings.catch_warnings():  # its zero-range warnings are about the block, not the image
        warnings.simplefilter("ignore")
        out = select_channels(stack, channels)
    return out if x.ndim == 4 else out[0]


def subsample_steps(shape: Sequence[int]) -> Tuple[int, ...]:
    """Strides of Cellpose's percentile subsample for an image of spatial ``shape``."""
    if int(np.prod(shape)) <= PERCENTILE_SUBSAMPLE_SIZE:
        return (1,) * len(shape)
    steps = [max(1, n // 224) for n in shape]
    if len(shape) == 3:
        steps[0] = max(1, shape[0] // 50)
    return tuple(steps)


def _box_means(channel: np.ndarray, box: int) -> np.ndarray:
    """Means over ``box`` x ``box`` squares of the last two axes (the trailing partial boxes dropped)."""
    Y, X = channel.shape[-2:]
    by, bx = min(box, Y), min(box, X)
    ny, nx = Y // by, X // bx
    cut = channel[..., :ny * by, :nx * bx]
    return cut.reshape(cut.shape[:-2] + (ny, by, nx, bx)).mean(axis=(-3, -1))


@dataclass
class BlockStats:
    """What the statistics pass keeps of one block (per network channel)."""

    minimum: np.ndarray
    maximum: np.ndarray
    samples: List[np.ndarray]
    box_min: np.ndarray
    box_max: np.ndarray


def block_statistics(x: np.ndarray, start: Sequence[int], steps: Sequence[int], box: int) -> BlockStats:
    """Statistics of one block's network channels ``x`` (..., nchan) whose first pixel is at ``start``."""
    nchan = x.shape[-1]
    sample_index = tuple(slice((-s) % k, None, k) for s, k in zip(start, steps))
    samples = [np.ascontiguousarray(x[sample_index + (c,)]).ravel() for c in range(nchan)]
    boxes = [_box_means(x[..., c], box) for c in range(nchan)]
    return BlockStats(minimum=x.reshape(-1, nchan).min(axis=0), maximum=x.reshape(-1, nchan).max(axis=0),
                      samples=samples, box_min=np.array([b.min() for b in boxes], np.float32),
                      box_max=np.array([b.max() for b in boxes], np.float32))


@dataclass(frozen=True)
class GlobalNormalization:
    """Fixed per-channel bounds: ``(x - lo) / (hi - lo)`` on channels with a range, then invert.

    Attributes
    ----------
    lo, hi : ndarray, shape (nchan,)
        The image's percentiles per network channel (float32), or the user's ``lowhigh`` (float64).
    good : ndarray of bool
        Channels that are normalised (non-constant over the whole image).
    enabled : bool
        False when the user turned normalisation off: blocks are passed as they are.
    invert : bool
        ``1 - x`` on good channels after normalising.
    fixed : bool
        ``lo``/``hi`` are the user's ``lowhigh``: applied to every channel, whatever the range.
    """

    lo: np.ndarray
    hi: np.ndarray
    good: np.ndarray
    enabled: bool = True
    invert: bool = False
    fixed: bool = False

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Normalise float32 ``x`` (..., nchan) in place, as ``normalize.normalize_img`` does."""
        if not self.enabled:
            return x
        for c in np.flatnonzero(self.good):
            lo, hi = self.lo[c], self.hi[c]
            if self.fixed or hi - lo > 1e-3:
                x[..., c] -= lo
                x[..., c] /= (hi - lo)
            else:
                x[..., c] = 0
            if self.invert:
                x[..., c] = 1 - x[..., c]
        return x

    def foreground_score(self, stats: BlockStats) -> float:
        """Highest box-mean value a block reaches on the network's scale (after normalising)."""
        if not self.enabled:
            return float(stats.box_max.max())
        scores = [-np.inf]
        for c in np.flatnonzero(self.good):
            span = self.hi[c] - self.lo[c]
            if span <= 1e-3 and not self.fixed:
                continue
            if self.invert:
                scores.append(1 - (stats.box_min[c] - self.lo[c]) / span)
            else:
                scores.append((stats.box_max[c] - self.lo[c]) / span)
        return float(max(scores))


def check_blockwise_normalization(settings) -> None:
    """Raise ValueError naming the normalisation options a blockwise run cannot reproduce (see above)."""
    whole_image = [name for name in ("sharpen_radius", "smooth_radius", "tile_norm_blocksize")
                   if getattr(settings, name) > 0 and settings.lowhigh is None and settings.normalize]
    if whole_image:
        raise ValueError(f"{', '.join(whole_image)}: not available in blockwise runs (--blocksize): these "
                         "normalisation options work on the whole image at once; run without --blocksize, or "
                         "use percentile, lowhigh and invert, which blockwise runs support")
    if not settings.norm3D and settings.stitch_threshold > 0 and not settings.do_3D and settings.normalize:
        raise ValueError("norm3D=False: per-plane normalisation of a stitched stack is not available in blockwise "
                         "runs (--blocksize); blocks are normalised with whole-stack statistics")


def global_normalization(stats: Sequence[BlockStats], normalize: bool, invert: bool,
                         percentile: Tuple[float, float], lowhigh=None) -> GlobalNormalization:
    """Combine every block's statistics into the image's bounds (Cellpose's, in float32); with
    ``lowhigh`` (one pair, or one per channel) those bounds instead, on every channel."""
    lower, upper = float(percentile[0]), float(percentile[1])
    if not 0 <= lower < upper <= 100:
        raise ValueError(f"percentile must satisfy 0 <= low < high <= 100, got {percentile}")
    if invert and not normalize:
        raise ValueError("invert=True needs normalize=True")
    nchan = stats[0].minimum.size
    if lowhigh is not None:
        pairs = np.asarray(lowhigh, np.float64).reshape(-1, 2)
        if pairs.shape[0] not in (1, nchan):
            raise ValueError(f"lowhigh has {pairs.shape[0]} [low, high] pairs for an image with {nchan} channels")
        pairs = np.broadcast_to(pairs, (nchan, 2))
        return GlobalNormalization(lo=pairs[:, 0].copy(), hi=pairs[:, 1].copy(), good=np.ones(nchan, bool),
                                   enabled=normalize, invert=invert, fixed=True)
    minimum = np.min([s.minimum for s in stats], axis=0)
    maximum = np.max([s.maximum for s in stats], axis=0)
    good = maximum - minimum > 0
    lo = np.zeros(nchan, np.float32)
    hi = np.ones(nchan, np.float32)
    if normalize:
        for c in np.flatnonzero(good):
            samples = np.concatenate([s.samples[c] for s in stats])
            lo[c], hi[c] = np.percentile(samples, lower), np.percentile(samples, upper)
    return GlobalNormalization(lo=lo, hi=hi, good=good, enabled=normalize, invert=invert)
