"""Load-time rewrites of a network's OpenVINO graph, so that the CPU plugin fuses what it can.

Both graph producers (the torch exporter and the torch-free converter) write Cellpose-SAM's
attention as SAM computes it: ``(q * scale) @ k^T``, reshaped to (B, G, G, G, G) so that the
decomposed relative-position terms ``rel_h`` (B, G, G, G) and ``rel_w`` broadcast over key columns
and key rows, reshaped back, Softmax, ``@ v``. The 5-D broadcast adds hide the
MatMul -> Softmax -> MatMul pattern from OpenVINO's attention fusion, so every block writes and
reads its (heads, 1024, 1024) logits several times in memory: at 16 heads that is 64 MiB per pass.

The rewrite here makes the relative positions part of the dot product, exactly::

    logits[i, j] = q_i . k_j * scale + rel_h[i, row(j)] + rel_w[i, col(j)]
                 = [q_i * scale, rel_h[i, :], rel_w[i, :]] . [k_j, onehot(row(j)), onehot(col(j))]

and replaces the subgraph with one ``ScaledDotProductAttention`` on those concatenated queries and
keys (SDPA applies ``scale``; the one-hot columns hold ``1 / scale`` instead of 1): the CPU plugin runs it as one fused attention kernel (its "MHA" subgraph), the
logits never leave the cache, and in bfloat16 the one-hot columns are exact. Done on OpenVINO's
graph at load time, it covers every exported model, whichever producer wrote it; ONNX Runtime's
float32 graph is not touched.
"""
from __future__ import annotations

import numpy as np


def prepare_model(model) -> int:
    """Rewrite every Cellpose-SAM attention of ``model`` (an ``openvino.Model``) in place.

    Graphs without that pattern (CPnet, restoration nets) are left as they are.

    Returns
    -------
    int
        The number of attention subgraphs replaced.
    """
    replaced = 0
    for softmax in [op for op in model.get_ordered_ops() if op.get_type_name() == "Softmax"]:
        match = _match_sam_attention(softmax)
        if match is not None:
            _replace_with_sdpa(*match)
            replaced += 1
    if replaced:
        model.validate_nodes_and_infer_types()
    return replaced


def _split_inputs(node, wanted_type: str):
    """(the input made by a ``wanted_type`` node, the other input), or None."""
    a, b = node.input_value(0), node.input_value(1)
    if a.get_node().get_type_name() == wanted_type:
        return a, b
    if b.get_node().get_type_name() == wanted_type:
        return b, a
    return None


def _match_sam_attention(softmax):
    """The pieces of SAM's attention around ``softmax``, or None when it is not that subgraph.

    Returns (queries, their scale, keys, values, rel_h, rel_w, the ``@ v`` MatMul, grid side):
    queries, keys and values (N, L, d), the relative-position terms (N, G, G, G) by key row and key
    column.
    """
    flat = softmax.input_value(0).get_node()
    if flat.get_type_name() != "Reshape" or flat.input_value(0).get_node().get_type_name() != "Add":
        return None
    outer = _split_inputs(flat.input_value(0).get_node(), "Unsqueeze")
    if outer is None or outer[1].get_node().get_type_name() != "Add":
        return None
    inner = _split_inputs(outer[1].get_node(), "Unsqueeze")
    if inner is None or inner[1].get_node().get_type_name() != "Reshape":
        return None
    logits5 = inner[1].get_node()
    if logits5.get_output_partial_shape(0).rank.get_length() != 5:
        return None
    terms = {}
    for unsqueezed in (outer[0], inner[0]):
        shape = unsqueezed.get_partial_shape()
        # (N, G, G, G, 1): varies with the key row (rel_h); (N, G, G, 1, G): with the key column (rel_w)
        axis = "h" if shape[4].is_static and shape[4].get_length() == 1 else "w"
        terms[axis] = unsqueezed.get_node().input_value(0)
    if set(terms) != {"h", "w"}:
        return None
    qk = logits5.input_value(0).get_node()
    if qk.get_type_name() != "MatMul" or qk.get_attributes().get("transpose_a"):
        return None
    consumers = [t.get_node() for t in softmax.output(0).get_target_inputs()]
    if len(consumers) != 1 or consumers[0].get_type_name() != "MatMul":
        return None
    av = consumers[0]
    if av.input_value(0).get_node() is not softmax and av.input_value(0).get_node().get_friendly_name() != \
            softmax.get_friendly_name():
        return None
    grid = logits5.get_output_partial_shape(0)[1]
    if not grid.is_static:
        return None
    keys = _keys(qk)
    queries, scale = _unscaled(qk.input_value(0))
    return queries, scale, keys, av.input_value(1), terms["h"], terms["w"], av, grid.get_length()


