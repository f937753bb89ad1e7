"""Which block's version of each cell is kept, and the global label ids (runs on the driver).

Input: per block, a table of its objects (local label, area, bounding box, *margin*: the distance
from the object's bounding box to the nearest crop side cut inside the image, in units of the halo
on that axis, 0 meaning the object touches such a side and may be truncated; *context*: the same
distance from the bounding box's centre), and per pair of blocks with intersecting crops, the pixel
counts of every pair of their labels that overlap.

Rule (greedy non-maximum suppression over block versions):

1. Two objects of different blocks *conflict* when, inside the region both crops cover, their
   overlap exceeds ``conflict_fraction`` of the smaller one's part there: they are two views of the
   same cell (or of the same few cells cut differently). Measuring inside the shared region makes the
   test the same for a small cell and for the two halves of a cell larger than the halo.
2. *Complete* objects (margin > 0) whose centre has at least half a halo of context (its block
   sees it well; the block whose core holds the centre always does) are visited by decreasing
   margin; one is accepted unless it conflicts with an already accepted object. The version kept is
   thus the one seen with the most context around it, i.e. the one farthest from any artificial
   crop edge. Objects near a crop side whose centre lies deep in a neighbour's core are left to that
   neighbour, which sees them with context: a fragment only the less-informed block found is not
   kept.
3. *Pieces* (margin 0) that conflict with no accepted complete object belong to cells that no block
   saw whole (larger than the halo): pieces that conflict with each other are joined (union-find
   over the conflict edges) into one object. A piece that joins nothing is an edge fragment that the
   neighbouring block, which sees that place with context, did not confirm: it is dropped.
4. Accepted objects and piece groups get ids 1..N in block order; each also gets a paint rank
   (acceptance order) so that where two accepted objects touch, the better-seen one wins the pixel.
   Pieces rank after every complete object, and each piece paints only inside its own block's core:
   every pixel of a joined object comes from the block with the most context around it (a piece's
   pixels near its crop side are the least reliable ones).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import numpy as np
from scipy import sparse
from scipy.sparse.csgraph import connected_components

#: Paint rank of background and of rejected objects: never wins a pixel.
NO_RANK = np.iinfo(np.uint32).max
#: Context (in halos) the centre of a complete object needs for its version to be kept.
MIN_CONTEXT = 0.5


@dataclass
class ObjectTable:
    """The objects one block found in its crop.

    Attributes
    ----------
    labels : ndarray of uint32
        Local label of each object.
    area : ndarray of int64
        Pixels (voxels) per object.
    bbox_lo, bbox_hi : ndarray of int64, shape (n, ndim)
        Bounding box in image coordinates (start inclusive, stop exclusive).
    margin : ndarray of float64
        Distance to the nearest interior crop side in halos (inf when the crop has none).
    context : ndarray of float64
        The same distance from the bounding box's centre.
    max_label : int
        Largest local label (size of the lookup tables - 1).
    """

    labels: np.ndarray
    area: np.ndarray
    bbox_lo: np.ndarray
    bbox_hi: np.ndarray
    margin: np.ndarray
    context: np.ndarray
    max_label: int

    @classmethod
    def empty(cls, ndim: int) -> "ObjectTable":
        return cls(np.zeros(0, np.uint32), np.zeros(0, np.int64), np.zeros((0, ndim), np.int64),
                   np.zeros((0, ndim), np.int64), np.zeros(0), np.zeros(0), 0)

    def __len__(self) -> int:
        return int(self.labels.size)


@dataclass
class Overlaps:
    """Overlapping label pairs of two blocks inside the region both crops cover.

    ``counts[i]`` pixels carry ``labels_a[i]`` in block a and ``labels_b[i]`` in block b; ``extent_a[i]``
    and ``extent_b[i]`` are the two labels' pixel counts in that region.
    """

    block_a: int
    block_b: int
    labels_a: np.ndarray
    labels_b: np.ndarray
    counts: np.ndarray
    extent_a: np.ndarray
    extent_b: np.ndarray


@dataclass
class Resolution:
    """The merge decision.

    Attributes
    ----------
    ids : dict of block -> ndarray of uint32
        Lookup table local label -> global id (0 = dropped).
    ranks : dict of block -> ndarray of uint32
        Lookup table local label -> paint rank (lower wins; ``NO_RANK`` = dropped).
    n_objects : int
        Global ids used (1..n_objects).
    n_dropped : int
        Object versions dropped: duplicates of a kept version, and unconfirmed edge fragments.
    n_joined : int
        Objects assembled from pieces (cells larger than the halo).
    first_piece_rank : int
        Ranks from this one on (and below ``NO_RANK``) are pieces, painted inside their core only.
    """

    ids: Dict[int, np.ndarray]
    ranks: Dict[int, np.ndarray]
    n_objects: int
    n_dropped: int
    n_joined: int
    first_piece_rank: int


def _conflict_graph(tables: Dict[int, ObjectTable], offsets: Dict[int, int], overlaps: Sequence[Overlaps],
                    n: int, conflict_fraction: float) -> sparse.csr_array:
    rows, cols = [], []
    for ov in overlaps:
        if ov.counts.size == 0:
            continue
        a = _candidate_index(tables[ov.block_a], offsets[ov.block_a], ov.labels_a)
        b = _candidate_index(tables[ov.block_b], offsets[ov.block_b], ov.labels_b)
        keep = (a >= 0) & (b >= 0)
        smaller = np.minimum(ov.extent_a[keep], ov.extent_b[keep])
        a, b = a[keep], b[keep]
        conflict = ov.counts[keep] > conflict_fraction * smaller
        rows.append(a[conflict])
        cols.append(b[conflict])
    rows = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    cols = np.concatenate(cols) if cols else np.zeros(0, np.int64)
    graph = sparse.coo_array((np.ones(rows.size, np.int8), (rows, cols)), shape=(n, n)).tocsr()
    return (graph + graph.T).tocsr()


def _candidate_index(table: ObjectTable, offset: int, labels: np.ndarray) -> np.ndarray:
    """Position in the concatenated tables of local ``labels`` of one block (-1 when unknown)."""
    lut = np.full(table.max_label + 1, -1, np.int64)
    lut[table.labels] = offset + np.arange(len(table))
    labels = labels.astype(np.int64)
    out = np.full(labels.size, -1, np.int64)
    inside = labels <= table.max_label
    out[inside] = lut[labels[inside]]
    return out


def _greedy_accept(order: np.ndarray, graph: sparse.csr_array, n: int) -> np.ndarray:
    """Visit candidates in ``order``; accept each that has no accepted conflict neighbour."""
    accepted = np.zeros(n, bool)
    indptr, indices = graph.indptr, graph.indices
    for i in order:
        neighbours = indices[indptr[i]:indptr[i + 1]]
        if neighbours.size == 0 or not accepted[neighbours].any():
            accepted[i] = True
    return accepted


def resolve(tables: Dict[int, ObjectTable], overlaps: Sequence[Overlaps], conflict_fraction: float = 0.5) -> Resolution:
    """Choose one version of every object and number them; see the module docstring.

    Parameters
    ----------
    tables : dict of block -> ObjectTable
        Objects of every segmented block.
    overlaps : sequence of Overlaps
        Overlapping label pairs of blocks whose crops intersect.
    conflict_fraction : float
        Overlap (fraction of the smaller object's part in the shared region) above which two
        versions are the same cell.

    Returns
    -------
    Resolution
    """
    blocks = sorted(tables)
    offsets, start = {}, 0
    for b in blocks:
        offsets[b] = start
        start += len(tables[b])
    n = start
    block_of = np.concatenate([np.full(len(tables[b]), b, np.int64) for b in blocks]) if n else np.zeros(0, np.int64)
    label_of = np.concatenate([tables[b].labels.astype(np.int64) for b in blocks]) if n else np.zeros(0, np.int64)
    margin = np.concatenate([tables[b].margin for b in blocks]) if n else np.zeros(0)
    context = np.concatenate([tables[b].context for b in blocks]) if n else np.zeros(0)
    graph = _conflict_graph(tables, offsets, overlaps, n, conflict_fraction)

    complete = np.flatnonzero((margin > 0) & (context >= MIN_CONTEXT))
    order = complete[np.lexsort((label_of[complete], block_of[complete], -margin[complete]))]
    accepted = _greedy_accept(order, graph, n)

    pieces = np.flatnonzero(margin <= 0)
    if pieces.size:
        blocked = np.asarray(graph[pieces] @ accepted.astype(np.int32)).ravel() > 0
        pieces = pieces[~blocked]
    n_groups, group = 0, np.zeros(0, np.int64)
    if pieces.size:
        n_groups, group = connected_components(graph[pieces][:, pieces], directed=False)
        size = np.bincount(group, minlength=n_groups)
        joined = size[group] > 1
        pieces = pieces[joined]
        n_groups, group = int((size > 1).sum()), np.cumsum(size > 1)[group[joined]] - 1

    # ids in block order: complete objects and piece groups by their first candidate index
    first_piece = np.full(n_groups, n, np.int64)
    np.minimum.at(first_piece, group, pieces)
    first = np.concatenate([np.flatnonzero(accepted), first_piece])
    gid = np.zeros(n, np.uint32)
    ranks = np.full(n, NO_RANK, np.uint32)
    id_of_first = np.empty(first.size, np.uint32)
    id_of_first[np.argsort(first, kind="stable")] = np.arange(1, first.size + 1, dtype=np.uint32)
    n_complete = int(accepted.sum())
    gid[accepted] = id_of_first[:n_complete]
    if pieces.size:
        gid[pieces] = id_of_first[n_complete:][group]
    accepted_order = order[accepted[order]]
    ranks[accepted_order] = np.arange(accepted_order.size, dtype=np.uint32)
    if pieces.size:
        ranks[pieces] = accepted_order.size + np.arange(pieces.size, dtype=np.uint32)

    ids, rank_luts = {}, {}
    for b in blocks:
        t, o = tables[b], offsets[b]
        lut = np.zeros(t.max_label + 1, np.uint32)
        rank = np.full(t.max_label + 1, NO_RANK, np.uint32)
        lut[t.labels] = gid[o:o + len(t)]
        rank[t.labels] = ranks[o:o + len(t)]
        ids[b], rank_luts[b] = lut, rank
    return Resolution(ids=ids, ranks=rank_luts, n_objects=int(first.size),
                      n_dropped=int(n - n_complete - pieces.size), n_joined=n_groups,
                      first_piece_rank=int(accepted_order.size))


def sources_for(region_blocks: Sequence[int], tables: Dict[int, ObjectTable], resolution: Resolution,
                region: Tuple[slice, ...]) -> List[int]:
    """Blocks with at least one kept object whose bounding box meets ``region``."""
    out = []
    for b in region_blocks:
        t = tables.get(b)
        if t is None or len(t) == 0:
            continue
        kept = resolution.ids[b][t.labels] > 0
        meets = kept.copy()
        for axis, s in enumerate(region):
            meets &= (t.bbox_lo[:, axis] < s.stop) & (t.bbox_hi[:, axis] > s.start)
        if meets.any():
            out.append(b)
    return out
