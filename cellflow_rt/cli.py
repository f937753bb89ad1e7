"""The ``cellflow-rt`` command: ``run`` (segment files), ``info``, ``models`` (Cellpose's published
models), ``serve``, ``warmup``, ``export`` (needs torch).

Flag names are Cellpose's (``python -m cellpose``) so that existing command lines carry over.
``run``'s options come in groups (:mod:`.cli_options`); those that become settings, with their
defaults, checks and messages, are the shared adapter's (:mod:`.eval_options`).
Exit status: 0 when every input succeeded, 1 when any failed (listed at the end), 2 for usage errors.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from . import __version__, cli_options
from .published.command import models_command


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cellflow-rt")
def main():
    """Cellpose segmentation without PyTorch (ONNX Runtime + numba)."""
    import warnings
    warnings.formatwarning = lambda message, category, *args, **kwargs: f"warning: {message}\n"


def _collect_inputs(files, directory, img_filter, look_one_level_down, mask_filter="_masks"):
    from .io import find_images

    paths = [Path(f) for f in files]
    if directory:
        directory = Path(directory)
        if not directory.is_dir():
            raise click.UsageError(f"--dir {directory}: not a directory")
        try:
            paths += [Path(p) for p in find_images(directory, img_filter=img_filter, mask_filter=mask_filter,
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


def _make_savedir(savedir) -> None:
    """Create ``--savedir`` when missing (Cellpose 3.1.1.1 refuses a missing one)."""
    if savedir is None:
        return
    try:
        Path(savedir).mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise click.UsageError(f"--savedir {savedir}: not a directory (a file of that name exists)") from None
    except OSError as exc:
        raise click.UsageError(f"--savedir {savedir}: not a directory and cannot be created "
                               f"({exc.strerror or exc})") from None


def _same_folder(a, b) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _masks_suffix(output_name, savedir, directory) -> str:
    """The mask files' suffix for ``--output_name``, by Cellpose 3.1.1.1's rule (``__main__.py``).

    The name is used when given with no ``--savedir`` (an empty name is then ignored: the masks could
    overwrite PNG inputs), or with a ``--savedir`` other than ``--dir`` (then it may be empty);
    with ``--savedir`` equal to ``--dir`` Cellpose ignores it. Cellpose fails on ``--image_path`` with
    ``--savedir``; here the name is used.
    """
    from .io.paths import MASKS_SUFFIX

    if output_name is None:
        return MASKS_SUFFIX
    if savedir is None and not output_name:
        click.echo("warning: an empty --output_name needs a --savedir other than the images' folder; "
                   f"using {MASKS_SUFFIX} (as Cellpose does)", err=True)
        return MASKS_SUFFIX
    if savedir is not None and directory is not None and _same_folder(savedir, directory):
        click.echo(f"warning: --output_name is ignored when --savedir is the --dir folder; using {MASKS_SUFFIX} "
                   "(as Cellpose does)", err=True)
        return MASKS_SUFFIX
    return output_name


def _cellpose_only_flags(gpu_device, check_mkl, transformer) -> None:
    """Flags of ``python -m cellpose`` about torch: accepted so that its command lines run, or refused."""
    if transformer:
        raise click.UsageError("--transformer: Cellpose 3's transformer network is not a CPnet and is not supported")
    if gpu_device not in (None, "0"):
        click.echo(f"warning: --gpu_device {gpu_device} ignored: ONNX Runtime runs on GPU 0 (--use_gpu)", err=True)
    if check_mkl:
        click.echo("warning: --check_mkl ignored: there is no torch/MKL here", err=True)


def _add_model(path: Path) -> None:
    """``--add_model``: copy an exported model into the user model folder."""
    from .registry import ModelFileError, ModelNotFoundError, add_model

    try:
        info = add_model(path)
    except (ModelFileError, ModelNotFoundError) as exc:
        raise click.ClickException(f"--add_model {path}: {exc}") from None
    click.echo(f"{path} copied to the user model folder {info.onnx_path.parent}; "
               f"use it with --pretrained_model {info.name}")


@main.command()
@click.argument("files", nargs=-1, type=click.Path(path_type=Path))
@cli_options.inputs
@cli_options.models
@cli_options.flag_group("channels")
@cli_options.flag_group("normalization")
@cli_options.flag_group("segmentation")
@cli_options.flag_group("volume")
@cli_options.runtime
@cli_options.flag_group("dynamics")
@cli_options.outputs
@cli_options.blockwise
@cli_options.cellpose_only
@click.pass_context
def run(ctx, files, inputs, models, channels, normalization, segmentation, volume, runtime, dynamics, outputs,
        blockwise, cellpose_only):
    """Segment image FILES (or every image in --dir) and write Cellpose's output files."""
    from .batch import OutputOptions, run_batch
    from .eval_options import OptionError, settings_from_flags
    from .gpu import DynamicsUnavailableError, choose_dynamics
    from .loaded_model import LoadedModel
    from .network import ProviderUnavailableError
    from .progress import KernelCompileNotice, Reporter, TileProgressNetwork
    from .restore import RestoreStep

    _cellpose_only_flags(**cellpose_only)
    flags, given = cli_options.flag_values(channels, normalization, segmentation, volume, dynamics)
    try:
        settings_from_flags(flags, given)  # refuse bad values before anything is read or loaded
    except OptionError as exc:
        if exc.option:  # a usage error (status 2), as click's own checks of a flag's value
            raise click.BadParameter(str(exc), param_hint=f"'--{exc.option}'") from None
        raise click.ClickException(str(exc)) from None
    model_name, ortho_model_name, restore_type = models.model_name, models.ortho_model_name, models.restore_type
    savedir, blocksize, threads, provider = outputs.savedir, blockwise.blocksize, runtime.threads, runtime.provider
    if models.add_model is not None:
        _add_model(models.add_model)
        if not (files or inputs.directory or inputs.image_path or inputs.example):
            return
    if inputs.example:
        files = list(files) + [_copy_example(savedir)]
        savedir = savedir or files[-1].parent
        if "model_name" not in models.given:
            from .examples import EXAMPLE_DIAMETER, EXAMPLE_MODEL
            model_name = EXAMPLE_MODEL
            if "diameter" not in given:
                flags["diameter"] = EXAMPLE_DIAMETER
                given.add("diameter")
    paths = _collect_inputs(list(files) + ([inputs.image_path] if inputs.image_path else []), inputs.directory,
                            inputs.img_filter, inputs.look_one_level_down, inputs.mask_filter)
    _make_savedir(savedir)
    suffix = _masks_suffix(outputs.output_name, savedir, inputs.directory)
    if blocksize is None:
        _refuse_if_all_too_large(paths)
    if outputs.save_restored and not restore_type:
        raise click.UsageError("--save_restored needs --restore_type")
    try:
        providers = provider or (["tensorrt", "cuda"] if runtime.use_gpu else "cpu")
        model = LoadedModel.load(model_name, providers=providers, strict_provider=provider is not None,
                                 num_threads=threads or None, precision=runtime.precision,
                                 batch_size=flags["batch_size"],
                                 ortho=ortho_model_name).require_kind("segmentation", "--pretrained_model")
        family = model.family
        chosen = settings_from_flags(flags, given, family)
        settings = chosen.settings
        if chosen.unused:
            import warnings
            warnings.warn(f"{', '.join('--' + name for name in chosen.unused)}: {family.unused_flags_note}")
        if restore_type and not family.restoration_fits:
            raise click.UsageError(f"--restore_type: Cellpose 3's restoration nets go with Cellpose 3 models, "
                                   f"not the {family.title} model {model.name}")
        where = choose_dynamics(settings.dynamics, model.net.providers)
        if blocksize is not None:
            from .big.normalization import check_blockwise_normalization
            check_blockwise_normalization(settings)
        restore = None
        if restore_type:
            if blocksize is not None:
                raise click.UsageError("--restore_type is not available in blockwise runs (--blocksize)")
            if models.chan2_restore:
                click.echo("warning: --chan2_restore has no effect (Cellpose 3.1.1.1 restores both channels with "
                           "the first net)", err=True)
            restore = RestoreStep.create(_load_restoration(restore_type, providers, provider, threads,
                                                           runtime.precision),
                                         chosen.normalize, flags["invert"], name=restore_type)
            if chosen.estimate_diameter:
                # Cellpose 3.1.1.1 means to use the segmentation model's diam_labels here (it fails instead)
                settings = settings.with_(diameter=float(model.diam_labels))
    except (ProviderUnavailableError, DynamicsUnavailableError) as exc:
        raise click.ClickException(str(exc))
    except OptionError as exc:  # a flag the model's family refuses (--bsize)
        if exc.option:
            raise click.BadParameter(str(exc), param_hint=f"'--{exc.option}'") from None
        raise click.ClickException(str(exc)) from None
    except (ValueError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc))
    options = OutputOptions(savedir=savedir, save_npy=not outputs.no_npy, save_png=outputs.save_png,
                            save_tif=outputs.save_tif, save_txt=outputs.save_txt, save_rois=outputs.save_rois,
                            save_geojson=outputs.save_geojson, save_flows=outputs.save_flows,
                            save_ome=outputs.save_ome, save_outlines=outputs.save_outlines,
                            save_mpl=outputs.save_mpl, exclude_on_edges=outputs.exclude_on_edges,
                            dir_above=outputs.dir_above, in_folders=outputs.in_folders, suffix=suffix,
                            save_restored=outputs.save_restored)
    estimate = chosen.estimate_diameter and model.size_model is not None and restore is None
    reporter = Reporter(verbose=outputs.verbose)
    header = (f"cellflow-rt {__version__}: {len(paths)} image(s), model {model.name} "
              f"({', '.join(model.net.providers)}, {model.net.precision}), dynamics on the {where.upper()}")
    reporter.line(header + (f", ortho model {ortho_model_name}" if ortho_model_name else ""), err=True)
    reporter.detail(f"settings: {settings}")
    if blocksize is not None:
        with KernelCompileNotice(lambda text: reporter.line(text, err=True)):
            _run_blockwise(paths, model, settings, blocksize, blockwise.overlap, blockwise.scheduler, estimate,
                           savedir, options, reporter)
        return
    if reporter.interactive:
        model.net = TileProgressNetwork(model.net, reporter)
        if model.net_ortho is not None:
            model.net_ortho = TileProgressNetwork(model.net_ortho, reporter)
    files_bar = reporter.bar(len(paths), "images", "image") if len(paths) > 1 else None

    def report(i, result):
        head = f"[{i + 1}/{len(paths)}] {result.path.name}"
        if result.skipped:
            reporter.line(f"{head}: skipped (outputs exist)")
        elif result.ok:
            reporter.line(f"{head}: {result.n_masks} cells, diameter {result.diameter:.1f} px, {result.seconds:.2f} s")
            reporter.detail("  " + ", ".join(f"{stage} {seconds:.2f} s" for stage, seconds in result.timings.items()))
        else:
            reporter.line(f"{head}: FAILED: {result.error}", err=True)
        if files_bar is not None:
            files_bar.update(1)

    with KernelCompileNotice(lambda text: reporter.line(text, err=True)):
        results = run_batch(paths, model, settings, options, estimate=estimate, skip_existing=outputs.skip_existing,
                            on_result=report, restore=restore)
    if files_bar is not None:
        files_bar.close()
    written = sorted({str(p.parent) for r in results for p in r.outputs})
    if written:
        reporter.line(f"outputs written to: {', '.join(written)}")
    failed = [r for r in results if not r.ok]
    if failed:
        click.echo(f"{len(failed)} of {len(results)} image(s) failed:", err=True)
        for r in failed:
            click.echo(f"  {r.path}: {r.error}", err=True)
        sys.exit(1)


