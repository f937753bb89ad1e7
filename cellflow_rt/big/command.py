"""``cellflow-rt run-large``: segment one big TIFF, zarr array or OME-Zarr image blockwise.

Flag names follow ``cellflow-rt run`` (Cellpose's) plus the blockwise ones: ``--blocksize``,
``--overlap``, ``--scheduler``. :func:`run_large` is the same thing as a function, for ``run`` to
call when it is given ``--blocksize``.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import click


def parse_sizes(text: Optional[str], name: str):
    """``"N"`` -> N, ``"Z,Y,X"`` -> (Z, Y, X) for ``--blocksize`` / ``--overlap``."""
    if text is None:
        return None
    try:
        values = tuple(int(v) for v in str(text).split(","))
    except ValueError:
        raise click.BadParameter(f"expected N or N,N[,N], got {text!r}", param_hint=name) from None
    if any(v < 0 for v in values):
        raise click.BadParameter(f"must be >= 0, got {text!r}", param_hint=name)
    return values[0] if len(values) == 1 else values


def default_output(path: Path) -> Path:
    """``<stem>_cp_masks.zarr`` beside the input (``big.ome.zarr`` -> ``big_cp_masks.zarr``)."""
    name = path.name
    for suffix in (".ome.zarr", ".zarr", ".ome.tiff", ".ome.tif", ".tiff", ".tif"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return path.with_name(f"{name}_cp_masks.zarr")


def run_large(path, model, settings, blocksize=None, overlap=None, scheduler: str = "threads",
              output: Optional[Path] = None, workers: Optional[int] = None, ome_labels: Optional[str] = None,
              skip_threshold: Optional[float] = 0.1, temp_dir=None, estimate_diameter: bool = False,
              echo=click.echo):
    """Segment ``path`` blockwise, report progress per block, write ``output``; return the result."""
    from . import segment_large

    path = Path(path)
    output = Path(output) if output is not None else default_output(path)
    last = {}

    def progress(p):
        if p.stage in ("segment", "write") or p.done == p.total:
            if last.get(p.stage) != p.done:
                skipped = f", {p.skipped} empty skipped" if p.skipped else ""
                echo(f"  {p.stage}: {p.done}/{p.total} blocks{skipped} ({p.seconds:.1f} s)", err=True)
                last[p.stage] = p.done

    tic = time.perf_counter()
    result = segment_large(path, model, settings, blocksize=blocksize, overlap=overlap, output=output,
                           scheduler=scheduler, num_workers=workers, progress=progress, skip_threshold=skip_threshold,
                           estimate_diameter=estimate_diameter, ome_labels=ome_labels, temp_dir=temp_dir)
    echo(f"{path.name}: {result.n_objects} cells, diameter {result.diameter:.1f} px, blocks {result.n_blocks} "
         f"({result.n_skipped} empty), {time.perf_counter() - tic:.1f} s -> {result.output}")
    return result


@click.command("run-large", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("image", type=click.Path(exists=True, path_type=Path))
@click.option("--blocksize", default=None, help="Block (output chunk) side, N or Z,Y,X [default 1024; 128 in 3D].")
@click.option("--overlap", default=None, help="Halo around each block, N or Z,Y,X [default 2 x diameter].")
@click.option("--scheduler", default="threads", show_default=True,
              help="'threads' (dask's threaded scheduler) or a dask.distributed scheduler address.")
@click.option("--workers", default=None, type=int, help="Threads of the threaded scheduler.")
@click.option("--output", "-o", type=click.Path(path_type=Path), default=None,
              help="Labels zarr array to write [default: <stem>_cp_masks.zarr beside the image].")
@click.option("--ome_labels", default=None, help="For OME-Zarr input: also write multiscale labels/<NAME>.")
@click.option("--skip_threshold", default=0.1, show_default=True, type=float,
              help="Skip blocks whose normalised, box-averaged intensity stays below this (negative: never).")
@click.option("--temp_dir", type=click.Path(path_type=Path), default=None, help="Folder for per-block labels.")
@click.option("--pretrained_model", "--model", "model_name", default="cyto_demo", show_default=True,
              help="Bundled or exported model name, or a path to an exported .onnx.")
@click.option("--chan", default=0, show_default=True, type=int, help="Channel to segment (0=gray, 1=R, 2=G, 3=B).")
@click.option("--chan2", default=0, show_default=True, type=int, help="Nuclear channel (0=none, 1=R, 2=G, 3=B).")
@click.option("--channel_axis", type=int, default=None, help="Axis of the channels in the image array.")
@click.option("--z_axis", type=int, default=None, help="Axis of Z in the image array.")
@click.option("--invert", is_flag=True, help="Invert intensities after normalisation.")
@click.option("--no_norm", is_flag=True, help="Do not normalise images.")
@click.option("--norm_percentile", nargs=2, type=float, default=None, help="Percentiles mapped to 0 and 1.")
@click.option("--diameter", default=30.0, show_default=True, type=float,
              help="Cell diameter in pixels; 0 estimates it once on a central crop with the size model.")
@click.option("--flow_threshold", default=0.4, show_default=True, type=float, help="Flow error threshold (0 = off).")
@click.option("--cellprob_threshold", default=0.0, show_default=True, type=float, help="Cell probability threshold.")
@click.option("--min_size", default=15, show_default=True, type=int, help="Smallest mask kept (pixels; -1 = off).")
@click.option("--niter", default=0, type=int, help="Euler steps (0 = 200 x diameter / diam_mean).")
@click.option("--no_interp", is_flag=True, help="Nearest-pixel flows in the Euler steps.")
@click.option("--augment", is_flag=True, help="Test-time augmentation (flipped overlapping tiles).")
@click.option("--batch_size", default=8, show_default=True, type=int, help="Tiles per network call.")
@click.option("--do_3D", "do_3D", is_flag=True, help="3D segmentation of Z-stacks.")
@click.option("--anisotropy", default=1.0, show_default=True, type=float, help="Z step / XY pixel size (do_3D).")
@click.option("--stitch_threshold", default=0.0, show_default=True, type=float,
              help="Stitch 2D masks across Z by IoU (0 = off).")
@click.option("--use_gpu", is_flag=True, help="Use TensorRT/CUDA if onnxruntime offers them (falls back to CPU).")
def large_command(image, blocksize, overlap, scheduler, workers, output, ome_labels, skip_threshold, temp_dir,
                  model_name, chan, chan2, channel_axis, z_axis, invert, no_norm, norm_percentile, diameter,
                  flow_threshold, cellprob_threshold, min_size, niter, no_interp, augment, batch_size, do_3D,
                  anisotropy, stitch_threshold, use_gpu):
    """Segment one IMAGE larger than memory (big TIFF, zarr array or OME-Zarr) block by block."""
    from ..loaded_model import LoadedModel
    from ..settings import EvalSettings

    if diameter < 0:
        raise click.UsageError(f"--diameter must be >= 0 (0 = estimate), got {diameter}")
    try:
        settings = EvalSettings(
            channels=(chan, chan2), channel_axis=channel_axis, z_axis=z_axis, normalize=not no_norm,
            invert=invert and not norm_percentile,
            percentile=tuple(norm_percentile) if norm_percentile else (1.0, 99.0),
            diameter=diameter or None, flow_threshold=flow_threshold, cellprob_threshold=cellprob_threshold,
            min_size=min_size, niter=niter or None, interp=not no_interp, augment=augment, batch_size=batch_size,
            do_3D=do_3D, anisotropy=anisotropy, stitch_threshold=stitch_threshold)
        model = LoadedModel.load(model_name, providers=["tensorrt", "cuda"] if use_gpu else "cpu")
        run_large(image, model, settings, blocksize=parse_sizes(blocksize, "--blocksize"),
                  overlap=parse_sizes(overlap, "--overlap"), scheduler=scheduler, output=output, workers=workers,
                  ome_labels=ome_labels, skip_threshold=None if skip_threshold < 0 else skip_threshold,
                  temp_dir=temp_dir, estimate_diameter=not diameter and model.size_model is not None)
    except (ValueError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc))


def main(argv: Optional[Sequence[str]] = None):
    large_command.main(args=argv, prog_name="cellflow-rt run-large")


if __name__ == "__main__":
    sys.exit(main())
