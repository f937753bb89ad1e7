"""Turning a CPnet into ONNX (the fp32 net, or its half-precision wrapper with float32 IO).

The graph has one input ``image`` (float32 ``[B, nchan, H, W]``) and two outputs ``flows``
(float32 ``[B, nout, H, W]``) and ``style`` (float32 ``[B, nbase[-1]]``); B, H and W are dynamic.
"""
from __future__ import annotations

import io
import warnings

OPSET = 17
INPUT_NAME = "image"
OUTPUT_NAMES = ("flows", "style")
_DYNAMIC_AXES = {
    "image": {0: "batch", 2: "height", 3: "width"},
    "flows": {0: "batch", 2: "height", 3: "width"},
    "style": {0: "batch"},
}
# Traced at a size and batch that occur nowhere else, so that a shape baked into the graph by
# mistake shows up in the parity gate instead of hiding behind a coincidence.
_TRACE_SHAPE = (3, None, 48, 80)


def cpnet_to_onnx(net, opset: int = OPSET):
    """Export a CPnet (see :mod:`.cpnet`) to an in-memory ONNX model.

    Parameters
    ----------
    net : CPnet or HalfPrecisionCPnet
        In eval mode, on CPU; either way the graph's IO is float32.
    opset : int
        ONNX opset of the graph.

    Returns
    -------
    onnx.ModelProto
        With dynamic batch, height and width on every input and output.
    """
    import onnx
    import torch

    shape = list(_TRACE_SHAPE)
    shape[1] = net.spec.nchan
    example = torch.zeros(shape, dtype=torch.float32)
    buffer = io.BytesIO()
    # The TorchScript exporter on purpose: the dynamo one needs onnxscript and gains nothing for
    # this net; its deprecation notice would only confuse users.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            net,
            (example,),
            buffer,
            dynamo=False,
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_axes=_DYNAMIC_AXES,
            opset_version=opset,
            do_constant_folding=True,
            export_params=True,
        )
    model = onnx.load_model_from_string(buffer.getvalue())
    _check_dynamic_io(model, _DYNAMIC_AXES)
    onnx.checker.check_model(model, full_check=True)
    return model


def _check_dynamic_io(model, dynamic_axes) -> None:
    # A fixed dimension here would make the graph silently wrong at other batch sizes or tiles.
    for value in [*model.graph.input, *model.graph.output]:
        dims = value.type.tensor_type.shape.dim
        axes = dynamic_axes[value.name]
        fixed = [i for i in axes if dims[i].HasField("dim_value")]
        if fixed:
            raise RuntimeError(f"ONNX export baked a fixed size into '{value.name}' axes {fixed}")


_CPSAM_DYNAMIC_AXES = {"image": {0: "batch"}, "flows": {0: "batch"}, "style": {0: "batch"}}


def cpsam_to_onnx(net, path, opset: int = OPSET) -> None:
    """Export a CPSAM (see :mod:`.cpsam`) to an ONNX file.

    The graph takes float32 ``image`` ``[B, 3, 256, 256]`` and returns ``flows`` ``[B, nout, 256, 256]``
    and ``style`` ``[B, 256]``; only B is dynamic (the position embedding fixes the tile). Written
    straight to ``path``: a full-size network is a 1.2 GB graph, which should not also sit in memory
    as a serialised copy.

    Parameters
    ----------
    net : CPSAM or HalfPrecisionCPSAM
        In eval mode, on CPU; either way the graph's IO is float32.
    path : str or Path
        The file to write (overwritten).
    opset : int
        ONNX opset of the graph.
    """
    import onnx
    import torch

    from .cpsam import NCHAN, TILE

    # Tracing runs the network once: batch 1 keeps that to one tile (seconds for a full-size
    # network); a batch size baked into the graph by mistake fails the parity gate at batch 2.
    example = torch.zeros((1, NCHAN, TILE, TILE), dtype=torch.float32)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            net,
            (example,),
            str(path),
            dynamo=False,
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_axes=_CPSAM_DYNAMIC_AXES,
            opset_version=opset,
            do_constant_folding=True,
            export_params=True,
        )
    # checked from the file: the checker loads its own copy and frees it. (The batch axis is checked
    # by the parity gate, which runs other batch sizes than the traced one.)
    onnx.checker.check_model(str(path), full_check=True)