def _refuse_if_all_too_large(paths) -> None:
    """Exit (status 1) before loading the model when every input's header declares an image over the
    in-memory ceiling: nothing would be segmented, and the model alone costs ~170 MB."""
    from .io.limits import ImageTooLargeError
    from .io.peek import check_file_size

    refused = {}
    for path in paths:
        try:
            check_file_size(path)
        except ImageTooLargeError as exc:
            refused[path] = f"{type(exc).__name__}: {exc}"
        else:
            return
    for i, path in enumerate(paths):
        click.echo(f"[{i + 1}/{len(paths)}] {path.name}: FAILED: {refused[path]}", err=True)
    click.echo(f"{len(paths)} of {len(paths)} image(s) failed:", err=True)
    for path in paths:
        click.echo(f"  {path}: {refused[path]}", err=True)
    sys.exit(1)


def _load_restoration(name, providers, provider, threads, precision):
    """The --restore_type model (a restoration model, by name or path)."""
    from .loaded_model import LoadedModel
    from .registry import ModelNotFoundError

    try:
        # a restoration net has no int8 network of its own: bfloat16 beside an int8 segmentation
        model = LoadedModel.load(name, providers=providers, strict_provider=provider is not None,
                                 num_threads=threads or None, precision="bf16" if precision == "int8" else precision)
    except ModelNotFoundError as exc:
        raise ModelNotFoundError(f"--restore_type: {exc}") from None
    return model.require_kind("restoration", "--restore_type")


