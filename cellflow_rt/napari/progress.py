"""Progress and cancellation for the network stage, from outside the pipeline.

:class:`ProgressNetwork` wraps a model's network (the object :func:`cellflow_rt.pipeline.predict`
calls ``run(tiles, batch_size)`` on) and feeds it one batch of tiles at a time: after each batch it
reports the tiles done, and before the next one it stops with :class:`RunCancelled` if asked to.
The network has no operation across the batch axis, so running the tiles batch by batch gives the
same outputs as one call. :func:`expected_tiles` says how many tiles a run will take, for the bar.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np

from ..family import DEFAULT_FAMILY
from ..flows import rescaled_size
from ..settings import EvalSettings
from ..tiles import pad_amounts, tile_grid


class RunCancelled(Exception):
    """The user cancelled the run; it stopped after the tile batch in progress."""


class ProgressNetwork:
    """A network that runs ``batch_size`` tiles at a time, reporting and checking between batches.

    Parameters
    ----------
    net : Network
        The wrapped network (``run(tiles, batch_size) -> flows, styles``); every other attribute is
        the wrapped network's.
    on_tiles : callable, optional
        Called with the number of tiles just finished.
    cancelled : callable, optional
        Returns True when the run must stop; checked before every batch.
    """

    def __init__(self, net, on_tiles: Optional[Callable[[int], None]] = None,
                 cancelled: Optional[Callable[[], bool]] = None):
        self._net = net
        self._on_tiles = on_tiles
        self._cancelled = cancelled

    def __getattr__(self, name):
        return getattr(self._net, name)

    def run(self, tiles: np.ndarray, batch_size: int = 8):
        """Flows (N, 3, ly, lx) and styles (N, 256) of tiles (N, C, ly, lx), batch by batch."""
        n = tiles.shape[0]
        flows = np.empty((n, 3) + tiles.shape[2:], np.float32)
        styles = np.empty((n, 256), np.float32)
        for start in range(0, n, batch_size):
            if self._cancelled is not None and self._cancelled():
                raise RunCancelled()
            stop = min(n, start + batch_size)
            flows[start:stop], styles[start:stop] = self._net.run(tiles[start:stop], batch_size=batch_size)
            if self._on_tiles is not None:
                self._on_tiles(stop - start)
        return flows, styles


def _plane_tiles(Ly: int, Lx: int, settings: EvalSettings, family) -> int:
    """Tiles of one plane of Ly x Lx pixels at network scale (padded as the pipeline pads it)."""
    pad_to = family.pad_to(settings)
    grid = tile_grid(Ly + sum(pad_amounts(Ly, min_size=pad_to)), Lx + sum(pad_amounts(Lx, min_size=pad_to)),
                     bsize=family.tile_side(settings), augment=settings.augment, tile_overlap=settings.tile_overlap)
    return grid.ntiles


def expected_tiles(spatial_shape: Sequence[int], rescale, settings: EvalSettings, family=None) -> int:
    """Number of tiles the network stage runs for an image.

    Parameters
    ----------
    spatial_shape : sequence of int
        (Y, X), or (Z, Y, X) for a stack or volume.
    rescale : float
        The network's resize factor (:func:`cellflow_rt.pipeline.rescale_for`).
    settings : EvalSettings
        do_3D, anisotropy, augment, tile_overlap and bsize are used.
    family : ModelFamily, optional
        The model's family (``model.family``): its tile side and padding; default: the default family.

    Returns
    -------
    int
        Tiles over all planes (and, with do_3D, over the YX, ZY and ZX views).
    """
    family = family or DEFAULT_FAMILY
    Ly, Lx = spatial_shape[-2:]
    Lyr, Lxr = rescaled_size(Ly, rescale), rescaled_size(Lx, rescale)
    if settings.do_3D and len(spatial_shape) == 3:
        Lz = spatial_shape[0]
        anisotropy = settings.anisotropy or 1.0
        Lzr = Lz if rescale == 1.0 and anisotropy == 1.0 else int(Lz * anisotropy * rescale)
        return (Lzr * _plane_tiles(Lyr, Lxr, settings, family) + Lyr * _plane_tiles(Lzr, Lxr, settings, family)
                + Lxr * _plane_tiles(Lzr, Lyr, settings, family))
    planes = spatial_shape[0] if len(spatial_shape) == 3 else 1
    return planes * _plane_tiles(Lyr, Lxr, settings, family)
