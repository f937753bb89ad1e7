"""``cellflow-rt run``'s options in groups: one decorator per group, one object per group.

:func:`option_group` adds a group's click options to a command and hands the command one
:class:`Group` (the values by name, and which of them the user gave) instead of one parameter per
option. The segmentation groups are built from :data:`cellflow_rt.eval_options.FLAGS`, so their
names, defaults and help are the adapter's.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Dict, Sequence

import click

from .eval_options import FLAGS, Flag


class Group(dict):
    """One group's option values by name; :attr:`given` holds the names set on the command line."""

    given: frozenset = frozenset()

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def _click_option(flag: Flag):
    """The click option of one adapter flag (no range types: the adapter checks values)."""
    kind, extra = flag.kind, {}
    if kind == "flag":
        extra["is_flag"] = True
    elif kind == "pair":
        extra.update(nargs=2, type=float)
    elif kind == "pairs":
        extra.update(nargs=2, type=float, multiple=True)
    elif isinstance(kind, tuple):
        extra["type"] = click.Choice(list(kind))
    elif kind != "switch":
        extra["type"] = {"int": int, "float": float, "str": str}[kind]
    if kind not in ("flag", "pairs"):
        extra["default"] = flag.default
    return click.option(*flag.decls, flag.name, show_default=flag.show_default, help=flag.help, **extra)


def option_group(name: str, options: Sequence):
    """Decorator: add ``options`` (click option decorators) and pass their values as one
    :class:`Group` keyword argument ``name``."""
    def decorate(command):
        @functools.wraps(command)
        def wrapper(*args, **kwargs):
            ctx = click.get_current_context()
            group = Group((key, kwargs.pop(key)) for key in names)
            group.given = frozenset(key for key in names
                                    if ctx.get_parameter_source(key) != click.core.ParameterSource.DEFAULT)
            return command(*args, **{name: group}, **kwargs)

        before = list(getattr(wrapper, "__click_params__", []))
        for option in reversed(options):
            wrapper = option(wrapper)
        names = [p.name for p in getattr(wrapper, "__click_params__", [])[len(before):]]
        return wrapper
    return decorate


def flag_group(name: str):
    """The adapter's group of segmentation flags ``name`` (see :data:`~cellflow_rt.eval_options.FLAGS`)."""
    return option_group(name, [_click_option(flag) for flag in FLAGS[name]])


_path = click.Path(path_type=Path)

inputs = option_group("inputs", [
    click.option("--dir", "directory", type=_path, help="Folder of images to segment."),
    click.option("--image_path", "image_path", type=_path, help="One image (Cellpose's flag)."),
    click.option("--img_filter", default=None, help="Only images whose file stem ends with this."),
    click.option("--look_one_level_down", is_flag=True, help="Also search the sub-folders of --dir."),
    click.option("--mask_filter", default="_masks", show_default=True,
                 help="Skip files of --dir whose stem ends with this (label images)."),
    click.option("--example", is_flag=True,
                 help="Segment the bundled example image (copied into --savedir, default ./cellflow-rt-example)."),
])

models = option_group("models", [
    click.option("--pretrained_model", "--model", "model_name", default="cyto_demo", show_default=True,
                 help="Model name (bundled, user, or one of Cellpose's published models such as cyto3, nuclei, "
                      "cpsam: fetched on first use), or a path to an exported .onnx."),
    click.option("--pretrained_model_ortho", "ortho_model_name", default=None,
                 help="do_3D: model for the ZY and ZX views (name or .onnx path); the YX view uses "
                      "--pretrained_model."),
    click.option("--add_model", "add_model", type=_path, default=None,
                 help="Copy an exported model (.onnx or its .json manifest) into the user model folder; "
                      "without images, only that."),
    click.option("--restore_type", default=None,
                 help="Restore images before segmenting with this restoration model (Cellpose's name such as "
                      "denoise_cyto3, fetched on first use; an exported name; or an .onnx path)."),
    click.option("--chan2_restore", is_flag=True,
                 help="Accepted for Cellpose compatibility; no effect (Cellpose 3.1.1.1 restores both channels "
                      "with the first net)."),
])

