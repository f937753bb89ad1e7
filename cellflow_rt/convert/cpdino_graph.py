"""Cellpose 4.2's CPDINO (a DINOv3 ViT) as an ONNX graph whose tile side is not fixed.

The network, as Cellpose 4.2.1.1's ``vit.CPDINO`` runs it at inference:

- patch embedding: DINOv3's 16 x 16 convolution run at stride 8 with padding 4 on 3 channels, so a
  tile of side ``b`` (a multiple of 8) gives a ``b/8 x b/8`` token grid;
- the class token and the storage tokens put before the patch tokens;
- transformer blocks: pre-LayerNorm (eps 1e-5), multi-head attention with rotary position embeddings
  (RoPE) on the patch tokens' queries and keys, layer scale, GELU MLP, layer scale;
- the final LayerNorm, the prefix tokens dropped, a linear readout to ``nout * 8 * 8`` values per
  token, put back in place by the transposed convolution with the fixed ``W2`` (stride 8).

The rotary sines and cosines depend on the grid (coordinates ``(i + 0.5) / h * 2 - 1`` per axis,
angles ``2 pi coord / period``), so they are computed in the graph from the patch embedding's shape:
one graph runs any tile side. The prefix tokens get cosine 1 and sine 0, which leaves them unrotated
exactly as DINOv3 leaves them out. The key bias is the checkpoint's ``qkv.bias`` times its
``bias_mask`` (DINOv3 zeroes the key third), folded here. Input ``image`` float32
``[B, 3, H, W]``; outputs ``flows`` ``[B, nout, H, W]`` and ``style`` ``[B, 256]``: zeros. (Cellpose
4.2.1.1's CPDINO returns ``torch.randn`` noise as its style, which nothing reads; zeros are what its
CPSAM returns and what its ``run_net`` keeps, as it never fills the styles it returns.)
"""
from __future__ import annotations

import math

import numpy as np

from .cpsam_graph import INPUT_NAME, OUTPUT_NAMES, _float_tensor
from .onnx_writer import GraphBuilder, tensor_value
from .specs import DINO_KERNEL, NCHAN, NSTYLE, PATCH, CPDINOSpec, as_float32, cpdino_defaults

LAYERNORM_EPS = 1e-5


