"""stitch_threshold on a volume too large for one pass: 2D masks per plane, linked across Z globally.

Cellpose's stitching (``utils.stitch3D``) segments every Z plane in 2D, then walks down the stack:
a mask of plane z+1 takes the id of the mask of plane z with which its IoU is the largest, if that
IoU is at least ``stitch_threshold`` and is also the largest IoU of that plane-z mask; otherwise it
starts a new object. Each decision involves only two overlapping masks of consecutive planes, so
the 3D objects are the connected components of the graph of such links, which can be built from
counts gathered chunk by chunk.

So for stitching, blocks need no halo along Z (a plane's 2D masks do not depend on other planes):
1. every block segments its planes in 2D (``min_size`` off, as the reference does per plane); the
   2D masks are merged across XY faces by the usual block merge and painted to a temporary array;
2. :func:`links_task` counts, per output chunk, the overlaps between consecutive planes (including
   the plane just below the chunk) and each mask's area;
3. :func:`resolve_links` (driver) applies the reference's rule to the summed counts, joins linked
   masks with union-find, drops objects below ``min_size`` voxels and numbers the rest 1..N;
4. :func:`relabel_task` writes each chunk through the resulting lookup table.

Z faces between blocks are thus stitched exactly as in a single pass. Not reproduced: the
reference's quirk for empty planes before the first stitched pair (such a plane keeps its own ids,
which can collide with earlier planes'), and its tie-break between equal IoUs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Tuple

import numpy as np
from scipy import sparse
from scipy.sparse.csgraph import connected_components

from .blocks import Region


@dataclass
class PlaneLinks:
    """Counts from one chunk: overlaps of masks of consecutive planes, and the chunk's mask areas."""

    below: np.ndarray
    above: np.ndarray
    counts: np.ndarray
    labels: np.ndarray
    areas: np.ndarray


def unique_per_plane(labels: np.ndarray) -> np.ndarray:
    """Per-plane labels (each plane numbered from 1) -> ids unique within the stack, in place."""
    offset = 0
    for plane in labels:
        top = int(plane.max())
        if top:
            plane[plane > 0] += offset
            offset += top
    return labels


def _pairs(below: np.ndarray, above: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    both = (below > 0) & (above > 0)
    keys = (below[both].astype(np.uint64) << np.uint64(32)) | above[both].astype(np.uint64)
    keys, counts = np.unique(keys, return_counts=True)
    return (keys >> np.uint64(32)).astype(np.uint32), (keys & np.uint64(0xFFFFFFFF)).astype(np.uint32), counts


def links_task(planes_path: str, core: Region) -> PlaneLinks:
    """Overlaps between consecutive planes of one chunk (and the plane below it), and mask areas."""
    import zarr

    planes = zarr.open_array(planes_path, mode="r")
    z0 = core[0].start
    stack = planes[(slice(max(0, z0 - 1), core[0].stop),) + tuple(core[1:])]
    own = stack if z0 == 0 else stack[1:]
    parts = [_pairs(stack[k], stack[k + 1]) for k in range(stack.shape[0] - 1)]
    labels, areas = np.unique(own[own > 0], return_counts=True)
    cat = [np.concatenate([p[i] for p in parts]) if parts else np.zeros(0, np.uint32) for i in range(3)]
    return PlaneLinks(cat[0], cat[1], cat[2].astype(np.int64), labels.astype(np.uint32), areas.astype(np.int64))


def resolve_links(links: Sequence[PlaneLinks], stitch_threshold: float, min_size: int) -> Tuple[np.ndarray, np.ndarray]:
    """Stitched object id of every plane mask.

    Returns
    -------
    labels : ndarray of uint32
        Every plane-mask id, sorted.
    ids : ndarray of uint32
        Its 3D object id (1..N, numbered by first plane mask; 0 = removed by ``min_size``).
    """
    labels = np.concatenate([ln.labels for ln in links]) if links else np.zeros(0, np.uint32)
    areas = np.concatenate([ln.areas for ln in links]) if links else np.zeros(0, np.int64)
    labels, inverse = np.unique(labels, return_inverse=True)
    areas = np.bincount(inverse, weights=areas, minlength=labels.size).astype(np.int64)
    n = labels.size
    below = np.concatenate([ln.below for ln in links]) if links else np.zeros(0, np.uint32)
    above = np.concatenate([ln.above for ln in links]) if links else np.zeros(0, np.uint32)
    counts = np.concatenate([ln.counts for ln in links]) if links else np.zeros(0, np.int64)
    keys, inverse = np.unique((below.astype(np.uint64) << np.uint64(32)) | above.astype(np.uint64), return_inverse=True)
    counts = np.bincount(inverse, weights=counts, minlength=keys.size)
    b = np.searchsorted(labels, (keys >> np.uint64(32)).astype(np.uint32))
    a = np.searchsorted(labels, (keys & np.uint64(0xFFFFFFFF)).astype(np.uint32))
    iou = counts / (areas[a] + areas[b] - counts) if keys.size else np.zeros(0)
    keep = iou >= stitch_threshold
    a, b, iou = a[keep], b[keep], iou[keep]
    # the reference keeps, per plane-z mask (column), only its best IoU; then each plane-z+1 mask
    # (row) links to its best surviving column
    column_best = np.zeros(n)
    np.maximum.at(column_best, b, iou)
    survive = iou >= column_best[b]
    a, b, iou = a[survive], b[survive], iou[survive]
    order = np.lexsort((b, -iou, a))
    first = order[np.r_[True, a[order][1:] != a[order][:-1]]] if order.size else order
    graph = sparse.coo_array((np.ones(first.size, np.int8), (a[first], b[first])), shape=(n, n))
    n_objects, component = connected_components(graph, directed=False)
    size = np.bincount(component, weights=areas, minlength=n_objects)
    kept = size >= min_size if min_size > 0 else np.ones(n_objects, bool)
    # number objects by their first plane mask (components come in order of their lowest node)
    new_id = np.zeros(n_objects, np.uint32)
    new_id[kept] = np.arange(1, int(kept.sum()) + 1, dtype=np.uint32)
    return labels, new_id[component]


def chunk_table(labels: np.ndarray, ids: np.ndarray, chunk_labels: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """The part of the lookup table one chunk needs: its plane-mask ids and their object ids."""
    return chunk_labels, ids[np.searchsorted(labels, chunk_labels)]


def relabel_task(planes_path: str, core: Region, keys: np.ndarray, values: np.ndarray) -> np.ndarray:
    """One chunk of plane masks -> stitched object ids."""
    import zarr

    chunk = zarr.open_array(planes_path, mode="r")[core]
    out = np.zeros(chunk.shape, np.uint32)
    fg = chunk > 0
    if keys.size:
        out[fg] = values[np.searchsorted(keys, chunk[fg])]
    return out
