"""``cellflow-rt export``: the exporter as a click command (importable without torch)."""
from __future__ import annotations

from pathlib import Path

import click

from cellflow_rt.registry import RESTORE_TYPES

from .exporter import INSTALL_HINT, ExportDependencyError, export_checkpoint, require_export_dependencies
from .parity import ParityError
from .quantize import DEFAULT_TILES, quantize_model


@click.command("export")
@click.argument("checkpoint")
@click.option("--size-model", "size_model", type=click.Path(exists=True, dir_okay=False),
              help="Cellpose size model (.npy). Default: the one Cellpose pairs with the checkpoint, if present.")
@click.option("--name", help="Model name (files NAME.onnx, NAME.json). Default: from the checkpoint.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False),
              help="Output folder. Default: the user model folder ($CELLFLOW_RT_MODELS or ~/.cellflow/models).")
@click.option("--fp16", is_flag=True, help="Also write NAME_fp16.onnx (half precision, float32 IO).")
@click.option("--description", help="Free text stored in the manifest.")
@click.option("--channels", nargs=2, type=click.IntRange(0, 3), default=None,
              help="Default channels of a Cellpose 3 model, e.g. 0 0 (grayscale) or 1 2 (cyto). Default 0 0.")
@click.option("--restore-type", "restore_type", type=click.Choice(RESTORE_TYPES), default=None,
              help="For a Cellpose 3 restoration checkpoint (one input channel, one output): what it restores. "
                   "Default: from Cellpose's name (denoise_cyto3, upsample_nuclei, ...).")
def export_command(checkpoint, size_model, name, out_dir, fp16, description, channels, restore_type):
    """Export a Cellpose 3 CPnet or Cellpose 4 CPSAM (Cellpose-SAM) / CPDINO CHECKPOINT (a path, or a built-in
    name such as cyto3 or denoise_cyto3 found in Cellpose's model folder) to ONNX with a JSON
    manifest, after checking that ONNX Runtime reproduces the torch network. Segmentation and
    restoration nets are told apart by their shapes. Needs the export extra:
    pip install 'cellflow-rt[export]'."""
    try:
        require_export_dependencies()
    except ExportDependencyError as err:
        raise click.ClickException(str(err)) from None
    try:
        export_checkpoint(checkpoint, size_model=size_model, name=name, out_dir=out_dir, fp16=fp16,
                          description=description, channels=list(channels) if channels else None,
                          restore_type=restore_type, echo=click.echo)
    except (FileNotFoundError, ValueError, ParityError) as err:  # CheckpointError, SizeModelError are ValueErrors
        raise click.ClickException(str(err)) from None


@click.command("quantize")
@click.argument("model")
@click.option("--images", "images", required=True, type=click.Path(exists=True),
              help="Calibration images: a folder (its images, not masks) or one image file. Use images like the "
                   "ones the model will segment, not the ones you judge it on.")
@click.option("--img_filter", default=None,
              help="With a folder: only images whose name ends with this before the extension (as run's).")
@click.option("--tiles", "max_tiles", default=DEFAULT_TILES, show_default=True, type=click.IntRange(min=1),
              help="Most network tiles used to measure activation ranges.")
@click.option("--diameter", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Diameter the images will be segmented at (default: the model's own default).")
def quantize_command(model, images, img_filter, max_tiles, diameter):
    """Write MODEL's int8 network (MODEL.int8.xml/.bin/.json beside its ONNX file) for --precision int8:
    its linear layers in int8 (AMX/VNNI), ranges measured on tiles of the calibration images.
    Needs the export extra (NNCF) and the openvino extra; the runs that use it need only OpenVINO."""
    from cellflow_rt.io import find_images

    try:
        import nncf  # noqa: F401
        import openvino  # noqa: F401
    except ImportError as exc:
        raise click.ClickException(f"quantize needs NNCF and OpenVINO: pip install 'cellflow-rt[export,openvino]' "
                                   f"({exc})") from None
    path = Path(images)
    try:
        paths = [Path(p) for p in find_images(path, img_filter=img_filter)] if path.is_dir() else [path]
    except ValueError as exc:  # find_images: a folder without images, with its reasons
        raise click.ClickException(f"--images: {exc}") from None
    try:
        quantize_model(model, paths, max_tiles=max_tiles, diameter=diameter, echo=click.echo)
    except (FileNotFoundError, ValueError) as err:
        raise click.ClickException(str(err)) from None


__all__ = ["export_command", "quantize_command", "INSTALL_HINT"]
