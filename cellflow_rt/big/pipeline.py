"""segment_large: statistics -> diameter -> blocks -> segment -> overlaps -> merge -> write.

The orchestrator of an image too large for one pass; every stage's rationale is in the package
docstring (:mod:`cellflow_rt.big`).
"""
from __future__ import annotations

import contextlib
import math
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..settings import EvalSettings
from .blocks import BlockGrid, intersect
from .merge import ObjectTable, Resolution, resolve, sources_for
from .normalization import (GlobalNormalization, check_blockwise_normalization, global_normalization, network_channels,
                            subsample_steps)
from ..io.stale import remove_stale_block_folders, writer_tag
from .output import atomic_zarr
from .runner import Progress, Runner
from .sources import ImageSource, create_labels_array, finish_ome_labels, ome_labels_level0, open_source
from . import stitch, tasks

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


def _planewise(settings: EvalSettings) -> bool:
    """Stitching: blocks segment 2D planes, linked across Z after the merge (see :mod:`.stitch`)."""
    return settings.stitch_threshold > 0 and not settings.do_3D


def _block_settings(settings: EvalSettings, spatial_ndim: int) -> EvalSettings:
    """Settings for a block that arrives normalised, with its network channels last."""
    block = settings.with_(channels=None, channel_axis=spatial_ndim, z_axis=0 if spatial_ndim == 3 else None,
                          normalize=False, invert=False)
    if _planewise(settings):  # planes only; min_size applies to the stitched objects, as in the reference
        block = block.with_(stitch_threshold=0.0, min_size=-1)
    return block


def default_overlap(diameter: float, settings: EvalSettings, spatial_ndim: int) -> Tuple[int, ...]:
    """Two diameters per axis; along Z: two diameters in Z samples (``/ anisotropy``) for do_3D,
    none for stitching (planes are segmented independently and linked after the merge)."""
    halo = int(math.ceil(2 * diameter))
    if spatial_ndim == 2:
        return (halo, halo)
    if _planewise(settings):
        return (0, halo, halo)
    z = halo
    if settings.anisotropy:
        z = int(math.ceil(2 * diameter / settings.anisotropy))
    return (z, halo, halo)


def _diameter_before_estimate(model, settings: EvalSettings) -> float:
    from ..family import family_of

    family = family_of(model)
    return float(family.diameter_at(model, family.rescale_for(model, settings)))


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
    parent = Path(tempfile.gettempdir()) if parent is None else Path(parent)
    # a killed run's folder is removed by the next run once its writer is gone (cellflow_rt.io.stale)
    remove_stale_block_folders(parent)
    return tempfile.mkdtemp(prefix=f"cellflow-blocks-{writer_tag()}-", dir=str(parent))


