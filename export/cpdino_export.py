"""Exporting a Cellpose 4.2 CPDINO (DINOv3 backbone) checkpoint: ONNX graph -> gate against torch -> manifest.

The ONNX graph is built node by node (:mod:`cellflow_rt.convert.cpdino_graph`: its tile side is not
fixed, which tracing a torch module would not give without baking the rotary tables of one grid),
and the gate runs it against an independent torch writing of the network (:mod:`.cpdino`) on tiles
of the default side (384) and of 256 x 320 (another side, not square): nothing is written unless
every output agrees within the tolerance. Steps, holding as little at once as possible:

1. the torch network, on the (memory-mapped) checkpoint's tensors, runs the gate's tiles;
2. the graph is streamed to ``.NAME.onnx.<pid>.tmp`` beside the destination; the torch network is
   released;
3. ONNX Runtime runs the file on the same tiles (the gate);
4. only a graph that passes gets its metadata, its sha256 and its final name; then the manifest.
"""
from __future__ import annotations

import gc
import os
from pathlib import Path
from typing import Callable

import numpy as np

from cellflow_rt import __version__
from cellflow_rt.checksum import sha256_file

from .cpsam_export import temporary_path
from .manifest import append_onnx_metadata, cpdino_model_facts, write_manifest
from .parity import (FLOWS_TOLERANCE, STYLE_TOLERANCE, check_parity, format_report, parity_images, runtime_versions,
                     torch_outputs)

#: Tile sides of the gate: Cellpose's default for CPDINO, and a non-square other one.
GATE_SIDES = ((384, 384), (256, 320))


def cpdino_gate_images(tiles: int) -> list[np.ndarray]:
    """float32 inputs of the gate: ``tiles`` tiles at each side of :data:`GATE_SIDES`."""
    from .cpdino import NCHAN

    return [parity_images(NCHAN, h, w, batch=tiles, seed=i) for i, (h, w) in enumerate(GATE_SIDES)]


def measure_cpdino_parity(torch_flows: list, onnx_path, images: list) -> dict:
    """ONNX Runtime against torch on the gate's tiles (each side run as one batch plus a repeat).

    Returns
    -------
    dict
        ``max_abs_error_flows``, ``max_abs_error_style`` (the style against zeros), ``cases``.
    """
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    cases = []
    for expected, tiles in zip(torch_flows, images):
        batch = np.concatenate([tiles, tiles[:1]])
        flows, style = session.run(["flows", "style"], {"image": batch})
        expected = np.concatenate([expected, expected[:1]])
        height, width = tiles.shape[2:]
        cases += [{"batch": int(batch.shape[0]), "tile": i, "height": int(height), "width": int(width),
                   "max_abs_error_flows": float(np.max(np.abs(flows[i] - expected[i]))),
                   "max_abs_error_style": float(np.max(np.abs(style[i])))} for i in range(batch.shape[0])]
    del session
    return {"inputs": "all channels",
            "max_abs_error_flows": float(max(c["max_abs_error_flows"] for c in cases)),
            "max_abs_error_style": float(max(c["max_abs_error_style"] for c in cases)),
            "cases": cases}


def export_cpdino(ckpt, *, name: str, out_dir: Path, fp16: bool, description: str, source_sha256: str,
                  opset: int, parity_tiles: int, echo: Callable[[str], None]) -> Path:
    """Export a loaded CPDINO checkpoint (see :func:`cellflow_rt.export.export_checkpoint`).

    Parameters
    ----------
    ckpt : Checkpoint
        A CPDINO checkpoint (``ckpt.architecture == "cpdino"``).
    name, out_dir, description, opset
        As in ``export_checkpoint``.
    fp16 : bool
        Not available for CPDINO yet: True raises ValueError.
    source_sha256 : str
        The checkpoint file's digest (for the manifest).
    parity_tiles : int
        Tiles of the gate per side (each costs a torch and an ONNX Runtime forward pass).
    echo : callable
        Receives progress lines.

    Returns
    -------
    Path
        The manifest.
    """
    from cellflow_rt.convert.cpdino_graph import build_cpdino_graph

    from .cpdino import build_cpdino

    if fp16:
        raise ValueError("fp16: a float16 graph is not available for CPDINO (DINOv3) models yet; export without it")
    if parity_tiles < 1:
        raise ValueError(f"parity_tiles must be >= 1, got {parity_tiles}")
    spec = ckpt.spec
    facts = cpdino_model_facts(name=name, description=description, source_file=ckpt.path.name,
                               source_sha256=source_sha256, exporter_version=__version__, opset=opset, spec=spec,
                               diam_mean=ckpt.diam_mean, diam_labels=ckpt.diam_labels)
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = out_dir / facts["onnx_file"]
    temporary = temporary_path(onnx_path)
    try:
        net = build_cpdino(spec, ckpt.state_dict)
        images = cpdino_gate_images(parity_tiles)
        torch_flows = [torch_outputs(net, tiles)[0] for tiles in images]
        del net
        gc.collect()
        echo(f"torch: {parity_tiles} gate tile(s) at each of {len(GATE_SIDES)} sides run; writing the graph")
        state = {k: v.detach().float().numpy() for k, v in ckpt.state_dict.items()}
        builder, inputs, outputs = build_cpdino_graph(spec, state)
        model = builder.model(inputs, outputs, opset, {}, producer="cellflow-rt export", version=__version__,
                              doc=facts["description"])
        builder.write(temporary, model)
        del builder, state

        parity = measure_cpdino_parity(torch_flows, temporary, images)
        echo(format_report(parity, "fp32 ONNX vs torch"))
        check_parity(parity)
        facts["parity"] = {"flows_tolerance": FLOWS_TOLERANCE, "style_tolerance": STYLE_TOLERANCE,
                           **parity, **runtime_versions()}
        append_onnx_metadata(temporary, facts)
        facts["onnx_sha256"] = sha256_file(temporary)
        os.replace(temporary, onnx_path)
    finally:
        temporary.unlink(missing_ok=True)
    manifest_path = out_dir / f"{name}.json"
    write_manifest(manifest_path, facts)
    echo(f"wrote {onnx_path}, {manifest_path}")
    return manifest_path
