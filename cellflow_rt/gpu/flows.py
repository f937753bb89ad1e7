"""Image planes -> network flows on the device: :func:`cellflow_rt.flows.run_network` on device arrays.

The normalised planes are on the device already; each is resized there (:mod:`.resize`), cut into
tiles (:mod:`.tiles`) one network batch at a time, run through the network with its inputs and
outputs bound to device buffers (:meth:`~cellflow_rt.network.Network.run_on_device`), and the
batch's output tiles are blended into the plane's flows as soon as it completes. Only the styles
(256 numbers per tile) come to the host. The kernels reproduce the CPU's arithmetic, so from the
same network outputs the flows are the CPU's bit for bit.

A network that cannot take device buffers (the CPU provider, OpenVINO) runs through the host: each
batch of tiles comes down, runs, and its outputs go back up. That is how the tests run this module
without a GPU (numba's CUDA simulator, the CPU provider standing in for the network).
"""
from __future__ import annotations

import threading
import weakref
from typing import List, Tuple

import numpy as np
from numba import cuda

from ..flows import rescaled_size
from ..settings import BSIZE
from ..tiles import pad_amounts, tile_grid
from . import tiles as device_tiles
from .resize import resize_hwc

#: One per network (its buffers are reused from image to image).
_RUNNERS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_RUNNERS_LOCK = threading.Lock()


def device_flows(net) -> "DeviceFlows":
    """The :class:`DeviceFlows` of a network (created on first use, kept as long as the network)."""
    with _RUNNERS_LOCK:
        runner = _RUNNERS.get(net)
        if runner is None:
            runner = _RUNNERS[net] = DeviceFlows(net)
        return runner