runtime = option_group("runtime", [
    click.option("--use_gpu", is_flag=True, help="Use TensorRT/CUDA if onnxruntime offers them (falls back to CPU)."),
    click.option("--provider", default=None,
                 help="Execution provider to require (cpu, cuda, tensorrt); fails if missing."),
    click.option("--threads", default=0, type=int, help="CPU threads for the network (0 = onnxruntime's choice)."),
    click.option("--precision", type=click.Choice(["fp32", "fp16", "bf16", "tf32", "int8", "auto"]), default="fp32",
                 show_default=True,
                 help="Network precision: fp32 gives Cellpose's masks; fp16 (TensorRT), tf32 (CUDA), bf16 and int8 "
                      "(CPU, need the openvino extra; int8 needs the model's int8 network: cellflow-rt quantize) are "
                      "faster and approximate; auto = bf16 for Cellpose 4 models on CPUs with bfloat16 instructions "
                      "(Cellpose 4's own default), else fp32."),
])

outputs = option_group("outputs", [
    click.option("--savedir", type=_path, default=None, help="Folder for mask/outline files (created when missing)."),
    click.option("--dir_above", is_flag=True,
                 help="Without --savedir, write outputs into the folder above the images'."),
    click.option("--in_folders", is_flag=True,
                 help="Sort outputs into masks/, outlines/, txt_outlines/ and flows/."),
    click.option("--output_name", default=None,
                 help="Suffix replacing _cp_masks in the mask, outline-picture, figure and flow file names "
                      "(may be empty when --savedir is another folder than --dir)."),
    click.option("--save_png", is_flag=True, help="Write <stem>_cp_masks.png."),
    click.option("--save_tif", is_flag=True, help="Write <stem>_cp_masks.tif."),
    click.option("--no_npy", is_flag=True, help="Do not write <stem>_seg.npy."),
    click.option("--save_txt", is_flag=True, help="Write ImageJ outlines <stem>_cp_outlines.txt."),
    click.option("--save_rois", is_flag=True, help="Write ImageJ ROIs <stem>_rois.zip."),
    click.option("--save_geojson", is_flag=True, help="Write QuPath polygons <stem>.geojson."),
    click.option("--save_flows", is_flag=True, help="Write the flows image <stem>_flows.tif."),
    click.option("--save_ome", is_flag=True, help="Write OME-TIFF labels <stem>_cp_masks.ome.tif."),
    click.option("--save_outlines", is_flag=True,
                 help="Write the image with red mask outlines, <stem>_outlines_cp_masks.png."),
    click.option("--save_mpl", is_flag=True,
                 help="Write a figure of image, outlines, masks, flows and cell probability, "
                      "<stem>_cp_output_cp_masks.png."),
    click.option("--save_restored", is_flag=True, help="With --restore_type: write <stem>_restored.tif."),
    click.option("--exclude_on_edges", is_flag=True, help="Discard masks that touch the image's border."),
    click.option("--skip_existing", is_flag=True, help="Skip inputs whose outputs all exist."),
    click.option("--verbose", is_flag=True, help="Also print the model, settings and each image's stage timings."),
])

blockwise = option_group("blockwise", [
    click.option("--blocksize", default=None,
                 help="Blockwise on dask (images larger than memory, .zarr/.tif): block side N or Z,Y,X."),
    click.option("--overlap", default=None, help="Blockwise: halo around each block, N or Z,Y,X [2 x diameter]."),
    click.option("--scheduler", default="threads", show_default=True,
                 help="Blockwise: 'threads', or a dask.distributed scheduler address."),
])

cellpose_only = option_group("cellpose_only", [
    click.option("--gpu_device", default=None, help="Cellpose's torch device: accepted; ONNX Runtime uses GPU 0."),
    click.option("--check_mkl", is_flag=True, help="Cellpose's MKL check: accepted; there is no MKL here."),
    click.option("--transformer", is_flag=True, help="Cellpose's transformer model: not supported (refused)."),
])


def flag_values(*groups: Dict[str, Any]):
    """The values and the given names of several groups, merged (for the adapter)."""
    values, given = {}, set()
    for group in groups:
        values.update(group)
        given |= set(getattr(group, "given", ()))
    return values, given