def _run_blockwise(paths, model, settings, blocksize, overlap, scheduler, estimate, savedir, options, reporter):
    """``run --blocksize``: each input segmented block by block on dask (cellflow_rt.big), written as
    ``<stem>_cp_masks.zarr`` in ``savedir`` or beside the input; with ``--save_tif`` / ``--save_png``
    the masks are also streamed from the zarr into ``<stem>_cp_masks.tif`` / ``.png``."""
    from .big.command import default_output, parse_sizes, run_large
    from .progress import StageProgress

    written_alone = {"--save_txt": options.save_txt, "--save_rois": options.save_rois,
                     "--save_geojson": options.save_geojson, "--save_flows": options.save_flows,
                     "--save_ome": options.save_ome, "--save_outlines": options.save_outlines,
                     "--save_mpl": options.save_mpl, "--exclude_on_edges": options.exclude_on_edges}
    if model.net_ortho is not None:  # dask workers reopen the model by name, without it
        written_alone["--pretrained_model_ortho"], model.net_ortho = True, None
    ignored = [flag for flag, on in written_alone.items() if on]
    if ignored:
        reporter.line(f"warning: {', '.join(ignored)} not available in blockwise runs (--blocksize); ignored", err=True)
    failed = []
    for path in paths:
        stages = StageProgress(reporter)
        try:
            output = Path(savedir) / default_output(path).name if savedir else None
            run_large(path, model, settings, blocksize=parse_sizes(blocksize, "--blocksize"),
                      overlap=parse_sizes(overlap, "--overlap"), scheduler=scheduler, output=output,
                      estimate_diameter=estimate, echo=reporter.line, progress=stages,
                      save_tif=options.save_tif, save_png=options.save_png, suffix=options.suffix)
        except click.BadParameter:
            raise
        except Exception as exc:  # one bad file must not stop the others
            reporter.line(f"{path.name}: FAILED: {type(exc).__name__}: {exc}", err=True)
            failed.append(path)
        finally:
            stages.close()
    if failed:
        reporter.line(f"{len(failed)} of {len(paths)} image(s) failed: {', '.join(map(str, failed))}", err=True)
        sys.exit(1)


