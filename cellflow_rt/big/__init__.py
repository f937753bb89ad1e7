"""Images larger than memory: blockwise segmentation on dask with the masks of a single pass.

``segment_large(source, model, settings, blocksize, overlap, output, scheduler)`` reads a numpy,
dask or zarr array, an OME-Zarr image or a big TIFF block by block and writes uint32 labels to a
zarr array (chunks = blocksize), on dask's threaded scheduler or a dask.distributed cluster.

Stages (one module each)
------------------------
1. ``normalization``: one pass over the block cores collects per-channel extremes and exactly the
   pixels of Cellpose's strided percentile subsample; the driver computes the image's 1st/99th
   percentiles from them. Every block is normalised with these fixed bounds, so a block sees the
   same network input as the same pixels in a single pass. The same pass keeps the extremes of a
   box-averaged (diameter / 4) copy: a block whose normalised box mean never reaches
   ``skip_threshold`` is skipped as empty without running the network.
2. ``blocks``: cores of ``blocksize`` tile the image; each is run on its *crop*, the core plus a
   halo of ``overlap`` (default two diameters) on every side, at the same diameter for all blocks.
3. ``tasks.segment_task``: ``pipeline.segment`` on the crop; the crop's labels go to a temporary
   zarr; the block returns a table of its objects: area, bounding box and *margin* (the distance
   from the object to the nearest crop side that is cut inside the image, in halos; 0 = the object
   touches it and may be truncated).
4. ``tasks.overlaps_task``: for every pair of blocks whose crops intersect, the pixel counts of
   their overlapping label pairs inside the shared region.
5. ``merge.resolve`` (driver, small data): one version of each cell is kept, the others dropped;
   ids 1..N are assigned; see below.
6. ``tasks.paint_task``: each output chunk is assembled from the kept objects of every crop that
   meets it, written once by one task (no write races); where two kept objects touch, the
   better-seen one keeps the pixel.
7. ``stitch`` (``stitch_threshold`` only): blocks segment their planes in 2D, without a Z halo;
   stages 4-6 merge those 2D masks across XY faces; then the plane-to-plane IoU links are counted
   per chunk and resolved on the driver with Cellpose's rule, so that Z faces are stitched exactly
   as in a single pass. ``do_3D`` volumes go through stages 1-6 as 3D objects, with a Z halo.

Why the result is the single-pass result, without seams
-------------------------------------------------------
*Same input per cell.* Normalisation is global (stage 1) and the diameter is one number, so the
network sees the same values as in a single pass; the flows of a cell depend on its surroundings
within the network's receptive field and on Euler paths that stay inside the cell, so a cell that
lies at least a halo (>= 2 diameters) away from every artificial crop side gets the same flows and
the same mask as in a single pass (up to the tiling of the network, which Cellpose's own tile
blending already makes nearly position-independent).

*Every cell is seen whole by some block.* A cell's centre lies in exactly one core; that block's
crop extends a halo beyond the core, so any cell smaller than the halo is entirely inside that crop
with a positive margin. Cellpose's contributed distributed mode instead cuts masks at the core
faces and stitches the halves by contact, which leaves cut cells (and, on 2D data, no stitching).

*No cut cells, no duplicates.* The merge is a greedy non-maximum suppression over block versions:
complete versions are taken by decreasing margin (the version seen with the most context, i.e. the
least affected by a crop side, wins), and a version is dropped when it overlaps an accepted one
from another block by more than ``conflict_fraction`` of its part in the shared region. Accepted
versions therefore never describe the same cell twice, and each is written at full extent, across
block faces, with one id: no cell is cut at a face and no cell has two labels. Ids are numbered
once, on the driver, so they are globally unique.

*Cells larger than the halo.* No block sees them whole; their truncated pieces (margin 0) that
overlap each other inside shared regions are joined by union-find (the issue's "union-find over
label pairs that overlap in the halo"), so they still get one id; a piece that joins nothing and
is not confirmed by the neighbouring block (an edge fragment) is dropped.

*Memory.* A worker holds one crop and its network outputs at a time (see ``segment_large``'s notes
and ``bench/bench_large.py``); the driver holds only object tables and per-block lookup tables.
"""
__all__ = ["segment_large", "LargeSegmentation", "Progress", "default_overlap"]


def __getattr__(name):
    # lazy, so that ``cellflow-rt``'s command line imports nothing heavy until a blockwise run
    if name in ("segment_large", "LargeSegmentation", "default_overlap"):
        from . import pipeline
        return getattr(pipeline, name)
    if name == "Progress":
        from .runner import Progress
        return Progress
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
