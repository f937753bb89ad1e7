"""``export_checkpoint``: a Cellpose checkpoint in, a verified ONNX model and manifest out.

checkpoint -> CPnet or CPSAM (torch) -> ONNX -> parity gate (ONNX Runtime against torch) ->
NAME.onnx, [NAME_fp16.onnx,] NAME.json. Nothing is written unless the fp32 graph passes the gate.
Cellpose 4 (CPSAM) checkpoints take the memory-conscious route of :mod:`.cpsam_export`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Sequence

from cellflow_rt import __version__
from cellflow_rt.registry import FP16_SUFFIX, RESTORE_TYPES, sha256_file, user_model_dir

from .manifest import model_facts, set_onnx_metadata, write_bytes_atomic, write_manifest
from .onnx_export import OPSET
from .parity import (CPSAM_PARITY_TILES, FLOWS_TOLERANCE, PARITY_SIZES, STYLE_TOLERANCE, check_parity, format_report,
                     measure_parity, runtime_versions)
from .size_model import read_size_model
from .sources import (builtin_name_of, builtin_restoration_of, check_model_name, default_model_name,
                      default_size_model, locate_checkpoint)

INSTALL_HINT = "pip install 'cellflow-rt[export]'  (torch==2.13.0 and onnx)"
#: Output channels of Cellpose 3's restoration nets (segmentation nets have 3).
RESTORATION_NOUT = 1


class ExportDependencyError(ImportError):
    """torch or onnx, needed only to export, is not installed."""


def require_export_dependencies() -> None:
    """Raise :class:`ExportDependencyError` with the install command when torch or onnx is missing."""
    missing = []
    for module in ("torch", "onnx"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise ExportDependencyError(f"exporting needs {' and '.join(missing)}, which is not installed: {INSTALL_HINT}")


def export_checkpoint(
    checkpoint,
    size_model=None,
    name: Optional[str] = None,
    out_dir=None,
    fp16: bool = False,
    description: Optional[str] = None,
    channels: Optional[Sequence[int]] = None,
    restore_type: Optional[str] = None,
    *,
    opset: int = OPSET,
    parity_sizes=PARITY_SIZES,
    parity_tiles: int = CPSAM_PARITY_TILES,
    echo: Optional[Callable[[str], None]] = print,
) -> Path:
    """Export a Cellpose 3 CPnet or Cellpose 4 CPSAM (Cellpose-SAM) / CPDINO checkpoint to ONNX with its manifest.

    Parameters
    ----------
    checkpoint : str, Path or Checkpoint
        A checkpoint file, or a built-in name (``cyto3``, ``nuclei``, or a basename) found in
        Cellpose's model folder (``$CELLPOSE_LOCAL_MODELS_PATH`` or ``~/.cellpose/models``); or a
        :class:`~.checkpoint.Checkpoint` already loaded (e.g. by
        :func:`~.checkpoint.checkpoint_from_state_dict`).
    size_model : str or Path, optional
        Cellpose size model (``.npy``). Default: the file Cellpose pairs with the checkpoint
        (``size_<basename>.npy`` for built-ins, ``<checkpoint>_size.npy`` otherwise) if it exists.
    name : str, optional
        Model name; files are ``NAME.onnx`` and ``NAME.json``. Default: the built-in name or the
        checkpoint's file name.
    out_dir : str or Path, optional
        Output folder (created if needed). Default: the user model folder
        (:func:`cellflow_rt.registry.user_model_dir`).
    fp16 : bool
        Also write ``NAME_fp16.onnx`` (float16 weights and arithmetic, float32 inputs and outputs;
        see :class:`.cpnet.HalfPrecisionCPnet`) and record its error against the float32 torch
        network (measured, not gated).
    description : str, optional
        Free text stored in the manifest.
    channels : sequence of two int, optional
        The channels the model expects by default (``[0, 0]`` grayscale, ``[1, 2]`` cyto...).
        Default ``[0, 0]``. Cellpose 3 only (Cellpose 4 takes the image's first 3 channels).
    restore_type : {"denoise", "deblur", "upsample", "oneclick"}, optional
        For a restoration net (Cellpose 3's ``denoise.py``: one input channel, one output), what it
        does; taken from Cellpose's name (``denoise_cyto3``, ``upsample_nuclei``...) when not given,
        required otherwise. Only ``upsample`` changes how the runtime uses the net.
    opset : int
        ONNX opset.
    parity_sizes : sequence of (int, int)
        Tile sizes (multiples of 16) for the CPnet parity gate.
    parity_tiles : int
        256 x 256 tiles of the CPSAM parity gate (each costs seconds per runtime for a full-size
        network).
    echo : callable or None
        Receives progress and the measured errors, line by line; None is silent.

    Returns
    -------
    Path
        The manifest ``NAME.json``.

    Raises
    ------
    ExportDependencyError
        torch or onnx is missing.
    FileNotFoundError
        The checkpoint or size model does not exist.
    CheckpointError, SizeModelError
        The files are not a CPnet or CPSAM checkpoint / a Cellpose size model; ``restore_type`` given
        for a segmentation net, or missing for a restoration net with a name Cellpose does not use.
    ValueError
        A size model, channels or a restore type given with a Cellpose 4 checkpoint.
    ParityError
        ONNX Runtime's output differs from torch's by more than 1e-4 (flows) or 1e-5 (style).
    """
    say = echo or (lambda _: None)
    require_export_dependencies()
    from .checkpoint import Checkpoint, load_checkpoint
    from .cpnet import HalfPrecisionCPnet, build_cpnet
    from .onnx_export import cpnet_to_onnx

    loaded = checkpoint if isinstance(checkpoint, Checkpoint) else None
    source = loaded.path if loaded is not None else locate_checkpoint(checkpoint)
    name = check_model_name(name if name is not None else default_model_name(source))
    out_dir = Path(out_dir) if out_dir is not None else user_model_dir()
    ckpt = loaded if loaded is not None else load_checkpoint(source)
    if ckpt.generation == 4:
        if restore_type is not None:
            raise ValueError("restore_type: Cellpose 4 (Cellpose-SAM) checkpoints are segmentation models")
        return _export_cellpose4(ckpt, size_model, channels, name=name, out_dir=out_dir, fp16=fp16,
                                 description=description, opset=opset, parity_tiles=parity_tiles, say=say)

    say(f"checkpoint {source}: CPnet nbase={list(ckpt.spec.nbase)} nout={ckpt.spec.nout}, "
        f"diam_mean {ckpt.diam_mean:g}, diam_labels {ckpt.diam_labels:g}"
        + ("" if ckpt.has_diameters else " (not stored: Cellpose's CPU default)"))
    facts = cpnet_model_facts(ckpt, source, size_model, channels, restore_type, name=name,
                              description=description, opset=opset, say=say)
    channels = facts["default_channels"]
    net = build_cpnet(ckpt.spec, ckpt.state_dict)
    graph = cpnet_to_onnx(net, opset)
    set_onnx_metadata(graph, facts)
    data = graph.SerializeToString()
    # A grayscale model only ever sees zeros in its second channel (see parity.parity_images).
    grayscale = ckpt.spec.nchan > 1 and channels[1] == 0
    parity = measure_parity(net, data, sizes=parity_sizes, grayscale=grayscale)
    say(format_report(parity, "fp32 ONNX vs torch"))
    check_parity(parity)
    facts["parity"] = {"flows_tolerance": FLOWS_TOLERANCE, "style_tolerance": STYLE_TOLERANCE,
                       **parity, **runtime_versions()}

    half_data = None
    if fp16:
        half = cpnet_to_onnx(HalfPrecisionCPnet(net), opset)
        set_onnx_metadata(half, facts, precision="fp16")
        half_data = half.SerializeToString()
        half_parity = measure_parity(net, half_data, sizes=parity_sizes, grayscale=grayscale)
        say(format_report(half_parity, "fp16 ONNX vs torch fp32 (not gated)"))
        facts["fp16"] = {
            "onnx_file": f"{name}{FP16_SUFFIX}.onnx",
            "onnx_sha256": None,
            "io_dtype": "float32",
            "compute": "float16; style normalisation float32",
            "measured_with": "onnxruntime CPUExecutionProvider",
            **half_parity,
        }

    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = out_dir / facts["onnx_file"]
    write_bytes_atomic(onnx_path, data)
    facts["onnx_sha256"] = sha256_file(onnx_path)
    if half_data is not None:
        half_path = out_dir / facts["fp16"]["onnx_file"]
        write_bytes_atomic(half_path, half_data)
        facts["fp16"]["onnx_sha256"] = sha256_file(half_path)
    manifest_path = out_dir / f"{name}.json"
    write_manifest(manifest_path, facts)
    written = [onnx_path] + ([out_dir / facts["fp16"]["onnx_file"]] if half_data is not None else []) + [manifest_path]
    say("wrote " + ", ".join(str(p) for p in written))
    return manifest_path


def _export_cellpose4(ckpt, size_model, channels, *, name, out_dir, fp16, description, opset, parity_tiles, say):
    from .cpsam_export import export_cpsam

    if size_model is not None:
        raise ValueError("size_model: Cellpose 4 (Cellpose-SAM) models have no size model")
    if channels is not None:
        raise ValueError("channels: Cellpose 4 (Cellpose-SAM) models take the image's first 3 channels; "
                         "default channels apply to Cellpose 3 models only")
    spec = ckpt.spec
    source_sha256 = sha256_file(ckpt.path) if ckpt.path.is_file() else None
    if ckpt.architecture == "cpdino":
        from .cpdino_export import export_cpdino

        say(f"checkpoint {ckpt.path}: Cellpose 4.2 CPDINO ({spec.backbone}), width {spec.embed_dim}, depth "
            f"{spec.depth}, {spec.num_heads} heads, MLP {spec.mlp_dim}")
        if description is None:
            description = f"Cellpose 4.2 CPDINO (DINOv3 {spec.backbone}) exported by cellflow-rt from {ckpt.path.name}"
        return export_cpdino(ckpt, name=name, out_dir=out_dir, fp16=fp16, description=description,
                             source_sha256=source_sha256, opset=opset, parity_tiles=parity_tiles, echo=say)
    say(f"checkpoint {ckpt.path}: Cellpose 4 CPSAM, width {spec.embed_dim}, depth {spec.depth}, "
        f"{spec.num_heads} heads, MLP {spec.mlp_dim}, neck {spec.neck_dim}")
    if description is None:
        description = f"Cellpose 4 CPSAM (Cellpose-SAM) exported by cellflow-rt from {ckpt.path.name}"
    return export_cpsam(ckpt, name=name, out_dir=out_dir, fp16=fp16, description=description,
                        source_sha256=source_sha256, opset=opset, parity_tiles=parity_tiles, echo=say)


def _check_channels(channels) -> list[int]:
    try:
        values = [int(c) for c in channels]
    except (TypeError, ValueError):
        values = []
    if len(values) != 2 or any(c < 0 or c > 3 for c in values):
        raise ValueError(f"channels: expected two ints in 0..3 (Cellpose's channel codes), got {channels!r}")
    return values


def _restoration_facts(source: Path, ckpt, restore_type: Optional[str]):
    """``(restore_type, diam_mean)`` of a restoration checkpoint: the given type, else the one its
    Cellpose name says; diam_mean by Cellpose's name rule for its own nets, else the stored value."""
    from .checkpoint import CheckpointError

    if ckpt.spec.nchan != 1:
        raise CheckpointError(f"{source}: a CPnet with one output is a restoration net, which takes one input "
                              f"channel; this one takes {ckpt.spec.nchan}")
    named = builtin_restoration_of(source)
    if restore_type is None and named is None:
        raise ValueError(f"restore_type: {source.name} is a restoration net and its name is not one of Cellpose's "
                         f"(denoise_cyto3, upsample_nuclei, ...): give --restore-type ({', '.join(RESTORE_TYPES)})")
    if restore_type is not None and restore_type not in RESTORE_TYPES:
        raise ValueError(f"restore_type must be one of {', '.join(RESTORE_TYPES)}, got {restore_type!r}")
    return restore_type or named[0], named[1] if named is not None else ckpt.diam_mean


def _default_description(source: Path, builtin, restore_type=None) -> str:
    if restore_type:
        return f"Cellpose 3 restoration net ({restore_type}) exported by cellflow-rt from {source.name}"
    if builtin:
        return f"Cellpose built-in model '{builtin}' ({source.name}), exported by cellflow-rt"
    return f"Cellpose CPnet exported by cellflow-rt from {source.name}"


def cpnet_model_facts(ckpt, source: Path, size_model, channels, restore_type, *, name: str, description, opset: int,
                      say: Callable[[str], None]) -> dict:
    """The manifest entries of a CPnet checkpoint: segmentation (channels, size model) or restoration net.

    Shared by the torch exporter and the torch-free converter (:mod:`cellflow_rt.convert`), so that
    both apply Cellpose's rules for built-in names, restoration nets and size models the same way.

    Parameters
    ----------
    ckpt : object
        With ``spec`` (a CPnetSpec), ``diam_mean`` and ``diam_labels`` (the stored float32 values).
    source : Path
        The checkpoint file (its basename decides Cellpose's built-in rules).
    size_model, channels, restore_type
        As given to :func:`export_checkpoint`.
    name, description, opset, say
        The model's name, its description (None: a default one), the graph's opset, a progress printer.

    Returns
    -------
    dict
        :func:`.manifest.model_facts`'s entries (``onnx_sha256`` still None).
    """
    builtin = builtin_name_of(source)
    if ckpt.spec.nout == RESTORATION_NOUT:
        restore_type, diam_mean = _restoration_facts(source, ckpt, restore_type)
        if size_model is not None:
            raise ValueError("size_model: a restoration model has no size model")
        if channels is not None and list(channels) != [0, 0]:
            raise ValueError(f"channels: a restoration net takes one channel at a time; got {list(channels)}")
        channels, size_path, builtin = [0, 0], None, None
        say(f"restoration net ({restore_type}), diam_mean {diam_mean:g}")
    else:
        if restore_type is not None:
            from .checkpoint import CheckpointError

            raise CheckpointError(f"restore_type: {source} is a segmentation CPnet (nout {ckpt.spec.nout}); "
                                  "restore types apply to Cellpose 3 restoration nets (one input channel, nout 1)")
        channels = _check_channels(channels if channels is not None else (0, 0))
        size_path = Path(size_model) if size_model is not None else default_size_model(source)
        diam_mean = ckpt.diam_mean
    size = read_size_model(size_path, ckpt.spec.nstyle) if size_path is not None else None
    say(f"size model: {size_path if size_path is not None else 'none'}")
    return model_facts(
        name=name,
        description=description if description is not None else _default_description(source, builtin, restore_type),
        source_file=source.name,
        source_sha256=sha256_file(source),
        exporter_version=__version__,
        opset=opset,
        spec=ckpt.spec,
        diam_mean=diam_mean,
        diam_labels=ckpt.diam_labels,
        builtin_name=builtin,
        default_channels=channels,
        size_model=size,
        restore_type=restore_type,
    )
