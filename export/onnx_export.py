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
    _check_dynamic_io(model)
    onnx.checker.check_model(model, full_check=True)
    return model


def _check_dynamic_io(model) -> None:
    # A fixed dimension here would make the graph silently wrong at other batch sizes or tiles.
    for value in [*model.graph.input, *model.graph.output]:
        dims = value.type.tensor_type.shape.dim
        axes = _DYNAMIC_AXES[value.name]
        fixed = [i for i in axes if dims[i].HasField("dim_value")]
        if fixed:
            raise RuntimeError(f"ONNX export baked a fixed size into '{value.name}' axes {fixed}")
