"""Turning a CPnet into ONNX: the fp32 graph, and a half-precision variant with float32 IO.

The graph has one input ``image`` (float32 ``[B, nchan, H, W]``) and two outputs ``flows``
(float32 ``[B, nout, H, W]``) and ``style`` (float32 ``[B, nbase[-1]]``); B, H and W are dynamic.
"""
from __future__ import annotations

import io
import warnings
from pathlib import Path

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
    net : CPnet
        In eval mode, float32, on CPU.
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


def to_fp16(model):
    """Return a copy of ``model`` whose weights and arithmetic are float16, with float32 IO.

    The input is cast to float16 right after it enters and the outputs back to float32 right
    before they leave, so callers feed and read float32 exactly as with the fp32 graph.
    """
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    half = onnx.ModelProto()
    half.CopyFrom(model)
    graph = half.graph
    # Resize takes its roi and scales as float32 whatever the data type: leave those alone.
    keep_fp32 = {name for node in graph.node if node.op_type == "Resize" for name in node.input[1:]}
    for init in graph.initializer:
        if init.data_type == TensorProto.FLOAT and init.name not in keep_fp32:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), init.name))
    for node in graph.node:
        if keep_fp32.intersection(node.output):
            continue
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == TensorProto.FLOAT:
                attr.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(attr.t).astype(np.float16)))
            if node.op_type == "Cast" and attr.name == "to" and attr.i == TensorProto.FLOAT:
                attr.i = TensorProto.FLOAT16
    inner_input = INPUT_NAME + "_fp16"
    for node in graph.node:
        node.input[:] = [inner_input if name == INPUT_NAME else name for name in node.input]
    casts_out = []
    for output in graph.output:
        inner = output.name + "_fp16"
        for node in graph.node:
            node.output[:] = [inner if name == output.name else name for name in node.output]
            node.input[:] = [inner if name == output.name else name for name in node.input]
        casts_out.append(helper.make_node("Cast", [inner], [output.name], to=TensorProto.FLOAT, name=f"cast_{output.name}_to_fp32"))
    cast_in = helper.make_node("Cast", [INPUT_NAME], [inner_input], to=TensorProto.FLOAT16, name="cast_image_to_fp16")
    nodes = [cast_in, *graph.node, *casts_out]
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.value_info[:]  # stale float32 annotations; ORT infers the types again
    onnx.checker.check_model(half, full_check=True)
    return half


def save_onnx(model, path) -> Path:
    """Write ``model`` as one self-contained file (no external data) and return the path."""
    import onnx

    path = Path(path)
    onnx.save_model(model, str(path), save_as_external_data=False)
    return path


def _check_dynamic_io(model) -> None:
    # A fixed dimension here would make the graph silently wrong at other batch sizes or tiles.
    for value in [*model.graph.input, *model.graph.output]:
        dims = value.type.tensor_type.shape.dim
        axes = _DYNAMIC_AXES[value.name]
        fixed = [i for i in axes if dims[i].HasField("dim_value")]
        if fixed:
            raise RuntimeError(f"ONNX export baked a fixed size into '{value.name}' axes {fixed}")
