"""``convert_checkpoint``: a Cellpose checkpoint in, an ONNX model and its manifest out, without torch.

checkpoint -> safe reader (numpy arrays) -> spec detection -> graph built node by node -> streamed
to a temporary file -> self-check in ONNX Runtime -> metadata, sha256, final names. The manifest has
the torch exporter's fields and values (:mod:`cellflow_rt.export.manifest`, the same built-in name,
diameter, restoration and size-model rules, shared with :mod:`cellflow_rt.export.exporter`), plus
``converter``; its ``parity`` entry records the self-check instead of a comparison with torch.
Nothing is left at the final names when any step fails.
"""
from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Optional, Sequence

from cellflow_rt import __version__
from cellflow_rt.export.exporter import cpnet_model_facts
from cellflow_rt.export.manifest import (METADATA_PREFIX, cpdino_model_facts, cpsam_model_facts,
                                         onnx_metadata_entries, write_manifest)
from cellflow_rt.export.sources import check_model_name, default_model_name, locate_checkpoint
from cellflow_rt.checksum import sha256_file

from .self_check import self_check
from .specs import (DIAMETER_KEYS, DINO_TILE, NSTYLE, PATCH, TILE, detect_cpdino_spec, detect_cpnet_spec,
                    detect_cpsam_spec, is_cpdino_state, is_cpsam_state, stored_diameter, strip_module_prefix)
from .torch_checkpoint import read_state_dict

#: ``converter`` entry of the manifests this module writes.
CONVERTER = "cellflow-rt (no torch)"
OPSET = 17
# The self-check's CPnet input: a batch and tile the graph was not specialised for (multiples of 16).
_CPNET_CHECK = (2, 48, 80)


def convert_checkpoint(checkpoint, size_model=None, *, name, out_dir, description: Optional[str] = None,
                       channels: Optional[Sequence[int]] = None, restore_type: Optional[str] = None,
                       echo: Optional[Callable[[str], None]] = None) -> Path:
    """Convert a Cellpose 3 CPnet or Cellpose 4 CPSAM / CPDINO checkpoint to ONNX and a manifest, without torch.

    Parameters
    ----------
    checkpoint : str or Path
        A ``torch.save`` file (zip or legacy format), or a built-in name found in Cellpose's model
        folder (see :func:`cellflow_rt.export.sources.locate_checkpoint`).
    size_model : str or Path, optional
        Cellpose size model (``.npy``). Default: the file Cellpose pairs with the checkpoint, if it
        exists (as ``export_checkpoint`` does). CPnet segmentation models only.
    name : str or None
        Model name; files are ``NAME.onnx`` and ``NAME.json``. None: the built-in name or the
        checkpoint's file name.
    out_dir : str or Path
        Output folder (created if needed).
    description : str, optional
        Free text for the manifest (default: the exporter's).
    channels : sequence of two int, optional
        Default channels of a Cellpose 3 segmentation model (default ``[0, 0]``).
    restore_type : {"denoise", "deblur", "upsample", "oneclick"}, optional
        For a restoration net: what it does (taken from Cellpose's name when not given).
    echo : callable or None
        Receives progress lines; None is silent.

    Returns
    -------
    Path
        The manifest ``out_dir/NAME.json`` (``NAME.onnx`` beside it).

    Raises
    ------
    FileNotFoundError
        The checkpoint or size model does not exist.
    UnsafeCheckpointError
        The checkpoint's pickle names a global outside the allow-list (nothing was run).
    CheckpointFormatError, CheckpointError, SizeModelError
        The file is malformed, not a CPnet or CPSAM, or not a size model; options that do not fit
        the network (see ``export_checkpoint``).
    ConversionCheckError
        The written graph failed its self-check (nothing is left at the final names).
    """
    say = echo or (lambda _: None)
    source = locate_checkpoint(checkpoint)
    name = check_model_name(name if name is not None else default_model_name(source))
    out_dir = Path(out_dir)
    state = read_state_dict(source)
    if is_cpdino_state(state):
        return _convert_cpdino(strip_module_prefix(state), source, size_model, channels, restore_type,
                               name=name, out_dir=out_dir, description=description, say=say)
    if is_cpsam_state(state):
        return _convert_cpsam(strip_module_prefix(state), source, size_model, channels, restore_type,
                              name=name, out_dir=out_dir, description=description, say=say)
    spec = detect_cpnet_spec(state, source)
    ckpt = SimpleNamespace(spec=spec, diam_mean=stored_diameter(state, "diam_mean"),
                           diam_labels=stored_diameter(state, "diam_labels"))
    has_diameters = all(k in state for k in DIAMETER_KEYS)
    say(f"checkpoint {source}: CPnet nbase={list(spec.nbase)} nout={spec.nout}, diam_mean {ckpt.diam_mean:g}, "
        f"diam_labels {ckpt.diam_labels:g}" + ("" if has_diameters else " (not stored: Cellpose's CPU default)"))
    facts = cpnet_model_facts(ckpt, source, size_model, channels, restore_type, name=name, description=description,
                              opset=OPSET, say=say)
    from .cpnet_graph import build_cpnet_graph

    batch, height, width = _CPNET_CHECK
    return _write(facts, build_cpnet_graph(spec, state), out_dir, say,
                  check_input=(batch, spec.nchan, height, width),
                  check_outputs={"flows": (batch, spec.nout, height, width), "style": (batch, spec.nstyle)})


