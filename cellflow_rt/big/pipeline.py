"""segment_large: statistics -> diameter -> blocks -> segment -> overlaps -> merge -> write.

The orchestrator of an image too large for one pass; every stage's rationale is in the package
docstring (:mod:`cellflow_rt.big`).
"""
from __future__ import annotations

import math
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..settings import EvalSettings
from .blocks import BlockGrid, Region, intersect, region_shape
from .merge import ObjectTable, Resolution, resolve, sources_for
from .normalization import GlobalNormalization, global_normalization, network_channels, subsample_steps
from .runner import Progress, Runner
from .sources import ImageSource, create_labels_array, finish_ome_labels, ome_labels_level0, open_source
from . import tasks

#: Default block (core) side: 1024 px in 2D; 3D blocks default to 128 voxels per side.
DEFAULT_BLOCKSIZE = {2: 1024, 3: 128}
#: Largest central crop used to estimate the diameter with the size model.
_ESTIMATE_CROP = 1024


@dataclass
class LargeSegmentation:
    """What :func:`segment_large` returns.

    Attributes
    ----------
    labels : dask.array.Array
        uint32 labels (0 = background), chunks = blocksize; backed by the output zarr when one was
        written, else by an in-memory array.
    n_objects : int
        Cells found (ids 1..n_objects; an id whose every pixel was claimed by a better-seen
        neighbour is possible but rare).
    diameter : float
        Diameter every block was run at.
    blocksize, overlap : tuple of int
        Core size and halo per spatial axis.
    n_blocks, n_skipped : int
        Blocks in the grid, and blocks skipped as empty by the foreground test.
    n_dropped, n_joined : int
        Object versions dropped by the merge (duplicates, unconfirmed fragments); objects joined from
        pieces (cells larger than the halo).
    normalization : GlobalNormalization
        The bounds every block was normalised with.
    output : str or None
        Where the labels were written (zarr array path), if anywhere.
    timings : dict
        Seconds per stage, and the blocks' summed network and dynamics time.
    """

    labels: object
    n_objects: int
    diameter: float
    blocksize: Tuple[int, ...]
    overlap: Tuple[int, ...]
    n_blocks: int
    n_skipped: int
    n_dropped: int
    n_joined: int
    normalization: GlobalNormalization
    output: Optional[str] = None
    timings: Dict[str, float] = field(default_factory=dict)


def _block_settings(settings: EvalSettings, spatial_ndim: int) -> EvalSettings:
    """Settings for a block that arrives normalised, with its network channels last."""
    return settings.with_(channels=None, channel_axis=spatial_ndim, z_axis=0 if spatial_ndim == 3 else None,
                          normalize=False, invert=False)


def default_overlap(diameter: float, settings: EvalSettings, spatial_ndim: int) -> Tuple[int, ...]:
    """Two diameters per axis; along Z of a do_3D volume, two diameters in Z samples (``/ anisotropy``)."""
    halo = int(math.ceil(2 * diameter))
    if spatial_ndim == 2:
        return (halo, halo)
    z = halo
    if settings.do_3D and settings.anisotropy:
        z = int(math.ceil(2 * diameter / settings.anisotropy))
    return (z, halo, halo)


def _diameter_before_estimate(model, settings: EvalSettings) -> float:
    from ..pipeline import rescale_for

    return float(model.diam_mean / rescale_for(model, settings))


