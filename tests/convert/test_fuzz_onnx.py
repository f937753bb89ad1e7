"""Fuzz target: ONNX files opened by :func:`cellflow_rt.network.open_network`.

A tiny valid network (input ``image`` [B, 2, H, W]; outputs ``flows`` and ``style``, as an export
gives) is mutated where a loader looks: tensor dimensions and data types, op types, attribute
values, input and output names, and raw bytes of the serialised file. Each case runs in its own
process, so that a crash of ONNX Runtime would be seen as one (a signal) rather than end the test
session. The contract: the file opens and a 64 x 64 tile runs (or raises an exception), or opening
raises ``ValueError`` naming the file; never a crash, and never longer than the deadline.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
onnx = pytest.importorskip("onnx")
from hypothesis import given, settings, strategies as st  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from fuzz_helpers import overwrite  # noqa: E402

pytestmark = pytest.mark.fuzz

OPEN_AND_RUN = textwrap.dedent("""
    import json, sys
    import numpy as np
    from cellflow_rt.network import open_network
    try:
        net = open_network(sys.argv[1], providers="cpu")
    except ValueError as exc:
        print(json.dumps({"opened": False, "error": str(exc)}))
        sys.exit(0)
    try:
        net.run(np.zeros((1, 2, 64, 64), np.float32))
        ran = "ok"
    except Exception as exc:
        ran = type(exc).__name__
    print(json.dumps({"opened": True, "ran": ran}))
""")


def _tiny_model() -> onnx.ModelProto:
    weights = [numpy_helper.from_array(np.full((3, 2, 3, 3), 0.1, np.float32), "w"),
               numpy_helper.from_array(np.full((256, 2, 1, 1), 0.1, np.float32), "w_style")]
    nodes = [
        helper.make_node("Conv", ["image", "w"], ["flows"], pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        helper.make_node("Conv", ["image", "w_style"], ["features"], kernel_shape=[1, 1]),
        helper.make_node("ReduceMean", ["features"], ["style"], axes=[2, 3], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["B", 2, "H", "W"])],
        [helper.make_tensor_value_info("flows", TensorProto.FLOAT, ["B", 3, "H", "W"]),
         helper.make_tensor_value_info("style", TensorProto.FLOAT, ["B", 256])], weights)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


BASE = _tiny_model()
ints = st.one_of(st.sampled_from([0, 1, 2, 3, -1, 2**31 - 1, 2**40, 10**6]), st.integers(-5, 100))


def _mutate(kind: str, value, text: str) -> bytes:
    model = onnx.ModelProto()
    model.CopyFrom(BASE)
    graph = model.graph
    if kind == "dims":
        graph.initializer[0].dims[value % 4] = value
    elif kind == "dtype":
        graph.initializer[0].data_type = value % 20
    elif kind == "op":
        graph.node[value % 3].op_type = text or "Conv"
    elif kind == "attribute":
        for attribute in graph.node[0].attribute:
            if attribute.ints:
                attribute.ints[0] = value
    elif kind == "names":
        graph.input[0].name = text
    elif kind == "opset":
        model.opset_import[0].version = value
    return model.SerializeToString()


@settings(max_examples=12 if settings().max_examples <= 300 else 300, deadline=None)
@given(kind=st.sampled_from(["dims", "dtype", "op", "attribute", "names", "opset", "bytes"]), value=ints,
       text=st.sampled_from(["", "Conv", "Relu", "Loop", "Resize", "image", "flows", "Unknown"]),
       edits=st.lists(st.tuples(st.integers(0, 1 << 12), st.integers(0, 255)), max_size=6))
def test_fuzz_onnx_file(tmp_path_factory, kind, value, text, edits):
    data = overwrite(BASE.SerializeToString(), edits) if kind == "bytes" else _mutate(kind, value, text)
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    path.write_bytes(data)
    done = subprocess.run([sys.executable, "-c", OPEN_AND_RUN, str(path)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, f"the process died ({done.returncode}): {done.stderr[-2000:]}"
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if not result["opened"]:
        assert str(path) in result["error"]


def test_the_unmutated_tiny_model_opens_and_runs(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(BASE.SerializeToString())
    done = subprocess.run([sys.executable, "-c", OPEN_AND_RUN, str(path)], capture_output=True, text=True, timeout=60)
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"opened": True, "ran": "ok"}, done.stderr
