"""OpenVINO's load-time graph rewrite (fused Cellpose-SAM attention) and its cache.

The rewrite must change nothing but the arithmetic's order: the rewritten graph, run by OpenVINO in
float32, gives ONNX Runtime's outputs of the graph as exported, for graphs from both producers.
"""
import importlib.util

import numpy as np
import pytest

from conftest import CPSAM_TINY, require_shared

pytestmark = pytest.mark.skipif(importlib.util.find_spec("openvino") is None,
                                reason="openvino (the openvino extra) is not installed")


@pytest.fixture(scope="module")
def converted_tiny(tmp_path_factory):
    """The demo Cellpose-SAM written by the torch-free converter (the torch exporter's: ``cpsam_tiny``)."""
    require_shared()
    from cellflow_rt.convert import convert_checkpoint

    manifest = convert_checkpoint(CPSAM_TINY, name="cpsam_tiny_converted", out_dir=tmp_path_factory.mktemp("conv"))
    return manifest.with_suffix(".onnx")


def _tiles(n=2):
    return np.random.default_rng(3).normal(size=(n, 3, 256, 256)).astype(np.float32)


def _reference(onnx_path, tiles):
    import onnxruntime as ort
    return ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run(None, {"image": tiles})[0]


@pytest.mark.torch
@pytest.mark.parametrize("producer", ["torch exporter", "converter"])
def test_rewritten_attention_gives_the_exported_graphs_outputs(producer, cpsam_tiny, converted_tiny):
    import openvino as ov

    from cellflow_rt.openvino_graph import prepare_model

    onnx_path = cpsam_tiny.with_suffix(".onnx") if producer == "torch exporter" else converted_tiny
    model = ov.Core().read_model(str(onnx_path))
    assert prepare_model(model) == 2  # the demo's two blocks
    types = {op.get_type_name() for op in model.get_ordered_ops()}
    assert "ScaledDotProductAttention" in types and "Softmax" not in types
    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    tiles = _tiles()
    flows = compiled({"image": tiles})[compiled.outputs[0]]
    reference = _reference(onnx_path, tiles)
    np.testing.assert_allclose(flows, reference, rtol=0, atol=1e-4 * np.abs(reference).max())


def test_graphs_without_sam_attention_are_left_alone():
    import openvino as ov

    from cellflow_rt.openvino_graph import prepare_model
    from cellflow_rt.registry import resolve_model

    model = ov.Core().read_model(str(resolve_model("nuclei_demo").onnx_path))
    before = len(model.get_ordered_ops())
    assert prepare_model(model) == 0 and len(model.get_ordered_ops()) == before


def test_key_position_onehots_pick_each_keys_row_and_column():
    from cellflow_rt.openvino_graph import key_position_onehots

    onehot = key_position_onehots(4)[0]
    assert onehot.shape == (16, 8) and (onehot.sum(axis=1) == 2).all()
    assert onehot[6, 1] == 1 and onehot[6, 4 + 2] == 1  # token 6 = row 1, column 2


@pytest.mark.torch
def test_a_second_network_loads_the_cached_graph_and_gives_the_same_outputs(cpsam_tiny, tmp_path):
    from cellflow_rt.network_openvino import OpenVINONetwork

    onnx_path = cpsam_tiny.with_suffix(".onnx")
    first = OpenVINONetwork(onnx_path, num_threads=1, cache_dir=tmp_path)
    graphs = list((tmp_path / "graphs").glob("*/model.xml"))
    assert first.rewritten and len(graphs) == 1 and any((graphs[0].parent / "compiled").iterdir())
    second = OpenVINONetwork(onnx_path, num_threads=1, cache_dir=tmp_path)
    assert second.rewritten and list((tmp_path / "graphs").glob("*/model.xml")) == graphs
    tiles = _tiles(1)
    np.testing.assert_array_equal(first.run(tiles)[0], second.run(tiles)[0])
    uncached = OpenVINONetwork(onnx_path, num_threads=1, cache_dir=False)
    assert uncached.rewritten
    if first.precision == "fp32":  # no bf16 here: the same float32 weights and arithmetic either way
        np.testing.assert_allclose(uncached.run(tiles)[0], first.run(tiles)[0], atol=1e-5)


@pytest.mark.torch
def test_a_changed_model_file_replaces_its_cached_graph(cpsam_tiny, tmp_path):
    import os
    import shutil

    from cellflow_rt.network_openvino import OpenVINONetwork

    onnx_path = tmp_path / "model.onnx"
    shutil.copy(cpsam_tiny.with_suffix(".onnx"), onnx_path)
    OpenVINONetwork(onnx_path, num_threads=1, cache_dir=tmp_path / "cache")
    before = list((tmp_path / "cache" / "graphs").iterdir())
    stat = onnx_path.stat()
    os.utime(onnx_path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # as a re-export would
    OpenVINONetwork(onnx_path, num_threads=1, cache_dir=tmp_path / "cache")
    after = list((tmp_path / "cache" / "graphs").iterdir())
    assert len(before) == len(after) == 1 and before != after


@pytest.mark.torch
def test_streams_give_the_one_at_a_time_outputs(cpsam_tiny):
    from cellflow_rt.network_openvino import OpenVINONetwork

    onnx_path = cpsam_tiny.with_suffix(".onnx")
    tiles = _tiles(3)
    one, two = OpenVINONetwork(onnx_path, num_threads=2), OpenVINONetwork(onnx_path, num_threads=2, streams=2)
    assert two.streams == 2
    flows, styles = two.run(tiles)
    reference = one.run(tiles)[0]
    # each tile in its place (other tiles' flows would differ by their whole range); streams may
    # split the work differently, which in bfloat16 can move the last bits
    np.testing.assert_allclose(flows, reference, atol=1e-2 * np.abs(reference).max())
    assert styles.shape == (3, 256) and not styles.any()


@pytest.mark.torch
def test_cellpose_sam_tiles_run_four_per_inference_in_their_places(cpsam_tiny):
    from cellflow_rt.network_openvino import OpenVINONetwork
    from cellflow_rt.registry import resolve_model

    net = OpenVINONetwork(cpsam_tiny.with_suffix(".onnx"), num_threads=2)
    assert net.tiles_per_inference == 4
    assert OpenVINONetwork(resolve_model("nuclei_demo").onnx_path, num_threads=1).tiles_per_inference == 1
    tiles = _tiles(6)  # a full chunk and a partial one
    flows = net.run(tiles)[0]
    net.tiles_per_inference = 1
    reference = net.run(tiles)[0]
    np.testing.assert_allclose(flows, reference, atol=1e-2 * np.abs(reference).max())
