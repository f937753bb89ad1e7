"""Block geometry: the grid of cores (the output chunks) and the crops (core plus halo) they are run on.

Every coordinate here is a spatial index of the image (Y, X or Z, Y, X); channels never appear.
Blocks are numbered in raster (C) order of their grid position.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np

Region = Tuple[slice, ...]


def _per_axis(value, ndim: int, name: str) -> Tuple[int, ...]:
    values = tuple(int(v) for v in value) if np.ndim(value) else (int(value),) * ndim
    if len(values) != ndim:
        raise ValueError(f"{name} must be one integer or {ndim} integers (one per spatial axis), got {value}")
    return values


def intersect(a: Region, b: Region) -> Optional[Region]:
    """The intersection of two regions, or None when it is empty."""
    out = tuple(slice(max(p.start, q.start), min(p.stop, q.stop)) for p, q in zip(a, b))
    return out if all(s.start < s.stop for s in out) else None


def relative(region: Region, origin: Region) -> Region:
    """``region`` in the coordinates of an array that starts at ``origin``'s start."""
    return tuple(slice(r.start - o.start, r.stop - o.start) for r, o in zip(region, origin))


def region_shape(region: Region) -> Tuple[int, ...]:
    return tuple(s.stop - s.start for s in region)


@dataclass(frozen=True)
class BlockGrid:
    """Cores of ``blocksize`` tiling the image and crops extending each core by ``overlap``.

    Parameters
    ----------
    shape : tuple of int
        Spatial shape of the image.
    blocksize : int or tuple of int
        Core size per axis (the output's chunks).
    overlap : int or tuple of int
        Halo added on every side of a core (clipped at the image border).
    """

    shape: Tuple[int, ...]
    blocksize: Tuple[int, ...]
    overlap: Tuple[int, ...]

    def __post_init__(self):
        ndim = len(self.shape)
        object.__setattr__(self, "shape", tuple(int(n) for n in self.shape))
        object.__setattr__(self, "blocksize", _per_axis(self.blocksize, ndim, "blocksize"))
        object.__setattr__(self, "overlap", _per_axis(self.overlap, ndim, "overlap"))
        if min(self.blocksize) < 1:
            raise ValueError(f"blocksize must be >= 1 on every axis, got {self.blocksize}")
        if min(self.overlap) < 0:
            raise ValueError(f"overlap must be >= 0 on every axis, got {self.overlap}")

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def grid_shape(self) -> Tuple[int, ...]:
        return tuple(-(-n // b) for n, b in zip(self.shape, self.blocksize))

    @property
    def n_blocks(self) -> int:
        return int(np.prod(self.grid_shape))

    def position(self, block: int) -> Tuple[int, ...]:
        """Grid position of a block number."""
        return tuple(int(i) for i in np.unravel_index(block, self.grid_shape))

    def core(self, block: int) -> Region:
        return tuple(slice(i * b, min((i + 1) * b, n))
                     for i, b, n in zip(self.position(block), self.blocksize, self.shape))

    def crop(self, block: int) -> Region:
        return tuple(slice(max(0, c.start - h), min(n, c.stop + h))
                     for c, h, n in zip(self.core(block), self.overlap, self.shape))

    def interior_sides(self, block: int) -> Tuple[Tuple[bool, ...], Tuple[bool, ...]]:
        """For each axis, whether the crop's low and high sides are cut inside the image.

        Objects touching such a side may be truncated; sides on the image border are real edges.
        """
        crop = self.crop(block)
        return (tuple(s.start > 0 for s in crop), tuple(s.stop < n for s, n in zip(crop, self.shape)))

    def _reach(self) -> Tuple[int, ...]:
        """How many grid steps apart two blocks can be and still have intersecting crops."""
        return tuple(-(-2 * h // b) if h else 0 for h, b in zip(self.overlap, self.blocksize))

    def neighbours(self, block: int, forward_only: bool = False) -> Iterator[int]:
        """Blocks (other than ``block``) whose crops intersect its crop."""
        pos = self.position(block)
        crop = self.crop(block)
        ranges = [range(max(0, p - r), min(g, p + r + 1)) for p, r, g in zip(pos, self._reach(), self.grid_shape)]
        for other in itertools.product(*ranges):
            k = int(np.ravel_multi_index(other, self.grid_shape))
            if k == block or (forward_only and k < block):
                continue
            if intersect(crop, self.crop(k)) is not None:
                yield k

    def overlapping_pairs(self, blocks: Sequence[int]) -> List[Tuple[int, int]]:
        """Pairs ``(i, k)``, ``i < k``, of the given blocks whose crops intersect."""
        wanted = set(int(b) for b in blocks)
        return [(i, k) for i in sorted(wanted) for k in self.neighbours(i, forward_only=True) if k in wanted]

    def crops_touching(self, region: Region) -> List[int]:
        """Blocks whose crop intersects ``region``."""
        ranges = []
        for s, b, h, g in zip(region, self.blocksize, self.overlap, self.grid_shape):
            ranges.append(range(max(0, (s.start - h) // b - 1), min(g, (s.stop + h) // b + 1)))
        out = []
        for pos in itertools.product(*ranges):
            k = int(np.ravel_multi_index(pos, self.grid_shape))
            if intersect(self.crop(k), region) is not None:
                out.append(k)
        return out
