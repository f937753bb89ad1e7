"""The work done on a worker, one block (or one pair of blocks, or one output chunk) at a time.

Each function reads what it needs itself (its crop, the block labels it overlaps) and returns
something small, so that a worker's memory is bounded by one crop whatever the image size.
The model is never sent: a worker loads it once (:func:`worker_model`) and keeps it.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage

from ..settings import EvalSettings
from .blocks import Region, intersect, region_shape, relative
from .merge import NO_RANK, ObjectTable, Overlaps
from .normalization import BlockStats, GlobalNormalization, block_statistics, network_channels
from .sources import materialise
from .stitch import unique_per_plane

#: Chunk side of the temporary per-block label arrays (pair and paint tasks read parts of them).
_PART_CHUNK = {2: 512, 3: 128}


@dataclass(frozen=True)
class ModelSpec:
    """How a worker loads the model: a registry name or an ONNX path, the execution providers and precision."""

    name_or_path: str
    providers: Tuple[str, ...] = ()
    num_threads: Optional[int] = None
    precision: str = "fp32"

    @classmethod
    def of(cls, model, num_threads: Optional[int] = None) -> "ModelSpec":
        info = model.info
        name = info.name if info.source in ("bundled", "user") else str(info.onnx_path)
        return cls(name, num_threads=num_threads, **model.net.reload_args())


_MODELS: Dict[ModelSpec, object] = {}
_MODELS_LOCK = threading.Lock()


def share_model(spec: ModelSpec, model) -> None:
    """Make an already loaded model the one used by tasks of this process (threaded scheduler)."""
    with _MODELS_LOCK:
        _MODELS[spec] = model


def worker_model(spec: ModelSpec):
    """The model for ``spec``, loaded once per process (ONNX Runtime sessions are thread-safe)."""
    with _MODELS_LOCK:
        model = _MODELS.get(spec)
        if model is None:
            from ..loaded_model import LoadedModel

            model = LoadedModel.load(spec.name_or_path, providers=list(spec.providers) or None,
                                     num_threads=spec.num_threads, precision=spec.precision)
            _MODELS[spec] = model
        return model


def part_path(parts_dir: str, block: int) -> str:
    return f"{parts_dir}/block_{block}.zarr"


def statistics_task(crop, start: Sequence[int], channels, nchan: int, steps: Sequence[int], box: int) -> BlockStats:
    """Statistics pass over one block core (see :mod:`.normalization`)."""
    x = network_channels(materialise(crop), channels, nchan)
    return block_statistics(x, start, steps, box)


def object_table(labels: np.ndarray, origin: Sequence[int], interior: Tuple[Sequence[bool], Sequence[bool]],
                 overlap: Sequence[int]) -> ObjectTable:
    """Objects of a crop's labels, with bounding boxes in image coordinates and their margins."""
    ndim = labels.ndim
    boxes = ndimage.find_objects(labels)
    present = np.array([i + 1 for i, b in enumerate(boxes) if b is not None], np.int64)
    if present.size == 0:
        return ObjectTable.empty(ndim)
    lo = np.array([[s.start for s in boxes[i - 1]] for i in present], np.int64)
    hi = np.array([[s.stop for s in boxes[i - 1]] for i in present], np.int64)
    margin = np.full(present.size, np.inf)
    context = np.full(present.size, np.inf)
    centre = (lo + hi) / 2
    low, high = interior
    for axis in range(ndim):
        halo = max(int(overlap[axis]), 1)
        if low[axis]:
            margin = np.minimum(margin, lo[:, axis] / halo)
            context = np.minimum(context, centre[:, axis] / halo)
        if high[axis]:
            margin = np.minimum(margin, (labels.shape[axis] - hi[:, axis]) / halo)
            context = np.minimum(context, (labels.shape[axis] - centre[:, axis]) / halo)
    area = np.bincount(labels.ravel(), minlength=int(present[-1]) + 1)[present].astype(np.int64)
    offset = np.asarray(origin, np.int64)
    return ObjectTable(labels=present.astype(np.uint32), area=area, bbox_lo=lo + offset, bbox_hi=hi + offset,
                       margin=margin, context=context, max_label=int(present[-1]))