class DeviceFlows:
    """Runs planes through one network on the device, reusing its scratch buffers between images.

    One image at a time (a lock serialises callers); the returned flows are a fresh array each time.
    """

    def __init__(self, net):
        # weakly: _RUNNERS maps the network to this object, which must not keep the network alive
        self._net = weakref.ref(net)
        self._buffers = {}
        self._lock = threading.Lock()

    @property
    def net(self):
        return self._net()

    def run(self, planes, rescale=None, augment: bool = False, batch_size: int = 8, tile_overlap: float = 0.1,
            bsize: int = BSIZE) -> Tuple[object, np.ndarray]:
        """Network outputs of device planes at the rescaled size.

        Parameters
        ----------
        planes : device array
            float32 (N, Ly0, Lx0, C), normalised, C-contiguous.
        rescale, augment, batch_size, tile_overlap, bsize
            As in :func:`cellflow_rt.flows.run_network`.

        Returns
        -------
        flows : device array
            float32 (3, N, Lyr, Lxr): dY, dX, cellprob (the CPU's ``flows`` with the channel axis
            first), at the rescaled size, with the same augment crop rule.
        styles : ndarray
            float32 (N, 256), L2-normalised (host).
        """
        with self._lock:
            return self._run(planes, rescale, augment, batch_size, tile_overlap, bsize)

    def _buffer(self, name: str, shape, dtype=np.float32):
        key = (name, tuple(int(s) for s in shape), np.dtype(dtype))
        buffer = self._buffers.get(key)
        if buffer is None:
            for old in [k for k in self._buffers if k[0] == name]:
                del self._buffers[old]
            buffer = self._buffers[key] = cuda.device_array(key[1], dtype)
        return buffer

    def _run(self, planes, rescale, augment, batch_size, tile_overlap, bsize):
        nimg, Ly0, Lx0, nchan = planes.shape
        if rescale is not None and rescale == 1.0:
            rescale = None
        Lyr, Lxr = (rescaled_size(Ly0, rescale), rescaled_size(Lx0, rescale)) if rescale is not None else (Ly0, Lx0)
        if Lyr < 1 or Lxr < 1:
            raise ValueError(f"image of {Ly0} x {Lx0} pixels rescaled by {float(rescale):.4g} has no pixels left; "
                             "check the diameter")
        (ypad1, ypad2), (xpad1, xpad2) = pad_amounts(Lyr), pad_amounts(Lxr)
        Ly, Lx = Lyr + ypad1 + ypad2, Lxr + xpad1 + xpad2
        grid = tile_grid(Ly, Lx, bsize=bsize, augment=augment, tile_overlap=tile_overlap)
        yend = (grid.Ly if augment else Ly) - ypad2
        xend = (grid.Lx if augment else Lx) - xpad2
        out = cuda.device_array((3, nimg, len(range(ypad1, min(yend, Ly))), len(range(xpad1, min(xend, Lx)))),
                                np.float32)
        styles = np.empty((nimg, 256), np.float32)

        max_batch = getattr(self.net, "max_batch", None)  # TensorRT's profile
        batch = min(batch_size, max_batch) if max_batch else batch_size
        ntiles = grid.ntiles
        per_group = max(1, batch // ntiles)  # whole planes per network run (small planes), as on the CPU
        capacity = per_group * ntiles if per_group > 1 else batch
        tiles_in = self._buffer("tiles_in", (capacity, nchan, grid.ly, grid.lx))
        tiles_out = self._buffer("tiles_out", (capacity, 3, grid.ly, grid.lx))
        styles_out = self._buffer("styles_out", (capacity, 256))
        acc = self._buffer("acc", (per_group, 3, grid.Ly, grid.Lx))
        weight = self._buffer("weight", (per_group, grid.Ly, grid.Lx), np.float64)
        resized = self._buffer("resized", (per_group, Lyr, Lxr, nchan)) if rescale is not None else None
        tile_styles = np.empty((per_group, ntiles, 256), np.float32)

        for first in range(0, nimg, per_group):
            group = range(first, min(nimg, first + per_group))
            for chunk in _chunks(group, ntiles, batch, per_group):
                offset = 0
                for n, k0, count in chunk:
                    slot = n - first
                    if k0 == 0:
                        if resized is not None:
                            resize_hwc(planes[n], resized[slot])
                        device_tiles.zero(acc[slot])
                        device_tiles.zero(weight[slot])
                    plane = resized[slot] if resized is not None else planes[n]
                    device_tiles.extract_tiles(plane, grid, ypad1, xpad1, k0, tiles_in[offset:offset + count])
                    offset += count
                chunk_styles = self._run_tiles(tiles_in[:offset], tiles_out[:offset], styles_out[:offset])
                offset = 0
                for n, k0, count in chunk:
                    slot = n - first
                    device_tiles.accumulate_tiles(tiles_out[offset:offset + count], grid, k0, acc[slot], weight[slot])
                    tile_styles[slot, k0:k0 + count] = chunk_styles[offset:offset + count]
                    offset += count
                    if k0 + count == ntiles:
                        device_tiles.normalise_and_crop(acc[slot], weight[slot], ypad1, xpad1, out[:, n])
                        style = tile_styles[slot].sum(axis=0)
                        style /= (style ** 2).sum() ** 0.5
                        styles[n] = style
        return out, styles

    def _run_tiles(self, tiles, flows, styles) -> np.ndarray:
        """Run one batch of device tiles into ``flows`` / ``styles``; return the styles on the host."""
        if getattr(self.net, "on_gpu", False):
            cuda.synchronize()  # the tiles' kernels ran on numba's stream; ORT does not wait for it
            self.net.run_on_device(tiles, flows, styles)
            return styles.copy_to_host()
        host_flows, host_styles = self.net.run(tiles.copy_to_host(), batch_size=tiles.shape[0])
        flows.copy_to_device(host_flows)
        return host_styles


def _chunks(group: range, ntiles: int, batch: int, per_group: int) -> List[List[Tuple[int, int, int]]]:
    """Network runs of a group of planes: lists of (plane, first tile, tile count)."""
    if per_group > 1:
        return [[(n, 0, ntiles) for n in group]]
    return [[(n, k0, min(batch, ntiles - k0))] for n in group for k0 in range(0, ntiles, batch)]
