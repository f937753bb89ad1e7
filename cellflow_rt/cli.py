"""The ``cellflow-rt`` command: ``run`` (segment files), ``info``, ``export`` (needs torch).

Flag names are Cellpose's (``python -m cellpose``) so that existing command lines carry over.
Exit status: 0 when every input succeeded, 1 when any failed (listed at the end), 2 for usage errors.
"""
from __future__ import annotations

import sys
from pathlib import Path

import click

from . import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cellflow-rt")
def main():
    """Cellpose segmentation without PyTorch (ONNX Runtime + numba)."""
    import warnings
    warnings.formatwarning = lambda message, category, *args, **kwargs: f"warning: {message}\n"


def _collect_inputs(files, directory, img_filter, look_one_level_down):
    from .io import find_images

    paths = [Path(f) for f in files]
    if directory:
        directory = Path(directory)
        if not directory.is_dir():
            raise click.UsageError(f"--dir {directory}: not a directory")
        try:
            paths += [Path(p) for p in find_images(directory, img_filter=img_filter,
                                                   look_one_level_down=look_one_level_down)]
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
    if not paths:
        raise click.UsageError("no input images: give image files or --dir DIR")
    return paths


def _copy_example(savedir):
    """Copy the bundled example image into ``savedir`` (default ./cellflow-rt-example); return the copy."""
    import shutil

    from .examples import example_image_path

    folder = Path(savedir) if savedir else Path.cwd() / "cellflow-rt-example"
    folder.mkdir(parents=True, exist_ok=True)
    source = example_image_path()
    return Path(shutil.copyfile(source, folder / source.name))


@main.command()
@click.argument("files", nargs=-1, type=click.Path(path_type=Path))
@click.option("--dir", "directory", type=click.Path(path_type=Path), help="Folder of images to segment.")
@click.option("--image_path", "image_path", type=click.Path(path_type=Path), help="One image (Cellpose's flag).")
@click.option("--img_filter", default=None, help="Only images whose file stem ends with this.")
@click.option("--look_one_level_down", is_flag=True, help="Also search the sub-folders of --dir.")
@click.option("--pretrained_model", "--model", "model_name", default="cyto_demo", show_default=True,
              help="Bundled or exported model name, or a path to an exported .onnx.")
@click.option("--chan", default=0, show_default=True, type=click.IntRange(min=0), help="Channel to segment (0=gray, 1=R, 2=G, 3=B).")
@click.option("--chan2", default=0, show_default=True, type=click.IntRange(min=0), help="Nuclear channel (0=none, 1=R, 2=G, 3=B).")
@click.option("--all_channels", is_flag=True, help="Use the first two channels as they are (channels=None).")
@click.option("--channel_axis", type=int, default=None, help="Axis of the channels in the image array.")
@click.option("--z_axis", type=int, default=None, help="Axis of Z in the image array.")
@click.option("--invert", is_flag=True, help="Invert intensities after normalisation.")
@click.option("--no_norm", is_flag=True, help="Do not normalise images.")
@click.option("--norm_percentile", nargs=2, type=float, default=None, help="Percentiles mapped to 0 and 1.")
@click.option("--diameter", default=30.0, show_default=True, type=float,
              help="Cell diameter in pixels; 0 estimates it with the model's size model. Cellpose 4 models: "
                   "the image is resized by 30 / diameter only when a diameter is given.")
@click.option("--flow_threshold", default=0.4, show_default=True, type=float, help="Flow error threshold (0 = off).")
@click.option("--cellprob_threshold", default=0.0, show_default=True, type=float, help="Cell probability threshold.")
@click.option("--min_size", default=15, show_default=True, type=int, help="Smallest mask kept (pixels; -1 = off).")
@click.option("--niter", default=0, type=int, help="Euler steps (0 = 200 x diameter / diam_mean).")
@click.option("--resample/--no_resample", default=True, show_default=True, help="Dynamics at the image's own size.")
@click.option("--no_interp", is_flag=True, help="Nearest-pixel flows in the Euler steps.")
@click.option("--augment", is_flag=True, help="Test-time augmentation (flipped overlapping tiles).")
@click.option("--tile_overlap", default=0.1, show_default=True, type=float, help="Overlap between tiles.")
@click.option("--batch_size", default=8, show_default=True, type=int, help="Tiles per network call.")
@click.option("--do_3D", "do_3D", is_flag=True, help="3D segmentation of Z-stacks.")
@click.option("--anisotropy", default=1.0, show_default=True, type=float, help="Z step / XY pixel size (do_3D).")
@click.option("--flow3D_smooth", "flow3D_smooth", default=0.0, type=float, help="Gaussian sigma on 3D flows.")
@click.option("--stitch_threshold", default=0.0, show_default=True, type=float,
              help="Stitch 2D masks across Z by IoU (0 = off).")