@main.command()
@click.option("--pretrained_model", "--model", "model_name", default="cyto_demo", show_default=True,
              help="Model name (bundled, user, or Cellpose's published: fetched on first use), or an .onnx path.")
@click.option("--use_gpu", is_flag=True, help="Warm up the GPU path (TensorRT if offered, else CUDA).")
@click.option("--provider", type=click.Choice(["tensorrt", "cuda"]), default=None,
              help="GPU provider to warm up (default: TensorRT if offered, else CUDA).")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "tf32"]), default="fp32", show_default=True,
              help="Precision the runs will use (fp16: TensorRT float16 engines; tf32: CUDA TensorFloat-32).")
@click.option("--batch_size", default=8, show_default=True, type=click.IntRange(min=1),
              help="The runs' --batch_size (TensorRT's profile covers batches 1..this).")
def warmup(model_name, use_gpu, provider, precision, batch_size):
    """Build and cache a model's TensorRT engines and compile the GPU kernels ahead of a run."""
    from .warmup import NoGpuError, warmup as warm

    if not (use_gpu or provider):
        raise click.UsageError("warmup prepares the GPU path: pass --use_gpu (or --provider tensorrt|cuda)")
    try:
        warm(model_name, precision=precision, batch_size=batch_size, provider=provider,
             progress=lambda line: click.echo(line, err=True))
    except NoGpuError as exc:
        raise click.ClickException(f"warmup: {exc}")
    except (ValueError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc))