def segment_task(crop, block: int, crop_region: Region, interior, overlap: Sequence[int],
                 normalization: GlobalNormalization, settings: EvalSettings, block_settings: EvalSettings,
                 spec: ModelSpec, parts_dir: str, planewise: bool = False) -> Tuple[ObjectTable, dict]:
    """Segment one crop with the image's normalisation; store its labels; return its objects.

    ``planewise``: the crop's planes are segmented in 2D (stitching); their masks get ids unique in
    the crop and cannot be truncated along Z.
    """
    import zarr

    from ..pipeline import segment

    model = worker_model(spec)
    x = network_channels(materialise(crop), settings.channels, model.nchan)
    normalization.apply(x)
    result = segment(x, model, block_settings)
    del x
    labels = np.asarray(result.masks, dtype=np.uint32)
    timings = dict(result.timings)
    del result
    if planewise:
        labels = unique_per_plane(labels.reshape((-1,) + labels.shape[-2:])).reshape(labels.shape)
        interior = ((False,) + tuple(interior[0][1:]), (False,) + tuple(interior[1][1:]))
    chunks = tuple(min(n, _PART_CHUNK[labels.ndim]) for n in labels.shape)
    part = zarr.create_array(part_path(parts_dir, block), shape=labels.shape, chunks=chunks, dtype="uint32",
                             fill_value=0, overwrite=True)
    part[...] = labels
    origin = [s.start for s in crop_region]
    return object_table(labels, origin, interior, overlap), timings


def _read_part(parts_dir: str, block: int, region: Region) -> np.ndarray:
    import zarr

    return zarr.open_array(part_path(parts_dir, block), mode="r")[region]


def overlaps_task(parts_dir: str, block_a: int, crop_a: Region, block_b: int, crop_b: Region,
                  shared: Region) -> Overlaps:
    """Label pairs of two blocks overlapping inside ``shared`` (the intersection of their crops)."""
    a = _read_part(parts_dir, block_a, relative(shared, crop_a)).ravel()
    b = _read_part(parts_dir, block_b, relative(shared, crop_b)).ravel()
    both = (a > 0) & (b > 0)
    keys = (a[both].astype(np.uint64) << np.uint64(32)) | b[both].astype(np.uint64)
    keys, counts = np.unique(keys, return_counts=True)
    labels_a = (keys >> np.uint64(32)).astype(np.uint32)
    labels_b = (keys & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    extent_a = np.bincount(a, minlength=int(labels_a.max(initial=0)) + 1)[labels_a] if labels_a.size else labels_a
    extent_b = np.bincount(b, minlength=int(labels_b.max(initial=0)) + 1)[labels_b] if labels_b.size else labels_b
    return Overlaps(block_a, block_b, labels_a, labels_b, counts.astype(np.int64),
                    np.asarray(extent_a, np.int64), np.asarray(extent_b, np.int64))


def paint_task(parts_dir: str, core: Region, sources: Sequence[Tuple[int, Region, Region, np.ndarray, np.ndarray]],
               first_piece_rank: int) -> np.ndarray:
    """Assemble one output chunk from the kept objects of every block whose crop meets it.

    ``sources`` lists ``(block, crop, block_core, ids, ranks)``: the block's crop and core regions
    and its lookup tables local label -> global id and -> paint rank. Where kept objects of two
    blocks claim the same pixel, the lower rank wins, whatever the order of the sources; pieces
    (ranks from ``first_piece_rank`` on) paint only inside their own block's core.
    """
    out = np.zeros(region_shape(core), np.uint32)
    best = np.full(out.shape, NO_RANK, np.uint32)
    for block, crop, block_core, ids, ranks in sources:
        inside = intersect(core, crop)
        local = _read_part(parts_dir, block, relative(inside, crop))
        gid, rank = ids[local], ranks[local]
        target = relative(inside, core)
        wins = rank < best[target]
        owned = intersect(inside, block_core)
        if owned != inside:
            in_core = np.zeros(local.shape, bool)
            if owned is not None:
                in_core[relative(owned, inside)] = True
            wins &= in_core | (rank < first_piece_rank)
        out[target][wins] = gid[wins]
        best[target][wins] = rank[wins]
    return out


def store_chunk_task(core: Region, make_chunk, args, targets: Sequence[str]) -> int:
    """Compute one output chunk with ``make_chunk(*args)`` and store it in every target zarr array."""
    import zarr

    chunk = make_chunk(*args)
    if not chunk.any():
        return 0
    for target in targets:
        zarr.open_array(target, mode="r+")[core] = chunk
    return int(np.unique(chunk).size - 1)
