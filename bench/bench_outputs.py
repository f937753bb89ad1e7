"""Time outlines, output writers and matching on a synthetic image with ~25,000 cells.

Usage::

    python bench/bench_outputs.py [--cells 25000] [--repeat 3] [--outdir DIR]

With cellpose importable (the reference environment), the same image is also given to Cellpose's
``utils.outlines_list`` (one ``cv2.findContours`` per mask) on a subset of masks, and its time is
extrapolated to all masks; nothing from cellflow_rt is imported in that case, so the script runs in
either environment::

    /path/to/cellpose-venv/bin/python bench/bench_outputs.py --cellpose-subset 500

The first call of each numba kernel compiles it (cached on disk afterwards); reported times are the
best of ``--repeat`` runs after one warm-up call.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi


def synthetic_cells(n_cells: int, seed: int = 0, mean_diameter: float = 12.0) -> np.ndarray:
    """Touching Voronoi cells (about ``n_cells``) with 15 % background, consecutive labels."""
    rng = np.random.default_rng(seed)
    side = int(np.sqrt(n_cells) * mean_diameter)
    seeds = np.zeros((side, side), np.int32)
    seeds[rng.integers(0, side, n_cells), rng.integers(0, side, n_cells)] = np.arange(1, n_cells + 1)
    _, (iy, ix) = ndi.distance_transform_edt(seeds == 0, return_indices=True)
    masks = seeds[iy, ix]
    field = ndi.gaussian_filter(rng.random(masks.shape), 4)
    masks[field < np.quantile(field, 0.15)] = 0
    values, inverse = np.unique(masks, return_inverse=True)
    return (inverse.reshape(masks.shape) + (values[0] != 0)).astype(np.uint16 if values.size < 2**16 else np.uint32)


def best_of(fn, repeat: int) -> float:
    fn()  # warm-up (numba compilation or cache load)
    times = []
    for _ in range(repeat):
        tic = time.perf_counter()
        fn()
        times.append(time.perf_counter() - tic)
    return min(times)


def bench_cellflow(masks: np.ndarray, repeat: int, outdir: Path) -> None:
    from cellflow_rt import io as outputs
    from cellflow_rt.metrics import average_precision
    from cellflow_rt.io.outlines import masks_to_outlines, outlines_list

    rng = np.random.default_rng(1)
    dP = rng.standard_normal((2, *masks.shape)).astype(np.float32)
    cellprob = rng.standard_normal(masks.shape).astype(np.float32)
    flows = [outputs.flow_to_rgb(dP), dP, cellprob]
    shifted = np.roll(masks, 1, axis=0)
    image = outdir / "synthetic.tif"
    rows = [
        ("masks_to_outlines", lambda: masks_to_outlines(masks)),
        ("outlines_list", lambda: outlines_list(masks)),
        ("save_masks png+tif", lambda: outputs.save_masks(masks, image, png=True, tif=True)),
        ("save_masks_ome_tif", lambda: outputs.save_masks_ome_tif(masks, image)),
        ("save_seg_npy", lambda: outputs.save_seg_npy(masks, flows, image)),
        ("save_outlines_txt", lambda: outputs.save_outlines_txt(masks, image)),
        ("save_rois_zip", lambda: outputs.save_rois_zip(masks, image)),
        ("save_geojson", lambda: outputs.save_geojson(masks, image)),
        ("save_flows", lambda: outputs.save_flows(flows, image)),
        ("flow_to_rgb", lambda: outputs.flow_to_rgb(dP)),
        ("average_precision (vs 1-px shift)", lambda: average_precision(masks, shifted)),
    ]
    for name, fn in rows:
        print(f"{name:36s} {best_of(fn, repeat):8.3f} s")


def bench_cellpose(masks: np.ndarray, subset: int) -> None:
    from cellpose import utils

    n = int(masks.max())
    sub = np.where(masks <= subset, masks, 0)
    tic = time.perf_counter()
    utils.outlines_list(sub, multiprocessing=False)
    elapsed = time.perf_counter() - tic
    print(f"cellpose outlines_list, {subset} masks   {elapsed:8.3f} s  -> {elapsed * n / subset:8.1f} s "
          f"extrapolated to {n} masks (one full-image cv2.findContours per mask)")
    tic = time.perf_counter()
    utils.masks_to_outlines(masks)
    print(f"cellpose masks_to_outlines, all masks {time.perf_counter() - tic:8.3f} s")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", type=int, default=25000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--outdir", type=Path, default=None, help="where to write files (default: a temp dir)")
    parser.add_argument("--cellpose-subset", type=int, default=0,
                        help="time Cellpose's outlines_list on this many masks instead of cellflow_rt")
    args = parser.parse_args()

    masks = synthetic_cells(args.cells)
    print(f"synthetic image {masks.shape[0]} x {masks.shape[1]}, {int(masks.max())} cells, dtype {masks.dtype}")
    if args.cellpose_subset:
        bench_cellpose(masks, args.cellpose_subset)
        return
    if args.outdir is not None:
        args.outdir.mkdir(parents=True, exist_ok=True)
        bench_cellflow(masks, args.repeat, args.outdir)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            bench_cellflow(masks, args.repeat, Path(tmp))


if __name__ == "__main__":
    main()
