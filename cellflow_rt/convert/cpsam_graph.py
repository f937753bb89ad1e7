"""Cellpose 4's CPSAM (Cellpose-SAM) as an ONNX graph, built from a state dict of numpy arrays.

The same network as :mod:`cellflow_rt.export.cpsam` (see there for the architecture), op for op as
torch traces it: patch-embedding Conv, position embedding, transformer blocks (LayerNormalization,
Gemm on the stored ``[out, in]`` weights, attention with SAM's decomposed relative positions, GELU
written out with Erf as torch writes it at opset 17), the neck, the 1 x 1 readout and the
ConvTranspose with ``W2``. Input ``image`` float32 ``[B, 3, 256, 256]``; outputs ``flows``
``[B, nout, 256, 256]`` and ``style`` ``[B, 256]`` (zeros, as Cellpose 4 returns); only B is dynamic.

The relative-position tables are resized to the 63 offsets of a 32-token axis here in numpy, as
SAM's ``get_rel_pos`` does with torch's linear interpolation (``align_corners=False``: source row
``(i + 0.5) * L / 63 - 0.5``, clamped at 0, in float32 with a fused multiply-add as torch's CPU
kernel computes it), then gathered into (32, 32, head_dim)
constants. Why build rather than fill a template: see :mod:`.cpnet_graph`.
"""
from __future__ import annotations

import math

import numpy as np

from .onnx_writer import GraphBuilder, tensor_value
from .specs import GRID, NCHAN, NSTYLE, PATCH, TILE, CPSAMSpec, as_float32

LAYERNORM_EPS = 1e-6
INPUT_NAME = "image"
OUTPUT_NAMES = ("flows", "style")


def resize_rel_pos(table: np.ndarray, length: int = 2 * GRID - 1) -> np.ndarray:
    """A relative-position table (L, C) resized to ``length`` rows by linear interpolation.

    Matches torch's ``F.interpolate(..., mode="linear", align_corners=False)`` along the rows, in
    float32; a table that already has ``length`` rows is returned unchanged.
    """
    table = as_float32(table)
    size = table.shape[0]
    if size == length:
        return table
    scale = np.float32(size) / np.float32(length)
    # torch's CPU kernel computes scale * (i + 0.5) - 0.5 as one fused multiply-add (one rounding):
    # the float64 product of two float32 numbers is exact, so rounding the float64 result matches it
    source = (np.float64(scale) * (np.arange(length, dtype=np.float64) + 0.5) - 0.5).astype(np.float32)
    source = np.maximum(source, np.float32(0))
    low = np.minimum(np.floor(source).astype(np.int64), size - 1)
    weight_high = np.clip(source - low.astype(np.float32), 0, 1).astype(np.float32)
    weight_low = np.float32(1) - weight_high
    high = np.minimum(low + 1, size - 1)
    # and the blend as fma(t_low, w_low, t_high * w_high), emulated the same way
    high_part = (table[high] * weight_high[:, None]).astype(np.float64)
    return (table[low].astype(np.float64) * weight_low[:, None] + high_part).astype(np.float32)


def relative_position_terms(table: np.ndarray, grid: int = GRID) -> np.ndarray:
    """(grid, grid, C): the resized table's row ``i - j + grid - 1`` for query row i and key row j."""
    table = resize_rel_pos(table, 2 * grid - 1)
    offsets = np.arange(grid)[:, None] - np.arange(grid)[None, :] + (grid - 1)
    return np.ascontiguousarray(table[offsets])