@main.command()
def info():
    """Versions, execution providers, models found, numba cache and threading layer."""
    import numba
    import numpy
    import onnxruntime

    from . import _numba
    from .gpu import cuda_status
    from .network import available_providers
    from .provider_options import GPU_PROVIDERS
    from .network_openvino import bf16_status, int8_status
    from .published import cache_dir
    from .registry import list_models, user_model_dir

    click.echo(f"cellflow-rt {__version__}")
    click.echo(f"python {sys.version.split()[0]}, numpy {numpy.__version__}, numba {numba.__version__}, "
               f"onnxruntime {onnxruntime.__version__}")
    click.echo(f"execution providers: {', '.join(available_providers())}")
    if any(p in GPU_PROVIDERS for p in available_providers()):
        from .cuda_device import cuda_devices

        count, no_device = cuda_devices()
        click.echo(f"CUDA devices: {count}" + (f" ({no_device})" if no_device else ""))
    click.echo(f"bf16 (--precision bf16): {bf16_status()}")
    click.echo(f"int8 (--precision int8): {int8_status()}")
    from .family import FAMILIES
    bf16_families = [f for f in FAMILIES.values() if f.bf16_by_default]
    click.echo(f"--precision auto: {bf16_families[0].automatic_precision()} for "
               f"{' and '.join(f.title + ' models' for f in bf16_families)}, fp32 for others (default: fp32)")
    click.echo(f"GPU dynamics (--dynamics gpu): {cuda_status() or 'available'}")
    click.echo(f"numba cache: {_numba.CACHE_DIR}")
    click.echo(f"numba threading layer: {numba.config.THREADING_LAYER} ({numba.config.NUMBA_NUM_THREADS} threads)")
    click.echo(f"user models: {user_model_dir()}")
    click.echo(f"published models cache: {cache_dir()} (`cellflow-rt models list`)")
    click.echo("models:")
    for m in list_models():
        if not m.family.selects_channels:
            click.echo(f"  {m.name:24s} {m.family.title}, up to {m.family.max_channels} channels      {m.onnx_path}")
            continue
        size = "size model" if m.size_model is not None else "no size model"
        if m.is_restoration:
            size = f"restoration: {m.restore_type}"
        click.echo(f"  {m.name:24s} diam_mean {float(m.diam_mean):5.1f}  channels {list(m.default_channels)}  "
                   f"{size}  {m.onnx_path}")


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; a non-loopback address needs --token or --insecure.")
@click.option("--port", default=8765, show_default=True, type=click.IntRange(0, 65535), help="Port (0 = a free one).")
@click.option("--model", "--pretrained_model", "model_names", multiple=True,
              help="Model to keep loaded (repeat for several; the first is the default): a name, including "
                   "Cellpose's published ones (cyto3, nuclei, cpsam: fetched before the server starts), or an "
                   ".onnx path [default: cyto_demo].")