def segment_large(source, model, settings: EvalSettings = EvalSettings(),
                  blocksize: Union[int, Sequence[int], None] = None,
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

    Notes
    -----
    Memory of a worker process does not depend on the image size. Measured in 2D (nuclei_demo,
    CPU): about ``0.25 GB + 0.09 GB x batch_size + 100 bytes x crop pixels`` per block in flight,
    the crop being ``(blocksize + 2 x overlap)`` per side (ONNX Runtime's arena grows by ~90 MB per
    224 x 224 tile of a batch). One 1024 block with a 34 px halo: 1.1 GB at batch_size 8, 0.53 GB
    at batch_size 2. The threaded scheduler runs ``num_workers`` blocks at once in one process;
    ``num_workers=1`` loses little on CPU, where each block's network already uses every core. The
    driver keeps ~100 bytes per cell (object tables) and no pixels, except with ``output=None``.
    End to end (``bench/bench_large.py``: zarr in and out, blocks 1024, batch_size 8, one worker
    thread) the peak RSS was 1.30 GB for both an 8192^2 and a 16384^2 canvas.
    """
    try:
        import dask.array as da
        import zarr
    except ImportError as exc:
        raise ImportError(f"segment_large needs dask and zarr 3 ({exc}): pip install 'cellflow-rt[dask]'") from exc

    from ..loaded_model import LoadedModel

    timings: Dict[str, float] = {}
    if not settings.compute_masks:
        raise ValueError("segment_large computes masks: compute_masks must be True")
    if not 0 < conflict_fraction < 1:
        raise ValueError(f"conflict_fraction must be in (0, 1), got {conflict_fraction}")
    check_blockwise_normalization(settings)
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
        norm = global_normalization(stats, settings.normalize, settings.invert, settings.percentile,
                                    lowhigh=settings.lowhigh)
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
            # the output zarr is built under a temporary name and renamed when complete
            with (atomic_zarr(output) if output is not None else contextlib.nullcontext(None)) as building:
                tables, resolution = _segment_and_merge(runner, src, grid, busy, n_skipped, norm, settings, spec,
                                                        parts_dir, conflict_fraction, timings)
                targets = _targets(src, grid, building, ome_labels)
                if _planewise(settings):
                    labels, n_objects = _write_stitched(runner, src, grid, tables, resolution, parts_dir, settings,
                                                        targets, timings)
                else:
                    tic = time.perf_counter()
                    labels = _store(runner, "write", _paint_jobs(grid, tables, resolution, parts_dir), src.shape,
                                    grid.blocksize, targets)
                    timings["write"] = time.perf_counter() - tic
                    n_objects = resolution.n_objects
                if ome_labels:
                    finish_ome_labels(src.ome, ome_labels, grid.blocksize, runner.compute)
            if output is not None:
                targets[0] = str(output)
        finally:
            shutil.rmtree(parts_dir, ignore_errors=True)
    finally:
        runner.close()
    if targets:
        labels = da.from_zarr(zarr.open_array(targets[0], mode="r"))
    return LargeSegmentation(labels=labels, n_objects=n_objects, diameter=float(diameter),
                             blocksize=grid.blocksize, overlap=grid.overlap, n_blocks=grid.n_blocks,
                             n_skipped=n_skipped, n_dropped=resolution.n_dropped, n_joined=resolution.n_joined,
                             normalization=norm, output=targets[0] if targets else None, timings=timings)


def _delayed(fn):
    import dask

    return dask.delayed(fn, pure=False)


def _segment_and_merge(runner: Runner, src: ImageSource, grid: BlockGrid, busy: List[int], n_skipped: int,
                       norm: GlobalNormalization, settings: EvalSettings, spec, parts_dir: str,
                       conflict_fraction: float, timings: Dict[str, float]):
    tic = time.perf_counter()
    block_settings = _block_settings(settings, src.ndim)
    planewise = _planewise(settings)
    results = runner.map("segment", [
        _delayed(tasks.segment_task)(src.crop(grid.crop(b)), b, grid.crop(b), grid.interior_sides(b), grid.overlap,
                                     norm, settings, block_settings, spec, parts_dir, planewise)
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
        _delayed(tasks.overlaps_task)(parts_dir, a, grid.crop(a), b, grid.crop(b),
                                      intersect(grid.crop(a), grid.crop(b)))
        for a, b in pairs])
    timings["overlaps"] = time.perf_counter() - tic

    tic = time.perf_counter()
    resolution = resolve(tables, overlaps, conflict_fraction)
    timings["merge"] = time.perf_counter() - tic
    timings["blocks_network"], timings["blocks_dynamics"] = block_time["network"], block_time["dynamics"]
    return tables, resolution


def _targets(src: ImageSource, grid: BlockGrid, output, ome_labels: Optional[str]) -> List[str]:
    """Create the zarr arrays the labels go to (none: they stay in memory)."""
    targets: List[str] = []
    if output is not None:
        create_labels_array(output, src.shape, grid.blocksize)
        targets.append(str(output))
    if ome_labels:
        targets.append(ome_labels_level0(src.ome, ome_labels, src.shape, grid.blocksize))
    return targets


def _paint_jobs(grid: BlockGrid, tables: Dict[int, ObjectTable], resolution: Resolution, parts_dir: str):
    """(chunk, function, arguments) painting each output chunk that has kept objects."""
    jobs = []
    for j in range(grid.n_blocks):
        core = grid.core(j)
        blocks = sources_for(grid.crops_touching(core), tables, resolution, core)
        if blocks:
            sources = [(b, grid.crop(b), grid.core(b), resolution.ids[b], resolution.ranks[b]) for b in blocks]
            jobs.append((core, tasks.paint_task, (parts_dir, core, sources, resolution.first_piece_rank)))
    return jobs


def _store(runner: Runner, stage: str, jobs, shape, blocksize, targets: Sequence[str]):
    """Compute every chunk job: into the ``targets`` zarr arrays, or into an in-memory dask array."""
    import dask.array as da

    if targets:
        runner.map(stage, [_delayed(tasks.store_chunk_task)(core, fn, args, targets) for core, fn, args in jobs])
        return None
    chunks = runner.map(stage, [_delayed(fn)(*args) for _, fn, args in jobs])
    labels = np.zeros(shape, np.uint32)
    for (core, _, _), chunk in zip(jobs, chunks):
        labels[core] = chunk
    return da.from_array(labels, chunks=blocksize)


def _write_stitched(runner: Runner, src: ImageSource, grid: BlockGrid, tables, resolution: Resolution,
                    parts_dir: str, settings: EvalSettings, targets: Sequence[str], timings: Dict[str, float]):
    """stitch_threshold: paint the merged 2D masks, link them across Z, write the 3D objects."""
    tic = time.perf_counter()
    planes_path = str(Path(parts_dir) / "planes.zarr")
    create_labels_array(planes_path, src.shape, grid.blocksize)
    jobs = _paint_jobs(grid, tables, resolution, parts_dir)
    _store(runner, "planes", jobs, src.shape, grid.blocksize, [planes_path])
    timings["planes"] = time.perf_counter() - tic

    tic = time.perf_counter()
    cores = [core for core, _, _ in jobs]
    links = runner.map("stitch", [_delayed(stitch.links_task)(planes_path, core) for core in cores])
    labels, ids = stitch.resolve_links(links, settings.stitch_threshold, settings.min_size)
    timings["stitch"] = time.perf_counter() - tic

    tic = time.perf_counter()
    relabel = [(core, stitch.relabel_task, (planes_path, core) + stitch.chunk_table(labels, ids, ln.labels))
               for core, ln in zip(cores, links) if ln.labels.size]
    out = _store(runner, "write", relabel, src.shape, grid.blocksize, targets)
    timings["write"] = time.perf_counter() - tic
    return out, int(ids.max(initial=0))
