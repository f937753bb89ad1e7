"""Cellpose 3's CPnet as an ONNX graph, built node by node from a state dict of numpy arrays.

Why build the graph rather than fill a weight-free graph exported at build time: the CPnet's widths
and channel counts vary between checkpoints (segmentation nets with 1 to 3 input channels,
restoration nets with one output) and a Cellpose-SAM's depth and width too; building from the
detected spec covers every variant with ~100 lines and no torch anywhere, where template graphs
would have to be shipped for each variant and patched by name.

The graph is the torch exporter's (:mod:`cellflow_rt.export.cpnet` traced by
:mod:`cellflow_rt.export.onnx_export`) op for op: BatchNormalization -> Relu -> Conv blocks, MaxPool
2 x 2, nearest Resize x 2, the style as a mean over (H, W) divided by its L2 norm (``Pow 0.5``, as
torch traces ``** 0.5``) and added through Gemm as a per-channel bias. Input ``image`` float32
``[B, nchan, H, W]``; outputs ``flows`` ``[B, nout, H, W]`` and ``style`` ``[B, nbase[-1]]``; B, H and
W dynamic (H and W multiples of 2 ** (levels - 1), as for the torch graph).
"""
from __future__ import annotations

from .onnx_writer import GraphBuilder, tensor_value
from .specs import CPnetSpec, as_float32

BN_EPS = 1e-5
INPUT_NAME = "image"
OUTPUT_NAMES = ("flows", "style")


class _CPnetGraph:
    def __init__(self, spec: CPnetSpec, state: dict):
        self.spec = spec
        self.state = state
        self.g = GraphBuilder()

    def w(self, key: str) -> str:
        return self.g.weight(key, as_float32(self.state[key]))

    def bn(self, prefix: str, x: str) -> str:
        names = [self.w(f"{prefix}.{p}") for p in ("weight", "bias", "running_mean", "running_var")]
        return self.g.op("BatchNormalization", [x, *names], epsilon=BN_EPS)

    def conv(self, prefix: str, x: str) -> str:
        weight = self.state[f"{prefix}.weight"]
        k = int(weight.shape[-1])
        return self.g.op("Conv", [x, self.w(f"{prefix}.weight"), self.w(f"{prefix}.bias")],
                         kernel_shape=[k, k], pads=[k // 2] * 4, strides=[1, 1])

    def bn_relu_conv(self, prefix: str, x: str) -> str:
        return self.conv(f"{prefix}.2", self.g.op("Relu", [self.bn(f"{prefix}.0", x)]))

    def bn_conv(self, prefix: str, x: str) -> str:
        return self.conv(f"{prefix}.1", self.bn(f"{prefix}.0", x))

    def add(self, a: str, b: str) -> str:
        return self.g.op("Add", [a, b])

    def res_down(self, prefix: str, x: str) -> str:
        c = f"{prefix}.conv.conv_"
        x = self.add(self.bn_conv(f"{prefix}.proj", x), self.bn_relu_conv(c + "1", self.bn_relu_conv(c + "0", x)))
        return self.add(x, self.bn_relu_conv(c + "3", self.bn_relu_conv(c + "2", x)))

    def style_conv(self, prefix: str, style: str, x: str, skip: str | None = None) -> str:
        if skip is not None:
            x = self.add(x, skip)
        bias = self.g.op("Gemm", [style, self.w(f"{prefix}.full.weight"), self.w(f"{prefix}.full.bias")], transB=1)
        bias = self.g.op("Unsqueeze", [bias, self.g.const([2, 3])])
        return self.bn_relu_conv(f"{prefix}.conv", self.add(x, bias))

    def res_up(self, prefix: str, x: str, skip: str, style: str) -> str:
        c = f"{prefix}.conv.conv_"
        y = self.add(self.bn_conv(f"{prefix}.proj", x),
                     self.style_conv(c + "1", style, self.bn_relu_conv(c + "0", x), skip=skip))
        return self.add(y, self.style_conv(c + "3", style, self.style_conv(c + "2", style, y)))

    def style(self, x: str) -> str:
        pooled = self.g.op("ReduceMean", [x], axes=[2, 3], keepdims=0)
        square = self.g.op("Pow", [pooled, self.g.const(2.0, "float32")])
        norm = self.g.op("Pow", [self.g.op("ReduceSum", [square, self.g.const([1])], keepdims=1),
                                 self.g.const(0.5, "float32")])
        return self.g.op("Div", [pooled, norm])

    def build(self) -> str:
        g, levels_count = self.g, len(self.spec.nbase) - 1
        levels = [self.res_down("downsample.down.res_down_0", INPUT_NAME)]
        for n in range(1, levels_count):
            pooled = g.op("MaxPool", [levels[-1]], kernel_shape=[2, 2], strides=[2, 2])
            levels.append(self.res_down(f"downsample.down.res_down_{n}", pooled))
        style = self.style(levels[-1])
        x = self.res_up(f"upsample.up.res_up_{levels_count - 1}", levels[-1], levels[-1], style)
        scales = g.const([1.0, 1.0, 2.0, 2.0], "float32")
        for n in range(levels_count - 2, -1, -1):
            x = g.op("Resize", [x, "", scales], mode="nearest", coordinate_transformation_mode="asymmetric",
                     nearest_mode="floor")
            x = self.res_up(f"upsample.up.res_up_{n}", x, levels[n], style)
        flows = self.bn_relu_conv("output", x)
        g.output(flows, OUTPUT_NAMES[0])
        g.output(style, OUTPUT_NAMES[1])
        return g


def build_cpnet_graph(spec: CPnetSpec, state: dict) -> tuple:
    """The CPnet of ``spec`` with ``state``'s weights as a graph.

    Parameters
    ----------
    spec : CPnetSpec
        As detected by :func:`cellflow_rt.convert.specs.detect_cpnet_spec`.
    state : dict
        The checkpoint's tensors (numpy arrays, any float dtype).

    Returns
    -------
    (GraphBuilder, list, list)
        The builder (nodes and weights) and the graph's input and output value infos, for
        :meth:`GraphBuilder.model` and :meth:`GraphBuilder.write`.
    """
    builder = _CPnetGraph(spec, state).build()
    inputs = [tensor_value(INPUT_NAME, ["batch", spec.nchan, "height", "width"])]
    outputs = [tensor_value(OUTPUT_NAMES[0], ["batch", spec.nout, "height", "width"]),
               tensor_value(OUTPUT_NAMES[1], ["batch", spec.nstyle])]
    return builder, inputs, outputs