@click.option("--use_gpu", is_flag=True, help="Use TensorRT/CUDA if onnxruntime offers them (falls back to CPU).")
@click.option("--provider", default=None, help="Execution provider to require (cpu, cuda, tensorrt); fails if missing.")
@click.option("--threads", default=0, type=int, help="CPU threads for the network (0 = onnxruntime's choice).")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "bf16"]), default="fp32", show_default=True,
              help="Network precision: fp32 gives Cellpose's masks; fp16 (TensorRT) and bf16 (CPU, needs the "
                   "openvino extra) are faster and approximate.")
@click.option("--savedir", type=click.Path(path_type=Path), default=None, help="Folder for mask/outline files.")
@click.option("--save_png", is_flag=True, help="Write <stem>_cp_masks.png.")
@click.option("--save_tif", is_flag=True, help="Write <stem>_cp_masks.tif.")
@click.option("--no_npy", is_flag=True, help="Do not write <stem>_seg.npy.")
@click.option("--save_txt", is_flag=True, help="Write ImageJ outlines <stem>_cp_outlines.txt.")
@click.option("--save_rois", is_flag=True, help="Write ImageJ ROIs <stem>_rois.zip.")
@click.option("--save_geojson", is_flag=True, help="Write QuPath polygons <stem>.geojson.")
@click.option("--save_flows", is_flag=True, help="Write the flows image <stem>_flows.tif.")
@click.option("--save_ome", is_flag=True, help="Write OME-TIFF labels <stem>_cp_masks.ome.tif.")
@click.option("--skip_existing", is_flag=True, help="Skip inputs whose outputs all exist.")
@click.option("--blocksize", default=None,
              help="Blockwise on dask (images larger than memory, .zarr/.tif): block side N or Z,Y,X.")
@click.option("--overlap", default=None, help="Blockwise: halo around each block, N or Z,Y,X [2 x diameter].")
@click.option("--scheduler", default="threads", show_default=True,
              help="Blockwise: 'threads', or a dask.distributed scheduler address.")
@click.option("--example", is_flag=True,
              help="Segment the bundled example image (copied into --savedir, default ./cellflow-rt-example).")
@click.pass_context
def run(ctx, files, directory, image_path, img_filter, look_one_level_down, model_name, chan, chan2, all_channels,
        channel_axis, z_axis, invert, no_norm, norm_percentile, diameter, flow_threshold, cellprob_threshold,
        min_size, niter, resample, no_interp, augment, tile_overlap, batch_size, do_3D, anisotropy, flow3D_smooth,
        stitch_threshold, use_gpu, provider, threads, precision, savedir, save_png, save_tif, no_npy, save_txt, save_rois,
        save_geojson, save_flows, save_ome, skip_existing, blocksize, overlap, scheduler, example):
    """Segment image FILES (or every image in --dir) and write Cellpose's output files."""
    from .batch import OutputOptions, run_batch
    from .loaded_model import LoadedModel
    from .network import ProviderUnavailableError
    from .registry import resolve_model
    from .settings import EvalSettings

    if example:
        files = list(files) + [_copy_example(savedir)]
        savedir = savedir or files[-1].parent
        if ctx.get_parameter_source("model_name") == click.core.ParameterSource.DEFAULT:
            from .examples import EXAMPLE_DIAMETER, EXAMPLE_MODEL
            model_name = EXAMPLE_MODEL
            if ctx.get_parameter_source("diameter") == click.core.ParameterSource.DEFAULT:
                diameter = EXAMPLE_DIAMETER
    paths = _collect_inputs(list(files) + ([image_path] if image_path else []), directory, img_filter,
                            look_one_level_down)
    if savedir is not None and not Path(savedir).is_dir():
        raise click.UsageError(f"--savedir {savedir}: not a directory")
    if diameter < 0:
        raise click.UsageError(f"--diameter must be >= 0 (0 = estimate), got {diameter}")
    try:
        settings = EvalSettings(
            channels=None if all_channels else (chan, chan2), channel_axis=channel_axis, z_axis=z_axis,
            normalize=not no_norm, invert=invert and not norm_percentile,
            percentile=tuple(norm_percentile) if norm_percentile else (1.0, 99.0),
            diameter=diameter or None, flow_threshold=flow_threshold, cellprob_threshold=cellprob_threshold,
            min_size=min_size, niter=niter or None, resample=resample, interp=not no_interp, augment=augment,
            tile_overlap=tile_overlap, batch_size=batch_size, do_3D=do_3D, anisotropy=anisotropy,
            flow3D_smooth=flow3D_smooth, stitch_threshold=stitch_threshold)
        providers = provider or (["tensorrt", "cuda"] if use_gpu else "cpu")
        model = LoadedModel.load(model_name, providers=providers, strict_provider=provider is not None,
                                 num_threads=threads or None, precision=precision)
        if model.generation == 4:
            settings = _cellpose4_settings(ctx, settings)
    except ProviderUnavailableError as exc:
        raise click.ClickException(str(exc))
    except (ValueError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc))
    options = OutputOptions(savedir=savedir, save_npy=not no_npy, save_png=save_png, save_tif=save_tif,
                            save_txt=save_txt, save_rois=save_rois, save_geojson=save_geojson,
                            save_flows=save_flows, save_ome=save_ome)
    estimate = not diameter and model.size_model is not None
    if blocksize is not None:
        _run_blockwise(paths, model, settings, blocksize, overlap, scheduler, estimate, savedir)
        return
    click.echo(f"cellflow-rt {__version__}: {len(paths)} image(s), model {model.name} "
               f"({', '.join(model.net.providers)}, {model.net.precision})", err=True)

    def report(i, result):
        head = f"[{i + 1}/{len(paths)}] {result.path.name}"
        if result.skipped:
            click.echo(f"{head}: skipped (outputs exist)")
        elif result.ok:
            click.echo(f"{head}: {result.n_masks} cells, diameter {result.diameter:.1f} px, {result.seconds:.2f} s")
        else:
            click.echo(f"{head}: FAILED: {result.error}", err=True)

    results = run_batch(paths, model, settings, options, estimate=estimate, skip_existing=skip_existing,
                        on_result=report)
    written = sorted({str(p.parent) for r in results for p in r.outputs})
    if written:
        click.echo(f"outputs written to: {', '.join(written)}")
    failed = [r for r in results if not r.ok]
    if failed:
        click.echo(f"{len(failed)} of {len(results)} image(s) failed:", err=True)
        for r in failed:
            click.echo(f"  {r.path}: {r.error}", err=True)
        sys.exit(1)


