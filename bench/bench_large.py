"""Benchmark: segment a synthetic N x N canvas (default 16384^2) blockwise from a zarr on disk.

The canvas is tiled from the shared DSB2018 nuclei images (256^2 crops, random flips and
rotations, nuclei resized to 17 px, brightness equalised; one tile in sixteen and one 1024^2 area
in eight left empty, like the glass of a slide) and
written strip by strip to ``<workdir>/canvas.zarr``, so it never sits in memory. Then:

1. ``segment_large`` (threaded scheduler) writes ``<workdir>/labels.zarr``; we report wall time,
   blocks, empty blocks skipped, cells, and peak RSS (``ru_maxrss`` of this process and of its
   children; with ``--scheduler local`` a LocalCluster is started and its workers' peaks are polled);
2. on a crop where a single pass fits (``--crop``, default 2048^2 at the canvas centre), the crop is
   run through ``segment`` with the same global normalisation, and the blockwise labels are matched
   against it (cells within two diameters of the crop's sides are left out of both, since the crop
   cuts them): AP at IoU 0.5 / 0.75 / 0.9 and the counts.

Usage::

    python bench/bench_large.py                      # 16384^2, nuclei_demo, blocks 1024
    python bench/bench_large.py --size 8192 --workers 1 --workdir /tmp/cellflow_big
    python bench/bench_large.py --glass 0.75 --crop 0   # 16384^2 mostly glass: the pipeline at full size
"""
from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import threading
import time
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
TILE = 256
DIAMETER = 17.0