class _CPDINOGraph:
    def __init__(self, spec: CPDINOSpec, state: dict):
        self.spec = spec
        self.state = {**cpdino_defaults(spec), **state}
        self.g = GraphBuilder()
        self.batch = None

    def w(self, key: str) -> str:
        return self.g.weight(key, as_float32(self.state[key]))

    def f32(self, value: float) -> str:
        return self.g.const(value, "float32")

    def linear(self, prefix: str, x: str, bias=None) -> str:
        bias = self.w(f"{prefix}.bias") if bias is None else bias
        return self.g.op("Gemm", [x, self.w(f"{prefix}.weight"), bias], transB=1)

    def layer_norm(self, prefix: str, x: str) -> str:
        return self.g.op("LayerNormalization", [x, self.w(f"{prefix}.weight"), self.w(f"{prefix}.bias")],
                         axis=-1, epsilon=LAYERNORM_EPS)

    def batch_shape(self, *dims) -> str:
        """``[B, *dims]`` as an int64 shape, B read from the input."""
        return self.g.op("Concat", [self.batch, self.g.const(list(dims))], axis=0)

    def rope(self, grid: str) -> tuple[str, str]:
        """(sin, cos), each ``[n_prefix + h * w, head_dim]``, for the ``[h, w]`` token grid."""
        g, hd = self.g, self.spec.head_dim
        quarter = hd // 4
        periods = self.w("encoder.rope_embed.periods")
        sides = g.op("Cast", [grid], to=1)  # float
        angles = []
        for axis in (0, 1):
            side = g.op("Gather", [sides, g.const(axis)], axis=0)
            coords = g.op("Div", [g.op("Range", [self.f32(0.5), side, self.f32(1.0)]), side])
            coords = g.op("Sub", [g.op("Mul", [coords, self.f32(2.0)]), self.f32(1.0)])
            # angle = (2 pi * coord) / period, in that order, as DINOv3 computes it in float32
            axis_angles = g.op("Div", [g.op("Mul", [g.op("Unsqueeze", [coords, g.const([1])]),
                                                    self.f32(2 * math.pi)]), periods])
            spread = g.op("Unsqueeze", [axis_angles, g.const([1 - axis])])  # [h, 1, q] or [1, w, q]
            full = g.op("Expand", [spread, g.op("Concat", [grid, g.const([quarter])], axis=0)])
            angles.append(g.op("Reshape", [full, g.const([-1, quarter])]))
        angles = g.op("Concat", [angles[0], angles[1], angles[0], angles[1]], axis=1)  # [hw, head_dim]
        n = self.spec.n_prefix
        sin = g.op("Concat", [g.const(np.zeros((n, hd)), "float32"), g.op("Sin", [angles])], axis=0)
        cos = g.op("Concat", [g.const(np.ones((n, hd)), "float32"), g.op("Cos", [angles])], axis=0)
        return sin, cos

    def rotate(self, x: str, sin: str, cos: str) -> str:
        """``x * cos + rotate_half(x) * sin`` with ``rotate_half([a, b]) = [-b, a]`` on the last axis."""
        g = self.g
        first, second = g.op("Split", [x], outputs=2, axis=-1)
        half = g.op("Concat", [g.op("Neg", [second]), first], axis=-1)
        return g.op("Add", [g.op("Mul", [x, cos]), g.op("Mul", [half, sin])])

    def attention(self, prefix: str, x: str, sin: str, cos: str) -> str:
        g, C, nh = self.g, self.spec.embed_dim, self.spec.num_heads
        hd = C // nh
        bias = self.state[f"{prefix}.qkv.bias"]
        masked = as_float32(bias) * as_float32(self.state[f"{prefix}.qkv.bias_mask"])
        qkv = self.linear(f"{prefix}.qkv", x, bias=g.weight(f"{prefix}.qkv.masked_bias", masked))
        qkv = g.op("Reshape", [qkv, self.batch_shape(-1, 3, nh, hd)])
        qkv = g.op("Transpose", [qkv], perm=[2, 0, 3, 1, 4])  # [3, B, heads, N, head_dim]
        q, k, v = (g.op("Squeeze", [p, g.const([0])]) for p in g.op("Split", [qkv], outputs=3, axis=0))
        q, k = self.rotate(q, sin, cos), self.rotate(k, sin, cos)
        logits = g.op("MatMul", [g.op("Mul", [q, self.f32(hd ** -0.5)]), g.op("Transpose", [k], perm=[0, 1, 3, 2])])
        out = g.op("MatMul", [g.op("Softmax", [logits], axis=-1), v])
        out = g.op("Reshape", [g.op("Transpose", [out], perm=[0, 2, 1, 3]), g.const([-1, C])])
        return self.linear(f"{prefix}.proj", out)

    def gelu(self, x: str) -> str:
        g = self.g
        erf = g.op("Erf", [g.op("Div", [x, self.f32(math.sqrt(2.0))])])
        return g.op("Mul", [g.op("Mul", [x, g.op("Add", [erf, self.f32(1.0)])]), self.f32(0.5)])

    def block(self, prefix: str, x: str, sin: str, cos: str) -> str:
        g = self.g
        attn = self.attention(f"{prefix}.attn", self.layer_norm(f"{prefix}.norm1", x), sin, cos)
        x = g.op("Add", [x, g.op("Mul", [attn, self.w(f"{prefix}.ls1.gamma")])])
        hidden = self.gelu(self.linear(f"{prefix}.mlp.fc1", self.layer_norm(f"{prefix}.norm2", x)))
        return g.op("Add", [x, g.op("Mul", [self.linear(f"{prefix}.mlp.fc2", hidden), self.w(f"{prefix}.ls2.gamma")])])

    def build(self) -> GraphBuilder:
        g, spec, C = self.g, self.spec, self.spec.embed_dim
        self.batch = g.op("Shape", [INPUT_NAME], start=0, end=1)
        patch = [self.w("encoder.patch_embed.proj.weight"), self.w("encoder.patch_embed.proj.bias")]
        x = g.op("Conv", [INPUT_NAME, *patch], kernel_shape=[DINO_KERNEL, DINO_KERNEL], strides=[PATCH, PATCH],
                 pads=[PATCH // 2] * 4)
        grid = g.op("Shape", [x], start=2, end=4)  # [h, w]
        tokens = g.op("Transpose", [g.op("Reshape", [x, g.const([0, 0, -1])])], perm=[0, 2, 1])
        prefix_tokens = np.concatenate([as_float32(self.state["encoder.cls_token"]),
                                        as_float32(self.state["encoder.storage_tokens"])], axis=1)
        prefix_tokens = g.op("Expand", [g.weight("encoder.prefix_tokens", prefix_tokens), self.batch_shape(1, 1)])
        x = g.op("Reshape", [g.op("Concat", [prefix_tokens, tokens], axis=1), g.const([-1, C])])
        sin, cos = self.rope(grid)
        for i in range(spec.depth):
            x = self.block(f"encoder.blocks.{i}", x, sin, cos)
        x = g.op("Reshape", [x, self.batch_shape(-1, C)])
        x = g.op("Slice", [x, g.const([spec.n_prefix]), g.const([2 ** 62]), g.const([1])])
        x = self.layer_norm("encoder.norm", g.op("Reshape", [x, g.const([-1, C])]))
        n = spec.nout * PATCH * PATCH
        x = self.linear("out", x)
        x = g.op("Reshape", [x, g.op("Concat", [self.batch, grid, g.const([n])], axis=0)])
        x = g.op("Transpose", [x], perm=[0, 3, 1, 2])
        flows = g.op("ConvTranspose", [x, self.w("W2")], kernel_shape=[PATCH, PATCH], strides=[PATCH, PATCH])
        style = g.op("ConstantOfShape", [self.batch_shape(NSTYLE)], value=_float_tensor(0.0))
        g.output(flows, OUTPUT_NAMES[0])
        g.output(style, OUTPUT_NAMES[1])
        return g


def build_cpdino_graph(spec: CPDINOSpec, state: dict) -> tuple:
    """The CPDINO of ``spec`` with ``state``'s weights as a graph taking tiles of any side (multiple of 8).

    Parameters
    ----------
    spec : CPDINOSpec
        As detected by :func:`cellflow_rt.convert.specs.detect_cpdino_spec`.
    state : dict
        The checkpoint's tensors (numpy arrays, ``module.`` prefix removed); keys Cellpose would keep
        at DINOv3's defaults when missing (rotary periods, key-bias masks) take those defaults.

    Returns
    -------
    (GraphBuilder, list, list)
        The builder and the graph's input and output value infos.
    """
    builder = _CPDINOGraph(spec, state).build()
    inputs = [tensor_value(INPUT_NAME, ["batch", NCHAN, "height", "width"])]
    outputs = [tensor_value(OUTPUT_NAMES[0], ["batch", spec.nout, "height", "width"]),
               tensor_value(OUTPUT_NAMES[1], ["batch", NSTYLE])]
    return builder, inputs, outputs