def _cellpose4_settings(ctx, settings):
    """``run``'s settings for a Cellpose 4 model, as Cellpose 4.2.1.1's command line sets them.

    No diameter unless one is given (0 included: no resize); ``--chan``, ``--chan2``,
    ``--all_channels``, ``--invert`` and ``--no_interp`` have no meaning there (a warning says so);
    3D runs default to Z on axis 0.
    """
    import warnings

    given = [f"--{name}" for name in ("chan", "chan2", "all_channels", "invert", "no_interp")
             if ctx.get_parameter_source(name) != click.core.ParameterSource.DEFAULT]
    if given:
        warnings.warn(f"{', '.join(given)}: not used by Cellpose 4 models (all channels, up to 3, are used)")
    diameter = settings.diameter if ctx.get_parameter_source("diameter") != click.core.ParameterSource.DEFAULT else None
    stacked = settings.do_3D or settings.stitch_threshold > 0
    return settings.with_(channels=None, invert=False, interp=True, diameter=diameter,
                          z_axis=0 if stacked and settings.z_axis is None else settings.z_axis)


def _run_blockwise(paths, model, settings, blocksize, overlap, scheduler, estimate, savedir):
    """``run --blocksize``: each input segmented block by block on dask (cellflow_rt.big), written as
    ``<stem>_cp_masks.zarr`` in ``savedir`` or beside the input."""
    from .big.command import default_output, parse_sizes, run_large

    failed = []
    for path in paths:
        try:
            output = Path(savedir) / default_output(path).name if savedir else None
            run_large(path, model, settings, blocksize=parse_sizes(blocksize, "--blocksize"),
                      overlap=parse_sizes(overlap, "--overlap"), scheduler=scheduler, output=output,
                      estimate_diameter=estimate)
        except click.BadParameter:
            raise
        except Exception as exc:  # one bad file must not stop the others
            click.echo(f"{path.name}: FAILED: {type(exc).__name__}: {exc}", err=True)
            failed.append(path)
    if failed:
        click.echo(f"{len(failed)} of {len(paths)} image(s) failed: {', '.join(map(str, failed))}", err=True)
        sys.exit(1)


@main.command()
def info():
    """Versions, execution providers, models found, numba cache and threading layer."""
    import numba
    import numpy
    import onnxruntime

    from . import _numba
    from .network import available_providers
    from .network_openvino import bf16_status
    from .registry import list_models, user_model_dir

    click.echo(f"cellflow-rt {__version__}")
    click.echo(f"python {sys.version.split()[0]}, numpy {numpy.__version__}, numba {numba.__version__}, "
               f"onnxruntime {onnxruntime.__version__}")
    click.echo(f"execution providers: {', '.join(available_providers())}")
    click.echo(f"bf16 (--precision bf16): {bf16_status()}")
    click.echo(f"numba cache: {_numba.CACHE_DIR}")
    click.echo(f"numba threading layer: {numba.config.THREADING_LAYER} ({numba.config.NUMBA_NUM_THREADS} threads)")
    click.echo(f"user models: {user_model_dir()}")
    click.echo("models:")
    for m in list_models():
        if m.generation == 4:
            click.echo(f"  {m.name:24s} Cellpose 4 (Cellpose-SAM), up to 3 channels      {m.onnx_path}")
            continue
        size = "size model" if m.size_model is not None else "no size model"
        click.echo(f"  {m.name:24s} diam_mean {float(m.diam_mean):5.1f}  channels {list(m.default_channels)}  "
                   f"{size}  {m.onnx_path}")


def _add_export_command():
    try:
        from .export.command import export_command
    except ImportError:  # the exporter module is not installed
        return
    main.add_command(export_command, name="export")


_add_export_command()


if __name__ == "__main__":
    main()