def _tiles():
    """256^2 tiles from the DSB sample (fluorescence only), each image resized so that its nuclei
    measure ``DIAMETER`` px (median of its ground truth) and scaled to a common brightness, as the
    fields of one slide at one magnification would be."""
    import tifffile
    from scipy import ndimage

    from cellflow_rt.dynamics import diameters

    tiles = []
    for path in sorted((SHARED / "data" / "dsb2018_sample").glob("dsb_*_image.tif")):
        if path.name.startswith("dsb_01"):  # the brightfield-like one needs invert
            continue
        a = tifffile.imread(path).astype(np.float32)
        if a.ndim == 3:
            a = a[..., :3].mean(-1)
        zoom = DIAMETER / diameters(tifffile.imread(str(path).replace("_image", "_labels")))[0]
        if min(a.shape) * zoom < TILE:
            continue
        a = ndimage.zoom(a, zoom, order=1)
        a = a / max(np.percentile(a, 99.5), 1e-3)
        for y in range(0, a.shape[0] - TILE + 1, TILE // 2):
            for x in range(0, a.shape[1] - TILE + 1, TILE // 2):
                tiles.append(a[y:y + TILE, x:x + TILE])
    return tiles


def make_canvas(path: Path, size: int, chunk: int = 1024, seed: int = 0, glass: float = 1 / 8):
    """Write the synthetic canvas to a zarr array, one strip of ``chunk`` rows at a time.

    ``glass``: fraction of the ``chunk``-sized areas left empty."""
    import zarr

    rng = np.random.default_rng(seed)
    tiles = _tiles()
    arr = zarr.create_array(str(path), shape=(size, size), chunks=(chunk, chunk), dtype="uint16", overwrite=True)
    per_strip = chunk // TILE
    n_super = -(-size // chunk)
    empty = rng.random((n_super, n_super)) < glass  # empty chunk-sized areas, like a slide's glass
    for y0 in range(0, size, chunk):
        rows = []
        for _ in range(per_strip):
            row = []
            for j in range(-(-size // TILE)):
                if empty[y0 // chunk, j * TILE // chunk] or rng.random() < 1 / 16:
                    t = np.zeros((TILE, TILE), np.float32)
                else:
                    t = np.rot90(tiles[rng.integers(len(tiles))], rng.integers(4))
                    t = t[::-1] if rng.random() < 0.5 else t
                row.append(t)
            rows.append(np.concatenate(row, axis=1)[:, :size])
        strip = np.concatenate(rows, axis=0)[: min(chunk, size - y0)]
        arr[y0:y0 + strip.shape[0]] = (strip * 1000).clip(0, 65535).astype(np.uint16)
    return arr


def peak_rss_mb() -> dict:
    """Peak resident memory of this process and of its (waited-for) children, in MB."""
    unit = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, kilobytes on Linux
    return {"self_MB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * unit / 1e6,
            "children_MB": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * unit / 1e6}


class RssPoller:
    """Polls the RSS of this process and its children (LocalCluster workers) every 0.5 s."""

    def __init__(self):
        import psutil

        self.proc = psutil.Process()
        self.peak_total = 0
        self.peak_single = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        import psutil

        while not self._stop.is_set():
            try:
                procs = [self.proc] + self.proc.children(recursive=True)
                rss = []
                for p in procs:
                    try:
                        rss.append(p.memory_info().rss)
                    except psutil.Error:
                        pass
                self.peak_total = max(self.peak_total, sum(rss))
                self.peak_single = max(self.peak_single, max(rss))
            except psutil.Error:
                pass
            self._stop.wait(0.5)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def match_on_crop(canvas, labels, result, model, settings, crop: int, margin: int):
    """AP of the blockwise labels against a single pass of a central crop (same normalisation)."""
    from scipy import ndimage

    from cellflow_rt.big.normalization import network_channels
    from cellflow_rt.metrics import average_precision
    from cellflow_rt.pipeline import segment

    n = canvas.shape[0]
    c0 = max(0, (n - crop) // 2)
    region = (slice(c0, c0 + crop), slice(c0, c0 + crop))
    x = network_channels(np.asarray(canvas[region])[..., None], settings.channels, model.nchan)
    result.normalization.apply(x)
    tic = time.perf_counter()
    single = segment(x, model, settings.with_(channels=None, channel_axis=2, normalize=False, invert=False)).masks
    seconds = time.perf_counter() - tic
    blockwise = np.asarray(labels[region])

    def inner(lab):
        out = lab.copy()
        for i, box in enumerate(ndimage.find_objects(lab), start=1):
            if box is not None and any(s.start < margin or s.stop > crop - margin for s in box):
                out[out == i] = 0
        return out

    ap, tp, fp, fn = average_precision(inner(single), inner(blockwise), [0.5, 0.75, 0.9])
    return {"crop": crop, "single_pass_s": round(seconds, 1), "ap": [round(float(v), 4) for v in ap],
            "tp": tp.astype(int).tolist(), "fp": fp.astype(int).tolist(), "fn": fn.astype(int).tolist()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=16384)
    ap.add_argument("--blocksize", type=int, default=1024)
    ap.add_argument("--overlap", type=int, default=None)
    ap.add_argument("--workers", type=int, default=None, help="threads of the threaded scheduler")
    ap.add_argument("--batch_size", type=int, default=8, help="network tiles per call (memory ~90 MB per tile)")
    ap.add_argument("--scheduler", default="threads", help="'threads' or 'local' (LocalCluster, 2 workers)")
    ap.add_argument("--glass", type=float, default=1 / 8, help="fraction of empty 1024^2 areas")
    ap.add_argument("--crop", type=int, default=2048, help="side of the single-pass crop (0: skip the match)")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/cellflow_big_bench"))
    ap.add_argument("--keep", action="store_true", help="keep the canvas and labels zarr")
    args = ap.parse_args(argv)

    import zarr

    from cellflow_rt.big import segment_large
    from cellflow_rt.loaded_model import LoadedModel
    from cellflow_rt.settings import EvalSettings

    args.workdir.mkdir(parents=True, exist_ok=True)
    canvas_path, labels_path = args.workdir / "canvas.zarr", args.workdir / "labels.zarr"
    tic = time.perf_counter()
    canvas = make_canvas(canvas_path, args.size, glass=args.glass)
    print(f"canvas {args.size}^2 written in {time.perf_counter() - tic:.1f} s", flush=True)
    model = LoadedModel.load("nuclei_demo")
    settings = EvalSettings(channels=(0, 0), diameter=DIAMETER, batch_size=args.batch_size)

    def progress(p):
        if p.stage == "segment" and (p.done % 8 == 0 or p.done == p.total) or p.done == p.total:
            print(f"  {p.stage}: {p.done}/{p.total} ({p.skipped} skipped) {p.seconds:.0f} s", flush=True)

    scheduler, cluster, client = args.scheduler, None, None
    if args.scheduler == "local":
        from distributed import Client, LocalCluster

        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
        client = scheduler = Client(cluster)
    cpu_before = sum(u.ru_utime + u.ru_stime for u in
                     (resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)))
    with RssPoller() as poller:
        tic = time.perf_counter()
        result = segment_large(str(canvas_path), model, settings, blocksize=args.blocksize, overlap=args.overlap,
                               output=labels_path, scheduler=scheduler, num_workers=args.workers, progress=progress)
        seconds = time.perf_counter() - tic
    if client is not None:
        client.close()
        cluster.close()
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    cpu_seconds = sum(u.ru_utime + u.ru_stime for u in usage) - cpu_before
    report = {"size": args.size, "glass": args.glass, "blocksize": args.blocksize, "overlap": list(result.overlap),
              "scheduler": args.scheduler, "workers": args.workers, "batch_size": args.batch_size,
              "seconds": round(seconds, 1), "cpu_seconds": round(cpu_seconds, 1),
              "megapixels_per_s": round(args.size ** 2 / 1e6 / seconds, 3), "blocks": result.n_blocks,
              "skipped": result.n_skipped, "cells": result.n_objects, "dropped_versions": result.n_dropped,
              "joined": result.n_joined, "timings": {k: round(v, 1) for k, v in result.timings.items()},
              "peak_rss": {**{k: round(v) for k, v in peak_rss_mb().items()},
                           "polled_total_MB": round(poller.peak_total / 1e6),
                           "polled_largest_process_MB": round(poller.peak_single / 1e6)}}
    print(json.dumps(report, indent=1), flush=True)
    if args.crop:
        labels = zarr.open_array(str(labels_path), mode="r")
        report["match"] = match_on_crop(canvas, labels, result, model, settings, min(args.crop, args.size),
                                        margin=int(2 * result.diameter))
        print(json.dumps(report["match"]), flush=True)
    if not args.keep:
        shutil.rmtree(args.workdir, ignore_errors=True)
    return report


if __name__ == "__main__":
    main()