def _estimate_diameter(src: ImageSource, model, settings: EvalSettings, norm: GlobalNormalization) -> float:
    """Size-model estimate on a central crop, normalised with the image's bounds."""
    from ..diameter import estimate_diameter

    if src.ndim != 2:
        raise ValueError("diameter estimation works on 2D images; give settings.diameter for volumes")
    region = tuple(slice(max(0, (n - _ESTIMATE_CROP) // 2), max(0, (n - _ESTIMATE_CROP) // 2) + min(n, _ESTIMATE_CROP))
                   for n in src.shape)
    x = norm.apply(network_channels(src.read(region), settings.channels, model.nchan))
    return estimate_diameter(x, model, _block_settings(settings, 2))[0]


def _parts_dir(temp_dir, output) -> str:
    parent = temp_dir if temp_dir is not None else (Path(output).parent if output is not None else None)
    return tempfile.mkdtemp(prefix="cellflow-blocks-", dir=None if parent is None else str(parent))


def segment_large(source, model, settings: EvalSettings = EvalSettings(), blocksize: Union[int, Sequence[int], None] = None,
                  overlap: Union[int, Sequence[int], None] = None, output=None, scheduler="threads",
                  num_workers: Optional[int] = None, progress: Optional[Callable[[Progress], None]] = None,
                  skip_threshold: Optional[float] = 0.1, estimate_diameter: bool = False,
                  ome_labels: Optional[str] = None, temp_dir=None, conflict_fraction: float = 0.5,
                  network_threads: Optional[int] = None) -> LargeSegmentation:
    """Segment an image larger than memory block by block, with the masks of a single pass.

    Parameters
    ----------
    source : ndarray, dask array, zarr array, or path
        2D ``(Y, X[, C])`` or 3D ``(Z, Y, X[, C])`` image; a path is a big TIFF (read lazily through
        tifffile's zarr interface) or a zarr array / OME-Zarr image (level 0 is read). Axes follow
        ``settings.channel_axis`` / ``z_axis``, OME axes metadata or TIFF axes, else a 3-D array
        is a 2D image with channels along its short (< 10) axis, or a volume with do_3D/stitching.
    model : LoadedModel or str
        The model, or its registry name / ONNX path.
    settings : EvalSettings
        Cellpose's options; do_3D or stitch_threshold > 0 for volumes.
    blocksize : int or sequence of int, optional
        Core (output chunk) size per spatial axis; default 1024 (2D) or 128 (3D).
    overlap : int or sequence of int, optional
        Halo around each core; default two diameters (:func:`default_overlap`). Cells larger than
        the halo are assembled from pieces.
    output : path, optional
        zarr array to write the labels to (chunks = blocksize); None keeps them in memory.
    scheduler : str or distributed.Client
        ``"threads"`` (dask's threaded scheduler), ``"sync"``, a ``distributed.Client`` or a
        scheduler address. Workers load the model themselves; with a multi-machine cluster,
        ``output``/``temp_dir`` must be on storage every worker sees.
    num_workers : int, optional
        Threads of the threaded scheduler (each block's network already uses several cores).
    progress : callable, optional
        Called with a :class:`~cellflow_rt.big.runner.Progress` after each block of each stage.
    skip_threshold : float or None
        A block whose box-averaged, normalised intensity never reaches this is skipped as empty;
        None segments every block.
    estimate_diameter : bool
        With ``settings.diameter`` None/0, estimate it once with the size model on a central crop.
    ome_labels : str, optional
        For an OME-Zarr input: also write multiscale labels ``labels/<ome_labels>`` into it.
    temp_dir : path, optional
        Where the per-block labels are kept until the merge (default: next to ``output``, else
        the system's temporary folder); removed at the end.
    conflict_fraction : float
        Overlap above which two blocks' objects are the same cell (see :mod:`.merge`).
    network_threads : int, optional
        ONNX Runtime threads of the models loaded by distributed workers.

    Returns
    -------
    LargeSegmentation
    """
    from ..loaded_model import LoadedModel

    timings: Dict[str, float] = {}
    if not settings.compute_masks:
        raise ValueError("segment_large computes masks: compute_masks must be True")
    if not 0 < conflict_fraction < 1:
        raise ValueError(f"conflict_fraction must be in (0, 1), got {conflict_fraction}")
    if not isinstance(model, LoadedModel):
        model = LoadedModel.load(model)
    spec = tasks.ModelSpec.of(model, network_threads)
    tasks.share_model(spec, model)
    volume = settings.do_3D or settings.stitch_threshold > 0
    runner = Runner(scheduler, num_workers, progress)
    try:
        src = open_source(source, volume, settings.channel_axis, settings.z_axis, distributed=runner.distributed)
        if ome_labels and src.ome is None:
            raise ValueError("ome_labels needs an OME-Zarr image as source")
        ndim = src.ndim
        cores = BlockGrid(src.shape, blocksize or DEFAULT_BLOCKSIZE[ndim], 0)

        tic = time.perf_counter()
        diameter = _diameter_before_estimate(model, settings)
        stats = runner.map("statistics", [
            _delayed(tasks.statistics_task)(src.crop(cores.core(b)), [s.start for s in cores.core(b)],
                                            settings.channels, model.nchan, subsample_steps(src.shape),
                                            max(1, int(diameter // 4)))
            for b in range(cores.n_blocks)])
        norm = global_normalization(stats, settings.normalize, settings.invert, settings.percentile)
        timings["statistics"] = time.perf_counter() - tic

        if estimate_diameter and not settings.diameter:
            tic = time.perf_counter()
            diameter = _estimate_diameter(src, model, settings, norm)
            settings = settings.with_(diameter=diameter)
            timings["diameter"] = time.perf_counter() - tic
        grid = BlockGrid(src.shape, cores.blocksize,
                         default_overlap(diameter, settings, ndim) if overlap is None else overlap)
        scores = [norm.foreground_score(s) for s in stats]
        del stats
        busy = [b for b in range(grid.n_blocks) if skip_threshold is None or scores[b] >= skip_threshold]
        n_skipped = grid.n_blocks - len(busy)

        parts_dir = _parts_dir(temp_dir, output)
        try:
            tables, resolution, timings_blocks = _segment_and_merge(
                runner, src, grid, busy, n_skipped, norm, settings, spec, parts_dir, conflict_fraction, timings)
            timings.update(timings_blocks)
            labels, written = _write(runner, src, grid, tables, resolution, parts_dir, output, ome_labels, timings)
        finally:
            shutil.rmtree(parts_dir, ignore_errors=True)
    finally:
        runner.close()
    return LargeSegmentation(labels=labels, n_objects=resolution.n_objects, diameter=float(diameter),
                             blocksize=grid.blocksize, overlap=grid.overlap, n_blocks=grid.n_blocks,
                             n_skipped=n_skipped, n_dropped=resolution.n_dropped, n_joined=resolution.n_joined,
                             normalization=norm, output=written, timings=timings)


def _delayed(fn):
    import dask

    return dask.delayed(fn, pure=False)


def _segment_and_merge(runner: Runner, src: ImageSource, grid: BlockGrid, busy: List[int], n_skipped: int,
                       norm: GlobalNormalization, settings: EvalSettings, spec, parts_dir: str,
                       conflict_fraction: float, timings: Dict[str, float]):
    tic = time.perf_counter()
    block_settings = _block_settings(settings, src.ndim)
    results = runner.map("segment", [
        _delayed(tasks.segment_task)(src.crop(grid.crop(b)), b, grid.crop(b), grid.interior_sides(b), grid.overlap,
                                     norm, settings, block_settings, spec, parts_dir)
        for b in busy], skipped=n_skipped)
    tables: Dict[int, ObjectTable] = {}
    block_time = {"network": 0.0, "dynamics": 0.0}
    for b, (table, block_timings) in zip(busy, results):
        tables[b] = table
        for k in block_time:
            block_time[k] += block_timings.get(k, 0.0)
    timings["segment"] = time.perf_counter() - tic

    tic = time.perf_counter()
    with_objects = [b for b in busy if len(tables[b])]
    pairs = grid.overlapping_pairs(with_objects)
    overlaps = runner.map("overlaps", [
        _delayed(tasks.overlaps_task)(parts_dir, a, grid.crop(a), b, grid.crop(b), intersect(grid.crop(a), grid.crop(b)))
        for a, b in pairs])
    timings["overlaps"] = time.perf_counter() - tic

    tic = time.perf_counter()
    resolution = resolve(tables, overlaps, conflict_fraction)
    timings["merge"] = time.perf_counter() - tic
    return tables, resolution, {"blocks_network": block_time["network"], "blocks_dynamics": block_time["dynamics"]}


def _write(runner: Runner, src: ImageSource, grid: BlockGrid, tables: Dict[int, ObjectTable], resolution: Resolution,
           parts_dir: str, output, ome_labels: Optional[str], timings: Dict[str, float]):
    """Paint every output chunk; return the labels as a dask array and the path written (if any)."""
    import dask.array as da
    import zarr

    tic = time.perf_counter()
    targets: List[str] = []
    if output is not None:
        create_labels_array(output, src.shape, grid.blocksize)
        targets.append(str(output))
    if ome_labels:
        targets.append(ome_labels_level0(src.ome, ome_labels, src.shape, grid.blocksize))
    chunk_jobs = []
    for j in range(grid.n_blocks):
        core = grid.core(j)
        blocks = sources_for(grid.crops_touching(core), tables, resolution, core)
        if blocks or not targets:
            chunk_jobs.append((core, [(b, grid.crop(b), resolution.ids[b], resolution.ranks[b]) for b in blocks]))
    if not targets:
        chunks = runner.map("write", [_delayed(tasks.paint_task)(parts_dir, core, srcs) for core, srcs in chunk_jobs])
        labels = np.zeros(src.shape, np.uint32)
        for (core, _), chunk in zip(chunk_jobs, chunks):
            labels[core] = chunk
        timings["write"] = time.perf_counter() - tic
        return da.from_array(labels, chunks=grid.blocksize), None
    runner.map("write", [_delayed(tasks.write_chunk_task)(parts_dir, core, srcs, targets) for core, srcs in chunk_jobs])
    if ome_labels:
        finish_ome_labels(src.ome, ome_labels, grid.blocksize, runner.compute)
    timings["write"] = time.perf_counter() - tic
    return da.from_zarr(zarr.open_array(targets[0], mode="r")), targets[0]