def _unscaled(queries):
    """(q, scale) for queries made as ``q * scale`` with a constant scalar, else (queries, 1.0)."""
    node = queries.get_node()
    if node.get_type_name() == "Multiply":
        for i in (0, 1):
            const = node.input_value(1 - i).get_node()
            if const.get_type_name() == "Constant" and int(np.prod(const.get_output_shape(0))) == 1:
                scale = float(np.asarray(const.get_data()).reshape(-1)[0])
                if scale > 0:
                    return node.input_value(i), scale
    return queries, 1.0


def _keys(qk):
    """The (N, L, d) keys of ``q @ k^T`` (the MatMul's second input, untransposed)."""
    from openvino import opset13 as ops

    second = qk.input_value(1)
    transpose_b = bool(qk.get_attributes().get("transpose_b"))
    node = second.get_node()
    if transpose_b:
        return second
    if node.get_type_name() == "Transpose":
        perm = node.input_value(1).get_node()
        if perm.get_type_name() == "Constant" and list(perm.get_vector()) == [0, 2, 1]:
            return node.input_value(0)
    return ops.transpose(second, ops.constant(np.array([0, 2, 1], np.int64))).output(0)


def key_position_onehots(grid: int) -> np.ndarray:
    """(1, grid^2, 2 grid) float32: key j's row one-hot, then its column one-hot (row-major tokens)."""
    j = np.arange(grid * grid)
    onehot = np.zeros((1, grid * grid, 2 * grid), np.float32)
    onehot[0, j, j // grid] = 1
    onehot[0, j, grid + j % grid] = 1
    return onehot


def _replace_with_sdpa(queries, scale: float, keys, values, rel_h, rel_w, av, grid: int) -> None:
    from openvino import opset13 as ops

    name = av.get_friendly_name().rsplit("/", 1)[0] + "/sdpa"
    tokens = grid * grid
    # (N, G, G, G) -> (N, L, G): query token i's term for each key row (rel_h) or key column (rel_w)
    flat_shape = ops.constant(np.array([0, tokens, grid], np.int64))
    rel = [ops.reshape(t, flat_shape, special_zero=True) for t in (rel_h, rel_w)]
    q = ops.concat([queries, *rel], -1)
    batch = ops.gather(ops.shape_of(keys), ops.constant(np.array([0], np.int64)), ops.constant(np.int64(0)))
    onehot_shape = ops.concat([batch, ops.constant(np.array([tokens, 2 * grid], np.int64))], 0)
    # The attention's own scale goes to SDPA (its kernel applies it; no pass over the queries), and
    # 1 / scale into the one-hot columns so that the relative terms come out unscaled: 8 for SAM's
    # 64-wide heads, exact in bfloat16.
    onehots = ops.broadcast(ops.constant(key_position_onehots(grid) / np.float32(scale)), onehot_shape)
    k = ops.concat([keys, onehots], -1)
    out = ops.scaled_dot_product_attention(q, k, values, scale=ops.constant(np.float32(scale)), causal=False)
    out.set_friendly_name(name)
    for target in av.output(0).get_target_inputs():
        target.replace_source_output(out.output(0))