def _refuse_cellpose3_options(what: str, **options) -> None:
    """A Cellpose 4 checkpoint takes none of Cellpose 3's size model, channels or restoration type."""
    for option, value in options.items():
        if value is not None:
            raise ValueError(f"{option}: {what} checkpoints take no {option} "
                             "(segmentation on the image's first 3 channels, no size model)")


def _convert_cpsam(state, source: Path, size_model, channels, restore_type, *, name, out_dir, description, say):
    _refuse_cellpose3_options("Cellpose 4 (Cellpose-SAM)", size_model=size_model, channels=channels, restore_type=restore_type)
    spec = detect_cpsam_spec(state, source)
    say(f"checkpoint {source}: Cellpose 4 CPSAM, width {spec.embed_dim}, depth {spec.depth}, {spec.num_heads} "
        f"heads, MLP {spec.mlp_dim}, neck {spec.neck_dim}")
    if description is None:
        description = f"Cellpose 4 CPSAM (Cellpose-SAM) exported by cellflow-rt from {source.name}"
    facts = cpsam_model_facts(name=name, description=description, source_file=source.name,
                              source_sha256=sha256_file(source), exporter_version=__version__, opset=OPSET,
                              spec=spec, diam_mean=stored_diameter(state, "diam_mean"),
                              diam_labels=stored_diameter(state, "diam_labels"))
    from .cpsam_graph import build_cpsam_graph

    return _write(facts, build_cpsam_graph(spec, state), out_dir, say, check_input=(1, spec.nchan, TILE, TILE),
                  check_outputs={"flows": (1, spec.nout, TILE, TILE), "style": (1, NSTYLE)})


def _convert_cpdino(state, source: Path, size_model, channels, restore_type, *, name, out_dir, description, say):
    _refuse_cellpose3_options("Cellpose 4 (CPDINO)", size_model=size_model, channels=channels, restore_type=restore_type)
    spec = detect_cpdino_spec(state, source)
    say(f"checkpoint {source}: Cellpose 4.2 CPDINO ({spec.backbone}), width {spec.embed_dim}, depth {spec.depth}, "
        f"{spec.num_heads} heads, MLP {spec.mlp_dim}")
    if description is None:
        description = f"Cellpose 4.2 CPDINO (DINOv3 {spec.backbone}) exported by cellflow-rt from {source.name}"
    facts = cpdino_model_facts(name=name, description=description, source_file=source.name,
                               source_sha256=sha256_file(source), exporter_version=__version__, opset=OPSET,
                               spec=spec, diam_mean=stored_diameter(state, "diam_mean"),
                               diam_labels=stored_diameter(state, "diam_labels"))
    from .cpdino_graph import build_cpdino_graph

    # a batch of 2 at a side that is neither the default tile nor square: the graph's sizes are not fixed
    height, width = DINO_TILE // 2 + 2 * PATCH, DINO_TILE // 2
    return _write(facts, build_cpdino_graph(spec, state), out_dir, say, check_input=(2, spec.nchan, height, width),
                  check_outputs={"flows": (2, spec.nout, height, width), "style": (2, NSTYLE)})


def _write(facts: dict, graph, out_dir: Path, say, *, check_input, check_outputs) -> Path:
    """Stream the graph to a temporary file, self-check it, then give it and the manifest their names."""
    builder, inputs, outputs = graph
    metadata = onnx_metadata_entries(facts)
    metadata[METADATA_PREFIX + "converter"] = f'"{CONVERTER}"'
    model = builder.model(inputs, outputs, OPSET, metadata, producer="cellflow-rt convert", version=__version__,
                          doc=facts["description"])
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = out_dir / facts["onnx_file"]
    manifest_path = out_dir / f"{facts['name']}.json"
    tmp = onnx_path.with_name(f".{onnx_path.name}.{os.getpid()}.tmp")
    try:
        size = builder.write(tmp, model)
        del builder, graph
        say(f"graph written ({size / 2**20:.1f} MiB); self-check in ONNX Runtime")
        facts["parity"] = {"self_check": self_check(tmp, check_input, check_outputs)}
        facts["converter"] = CONVERTER
        facts["onnx_sha256"] = sha256_file(tmp)
        os.replace(tmp, onnx_path)
        try:
            write_manifest(manifest_path, facts)
        except BaseException:
            onnx_path.unlink(missing_ok=True)
            raise
    finally:
        tmp.unlink(missing_ok=True)
    say(f"wrote {onnx_path}, {manifest_path}")
    return manifest_path


__all__ = ["convert_checkpoint", "CONVERTER"]
