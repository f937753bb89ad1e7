"""Exporting a Cellpose 4 CPSAM (Cellpose-SAM) checkpoint: torch network -> ONNX file -> gate -> manifest.

A full-size Cellpose-SAM has 305 M parameters: 1.2 GB of float32 weights, a 1.2 GB ONNX graph, and
seconds of CPU per 256 x 256 tile in either runtime. So the steps are ordered to hold as little at
once as possible, and the graph goes to disk, never through a serialised copy in memory:

1. the torch network, on the (memory-mapped) checkpoint's tensors, runs the gate's tiles;
2. it is traced to ``.NAME.onnx.<pid>.tmp`` beside the destination (and the fp16 variant, if asked);
3. the torch network is released, then ONNX Runtime runs the file on the same tiles (the gate);
4. only a graph that passes gets its metadata, its sha256 and its final name; then the manifest.
"""
from __future__ import annotations

import gc
import os
from pathlib import Path
from typing import Callable

from cellflow_rt import __version__
from cellflow_rt.registry import FP16_SUFFIX, sha256_file

from .manifest import append_onnx_metadata, cpsam_model_facts, write_manifest
from .parity import (FLOWS_TOLERANCE, STYLE_TOLERANCE, check_parity, cpsam_parity_images, format_report,
                     measure_cpsam_parity, runtime_versions, torch_outputs)


def export_cpsam(ckpt, *, name: str, out_dir: Path, fp16: bool, description: str, source_sha256: str,
                 opset: int, parity_tiles: int, echo: Callable[[str], None]) -> Path:
    """Export a loaded CPSAM checkpoint (see :func:`cellflow_rt.export.export_checkpoint`).

    Parameters
    ----------
    ckpt : Checkpoint
        A CPSAM checkpoint (``ckpt.architecture == "cpsam"``); its tensors are released as soon as
        the torch network is no longer needed.
    name, out_dir, fp16, description, opset
        As in ``export_checkpoint``.
    source_sha256 : str
        The checkpoint file's digest (for the manifest).
    parity_tiles : int
        Tiles of the gate (each costs a torch and an ONNX Runtime forward pass).
    echo : callable
        Receives progress lines.

    Returns
    -------
    Path
        The manifest.
    """
    from .cpsam import HalfPrecisionCPSAM, build_cpsam
    from .onnx_export import cpsam_to_onnx

    if parity_tiles < 1:
        raise ValueError(f"parity_tiles must be >= 1, got {parity_tiles}")
    spec = ckpt.spec
    facts = cpsam_model_facts(name=name, description=description, source_file=ckpt.path.name,
                              source_sha256=source_sha256, exporter_version=__version__, opset=opset, spec=spec,
                              diam_mean=ckpt.diam_mean, diam_labels=ckpt.diam_labels)
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = out_dir / facts["onnx_file"]
    half_path = out_dir / f"{name}{FP16_SUFFIX}.onnx"
    temporary = [temporary_path(onnx_path)] + ([temporary_path(half_path)] if fp16 else [])
    try:
        net = build_cpsam(spec, ckpt.state_dict)
        images = cpsam_parity_images(parity_tiles)
        torch_flows = torch_outputs(net, images)[0]
        echo(f"torch: {parity_tiles} gate tile(s) run; tracing the graph")
        cpsam_to_onnx(net, temporary[0], opset)
        if fp16:
            cpsam_to_onnx(HalfPrecisionCPSAM(net), temporary[1], opset)
        del net
        gc.collect()

        parity = measure_cpsam_parity(torch_flows, temporary[0], images)
        echo(format_report(parity, "fp32 ONNX vs torch"))
        check_parity(parity)
        facts["parity"] = {"flows_tolerance": FLOWS_TOLERANCE, "style_tolerance": STYLE_TOLERANCE,
                           **parity, **runtime_versions()}
        if fp16:
            half_parity = measure_cpsam_parity(torch_flows, temporary[1], images)
            echo(format_report(half_parity, "fp16 ONNX vs torch fp32 (not gated)"))
            facts["fp16"] = {"onnx_file": half_path.name, "onnx_sha256": None, "io_dtype": "float32",
                             "compute": "float16", "measured_with": "onnxruntime CPUExecutionProvider",
                             **half_parity}

        append_onnx_metadata(temporary[0], facts)
        facts["onnx_sha256"] = sha256_file(temporary[0])
        if fp16:
            append_onnx_metadata(temporary[1], facts, precision="fp16")
            facts["fp16"]["onnx_sha256"] = sha256_file(temporary[1])
            os.replace(temporary[1], half_path)
        os.replace(temporary[0], onnx_path)
    finally:
        for path in temporary:
            path.unlink(missing_ok=True)
    manifest_path = out_dir / f"{name}.json"
    write_manifest(manifest_path, facts)
    written = [onnx_path] + ([half_path] if fp16 else []) + [manifest_path]
    echo("wrote " + ", ".join(str(p) for p in written))
    return manifest_path


def temporary_path(path: Path) -> Path:
    # beside the destination, so that the final rename is atomic
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")
