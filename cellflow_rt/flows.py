"""Image planes -> network flows: resize, pad, tile, run the network, blend, crop.

Cellpose 3.1.1.1's ``core.run_net``: each (Y, X, C) plane is bilinearly resized by ``rescale``,
zero-padded to a multiple of 16 (+16), cut into tiles, run through the network, blended with the
taper mask and cropped back; the style of a plane is the L2-normalised sum of its tile styles.
Cellpose 4.2.1.1's is the same with tiles of 256 that planes are padded up to (``pad_to``), planes
of fewer channels than the network takes zero-padded, and no style.
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from .network import Network
from .resize import resize_bilinear
from .settings import BSIZE
from .tiles import blend_tiles, extract_tiles, pad_amounts, tile_grid, unaugment_tiles


def rescaled_size(L: int, rescale) -> int:
    """``int(L * rescale)`` in the precision of ``rescale`` (float32 for checkpoint-derived values)."""
    return int(L * rescale)


def run_network(net: Network, planes: np.ndarray, rescale=None, augment: bool = False, batch_size: int = 8,
                tile_overlap: float = 0.1, bsize: int = BSIZE, pad_to: Optional[int] = None,
                styles: bool = True) -> Tuple[np.ndarray, np.ndarray]:
    """Network outputs for a stack of planes at the rescaled size.

    Parameters
    ----------
    net : Network
        The ONNX Runtime session.
    planes : ndarray
        float32 (N, Ly0, Lx0, C), normalised.
    rescale : float or None
        Resize factor (None or 1 = none). Pass a numpy float32 to reproduce the reference's
        float32 size arithmetic.
    augment, batch_size, tile_overlap, bsize
        As in :class:`~cellflow_rt.settings.EvalSettings`.
    pad_to : int, optional
        Pad axes shorter than this up to it (Cellpose 4: ``bsize``; see :func:`~.tiles.pad_amounts`).
    styles : bool
        The network has a style output to sum and normalise (Cellpose 3); False returns zeros.

    Returns
    -------
    flows : ndarray
        float32 (N, Lyr, Lxr, nout) at the rescaled size: dY, dX, cellprob (segmentation), or the
        restored image (restoration nets, nout 1). With ``augment`` on an
        axis padded to less than ``bsize``, the trailing pad is kept (the reference's behaviour, see
        CELLPOSE_NOTES errata A2).
    styles : ndarray
        float32 (N, 256), L2-normalised (zeros with ``styles=False``).
    """
    nimg, Ly0, Lx0, nchan = planes.shape
    if rescale is not None and rescale == 1.0:
        rescale = None
    Lyr, Lxr = (rescaled_size(Ly0, rescale), rescaled_size(Lx0, rescale)) if rescale is not None else (Ly0, Lx0)
    if Lyr < 1 or Lxr < 1:
        raise ValueError(f"image of {Ly0} x {Lx0} pixels rescaled by {float(rescale):.4g} has no pixels left; "
                         "check the diameter")
    (ypad1, ypad2), (xpad1, xpad2) = pad_amounts(Lyr, min_size=pad_to), pad_amounts(Lxr, min_size=pad_to)
    # Cellpose 4 takes 1-3 channels into a 3-channel network: the missing ones are zeros
    extra_channels = max(0, getattr(net, "nchan", nchan) - nchan)
    Ly, Lx = Lyr + ypad1 + ypad2, Lxr + xpad1 + xpad2
    grid = tile_grid(Ly, Lx, bsize=bsize, augment=augment, tile_overlap=tile_overlap)
    # The reference crops the padding with the tile grid's (zero-extended) size under augment.
    yend = (grid.Ly if augment else Ly) - ypad2
    xend = (grid.Lx if augment else Lx) - xpad2
    out = np.empty((nimg, len(range(ypad1, min(yend, Ly))), len(range(xpad1, min(xend, Lx))), net.nout), np.float32)
    style_out = np.zeros((nimg, 256), np.float32)

    planes_per_batch = max(1, batch_size // grid.ntiles)
    for first in range(0, nimg, planes_per_batch):
        group = range(first, min(nimg, first + planes_per_batch))
        tiles = np.empty((len(group) * grid.ntiles, nchan + extra_channels, grid.ly, grid.lx), np.float32)
        for k, b in enumerate(group):
            plane = planes[b] if rescale is None else resize_bilinear(planes[b], Lyr, Lxr)
            padded = np.pad(plane.transpose(2, 0, 1), ((0, extra_channels), (ypad1, ypad2), (xpad1, xpad2)))
            extract_tiles(padded, grid, tiles[k * grid.ntiles:(k + 1) * grid.ntiles])
        y, s = net.run(tiles, batch_size=batch_size)
        for k, b in enumerate(group):
            yk = y[k * grid.ntiles:(k + 1) * grid.ntiles]
            if augment:
                unaugment_tiles(yk, grid)
            blended = blend_tiles(yk, grid)[:, :Ly, :Lx]
            out[b] = blended[:, ypad1:yend, xpad1:xend].transpose(1, 2, 0)
            if styles:
                style = s[k * grid.ntiles:(k + 1) * grid.ntiles].sum(axis=0)
                style /= (style ** 2).sum() ** 0.5
                style_out[b] = style
    return out, style_out
