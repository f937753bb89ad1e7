"""Building an ONNX graph from numpy weights and writing it to disk one tensor at a time.

:class:`GraphBuilder` collects nodes (``onnx.helper``) and keeps the weights as the numpy arrays
they are (views of a memory-mapped checkpoint, usually). :meth:`GraphBuilder.write` streams the
model to a file without ever building the serialised model in memory: a protobuf message is the
concatenation of its fields, so the file is the model's small fields, then the graph field's tag
and length, the graph's nodes and IO, and each initializer serialised on its own with its raw bytes
written straight from the array. Peak memory is one tensor, not the 1.2 GB of a Cellpose-SAM, and
the file stays one self-contained ``.onnx`` (no external-data side file), as the exporter writes it.
"""
from __future__ import annotations

import itertools

import numpy as np
import onnx
from onnx import TensorProto, helper

# Protobuf field numbers: ModelProto.graph, GraphProto.initializer, TensorProto.raw_data.
_MODEL_GRAPH, _GRAPH_INITIALIZER, _TENSOR_RAW_DATA = 7, 5, 9
_ONNX_TYPES = {np.dtype("float32"): TensorProto.FLOAT, np.dtype("int64"): TensorProto.INT64}
# protobuf refuses messages of 2 GiB or more when loading
PROTOBUF_LIMIT = 2**31 - 1


class GraphBuilder:
    """An ONNX graph under construction, with its weights held as numpy arrays."""

    def __init__(self):
        self.nodes = []
        self.initializers = {}
        self._ids = itertools.count()

    def name(self, hint: str) -> str:
        """A fresh value name."""
        return f"{hint}_{next(self._ids)}"

    def weight(self, name: str, array) -> str:
        """Add ``array`` (float32 or int64, made contiguous little-endian) as an initializer."""
        array = np.asarray(array)
        dtype = np.dtype("int64") if array.dtype.kind in "iu" else np.dtype("float32")
        self.initializers[name] = np.ascontiguousarray(array, dtype=dtype.newbyteorder("<"))
        return name

    def const(self, values, dtype="int64") -> str:
        """A small constant (shapes, axes, scalars) as an initializer."""
        return self.weight(self.name("const"), np.asarray(values, dtype=dtype))

    def op(self, op_type: str, inputs, hint: str | None = None, outputs: int = 1, **attrs):
        """Add a node; return its output name (or names, when ``outputs`` > 1)."""
        names = [self.name(hint or op_type.lower()) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), names, **attrs))
        return names[0] if outputs == 1 else names

    def output(self, value: str, name: str) -> str:
        """Give a value the graph output's name: the node that computes it writes ``name`` instead.

        Renamed rather than copied by an Identity node: OpenVINO folds an Identity away and may then
        report the inner value's name for the graph's output.
        """
        for node in self.nodes:
            for names in (node.output, node.input):
                for i, existing in enumerate(names):
                    if existing == value:
                        names[i] = name
        return name

    def model(self, inputs, outputs, opset: int, metadata: dict, producer: str, version: str, doc: str):
        """The ModelProto without its initializers (:meth:`write` adds them)."""
        graph = helper.make_graph(self.nodes, "cellflow_rt", inputs, outputs)
        model = helper.make_model(graph, opset_imports=[helper.make_operatorsetid("", opset)],
                                  producer_name=producer, producer_version=version, doc_string=doc)
        model.ir_version = 8  # opset 17's IR version: what torch 2's exporter writes, what every ORT >= 1.14 reads
        for key, value in metadata.items():
            prop = model.metadata_props.add()
            prop.key, prop.value = key, value
        return model

    def write(self, path, model) -> int:
        """Write ``model`` with this builder's initializers to ``path``; return the file size.

        Raises
        ------
        ValueError
            When the model would reach protobuf's 2 GiB limit (ONNX Runtime could not load it).
        """
        graph_bytes = model.graph.SerializeToString()
        rest = onnx.ModelProto()
        rest.CopyFrom(model)
        rest.ClearField("graph")
        rest_bytes = rest.SerializeToString()
        records = [(_initializer_head(name, array), array) for name, array in self.initializers.items()]
        graph_size = len(graph_bytes) + sum(_field_size(_GRAPH_INITIALIZER, len(head) + _field_size(
            _TENSOR_RAW_DATA, array.nbytes)) for head, array in records)
        total = len(rest_bytes) + _field_size(_MODEL_GRAPH, graph_size)
        if total > PROTOBUF_LIMIT:
            raise ValueError(f"the graph would be {total} bytes, beyond protobuf's 2 GiB limit")
        with open(path, "wb") as f:
            f.write(rest_bytes)
            f.write(_key(_MODEL_GRAPH) + _varint(graph_size))
            f.write(graph_bytes)
            for head, array in records:
                f.write(_key(_GRAPH_INITIALIZER) + _varint(len(head) + _field_size(_TENSOR_RAW_DATA, array.nbytes)))
                f.write(head)
                f.write(_key(_TENSOR_RAW_DATA) + _varint(array.nbytes))
                f.write(array.reshape(-1).view(np.uint8).data)
        return total


def _initializer_head(name: str, array: np.ndarray) -> bytes:
    tensor = TensorProto()
    tensor.name = name
    tensor.data_type = _ONNX_TYPES[array.dtype.newbyteorder("=")]
    tensor.dims.extend(array.shape)
    return tensor.SerializeToString()


def _key(field: int) -> bytes:
    return _varint(field << 3 | 2)  # wire type 2: length-delimited


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field_size(field: int, length: int) -> int:
    return len(_key(field)) + len(_varint(length)) + length


def tensor_value(name: str, dims) -> "onnx.ValueInfoProto":
    """A float32 graph input/output with ``dims`` (ints fixed, strings dynamic)."""
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(dims))
