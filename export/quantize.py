"""Post-training int8 quantisation of a model's linear layers, for ``precision="int8"``.

AMX and VNNI multiply int8 at twice bfloat16's rate. On a full-size Cellpose-SAM the linear layers
(qkv, proj, MLP) are 85% of the FLOPs, so they are what is quantised: weights per output channel,
activations per tensor, both symmetric, with ranges from tiles of real images run through the
float32 network (NNCF's post-training quantisation, on the OpenVINO graph after
:func:`cellflow_rt.openvino_graph.prepare_model` has fused the attention). Measured on the full-size
model (2 Sapphire Rapids cores, bench/bench_cpsam.py): asymmetric activations (NNCF's transformer
default) leave a zero-point subtraction in every GEMM and no gain over bfloat16; SmoothQuant's extra
multiplies and quantising the attention's inputs cost more than they save. Everything else (the
fused attention, the relative-position products, the neck, the readout) stays in bfloat16.

NNCF imports torch when torch is installed, so this module belongs to the export extra; the
runtime reads the result with OpenVINO alone (:mod:`cellflow_rt.int8_model`).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from cellflow_rt.int8_model import RECIPE_VERSION, int8_files

#: Tiles used for the activation ranges unless told otherwise.
DEFAULT_TILES = 64


def calibration_tiles(model, images: Sequence[np.ndarray], settings, max_tiles: int = DEFAULT_TILES) -> list:
    """The tiles ``model``'s network is given when it segments ``images`` with ``settings``, each
    (1, C, ly, lx) float32 (sizes may differ between images: a small image gives smaller tiles).

    Normalisation, resizing and tiling are the pipeline's own: its network is replaced by one that
    records what it is given and answers zeros (the network's answers are not needed, and running
    a full-size ViT on every tile would take minutes), so the ranges are those of real runs. At
    most ``max_tiles``, spread evenly over all the tiles seen.
    """
    from cellflow_rt.pipeline import predict

    recorder = _TileRecorder(int(model.info.nchan), int(model.info.nout))
    network, model.net = model.net, recorder
    try:
        for image in images:
            predict(image, model, settings)
    finally:
        model.net = network
    if not recorder.tiles:
        raise ValueError("the calibration images gave the network no tiles")
    tiles = [batch[i:i + 1] for batch in recorder.tiles for i in range(len(batch))]
    pick = np.unique(np.linspace(0, len(tiles) - 1, min(max_tiles, len(tiles))).round().astype(int))
    return [tiles[i] for i in pick]


class _TileRecorder:
    """A CPU network that keeps a copy of every tile it is asked to run and answers zeros."""

    providers = ("CPUExecutionProvider",)
    on_gpu = False

    def __init__(self, nchan: int, nout: int):
        self.nchan = nchan  # the network's input channels: the pipeline pads the image's up to these
        self.nout = nout
        self.tiles = []

    def run(self, tiles, batch_size: int = 8):
        self.tiles.append(np.array(tiles, dtype=np.float32))
        return (np.zeros((len(tiles), self.nout) + tuple(tiles.shape[2:]), np.float32),
                np.zeros((len(tiles), 256), np.float32))


def linear_layers(model) -> list:
    """Names of the MatMuls of ``model`` (``openvino.Model``) that multiply by a 2-D weight matrix."""
    names = []
    for op in model.get_ordered_ops():
        if op.get_type_name() != "MatMul" or op.get_attributes().get("transpose_a"):
            continue
        weight = op.input_value(1).get_node()
        while weight.get_type_name() in ("Convert", "Transpose") and weight.get_input_size():
            weight = weight.input_value(0).get_node()
        if weight.get_type_name() == "Constant" and len(weight.get_output_shape(0)) == 2:
            names.append(op.get_friendly_name())
    return names


def quantize_network(onnx_path: Path, tiles: Sequence[np.ndarray]):
    """The OpenVINO model of ``onnx_path`` (attention fused), its linear layers quantised on ``tiles``
    (network inputs, each (1, C, ly, lx)).

    Returns
    -------
    (openvino.Model, dict)
        The quantised model, and what was quantised (counts) for the facts file.
    """
    import logging

    import nncf
    import openvino as ov
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, AdvancedSmoothQuantParameters

    from cellflow_rt.openvino_graph import prepare_model

    model = ov.Core().read_model(str(onnx_path))
    fused = prepare_model(model)
    linear = set(linear_layers(model))
    if not linear:
        raise ValueError(f"{onnx_path.name}: no linear layers to quantise")
    kept = [op.get_friendly_name() for op in model.get_ordered_ops()
            if op.get_type_name() in ("MatMul", "Convolution", "ConvolutionBackpropData", "GroupConvolution")
            and op.get_friendly_name() not in linear]
    dataset = nncf.Dataset(list(tiles))
    # NNCF logs one line per layer it leaves in float. Its logger only, and only for this call
    # (nncf.set_log_level also sets the level of whatever handlers that logger holds).
    nncf_logger = logging.getLogger("nncf")
    level = nncf_logger.level
    nncf_logger.setLevel(logging.ERROR)
    try:
        quantized = nncf.quantize(
            model, dataset, preset=nncf.QuantizationPreset.PERFORMANCE, model_type=nncf.ModelType.TRANSFORMER,
            subset_size=len(tiles), fast_bias_correction=True,
            ignored_scope=nncf.IgnoredScope(names=kept, types=["ScaledDotProductAttention"], validate=False),
            advanced_parameters=AdvancedQuantizationParameters(
                smooth_quant_alphas=AdvancedSmoothQuantParameters(matmul=-1, convolution=-1)))
    finally:
        nncf_logger.setLevel(level)
    return quantized, {"attention_fused": fused, "linear_layers_int8": len(linear), "kept_in_bf16": len(kept)}


def quantize_model(name_or_path, images: Sequence[Path], max_tiles: int = DEFAULT_TILES, diameter=None,
                   echo: Optional[Callable[[str], None]] = print) -> Path:
    """Write the int8 network of a model beside its ONNX file (``NAME.int8.xml/.bin/.json``).

    Parameters
    ----------
    name_or_path : str or Path
        An installed model's name or an ``.onnx`` path.
    images : sequence of Path
        Calibration images, like the ones the model will segment (not the ones it is tested on).
    max_tiles : int
        Most network tiles used for the activation ranges.
    diameter : float, optional
        The diameter the images will be segmented at (default: the model's own default).

    Returns
    -------
    Path
        The ``.xml`` written.
    """
    import nncf
    import openvino as ov

    from cellflow_rt.io.read import imread
    from cellflow_rt.loaded_model import LoadedModel
    from cellflow_rt.registry import cached_sha256, resolve_model
    from cellflow_rt.settings import EvalSettings

    # no network session: calibration only records tiles, and NNCF reads the graph itself
    model = LoadedModel(resolve_model(name_or_path), net=None).require_kind("segmentation", "quantize")
    if not model.family.int8_linear_layers:
        raise ValueError(f"{model.name} is a {model.family.title} model: its work is in convolutions, and int8 "
                         "networks are made for the Cellpose 4 ViTs' linear layers (Cellpose-SAM, CPDINO); "
                         "use --precision bf16 for a faster CPU run")
    if not images:
        raise ValueError("quantize needs calibration images")
    settings = EvalSettings() if diameter is None else EvalSettings(diameter=float(diameter))
    tiles = calibration_tiles(model, [imread(p) for p in images], settings, max_tiles)
    say = echo or (lambda _: None)
    say(f"{model.name}: {len(tiles)} calibration tiles from {len(images)} image(s)")
    onnx_path = Path(model.info.onnx_path)
    quantized, counts = quantize_network(onnx_path, tiles)
    xml, facts_path = int8_files(onnx_path)
    facts = {"recipe_version": RECIPE_VERSION, "onnx_file": onnx_path.name, "onnx_sha256": cached_sha256(onnx_path),
             "calibration_images": [Path(p).name for p in images], "calibration_tiles": int(len(tiles)),
             "diameter": diameter, "nncf": nncf.__version__, "openvino": ov.__version__, **counts}
    _write_atomically(ov, quantized, xml, facts_path, facts)
    say(f"wrote {xml} ({counts['linear_layers_int8']} linear layers in int8)")
    return xml


def _write_atomically(ov, model, xml: Path, facts_path: Path, facts: dict) -> None:
    """IR and facts appear together: written in a temporary folder, then moved (the facts last)."""
    tmp = xml.parent / f".{xml.stem}.{os.getpid()}.tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        ov.save_model(model, str(tmp / xml.name), compress_to_fp16=False)
        (tmp / facts_path.name).write_text(json.dumps(facts, indent=1))
        facts_path.unlink(missing_ok=True)  # a half-replaced pair is never taken for a valid one
        os.replace(tmp / xml.with_suffix(".bin").name, xml.with_suffix(".bin"))
        os.replace(tmp / xml.name, xml)
        os.replace(tmp / facts_path.name, facts_path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