class _CPSAMGraph:
    def __init__(self, spec: CPSAMSpec, state: dict):
        self.spec = spec
        self.state = state
        self.g = GraphBuilder()
        self.shapes = {}

    def w(self, key: str) -> str:
        return self.g.weight(key, as_float32(self.state[key]))

    def shape(self, *dims) -> str:
        if dims not in self.shapes:
            self.shapes[dims] = self.g.const(list(dims))
        return self.shapes[dims]

    def reshape(self, x: str, *dims) -> str:
        return self.g.op("Reshape", [x, self.shape(*dims)])

    def linear(self, prefix: str, x: str) -> str:
        return self.g.op("Gemm", [x, self.w(f"{prefix}.weight"), self.w(f"{prefix}.bias")], transB=1)

    def layer_norm(self, prefix: str, x: str) -> str:
        return self.g.op("LayerNormalization", [x, self.w(f"{prefix}.weight"), self.w(f"{prefix}.bias")],
                         axis=-1, epsilon=LAYERNORM_EPS)

    def attention(self, prefix: str, x: str) -> str:
        g, G, C, nh = self.g, GRID, self.spec.embed_dim, self.spec.num_heads
        hd = C // nh
        qkv = self.linear(f"{prefix}.qkv", self.reshape(x, -1, C))
        qkv = g.op("Transpose", [self.reshape(qkv, -1, G * G, 3, nh, hd)], perm=[2, 0, 3, 1, 4])
        parts = g.op("Split", [self.reshape(qkv, 3, -1, G * G, hd)], outputs=3, axis=0)
        q, k, v = (g.op("Squeeze", [p, g.const([0])]) for p in parts)
        scale = g.const(hd ** -0.5, "float32")
        attn = g.op("MatMul", [g.op("Mul", [q, scale]), g.op("Transpose", [k], perm=[0, 2, 1])])
        r_q = self.reshape(q, -1, G, G, hd)
        terms_h = g.weight(f"{prefix}.terms_h", relative_position_terms(self.state[f"{prefix}.rel_pos_h"])
                           .transpose(0, 2, 1)[:, None])
        terms_w = g.weight(f"{prefix}.terms_w", relative_position_terms(self.state[f"{prefix}.rel_pos_w"])
                           .transpose(0, 2, 1)[:, None])
        rel_h = g.op("MatMul", [g.op("Transpose", [r_q], perm=[1, 0, 2, 3]), terms_h])
        rel_h = g.op("Transpose", [rel_h], perm=[1, 0, 2, 3])
        rel_w = g.op("MatMul", [g.op("Transpose", [r_q], perm=[2, 0, 1, 3]), terms_w])
        rel_w = g.op("Transpose", [rel_w], perm=[1, 2, 0, 3])
        attn = g.op("Add", [self.reshape(attn, -1, G, G, G, G), g.op("Unsqueeze", [rel_h, g.const([4])])])
        attn = g.op("Add", [attn, g.op("Unsqueeze", [rel_w, g.const([3])])])
        attn = g.op("Softmax", [self.reshape(attn, -1, G * G, G * G)], axis=-1)
        out = self.reshape(g.op("MatMul", [attn, v]), -1, nh, G * G, hd)
        out = self.reshape(g.op("Transpose", [out], perm=[0, 2, 1, 3]), -1, C)
        return self.reshape(self.linear(f"{prefix}.proj", out), -1, G, G, C)

    def gelu(self, x: str) -> str:
        g = self.g
        erf = g.op("Erf", [g.op("Div", [x, g.const(math.sqrt(2.0), "float32")])])
        return g.op("Mul", [g.op("Mul", [x, g.op("Add", [erf, g.const(1.0, "float32")])]), g.const(0.5, "float32")])

    def mlp(self, prefix: str, x: str) -> str:
        C = self.spec.embed_dim
        hidden = self.gelu(self.linear(f"{prefix}.lin1", self.reshape(x, -1, C)))
        return self.reshape(self.linear(f"{prefix}.lin2", hidden), -1, GRID, GRID, C)

    def block(self, prefix: str, x: str) -> str:
        x = self.g.op("Add", [x, self.attention(f"{prefix}.attn", self.layer_norm(f"{prefix}.norm1", x))])
        return self.g.op("Add", [x, self.mlp(f"{prefix}.mlp", self.layer_norm(f"{prefix}.norm2", x))])

    def channel_layer_norm(self, prefix: str, x: str) -> str:
        x = self.layer_norm(prefix, self.g.op("Transpose", [x], perm=[0, 2, 3, 1]))
        return self.g.op("Transpose", [x], perm=[0, 3, 1, 2])

    def build(self) -> GraphBuilder:
        g = self.g
        patch = [self.w("encoder.patch_embed.proj.weight"), self.w("encoder.patch_embed.proj.bias")]
        x = g.op("Conv", [INPUT_NAME, *patch], kernel_shape=[PATCH, PATCH], strides=[PATCH, PATCH])
        x = g.op("Add", [g.op("Transpose", [x], perm=[0, 2, 3, 1]), self.w("encoder.pos_embed")])
        for i in range(self.spec.depth):
            x = self.block(f"encoder.blocks.{i}", x)
        x = g.op("Conv", [g.op("Transpose", [x], perm=[0, 3, 1, 2]), self.w("encoder.neck.0.weight")],
                 kernel_shape=[1, 1])
        x = self.channel_layer_norm("encoder.neck.1", x)
        x = g.op("Conv", [x, self.w("encoder.neck.2.weight")], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
        x = self.channel_layer_norm("encoder.neck.3", x)
        x = g.op("Conv", [x, self.w("out.weight"), self.w("out.bias")], kernel_shape=[1, 1])
        flows = g.op("ConvTranspose", [x, self.w("W2")], kernel_shape=[PATCH, PATCH], strides=[PATCH, PATCH])
        batch = g.op("Shape", [INPUT_NAME], start=0, end=1)
        style_shape = g.op("Concat", [batch, g.const([NSTYLE])], axis=0)
        style = g.op("ConstantOfShape", [style_shape], value=_float_tensor(0.0))
        g.output(flows, OUTPUT_NAMES[0])
        g.output(style, OUTPUT_NAMES[1])
        return g


def _float_tensor(value: float):
    from onnx import numpy_helper

    return numpy_helper.from_array(np.array([value], np.float32))


def build_cpsam_graph(spec: CPSAMSpec, state: dict) -> tuple:
    """The CPSAM of ``spec`` with ``state``'s weights as a graph.

    Parameters
    ----------
    spec : CPSAMSpec
        As detected by :func:`cellflow_rt.convert.specs.detect_cpsam_spec`.
    state : dict
        The checkpoint's tensors (numpy arrays, ``module.`` prefix removed). Float32 tensors are
        used in place (memory-mapped views stay views until written).

    Returns
    -------
    (GraphBuilder, list, list)
        The builder and the graph's input and output value infos.
    """
    builder = _CPSAMGraph(spec, state).build()
    inputs = [tensor_value(INPUT_NAME, ["batch", NCHAN, TILE, TILE])]
    outputs = [tensor_value(OUTPUT_NAMES[0], ["batch", spec.nout, TILE, TILE]),
               tensor_value(OUTPUT_NAMES[1], ["batch", NSTYLE])]
    return builder, inputs, outputs