@click.option("--use_gpu", is_flag=True, help="Use TensorRT/CUDA if onnxruntime offers them (falls back to CPU).")
@click.option("--provider", default=None, help="Execution provider to require (cpu, cuda, tensorrt); fails if missing.")
@click.option("--threads", default=0, type=int, help="CPU threads for the network (0 = onnxruntime's choice).")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "bf16", "int8"]), default="fp32", show_default=True,
              help="Network precision (as for run).")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(min=1),
              help="Segmentations run at once (threads sharing the models).")
@click.option("--max-queue", "max_queue", default=4, show_default=True, type=click.IntRange(min=0),
              help="Requests waiting for a worker; beyond them the answer is 503 with Retry-After.")
@click.option("--max-image-mpx", "max_image_mpx", default=16.0, show_default=True, type=click.FloatRange(min=0.0001),
              help="Largest image in millions of pixel values (Z x Y x X x channels), also once resized.")
@click.option("--max-body-mb", "max_body_mb", default=None, type=click.FloatRange(min=0.001),
              help="Largest request body in MB [default: 4 bytes per allowed pixel value].")
@click.option("--timeout", default=300.0, show_default=True, type=click.FloatRange(min=0.001),
              help="Seconds from a request's arrival to its answer (upload, queue and work).")
@click.option("--header-timeout", "header_timeout", default=10.0, show_default=True,
              type=click.FloatRange(min=0.001),
              help="Seconds a client may take to send a request's headers; slower connections are closed.")
@click.option("--token", envvar="CELLFLOW_RT_TOKEN", default=None,
              help="Bearer token every request must carry (or $CELLFLOW_RT_TOKEN, which ps does not show).")
@click.option("--insecure", is_flag=True, help="Allow a non-loopback --host without --token.")
@click.option("--access-log/--no-access-log", "access_log", default=True, show_default=True,
              help="Log one line per request.")
def serve(host, port, model_names, use_gpu, provider, threads, precision, workers, max_queue, max_image_mpx,
          max_body_mb, timeout, header_timeout, token, insecure, access_log):
    """Keep models loaded and segment images sent over HTTP (POST /segment; see /openapi.json)."""
    try:
        from .serve.limits import Limits
        from .serve.server import ExposureError, bind, check_exposure, load_models, run_server, warm_up
        from .serve.work import Service
    except ImportError as exc:
        raise click.ClickException(f"cellflow-rt serve needs the serve extra ({exc.name} is missing): "
                                   f"pip install 'cellflow-rt[serve]'")
    from .network import ProviderUnavailableError

    try:
        check_exposure(host, token, insecure)
    except ExposureError as exc:
        raise click.UsageError(str(exc))
    try:
        sock = bind(host, port)
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc.strerror or exc}")
    providers = provider or (["tensorrt", "cuda"] if use_gpu else "cpu")
    try:
        models = load_models(model_names or ["cyto_demo"], providers, provider is not None, threads or None,
                             precision)
    except (ProviderUnavailableError, ValueError, FileNotFoundError) as exc:
        sock.close()
        raise click.ClickException(str(exc))
    max_values = int(max_image_mpx * 1e6)
    body_bytes = int(max_body_mb * 1e6) if max_body_mb else 4 * max_values
    service = Service(models, Limits(max_body_bytes=body_bytes, max_values=max_values, timeout=timeout),
                      workers=workers, max_queue=max_queue)
    click.echo(f"cellflow-rt {__version__} serve: models {', '.join(models)} "
               f"({', '.join(next(iter(models.values())).net.providers)}); warming up...", err=True)
    seconds = warm_up(models)

    def ready(url):
        click.echo(f"cellflow-rt serve: ready on {url} (warm-up {seconds:.1f} s; {workers} worker(s), queue "
                   f"{max_queue}{', token required' if token else ''}); Ctrl+C drains and stops", err=True)

    run_server(service, sock, token=token, access_log=access_log, on_ready=ready, header_timeout=header_timeout)


def _add_export_command():
    try:
        from .export.command import export_command, quantize_command
    except ImportError:  # the exporter module is not installed
        return
    main.add_command(export_command, name="export")
    main.add_command(quantize_command, name="quantize")


_add_export_command()


main.add_command(models_command, name="models")


if __name__ == "__main__":
    main()
